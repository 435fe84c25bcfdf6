//! Input files: written into a fresh work dir, before the job's jail exists, owned by
//! the sandbox uid so the job may change or delete them.
//!
//! No job process has touched the work dir yet, so nothing can race these writes;
//! they still go through [`open_beneath`] one component at a time, never following a
//! symlink, and create files with `O_EXCL`, so even a work dir that was not fresh
//! could not redirect them outside it.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{fstat, mkdirat, Mode};
use pysandbox_shared::InputFile;

use crate::collect::Stamp;
use crate::error::Error;
use crate::sys::open_beneath;
use crate::workdir::open_dir;

/// Writes `files` below `work`, creating directories as needed, all owned by
/// `owner`. Returns each file's [`Stamp`], so that collection can tell an input the
/// job left unchanged from a file it produced.
pub fn write(work: &Path, files: &[InputFile], owner: (u32, u32)) -> Result<Vec<Stamp>, Error> {
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
            write_one(&root, file, owner).map_err(|e| match e {
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

fn write_one(root: &OwnedFd, file: &InputFile, owner: (u32, u32)) -> Result<Stamp, Errno> {
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
    let fd = open_beneath(
        at,
        &c_name(name)?,
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
        let stamps = write(dir.path(), &files, me()).unwrap();
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
        write(dir.path(), &[input("d/f", b"x")], (65534, 65534)).unwrap();
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
            let err = write(&work, &[file], me()).unwrap_err();
            assert!(matches!(err, Error::WriteInput { .. }), "{err}");
        }
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }
}
