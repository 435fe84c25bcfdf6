//! Per-job work dirs under `<state dir>/jobs`, owned by the sandbox uid while the job
//! runs and removed when their guard drops, whatever way the job ended.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::Error;

/// The parent of every work dir.
pub fn jobs_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("jobs")
}

/// Creates the state dir layout and removes work dirs a previous run left behind
/// (the executor was killed mid-job, or the host lost power).
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
    let entries = std::fs::read_dir(&jobs).map_err(Error::setup("list", &jobs))?;
    for entry in entries.flatten() {
        let path = entry.path();
        tracing::info!(path = %path.display(), "removing a work dir left by a previous run");
        // remove_dir_all does not follow symlinks (fixed in Rust 1.58.1, CVE-2022-21658).
        std::fs::remove_dir_all(&path).map_err(Error::setup("remove", &path))?;
    }
    Ok(())
}

/// A job's work dir; dropping it deletes the directory and everything the job left.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    /// Creates `<jobs dir>/<id>`, private to the sandbox uid.
    pub fn create(jobs_dir: &Path, id: u64, uid: u32, gid: u32) -> Result<WorkDir, Error> {
        let path = jobs_dir.join(id.to_string());
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(Error::setup("create", &path))?;
        let dir = WorkDir { path };
        std::os::unix::fs::chown(&dir.path, Some(uid), Some(gid))
            .map_err(Error::setup("chown", &dir.path))?;
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        // Every process of the job is dead by now (the jail's pid namespace is gone),
        // so nothing can race the removal with new files or symlinks.
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::error!(path = %self.path.display(), error = %e, "cannot remove work dir");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_swept_and_a_guard_removes_its_dir() {
        let state = tempfile::tempdir().unwrap();
        let leftover = jobs_dir(state.path()).join("old");
        std::fs::create_dir_all(leftover.join("sub")).unwrap();
        std::os::unix::fs::symlink("/etc", leftover.join("link")).unwrap();
        prepare(state.path()).unwrap();
        assert!(!leftover.exists());
        assert!(
            Path::new("/etc/passwd").exists(),
            "the sweep must not follow links"
        );

        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        let dir = WorkDir::create(&jobs_dir(state.path()), 1, uid, gid).unwrap();
        let path = dir.path().to_owned();
        std::fs::write(path.join("f"), "x").unwrap();
        drop(dir);
        assert!(!path.exists());
    }
}
