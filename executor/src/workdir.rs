//! Per-job disk space: a size- and inode-limited tmpfs at `<state dir>/jobs/<id>`,
//! holding the job's work dir (`work/`, its cwd), its `/tmp` (`tmp/`) and its code
//! (`sandbox/`, root's, read-only in the jail). A job that
//! fills it gets ENOSPC; the host's disk never sees its files. Unmounting frees
//! everything at once, however many files the job made.

use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{umount2, MntFlags, MsFlags};

use crate::error::Error;
use crate::jail::bwrap::JobDirs;

/// The parent of every job's tmpfs.
pub fn jobs_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("jobs")
}

/// Opens a work dir itself as a directory descriptor to work beneath, refusing a
/// symlink in its place.
pub fn open_dir(path: &Path) -> std::io::Result<OwnedFd> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map(OwnedFd::from)
}

/// A job's tmpfs with less free space than this counts as full: a few pages, so
/// that one refused write counts however the job then tidied up its last page.
const FULL_BELOW_BYTES: u64 = 64 << 10;
/// Likewise for inodes.
const FULL_BELOW_INODES: u64 = 4;

/// Size of a job's tmpfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskLimits {
    pub bytes: u64,
    pub inodes: u32,
}

/// Creates the state dir layout and removes what a previous run left behind (the
/// executor was killed mid-job, or the host lost power): mounts first, then dirs.
pub fn prepare(state_dir: &Path) -> Result<(), Error> {
    let jobs = jobs_dir(state_dir);
    for dir in [state_dir, &jobs] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .create(dir)
            .map_err(Error::setup("create", dir))?;
        // Traversable but not listable by the sandbox uid: bwrap, running as that uid,
        // must reach a work dir by name, and no job may list the others.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
            .map_err(Error::setup("chmod", dir))?;
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(Error::setup("read", "/proc/self/mountinfo"))?;
    for point in mount_points_under(&mountinfo, &jobs) {
        tracing::info!(path = %point.display(), "unmounting a work dir left by a previous run");
        // Detached: a process of the old run may still hold it; it goes when that does.
        umount2(&point, MntFlags::MNT_DETACH)
            .map_err(|e| Error::setup("unmount", &point)(e.into()))?;
    }
    let entries = std::fs::read_dir(&jobs).map_err(Error::setup("list", &jobs))?;
    for entry in entries.flatten() {
        let path = entry.path();
        tracing::info!(path = %path.display(), "removing a work dir left by a previous run");
        // remove_dir_all does not follow symlinks (fixed in Rust 1.58.1, CVE-2022-21658).
        std::fs::remove_dir_all(&path).map_err(Error::setup("remove", &path))?;
    }
    Ok(())
}

fn size_options(limits: DiskLimits) -> String {
    format!("size={},nr_inodes={}", limits.bytes, limits.inodes)
}

/// Mount points strictly below `dir`, deepest first, from /proc/self/mountinfo text.
fn mount_points_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|point| point.starts_with(dir) && point != dir)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points
}

/// A job's tmpfs; dropping it unmounts and removes it.
#[derive(Debug)]
pub struct WorkDir {
    root: PathBuf,
    mounted: bool,
    limits: DiskLimits,
}

