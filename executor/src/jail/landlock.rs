//! Landlock, applied by jail-init to itself just before it becomes Python: a second
//! wall behind the mounts. Even if a bind were misconfigured and exposed a host path,
//! the job could read only the paths below, write only its work dir, `/tmp` and
//! `/dev/shm`, connect over TCP only to the ports listed (none without network), and
//! — scoped — neither signal nor reach the abstract sockets of anything outside its
//! own domain: bwrap's pid 1, socat, the host.
//!
//! Landlock is best effort: on a kernel without it, or with an older ABI, what the
//! kernel supports is enforced and the rest is not. The executor logs the ABI once at
//! start and reports it in `/health` and `check`.

use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, AccessNet, NetPort, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreated, RulesetCreatedAttr, RulesetError, RulesetStatus, Scope, ABI,
};

/// The newest ABI whose rights this policy was written and tested against.
const TARGET_ABI: ABI = ABI::V6;

/// Paths of the jail every job may read and execute.
const READ: &[&str] = &["/usr", "/etc", "/sandbox", "/proc", "/dev"];
/// Paths of the jail every job may change.
const WRITE: &[&str] = &["/work", "/tmp", "/dev/shm"];
/// The paths of [`READ`] and [`WRITE`] that a forked job mounts for itself. A rule
/// on the directory a mount later covers does not reach the mount (landlock skips
/// hidden mount points), so these are granted only once mounted.
const MOUNTED_BY_THE_JOB: &[&str] = &["/work", "/tmp", "/dev/shm", "/sandbox"];
/// Character devices a job may read and write (but not create or remove).
const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];

/// What a jail's processes may touch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    pub read: Vec<PathBuf>,
    pub write: Vec<PathBuf>,
    pub devices: Vec<PathBuf>,
    pub connect_ports: Vec<u16>,
}

impl Rules {
    /// The jail's fixed layout, plus read-only `extra` paths (venvs, non-merged-/usr
    /// library dirs) and the TCP ports the job may connect to.
    pub fn for_jail(extra: impl IntoIterator<Item = PathBuf>, connect_ports: Vec<u16>) -> Rules {
        let mut read = paths(READ, |_| true);
        read.extend(extra);
        Rules {
            read,
            write: paths(WRITE, |_| true),
            devices: paths(DEVICES, |_| true),
            connect_ports,
        }
    }

    /// [`Rules::for_jail`] without network, as far as it holds before a forked job
    /// mounted its own directories: what a spare grants before its order comes.
    pub fn for_forked_job_before_mounts() -> Rules {
        let not_mounted = |path: &&str| !MOUNTED_BY_THE_JOB.contains(path);
        Rules {
            read: paths(READ, not_mounted),
            write: paths(WRITE, not_mounted),
            devices: paths(DEVICES, |_| true),
            connect_ports: Vec::new(),
        }
    }

    /// The rest of it, once they are mounted: the job's own directories and the
    /// `extra` read-only paths.
    pub fn for_forked_job_after_mounts(extra: impl IntoIterator<Item = PathBuf>) -> Rules {
        let mounted = |path: &&str| MOUNTED_BY_THE_JOB.contains(path);
        let mut read = paths(READ, mounted);
        read.extend(extra);
        Rules {
            read,
            write: paths(WRITE, mounted),
            ..Rules::default()
        }
    }
}

/// The paths of `list` that `keep` keeps.
fn paths(list: &[&str], keep: impl Fn(&&str) -> bool) -> Vec<PathBuf> {
    list.iter()
        .filter(|path| keep(path))
        .map(PathBuf::from)
        .collect()
}

/// Restricts the calling thread, and every process it then starts, to `rules`.
pub fn apply(rules: &Rules) -> Result<RulesetStatus, RulesetError> {
    finish(start(rules)?, &Rules::default())
}

/// A ruleset granting `rules`, not yet in force: [`finish`] adds more and enforces it.
pub fn start(rules: &Rules) -> Result<RulesetCreated, RulesetError> {
    let ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(TARGET_ABI))?
        .handle_access(AccessNet::ConnectTcp)?
        .scope(Scope::from_all(TARGET_ABI))?
        .create()?;
    grant(ruleset, rules)
}

