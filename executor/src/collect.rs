//! Collecting the files a job left in its work dir, once every process of it is dead.
//!
//! The work dir is hostile: the job chose every name, type and link in it. Hosts
//! around sandboxes have been attacked exactly here — Judge0 followed symlinks its
//! sandbox planted (CVE-2024-28185, CVE-2024-28189), and Compiler Explorer leaked a
//! file through a symlink in an output dir. So the walk:
//!
//! - starts from a descriptor of the work dir and opens every name relative to its
//!   parent's descriptor with [`open_beneath`] (openat2 `RESOLVE_BENEATH |
//!   RESOLVE_NO_SYMLINKS`, `O_NOFOLLOW`): no symlink is followed, whether it is a
//!   file, a directory or a path component;
//! - looks at an entry with `fstatat(AT_SYMLINK_NOFOLLOW)` before opening it, and
//!   opens regular files and directories only: a FIFO is never opened (it would
//!   block until a writer comes), nor a socket or device;
//! - opens files and directories `O_NONBLOCK` and checks with `fstat` that the
//!   descriptor is the entry that was looked at — a regular file with one link (a
//!   hard link may be another file's content, counted twice against the caps), or
//!   the same directory;
//! - takes names that are valid UTF-8 without control characters, line
//!   separators, bidi controls or invisible format characters, at most
//!   [`MAX_PATH_DEPTH`] levels deep, and stops reading at the count, per-file and
//!   total caps, listing what it skipped and why;
//! - never writes, chowns or chmods anything.
//!
//! For a job, no job process is alive while this runs (the job's cgroup is empty, or
//! its pid namespace is gone), so nothing can swap an entry between the checks
//! above. A session's processes live on between its calls; the checks hold while
//! something swaps entries too, and every read is bounded by the size checked.

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::dir::Dir;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};
use pysandbox_shared::files::{MAX_NAME_LEN, MAX_PATH_DEPTH, MAX_SKIPPED_LISTED};
use pysandbox_shared::text::{self, is_unsafe_to_show};
use pysandbox_shared::{SkipReason, SkippedFile, MAX_CHUNK_BYTES};

use crate::sys::open_beneath;
use crate::workdir::open_dir;

/// How much of a work dir is collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Files collected at most.
    pub max_files: u32,
    /// Bytes of one file; a larger file is skipped.
    pub max_file_bytes: u64,
    /// Bytes of all collected files together.
    pub max_total_bytes: u64,
}

/// What a file looked like when the executor wrote it: an input file whose stamp is
/// unchanged is the caller's own, not something the job produced. The job cannot
/// forge a change time (only the kernel sets it, on every write or chmod).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stamp {
    ino: u64,
    size: i64,
    ctime: (i64, i64),
}

impl Stamp {
    /// The stamp of the file `st` describes.
    pub fn of(st: &FileStat) -> Stamp {
        Stamp {
            ino: st.st_ino,
            size: st.st_size,
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }
}

/// Where collected files go as they are read, so that no file is ever held whole.
pub(crate) trait Sink {
    /// A file begins. `false`: nobody listens any more, stop.
    fn begin(&mut self, path: &str) -> bool;
    /// The next bytes of the file last begun, at most [`MAX_CHUNK_BYTES`].
    /// `false`: nobody listens any more, stop.
    fn data(&mut self, chunk: &[u8]) -> bool;
}

/// What collecting a work dir left out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Collected {
    pub skipped: Vec<SkippedFile>,
    /// Skipped entries beyond [`MAX_SKIPPED_LISTED`].
    pub skipped_unlisted: u32,
}

/// Passes the regular files under `work` to `sink`, in path order, within `caps`,
/// leaving out those whose stamps are in `unchanged`: the input files of a job, and
/// for a session's call every file as it was when the call began. Only a failure to
/// open `work` itself is an error; an entry that cannot be read is skipped as
/// unreadable.
pub(crate) fn collect(
    work: &Path,
    caps: Caps,
    unchanged: &HashSet<Stamp>,
    sink: &mut dyn Sink,
) -> std::io::Result<Collected> {
    let root = Dir::from(open_dir(work)?)?;
    let mut walk = Walk {
        caps,
        unchanged,
        stamping: None,
        sink,
        files: 0,
        total_bytes: 0,
        listening: true,
        out: Collected::default(),
    };
    walk.dir(root, "", 0);
    Ok(walk.out)
}

