//! The executor daemon, started as root on a socket in a private temp directory.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::{binaries, host_processes_matching, Log, FRONTEND_GID, FRONTEND_UID};

/// How long the executor may take to accept connections on its socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Executor::stop`] waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The user the executor runs jobs as by default. The harness creates it when the
/// host lacks it (a fresh CI machine), as `scripts/run-local` and systemd-sysusers do.
pub const SANDBOX_USER: &str = "pysandbox-job";

pub(crate) const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The `RUST_LOG` the daemons get: `PYSANDBOX_TEST_LOG` if set, else `info` (the
/// frontend's `listening on` line is logged at info).
pub(crate) fn log_filter() -> String {
    // The executor says at debug level which jail each job took (warm or cold).
    std::env::var("PYSANDBOX_TEST_LOG")
        .unwrap_or_else(|_| "info,pysandbox_executor::job=debug".to_owned())
}

/// Extra flags and environment for an [`Executor`].
#[derive(Debug, Default, Clone)]
pub struct ExecutorBuilder {
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    config: Option<String>,
    no_harness_flags: bool,
    wrapper: Vec<OsString>,
    socket_activated: bool,
}

impl ExecutorBuilder {
    /// Adds one command-line argument after the harness's own
    /// (`--socket`, `--state-dir`, `--socket-group 65533`, `--allow-uid 65533`).
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds command-line arguments, see [`ExecutorBuilder::arg`].
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable of the executor process (its environment is
    /// otherwise only `PATH`, `RUST_LOG` and `NO_COLOR`).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Writes `toml` (with every `{dir}` replaced by the executor's temp dir, which
    /// holds `executor.sock` and `state/`) to `{dir}/executor.toml` and passes
    /// `--config` with it.
    pub fn config_toml(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_owned());
        self
    }

    /// Leaves out the harness's `--socket`, `--state-dir`, `--socket-group` and
    /// `--allow-uid` flags, e.g. to check that a config file sets them; the
    /// executor must still end up listening on `{dir}/executor.sock`.
    pub fn without_harness_flags(mut self) -> Self {
        self.no_harness_flags = true;
        self
    }

    /// Runs the executor through `argv` (a program and its arguments that ends up
    /// exec'ing the executor, which comes after them with its own arguments), e.g.
    /// `["setpriv", "--inh-caps=+net_bind_service", "--"]`. The process keeps its
    /// pid across the exec, so [`Executor::pid`] and [`Executor::kill`] still apply.
    pub fn wrapper<I, S>(mut self, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.wrapper = argv.into_iter().map(|a| a.as_ref().to_owned()).collect();
        self
    }

    /// Socket activation as systemd does it: the harness binds `{dir}/executor.sock`
    /// itself (owner root, group 65533, mode 0660, as `pysandbox-executor.socket`
    /// does), keeps it open for the life of the [`Executor`], and hands it to every
    /// start of the process as descriptor 3 with `LISTEN_FDS=1` and `LISTEN_PID` set
    /// to the executor's pid. Connections made while the executor is down wait in
    /// the socket's backlog. A start counts as ready once the executor logged
    /// `socket-activated` (connecting proves nothing: the backlog always accepts).
    pub fn socket_activated(mut self) -> Self {
        self.socket_activated = true;
        self
    }

    /// Starts the executor and waits until its socket accepts connections.
    pub fn start(self) -> Executor {
        let dir = tempfile::Builder::new()
            .prefix("pysandbox-exec.")
            .tempdir()
            .expect("cannot create the executor's temp dir");
        // Root's temp dirs are 0700: the frontend uid must reach the socket, and the
        // sandbox uid the state dir.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
            .expect("cannot chmod the executor's temp dir");
        let socket = dir.path().join("executor.sock");
        let state_dir = dir.path().join("state");
        fs::create_dir(&state_dir).expect("cannot create the state dir");
        fs::set_permissions(&state_dir, fs::Permissions::from_mode(0o755))
            .expect("cannot chmod the state dir");
        let listener = self.socket_activated.then(|| {
            let listener = UnixListener::bind(&socket)
                .unwrap_or_else(|e| panic!("cannot bind {}: {e}", socket.display()));
            std::os::unix::fs::chown(&socket, Some(0), Some(FRONTEND_GID))
                .expect("cannot chown the activation socket");
            fs::set_permissions(&socket, fs::Permissions::from_mode(0o660))
                .expect("cannot chmod the activation socket");
            listener
        });
        let mut executor = Executor {
            child: None,
            listener,
            socket,
            state_dir,
            builder: self,
            log: Log::default(),
            starts: 0,
            dir,
        };
        executor.spawn();
        executor
    }
}

/// In the command line of a fork-server template (and of its bwrap).
const TEMPLATE_MARK: &str = "--fork-server /run/pysandbox-fork.so";

/// A running `pysandbox-executor` (as root). Killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Executor {
    child: Option<Child>,
    /// The listening socket handed to every start ([`ExecutorBuilder::socket_activated`]).
    listener: Option<UnixListener>,
    socket: PathBuf,
    state_dir: PathBuf,
    builder: ExecutorBuilder,
    log: Log,
    starts: u32,
    // Last: removed after the process is gone.
    dir: TempDir,
}

