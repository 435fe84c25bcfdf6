//! Running one job: a fresh tmpfs, cgroup and jail, its input fed, its output
//! passed on as it comes, its limits enforced, what happened turned into a
//! [`JobEnd`], and its files streamed out of the work dir.

use std::collections::HashSet;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pysandbox_shared::files::{first_conflict, MAX_INPUT_FILES};
use pysandbox_shared::{
    Enforcement, FileStart, FilesEnd, JobEnd, JobError, JobSpec, LimitKind, NetworkViolation,
    Response, Stream, Usage, MAX_VIOLATIONS,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::cgroup::{CgroupLimits, Cgroups, Controller, JobCgroup, Version};
use crate::collect::{collect, Caps, Collected, Sink, Stamp};
use crate::config::{Config, Limits, MIN_LIMITS};
use crate::display::{self, DisplayCaps, Shown};
use crate::error::Error;
use crate::fork::order::Order;
use crate::forked;
use crate::ids::{Lease, SandboxIds};
use crate::inputs;
use crate::jail::{self, Started};
use crate::metrics::Metrics;
use crate::output::{forward, last_words};
use crate::proxy::policy::Policy;
use crate::proxy::{JobProxy, NetworkReport, Proxies};
use crate::template::ForkServer;
use crate::workdir::{jobs_dir, DiskLimits, WorkDir};

/// How long output may keep flowing after the jail's processes are gone. The pipes
/// close with them almost at once, unless a job passed its ends somewhere they
/// outlive it (security review L2): then what was read so far is the output.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// How often the CPU time of a job's cgroup is compared with its limit.
const CPU_POLL: Duration = Duration::from_millis(50);
/// How long the last processes of a killed jail get to leave its cgroup.
const EMPTY_WAIT: Duration = Duration::from_secs(2);
/// How long a killed job has to report its end.
const KILLED_WAIT: Duration = Duration::from_secs(5);

/// How long a warm jail may take to start and import the preloaded modules.
const WARM_TIMEOUT: Duration = Duration::from_secs(60);
/// The rlimits that differ between jobs, which the launcher lowers at hand-off.
const PER_JOB_RLIMITS: &[&str] = &["RLIMIT_FSIZE", "RLIMIT_CPU", "RLIMIT_AS", "RLIMIT_NPROC"];

/// Exit statuses above this are bwrap's report of a fatal signal (128 + signal number).
const SIGNAL_EXIT_BASE: i32 = 128;
/// How much of what a jail that failed to start printed is kept for the log.
const LAST_WORDS_BYTES: usize = 4096;

/// How many [`Kit`]s wait for forked jobs at the default limits.
const KITS: usize = 2;

/// Where a job's frames go, in order, on their way to the frontend.
pub(crate) type Frames = mpsc::Sender<Response>;

/// Runs jobs, each in a jail of its own.
#[derive(Debug)]
pub struct Runner {
    jail: Arc<jail::Current>,
    /// The fork server, when it is on: jobs without network are forked from its
    /// template while one is ready.
    fork_server: Option<Arc<ForkServer>>,
    shm_bytes: u64,
    cgroups: Option<Cgroups>,
    jobs_dir: PathBuf,
    ids: SandboxIds,
    default_timeout_ms: u32,
    max_timeout_ms: u32,
    default_limits: Limits,
    max_limits: Limits,
    disk_inodes: u32,
    open_files: u32,
    stack_mb: u32,
    cpu_percent: u32,
    preload: Vec<String>,
    collect: Caps,
    displays: DisplayCaps,
    max_input_bytes: u64,
    network: Policy,
    proxies: Proxies,
    next_id: AtomicU64,
    /// Made ahead for forked jobs at the default limits, while the fork server is on.
    kits: Mutex<Vec<Kit>>,
}

/// What a forked job needs of the executor, all of it known before the job is: its
/// tmpfs, display channel and cgroups, and the descriptors its hand-off passes.
/// Made ahead ([`Runner::make_kits`]) and taken by one job only, so that a job
/// does not wait for the ≈0.5 ms they take to make.
#[derive(Debug)]
struct Kit {
    dir: WorkDir,
    display: pipe::Receiver,
    cgroup: JobCgroup,
    passed: forked::Passed,
    /// Last, so that they are free again only once the rest is gone.
    ids: Lease,
}

/// A jail set up and waiting for its job.
#[derive(Debug)]
pub struct Prepared {
    pub(crate) dir: WorkDir,
    /// The reading end of the job's display channel.
    pub(crate) display: pipe::Receiver,
    pub(crate) cgroup: Option<JobCgroup>,
    pub(crate) started: Launch,
    /// Whether its Python already said it is waiting (so its readiness is known).
    pub(crate) warm: bool,
    /// The host ids it runs as; last, so they are free again only once it is gone.
    pub(crate) ids: Lease,
}

/// What is left of a job once every process of it is gone: its tmpfs, its cgroups
/// and its host ids, removed and freed in that order when it is dropped. Its
/// caller drops it once the job's answer is out: the answer need not wait the
/// ≈0.7 ms that unmounting a tmpfs and removing cgroups take.
#[derive(Debug)]
#[must_use = "dropping it removes the job's tmpfs and cgroups"]
pub struct Remains {
    dir: WorkDir,
    _cgroup: Option<JobCgroup>,
    _ids: Lease,
}

/// A session's jail, set up and waiting for its interpreter to start.
pub(crate) struct SessionJail {
    pub(crate) jail: Prepared,
    /// What a cold jail's launcher takes at its hand-off.
    pub(crate) orders: String,
    /// The session's egress proxy, when it may use the network.
    pub(crate) proxy: Option<JobProxy>,
    /// The proxy's refusals as it records them.
    pub(crate) violations: mpsc::Receiver<NetworkViolation>,
}

/// How a prepared job's processes come to be.
#[derive(Debug)]
pub(crate) enum Launch {
    /// A bwrap jail of its own, started and waiting for the hand-off.
    Jail(Started),
    /// Forked from the fork server's template at the hand-off.
    Fork(forked::Pending),
}

/// The processes of a job that was handed over.
#[derive(Debug)]
pub(crate) enum Process {
    /// bwrap, the jail's outermost process.
    Jail(Child),
    /// A forked job: its child reports its status; it is killed through its cgroups.
    Forked(forked::Running),
}

impl Process {
    pub(crate) async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        match self {
            Process::Jail(child) => child.wait().await,
            Process::Forked(running) => running.wait().await,
        }
    }

    /// Kills the job. Killing bwrap is enough: its pid 1 dies with it
    /// (`--die-with-parent`) and the kernel then kills every other process of the
    /// jail's pid namespace. A forked job has no process of the executor's: every
    /// process in its cgroups is killed.
    fn start_kill(&mut self, cgroup: Option<&JobCgroup>) -> std::io::Result<()> {
        match self {
            Process::Jail(child) => child.start_kill(),
            Process::Forked(_) => {
                if let Some(cgroup) = cgroup {
                    cgroup.kill_all();
                }
                Ok(())
            }
        }
    }
}

