//! Follows the host under the jails. The jail setup (which `/etc` files exist to be
//! bound, the interpreter) is decided when it is made; when the interpreter, its
//! package directories or those `/etc` files change on disk — an upgrade of
//! Python or numpy, matplotlib installed after the executor started — the setup
//! is made again and the fork server's template replaced. Nothing fails: a job
//! keeps the setup it started with, and a replaced template serves until its
//! successor is ready.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::config::Config;
use crate::jail::{etc, Current, Jail};
use crate::template::ForkServer;

/// How often the host is looked at: a few `stat` calls each time.
const POLL: Duration = Duration::from_secs(5);
/// Where Debian's and a local install's Python packages live.
const PACKAGE_ROOTS: &[&str] = &["/usr/lib", "/usr/local/lib"];

/// What is known of one path: whether it exists, and which file it is.
type Stamp = Option<(u64, u64, u64, (i64, i64), (i64, i64))>;

/// Watches the host until the executor stops, remaking `jail` and replacing
/// the fork server's templates (if it is on) on every change.
pub async fn watch(config: Config, jail: Arc<Current>, fork_server: Option<Arc<ForkServer>>) {
    let mut known = fingerprint(&config);
    loop {
        tokio::time::sleep(POLL).await;
        let now = fingerprint(&config);
        if now == known {
            continue;
        }
        let changed: Vec<_> = now
            .iter()
            .zip(&known)
            .filter(|(a, b)| a != b)
            .map(|((path, _), _)| path.display().to_string())
            .collect();
        info!(
            ?changed,
            "the host changed under the jails: setting them up again"
        );
        match Jail::new(&config) {
            Ok(fresh) => {
                jail.replace(fresh);
                if let Some(server) = &fork_server {
                    server.reload();
                }
                known = now;
            }
            Err(e) => {
                warn!(error = %crate::error::chain(&e), "cannot set the jails up again; keeping the old setup")
            }
        }
    }
}

/// The paths a jail's setup depends on, each with its stamp, in a fixed order.
fn fingerprint(config: &Config) -> Vec<(PathBuf, Stamp)> {
    let mut paths: Vec<PathBuf> = vec![config.python.clone()];
    paths.extend(etc::HOST_FILES.iter().map(PathBuf::from));
    paths.extend(config.ro_binds.iter().cloned());
    paths.push(config.fork_library.clone());
    for root in PACKAGE_ROOTS {
        paths.extend(python_dirs(Path::new(root)));
    }
    paths.into_iter().map(|p| (p.clone(), stamp(&p))).collect()
}

/// `python3*` under `root` and their `dist-packages`/`site-packages`: a package
/// installed, removed or upgraded renames or adds an entry there.
fn python_dirs(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .flat_map(|e| {
            let dir = e.path();
            [
                dir.join("dist-packages"),
                dir.join("site-packages"),
                dir.clone(),
            ]
        })
        .collect();
    dirs.sort();
    dirs
}

/// Which file `path` is now (following links): device, inode, size, mtime, ctime.
fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((
        m.dev(),
        m.ino(),
        m.size(),
        (m.mtime(), m.mtime_nsec()),
        (m.ctime(), m.ctime_nsec()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_package_installed_changes_the_fingerprint_and_nothing_else_does() {
        let root = tempfile::tempdir().unwrap();
        let packages = root.path().join("python3.11/dist-packages");
        std::fs::create_dir_all(&packages).unwrap();
        let before: Vec<_> = python_dirs(root.path()).iter().map(|p| stamp(p)).collect();
        assert_eq!(before.len(), 3);
        let again: Vec<_> = python_dirs(root.path()).iter().map(|p| stamp(p)).collect();
        assert_eq!(before, again);
        // What `apt install python3-matplotlib` does to the directory.
        std::thread::sleep(Duration::from_millis(10));
        std::fs::create_dir(packages.join("matplotlib")).unwrap();
        let after: Vec<_> = python_dirs(root.path()).iter().map(|p| stamp(p)).collect();
        assert_ne!(before, after);
    }

    #[test]
    fn a_missing_file_appearing_changes_its_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("matplotlibrc");
        assert_eq!(stamp(&file), None);
        std::fs::write(&file, "backend: Agg\n").unwrap();
        assert!(stamp(&file).is_some());
    }
}