/// The stamps of the regular files under `work` now, found by the same walk (and
/// bounded as it is, by the job's inode limit): what a session's call leaves out of
/// its collection unless it changes them.
pub(crate) fn stamps(work: &Path) -> std::io::Result<HashSet<Stamp>> {
    struct Deaf;
    impl Sink for Deaf {
        fn begin(&mut self, _: &str) -> bool {
            false
        }
        fn data(&mut self, _: &[u8]) -> bool {
            false
        }
    }
    let root = Dir::from(open_dir(work)?)?;
    let unchanged = HashSet::new();
    let mut walk = Walk {
        caps: Caps {
            max_files: 0,
            max_file_bytes: 0,
            max_total_bytes: 0,
        },
        unchanged: &unchanged,
        stamping: Some(HashSet::new()),
        sink: &mut Deaf,
        files: 0,
        total_bytes: 0,
        listening: true,
        out: Collected::default(),
    };
    walk.dir(root, "", 0);
    Ok(walk.stamping.unwrap_or_default())
}

struct Walk<'a> {
    caps: Caps,
    unchanged: &'a HashSet<Stamp>,
    /// Set by [`stamps`]: files are only stamped, never opened.
    stamping: Option<HashSet<Stamp>>,
    sink: &'a mut dyn Sink,
    files: u32,
    total_bytes: u64,
    /// Whether the sink still takes files; once it does not, the walk ends.
    listening: bool,
    out: Collected,
}

impl Walk<'_> {
    /// Visits the entries of `dir`, whose path is `prefix` (empty for the work dir)
    /// with `depth` components, in byte order of their names.
    fn dir(&mut self, mut dir: Dir, prefix: &str, depth: usize) {
        let mut names: Vec<CString> = Vec::new();
        for entry in dir.iter() {
            match entry {
                Ok(entry) => {
                    let name = entry.file_name();
                    if name != c"." && name != c".." {
                        names.push(name.to_owned());
                    }
                }
                Err(e) => {
                    tracing::warn!(dir = prefix, error = %e, "cannot list a work-dir directory");
                    self.skip(prefix.to_owned(), SkipReason::Unreadable);
                    return;
                }
            }
        }
        names.sort_unstable();
        let fd = dir.as_raw_fd();
        for name in names {
            if !self.listening {
                return;
            }
            self.entry(fd, &name, prefix, depth);
        }
    }

    fn entry(&mut self, parent: RawFd, name: &CStr, prefix: &str, depth: usize) {
        let Ok(text) = name.to_str() else {
            return self.skip(shown(prefix, name), SkipReason::NameNotUtf8);
        };
        if text.chars().any(is_unsafe_to_show) {
            return self.skip(shown(prefix, name), SkipReason::NameHasControlCharacter);
        }
        let path = join(prefix, text);
        let Ok(st) = fstatat(Some(parent), name, AtFlags::AT_SYMLINK_NOFOLLOW) else {
            return self.skip(path, SkipReason::Unreadable);
        };
        match kind(&st) {
            SFlag::S_IFLNK => self.skip(path, SkipReason::Symlink),
            SFlag::S_IFDIR if depth + 1 >= MAX_PATH_DEPTH => self.skip(path, SkipReason::TooDeep),
            SFlag::S_IFDIR => match open_subdir(parent, name, &st).map(Dir::from) {
                Some(Ok(dir)) => self.dir(dir, &path, depth + 1),
                _ => self.skip(path, SkipReason::Unreadable),
            },
            SFlag::S_IFREG => self.file(parent, name, path, &st),
            _ => self.skip(path, SkipReason::NotRegular),
        }
    }

    fn file(&mut self, parent: RawFd, name: &CStr, path: String, st: &FileStat) {
        if let Some(stamps) = &mut self.stamping {
            stamps.insert(Stamp::of(st));
            return;
        }
        if st.st_nlink > 1 {
            return self.skip(path, SkipReason::HardLink);
        }
        if self.unchanged.contains(&Stamp::of(st)) {
            return;
        }
        let size = u64::try_from(st.st_size).unwrap_or(u64::MAX);
        let caps = self.caps;
        if size > caps.max_file_bytes {
            return self.skip(
                path,
                SkipReason::OverFileCap {
                    cap: caps.max_file_bytes,
                },
            );
        }
        if self.files >= caps.max_files {
            return self.skip(
                path,
                SkipReason::OverCountCap {
                    cap: caps.max_files,
                },
            );
        }
        if self.total_bytes + size > caps.max_total_bytes {
            return self.skip(
                path,
                SkipReason::OverTotalCap {
                    cap: caps.max_total_bytes,
                },
            );
        }
        let Some(file) = open(parent, name, st) else {
            return self.skip(path, SkipReason::Unreadable);
        };
        self.files += 1;
        self.total_bytes += size;
        self.listening = self.sink.begin(&path) && stream(file, size, self.sink);
    }

    fn skip(&mut self, path: String, reason: SkipReason) {
        if self.out.skipped.len() < MAX_SKIPPED_LISTED {
            self.out.skipped.push(SkippedFile { path, reason });
        } else {
            self.out.skipped_unlisted = self.out.skipped_unlisted.saturating_add(1);
        }
    }
}