/// A job's processes and the executor's ends of its pipes.
pub(crate) struct Begun {
    pub(crate) process: Process,
    pub(crate) stdout: pipe::Receiver,
    pub(crate) stderr: pipe::Receiver,
    pub(crate) input: pipe::Sender,
    /// A cold jail's readiness pipe: its output counts only once it said so.
    pub(crate) ready: Option<pipe::Receiver>,
    /// A jail's hand-off pipe, for the launcher's orders.
    pub(crate) handoff: Option<pipe::Sender>,
}

impl Launch {
    /// Takes the job's pipes. A jail's Python then waits for its orders on the
    /// hand-off pipe; a forked job starts here, when its template gets the order.
    pub(crate) fn begin(self, warm: bool) -> Result<Begun, Error> {
        Ok(match self {
            Launch::Jail(Started {
                mut child,
                ready,
                handoff,
            }) => {
                let stdio = |e: std::io::Error| Error::jail("take the jail's stdio")(e);
                let missing = || stdio(std::io::ErrorKind::NotFound.into());
                let stdout = child.stdout.take().ok_or_else(missing)?;
                let stderr = child.stderr.take().ok_or_else(missing)?;
                let stdin = child.stdin.take().ok_or_else(missing)?;
                // Plain pipe ends: a session reads what is left in them without waiting.
                let stdout = stdout.into_owned_fd().map_err(stdio)?;
                let stderr = stderr.into_owned_fd().map_err(stdio)?;
                let stdin = stdin.into_owned_fd().map_err(stdio)?;
                Begun {
                    stdout: pipe::Receiver::from_owned_fd(stdout).map_err(stdio)?,
                    stderr: pipe::Receiver::from_owned_fd(stderr).map_err(stdio)?,
                    input: pipe::Sender::from_owned_fd(stdin).map_err(stdio)?,
                    ready: (!warm).then_some(ready),
                    handoff: Some(handoff),
                    process: Process::Jail(child),
                }
            }
            Launch::Fork(pending) => {
                let (running, ends) = pending.hand_off()?;
                Begun {
                    process: Process::Forked(running),
                    stdout: ends.stdout,
                    stderr: ends.stderr,
                    input: ends.stdin,
                    ready: None,
                    handoff: None,
                }
            }
        })
    }
}

/// A job's limits and network policy once its request has been checked against
/// the configuration.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub timeout_ms: u32,
    pub limits: Limits,
    /// What the job may reach through its egress proxy; `None`: no network at all.
    pub network: Option<Policy>,
}

/// What the executor observed about a finished jail (or a session's call), before
/// it becomes a result.
#[derive(Debug, Default)]
pub(crate) struct Observed {
    pub(crate) status: Option<ExitStatus>,
    pub(crate) killed_by: Option<LimitKind>,
    /// Whether `killed_by` interrupted a session's call (SIGINT) rather than
    /// killing it: its status is then the job's own.
    pub(crate) interrupted: bool,
    pub(crate) oom_killed: bool,
    pub(crate) pids_limited: bool,
    pub(crate) disk_full: bool,
    pub(crate) usage: Usage,
    pub(crate) network: NetworkReport,
}

impl Prepared {
    /// Whether the jail uses less memory than `limits` allow, as far as is known.
    fn fits(&self, limits: &Limits) -> bool {
        let used = self.cgroup.as_ref().and_then(JobCgroup::memory_bytes);
        used.is_none_or(|bytes| bytes < u64::from(limits.memory_mb) << 20)
    }
}

