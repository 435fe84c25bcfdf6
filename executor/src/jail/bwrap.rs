//! The bubblewrap command line of a jail, as data: a pure function of the layout, so
//! it is computed once at startup and unit-tested without root.
//!
//! Order matters to bwrap, which applies options left to right: every mount point is
//! created while the jail's root tmpfs is still writable, then `/dev` and `/` are made
//! read-only (non-recursively, so `/tmp` and `/work` mounted later stay writable).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Where the executor binary appears in the jail, to run as `jail-init`.
pub const INIT_PATH: &str = "/run/pysandbox-init";
/// The job's work dir and cwd: the only host directory it may write.
pub const WORK_DIR: &str = "/work";
/// The launcher reads its orders from this descriptor once the executor hands it a job.
pub const HANDOFF_FD: i32 = 3;
/// jail-init writes one byte here once the jail is set up; the launcher another once
/// Python is warm; then it is closed.
pub const READY_FD: i32 = 4;
/// bwrap reads the seccomp program from this descriptor and loads it before jail-init.
pub const SECCOMP_FD: i32 = 5;
/// Where a job's egress proxy directory is bound, in every jail (empty without one).
pub const PROXY_DIR: &str = "/run/pysandbox";
/// The proxy's socket in the jail: `PROXY_DIR` + the proxy's socket name.
pub const PROXY_SOCKET: &str = "/run/pysandbox/proxy.sock";
/// The loopback port socat listens on in a jail that may use the network.
pub const PROXY_PORT: u16 = 3128;
/// What the `*_proxy` variables say.
const PROXY_URL: &str = "http://127.0.0.1:3128";
/// Proxy variables, both cases: curl reads only `http_proxy` in lower case, Python
/// prefers lower case, other tools read upper case. An empty `NO_PROXY` sends even
/// `localhost` through the proxy, which refuses it.
const PROXY_ENV: &[(&str, &str)] = &[
    ("HTTP_PROXY", PROXY_URL),
    ("http_proxy", PROXY_URL),
    ("HTTPS_PROXY", PROXY_URL),
    ("https_proxy", PROXY_URL),
    ("ALL_PROXY", PROXY_URL),
    ("all_proxy", PROXY_URL),
    ("NO_PROXY", ""),
    ("no_proxy", ""),
];

/// The environment of every job: nothing of the executor's, only what Python needs.
const JOB_ENV: &[(&str, &str)] = &[
    ("PATH", "/usr/local/bin:/usr/bin:/bin"),
    ("HOME", "/tmp"),
    ("TMPDIR", "/tmp"),
    ("LANG", "C.UTF-8"),
    ("PYTHONUNBUFFERED", "1"),
    ("PYTHONDONTWRITEBYTECODE", "1"),
    // The script's own directory holds only the code: put the cwd first on sys.path
    // instead, as `python -c` does (PYTHONSAFEPATH needs Python 3.11; older ones
    // ignore it and also keep /sandbox, which is harmless).
    ("PYTHONSAFEPATH", "1"),
    ("PYTHONPATH", WORK_DIR),
    ("MPLBACKEND", "Agg"),
];

/// What a jail shows of the host; decided once from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Uid and gid the job has, inside and out (the user namespace maps them 1:1).
    pub uid: u32,
    pub gid: u32,
    /// `(host path, jail path)` bound read-only, in order.
    pub ro_binds: Vec<(PathBuf, PathBuf)>,
    /// `(target, link)` symlinks made in the jail's root (merged-/usr hosts).
    pub symlinks: Vec<(PathBuf, PathBuf)>,
    /// The executor binary on the host.
    pub init: PathBuf,
    /// Size of `/dev/shm`, in bytes.
    pub shm_bytes: u64,
}

/// Where a fork-server template finds the library that builds a forked job's jail.
pub const FORK_LIBRARY_PATH: &str = "/run/pysandbox-fork.so";
/// The size of a template's own `/tmp`: matplotlib needs a writable config dir to
/// import. Every forked job covers it with its own.
const TEMPLATE_TMP_BYTES: u64 = 16 << 20;

/// The argv, without the program name, that stays the same for every job.
pub fn fixed_args(layout: &Layout) -> Vec<OsString> {
    common_args(layout, |_| {})
}

/// The whole argv of a fork-server template (`docs/fork-server.md`): the same
/// namespaces, ids, environment and read-only binds as a job's jail, plus the
/// library its children call, a small `/tmp` of its own and no job directory;
/// then `command`, run directly (not through jail-init: landlock would forbid the
/// mounts each forked child makes; every child applies it itself).
pub fn template_args(layout: &Layout, library: &Path, command: &[OsString]) -> Vec<OsString> {
    let mut args = Args(common_args(layout, |args| {
        args.push("--ro-bind").push(library).push(FORK_LIBRARY_PATH);
    }));
    args.push("--size").push(TEMPLATE_TMP_BYTES.to_string());
    // The jobs' cwd, covered by each job's own work dir (and `PWD` as a job's).
    args.push_all(&["--tmpfs", "/tmp", "--chdir", WORK_DIR]);
    args.0.extend_from_slice(command);
    args.0
}