/// Opens the regular file `name` that `fstatat` described as `seen`: `None` unless
/// the opened descriptor is that very file, still with one link and the size the
/// caps were checked against.
fn open(parent: RawFd, name: &CStr, seen: &FileStat) -> Option<std::fs::File> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOCTTY;
    let fd = open_as_seen(
        parent,
        name,
        flags,
        |st| kind(st) == SFlag::S_IFREG && st.st_nlink == 1 && st.st_size == seen.st_size,
        seen,
    )?;
    Some(std::fs::File::from(fd))
}

/// Opens the directory `name` that `fstatat` described as `seen`: `None` unless
/// the opened descriptor is that very directory.
fn open_subdir(parent: RawFd, name: &CStr, seen: &FileStat) -> Option<OwnedFd> {
    // O_DIRECTORY refuses anything else before the check below would.
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY;
    open_as_seen(parent, name, flags, |st| kind(st) == SFlag::S_IFDIR, seen)
}

/// Opens `name` beneath `parent` with `flags`, keeping the descriptor only if it is
/// the inode `fstatat` described as `seen` and `fits` what was looked at.
fn open_as_seen(
    parent: RawFd,
    name: &CStr,
    flags: OFlag,
    fits: impl Fn(&FileStat) -> bool,
    seen: &FileStat,
) -> Option<OwnedFd> {
    // O_NONBLOCK: should the entry have become a FIFO, open does not wait for a writer.
    let fd = open_beneath(parent, name, flags | OFlag::O_NONBLOCK, Mode::empty()).ok()?;
    let st = fstat(fd.as_raw_fd()).ok()?;
    let same = (st.st_dev, st.st_ino) == (seen.st_dev, seen.st_ino) && fits(&st);
    same.then_some(fd)
}

/// Passes the first `size` bytes of `file` to `sink` in chunks; `false` when the
/// sink stopped listening. A read error ends the file early: on the work dir's
/// tmpfs, with every writer dead, there is none to expect.
fn stream(file: std::fs::File, size: u64, sink: &mut dyn Sink) -> bool {
    let mut file = file.take(size);
    let mut chunk = vec![0u8; MAX_CHUNK_BYTES];
    loop {
        match file.read(&mut chunk) {
            Ok(0) => return true,
            Ok(n) => {
                if !sink.data(&chunk[..n]) {
                    return false;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "a produced file could not be read to its end");
                return true;
            }
        }
    }
}

fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}/{name}")
    }
}