/// Adds `rules` to `ruleset` and restricts the calling thread, and every process
/// it then starts, to the whole.
pub fn finish(ruleset: RulesetCreated, rules: &Rules) -> Result<RulesetStatus, RulesetError> {
    Ok(grant(ruleset, rules)?.restrict_self()?.ruleset)
}

fn grant(ruleset: RulesetCreated, rules: &Rules) -> Result<RulesetCreated, RulesetError> {
    let abi = TARGET_ABI;
    let file_rw = AccessFs::ReadFile | AccessFs::WriteFile;
    ruleset
        .add_rules(beneath(&rules.read, AccessFs::from_read(abi)))?
        .add_rules(beneath(&rules.write, AccessFs::from_all(abi)))?
        .add_rules(beneath(&rules.devices, file_rw))?
        .add_rules(
            rules
                .connect_ports
                .iter()
                .map(|&port| Ok::<_, RulesetError>(NetPort::new(port, AccessNet::ConnectTcp))),
        )
}

/// Rules for the paths that exist; a missing one (no `/dev/full` on some hosts) is
/// simply not granted.
fn beneath(
    paths: &[PathBuf],
    access: landlock::BitFlags<AccessFs>,
) -> impl Iterator<Item = Result<PathBeneath<PathFd>, RulesetError>> + '_ {
    paths
        .iter()
        .filter(|path| Path::exists(path))
        .filter_map(move |path| PathFd::new(path).ok())
        .map(move |fd| Ok(PathBeneath::new(fd, access)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Landlock restricts only the calling thread (and what it starts), so a test
    /// thread can try the rules without touching the rest of the test process.
    fn in_restricted_thread<T: Send + 'static>(
        rules: Rules,
        probe: impl FnOnce() -> T + Send + 'static,
    ) -> (RulesetStatus, T) {
        std::thread::spawn(move || {
            let status = apply(&rules).expect("landlock ruleset");
            (status, probe())
        })
        .join()
        .unwrap()
    }

    /// Directories `names` under `root`, each holding a file `f`.
    fn dirs_with_a_file<const N: usize>(root: &Path, names: [&str; N]) -> [PathBuf; N] {
        names.map(|name| {
            let dir = root.join(name);
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("f"), "x").unwrap();
            dir
        })
    }

    #[test]
    fn only_listed_paths_are_readable_and_only_write_paths_writable() {
        let root = tempfile::tempdir().unwrap();
        let [allowed, hidden, writable] =
            dirs_with_a_file(root.path(), ["allowed", "hidden", "rw"]);
        let rules = Rules {
            read: vec![allowed.clone()],
            write: vec![writable.clone()],
            devices: vec![],
            connect_ports: vec![],
        };
        let (status, results) = in_restricted_thread(rules, move || {
            (
                std::fs::read(allowed.join("f")).is_ok(),
                std::fs::read(hidden.join("f")).map_err(|e| e.kind()),
                std::fs::write(allowed.join("new"), "x").map_err(|e| e.kind()),
                std::fs::write(writable.join("new"), "x").is_ok(),
            )
        });
        if not_enforced_here(status) {
            return;
        }
        let (read_allowed, read_hidden, write_allowed, write_writable) = results;
        assert!(read_allowed);
        assert_eq!(read_hidden, Err(std::io::ErrorKind::PermissionDenied));
        assert_eq!(write_allowed, Err(std::io::ErrorKind::PermissionDenied));
        assert!(write_writable);
    }

    /// Whether the kernel left the rules unenforced, so the test is skipped (said on
    /// stderr); panics under `CI`, whose kernel must enforce them.
    fn not_enforced_here(status: RulesetStatus) -> bool {
        if status != RulesetStatus::NotEnforced {
            return false;
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "CI's kernel must enforce these landlock rules"
        );
        eprintln!("skipped: this kernel does not enforce these landlock rules");
        true
    }

    #[test]
    fn tcp_connect_only_to_listed_ports() {
        let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (open_port, closed_port) = (
            open.local_addr().unwrap().port(),
            closed.local_addr().unwrap().port(),
        );
        let rules = Rules {
            read: vec![],
            write: vec![],
            devices: vec![],
            connect_ports: vec![open_port],
        };
        let (status, (to_open, to_closed)) = in_restricted_thread(rules, move || {
            (
                std::net::TcpStream::connect(("127.0.0.1", open_port)).is_ok(),
                std::net::TcpStream::connect(("127.0.0.1", closed_port))
                    .map(drop)
                    .map_err(|e| e.kind()),
            )
        });
        if not_enforced_here(status) {
            return;
        }
        assert!(to_open);
        assert_eq!(to_closed, Err(std::io::ErrorKind::PermissionDenied));
    }

    /// A listed device may be read and written (Python opens `/dev/null` both ways),
    /// and that grants nothing around it.
    #[test]
    fn listed_devices_may_be_read_and_written() {
        let rules = Rules {
            read: vec![],
            write: vec![],
            devices: vec![PathBuf::from("/dev/null")],
            connect_ports: vec![],
        };
        let (status, results) = in_restricted_thread(rules, || {
            (
                std::fs::write("/dev/null", "x").map_err(|e| e.kind()),
                std::fs::read("/dev/null")
                    .map(|b| b.len())
                    .map_err(|e| e.kind()),
                std::fs::read_dir("/dev").map(drop).map_err(|e| e.kind()),
            )
        });
        if not_enforced_here(status) {
            return;
        }
        let denied = Err(std::io::ErrorKind::PermissionDenied);
        assert_eq!(results, (Ok(()), Ok(0), denied));
    }

    /// A forked job's two parts grant exactly what a jail's rules do, and every
    /// directory the job mounts for itself is in the part granted after its mounts.
    #[test]
    fn a_forked_jobs_rules_are_the_jails_split_around_its_mounts() {
        let extra = [PathBuf::from("/opt/venv")];
        let now = Rules::for_forked_job_before_mounts();
        let then = Rules::for_forked_job_after_mounts(extra.clone());
        let jail = Rules::for_jail(extra, vec![]);
        let sorted = |mut v: Vec<PathBuf>| {
            v.sort();
            v
        };
        assert_eq!(
            sorted([now.read.clone(), then.read.clone()].concat()),
            sorted(jail.read)
        );
        assert_eq!(
            sorted([now.write.clone(), then.write.clone()].concat()),
            sorted(jail.write)
        );
        assert_eq!([now.devices, then.devices].concat(), jail.devices);
        for mounted in MOUNTED_BY_THE_JOB {
            let mounted = PathBuf::from(mounted);
            assert!(
                !now.read.contains(&mounted) && !now.write.contains(&mounted),
                "{mounted:?}"
            );
        }
        assert!(then.read.contains(&PathBuf::from("/opt/venv")));
        assert!(now.read.contains(&PathBuf::from("/usr")));
    }

    /// Rules granted in two steps hold as if granted at once.
    #[test]
    fn rules_added_to_a_started_ruleset_hold() {
        let root = tempfile::tempdir().unwrap();
        let [early, late, hidden] = dirs_with_a_file(root.path(), ["early", "late", "hidden"]);
        let first = Rules {
            read: vec![early.clone()],
            ..Rules::default()
        };
        let second = Rules {
            write: vec![late.clone()],
            ..Rules::default()
        };
        let (status, results) = std::thread::spawn(move || {
            let started = start(&first).expect("a started ruleset");
            let status = finish(started, &second).expect("the finished ruleset");
            let results = (
                std::fs::read(early.join("f")).is_ok(),
                std::fs::write(early.join("f"), "y").map_err(|e| e.kind()),
                std::fs::write(late.join("f"), "y").is_ok(),
                std::fs::read(hidden.join("f"))
                    .map(drop)
                    .map_err(|e| e.kind()),
            );
            (status, results)
        })
        .join()
        .unwrap();
        if not_enforced_here(status) {
            return;
        }
        let denied: Result<(), _> = Err(std::io::ErrorKind::PermissionDenied);
        assert_eq!(results, (true, denied, true, denied));
    }

    #[test]
    fn the_jail_layout_covers_python() {
        let rules = Rules::for_jail([PathBuf::from("/opt/venv")], vec![]);
        for path in ["/usr", "/etc", "/sandbox", "/opt/venv"] {
            assert!(rules.read.contains(&PathBuf::from(path)), "{path}");
        }
        assert_eq!(
            rules.write,
            [
                PathBuf::from("/work"),
                PathBuf::from("/tmp"),
                PathBuf::from("/dev/shm")
            ]
        );
        assert!(rules.connect_ports.is_empty());
    }
}
