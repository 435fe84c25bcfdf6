//! Executor configuration: command-line flags over an optional TOML file over defaults.
//!
//! Everything is checked here, once, and turned into a [`Config`] the rest of the
//! executor trusts: paths are absolute, the sandbox uid is none of the daemons' uids,
//! limits are in range.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use pysandbox_shared::files::{MAX_FILES, MAX_FILES_BYTES, MAX_INPUT_BYTES};
use pysandbox_shared::net::Cidr;
use pysandbox_shared::protocol::MAX_ASK_TEXT;
use pysandbox_shared::{MAX_DISPLAYS, MAX_DISPLAYS_BYTES};
use serde::Deserialize;

use crate::collect::Caps;
use crate::display::DisplayCaps;
use crate::error::Error;
use crate::proxy::ask::{AskSettings, Asker};
use crate::proxy::policy::{DomainPattern, Policy};
use crate::proxy::target::Host;
use crate::proxy::ProxyLimits;

const DEFAULT_SOCKET: &str = "/run/pysandbox/executor.sock";
const DEFAULT_STATE_DIR: &str = "/var/lib/pysandbox";
const DEFAULT_PYTHON: &str = "/usr/bin/python3";
const DEFAULT_BWRAP: &str = "/usr/bin/bwrap";
/// The user jobs run as unless `sandbox_uid` says otherwise: a user of their own,
/// not `nobody` (65534), which every other unprivileged thing on the host shares.
const DEFAULT_SANDBOX_USER: &str = "pysandbox-job";
const DEFAULT_TIMEOUT_MS: u32 = 30_000;
const DEFAULT_SHM_BYTES: u64 = 64 * 1024 * 1024;
const DEFAULT_DISK_INODES: u32 = 16_384;
const DEFAULT_OPEN_FILES: u32 = 256;
const DEFAULT_STACK_MB: u32 = 8;
const DEFAULT_CPU_PERCENT: u32 = 100;
const DEFAULT_WARM_POOL_SIZE: u32 = 2;
/// What a fork-server template imports: the typical job's modules (those not
/// installed are skipped).
const DEFAULT_FORK_PRELOAD: &[&str] = &["numpy", "pandas", "matplotlib.pyplot"];
/// How long a template serves before a fresh one replaces it: its hash secret and
/// address layout are every job's it forks, so they change at least this often.
const DEFAULT_FORK_TEMPLATE_MAX_AGE_MS: u32 = 3_600_000;
/// The fork-server library's file name, looked for beside the executor binary.
const FORK_LIBRARY_NAME: &str = "libpysandbox_fork.so";
/// Jobs that may wait for a slot, beyond those running.
const DEFAULT_MAX_QUEUED_JOBS: u32 = 16;
/// How long a job may wait for a slot before it is answered "busy".
const DEFAULT_QUEUE_TIMEOUT_MS: u32 = 30_000;
/// The longest queue wait that may be configured: the frontend waits a little
/// longer than this for a job to start.
const MAX_QUEUE_TIMEOUT_MS: u32 = 120_000;
/// How long running jobs may go on after SIGTERM before they are killed.
const DEFAULT_SHUTDOWN_GRACE_SECS: u32 = 20;
/// Frontend connections served at once; more wait in the listen backlog.
const DEFAULT_MAX_PEER_CONNECTIONS: u32 = 256;
/// Sessions open at once, and the memory limits of all of them together.
const DEFAULT_SESSION_MAX: u32 = 16;
const DEFAULT_SESSION_MEMORY_MB: u64 = 8192;
/// How long a session may sit unused, by default and at most.
const DEFAULT_SESSION_IDLE_TIMEOUT_MS: u32 = 600_000;
const DEFAULT_SESSION_MAX_IDLE_TIMEOUT_MS: u32 = 3_600_000;
/// How long an ended session's id answers "ended" before it is forgotten.
const DEFAULT_SESSION_ENDED_KEEP_MS: u32 = 600_000;

/// How many and how large a job's displays may be unless configured otherwise.
const DEFAULT_DISPLAYS: DisplayCaps = DisplayCaps {
    max_count: 16,
    max_bytes: 8 << 20,
    max_total_bytes: 32 << 20,
};

/// What is collected of a job's work dir unless configured otherwise.
const DEFAULT_COLLECT: Caps = Caps {
    max_files: 100,
    max_file_bytes: 32 << 20,
    max_total_bytes: MAX_FILES_BYTES,
};

const DEFAULT_SOCAT: &str = "/usr/bin/socat";
const DEFAULT_ALLOWED_PORTS: [u16; 2] = [80, 443];
const DEFAULT_CONNECT_TIMEOUT_MS: u32 = 10_000;
const DEFAULT_IDLE_TIMEOUT_MS: u32 = 30_000;
const DEFAULT_CONNECTION_TIMEOUT_MS: u32 = pysandbox_shared::MAX_TIMEOUT_MS;
const DEFAULT_MAX_CONNECTIONS: u32 = 16;
const DEFAULT_MAX_CLIENT_CONNECTIONS: u32 = 32;
/// At most two descriptors each (client and upstream): 512 of the 1024 that
/// systemd's default soft RLIMIT_NOFILE gives the executor.
const DEFAULT_MAX_TOTAL_CONNECTIONS: u32 = 256;
const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
const DEFAULT_ASK_TIMEOUT_MS: u32 = 2_000;
/// The callback's answer holds the job's request: a minute is past any prompt a
/// person would sit through while code waits.
const MAX_ASK_TIMEOUT_MS: u32 = 60_000;
const DEFAULT_MAX_ASKS_PER_JOB: u32 = 16;
/// Each question is a frame, an outbound call and a cache entry.
const MAX_ASKS_PER_JOB: u32 = 1_000;

/// Limits a job gets when it names none.
const DEFAULT_LIMITS: Limits = Limits {
    memory_mb: 512,
    cpu_ms: 60_000,
    max_processes: 64,
    disk_mb: 256,
    output_bytes: 1024 * 1024,
};

/// The least a job may ask for: below these a jail cannot start, so a request is
/// refused rather than answered with a failed setup.
pub const MIN_LIMITS: Limits = Limits {
    // A cold jail running print(1) peaks at 8.3 to 9 MiB of cgroup memory (bwrap,
    // Python's start and the launcher; cgroup v1, kernel 6.18, Python 3.11): at 8
    // it is OOM-killed or not by a few pages of reclaimable cache.
    memory_mb: 16,
    cpu_ms: 1,
    // bwrap, its pid 1 in the jail, and Python; socat for a job with network.
    max_processes: 4,
    // The jail writes only the job's code (and its input files, checked on their own).
    disk_mb: 1,
    output_bytes: 1,
};

/// The most a job may ask for.
const MAX_LIMITS: Limits = Limits {
    memory_mb: 4096,
    cpu_ms: 600_000,
    max_processes: 512,
    disk_mb: 2048,
    output_bytes: 4 * 1024 * 1024,
};