impl Executor {
    /// Options for an executor to start.
    pub fn builder() -> ExecutorBuilder {
        ExecutorBuilder::default()
    }

    /// Starts an executor with `extra_args` after the harness's flags.
    pub fn start(extra_args: &[&str]) -> Executor {
        Executor::builder().args(extra_args).start()
    }

    /// The Unix socket it listens on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Its `--state-dir`.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The private temp directory holding the socket and the state dir (mode 0755).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What it logged so far (all runs, if restarted).
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Host processes of its jails: bwrap processes whose command line names a
    /// path under the state dir (with a trailing `/`, which the executor's own
    /// `--state-dir` flag lacks), as they bind their work dirs from there, and
    /// the processes of every job forked from one of its fork-server templates:
    /// those that joined a cgroup other than the template's, the rest of their pid
    /// namespace (its pid 1), and their parent.
    ///
    /// Warm jails waiting for a job are left out (see [`Executor::idle_jail_ids`]),
    /// and so are the templates and their spares (which wait for a job in the
    /// template's cgroup): the executor keeps them by design.
    pub fn jail_processes(&self) -> Vec<u32> {
        let needle = format!("{}/", self.state_dir.display());
        let own = self.pid();
        let idle: Vec<String> = self
            .idle_jail_ids()
            .iter()
            .map(|id| format!("/jobs/{id}/work"))
            .collect();
        let parents = crate::parent_pids();
        let ours = |pid: u32| crate::cmdline(pid).contains(needle.as_str());
        // A template: the Python under its own bwrap, which names our state dir.
        let templates: Vec<u32> = parents
            .iter()
            .filter(|&(&pid, &parent)| {
                let line = crate::cmdline(pid);
                line.contains(TEMPLATE_MARK) && !line.contains("bwrap") && ours(parent)
            })
            .map(|(&pid, _)| pid)
            .collect();
        let template_of = |mut pid: u32| loop {
            match parents.get(&pid) {
                Some(parent) if templates.contains(parent) => return Some(*parent),
                Some(&parent) if parent > 1 => pid = parent,
                _ => return None,
            }
        };
        let cgroups_of = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok();
        let pid_ns = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
        let in_job: Vec<u32> = parents
            .keys()
            .copied()
            .filter(|&pid| {
                template_of(pid).is_some_and(|template| cgroups_of(pid) != cgroups_of(template))
            })
            .collect();
        let job_namespaces: Vec<_> = in_job.iter().filter_map(|&pid| pid_ns(pid)).collect();
        let of_a_job = |pid: u32| {
            pid_ns(pid).is_some_and(|ns| job_namespaces.contains(&ns)) && template_of(pid).is_some()
        };
        let forked = |pid: u32| {
            of_a_job(pid)
                || parents
                    .iter()
                    .any(|(&child, &parent)| parent == pid && of_a_job(child))
        };
        let mut pids: Vec<u32> = parents
            .keys()
            .copied()
            .filter(|&pid| Some(pid) != own)
            .filter(|&pid| {
                let line = crate::cmdline(pid);
                let jail = line.contains(needle.as_str())
                    && !line.contains(TEMPLATE_MARK)
                    && !idle.iter().any(|dir| line.contains(dir.as_str()));
                jail || forked(pid)
            })
            .collect();
        pids.sort_unstable();
        pids
    }