impl Runner {
    pub fn new(
        config: &Config,
        jail: Arc<jail::Current>,
        fork_server: Option<Arc<ForkServer>>,
        cgroups: Option<Cgroups>,
        metrics: Arc<Metrics>,
    ) -> Runner {
        let (uid, gid) = jail
            .get()
            .host_ids((config.sandbox_uid, config.sandbox_gid));
        Runner {
            jail,
            fork_server,
            shm_bytes: config.shm_bytes,
            cgroups,
            jobs_dir: jobs_dir(&config.state_dir),
            ids: SandboxIds::new(uid, gid, config.sandbox_ids),
            default_timeout_ms: config.default_timeout_ms,
            max_timeout_ms: config.max_timeout_ms,
            default_limits: config.default_limits,
            max_limits: config.max_limits,
            disk_inodes: config.disk_inodes,
            open_files: config.open_files,
            stack_mb: config.stack_mb,
            cpu_percent: config.cpu_percent,
            network: config.network.policy.clone(),
            proxies: Proxies::new(config.network.limits, metrics),
            collect: config.collect,
            displays: config.displays,
            max_input_bytes: config.max_input_bytes,
            preload: config.preload.clone(),
            // Ids name work dirs and cgroups: starting from the clock keeps them
            // unique across restarts, so a new run never reuses what an old one
            // left (and its startup sweep removes).
            next_id: AtomicU64::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |t| t.as_millis() as u64),
            ),
            kits: Mutex::new(Vec::new()),
        }
    }

    /// What each isolation layer enforces on this host, for `/health`, and the
    /// fork server's state when it is on.
    pub fn isolation(&self) -> Vec<pysandbox_shared::Layer> {
        let mut layers = self.jail.get().layers().to_vec();
        if let Some(server) = &self.fork_server {
            layers.push(pysandbox_shared::Layer {
                name: "fork server".into(),
                detail: server.status(),
            });
        }
        layers
    }

    /// How each limit is enforced on this host, for `/health` and `check`.
    pub fn enforcement(&self) -> Vec<Enforcement> {
        let cgroup = |c: Controller| {
            self.cgroups
                .as_ref()
                .filter(|g| g.has(c))
                .map(|g| match g.version() {
                    Version::V1 => "cgroup v1",
                    Version::V2 => "cgroup v2",
                })
        };
        let memory = match cgroup(Controller::Memory) {
            Some(v) => format!("{v} memory limit, swap off; OOM kills reported"),
            None => "RLIMIT_AS per process (fallback: no memory cgroup)".into(),
        };
        let processes = match cgroup(Controller::Pids) {
            Some(v) => format!("{v} pids.max"),
            None => "RLIMIT_NPROC, counted per uid across all jobs, not per job (fallback: no pids cgroup)".into(),
        };
        let mut cpu = match cgroup(Controller::CpuAcct) {
            Some(v) => format!(
                "{v} CPU time, polled every {} ms; RLIMIT_CPU per process",
                CPU_POLL.as_millis()
            ),
            None => "RLIMIT_CPU per process (fallback: no cpuacct cgroup)".into(),
        };
        if let (Some(v), true) = (cgroup(Controller::Cpu), self.cpu_percent > 0) {
            cpu.push_str(&format!("; {v} bandwidth {}% of a CPU", self.cpu_percent));
        }
        [
            ("memory", memory),
            (
                "time",
                "wall clock; the whole pid namespace is killed".into(),
            ),
            ("cpu", cpu),
            ("processes", processes),
            (
                "disk",
                format!(
                    "tmpfs size and {} inodes; RLIMIT_FSIZE per file",
                    self.disk_inodes
                ),
            ),
            (
                "output",
                "capture cap; the rest is drained and dropped".into(),
            ),
        ]
        .into_iter()
        .map(|(limit, mechanism)| Enforcement {
            limit: limit.into(),
            mechanism,
        })
        .collect()
    }

    /// The job's limits and network policy, or why it asks for more than is allowed.
    pub fn resolve(&self, spec: &JobSpec) -> Result<Resolved, JobError> {
        self.check_inputs(spec)?;
        let timeout_ms = check(
            "timeoutMs",
            spec.timeout_ms,
            self.default_timeout_ms,
            (1, self.max_timeout_ms),
        )?;
        let (asked, default, max) = (&spec.limits, &self.default_limits, &self.max_limits);
        let limit = |field: &str, asked, pick: fn(&Limits) -> u32| {
            let bounds = (pick(&MIN_LIMITS), pick(max));
            check(&format!("limits.{field}"), asked, pick(default), bounds)
        };
        let limits = Limits {
            memory_mb: limit("memoryMb", asked.memory_mb, |l| l.memory_mb)?,
            cpu_ms: limit("cpuMs", asked.cpu_ms, |l| l.cpu_ms)?,
            max_processes: limit("maxProcesses", asked.max_processes, |l| l.max_processes)?,
            disk_mb: limit("diskMb", asked.disk_mb, |l| l.disk_mb)?,
            output_bytes: limit("outputBytes", asked.output_bytes, |l| l.output_bytes)?,
        };
        // The code is written into the job's tmpfs: code larger than the disk would
        // fail the jail's setup (503) instead of telling the client (400).
        if spec.code.len() as u64 > u64::from(limits.disk_mb) << 20 {
            return Err(JobError::Rejected {
                field: "code".into(),
                reason: format!(
                    "does not fit in the job's disk limit of {} MiB (limits.diskMb)",
                    limits.disk_mb
                ),
            });
        }
        // A job gets network only when it asks; `allowedDomains` may only narrow
        // the configured list.
        // The configured list applies to every job, as in the seed service (whose
        // clients know nothing of `network`); a request may only narrow it.
        let asked = spec
            .network
            .as_ref()
            .and_then(|n| n.allowed_domains.as_deref());
        let policy = self
            .network
            .narrowed(asked)
            .map_err(|e| JobError::Rejected {
                field: "network.allowedDomains".into(),
                reason: e.to_string(),
            })?;
        let network = policy.allows_anything().then_some(policy);
        Ok(Resolved {
            timeout_ms,
            limits,
            network,
        })
    }

    /// Input files within the caps, none of them in another's way. The frontend
    /// checks their paths and shape; the caps are the executor's to enforce.
    fn check_inputs(&self, spec: &JobSpec) -> Result<(), JobError> {
        let rejected = |field: String, reason: String| Err(JobError::Rejected { field, reason });
        if spec.files.len() > MAX_INPUT_FILES as usize {
            return rejected(
                "files".into(),
                format!("must be at most {MAX_INPUT_FILES} files"),
            );
        }
        let bytes: u64 = spec.files.iter().map(|f| f.data.len() as u64).sum();
        if bytes > self.max_input_bytes {
            return rejected(
                "files".into(),
                format!("must total at most {} bytes", self.max_input_bytes),
            );
        }
        if let Some((first, later)) = first_conflict(spec.files.iter().map(|f| &f.path)) {
            return rejected(
                format!("files[{later}].path"),
                format!("conflicts with files[{first}].path"),
            );
        }
        Ok(())
    }

    /// Sets up a jail that waits for a job, within `limits` (the job's own for a cold
    /// jail; the maxima for a warm one, lowered when its job comes). Its Python
    /// imports `preload` first. With a `proxy` the jail may use the network through
    /// it. Dropping it kills the jail and removes its cgroup and tmpfs.
    fn prepare(
        &self,
        id: u64,
        ids: Lease,
        limits: &Limits,
        preload: &[String],
        proxy: Option<&JobProxy>,
    ) -> Result<Prepared, Error> {
        let dir = WorkDir::create(&self.jobs_dir, id, ids.pair(), self.disk(limits))?;
        let display = display::create(&dir.dirs().tmp, ids.pair())?;
        let cgroup = match &self.cgroups {
            Some(cgroups) => Some(cgroups.create(id, &self.cgroup_limits(limits))?),
            None => None,
        };
        let procs = cgroup.as_ref().map(JobCgroup::join_fds).unwrap_or_default();
        let rlimits = self.rlimits(limits).into_iter().map(|(r, _, v)| (r, v));
        let rlimits: Vec<_> = rlimits.collect();
        let proxy_dir = proxy.map(JobProxy::dir);
        let started =
            self.jail
                .get()
                .spawn(&dir, ids.pair(), &procs, &rlimits, preload, proxy_dir)?;
        Ok(Prepared {
            dir,
            display,
            cgroup,
            started: Launch::Jail(started),
            warm: false,
            ids,
        })
    }

    /// Sets up a job to fork from `template`, within `limits`: the same tmpfs,
    /// display channel and cgroups as a jail's (the fork server runs only with
    /// memory and pids cgroups), a kit made ahead when one fits, and the order its
    /// child carries out.
    fn prepare_forked(
        &self,
        template: Arc<crate::template::Template>,
        limits: &Limits,
    ) -> Result<Prepared, Error> {
        let ready = match *limits == self.default_limits {
            true => self.kits().pop(),
            false => None,
        };
        let Kit {
            dir,
            display,
            cgroup,
            passed,
            ids,
        } = match ready {
            Some(kit) => kit,
            None => self.kit(limits)?,
        };
        let order = Order {
            shm_bytes: self.shm_bytes,
            rlimits: self
                .rlimits(limits)
                .into_iter()
                .map(|(r, _, v)| (r, v))
                .collect(),
            read: self.jail.get().extra_read().to_vec(),
        };
        Ok(Prepared {
            dir,
            display,
            cgroup: Some(cgroup),
            started: Launch::Fork(forked::Pending::new(template, &order, passed)),
            warm: true,
            ids,
        })
    }

    /// A forked job's tmpfs, display channel, cgroups and descriptors, within
    /// `limits`.
    fn kit(&self, limits: &Limits) -> Result<Kit, Error> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let ids = self.ids.take()?;
        let dir = WorkDir::create(&self.jobs_dir, id, ids.pair(), self.disk(limits))?;
        let display = display::create(&dir.dirs().tmp, ids.pair())?;
        let cgroups = self.cgroups.as_ref().ok_or_else(|| {
            Error::jail("fork a job")(std::io::Error::other("the fork server needs cgroups"))
        })?;
        let cgroup = cgroups.create(id, &self.cgroup_limits(limits))?;
        let passed = forked::Passed::new(&dir.dirs(), &cgroup)?;
        Ok(Kit {
            dir,
            display,
            cgroup,
            passed,
            ids,
        })
    }

    /// Makes kits for forked jobs at the default limits until [`KITS`] wait, while
    /// the fork server is on. Blocking: called off the answers' path, once a job's
    /// remains are gone.
    pub fn make_kits(&self) {
        if self.fork_server.is_none() || self.cgroups.is_none() {
            return;
        }
        while self.kits().len() < KITS {
            match self.kit(&self.default_limits) {
                Ok(kit) => {
                    let mut kits = self.kits();
                    // Another job's cleanup may have filled it meanwhile.
                    if kits.len() < KITS {
                        kits.push(kit);
                    }
                }
                Err(e) => {
                    return warn!(error = %crate::error::chain(&e), "cannot make a kit for forked jobs")
                }
            }
        }
    }

    fn kits(&self) -> MutexGuard<'_, Vec<Kit>> {
        // A panic while holding the lock cannot leave the list inconsistent.
        self.kits
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sets up a session's jail within `limits`, which hold for its whole life,
    /// reaching what `network` allows. It forks from a template while one is ready
    /// and the session has no network; else it is a cold jail, with its proxy
    /// started first. Either way its launcher serves cells (`/sandbox/session`).
    /// Sessions need memory and pids cgroups: their limits hold for every process
    /// of the session, not per process.
    pub(crate) fn prepare_session(
        &self,
        limits: &Limits,
        network: Option<Policy>,
    ) -> Result<SessionJail, Error> {
        let cgroups = self.cgroups.as_ref();
        if !cgroups.is_some_and(|g| g.has(Controller::Memory) && g.has(Controller::Pids)) {
            return Err(Error::SessionsNeedCgroups);
        }
        // CPU time is counted per call, through the cgroup: the per-process backstop
        // would end a long session's interpreter for the CPU of all its calls.
        let lifelong = Limits {
            cpu_ms: u32::MAX,
            ..*limits
        };
        let (live, violations) = mpsc::channel(MAX_VIOLATIONS);
        let template = match &network {
            None => self.fork_server.as_ref().and_then(|f| f.for_session()),
            Some(_) => None,
        };
        let (jail, proxy) = match (template, network) {
            (Some(template), _) => (self.prepare_forked(template, &lifelong)?, None),
            (None, network) => {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let ids = self.ids.take()?;
                let proxy = match network {
                    Some(policy) => {
                        Some(
                            self.proxies
                                .start(&self.jobs_dir, id, ids.pair(), policy, live)?,
                        )
                    }
                    None => None,
                };
                (
                    self.prepare(id, ids, &lifelong, &[], proxy.as_ref())?,
                    proxy,
                )
            }
        };
        jail.dir.write_sandbox("session", b"")?;
        Ok(SessionJail {
            orders: self.orders(&lifelong),
            jail,
            proxy,
            violations,
        })
    }

    /// How many and how large the displays of one job may be.
    pub(crate) fn display_caps(&self) -> DisplayCaps {
        self.displays
    }

    /// How much of a work dir one job's collection takes.
    pub(crate) fn collect_caps(&self) -> Caps {
        self.collect
    }

    /// Sets up a warm jail for the pool: at the maxima, with the configured modules
    /// imported, and confirmed waiting (its Python said so) before it is returned.
    pub async fn prepare_warm(&self) -> Result<Prepared, Error> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let ids = self.ids.take()?;
        let mut jail = self.prepare(id, ids, &self.max_limits, &self.preload, None)?;
        let mut bytes = [0u8; 2];
        let confirmed = match &mut jail.started {
            Launch::Jail(started) => {
                tokio::time::timeout(WARM_TIMEOUT, started.ready.read_exact(&mut bytes)).await
            }
            Launch::Fork(_) => return Err(Error::WarmJailDidNotStart),
        };
        match confirmed {
            Ok(Ok(_)) if &bytes == b"RW" => {
                jail.warm = true;
                Ok(jail)
            }
            _ => Err(Error::WarmJailDidNotStart),
        }
    }

    /// Runs `spec` to its end in `jail` (a warm one from the pool, or a cold one set
    /// up now when `None`; a job that may use the network always gets a cold one,
    /// since its proxy must exist before its jail). Sends the job's output to
    /// `frames` as it comes, then [`Response::Ended`], then its files, and returns
    /// what collection left out, which the caller sends last (every process of the
    /// job is gone by then), and the job's [`Remains`]. Dropping the returned
    /// future kills the jail, stops its proxy, and removes its cgroup, tmpfs and
    /// proxy socket.
    pub async fn run(
        &self,
        spec: &JobSpec,
        resolved: Resolved,
        jail: Option<Prepared>,
        frames: &Frames,
    ) -> Result<(FilesEnd, Remains), Error> {
        // A job without network forks from the template while one is ready.
        let template = match &resolved.network {
            None => self
                .fork_server
                .as_ref()
                .and_then(|f| f.for_code(&spec.code)),
            Some(_) => None,
        };
        match self
            .run_in(spec, resolved.clone(), jail, template, frames)
            .await
        {
            // Nothing of the job ran, and nothing of it was sent.
            Err(Error::NotForked(e)) => {
                warn!(error = %crate::error::chain(&e),
                    "the fork server did not take the job; it runs in a jail of its own");
                self.run_in(spec, resolved, None, None, frames).await
            }
            ran => ran,
        }
    }

    /// [`Runner::run`], forked from `template` if one is given and no warm jail
    /// fits.
    async fn run_in(
        &self,
        spec: &JobSpec,
        resolved: Resolved,
        jail: Option<Prepared>,
        template: Option<Arc<crate::template::Template>>,
        frames: &Frames,
    ) -> Result<(FilesEnd, Remains), Error> {
        let (timeout_ms, limits) = (resolved.timeout_ms, resolved.limits);
        let mut proxy = None;
        // The proxy's refusals as it records them; closed at once without a proxy.
        let (live, mut violations) = mpsc::channel(MAX_VIOLATIONS);
        let mut jail = match (jail, &resolved.network) {
            // A warm jail whose Python already uses as much memory as the job may
            // have cannot take the job's limit (cgroup v1 refuses it, v2 would
            // OOM-kill the jail before the job's first line): a cold one can.
            (Some(jail), None) if jail.fits(&limits) => jail,
            (_, None) if template.is_some() => {
                self.prepare_forked(template.expect("just checked"), &limits)?
            }
            (_, network) => {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let ids = self.ids.take()?;
                // Started before the jail, whose jail-init waits for socat, which
                // needs the socket to exist.
                if let Some(policy) = network {
                    let started =
                        self.proxies
                            .start(&self.jobs_dir, id, ids.pair(), policy.clone(), live)?;
                    proxy = Some(started);
                }
                self.prepare(id, ids, &limits, &[], proxy.as_ref())?
            }
        };
        // The job's limits, on a warm jail: it was set up at the maxima, and its
        // Python ran already. Every other jail was made within them.
        jail.dir.resize(self.disk(&limits))?;
        if let (Some(cgroup), Launch::Jail(_), true) = (&jail.cgroup, &jail.started, jail.warm) {
            cgroup.set_limits(&self.cgroup_limits(&limits))?;
            cgroup.reset_peak();
        }
        // Input files, then the code: the launcher reads nothing before the hand-off
        // below, so the job never sees them half-written.
        let inputs = inputs::write(&jail.dir.dirs().work, &spec.files, jail.ids.pair(), false)?;
        jail.dir.write_code(&spec.code)?;
        let Prepared {
            ids,
            dir,
            mut display,
            cgroup,
            started,
            warm,
        } = jail;
        let cpu_base = cgroup.as_ref().and_then(JobCgroup::cpu_ns).unwrap_or(0);
        let Begun {
            mut process,
            stdout,
            stderr,
            input,
            ready,
            handoff,
        } = started.begin(warm)?;
        // Which path the job took, for the tests that prove each path runs (a warm
        // pass that silently ran cold would prove nothing). At debug level: the
        // journal keeps one line per job, "job finished".
        let path = match (&process, warm) {
            (Process::Forked(_), _) => "forked",
            (Process::Jail(_), true) => "warm",
            (Process::Jail(_), false) => "cold",
        };
        debug!(jail = path, "job started");
        let cap = limits.output_bytes as usize;
        let timeout = Duration::from_millis(timeout_ms.into());
        let cpu_limit = Duration::from_millis(limits.cpu_ms.into());
        let orders = self.orders(&limits);
        let started_at = Instant::now();
        // Cancelled once the jail's processes are gone; the output then gets
        // DRAIN_GRACE to end.
        let gone = CancellationToken::new();
        let drained = || async {
            gone.cancelled().await;
            tokio::time::sleep(DRAIN_GRACE).await;
        };
        let io = async {
            // The hand-off starts a jail's job. A jail that died meanwhile shows as
            // "not ready" below; its write error says nothing more.
            if let Some(mut handoff) = handoff {
                let _ = handoff.write_all(orders.as_bytes()).await;
            }
            let stdin = async {
                tokio::select! {
                    () = feed(input, spec.stdin.as_deref().unwrap_or_default()) => {}
                    () = drained() => {}
                }
            };
            // Nothing is passed on before jail-init says the jail is set up: what
            // comes out before is bwrap's, a setup failure to log, not job output.
            let output = async {
                let ready = match ready {
                    None => true,
                    Some(ready) => tokio::select! {
                        ready = is_ready(ready) => ready,
                        () = drained() => false,
                    },
                };
                if ready {
                    Ok(tokio::join!(
                        forward(Some(stdout), Stream::Stdout, cap, frames, drained()),
                        forward(Some(stderr), Stream::Stderr, cap, frames, drained()),
                    ))
                } else {
                    Err(last_words(Some(stderr), LAST_WORDS_BYTES, drained()).await)
                }
            };
            let shown = display::read(&mut display, self.displays, frames, &gone, false);
            let refused = pass_violations(&mut violations, frames, &gone);
            let (output, (), shown, ()) = tokio::join!(output, stdin, shown, refused);
            output.map(|truncated| (truncated, shown))
        };
        let wait = async {
            let cpu = cgroup.as_ref().map(|c| (c, cpu_base, cpu_limit));
            let waited = wait_or_kill(&mut process, timeout, cpu).await;
            // Whatever is left once bwrap is gone must not hold the output pipes open.
            if let Some(cgroup) = &cgroup {
                cgroup.kill_all();
            }
            // Nor may the proxy, where a job can park descriptors it passed.
            if let Some(proxy) = &proxy {
                proxy.stop();
            }
            gone.cancel();
            (waited, Instant::now())
        };
        let ((waited, gone_at), output) = tokio::join!(wait, io);
        let wall = started_at.elapsed();
        if gone_at.elapsed() >= DRAIN_GRACE {
            warn!("the jail's output stayed open after its processes were gone; keeping what was read");
        }
        let (status, killed_by) = waited.map_err(|e| match forked::not_taken(&e) {
            true => Error::NotForked(e),
            false => Error::jail("wait for the jail")(e),
        })?;
        // A jail killed at its limit before jail-init ran still hit the limit: that
        // is the answer, not a setup failure.
        let (truncated, shown) = match output {
            Ok(shown) => shown,
            Err(_) if killed_by.is_some() => ((false, false), Shown::default()),
            Err(last_words) => {
                return Err(Error::JailDidNotStart {
                    stderr: last_words.trim().chars().take(500).collect(),
                })
            }
        };
        let mut observed = Observed {
            status: Some(status),
            killed_by,
            disk_full: dir.is_full(),
            usage: Usage {
                wall_ms: wall.as_millis() as u64,
                ..Usage::default()
            },
            ..Observed::default()
        };
        if let Some(cgroup) = &cgroup {
            wait_until_empty(cgroup).await;
            let report = cgroup.report();
            observed.oom_killed = report.oom_kills > 0;
            observed.pids_limited = report.pids_refused > 0;
            observed.usage.cpu_ms = report
                .cpu_ns
                .map(|ns| ns.saturating_sub(cpu_base) / 1_000_000);
            observed.usage.peak_memory_bytes = report.peak_memory_bytes;
        }
        // Every process of the jail is gone: nothing can use the proxy any more.
        observed.network = proxy.map(JobProxy::finish).unwrap_or_default();
        // What it refused after the live pass stopped, so that every violation
        // `Ended` lists was sent before it.
        pass_violations(&mut violations, frames, &gone).await;
        let end = assemble(observed, &resolved, truncated, shown);
        info!(
            exit_code = end.exit_code,
            signal = end.signal.as_deref(),
            limit = end.limit_exceeded.map(LimitKind::as_str),
            wall_ms = end.usage.wall_ms,
            cpu_ms = end.usage.cpu_ms,
            peak_memory_bytes = end.usage.peak_memory_bytes,
            "job finished"
        );
        let remains = Remains {
            dir,
            _cgroup: cgroup,
            _ids: ids,
        };
        if frames.send(Response::Ended(end)).await.is_err() || !spec.collect_files {
            return Ok((FilesEnd::default(), remains));
        }
        // Every process of the job is dead by now: its cgroup is empty, or (without
        // one) its pid namespace went down with its pid 1, whose parent bwrap exited.
        let collected = collect_files(
            remains.dir.dirs().work,
            self.collect,
            inputs.into_iter().collect(),
            frames.clone(),
        )
        .await?;
        let files = FilesEnd {
            skipped_files: collected.skipped,
            skipped_unlisted: collected.skipped_unlisted,
        };
        Ok((files, remains))
    }

    fn disk(&self, limits: &Limits) -> DiskLimits {
        DiskLimits {
            bytes: u64::from(limits.disk_mb) << 20,
            inodes: self.disk_inodes,
        }
    }

    /// The launcher's orders: the per-job rlimits it lowers itself to, one
    /// `RLIMIT_NAME value` line each.
    fn orders(&self, limits: &Limits) -> String {
        self.rlimits(limits)
            .into_iter()
            .filter(|(_, name, _)| PER_JOB_RLIMITS.contains(name))
            .map(|(_, name, value)| format!("{name} {value}\n"))
            .collect()
    }

    fn cgroup_limits(&self, limits: &Limits) -> CgroupLimits {
        CgroupLimits {
            memory_bytes: u64::from(limits.memory_mb) << 20,
            max_processes: limits.max_processes,
            cpu_percent: (self.cpu_percent > 0).then_some(self.cpu_percent),
        }
    }

    /// Per-process limits of every process in the jail, with their names. Those a
    /// cgroup enforces for the whole job are only set here when the cgroup is missing.
    fn rlimits(&self, limits: &Limits) -> Vec<(libc::__rlimit_resource_t, &'static str, u64)> {
        let mut rlimits = vec![
            // No core dumps: they would fill the work dir and leak memory contents.
            (libc::RLIMIT_CORE, "RLIMIT_CORE", 0),
            (
                libc::RLIMIT_NOFILE,
                "RLIMIT_NOFILE",
                u64::from(self.open_files),
            ),
            (
                libc::RLIMIT_STACK,
                "RLIMIT_STACK",
                u64::from(self.stack_mb) << 20,
            ),
            // One file may take the whole disk limit, never more: EFBIG, not ENOSPC.
            (
                libc::RLIMIT_FSIZE,
                "RLIMIT_FSIZE",
                u64::from(limits.disk_mb) << 20,
            ),
            // A backstop for one process; the cgroup poll covers the whole tree.
            (
                libc::RLIMIT_CPU,
                "RLIMIT_CPU",
                u64::from(limits.cpu_ms).div_ceil(1000) + 1,
            ),
        ];
        let has = |c| self.cgroups.as_ref().is_some_and(|g| g.has(c));
        if !has(Controller::Memory) {
            rlimits.push((
                libc::RLIMIT_AS,
                "RLIMIT_AS",
                u64::from(limits.memory_mb) << 20,
            ));
        }
        if !has(Controller::Pids) {
            rlimits.push((
                libc::RLIMIT_NPROC,
                "RLIMIT_NPROC",
                u64::from(limits.max_processes),
            ));
        }
        rlimits
    }
}