/// Command-line flags. Each one may also be set in the `--config` file; flags win.
#[derive(Debug, Parser)]
#[command(
    name = "pysandbox-executor",
    version,
    about = "Runs pysandbox jobs in bubblewrap jails"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// TOML file with any of the settings below (keys are the flag names with `_`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Unix socket to serve [default: /run/pysandbox/executor.sock].
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Directory for job work dirs and staged jail files [default: /var/lib/pysandbox].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// A uid allowed to connect (repeatable); root and the executor's own uid always are.
    #[arg(long = "allow-uid")]
    pub allow_uids: Vec<u32>,
    /// Group that owns the socket file (mode 0660).
    #[arg(long)]
    pub socket_group: Option<u32>,
    /// Python interpreter to run jobs with [default: /usr/bin/python3].
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Jobs that may run at once [default: number of CPUs].
    #[arg(long)]
    pub max_jobs: Option<u32>,
    /// User jobs run as, looked up by name at start [default: pysandbox-job].
    #[arg(long, conflicts_with = "sandbox_uid")]
    pub sandbox_user: Option<String>,
    /// Uid jobs run as, instead of `--sandbox-user`'s.
    #[arg(long)]
    pub sandbox_uid: Option<u32>,
    /// Gid jobs run as [default: the sandbox user's group, or the sandbox uid].
    #[arg(long)]
    pub sandbox_gid: Option<u32>,
    /// Host uids (and gids) jobs run as, from the sandbox uid (and gid) up: with
    /// more than 1, every jail, running or warm, has a uid of its own [default: 1].
    #[arg(long)]
    pub sandbox_ids: Option<u32>,
    /// Jails kept set up and waiting for a job; 0 turns the pool off [default: 2].
    #[arg(long)]
    pub warm_pool_size: Option<u32>,
    /// Fork jobs without network from a preloaded template (docs/fork-server.md)
    /// [default: true].
    #[arg(long)]
    pub fork_server: Option<bool>,
}

/// What to do instead of serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Check that this host can run jails as configured, with a fix for each failure;
    /// exits non-zero when a required check fails.
    Check,
}

/// The `--config` file. Unknown keys are an error that names them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    socket: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    #[serde(default)]
    allow_uids: Vec<u32>,
    socket_group: Option<u32>,
    python: Option<PathBuf>,
    max_jobs: Option<u32>,
    sandbox_user: Option<String>,
    sandbox_uid: Option<u32>,
    sandbox_gid: Option<u32>,
    sandbox_ids: Option<u32>,
    bwrap: Option<PathBuf>,
    warm_pool_size: Option<u32>,
    fork_server: Option<bool>,
    fork_preload: Option<Vec<String>>,
    fork_library: Option<PathBuf>,
    fork_template_max_age_ms: Option<u32>,
    max_queued_jobs: Option<u32>,
    queue_timeout_ms: Option<u32>,
    shutdown_grace_secs: Option<u32>,
    max_connections: Option<u32>,
    #[serde(default)]
    preload: Vec<String>,
    default_timeout_ms: Option<u32>,
    max_timeout_ms: Option<u32>,
    shm_bytes: Option<u64>,
    disk_inodes: Option<u32>,
    open_files: Option<u32>,
    stack_mb: Option<u32>,
    cpu_percent: Option<u32>,
    #[serde(default)]
    ro_binds: Vec<PathBuf>,
    max_files: Option<u32>,
    max_file_bytes: Option<u64>,
    max_files_bytes: Option<u64>,
    max_input_bytes: Option<u64>,
    max_displays: Option<u32>,
    max_display_bytes: Option<u64>,
    max_displays_bytes: Option<u64>,
    session_max: Option<u32>,
    session_memory_mb: Option<u64>,
    session_idle_timeout_ms: Option<u32>,
    session_max_idle_timeout_ms: Option<u32>,
    session_ended_keep_ms: Option<u32>,
    session_route: Option<String>,
    #[serde(default)]
    default_limits: PartialLimits,
    #[serde(default)]
    max_limits: PartialLimits,
    #[serde(default)]
    network: FileNetwork,
}

/// The `[network]` table. Without `allowed_domains`, no job gets any network.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNetwork {
    #[serde(default)]
    allowed_domains: Vec<String>,
    #[serde(default)]
    denied_domains: Vec<String>,
    allowed_ports: Option<Vec<u16>>,
    #[serde(default)]
    allow_private_cidrs: Vec<String>,
    /// `[network.resolve]`: names mapped to fixed addresses instead of DNS.
    #[serde(default)]
    resolve: BTreeMap<String, Addresses>,
    socat: Option<PathBuf>,
    connect_timeout_ms: Option<u32>,
    idle_timeout_ms: Option<u32>,
    connection_timeout_ms: Option<u32>,
    max_connections: Option<u32>,
    max_client_connections: Option<u32>,
    max_total_connections: Option<u32>,
    max_bytes: Option<u64>,
    ask_url: Option<String>,
    ask_timeout_ms: Option<u32>,
    ask_token: Option<String>,
    max_asks_per_job: Option<u32>,
}

/// One address or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Addresses {
    One(String),
    Many(Vec<String>),
}