/// A name that is no valid path, as it is reported: bytes that are not UTF-8
/// become U+FFFD and characters unsafe to show are escaped, so a report never
/// carries either.
fn shown(prefix: &str, name: &CStr) -> String {
    let name = text::shown(&String::from_utf8_lossy(name.to_bytes()), MAX_NAME_LEN);
    join(prefix, &name)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::symlink;
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    use super::*;

    const CAPS: Caps = Caps {
        max_files: 100,
        max_file_bytes: 1 << 20,
        max_total_bytes: 4 << 20,
    };

    fn tree() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        (dir, work)
    }

    fn write(work: &Path, path: &str, data: &[u8]) {
        let path = work.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }

    /// A collected file, whole.
    struct Got {
        path: String,
        data: Vec<u8>,
    }

    impl Sink for Vec<Got> {
        fn begin(&mut self, path: &str) -> bool {
            self.push(Got {
                path: path.into(),
                data: Vec::new(),
            });
            true
        }

        fn data(&mut self, chunk: &[u8]) -> bool {
            assert!(chunk.len() <= MAX_CHUNK_BYTES);
            self.last_mut()
                .expect("data after begin")
                .data
                .extend(chunk);
            true
        }
    }

    /// What one collection passed on and left out.
    struct Gathered {
        files: Vec<Got>,
        skipped: Vec<SkippedFile>,
        skipped_unlisted: u32,
    }

    fn gather(work: &Path, caps: Caps, inputs: &[Stamp]) -> std::io::Result<Gathered> {
        let mut files = Vec::new();
        let unchanged = inputs.iter().copied().collect();
        let Collected {
            skipped,
            skipped_unlisted,
        } = collect(work, caps, &unchanged, &mut files)?;
        Ok(Gathered {
            files,
            skipped,
            skipped_unlisted,
        })
    }

    fn paths(collected: &Gathered) -> Vec<&str> {
        collected.files.iter().map(|f| f.path.as_str()).collect()
    }

    fn skipped(collected: &Gathered) -> Vec<(&str, String)> {
        collected
            .skipped
            .iter()
            .map(|s| (s.path.as_str(), s.reason.to_string()))
            .collect()
    }

    #[test]
    fn regular_files_come_back_in_path_order_with_their_bytes() {
        let (_dir, work) = tree();
        let binary: Vec<u8> = (0..=255).collect();
        write(&work, "chart.png", &binary);
        write(&work, "data/out.csv", b"a,b\n1,2\n");
        write(&work, "data/deeper/x", b"");
        std::fs::create_dir(work.join("empty")).unwrap();
        let collected = gather(&work, CAPS, &[]).unwrap();
        assert_eq!(
            paths(&collected),
            ["chart.png", "data/deeper/x", "data/out.csv"]
        );
        assert_eq!(collected.files[0].data, binary);
        assert_eq!(collected.files[2].data, b"a,b\n1,2\n");
        assert!(collected.skipped.is_empty());
    }

    /// A file larger than a chunk arrives whole, in chunks; a sink that stops
    /// listening ends the walk at once.
    #[test]
    fn files_stream_in_chunks_and_a_deaf_sink_ends_the_walk() {
        let (_dir, work) = tree();
        let big: Vec<u8> = (0..3 * MAX_CHUNK_BYTES + 5).map(|i| i as u8).collect();
        write(&work, "a", &big);
        write(&work, "b", b"b");
        let collected = gather(&work, CAPS, &[]).unwrap();
        assert_eq!(collected.files[0].data, big);

        struct Deaf(u32);
        impl Sink for Deaf {
            fn begin(&mut self, _: &str) -> bool {
                self.0 += 1;
                true
            }
            fn data(&mut self, _: &[u8]) -> bool {
                false
            }
        }
        let mut deaf = Deaf(0);
        collect(&work, CAPS, &HashSet::new(), &mut deaf).unwrap();
        assert_eq!(
            deaf.0, 1,
            "the walk went on after the sink stopped listening"
        );
    }

    #[test]
    fn symlinks_are_never_followed() {
        let (dir, work) = tree();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "host secret").unwrap();
        std::fs::create_dir(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside/inner"), "outside").unwrap();
        symlink("/etc/passwd", work.join("passwd")).unwrap();
        symlink(&secret, work.join("secret")).unwrap();
        symlink(dir.path().join("outside"), work.join("linkdir")).unwrap();
        symlink("/", work.join("root")).unwrap();
        symlink("dangling", work.join("dangling")).unwrap();
        write(&work, "ok.txt", b"ok");
        let collected = gather(&work, CAPS, &[]).unwrap();
        assert_eq!(paths(&collected), ["ok.txt"]);
        let mut skipped = skipped(&collected);
        skipped.sort();
        assert_eq!(
            skipped,
            [
                ("dangling", "symlink".into()),
                ("linkdir", "symlink".into()),
                ("passwd", "symlink".into()),
                ("root", "symlink".into()),
                ("secret", "symlink".into()),
            ]
        );
    }

    #[test]
    fn hard_links_are_skipped_with_every_name() {
        let (_dir, work) = tree();
        write(&work, "a.txt", b"shared");
        std::fs::hard_link(work.join("a.txt"), work.join("b.txt")).unwrap();
        write(&work, "c.txt", b"single");
        let collected = gather(&work, CAPS, &[]).unwrap();
        assert_eq!(paths(&collected), ["c.txt"]);
        assert_eq!(
            skipped(&collected),
            [("a.txt", "hard link".into()), ("b.txt", "hard link".into())]
        );
    }

    #[test]
    fn fifos_and_sockets_are_never_opened() {
        let (_dir, work) = tree();
        nix::unistd::mkfifo(&work.join("pipe"), Mode::from_bits_truncate(0o644)).unwrap();
        let _listener = UnixListener::bind(work.join("sock")).unwrap();
        write(&work, "z.txt", b"z");
        let started = Instant::now();
        let collected = gather(&work, CAPS, &[]).unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(paths(&collected), ["z.txt"]);
        assert_eq!(
            skipped(&collected),
            [
                ("pipe", "not a regular file".into()),
                ("sock", "not a regular file".into())
            ]
        );
    }

    #[test]
    fn bad_names_are_skipped_and_shown_without_raw_bytes() {
        let (_dir, work) = tree();
        let bad = std::ffi::OsStr::from_bytes(b"bad\xff");
        std::fs::write(work.join(bad), "x").unwrap();
        std::fs::create_dir(work.join("dir\nname")).unwrap();
        write(&work, "dir\nname/inside", b"never seen");
        write(&work, "tab\there", b"x");
        write(&work, "rlo\u{202e}gnp.exe", b"x");
        write(&work, "line\u{2028}sep", b"x");
        write(&work, "nel\u{85}x", b"x");
        write(&work, "ünïcode ok", b"x");
        let collected = gather(&work, CAPS, &[]).unwrap();
        assert_eq!(paths(&collected), ["ünïcode ok"]);
        assert_eq!(
            skipped(&collected),
            [
                ("bad\u{FFFD}", "name not UTF-8".into()),
                ("dir\\u{a}name", "name has control characters".into()),
                ("line\\u{2028}sep", "name has control characters".into()),
                ("nel\\u{85}x", "name has control characters".into()),
                ("rlo\\u{202e}gnp.exe", "name has control characters".into()),
                ("tab\\u{9}here", "name has control characters".into()),
            ]
        );
    }

    #[test]
    fn nesting_is_bounded() {
        let (_dir, work) = tree();
        let ok = vec!["d"; MAX_PATH_DEPTH - 1].join("/");
        write(&work, &format!("{ok}/file"), b"deepest allowed");
        write(&work, &format!("{ok}/d/file"), b"too deep");
        let collected = gather(&work, CAPS, &[]).unwrap();
        assert_eq!(paths(&collected), [format!("{ok}/file")]);
        assert_eq!(
            skipped(&collected),
            [(
                format!("{ok}/d").as_str(),
                "nested more than 16 levels deep".into()
            )]
        );
    }

    #[test]
    fn caps_hold_and_what_they_leave_out_is_listed() {
        let (_dir, work) = tree();
        let caps = Caps {
            max_files: 3,
            max_file_bytes: 10,
            max_total_bytes: 15,
        };
        write(&work, "a", &[1; 8]);
        write(&work, "b", &[2; 11]);
        write(&work, "c", &[3; 8]);
        write(&work, "d", &[4; 7]);
        write(&work, "e", &[5; 0]);
        write(&work, "f", &[6; 1]);
        let collected = gather(&work, caps, &[]).unwrap();
        assert_eq!(paths(&collected), ["a", "d", "e"]);
        assert_eq!(
            skipped(&collected),
            [
                ("b", "over the per-file cap of 10 bytes".into()),
                ("c", "over the total size cap of 15 bytes".into()),
                ("f", "over the file count cap of 3".into()),
            ]
        );
    }

    /// Each cap is the most that is collected, not one less: a file as large as
    /// the per-file cap and the total cap, as the only file the count cap allows.
    #[test]
    fn a_file_exactly_at_every_cap_is_collected() {
        let (_dir, work) = tree();
        write(&work, "a", &[1; 10]);
        let caps = Caps {
            max_files: 1,
            max_file_bytes: 10,
            max_total_bytes: 10,
        };
        let collected = gather(&work, caps, &[]).unwrap();
        assert_eq!(paths(&collected), ["a"]);
        assert!(collected.skipped.is_empty());
    }

    #[test]
    fn many_files_are_counted_past_the_listing_limit() {
        let (_dir, work) = tree();
        let n = MAX_SKIPPED_LISTED + 200;
        for i in 0..n {
            write(&work, &format!("f{i:05}"), b"x");
        }
        let caps = Caps {
            max_files: 100,
            ..CAPS
        };
        let collected = gather(&work, caps, &[]).unwrap();
        assert_eq!(collected.files.len(), 100);
        assert_eq!(collected.files[0].path, "f00000");
        assert_eq!(collected.skipped.len(), MAX_SKIPPED_LISTED);
        assert_eq!(
            collected.skipped_unlisted as usize,
            n - 100 - MAX_SKIPPED_LISTED
        );
        assert_eq!(collected.skipped[0].path, "f00100");
    }

    #[test]
    fn unchanged_input_files_are_left_out_and_changed_ones_collected() {
        let (_dir, work) = tree();
        write(&work, "in.csv", b"input");
        write(&work, "changed.csv", b"input");
        let stamp = |p: &str| Stamp::of(&nix::sys::stat::stat(&work.join(p)).unwrap());
        let inputs = [stamp("in.csv"), stamp("changed.csv")];
        // A coarse clock may give the rewrite the same change time; a size change
        // still shows.
        std::fs::write(work.join("changed.csv"), "output!").unwrap();
        let collected = gather(&work, CAPS, &inputs).unwrap();
        assert_eq!(paths(&collected), ["changed.csv"]);
    }

    /// Whatever is swapped in between the look and the open, only the regular file
    /// that was looked at is read: same inode, one link, the size the caps were
    /// checked against; and a FIFO swapped in is not waited on.
    #[test]
    fn only_the_file_that_was_looked_at_is_opened() {
        let (_dir, work) = tree();
        write(&work, "a", b"aaaa");
        write(&work, "b", b"bbbb");
        std::fs::create_dir(work.join("d")).unwrap();
        nix::unistd::mkfifo(&work.join("pipe"), Mode::from_bits_truncate(0o644)).unwrap();
        let parent = open_dir(&work).unwrap();
        let fd = parent.as_raw_fd();
        let look = |name: &CStr| fstatat(Some(fd), name, AtFlags::AT_SYMLINK_NOFOLLOW).unwrap();
        let (a, b, d) = (look(c"a"), look(c"b"), look(c"d"));
        assert!(open(fd, c"a", &a).is_some());
        assert!(
            open(fd, c"b", &a).is_none(),
            "another file of the same size"
        );
        assert!(open(fd, c"d", &d).is_none(), "a directory");
        assert!(open(fd, c"pipe", &a).is_none(), "a FIFO");
        std::fs::hard_link(work.join("b"), work.join("b2")).unwrap();
        assert!(open(fd, c"b", &b).is_none(), "a file linked since");
        std::fs::write(work.join("a"), b"grown").unwrap();
        assert!(open(fd, c"a", &a).is_none(), "a file grown since");
    }

    /// Likewise for a directory: only the one that was looked at is walked, and a
    /// FIFO swapped in is not waited on (a session's processes live on while its
    /// call's files are collected).
    #[test]
    fn only_the_directory_that_was_looked_at_is_opened() {
        let (_dir, work) = tree();
        std::fs::create_dir(work.join("d")).unwrap();
        std::fs::create_dir(work.join("e")).unwrap();
        write(&work, "f", b"f");
        nix::unistd::mkfifo(&work.join("pipe"), Mode::from_bits_truncate(0o644)).unwrap();
        let parent = open_dir(&work).unwrap();
        let fd = parent.as_raw_fd();
        let look = |name: &CStr| fstatat(Some(fd), name, AtFlags::AT_SYMLINK_NOFOLLOW).unwrap();
        let d = look(c"d");
        assert!(open_subdir(fd, c"d", &d).is_some());
        assert!(open_subdir(fd, c"e", &d).is_none(), "another directory");
        assert!(open_subdir(fd, c"f", &d).is_none(), "a file");
        // Nothing ever writes to this FIFO: an open that waited would hang the test.
        let (done, waited) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(open_subdir(fd, c"pipe", &d).is_none());
        });
        let refused = waited.recv_timeout(Duration::from_secs(10));
        assert_eq!(refused, Ok(true), "a FIFO is neither waited on nor walked");
    }

    #[test]
    fn the_work_dir_itself_must_not_be_a_symlink() {
        let (dir, work) = tree();
        let link = dir.path().join("link");
        symlink(&work, &link).unwrap();
        assert!(gather(&link, CAPS, &[]).is_err());
    }

    #[test]
    fn a_session_call_collects_only_what_changed_after_the_stamps() {
        let (_dir, work) = tree();
        write(&work, "kept.txt", b"old");
        write(&work, "rewritten.txt", b"old");
        write(&work, "sub/deep.txt", b"old");
        symlink("/etc/passwd", work.join("link")).unwrap();
        let stamps = stamps(&work).unwrap();
        assert_eq!(stamps.len(), 3);
        write(&work, "new.txt", b"new");
        std::fs::write(work.join("rewritten.txt"), b"newer").unwrap();
        let mut files = Vec::new();
        collect(&work, CAPS, &stamps, &mut files).unwrap();
        let got: Vec<&str> = files.iter().map(|f: &Got| f.path.as_str()).collect();
        assert_eq!(got, ["new.txt", "rewritten.txt"]);
    }

    /// Every entry under `root` (itself included) with what a write, chown or chmod
    /// would change: mode, owner, size, links, mtime and ctime (ctime moves on any
    /// of them, even one that restores the old value).
    fn snapshot(root: &Path) -> BTreeMap<PathBuf, [i64; 9]> {
        use std::os::unix::fs::MetadataExt;
        let mut seen = BTreeMap::new();
        let mut todo = vec![root.to_owned()];
        while let Some(path) = todo.pop() {
            let m = std::fs::symlink_metadata(&path).unwrap();
            if m.is_dir() {
                todo.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            }
            let key = [
                i64::from(m.mode()),
                i64::from(m.uid()),
                i64::from(m.gid()),
                m.size() as i64,
                m.nlink() as i64,
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec(),
            ];
            seen.insert(path, key);
        }
        seen
    }

    /// README: nothing is ever written, chowned or chmodded in the work dir. A
    /// collection over every kind of entry (files it passes on, files over a cap,
    /// unreadable modes, links, a FIFO, nested dirs) leaves each one as it was.
    #[test]
    fn collecting_changes_nothing_in_the_work_dir() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, work) = tree();
        write(&work, "a.txt", b"a");
        write(&work, "sub/deep/b.csv", b"x,y\n");
        write(
            &work,
            "big.bin",
            &vec![0; (CAPS.max_file_bytes + 1) as usize],
        );
        write(&work, "private", b"p");
        std::fs::set_permissions(work.join("private"), std::fs::Permissions::from_mode(0o000))
            .unwrap();
        std::fs::set_permissions(
            work.join("sub/deep"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        symlink("/etc/passwd", work.join("link")).unwrap();
        std::fs::hard_link(work.join("a.txt"), work.join("sub/a-again")).unwrap();
        nix::unistd::mkfifo(&work.join("pipe"), Mode::from_bits_truncate(0o644)).unwrap();
        // Past the coarse clock's tick (older kernels stamp ctime by jiffies), so
        // that a chmod to the same mode would still move it.
        std::thread::sleep(Duration::from_millis(20));
        let before = snapshot(&work);
        let gathered = gather(&work, CAPS, &[]).unwrap();
        // (`private` too when the test runs as root, as collection does.)
        assert!(paths(&gathered).contains(&"sub/deep/b.csv"));
        assert!(!gathered.skipped.is_empty());
        assert_eq!(snapshot(&work), before);
    }

    /// README's skip reason `unreadable`: an entry the collector cannot open is
    /// listed as such, and the walk goes on. The collector runs as root; this test
    /// takes root's file powers away from its own thread (a nonzero fsuid drops
    /// CAP_DAC_OVERRIDE, capabilities(7)), so that modes 000 refuse it.
    #[test]
    fn entries_that_cannot_be_opened_are_skipped_as_unreadable() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, work) = tree();
        let mode = |path: &Path, mode| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        mode(dir.path(), 0o755);
        write(&work, "a.txt", b"a");
        write(&work, "private", b"p");
        write(&work, "locked/inside.txt", b"i");
        write(&work, "z.txt", b"z");
        mode(&work.join("private"), 0o000);
        mode(&work.join("locked"), 0o000);
        let collected = std::thread::spawn(move || {
            nix::unistd::setfsuid(nix::unistd::Uid::from_raw(65534));
            gather(&work, CAPS, &[]).unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(paths(&collected), ["a.txt", "z.txt"]);
        assert_eq!(
            skipped(&collected),
            [
                ("locked", "unreadable".into()),
                ("private", "unreadable".into()),
            ]
        );
        drop(dir);
    }
}
