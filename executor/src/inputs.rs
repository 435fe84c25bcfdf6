//! Input files: written into a fresh work dir, before the job's jail exists, owned by
//! the sandbox uid so the job may change or delete them.
//!
//! For a job, no job process has touched the work dir yet, so nothing can race these
//! writes. A session's call writes into a work dir its live processes share, so the
//! writes go through [`open_beneath`] one component at a time, never following a
//! symlink, and create files with `O_EXCL`: nothing the job put there, or puts there
//! meanwhile, can redirect them outside it.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{fstat, mkdirat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};
use pysandbox_shared::InputFile;

use crate::collect::Stamp;
use crate::error::Error;
use crate::sys::open_beneath;
use crate::workdir::open_dir;

/// Writes `files` below `work`, creating directories as needed, all owned by
/// `owner`. Returns each file's [`Stamp`], so that collection can tell an input the
/// job left unchanged from a file it produced. With `replace` (a session's call),
/// a file of the same name is replaced; a directory in its way is not.
pub fn write(
    work: &Path,
    files: &[InputFile],
    owner: (u32, u32),
    replace: bool,
) -> Result<Vec<Stamp>, Error> {
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let root = open_dir(work).map_err(|e| Error::WriteInput {
        path: work.to_owned(),
        source: e,
    })?;
    files
        .iter()
        .map(|file| {
            write_one(&root, file, owner, replace).map_err(|e| match e {
                // The job's disk (its tmpfs) is too small for them: the caller's to fix.
                Errno::ENOSPC | Errno::EDQUOT | Errno::EFBIG => Error::InputsDoNotFit,
                e => Error::WriteInput {
                    path: file.path.as_str().into(),
                    source: e.into(),
                },
            })
        })
        .collect()
}

fn write_one(
    root: &OwnedFd,
    file: &InputFile,
    owner: (u32, u32),
    replace: bool,
) -> Result<Stamp, Errno> {
    let mut components: Vec<&str> = file.path.components().collect();
    let name = components.pop().ok_or(Errno::EINVAL)?;
    let mut parent: Option<OwnedFd> = None;
    for dir in components {
        let at = parent.as_ref().unwrap_or(root).as_raw_fd();
        let dir = c_name(dir)?;
        match mkdirat(Some(at), dir.as_c_str(), Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(e),
        }
        let fd = open_beneath(
            at,
            &dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        )?;
        chown(&fd, owner)?;
        parent = Some(fd);
    }
    let at = parent.as_ref().unwrap_or(root).as_raw_fd();
    let name = c_name(name)?;
    if replace {
        // The name only goes: what it named (a file, a link) is never opened, and a
        // file the live job puts back in the meantime makes the create below fail.
        match unlinkat(Some(at), name.as_c_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    let fd = open_beneath(
        at,
        &name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL,
        Mode::from_bits_truncate(0o644),
    )?;
    let mut out = std::fs::File::from(fd);
    out.write_all(&file.data).map_err(errno)?;
    chown(&out, owner)?;
    Ok(Stamp::of(&fstat(out.as_raw_fd())?))
}

fn chown(fd: &impl AsFd, (uid, gid): (u32, u32)) -> Result<(), Errno> {
    std::os::unix::fs::fchown(fd, Some(uid), Some(gid)).map_err(errno)
}

fn c_name(name: &str) -> Result<CString, Errno> {
    CString::new(name).map_err(|_| Errno::EINVAL)
}

fn errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use pysandbox_shared::RelativePath;

    use super::*;

    fn input(path: &str, data: &[u8]) -> InputFile {
        InputFile {
            path: RelativePath::parse(path).unwrap(),
            data: data.to_vec(),
        }
    }

    /// Our own uid and gid, so the test needs no root to chown.
    fn me() -> (u32, u32) {
        (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
    }

    #[test]
    fn files_and_their_directories_are_created() {
        let dir = tempfile::tempdir().unwrap();
        let files = [input("data/in.csv", b"a,b\n"), input("bin", &[0, 255])];
        let stamps = write(dir.path(), &files, me(), false).unwrap();
        assert_eq!(stamps.len(), 2);
        assert_eq!(
            std::fs::read(dir.path().join("data/in.csv")).unwrap(),
            b"a,b\n"
        );
        assert_eq!(std::fs::read(dir.path().join("bin")).unwrap(), [0, 255]);
        let meta = std::fs::metadata(dir.path().join("data")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), me());
    }

    /// Needs root to give the files away; CI runs as root.
    #[test]
    fn files_belong_to_the_sandbox_uid() {
        if !nix::unistd::geteuid().is_root() {
            assert!(std::env::var_os("CI").is_none(), "CI must run as root");
            return eprintln!("skipped: needs root");
        }
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &[input("d/f", b"x")], (65534, 65534), false).unwrap();
        for path in ["d", "d/f"] {
            let meta = std::fs::metadata(dir.path().join(path)).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (65534, 65534), "{path}");
        }
    }

    #[test]
    fn a_symlink_in_the_way_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&work).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, work.join("data")).unwrap();
        std::os::unix::fs::symlink(outside.join("f"), work.join("f")).unwrap();
        for file in [input("data/in.csv", b"x"), input("f", b"x")] {
            let err = write(&work, &[file], me(), false).unwrap_err();
            assert!(matches!(err, Error::WriteInput { .. }), "{err}");
        }
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn a_session_call_replaces_a_file_and_never_follows_a_link_in_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(dir.path().join("old"), b"before").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        let files = [input("old", b"after"), input("link", b"mine")];
        assert!(write(dir.path(), &files[..1], me(), false).is_err());
        write(dir.path(), &files, me(), true).unwrap();
        assert_eq!(std::fs::read(dir.path().join("old")).unwrap(), b"after");
        assert_eq!(std::fs::read(dir.path().join("link")).unwrap(), b"mine");
        assert!(!dir.path().join("link").is_symlink());
        assert_eq!(std::fs::read(outside.path()).unwrap(), b"");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert!(write(dir.path(), &[input("sub", b"x")], me(), true).is_err());
    }
}