    /// Ids (names under `<state dir>/jobs`, and `job-<id>` cgroups) of the warm jails
    /// waiting for a job: no code has been handed to them yet. Checks of what a job
    /// leaves behind ignore these, so they hold with the pool on and off. A
    /// session's jail (`sandbox/session`) is never idle: its cells come on a pipe,
    /// so it has no `main.py`.
    pub fn idle_jail_ids(&self) -> Vec<String> {
        let jobs = self.state_dir.join("jobs");
        fs::read_dir(jobs)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| {
                let sandbox = entry.path().join("sandbox");
                !sandbox.join("main.py").exists() && !sandbox.join("session").exists()
            })
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// The warm pool size its latest start announced (`warm_pool_size=N` in its
    /// `listening on` line, or `"warm_pool_size":N` with `LOG_FORMAT=json`). Panics
    /// if no start announced one within 10 s.
    #[track_caller]
    pub fn warm_pool_size(&self) -> u32 {
        let mut size = None;
        let announced = crate::wait_until(START_TIMEOUT, || {
            size = self.log.lines().iter().rev().find_map(|line| {
                let (at, key) = ["warm_pool_size=", "\"warm_pool_size\":"]
                    .iter()
                    .find_map(|key| Some((line.find(key)?, key.len())))?;
                let digits = line[at + key..]
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?;
                digits.parse().ok()
            });
            size.is_some()
        });
        match (announced, size) {
            (true, Some(size)) => size,
            _ => panic!(
                "the executor announced no warm_pool_size; its log:\n{}",
                self.log.text()
            ),
        }
    }

    /// The jail each job took so far, in order: `"warm"` or `"cold"`, from the
    /// executor's `job started jail="…"` lines (`"jail":"…"` with `LOG_FORMAT=json`).
    pub fn jails_started(&self) -> Vec<String> {
        self.log
            .lines()
            .iter()
            .filter(|line| line.contains("job started"))
            .filter_map(|line| {
                let (at, key) = ["jail=\"", "\"jail\":\""]
                    .iter()
                    .find_map(|key| Some((line.find(key)?, key.len())))?;
                let rest = &line[at + key..];
                Some(rest[..rest.find('"')?].to_owned())
            })
            .collect()
    }

    /// Whether the executor announced that its fork server is on.
    pub fn fork_server(&self) -> bool {
        self.warm_pool_size();
        let lines = self.log.lines();
        lines
            .iter()
            .any(|l| l.contains("fork_server=true") || l.contains("\"fork_server\":true"))
    }