impl WorkDir {
    /// Mounts a fresh tmpfs at `<jobs dir>/<id>` and makes `work/` and `tmp/` in it,
    /// owned by the sandbox uid.
    pub fn create(
        jobs_dir: &Path,
        id: u64,
        owner: (u32, u32),
        limits: DiskLimits,
    ) -> Result<WorkDir, Error> {
        let root = jobs_dir.join(id.to_string());
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&root)
            .map_err(Error::setup("create", &root))?;
        let mut dir = WorkDir {
            root,
            mounted: false,
            limits,
        };
        let (uid, gid) = owner;
        let options = format!("{},mode=0700,uid={uid},gid={gid}", size_options(limits));
        nix::mount::mount(
            Some("pysandbox"),
            &dir.root,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(options.as_str()),
        )
        .map_err(|e| Error::setup("mount tmpfs on", &dir.root)(e.into()))?;
        dir.mounted = true;
        // The code's directory stays root's: the job reads its code and cannot swap it.
        let sandbox = dir.root.join("sandbox");
        std::fs::create_dir(&sandbox).map_err(Error::setup("create", &sandbox))?;
        // Explicitly: the executor's umask (0077) would keep the job out.
        std::fs::set_permissions(&sandbox, std::fs::Permissions::from_mode(0o755))
            .map_err(Error::setup("chmod", &sandbox))?;
        for (sub, mode) in [("work", 0o700), ("tmp", 0o1777)] {
            let path = dir.root.join(sub);
            std::fs::create_dir(&path).map_err(Error::setup("create", &path))?;
            // chmod while we still own it: afterwards it would take CAP_FOWNER.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(Error::setup("chmod", &path))?;
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                .map_err(Error::setup("chown", &path))?;
        }
        Ok(dir)
    }

    /// The job's cwd (`/work` in the jail), its `/tmp` and its `/sandbox`.
    pub fn dirs(&self) -> JobDirs {
        JobDirs {
            work: self.root.join("work"),
            tmp: self.root.join("tmp"),
            sandbox: self.root.join("sandbox"),
        }
    }

    /// Writes the job's code where the jail expects it, readable but not writable
    /// by the job.
    pub fn write_code(&self, code: &str) -> Result<(), Error> {
        self.write_sandbox("main.py", code.as_bytes())
    }

    /// Writes `data` to `/sandbox/<name>` in the jail, readable but not writable by
    /// the job (the directory is root's): its code, or the mark of a session.
    pub fn write_sandbox(&self, name: &str, data: &[u8]) -> Result<(), Error> {
        let path = self.root.join("sandbox").join(name);
        std::fs::write(&path, data).map_err(Error::setup("write", &path))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            .map_err(Error::setup("chmod", &path))
    }

    /// Gives the tmpfs other limits (a warm jail's job may ask for less, or more up
    /// to the maximum). Shrinking below what is in use fails, which cannot happen
    /// before the job ran.
    pub fn resize(&mut self, limits: DiskLimits) -> Result<(), Error> {
        if limits == self.limits {
            return Ok(());
        }
        nix::mount::mount(
            None::<&str>,
            &self.root,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(size_options(limits).as_str()),
        )
        .map_err(|e| Error::setup("resize the tmpfs on", &self.root)(e.into()))?;
        self.limits = limits;
        Ok(())
    }

    /// Whether the job ran out of space or inodes: a write the kernel refused leaves
    /// less than a page free (tmpfs writes page by page and fails only on the page
    /// that does not fit), so "nearly no room left" is the evidence. The margin is
    /// absolute and small, so that a small disk is not full from the start.
    pub fn is_full(&self) -> bool {
        nix::sys::statvfs::statvfs(&self.root).is_ok_and(|st| {
            st.blocks_available() * st.fragment_size() < FULL_BELOW_BYTES
                || st.files_available() < FULL_BELOW_INODES
        })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        // Every process of the job is dead by now (the jail's pid namespace is gone),
        // so nothing can race the removal with new files or symlinks.
        if self.mounted {
            if let Err(e) = umount2(&self.root, MntFlags::MNT_DETACH) {
                tracing::error!(path = %self.root.display(), error = %e, "cannot unmount work dir");
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            tracing::error!(path = %self.root.display(), error = %e, "cannot remove work dir");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_mounts_below_the_jobs_dir_are_swept_deepest_first() {
        let mountinfo = "\
22 1 0:21 / / rw - ext4 /dev/vda rw
90 22 0:50 / /var/lib/pysandbox/jobs/3 rw - tmpfs pysandbox rw
91 90 0:51 / /var/lib/pysandbox/jobs/3/work/inner rw - tmpfs x rw
92 22 0:52 / /var/lib/pysandbox/jobs rw - tmpfs x rw
93 22 0:53 / /var/lib/pysandbox/jobsx/1 rw - tmpfs x rw";
        assert_eq!(
            mount_points_under(mountinfo, Path::new("/var/lib/pysandbox/jobs")),
            [
                PathBuf::from("/var/lib/pysandbox/jobs/3/work/inner"),
                PathBuf::from("/var/lib/pysandbox/jobs/3"),
            ]
        );
    }

    #[test]
    fn leftover_dirs_are_swept_without_following_links() {
        let state = tempfile::tempdir().unwrap();
        let leftover = jobs_dir(state.path()).join("old");
        std::fs::create_dir_all(leftover.join("sub")).unwrap();
        std::os::unix::fs::symlink("/etc", leftover.join("link")).unwrap();
        prepare(state.path()).unwrap();
        assert!(!leftover.exists());
        assert!(Path::new("/etc/passwd").exists());
    }

    /// Needs CAP_SYS_ADMIN to mount; CI runs as root.
    #[test]
    fn a_work_dir_is_a_limited_tmpfs_that_vanishes_on_drop() {
        if !nix::unistd::geteuid().is_root() {
            assert!(std::env::var_os("CI").is_none(), "CI must run as root");
            return eprintln!("skipped: needs root");
        }
        let state = tempfile::tempdir().unwrap();
        prepare(state.path()).unwrap();
        let limits = DiskLimits {
            bytes: 1 << 20,
            inodes: 64,
        };
        let dir = WorkDir::create(&jobs_dir(state.path()), 1, (65534, 65534), limits).unwrap();
        let root = dir.root.clone();
        let mut dir = dir;
        dir.write_code("print(1)").unwrap();
        assert!(
            !dir.is_full(),
            "a 1 MiB disk holding only the code is not full"
        );
        let big = std::fs::write(dir.dirs().work.join("big"), vec![0u8; 2 << 20]);
        assert_eq!(big.unwrap_err().raw_os_error(), Some(libc::ENOSPC));
        assert!(dir.is_full());
        dir.resize(DiskLimits {
            bytes: 4 << 20,
            inodes: 64,
        })
        .unwrap();
        std::fs::write(dir.dirs().work.join("big"), vec![0u8; 2 << 20]).unwrap();
        dir.write_code("print(1)").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.dirs().sandbox.join("main.py")).unwrap(),
            "print(1)"
        );
        drop(dir);
        assert!(!root.exists());
    }
}