/// The argv shared by jails and templates; `extra` adds binds while the root is
/// still writable.
fn common_args(layout: &Layout, extra: impl FnOnce(&mut Args)) -> Vec<OsString> {
    let mut args = Args::default();
    args.push_all(&[
        // A fresh namespace of every kind: the job sees no host process, network,
        // IPC object, hostname or cgroup.
        "--unshare-user",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup",
        "--hostname",
        "sandbox",
        // Killing bwrap kills the jail's pid 1, which takes every process of the
        // pid namespace with it: daemonized and setsid'd ones too.
        "--die-with-parent",
        // A new session: no controlling terminal to push input into (TIOCSTI).
        "--new-session",
        "--clearenv",
    ]);
    args.push_all(&["--seccomp", &SECCOMP_FD.to_string()]);
    args.push("--uid").push(layout.uid.to_string());
    args.push("--gid").push(layout.gid.to_string());
    for (key, value) in JOB_ENV {
        args.push_all(&["--setenv", key, value]);
    }
    for (host, jail) in &layout.ro_binds {
        args.push("--ro-bind").push(host).push(jail);
    }
    for (target, link) in &layout.symlinks {
        args.push("--symlink").push(target).push(link);
    }
    args.push("--ro-bind").push(&layout.init).push(INIT_PATH);
    args.push_all(&["--proc", "/proc", "--dev", "/dev"]);
    args.push_all(&["--perms", "1777", "--size"]);
    args.push(layout.shm_bytes.to_string());
    args.push_all(&["--tmpfs", "/dev/shm", "--remount-ro", "/dev"]);
    // The proxy dir's mount point exists in every jail, because the root turns
    // read-only before the per-job arguments bind anything.
    args.push_all(&["--dir", WORK_DIR, "--dir", "/tmp", "--dir", "/sandbox"]);
    args.push_all(&["--dir", PROXY_DIR]);
    extra(&mut args);
    args.push_all(&["--remount-ro", "/"]);
    args.0
}

/// The rest of the argv for one job: its work dir and `/tmp` (both on the job's
/// size-limited tmpfs), its read-only `/sandbox` (where its code will be), its
/// egress proxy's directory and the proxy variables if it may use the network, then
/// `command`, run by the executor binary inside the jail (its first word is the
/// `jail-init` subcommand).
pub fn job_args(dirs: &JobDirs, proxy_dir: Option<&Path>, command: &[OsString]) -> Vec<OsString> {
    let mut args = Args::default();
    args.push("--bind").push(&dirs.work).push(WORK_DIR);
    args.push("--bind").push(&dirs.tmp).push("/tmp");
    args.push("--ro-bind").push(&dirs.sandbox).push("/sandbox");
    if let Some(proxy_dir) = proxy_dir {
        args.push("--ro-bind").push(proxy_dir).push(PROXY_DIR);
        for (key, value) in PROXY_ENV {
            args.push_all(&["--setenv", key, value]);
        }
    }
    args.push_all(&["--chdir", WORK_DIR, INIT_PATH]);
    args.0.extend_from_slice(command);
    args.0
}

/// The host directories of one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobDirs {
    pub work: PathBuf,
    pub tmp: PathBuf,
    pub sandbox: PathBuf,
}