    /// Its pid while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still alive (reaping it if it exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(_))) | Some(Err(_)) | None => false,
        }
    }

    /// Panics, with its log, unless the process is still alive.
    #[track_caller]
    pub fn assert_running(&mut self) {
        if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
            panic!(
                "the executor died ({status}); its log:\n{}",
                self.log.text()
            );
        }
        assert!(self.child.is_some(), "the executor was not started");
    }

    /// SIGTERM, then SIGKILL if it is still alive after 5 s; returns how it ended.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        crate::procs::terminate(self.child.take()?, STOP_GRACE)
    }

    /// SIGKILL (as a crash would), then reap it.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.kill();
        child.wait().ok()
    }

    /// Stops it if running and starts it again with the same flags, socket and
    /// state dir (the old socket file is left for the new process to deal with).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn spawn(&mut self) {
        ensure_sandbox_user();
        let bins = binaries();
        let mut argv: Vec<OsString> = Vec::new();
        if self.listener.is_some() {
            // The shell keeps its pid through both execs, so LISTEN_PID names the
            // executor; the socket arrives on stdin and moves to descriptor 3.
            argv.extend(
                [
                    "/bin/sh",
                    "-c",
                    "exec 3<&0 </dev/null; LISTEN_FDS=1 LISTEN_PID=$$; \
                     export LISTEN_FDS LISTEN_PID; exec \"$0\" \"$@\"",
                ]
                .map(OsString::from),
            );
        }
        argv.extend(self.builder.wrapper.iter().cloned());
        argv.push(bins.executor.clone().into_os_string());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        match &self.listener {
            Some(listener) => {
                let fd: OwnedFd = listener
                    .try_clone()
                    .expect("cannot duplicate the activation socket")
                    .into();
                cmd.stdin(fd);
            }
            None => {
                cmd.stdin(Stdio::null());
            }
        }
        if !self.builder.no_harness_flags {
            cmd.arg("--socket")
                .arg(&self.socket)
                .arg("--state-dir")
                .arg(&self.state_dir)
                .arg("--socket-group")
                .arg(FRONTEND_GID.to_string())
                .arg("--allow-uid")
                .arg(FRONTEND_UID.to_string());
            // CI runs the whole suite three times: with the executor's defaults (jobs
            // fork from the fork server's templates), with PYSANDBOX_TEST_FORK_SERVER=0
            // (warm jails from the default pool), and with that and
            // PYSANDBOX_TEST_WARM_POOL=0 (every job in a cold jail).
            let sets_pool = self.builder.args.iter().any(|a| a == "--warm-pool-size");
            if let (Ok(size), false) = (std::env::var("PYSANDBOX_TEST_WARM_POOL"), sets_pool) {
                cmd.arg("--warm-pool-size").arg(size);
            }
            // And with PYSANDBOX_TEST_FORK_SERVER=0: the fork server (on by default)
            // off, so that jobs take warm or cold jails. Tests that set up a warm
            // pool test the pool: the fork server, which replaces it, is off there.
            let sets_fork = self.builder.args.iter().any(|a| a == "--fork-server");
            let fork_off = std::env::var("PYSANDBOX_TEST_FORK_SERVER").is_ok_and(|v| v == "0");
            if !sets_fork && (sets_pool || fork_off) {
                cmd.arg("--fork-server").arg("false");
            }
        }
        if let Some(toml) = &self.builder.config {
            let path = self.dir.path().join("executor.toml");
            let dir = self.dir.path().to_str().expect("temp dir paths are UTF-8");
            fs::write(&path, toml.replace("{dir}", dir)).expect("cannot write the config file");
            cmd.arg("--config").arg(path);
        }
        cmd.args(&self.builder.args)
            .env_clear()
            .env("PATH", PATH)
            .env("RUST_LOG", log_filter())
            .env("NO_COLOR", "1")
            .envs(self.builder.env.iter().map(|(k, v)| (k, v)))
            .current_dir("/")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bins.executor.display()));
        self.starts += 1;
        if self.starts > 1 {
            self.log
                .push(&format!("----- executor start #{} -----", self.starts));
        }
        if let Some(out) = child.stdout.take() {
            self.log.drain(out, "[stdout] ", |_| {});
        }
        if let Some(err) = child.stderr.take() {
            self.log.drain(err, "", |_| {});
        }
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "the executor exited ({status}) before accepting connections on {}; its log:\n{}",
                    self.socket.display(),
                    self.log.text()
                );
            }
            // Root may always connect; the probe closes without a hello. Under socket
            // activation the backlog accepts even with no executor: wait for its line.
            if self.listener.is_some() {
                let activations = self
                    .log
                    .lines()
                    .iter()
                    .filter(|l| l.contains("socket-activated"))
                    .count();
                if activations >= self.starts as usize {
                    return;
                }
            } else if UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if Instant::now() >= deadline {
                let what = if self.listener.is_some() {
                    "log `socket-activated` for"
                } else {
                    "accept connections on"
                };
                panic!(
                    "the executor did not {what} {} within {START_TIMEOUT:?}; its log:\n{}",
                    self.socket.display(),
                    self.log.text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        // A graceful stop, so that the executor removes its warm jails' tmpfs mounts
        // and cgroups itself: killed, it would leave them until a restart that never
        // comes, and hundreds of stale mounts slow every later bwrap down.
        self.stop();
        // Hygiene, not a check (tests assert leftovers themselves): jails and mounts
        // that outlived their executor must not pile up on the host.
        let needle = format!("{}/", self.state_dir.display());
        for pid in host_processes_matching(&needle) {
            if let Ok(raw) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
            }
        }
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut stale: Vec<&str> = mountinfo
            .lines()
            .filter_map(|line| line.split(' ').nth(4))
            .filter(|point| point.starts_with(needle.as_str()))
            .collect();
        stale.sort_by_key(|point| std::cmp::Reverse(point.len()));
        for point in stale {
            let _ = nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH);
        }
        if std::thread::panicking() {
            eprintln!(
                "===== executor log =====\n{}\n===== end of executor log =====",
                self.log.text()
            );
        }
    }
}

/// Creates [`SANDBOX_USER`] once per test process if the host has no such user;
/// every executor the harness starts calls it first.
pub fn ensure_sandbox_user() {
    static CREATED: std::sync::Once = std::sync::Once::new();
    CREATED.call_once(|| {
        let exists = || matches!(nix::unistd::User::from_name(SANDBOX_USER), Ok(Some(_)));
        if exists() {
            return;
        }
        let status = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ])
            .arg(SANDBOX_USER)
            .env("PATH", PATH)
            .status();
        // Another test process may have created it meanwhile: what counts is that it exists.
        assert!(
            exists(),
            "cannot create the user {SANDBOX_USER}: useradd gave {status:?}"
        );
    });
}