/// A requested limit, or the default; outside `(min, max)` is refused with the
/// API's name for the field.
fn check(
    field: &str,
    asked: Option<u32>,
    default: u32,
    (min, max): (u32, u32),
) -> Result<u32, JobError> {
    match asked {
        None => Ok(default),
        Some(value) if (min..=max).contains(&value) => Ok(value),
        Some(_) => Err(JobError::Rejected {
            field: field.into(),
            reason: format!("must be from {min} to {max}"),
        }),
    }
}

/// Waits for the job to end, killing it at the wall-clock limit or, when its cgroup
/// accounts CPU time, at the CPU limit.
async fn wait_or_kill(
    process: &mut Process,
    timeout: Duration,
    cpu: Option<(&JobCgroup, u64, Duration)>,
) -> std::io::Result<(ExitStatus, Option<LimitKind>)> {
    let cpu_exceeded = async {
        match cpu {
            Some((cgroup, base_ns, limit)) => cpu_spent(cgroup, base_ns, limit).await,
            None => std::future::pending().await,
        }
    };
    let killed_by = tokio::select! {
        status = process.wait() => {
            let status = status?;
            return Ok((status, None));
        }
        () = tokio::time::sleep(timeout) => LimitKind::Time,
        () = cpu_exceeded => LimitKind::Cpu,
    };
    process.start_kill(cpu.map(|(cgroup, ..)| cgroup))?;
    // A forked job's status comes from its spare, and an order no spare took
    // waits in the template's socket, its status pipe open, as long as the
    // template lives: the job counts as killed once its cgroup is gone.
    let status = match tokio::time::timeout(KILLED_WAIT, process.wait()).await {
        Ok(status) => status?,
        Err(_) => {
            warn!("a killed job did not report its end; counting it as killed");
            ExitStatus::from_raw(libc::SIGKILL)
        }
    };
    Ok((status, Some(killed_by)))
}