impl FileNetwork {
    fn parse(self) -> Result<Network, Error> {
        let invalid = |key: &str, entry: &str, why: &dyn std::fmt::Display| {
            Error::Config(format!("network.{key}: {entry:?}: {why}"))
        };
        let patterns = |key: &str, entries: &[String]| {
            entries
                .iter()
                .map(|e| {
                    e.parse::<DomainPattern>()
                        .map_err(|why| invalid(key, e, &why))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let ask = self.ask()?;
        let allowed = patterns("allowed_domains", &self.allowed_domains)?;
        let denied = patterns("denied_domains", &self.denied_domains)?;
        let ports = self
            .allowed_ports
            .unwrap_or_else(|| DEFAULT_ALLOWED_PORTS.to_vec());
        if ports.is_empty() || ports.contains(&0) {
            return Err(Error::Config(
                "network.allowed_ports: must list ports from 1 to 65535, at least one".into(),
            ));
        }
        let private_ok = self
            .allow_private_cidrs
            .iter()
            .map(|c| {
                c.parse::<Cidr>()
                    .map_err(|why| invalid("allow_private_cidrs", c, &why))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut resolve = BTreeMap::new();
        for (name, addresses) in self.resolve {
            let key = format!("resolve.{name:?}");
            let name = match Host::parse(&name) {
                Ok(Host::Name(name)) => name,
                Ok(Host::Ip(_)) => {
                    return Err(invalid("resolve", &name, &"is an IP address, not a name"))
                }
                Err(why) => return Err(invalid("resolve", &name, &why)),
            };
            let addresses = match addresses {
                Addresses::One(one) => vec![one],
                Addresses::Many(many) => many,
            };
            if addresses.is_empty() {
                return Err(Error::Config(format!(
                    "network.{key}: must name at least one address"
                )));
            }
            let addresses = addresses
                .iter()
                .map(|a| {
                    a.parse::<IpAddr>()
                        .map(|ip| match ip {
                            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
                            v4 => v4,
                        })
                        .map_err(|_| {
                            Error::Config(format!("network.{key}: {a:?} is not an IP address"))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            resolve.insert(name, addresses);
        }
        let millis = |key: &str, value: Option<u32>, default: u32| match value.unwrap_or(default) {
            0 => Err(Error::Config(format!("network.{key}: must be at least 1"))),
            ms => Ok(Duration::from_millis(ms.into())),
        };
        let limits = ProxyLimits {
            connect_timeout: millis(
                "connect_timeout_ms",
                self.connect_timeout_ms,
                DEFAULT_CONNECT_TIMEOUT_MS,
            )?,
            idle_timeout: millis(
                "idle_timeout_ms",
                self.idle_timeout_ms,
                DEFAULT_IDLE_TIMEOUT_MS,
            )?,
            connection_timeout: millis(
                "connection_timeout_ms",
                self.connection_timeout_ms,
                DEFAULT_CONNECTION_TIMEOUT_MS,
            )?,
            max_connections: self.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
            max_client_connections: self
                .max_client_connections
                .unwrap_or(DEFAULT_MAX_CLIENT_CONNECTIONS),
            max_total_connections: self
                .max_total_connections
                .unwrap_or(DEFAULT_MAX_TOTAL_CONNECTIONS),
            max_bytes: self.max_bytes.unwrap_or(DEFAULT_MAX_BYTES),
        };
        let counts = [
            ("max_connections", limits.max_connections),
            ("max_client_connections", limits.max_client_connections),
            ("max_total_connections", limits.max_total_connections),
        ];
        if let Some((key, _)) = counts.iter().find(|(_, n)| *n == 0) {
            return Err(Error::Config(format!("network.{key}: must be at least 1")));
        }
        if limits.max_bytes == 0 {
            return Err(Error::Config(
                "network.max_bytes: must be at least 1".into(),
            ));
        }
        let policy = Policy::new(allowed, denied, ports, private_ok, resolve);
        Ok(Network {
            policy: match ask {
                Some(ask) => policy.with_ask(Asker::new(ask)),
                None => policy,
            },
            limits,
            socat: self.socat.unwrap_or(DEFAULT_SOCAT.into()),
        })
    }
}

impl FileNetwork {
    /// The ask callback's keys: none without `ask_url`.
    fn ask(&self) -> Result<Option<AskSettings>, Error> {
        let Some(url) = &self.ask_url else {
            let stray = [
                ("ask_timeout_ms", self.ask_timeout_ms.is_some()),
                ("ask_token", self.ask_token.is_some()),
                ("max_asks_per_job", self.max_asks_per_job.is_some()),
            ];
            return match stray.iter().find(|(_, set)| *set) {
                Some((key, _)) => Err(Error::Config(format!(
                    "network.{key}: has no effect without network.ask_url"
                ))),
                None => Ok(None),
            };
        };
        let bad = |key: &str, why: &str| Err(Error::Config(format!("network.{key}: {why}")));
        // The frontend parses it again to call it; a URL it cannot call is refused
        // here, at start, rather than at every question.
        let max = MAX_ASK_TEXT;
        match url::Url::parse(url) {
            Ok(parsed) if !matches!(parsed.scheme(), "http" | "https") => {
                return bad("ask_url", "must be an http:// or https:// URL")
            }
            Ok(parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
                return bad("ask_url", "must not hold credentials; use ask_token")
            }
            Ok(parsed) if parsed.host().is_none() => return bad("ask_url", "must name a host"),
            Ok(_) if url.len() > max => {
                return bad("ask_url", &format!("must be at most {max} bytes"))
            }
            Ok(_) => {}
            Err(e) => return bad("ask_url", &format!("is not a URL: {e}")),
        }
        if let Some(token) = &self.ask_token {
            // It goes into a header as it is.
            if token.is_empty() || token.len() > max || !token.bytes().all(|b| b.is_ascii_graphic())
            {
                return bad(
                    "ask_token",
                    &format!("must be 1 to {max} printable ASCII characters without spaces"),
                );
            }
        }
        let timeout_ms = self.ask_timeout_ms.unwrap_or(DEFAULT_ASK_TIMEOUT_MS);
        if !(1..=MAX_ASK_TIMEOUT_MS).contains(&timeout_ms) {
            return bad(
                "ask_timeout_ms",
                &format!("must be from 1 to {MAX_ASK_TIMEOUT_MS}"),
            );
        }
        let max_per_job = self.max_asks_per_job.unwrap_or(DEFAULT_MAX_ASKS_PER_JOB);
        if !(1..=MAX_ASKS_PER_JOB).contains(&max_per_job) {
            return bad(
                "max_asks_per_job",
                &format!("must be from 1 to {MAX_ASKS_PER_JOB}"),
            );
        }
        Ok(Some(AskSettings {
            url: url.clone(),
            token: self.ask_token.clone(),
            timeout: Duration::from_millis(timeout_ms.into()),
            max_per_job,
        }))
    }
}

/// A `[default_limits]` or `[max_limits]` table: any key may be left out.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartialLimits {
    memory_mb: Option<u32>,
    cpu_ms: Option<u32>,
    max_processes: Option<u32>,
    disk_mb: Option<u32>,
    output_bytes: Option<u32>,
}

impl PartialLimits {
    fn or(self, base: Limits) -> Limits {
        Limits {
            memory_mb: self.memory_mb.unwrap_or(base.memory_mb),
            cpu_ms: self.cpu_ms.unwrap_or(base.cpu_ms),
            max_processes: self.max_processes.unwrap_or(base.max_processes),
            disk_mb: self.disk_mb.unwrap_or(base.disk_mb),
            output_bytes: self.output_bytes.unwrap_or(base.output_bytes),
        }
    }
}

/// One value for each limit a request may lower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_mb: u32,
    pub cpu_ms: u32,
    pub max_processes: u32,
    pub disk_mb: u32,
    pub output_bytes: u32,
}

impl Limits {
    /// `(API field, value)` pairs, for checks and messages.
    pub fn fields(&self) -> [(&'static str, u32); 5] {
        [
            ("memoryMb", self.memory_mb),
            ("cpuMs", self.cpu_ms),
            ("maxProcesses", self.max_processes),
            ("diskMb", self.disk_mb),
            ("outputBytes", self.output_bytes),
        ]
    }
}

/// Network access for jobs, through the egress proxy.
#[derive(Debug, Clone)]
pub struct Network {
    /// What jobs may reach at most; a job that asks for nothing gets no network.
    pub policy: Policy,
    /// Bounds on one job's use of the proxy.
    pub limits: ProxyLimits,
    /// socat, run in the jail to relay 127.0.0.1:3128 to the proxy's socket.
    pub socat: PathBuf,
}

/// How many sessions may be open, how long they live, and how their ids route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSettings {
    /// Sessions open at once.
    pub max: u32,
    /// The memory limits of all open sessions together, in MiB.
    pub memory_mb: u64,
    /// Idle timeout of a session that names none.
    pub idle_timeout_ms: u32,
    /// The longest idle timeout a session may ask for.
    pub max_idle_timeout_ms: u32,
    /// How long an ended session's id answers "ended" before it is forgotten.
    pub ended_keep_ms: u32,
    /// The first part of every session id: names this executor to a load balancer
    /// that routes each session's requests to the instance that holds it.
    pub route: String,
}

/// The checked configuration the executor runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// Uids allowed to connect besides root and our own.
    pub allow_uids: Vec<u32>,
    pub socket_group: Option<u32>,
    pub python: PathBuf,
    /// The bubblewrap binary. Jobs fail (closed) when it cannot set up a jail.
    pub bwrap: PathBuf,
    pub max_jobs: u32,
    /// The first host uid and gid jobs run as (and the ids they have in the jail).
    pub sandbox_uid: u32,
    pub sandbox_gid: u32,
    /// How many consecutive uids and gids, from those, jails take one each of.
    pub sandbox_ids: u32,
    /// Wall-clock limit of a job that names none.
    pub default_timeout_ms: u32,
    /// The largest wall-clock limit a job may ask for.
    pub max_timeout_ms: u32,
    /// Limits of a job that names none.
    pub default_limits: Limits,
    /// The most a job may ask for.
    pub max_limits: Limits,
    /// Size of each job's `/dev/shm`.
    pub shm_bytes: u64,
    /// Files and directories a job may create in its work dir and `/tmp` together.
    pub disk_inodes: u32,
    /// RLIMIT_NOFILE of every job process.
    pub open_files: u32,
    /// RLIMIT_STACK of every job process, in MiB.
    pub stack_mb: u32,
    /// CPU bandwidth of one job in percent of a CPU; 0 leaves it unlimited.
    pub cpu_percent: u32,
    /// Jails kept set up and waiting for a job (0: every job starts its own).
    pub warm_pool_size: u32,
    /// Whether jobs without network are forked from a preloaded template.
    pub fork_server: bool,
    /// Modules the template imports.
    pub fork_preload: Vec<String>,
    /// The library a template's children call to build their jail.
    pub fork_library: PathBuf,
    /// How long a template serves before it is replaced by a fresh one.
    pub fork_template_max_age: Duration,
    /// Jobs that may wait for a slot; more are answered "busy" at once.
    pub max_queued_jobs: u32,
    /// How long a job may wait for a slot before it is answered "busy".
    pub queue_timeout: Duration,
    /// How long running jobs may go on after SIGTERM before they are killed.
    pub shutdown_grace: Duration,
    /// Frontend connections served at once.
    pub max_connections: u32,
    /// Modules a warm jail's Python imports before it waits for its job.
    pub preload: Vec<String>,
    /// Extra host paths bound read-only at the same place in every jail (a venv, say).
    pub ro_binds: Vec<PathBuf>,
    /// How much of a job's work dir is collected when the job asks for its files.
    pub collect: Caps,
    /// Bytes of input files one job may be given, all together.
    pub max_input_bytes: u64,
    /// How many and how large the figures a job shows may be.
    pub displays: DisplayCaps,
    /// The `session_*` keys.
    pub sessions: SessionSettings,
    /// The `[network]` table.
    pub network: Network,
}

/// Where the fork server's library is when the configuration does not say: beside
/// the executor binary (a build's target dir), else where the install steps put it
/// (`<prefix>/lib/pysandbox/` for a binary in `<prefix>/bin/`).
fn default_fork_library() -> Result<PathBuf, Error> {
    let exe = std::env::current_exe().map_err(Error::setup("locate", "/proc/self/exe"))?;
    let beside = exe.with_file_name(FORK_LIBRARY_NAME);
    let installed = exe
        .parent()
        .and_then(Path::parent)
        .map(|prefix| prefix.join("lib/pysandbox").join(FORK_LIBRARY_NAME));
    Ok([Some(beside.clone()), installed]
        .into_iter()
        .flatten()
        .find(|path| path.exists())
        .unwrap_or(beside))
}

/// The host name as a routing key: lower case, characters other than letters,
/// digits and `-` dropped, at most 63 of them; `pysandbox` when nothing is left.
fn default_route() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let key: String = host
        .trim()
        .to_ascii_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(63)
        .collect();
    if key.is_empty() {
        "pysandbox".into()
    } else {
        key
    }
}

impl Config {
    /// Merges flags over the file named by `--config` over defaults, and checks the result.
    pub fn load(cli: Cli) -> Result<Config, Error> {
        let file = match &cli.config {
            Some(path) => read_with_drop_ins(path)?,
            None => FileConfig::default(),
        };
        let mut allow_uids = file.allow_uids;
        allow_uids.extend(cli.allow_uids);
        let (sandbox_uid, sandbox_gid) = sandbox_ids(
            cli.sandbox_user.or(file.sandbox_user),
            cli.sandbox_uid.or(file.sandbox_uid),
            cli.sandbox_gid.or(file.sandbox_gid),
        )?;
        let config = Config {
            socket: cli.socket.or(file.socket).unwrap_or(DEFAULT_SOCKET.into()),
            state_dir: cli
                .state_dir
                .or(file.state_dir)
                .unwrap_or(DEFAULT_STATE_DIR.into()),
            allow_uids,
            socket_group: cli.socket_group.or(file.socket_group),
            python: cli.python.or(file.python).unwrap_or(DEFAULT_PYTHON.into()),
            bwrap: file.bwrap.unwrap_or(DEFAULT_BWRAP.into()),
            max_jobs: cli.max_jobs.or(file.max_jobs).unwrap_or_else(cpu_count),
            sandbox_uid,
            sandbox_gid,
            sandbox_ids: cli.sandbox_ids.or(file.sandbox_ids).unwrap_or(1),
            default_timeout_ms: file.default_timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS),
            max_timeout_ms: file
                .max_timeout_ms
                .unwrap_or(pysandbox_shared::MAX_TIMEOUT_MS),
            default_limits: file.default_limits.or(DEFAULT_LIMITS),
            max_limits: file.max_limits.or(MAX_LIMITS),
            shm_bytes: file.shm_bytes.unwrap_or(DEFAULT_SHM_BYTES),
            disk_inodes: file.disk_inodes.unwrap_or(DEFAULT_DISK_INODES),
            open_files: file.open_files.unwrap_or(DEFAULT_OPEN_FILES),
            stack_mb: file.stack_mb.unwrap_or(DEFAULT_STACK_MB),
            cpu_percent: file.cpu_percent.unwrap_or(DEFAULT_CPU_PERCENT),
            warm_pool_size: cli
                .warm_pool_size
                .or(file.warm_pool_size)
                .unwrap_or(DEFAULT_WARM_POOL_SIZE),
            fork_server: cli.fork_server.or(file.fork_server).unwrap_or(true),
            fork_preload: file
                .fork_preload
                .unwrap_or_else(|| DEFAULT_FORK_PRELOAD.iter().map(|m| m.to_string()).collect()),
            fork_library: match file.fork_library {
                Some(path) => path,
                None => default_fork_library()?,
            },
            fork_template_max_age: Duration::from_millis(
                file.fork_template_max_age_ms
                    .unwrap_or(DEFAULT_FORK_TEMPLATE_MAX_AGE_MS)
                    .into(),
            ),
            max_queued_jobs: file.max_queued_jobs.unwrap_or(DEFAULT_MAX_QUEUED_JOBS),
            queue_timeout: Duration::from_millis(
                file.queue_timeout_ms
                    .unwrap_or(DEFAULT_QUEUE_TIMEOUT_MS)
                    .into(),
            ),
            shutdown_grace: Duration::from_secs(
                file.shutdown_grace_secs
                    .unwrap_or(DEFAULT_SHUTDOWN_GRACE_SECS)
                    .into(),
            ),
            max_connections: file.max_connections.unwrap_or(DEFAULT_MAX_PEER_CONNECTIONS),
            preload: file.preload,
            ro_binds: file.ro_binds,
            collect: Caps {
                max_files: file.max_files.unwrap_or(DEFAULT_COLLECT.max_files),
                max_file_bytes: file
                    .max_file_bytes
                    .unwrap_or(DEFAULT_COLLECT.max_file_bytes),
                max_total_bytes: file
                    .max_files_bytes
                    .unwrap_or(DEFAULT_COLLECT.max_total_bytes),
            },
            max_input_bytes: file.max_input_bytes.unwrap_or(MAX_INPUT_BYTES),
            displays: DisplayCaps {
                max_count: file.max_displays.unwrap_or(DEFAULT_DISPLAYS.max_count),
                max_bytes: file.max_display_bytes.unwrap_or(DEFAULT_DISPLAYS.max_bytes),
                max_total_bytes: file
                    .max_displays_bytes
                    .unwrap_or(DEFAULT_DISPLAYS.max_total_bytes),
            },
            sessions: SessionSettings {
                max: file.session_max.unwrap_or(DEFAULT_SESSION_MAX),
                memory_mb: file.session_memory_mb.unwrap_or(DEFAULT_SESSION_MEMORY_MB),
                idle_timeout_ms: file
                    .session_idle_timeout_ms
                    .unwrap_or(DEFAULT_SESSION_IDLE_TIMEOUT_MS),
                max_idle_timeout_ms: file
                    .session_max_idle_timeout_ms
                    .unwrap_or(DEFAULT_SESSION_MAX_IDLE_TIMEOUT_MS),
                ended_keep_ms: file
                    .session_ended_keep_ms
                    .unwrap_or(DEFAULT_SESSION_ENDED_KEEP_MS),
                route: match file.session_route {
                    Some(route) => route,
                    None => default_route(),
                },
            },
            network: file.network.parse()?,
        };
        config.check(nix::unistd::getuid().as_raw())?;
        Ok(config)
    }

    fn check(&self, own_uid: u32) -> Result<(), Error> {
        let invalid = |reason: String| Err(Error::Config(reason));
        for (key, path) in [
            ("socket", &self.socket),
            ("state_dir", &self.state_dir),
            ("python", &self.python),
            ("bwrap", &self.bwrap),
            ("fork_library", &self.fork_library),
        ] {
            if !path.is_absolute() {
                return invalid(format!("{key}: must be an absolute path, got {path:?}"));
            }
        }
        if let Some(bind) = self.ro_binds.iter().find(|p| !p.is_absolute()) {
            return invalid(format!("ro_binds: must be absolute paths, got {bind:?}"));
        }
        if self.max_jobs == 0 {
            return invalid("max_jobs: must be at least 1".into());
        }
        // Every jail running or waiting in the pool holds one id of the range.
        let jails = self.max_jobs.saturating_add(self.warm_pool_size);
        if self.sandbox_ids != 1 && self.sandbox_ids < jails {
            return invalid(format!(
                "sandbox_ids: must be 1 (one uid for all jobs) or at least max_jobs + \
                 warm_pool_size ({jails}), so that every jail has a uid of its own"
            ));
        }
        let (Some(uids), Some(gids)) = (
            id_range(self.sandbox_uid, self.sandbox_ids),
            id_range(self.sandbox_gid, self.sandbox_ids),
        ) else {
            return invalid("sandbox_ids: the uid or gid range runs past 4294967294".into());
        };
        // Sharing a uid with a daemon would let a job signal or ptrace it, or read its files.
        if uids.contains(&0) || uids.contains(&own_uid) {
            return invalid(format!(
                "sandbox_uid: {:?} includes root or the executor's own uid",
                uids
            ));
        }
        if let Some(peer) = self.allow_uids.iter().find(|u| uids.contains(u)) {
            return invalid(format!(
                "sandbox_uid: {peer} is also an allowed peer uid (the frontend's?)"
            ));
        }
        if gids.contains(&0) {
            return invalid("sandbox_gid: must not be root's group".into());
        }
        let max = pysandbox_shared::MAX_TIMEOUT_MS;
        if !(1..=max).contains(&self.max_timeout_ms) {
            return invalid(format!("max_timeout_ms: must be from 1 to {max}"));
        }
        if !(1..=self.max_timeout_ms).contains(&self.default_timeout_ms) {
            return invalid("default_timeout_ms: must be from 1 to max_timeout_ms".into());
        }
        // Both captures and the collected files travel in one frame, which is
        // sized for these maxima.
        let max_output = pysandbox_shared::MAX_OUTPUT_BYTES;
        if self.max_limits.output_bytes > max_output {
            return invalid(format!(
                "max_limits.output_bytes: must be at most {max_output}"
            ));
        }
        let Caps {
            max_files,
            max_file_bytes,
            max_total_bytes,
        } = self.collect;
        if !(1..=MAX_FILES).contains(&max_files) {
            return invalid(format!("max_files: must be from 1 to {MAX_FILES}"));
        }
        if !(1..=MAX_FILES_BYTES).contains(&max_total_bytes) {
            return invalid(format!(
                "max_files_bytes: must be from 1 to {MAX_FILES_BYTES}"
            ));
        }
        if !(1..=max_total_bytes).contains(&max_file_bytes) {
            return invalid("max_file_bytes: must be from 1 to max_files_bytes".into());
        }
        let DisplayCaps {
            max_count,
            max_bytes,
            max_total_bytes,
        } = self.displays;
        if max_count as usize > MAX_DISPLAYS {
            return invalid(format!("max_displays: must be at most {MAX_DISPLAYS}"));
        }
        if !(1..=MAX_DISPLAYS_BYTES).contains(&max_total_bytes) {
            return invalid(format!(
                "max_displays_bytes: must be from 1 to {MAX_DISPLAYS_BYTES}"
            ));
        }
        if !(1..=max_total_bytes).contains(&max_bytes) {
            return invalid("max_display_bytes: must be from 1 to max_displays_bytes".into());
        }
        if self.max_input_bytes > MAX_INPUT_BYTES {
            return invalid(format!(
                "max_input_bytes: must be at most {MAX_INPUT_BYTES}"
            ));
        }
        let limits = self.default_limits.fields().into_iter();
        let bounds = MIN_LIMITS
            .fields()
            .into_iter()
            .zip(self.max_limits.fields());
        for ((name, default), ((_, min), (_, max))) in limits.zip(bounds) {
            if !(min..=max).contains(&default) {
                return invalid(format!(
                    "default_limits: {name} must be from {min} to its max_limits value {max}"
                ));
            }
        }
        // A module name becomes an argument of the jail's Python: dotted identifiers only.
        let valid_module = |m: &String| {
            !m.is_empty()
                && m.split('.').all(|part| {
                    part.chars()
                        .next()
                        .is_some_and(|c| c.is_alphabetic() || c == '_')
                        && part.chars().all(|c| c.is_alphanumeric() || c == '_')
                })
        };
        if let Some(bad) = self.preload.iter().find(|m| !valid_module(m)) {
            return invalid(format!("preload: {bad:?} is not a module name"));
        }
        if let Some(bad) = self.fork_preload.iter().find(|m| !valid_module(m)) {
            return invalid(format!("fork_preload: {bad:?} is not a module name"));
        }
        if self.warm_pool_size > 64 {
            return invalid("warm_pool_size: must be at most 64".into());
        }
        let sessions = &self.sessions;
        let route_ok = (1..=63).contains(&sessions.route.len())
            && sessions
                .route
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !route_ok {
            return invalid("session_route: must be 1 to 63 of a-z, 0-9 and -".into());
        }
        if sessions.max_idle_timeout_ms < 1000
            || !(1000..=sessions.max_idle_timeout_ms).contains(&sessions.idle_timeout_ms)
        {
            return invalid(
                "session_idle_timeout_ms: must be from 1000 to session_max_idle_timeout_ms".into(),
            );
        }
        if self.fork_template_max_age < Duration::from_secs(1) {
            return invalid("fork_template_max_age_ms: must be at least 1000".into());
        }
        if self.max_queued_jobs > 4096 {
            return invalid("max_queued_jobs: must be at most 4096".into());
        }
        let max_wait = Duration::from_millis(MAX_QUEUE_TIMEOUT_MS.into());
        if self.queue_timeout.is_zero() || self.queue_timeout > max_wait {
            return invalid(format!(
                "queue_timeout_ms: must be from 1 to {MAX_QUEUE_TIMEOUT_MS}"
            ));
        }
        if self.shutdown_grace > Duration::from_secs(3600) {
            return invalid("shutdown_grace_secs: must be at most 3600".into());
        }
        if !(1..=65_536).contains(&self.max_connections) {
            return invalid("max_connections: must be from 1 to 65536".into());
        }
        if self.disk_inodes == 0 || self.open_files < 16 || self.stack_mb == 0 {
            return invalid(
                "disk_inodes, open_files (at least 16) and stack_mb must be positive".into(),
            );
        }
        if !self.is_in_jail(&self.python) {
            return invalid(format!(
                "python: {:?} is outside /usr and every ro_binds entry, so jails could not run it",
                self.python
            ));
        }
        let socat = &self.network.socat;
        if self.network.policy.allows_anything() && !(socat.is_absolute() && self.is_in_jail(socat))
        {
            return invalid(format!(
                "network.socat: {socat:?} must be an absolute path under /usr or an ro_binds entry, \
                 so jails could run it"
            ));
        }
        Ok(())
    }

    /// Whether `path` is bound into every jail.
    fn is_in_jail(&self, path: &Path) -> bool {
        std::iter::once(Path::new("/usr"))
            .chain(self.ro_binds.iter().map(PathBuf::as_path))
            .any(|root| path.starts_with(root))
    }
}

/// The first host uid and gid of jobs: `uid` as given, else `user`'s (by default
/// [`DEFAULT_SANDBOX_USER`]), looked up now so that a missing user stops the start
/// with the fix rather than failing every job.
fn sandbox_ids(
    user: Option<String>,
    uid: Option<u32>,
    gid: Option<u32>,
) -> Result<(u32, u32), Error> {
    let (uid, user_gid) = match (uid, user) {
        (Some(uid), None) => (uid, uid),
        (Some(_), Some(_)) => {
            return Err(Error::Config(
                "sandbox_user and sandbox_uid: set one of them, not both".into(),
            ))
        }
        (None, user) => {
            let name = user.unwrap_or_else(|| DEFAULT_SANDBOX_USER.into());
            let found = nix::unistd::User::from_name(&name).map_err(|e| {
                Error::Config(format!("sandbox_user: cannot look up {name:?}: {e}"))
            })?;
            let user = found.ok_or_else(|| {
                Error::Config(format!(
                    "sandbox_user: no user {name:?} on this host; create it \
                     (`useradd --system --no-create-home --shell /usr/sbin/nologin {name}`, \
                     or systemd-sysusers with systemd/pysandbox.sysusers), or set sandbox_uid"
                ))
            })?;
            (user.uid.as_raw(), user.gid.as_raw())
        }
    };
    Ok((uid, gid.unwrap_or(user_gid)))
}

/// `count` ids from `first`, unless that runs past the largest valid id.
fn id_range(first: u32, count: u32) -> Option<std::ops::RangeInclusive<u32>> {
    let last = first.checked_add(count.checked_sub(1)?)?;
    (last < u32::MAX).then_some(first..=last)
}

/// Reads the `--config` file, then every `*.toml` file of the directory named like it
/// plus `.d` (`/etc/pysandbox/executor.toml.d/`), in name order. Each drop-in is a TOML
/// document of its own, so a key an installer adds there is always top-level (issue
/// 11: `echo allow_uids = … >>` the main file landed in its last table). A key replaces
/// the same key of an earlier file; tables merge key by key.
fn read_with_drop_ins(path: &Path) -> Result<FileConfig, Error> {
    let mut merged = read_table(path)?;
    for drop_in in drop_ins(path)? {
        merge(&mut merged, read_table(&drop_in)?);
    }
    merged
        .try_into()
        .map_err(|e| Error::Config(format!("{}: {}", path.display(), e.message())))
}

/// The drop-ins of `path`, sorted; none when the directory does not exist.
fn drop_ins(path: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut dir = path.as_os_str().to_owned();
    dir.push(".d");
    let dir = PathBuf::from(dir);
    let read_error = |source| Error::ConfigRead {
        path: dir.clone(),
        source,
    };
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read_error(e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let file = entry.map_err(read_error)?.path();
        // Only `*.toml`, so an editor's backup or a package manager's `.dpkg-old` is ignored.
        if file.extension().is_some_and(|ext| ext == "toml") {
            files.push(file);
        }
    }
    files.sort();
    Ok(files)
}

/// One file as a TOML table, checked against the schema on its own so that an unknown
/// key is reported with the file it is in.
fn read_table(path: &Path) -> Result<toml::Table, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigRead {
        path: path.to_owned(),
        source,
    })?;
    let named = |e: toml::de::Error| Error::Config(format!("{}: {}", path.display(), e.message()));
    let table: toml::Table = toml::from_str(&text).map_err(named)?;
    table.clone().try_into::<FileConfig>().map_err(named)?;
    Ok(table)
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(old)), toml::Value::Table(new)) => merge(old, new),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

fn cpu_count() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Config from flags; jobs run as `daemon` (uid 1, on every Debian host) unless
    /// `args` name the sandbox ids.
    fn load(args: &[&str]) -> Result<Config, Error> {
        let user = ["--sandbox-user", "daemon"];
        let names_ids = args.iter().any(|a| a.starts_with("--sandbox-u"));
        let user = user.iter().filter(|_| !names_ids);
        let argv = std::iter::once(&"pysandbox-executor")
            .chain(user)
            .chain(args);
        Config::load(Cli::parse_from(argv))
    }