#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn push(&mut self, arg: impl Into<OsString>) -> &mut Self {
        self.0.push(arg.into());
        self
    }

    fn push_all(&mut self, args: &[&str]) -> &mut Self {
        self.0.extend(args.iter().map(OsString::from));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            uid: 65534,
            gid: 65534,
            ro_binds: vec![("/usr".into(), "/usr".into())],
            symlinks: vec![("usr/lib".into(), "/lib".into())],
            init: "/opt/pysandbox-executor".into(),
            shm_bytes: 1024,
        }
    }

    fn joined(args: &[OsString]) -> String {
        args.iter()
            .map(|a| a.to_str().unwrap())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Where `needle` starts, matching whole arguments only.
    fn position(args: &str, needle: &str) -> usize {
        format!("{args} ")
            .find(&format!("{} ", needle.trim_end()))
            .unwrap_or_else(|| panic!("{needle:?} missing from {args}"))
    }

    #[test]
    fn every_namespace_is_new_and_the_job_is_unprivileged() {
        let args = joined(&fixed_args(&layout()));
        for flag in [
            "--unshare-user ",
            "--unshare-pid ",
            "--unshare-net ",
            "--unshare-ipc ",
            "--unshare-uts ",
            "--unshare-cgroup ",
            "--die-with-parent ",
            "--new-session ",
            "--clearenv ",
            "--seccomp 5 ",
            "--uid 65534 ",
            "--gid 65534 ",
        ] {
            position(&args, flag);
        }
        assert!(!args.contains("--share-net"));
        assert!(
            !args.contains("--bind /"),
            "no host path is writable: {args}"
        );
    }

    #[test]
    fn root_and_dev_turn_read_only_after_their_mount_points_exist() {
        let args = joined(&fixed_args(&layout()));
        let root_ro = position(&args, "--remount-ro / ");
        assert!(position(&args, "--ro-bind /usr /usr") < root_ro);
        assert!(position(&args, "--dir /work") < root_ro);
        assert!(position(&args, "--dir /sandbox") < root_ro);
        assert!(position(&args, "--tmpfs /dev/shm") < position(&args, "--remount-ro /dev"));
        assert!(position(&args, "--dir /tmp") < root_ro);
        assert!(position(&args, "--dir /run/pysandbox") < root_ro);
    }

    #[test]
    fn every_tmpfs_has_a_size() {
        let args = fixed_args(&layout());
        let tmpfs: Vec<_> = args
            .iter()
            .enumerate()
            .filter(|(_, a)| *a == "--tmpfs")
            .map(|(i, _)| i)
            .collect();
        assert_eq!(tmpfs.len(), 1);
        for i in tmpfs {
            assert_eq!(args[i - 2], "--size", "{:?}", &args[i - 3..=i + 1]);
            assert_eq!(args[i - 1], "1024");
        }
    }

    #[test]
    fn env_is_minimal() {
        let args = fixed_args(&layout());
        let names: Vec<_> = args
            .windows(2)
            .filter(|w| w[0] == "--setenv")
            .map(|w| w[1].to_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "PATH",
                "HOME",
                "TMPDIR",
                "LANG",
                "PYTHONUNBUFFERED",
                "PYTHONDONTWRITEBYTECODE",
                "PYTHONSAFEPATH",
                "PYTHONPATH",
                "MPLBACKEND"
            ]
        );
    }

    #[test]
    fn a_template_is_a_jail_without_job_dirs_or_jail_init() {
        let command = [OsString::from("/usr/bin/python3")];
        let args = joined(&template_args(
            &layout(),
            Path::new("/opt/libpysandbox_fork.so"),
            &command,
        ));
        let fixed = joined(&fixed_args(&layout()));
        let before_ro = fixed.strip_suffix("--remount-ro /").unwrap();
        assert!(args.starts_with(before_ro), "{args}");
        let library = position(
            &args,
            "--ro-bind /opt/libpysandbox_fork.so /run/pysandbox-fork.so",
        );
        assert!(library < position(&args, "--remount-ro / "));
        assert!(args.ends_with(
            "--remount-ro / --size 16777216 --tmpfs /tmp --chdir /work /usr/bin/python3"
        ));
        assert!(
            !args.contains("--bind "),
            "no host path is writable: {args}"
        );
    }

    #[test]
    fn the_job_runs_python_through_jail_init_in_its_work_dir() {
        let command: Vec<OsString> = ["jail-init", "--", "/usr/bin/python3", "-c", "..."]
            .map(OsString::from)
            .to_vec();
        let dirs = JobDirs {
            work: "/state/jobs/7/work".into(),
            tmp: "/state/jobs/7/tmp".into(),
            sandbox: "/state/jobs/7/sandbox".into(),
        };
        assert_eq!(
            joined(&job_args(&dirs, None, &command)),
            "--bind /state/jobs/7/work /work --bind /state/jobs/7/tmp /tmp \
             --ro-bind /state/jobs/7/sandbox /sandbox --chdir /work \
             /run/pysandbox-init jail-init -- /usr/bin/python3 -c ..."
        );
    }

    #[test]
    fn a_job_with_network_gets_its_proxy_dir_and_the_proxy_env() {
        let dirs = JobDirs {
            work: "/state/jobs/7/work".into(),
            tmp: "/state/jobs/7/tmp".into(),
            sandbox: "/state/jobs/7/sandbox".into(),
        };
        let command = [OsString::from("jail-init")];
        let args = joined(&job_args(
            &dirs,
            Some(Path::new("/state/jobs/7.proxy")),
            &command,
        ));
        let proxy = "http://127.0.0.1:3128";
        assert_eq!(
            args,
            format!(
                "--bind /state/jobs/7/work /work --bind /state/jobs/7/tmp /tmp \
                 --ro-bind /state/jobs/7/sandbox /sandbox \
                 --ro-bind /state/jobs/7.proxy /run/pysandbox \
                 --setenv HTTP_PROXY {proxy} --setenv http_proxy {proxy} \
                 --setenv HTTPS_PROXY {proxy} --setenv https_proxy {proxy} \
                 --setenv ALL_PROXY {proxy} --setenv all_proxy {proxy} \
                 --setenv NO_PROXY  --setenv no_proxy  --chdir /work \
                 /run/pysandbox-init jail-init"
            )
        );
        assert_eq!(
            Path::new(PROXY_DIR).join(crate::proxy::SOCKET_NAME),
            Path::new(PROXY_SOCKET)
        );
        assert_eq!(PROXY_URL, format!("http://127.0.0.1:{PROXY_PORT}"));
    }
}