/// Resolves once the processes in `cgroup` used more than `limit` of CPU time
/// since its counter read `base_ns`.
pub(crate) async fn cpu_spent(cgroup: &JobCgroup, base_ns: u64, limit: Duration) {
    let limit_ns = limit.as_nanos() as u64;
    loop {
        tokio::time::sleep(CPU_POLL).await;
        if cgroup
            .cpu_ns()
            .is_some_and(|ns| ns.saturating_sub(base_ns) > limit_ns)
        {
            return;
        }
    }
}

/// Waits until the last process of a killed jail has left its cgroup, so that the
/// usage figures are final and nothing of the job outlives its response.
pub(crate) async fn wait_until_empty(cgroup: &JobCgroup) {
    let deadline = Instant::now() + EMPTY_WAIT;
    while !cgroup.is_empty() && Instant::now() < deadline {
        // Killed again: a process forked after the last kill, by one not yet dead,
        // would otherwise live on (a forked job's pid namespace dies only after
        // the answer).
        cgroup.kill_all();
        // Dying processes leave within a millisecond or two: poll finely, since the
        // response waits on this.
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

/// Sends the proxy's refusals to `frames` as they come, until `gone` is cancelled;
/// once it is, only those already waiting (the channel has room for every refusal
/// the report keeps, so none was turned away).
pub(crate) async fn pass_violations(
    live: &mut mpsc::Receiver<NetworkViolation>,
    frames: &Frames,
    gone: &CancellationToken,
) {
    loop {
        let violation = tokio::select! {
            biased;
            violation = live.recv() => violation,
            () = gone.cancelled() => return,
        };
        let Some(violation) = violation else {
            return;
        };
        if frames.send(Response::Violation(violation)).await.is_err() {
            return;
        }
    }
}

/// Streams the files of the work dir at `work` but those `unchanged` to `frames`
/// from a blocking thread: reading up to the caps' worth of files must not stall
/// the runtime's other jobs.
pub(crate) async fn collect_files(
    work: PathBuf,
    caps: Caps,
    unchanged: HashSet<Stamp>,
    frames: Frames,
) -> Result<Collected, Error> {
    tokio::task::spawn_blocking(move || collect(&work, caps, &unchanged, &mut FrameSink(frames)))
        .await
        .map_err(|e| Error::Collect(std::io::Error::other(e)))?
        .map_err(Error::Collect)
}

/// Collected files on their way to the frontend, a chunk at a time: the queue is
/// bounded, so a slow frontend slows the walk instead of filling memory.
struct FrameSink(Frames);

impl Sink for FrameSink {
    fn begin(&mut self, path: &str) -> bool {
        let start = FileStart { path: path.into() };
        self.0.blocking_send(Response::File(start)).is_ok()
    }

    fn data(&mut self, chunk: &[u8]) -> bool {
        self.0.blocking_send(Response::Data(chunk.to_vec())).is_ok()
    }
}

/// Writes the job's stdin, then closes it so the job reads EOF. A job that exits
/// without reading it all just ends the write.
async fn feed(mut input: pipe::Sender, data: &str) {
    let _ = input.write_all(data.as_bytes()).await;
}

/// Whether jail-init reported the jail set up before the pipe closed.
pub(crate) async fn is_ready(mut ready: pipe::Receiver) -> bool {
    let mut byte = [0u8; 1];
    matches!(ready.read(&mut byte).await, Ok(1))
}

/// Turns what was observed into the result: exit status, one `[sandbox]` line per
/// refused network request and per limit that fired, and the limit that matters
/// most in `limit_exceeded` (the one that killed the job, else the first of memory,
/// cpu, processes, disk, output).
///
/// A limit counts as fired only on evidence the job cannot make up; its exit status
/// is never evidence (it can `sys.exit(152)` or send itself SIGXCPU):
/// - time: the executor's own wall-clock timer killed it;
/// - memory: the memory cgroup's OOM-kill counter (the kernel's record);
/// - cpu: the executor's CPU poll killed it, or the cgroup's CPU time is at or past
///   the limit (RLIMIT_CPU's SIGXCPU always comes later than that); without a
///   cpuacct cgroup no figure is trusted, so no verdict;
/// - processes: the pids cgroup's `max` event counter (a refused fork or clone);
/// - disk: the tmpfs has almost no space or inodes left once the job is over;
/// - output: the executor's capture saw more than it keeps.
pub(crate) fn assemble(
    observed: Observed,
    resolved: &Resolved,
    truncated: (bool, bool),
    shown: Shown,
) -> JobEnd {
    let Resolved {
        timeout_ms, limits, ..
    } = resolved;
    let killed = observed.killed_by.is_some() && !observed.interrupted;
    let (exit_code, signal) = exit_of(observed.status, killed);
    let ended = if observed.interrupted {
        "interrupted"
    } else {
        "killed"
    };
    let (stdout_truncated, stderr_truncated) = truncated;
    let cpu_spent = observed
        .usage
        .cpu_ms
        .is_some_and(|ms| ms >= u64::from(limits.cpu_ms));
    let fired = [
        (
            observed.killed_by == Some(LimitKind::Time),
            LimitKind::Time,
            format!("{ended}: wall-clock timeout of {timeout_ms} ms exceeded"),
        ),
        (
            observed.oom_killed,
            LimitKind::Memory,
            format!("killed: memory limit {} MiB exceeded", limits.memory_mb),
        ),
        (
            observed.killed_by == Some(LimitKind::Cpu) || cpu_spent,
            LimitKind::Cpu,
            format!("{ended}: CPU time limit of {} ms exceeded", limits.cpu_ms),
        ),
        (
            observed.pids_limited,
            LimitKind::Processes,
            format!(
                "process limit of {} reached: a fork or thread was refused",
                limits.max_processes
            ),
        ),
        (
            observed.disk_full,
            LimitKind::Disk,
            format!(
                "disk limit of {} MiB reached (work dir and /tmp together)",
                limits.disk_mb
            ),
        ),
        (
            stdout_truncated,
            LimitKind::Output,
            format!("stdout truncated at {} bytes", limits.output_bytes),
        ),
        (
            stderr_truncated,
            LimitKind::Output,
            format!("stderr truncated at {} bytes", limits.output_bytes),
        ),
    ];
    let limit_exceeded = observed.killed_by.or_else(|| {
        fired
            .iter()
            .find(|(hit, ..)| *hit)
            .map(|(_, kind, _)| *kind)
    });
    let NetworkReport {
        violations,
        dropped,
    } = observed.network;
    let mut notes: Vec<String> = violations
        .iter()
        .map(|v| format!("network: blocked {} {} ({})", v.method, v.target, v.reason))
        .collect();
    if dropped > 0 {
        notes.push(format!(
            "network: {dropped} more blocked requests not listed"
        ));
    }
    notes.extend(
        fired
            .into_iter()
            .filter(|(hit, ..)| *hit)
            .map(|(_, _, note)| note),
    );
    if shown.dropped > 0 {
        notes.push(format!(
            "displays: {} not returned (over the display caps)",
            shown.dropped
        ));
    }
    if shown.malformed {
        notes.push(
            "displays: the display channel carried something else; the rest was ignored".into(),
        );
    }
    JobEnd {
        exit_code,
        signal,
        stdout_truncated,
        stderr_truncated,
        timed_out: observed.killed_by == Some(LimitKind::Time),
        limit_exceeded,
        usage: observed.usage,
        notes,
        violations,
        result: shown.result,
    }
}

/// The job's exit code or the name of the signal that ended it.
///
/// bwrap reports a job killed by signal N as exit status 128 + N, so a Python that
/// calls `sys.exit(137)` reads as SIGKILL too; the shell has the same ambiguity.
fn exit_of(status: Option<ExitStatus>, killed: bool) -> (Option<i32>, Option<String>) {
    let name = |n: i32| {
        nix::sys::signal::Signal::try_from(n)
            .ok()
            .map(|s| s.as_str().to_owned())
    };
    let Some(status) = status.filter(|_| !killed) else {
        return (None, Some("SIGKILL".into()));
    };
    if let Some(n) = status.signal() {
        return (None, name(n).or(Some(format!("signal {n}"))));
    }
    let code = status.code().unwrap_or(-1);
    match code
        .checked_sub(SIGNAL_EXIT_BASE)
        .filter(|&n| n > 0)
        .and_then(name)
    {
        Some(signal) => (None, Some(signal)),
        None => (Some(code), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i32) -> Option<ExitStatus> {
        Some(ExitStatus::from_raw(code << 8))
    }

    /// The end of a job observed as `observed`, whose stdout and stderr were cut or
    /// not, with the test limits.
    fn run_result(observed: Observed, truncated: (bool, bool)) -> JobEnd {
        assemble(observed, &resolved(), truncated, Shown::default())
    }

    fn resolved() -> Resolved {
        Resolved {
            timeout_ms: 1000,
            limits: Limits {
                memory_mb: 64,
                cpu_ms: 500,
                max_processes: 8,
                disk_mb: 16,
                output_bytes: 3,
            },
            network: None,
        }
    }

    #[test]
    fn exit_codes_and_signals() {
        assert_eq!(exit_of(exited(0), false), (Some(0), None));
        assert_eq!(exit_of(exited(3), false), (Some(3), None));
        assert_eq!(
            exit_of(exited(128 + 11), false),
            (None, Some("SIGSEGV".into()))
        );
        assert_eq!(exit_of(exited(128), false), (Some(128), None));
        assert_eq!(exit_of(exited(255), false), (Some(255), None));
        assert_eq!(
            exit_of(Some(ExitStatus::from_raw(9)), false),
            (None, Some("SIGKILL".into()))
        );
        assert_eq!(exit_of(exited(0), true), (None, Some("SIGKILL".into())));
    }

    #[test]
    fn the_killing_limit_wins_and_every_limit_adds_one_line() {
        let observed = Observed {
            status: exited(0),
            killed_by: Some(LimitKind::Time),
            pids_limited: true,
            ..Observed::default()
        };
        let result = run_result(observed, (true, true));
        assert_eq!(
            result.notes,
            [
                "killed: wall-clock timeout of 1000 ms exceeded",
                "process limit of 8 reached: a fork or thread was refused",
                "stdout truncated at 3 bytes",
                "stderr truncated at 3 bytes"
            ]
        );
        assert_eq!(result.limit_exceeded, Some(LimitKind::Time));
        assert!(result.timed_out && result.stdout_truncated && result.stderr_truncated);
        assert_eq!(result.exit_code, None);
    }

    #[test]
    fn an_oom_kill_reads_as_memory_not_a_bare_signal() {
        let observed = Observed {
            status: exited(128 + 9),
            oom_killed: true,
            ..Observed::default()
        };
        let result = run_result(observed, (false, false));
        assert_eq!(result.limit_exceeded, Some(LimitKind::Memory));
        assert_eq!(result.signal.as_deref(), Some("SIGKILL"));
        assert_eq!(result.notes, ["killed: memory limit 64 MiB exceeded"]);
        assert!(!result.timed_out);
    }

    #[test]
    fn sigxcpu_without_the_cpu_time_is_no_verdict() {
        let forged = |status| Observed {
            status: Some(status),
            usage: Usage {
                cpu_ms: Some(5),
                ..Usage::default()
            },
            ..Observed::default()
        };
        // sys.exit(152), and os.kill(os.getpid(), SIGXCPU).
        for status in [
            ExitStatus::from_raw((128 + 24) << 8),
            ExitStatus::from_raw(24),
        ] {
            let result = run_result(forged(status), (false, false));
            assert_eq!(result.signal.as_deref(), Some("SIGXCPU"));
            assert_eq!(result.limit_exceeded, None);
            assert!(result.notes.is_empty(), "{:?}", result.notes);
        }
    }

    #[test]
    fn sigxcpu_after_the_cpu_time_reads_as_cpu() {
        let observed = Observed {
            status: exited(128 + 24),
            usage: Usage {
                cpu_ms: Some(500),
                ..Usage::default()
            },
            ..Observed::default()
        };
        let result = run_result(observed, (false, false));
        assert_eq!(result.limit_exceeded, Some(LimitKind::Cpu));
        assert_eq!(result.notes, ["killed: CPU time limit of 500 ms exceeded"]);
    }

    #[test]
    fn every_refused_request_adds_one_line_before_the_limits() {
        let violation = |target: &str| pysandbox_shared::NetworkViolation {
            method: "CONNECT".into(),
            target: target.into(),
            reason: "not in allowed domains".into(),
        };
        let observed = Observed {
            status: exited(1),
            disk_full: true,
            network: NetworkReport {
                violations: vec![violation("evil.com:443"), violation("evil.org:443")],
                dropped: 3,
            },
            ..Observed::default()
        };
        let result = run_result(observed, (false, false));
        assert_eq!(
            result.notes,
            [
                "network: blocked CONNECT evil.com:443 (not in allowed domains)",
                "network: blocked CONNECT evil.org:443 (not in allowed domains)",
                "network: 3 more blocked requests not listed",
                "disk limit of 16 MiB reached (work dir and /tmp together)"
            ]
        );
        assert_eq!(result.violations.len(), 2);
        assert_eq!(result.limit_exceeded, Some(LimitKind::Disk));
    }

    #[test]
    fn a_clean_run_adds_nothing() {
        let observed = Observed {
            status: exited(0),
            ..Observed::default()
        };
        let result = run_result(observed, (false, false));
        assert!(result.notes.is_empty());
        assert_eq!(result.limit_exceeded, None);
    }

    #[test]
    fn requested_limits_may_only_lower_the_maximum() {
        let bounds = (8, 1024);
        assert_eq!(check("limits.memoryMb", None, 512, bounds), Ok(512));
        assert_eq!(check("limits.memoryMb", Some(100), 512, bounds), Ok(100));
        assert_eq!(check("limits.memoryMb", Some(1024), 512, bounds), Ok(1024));
        assert_eq!(check("limits.memoryMb", Some(8), 512, bounds), Ok(8));
        for asked in [1025, 7] {
            assert_eq!(
                check("limits.memoryMb", Some(asked), 512, bounds),
                Err(JobError::Rejected {
                    field: "limits.memoryMb".into(),
                    reason: "must be from 8 to 1024".into(),
                })
            );
        }
        assert!(check("timeoutMs", Some(0), 1, (1, 5)).is_err());
    }
}