    fn load_file(toml: &str) -> Result<Config, Error> {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), toml).unwrap();
        load(&["--config", file.path().to_str().unwrap()])
    }

    #[test]
    fn file_caps_may_be_lowered() {
        let config = load_file(
            "max_files = 5\nmax_file_bytes = 10\nmax_files_bytes = 20\nmax_input_bytes = 0",
        )
        .unwrap();
        assert_eq!(
            config.collect,
            Caps {
                max_files: 5,
                max_file_bytes: 10,
                max_total_bytes: 20,
            }
        );
        assert_eq!(config.max_input_bytes, 0);
    }

    #[test]
    fn limit_tables_override_defaults_key_by_key() {
        let config =
            load_file("[default_limits]\nmemory_mb = 128\n[max_limits]\ncpu_ms = 100000").unwrap();
        assert_eq!(config.default_limits.memory_mb, 128);
        assert_eq!(config.max_limits.cpu_ms, 100_000);
        assert_eq!(config.default_limits.disk_mb, DEFAULT_LIMITS.disk_mb);
        assert!(
            load_file("[max_limits]\ncpu_ms = 1000").is_err(),
            "default cpu_ms 60000 > max"
        );
    }

    #[test]
    fn display_caps() {
        let config =
            load_file("max_displays = 3\nmax_display_bytes = 10\nmax_displays_bytes = 20").unwrap();
        assert_eq!(
            config.displays,
            DisplayCaps {
                max_count: 3,
                max_bytes: 10,
                max_total_bytes: 20
            }
        );
        assert_eq!(load(&[]).unwrap().displays, DEFAULT_DISPLAYS);
        assert!(load_file("max_displays = 101").is_err());
        assert!(load_file("max_display_bytes = 30\nmax_displays_bytes = 20").is_err());
        assert!(load_file("max_displays_bytes = 67108865").is_err());
    }

    #[test]
    fn session_settings() {
        let config = load_file(
            "session_max = 3\nsession_memory_mb = 1024\nsession_idle_timeout_ms = 5000\n\
             session_max_idle_timeout_ms = 60000\nsession_ended_keep_ms = 100\n\
             session_route = \"pod-7\"",
        )
        .unwrap();
        assert_eq!(
            config.sessions,
            SessionSettings {
                max: 3,
                memory_mb: 1024,
                idle_timeout_ms: 5000,
                max_idle_timeout_ms: 60000,
                ended_keep_ms: 100,
                route: "pod-7".into(),
            }
        );
        let defaults = load(&[]).unwrap().sessions;
        assert_eq!((defaults.max, defaults.idle_timeout_ms), (16, 600_000));
        assert!(!defaults.route.is_empty());
        for bad in [
            "session_route = \"Pod_7\"",
            "session_route = \"\"",
            "session_route = \"a.b\"",
            "session_idle_timeout_ms = 999",
            "session_idle_timeout_ms = 7200000",
        ] {
            assert!(load_file(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn templates_are_replaced_hourly_unless_configured() {
        assert_eq!(
            load(&[]).unwrap().fork_template_max_age,
            Duration::from_secs(3600)
        );
        let config = load_file("fork_template_max_age_ms = 1000").unwrap();
        assert_eq!(config.fork_template_max_age, Duration::from_secs(1));
        assert!(load_file("fork_template_max_age_ms = 999").is_err());
    }

    #[test]
    fn queue_shutdown_and_connection_settings() {
        let config = load_file(
            "max_queued_jobs = 3\nqueue_timeout_ms = 500\nshutdown_grace_secs = 7\n\
             max_connections = 9",
        )
        .unwrap();
        assert_eq!(config.max_queued_jobs, 3);
        assert_eq!(config.queue_timeout, Duration::from_millis(500));
        assert_eq!(config.shutdown_grace, Duration::from_secs(7));
        assert_eq!(config.max_connections, 9);
        let defaults = load(&[]).unwrap();
        assert_eq!(
            (
                defaults.max_queued_jobs,
                defaults.queue_timeout,
                defaults.shutdown_grace
            ),
            (16, Duration::from_secs(30), Duration::from_secs(20))
        );
        assert!(load_file("queue_timeout_ms = 0").is_err());
        assert!(load_file("queue_timeout_ms = 120001").is_err());
        assert!(load_file("max_connections = 0").is_err());
    }

    #[test]
    fn warm_pool_settings() {
        let config =
            load_file("warm_pool_size = 3\npreload = [\"numpy\", \"matplotlib.pyplot\"]").unwrap();
        assert_eq!((config.warm_pool_size, config.preload.len()), (3, 2));
        assert_eq!(load(&["--warm-pool-size", "0"]).unwrap().warm_pool_size, 0);
        assert!(load_file("preload = [\"os; import x\"]").is_err());
        assert!(load_file("preload = [\"-m\"]").is_err());
        assert!(load_file("warm_pool_size = 65").is_err());
    }

    #[test]
    fn defaults() {
        let config = load(&[]).unwrap();
        assert_eq!(config.socket, Path::new(DEFAULT_SOCKET));
        assert_eq!((config.sandbox_uid, config.sandbox_ids), (1, 1));
        assert_eq!(config.default_timeout_ms, 30_000);
        assert!(config.max_jobs >= 1);
        assert_eq!(
            config.collect,
            Caps {
                max_files: 100,
                max_file_bytes: 32 << 20,
                max_total_bytes: 64 << 20,
            }
        );
        assert_eq!(config.max_input_bytes, 32 << 20);
    }

    #[test]
    fn flags_win_over_the_file_and_uids_add_up() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            file.path(),
            "max_jobs = 3\nallow_uids = [7]\nsocket = \"/a\"",
        )
        .unwrap();
        let path = file.path().to_str().unwrap();
        let config = load(&["--config", path, "--socket", "/b", "--allow-uid", "8"]).unwrap();
        assert_eq!(config.socket, Path::new("/b"));
        assert_eq!(config.max_jobs, 3);
        assert_eq!(config.allow_uids, [7, 8]);
    }

    /// A config file and its drop-in directory, as an installer lays them out.
    fn with_drop_ins(main: &str, drop_ins: &[(&str, &str)]) -> Result<Config, Error> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("executor.toml");
        std::fs::write(&path, main).unwrap();
        std::fs::create_dir(dir.path().join("executor.toml.d")).unwrap();
        for (name, text) in drop_ins {
            std::fs::write(dir.path().join("executor.toml.d").join(name), text).unwrap();
        }
        load(&["--config", path.to_str().unwrap()])
    }

    #[test]
    fn a_drop_in_key_is_top_level_even_after_the_examples_last_table() {
        // Issue 11: appended to the example, this line became `max_limits.allow_uids`.
        let example = include_str!("../../systemd/executor.toml.example");
        assert!(load_file(&format!("{example}allow_uids = [998]\n")).is_err());
        let config = with_drop_ins(example, &[("frontend.toml", "allow_uids = [998]\n")]).unwrap();
        assert_eq!(config.allow_uids, [998]);
        assert_eq!(
            config.max_limits.memory_mb, 4096,
            "the example's table is kept"
        );
    }

    #[test]
    fn drop_ins_apply_in_name_order_and_tables_merge_key_by_key() {
        let config = with_drop_ins(
            "max_jobs = 1\n[default_limits]\nmemory_mb = 100\ndisk_mb = 50",
            &[
                (
                    "20-b.toml",
                    "max_jobs = 3\n[default_limits]\nmemory_mb = 300",
                ),
                ("10-a.toml", "max_jobs = 2\nsandbox_gid = 4242"),
                ("30-c.toml.dpkg-old", "max_jobs = 9"),
            ],
        )
        .unwrap();
        assert_eq!(config.max_jobs, 3);
        assert_eq!(config.sandbox_gid, 4242);
        assert_eq!(config.default_limits.memory_mb, 300);
        assert_eq!(config.default_limits.disk_mb, 50);
    }

    #[test]
    fn an_unknown_key_in_a_drop_in_is_named_with_its_file() {
        let err = with_drop_ins("", &[("x.toml", "[max_limits]\nallow_uids = [1]")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("x.toml") && err.contains("allow_uids"),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load_file("sokcet = \"/x\"").unwrap_err().to_string();
        assert!(err.contains("sokcet"), "{err}");
    }

    #[test]
    fn the_sandbox_user_is_looked_up_by_name_and_must_exist() {
        let config = load(&["--sandbox-user", "daemon"]).unwrap();
        assert_eq!((config.sandbox_uid, config.sandbox_gid), (1, 1));
        let config = load(&["--sandbox-uid", "5000"]).unwrap();
        assert_eq!((config.sandbox_uid, config.sandbox_gid), (5000, 5000));
        let err = load(&["--sandbox-user", "no-such-user-here"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: sandbox_user: no user \"no-such-user-here\" on this host; \
             create it (`useradd --system --no-create-home --shell /usr/sbin/nologin \
             no-such-user-here`, or systemd-sysusers with systemd/pysandbox.sysusers), or set \
             sandbox_uid"
        );
    }

    #[test]
    fn a_sandbox_id_range_holds_every_jail_and_no_daemon() {
        let ids = |extra: &[&str]| {
            let mut args = vec!["--sandbox-uid", "70000", "--max-jobs", "4"];
            args.extend(extra);
            load(&args).map(|c| c.sandbox_ids)
        };
        assert_eq!(ids(&["--sandbox-ids", "6"]).unwrap(), 6);
        assert!(
            ids(&["--sandbox-ids", "5"]).is_err(),
            "4 jobs + 2 warm jails"
        );
        assert!(ids(&["--sandbox-ids", "0"]).is_err());
        let err = ids(&["--sandbox-ids", "64", "--allow-uid", "70063"]).unwrap_err();
        assert!(
            err.to_string().contains("70063 is also an allowed peer"),
            "{err}"
        );
        let max = load(&["--sandbox-uid", "4294967290", "--sandbox-ids", "64"]);
        assert!(max.is_err());
    }

    #[test]
    fn sandbox_uid_must_not_be_a_daemon() {
        let err = load(&["--sandbox-uid", "0"]).unwrap_err().to_string();
        assert!(err.contains("sandbox_uid"), "{err}");
        let err = load(&["--allow-uid", "1000", "--sandbox-uid", "1000"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("allowed peer uid"), "{err}");
    }

    #[test]
    fn python_must_be_inside_the_jail() {
        let err = load(&["--python", "/opt/py/bin/python3"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("outside /usr"), "{err}");
        load_file("python = \"/opt/py/bin/python3\"\nro_binds = [\"/opt/py\"]").unwrap();
    }

    #[test]
    fn network_table() {
        let config = load(&[]).unwrap();
        assert!(
            !config.network.policy.allows_anything(),
            "no network by default"
        );
        let config = load_file(
            "[network]\nallowed_domains = [\"Example.com\", \"*.wild.test\", \"192.0.2.7\"]\n\
             denied_domains = [\"bad.wild.test\"]\nallowed_ports = [443, 8080]\n\
             allow_private_cidrs = [\"127.0.0.0/8\", \"fd00::/8\"]\nidle_timeout_ms = 500\n\
             [network.resolve]\n\"a.wild.test\" = \"127.0.0.1\"\n\"b.wild.test\" = [\"127.0.0.2\", \"fd00::1\"]\n",
        )
        .unwrap();
        let network = &config.network;
        assert!(network.policy.allows_anything());
        assert_eq!(network.limits.idle_timeout, Duration::from_millis(500));
        assert_eq!(network.limits.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(network.socat, Path::new(DEFAULT_SOCAT));
        let target = |t| crate::proxy::target::Target::parse_authority(t, None).unwrap();
        assert!(network
            .policy
            .check_target(&target("example.com:443"))
            .is_ok());
        assert!(network
            .policy
            .check_target(&target("example.com:80"))
            .is_err());
        assert!(network
            .policy
            .check_target(&target("b.wild.test:8080"))
            .is_ok());
        assert!(network
            .policy
            .check_target(&target("bad.wild.test:443"))
            .is_err());
    }

    /// An ask callback alone gives jobs network, through it only; the token stays
    /// out of the config's debug output.
    #[test]
    fn the_ask_callback_keys() {
        let config = load_file(
            "[network]\nask_url = \"https://callback.test/ask\"\nask_token = \"s3cret\"\n",
        )
        .unwrap();
        assert!(config.network.policy.allows_anything());
        assert!(!format!("{config:?}").contains("s3cret"));
        let narrowed = config.network.policy.narrowed(Some(&[])).unwrap();
        assert!(
            !narrowed.allows_anything(),
            "an empty list still means none"
        );
        let config = load_file("[network]\nask_url = \"http://a.io/\"\nmax_asks_per_job = 1000\nask_timeout_ms = 60000").unwrap();
        assert!(config.network.policy.allows_anything());
    }

    #[test]
    fn malformed_network_entries_are_named() {
        for (toml, needle) in [
            (
                "allowed_domains = [\"*\"]",
                "network.allowed_domains: \"*\": * may only be",
            ),
            (
                "allowed_domains = [\"*.com\"]",
                "network.allowed_domains: \"*.com\": a wildcard must name",
            ),
            (
                "allowed_domains = [\"https://x.io/\"]",
                "network.allowed_domains: \"https://x.io/\": looks like a URL",
            ),
            (
                "allowed_domains = [\"x.io:443\"]",
                "network.allowed_domains: \"x.io:443\": has a port",
            ),
            (
                "allowed_domains = [\"a..io\"]",
                "network.allowed_domains: \"a..io\": empty label",
            ),
            (
                "allowed_domains = [\"a_b.io\"]",
                "network.allowed_domains: \"a_b.io\": label \"a_b\"",
            ),
            (
                "denied_domains = [\"*.io\"]",
                "network.denied_domains: \"*.io\"",
            ),
            ("allowed_ports = []", "network.allowed_ports"),
            ("allowed_ports = [0]", "network.allowed_ports"),
            (
                "allow_private_cidrs = [\"127.0.0.1/8\"]",
                "network.allow_private_cidrs: \"127.0.0.1/8\"",
            ),
            (
                "allow_private_cidrs = [\"localhost\"]",
                "network.allow_private_cidrs: \"localhost\"",
            ),
            ("idle_timeout_ms = 0", "network.idle_timeout_ms"),
            ("max_connections = 0", "network.max_connections"),
            (
                "max_client_connections = 0",
                "network.max_client_connections",
            ),
            ("max_total_connections = 0", "network.max_total_connections"),
            ("alowed_domains = []", "alowed_domains"),
            (
                "[network.resolve]\n\"a.io\" = \"0177.0.0.1\"",
                "network.resolve.\"a.io\": \"0177.0.0.1\" is not an IP address",
            ),
            (
                "[network.resolve]\n\"a.io\" = []",
                "network.resolve.\"a.io\": must name at least one address",
            ),
            (
                "[network.resolve]\n\"1.2.3.4\" = \"1.2.3.4\"",
                "network.resolve: \"1.2.3.4\": is an IP address",
            ),
            (
                "allowed_domains = [\"a.io\"]\nsocat = \"/opt/socat\"",
                "network.socat",
            ),
            (
                "ask_url = \"ftp://a.io/\"",
                "network.ask_url: must be an http",
            ),
            ("ask_url = \"a.io/ask\"", "network.ask_url: is not a URL"),
            (
                "ask_url = \"http://u:p@a.io/\"",
                "network.ask_url: must not hold credentials",
            ),
            (
                "ask_url = \"http://a.io/\"\nask_token = \"a b\"",
                "network.ask_token: must be 1 to 4096 printable ASCII",
            ),
            (
                "ask_url = \"http://a.io/\"\nask_token = \"a\\r\\nX-Evil: 1\"",
                "network.ask_token",
            ),
            (
                "ask_url = \"http://a.io/\"\nask_timeout_ms = 0",
                "network.ask_timeout_ms: must be from 1 to 60000",
            ),
            (
                "ask_url = \"http://a.io/\"\nmax_asks_per_job = 0",
                "network.max_asks_per_job: must be from 1 to 1000",
            ),
            (
                "ask_token = \"t\"",
                "network.ask_token: has no effect without network.ask_url",
            ),
            (
                "ask_timeout_ms = 5",
                "network.ask_timeout_ms: has no effect",
            ),
        ] {
            let err = load_file(&format!("[network]\n{toml}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{toml}: {err}");
        }
    }

    #[test]
    fn relative_paths_and_bad_limits_are_refused() {
        assert!(load(&["--state-dir", "state"]).is_err());
        assert!(load_file("default_timeout_ms = 0").is_err());
        assert!(load_file("max_timeout_ms = 120001").is_err());
        assert!(load_file("[max_limits]\noutput_bytes = 999999999").is_err());
        assert!(load_file("max_files = 0").is_err());
        assert!(load_file("max_files = 1001").is_err());
        assert!(load_file("max_files_bytes = 67108865").is_err());
        assert!(load_file("max_file_bytes = 1000\nmax_files_bytes = 999").is_err());
        assert!(load_file("max_input_bytes = 33554433").is_err());
        assert!(load_file("[default_limits]\nmemory_mb = 5000").is_err());
        assert!(load_file("[default_limits]\nmemroy_mb = 5").is_err());
        // Below the minimum a jail cannot start: refused at startup, not per job.
        let small = load_file("[default_limits]\nmemory_mb = 15").unwrap_err();
        assert_eq!(
            small.to_string(),
            "invalid configuration: default_limits: memoryMb must be from 16 to its max_limits value 4096"
        );
        assert!(load_file("[max_limits]\nmax_processes = 3").is_err());
        assert!(load(&["--max-jobs", "0"]).is_err());
    }
}
