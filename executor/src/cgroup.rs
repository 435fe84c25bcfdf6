//! Per-job cgroups: memory, process and CPU limits for a job's whole process tree, and
//! the figures of what it used.
//!
//! Two layouts are supported, detected at startup:
//! - **v2** (unified): one directory per job under a delegated subtree. With
//!   systemd's `Delegate=yes` that is the service's own cgroup; the executor first
//!   moves itself into a leaf (`supervisor`) because a cgroup that hands controllers
//!   to its children may hold no process itself (cgroup-v2.rst, "no internal process").
//! - **v1**: one directory per job in each controller's hierarchy (memory, pids, cpu,
//!   cpuacct), as on hosts that still mount the legacy controllers.
//!
//! Every path is built from a root given as a parameter, so the logic is tested
//! against a fake tree without root.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::Error;

/// A controller the executor uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Controller {
    Memory,
    Pids,
    /// Bandwidth (`cpu.max`, `cpu.cfs_quota_us`).
    Cpu,
    /// CPU time used (`cpu.stat` on v2, `cpuacct.usage` on v1).
    CpuAcct,
}

const ALL: [Controller; 4] = [
    Controller::Memory,
    Controller::Pids,
    Controller::Cpu,
    Controller::CpuAcct,
];

impl Controller {
    fn v1_name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Cpu => "cpu",
            Controller::CpuAcct => "cpuacct",
        }
    }
}

/// Which cgroup layout is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// The limits written into a job's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimits {
    pub memory_bytes: u64,
    pub max_processes: u32,
    /// CPU bandwidth in percent of one CPU (100 = one core); `None` leaves it unlimited.
    pub cpu_percent: Option<u32>,
}

/// Where this executor's job cgroups live: one base directory per hierarchy.
/// Dropping it removes them, with whatever job cgroup is left inside.
#[derive(Debug)]
pub struct Cgroups {
    version: Version,
    bases: Vec<(PathBuf, Vec<Controller>)>,
}

/// What the cgroup of a finished job says about it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    pub cpu_ns: Option<u64>,
    pub peak_memory_bytes: Option<u64>,
    /// Processes the kernel's OOM killer killed, since the cgroup was made.
    pub oom_kills: u64,
    /// Forks or clones that failed at `pids.max`, since the cgroup was made.
    pub pids_refused: u64,
}

/// CPU bandwidth period: 100 ms, the kernel's default.
const CPU_PERIOD_US: u64 = 100_000;

impl Cgroups {
    /// Finds a usable layout for the instance called `name`: v2 when the unified
    /// hierarchy has the memory and pids controllers, else v1 when the legacy
    /// hierarchies have them. `None` when neither does.
    pub fn detect(name: &str) -> Option<Cgroups> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
        let own = fs::read_to_string("/proc/self/cgroup").ok()?;
        let mounts = parse_mounts(&mountinfo);
        v2_base(&mounts, &own)
            .and_then(|dir| Cgroups::adopt_v2(&dir, name).ok())
            .or_else(|| Cgroups::v1(&mounts, name))
    }

    /// Uses a v2 subtree at `dir`, delegated to us: moves our own process into a
    /// leaf, enables the controllers for children, and makes the instance dir.
    pub fn adopt_v2(dir: &Path, name: &str) -> std::io::Result<Cgroups> {
        let available = fs::read_to_string(dir.join("cgroup.controllers"))?;
        let has = |c: &str| available.split_whitespace().any(|a| a == c);
        if !(has("memory") && has("pids")) {
            return Err(std::io::ErrorKind::Unsupported.into());
        }
        let mut controllers = vec![Controller::Memory, Controller::Pids, Controller::CpuAcct];
        let mut enable = String::from("+memory +pids");
        if has("cpu") {
            controllers.push(Controller::Cpu);
            enable.push_str(" +cpu");
        }
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        if !procs.trim().is_empty() {
            let leaf = dir.join("supervisor");
            create_dir(&leaf)?;
            for pid in procs.split_whitespace() {
                // A process that exited meanwhile cannot be moved; that is fine.
                let _ = fs::write(leaf.join("cgroup.procs"), pid);
            }
        }
        fs::write(dir.join("cgroup.subtree_control"), &enable)?;
        let base = dir.join(name);
        create_dir(&base)?;
        fs::write(base.join("cgroup.subtree_control"), &enable)?;
        Ok(Cgroups {
            version: Version::V2,
            bases: vec![(base, controllers)],
        })
    }

    /// Uses the legacy hierarchies; memory and pids are required, cpu and cpuacct
    /// are used when mounted. Each instance lives at `<hierarchy>/<name>`.
    fn v1(mounts: &[Mount], name: &str) -> Option<Cgroups> {
        let mut bases: Vec<(PathBuf, Vec<Controller>)> = Vec::new();
        for controller in ALL {
            let Some(mount) = mounts.iter().find(|m| {
                m.fs_type == "cgroup" && m.options.iter().any(|o| o == controller.v1_name())
            }) else {
                continue;
            };
            let base = mount.point.join(name);
            match bases.iter_mut().find(|(b, _)| *b == base) {
                Some((_, controllers)) => controllers.push(controller),
                None => bases.push((base, vec![controller])),
            }
        }
        let has = |c| bases.iter().any(|(_, cs)| cs.contains(&c));
        if !(has(Controller::Memory) && has(Controller::Pids)) {
            return None;
        }
        for (base, _) in &bases {
            create_dir(base).ok()?;
        }
        Some(Cgroups {
            version: Version::V1,
            bases,
        })
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// Whether `controller` is in use.
    pub fn has(&self, controller: Controller) -> bool {
        self.bases.iter().any(|(_, cs)| cs.contains(&controller))
    }

    /// Creates the cgroup of job `id` with `limits` applied, ready for its first
    /// process to join through [`JobCgroup::join_fds`].
    pub fn create(&self, id: u64, limits: &CgroupLimits) -> Result<JobCgroup, Error> {
        let name = format!("job-{id}");
        let mut job = JobCgroup {
            version: self.version,
            dirs: Vec::new(),
            join: Vec::new(),
        };
        for (base, controllers) in &self.bases {
            let dir = base.join(&name);
            create_dir(&dir).map_err(Error::setup("create cgroup", &dir))?;
            // Pushed before anything can fail, so that Drop removes it.
            job.dirs.push((dir, controllers.clone()));
        }
        job.set_limits(limits)?;
        for (dir, _) in &job.dirs {
            let path = dir.join(join_file(self.version));
            let file = fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(Error::setup("open", &path))?;
            job.join.push(file.into());
        }
        Ok(job)
    }

    /// Kills and removes every job cgroup left by a previous run of this instance.
    pub fn sweep(&self) {
        for dir in self.job_dirs() {
            tracing::info!(cgroup = %dir.display(), "removing a cgroup left by a previous run");
            kill_and_remove(&dir, self.version);
        }
    }

    fn job_dirs(&self) -> Vec<PathBuf> {
        let entries = self
            .bases
            .iter()
            .filter_map(|(base, _)| fs::read_dir(base).ok());
        entries
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| path.is_dir())
            .collect()
    }
}

/// A stopped executor leaves no cgroup behind, not even its empty base
/// directories: thousands of them (one per executor the tests start) made every
/// later cgroup write slower, as the CPU controller's bandwidth check walks them
/// all.
impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in self.job_dirs() {
            kill_and_remove(&dir, self.version);
        }
        for (base, _) in &self.bases {
            if let Err(e) = fs::remove_dir(base) {
                tracing::warn!(cgroup = %base.display(), error = %e, "cannot remove the executor's cgroup");
            }
        }
    }
}

/// The file through which a job's first process joins a cgroup of `version`, by
/// writing "0". That process has one thread (a child between fork and exec, or a
/// forked job's process, which checks), so on v1 `tasks`, which moves the writing
/// thread only, moves all of it — and spares the kernel's threadgroup lock: moving
/// a whole process through `cgroup.procs` write-locks it, which waits for an RCU
/// grace period on the first move after a quiet spell (7.7 ms on the machine of the
/// benchmarks, 0.03 ms through `tasks`), so every job that followed a pause paid it.
/// On v2 `cgroup.threads` cannot cross into another domain: `cgroup.procs` it is,
/// fast on a hierarchy mounted with `favordynmods` (README, "Performance").
fn join_file(version: Version) -> &'static str {
    match version {
        Version::V1 => "tasks",
        Version::V2 => "cgroup.procs",
    }
}

/// One job's cgroup (a directory in each hierarchy). Dropping it kills whatever is
/// still inside and removes the directories.
#[derive(Debug)]
pub struct JobCgroup {
    version: Version,
    dirs: Vec<(PathBuf, Vec<Controller>)>,
    /// [`join_file`] of each directory, opened for the jail's first process to write
    /// itself into between fork and exec, while it is still root (or for a forked
    /// job's process, before it runs any code of the job).
    join: Vec<OwnedFd>,
}

impl JobCgroup {
    fn dir(&self, controller: Controller) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(_, cs)| cs.contains(&controller))
            .map(|(d, _)| d.as_path())
    }

    fn write(&self, controller: Controller, file: &str, value: &str) -> Result<(), Error> {
        match self.dir(controller) {
            Some(dir) => {
                let path = dir.join(file);
                fs::write(&path, value).map_err(Error::setup("write", &path))
            }
            None => Ok(()),
        }
    }

    fn read(&self, controller: Controller, file: &str) -> Option<String> {
        fs::read_to_string(self.dir(controller)?.join(file)).ok()
    }

    /// Writes `limits` into the job's cgroup; also on a live one, when a warm jail
    /// takes its job (the memory limit may only go down there: on v1 it is written
    /// before the memory+swap limit, which may not be below it).
    pub fn set_limits(&self, limits: &CgroupLimits) -> Result<(), Error> {
        let memory = limits.memory_bytes.to_string();
        let pids = limits.max_processes.to_string();
        match self.version {
            Version::V2 => {
                self.write(Controller::Memory, "memory.max", &memory)?;
                // Swap would let a job exceed its memory limit at the host's expense.
                if self
                    .dir(Controller::Memory)
                    .is_some_and(|d| d.join("memory.swap.max").exists())
                {
                    self.write(Controller::Memory, "memory.swap.max", "0")?;
                }
                self.write(Controller::Pids, "pids.max", &pids)?;
                if let Some(percent) = limits.cpu_percent {
                    let quota = CPU_PERIOD_US * u64::from(percent) / 100;
                    self.write(
                        Controller::Cpu,
                        "cpu.max",
                        &format!("{quota} {CPU_PERIOD_US}"),
                    )?;
                }
            }
            Version::V1 => {
                self.write(Controller::Memory, "memory.limit_in_bytes", &memory)?;
                // memory+swap, only where swap accounting exists; must not be below
                // the memory limit, which is why it is written second.
                if self
                    .dir(Controller::Memory)
                    .is_some_and(|d| d.join("memory.memsw.limit_in_bytes").exists())
                {
                    self.write(Controller::Memory, "memory.memsw.limit_in_bytes", &memory)?;
                }
                self.write(Controller::Pids, "pids.max", &pids)?;
                if let Some(percent) = limits.cpu_percent {
                    let quota = CPU_PERIOD_US * u64::from(percent) / 100;
                    self.write(
                        Controller::Cpu,
                        "cpu.cfs_period_us",
                        &CPU_PERIOD_US.to_string(),
                    )?;
                    self.write(Controller::Cpu, "cpu.cfs_quota_us", &quota.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// Starts the peak-memory figure afresh (v1: writing to `max_usage_in_bytes`),
    /// so that a warm jail reports its job's peak; v2's `memory.peak` cannot be reset
    /// for all readers and keeps counting from the jail's start.
    pub fn reset_peak(&self) {
        if self.version == Version::V1 {
            let _ = self.write(Controller::Memory, "memory.max_usage_in_bytes", "0");
        }
    }

    /// Descriptors of every [`join_file`] of the job (writing "0" moves the writer).
    pub fn join_fds(&self) -> Vec<RawFd> {
        self.join.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// Copies of the same descriptors, to pass to a forked job's child.
    pub fn join_fds_owned(&self) -> std::io::Result<Vec<OwnedFd>> {
        self.join.iter().map(OwnedFd::try_clone).collect()
    }

    /// CPU time used so far by every process of the job, dead or alive.
    pub fn cpu_ns(&self) -> Option<u64> {
        match self.version {
            Version::V2 => {
                let usec = keyed(&self.read(Controller::CpuAcct, "cpu.stat")?, "usage_usec")?;
                Some(usec * 1000)
            }
            Version::V1 => self
                .read(Controller::CpuAcct, "cpuacct.usage")?
                .trim()
                .parse()
                .ok(),
        }
    }

    /// Memory the job's processes use now (and the page cache charged to them).
    pub fn memory_bytes(&self) -> Option<u64> {
        read_number(&self.memory_file()?)
    }

    /// The host pids of the job's processes now.
    pub fn pids(&self) -> Vec<i32> {
        let Some((dir, _)) = self.dirs.first() else {
            return Vec::new();
        };
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        procs
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// The file [`JobCgroup::memory_bytes`] reads, for a reader that must not hold
    /// the cgroup (a session's state): once the cgroup is gone, it reads nothing.
    pub fn memory_file(&self) -> Option<PathBuf> {
        let current = match self.version {
            Version::V2 => "memory.current",
            Version::V1 => "memory.usage_in_bytes",
        };
        Some(self.dir(Controller::Memory)?.join(current))
    }

    /// Kills every process left in the job's cgroups: the jail's pid namespace takes
    /// its processes along when it dies, but a bwrap killed halfway through its
    /// setup can leave a child that never armed its death signal.
    pub fn kill_all(&self) {
        for (dir, _) in &self.dirs {
            kill_all(dir, self.version);
        }
    }

    /// Whether no process is left in the job's cgroups.
    pub fn is_empty(&self) -> bool {
        self.dirs.iter().all(|(dir, _)| {
            fs::read_to_string(dir.join("cgroup.procs")).map_or(true, |p| p.trim().is_empty())
        })
    }

    /// What the cgroup recorded about the job.
    pub fn report(&self) -> Report {
        let (events, peak) = match self.version {
            Version::V2 => ("memory.events", "memory.peak"),
            Version::V1 => ("memory.oom_control", "memory.max_usage_in_bytes"),
        };
        Report {
            cpu_ns: self.cpu_ns(),
            peak_memory_bytes: self
                .read(Controller::Memory, peak)
                .and_then(|p| p.trim().parse().ok()),
            oom_kills: self
                .read(Controller::Memory, events)
                .and_then(|e| keyed(&e, "oom_kill"))
                .unwrap_or(0),
            pids_refused: self
                .read(Controller::Pids, "pids.events")
                .and_then(|e| keyed(&e, "max"))
                .unwrap_or(0),
        }
    }
}

impl Drop for JobCgroup {
    fn drop(&mut self) {
        for (dir, _) in &self.dirs {
            kill_and_remove(dir, self.version);
        }
    }
}

/// The number in the cgroup file at `path`.
pub fn read_number(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Kills every process in the cgroup at `dir`.
fn kill_all(dir: &Path, version: Version) {
    // One write kills the whole subtree (v2, Linux 5.14); the pid loop is the
    // fallback for older kernels and v1.
    if version == Version::V2 && fs::write(dir.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    // Only real pids: kill(0) or kill(-1) would hit our own process group or every
    // process we may signal.
    let pids = procs
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok());
    for pid in pids.filter(|&pid| pid > 0) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Kills every process in the cgroup at `dir` and removes it, waiting briefly for
/// the dying processes to leave (rmdir fails with EBUSY until they have).
fn kill_and_remove(dir: &Path, version: Version) {
    // Up to about half a second, in fine steps: the response waits on this.
    for attempt in 0..500 {
        kill_all(dir, version);
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if attempt == 499 => {
                tracing::error!(cgroup = %dir.display(), error = %e, "cannot remove cgroup");
            }
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

fn create_dir(dir: &Path) -> std::io::Result<()> {
    match fs::create_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// The value of `key` in a flat-keyed cgroup file (`key value` lines).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// A line of /proc/self/mountinfo, reduced to what detection needs.
#[derive(Debug, PartialEq, Eq)]
struct Mount {
    point: PathBuf,
    fs_type: String,
    options: Vec<String>,
}

/// Parses /proc/self/mountinfo (proc(5)): `id parent dev root point opts [tags] - type source superopts`.
fn parse_mounts(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            let mut right = right.split(' ');
            let fs_type = right.next()?.to_owned();
            let options = right.nth(1)?.split(',').map(str::to_owned).collect();
            Some(Mount {
                point: PathBuf::from(unescape_octal(point)),
                fs_type,
                options,
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        match rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            Some(byte) => {
                out.push(byte as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Our own v2 cgroup directory, when the unified hierarchy is mounted at
/// /sys/fs/cgroup (a pure v2 host) and /proc/self/cgroup names our place in it.
fn v2_base(mounts: &[Mount], own_cgroup: &str) -> Option<PathBuf> {
    let mount = mounts
        .iter()
        .find(|m| m.fs_type == "cgroup2" && m.point == Path::new("/sys/fs/cgroup"))?;
    let path = own_cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(mount.point.join(path.trim_start_matches('/')))
}

/// A name for this executor's cgroups that differs between executors with different
/// state dirs (tests run several at once) and stays the same across restarts, so the
/// startup sweep finds what a crashed run left.
pub fn instance_name(state_dir: &Path) -> String {
    // FNV-1a: stable across builds, unlike std's randomly keyed hasher.
    let hash = state_dir
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    format!("pysandbox-{:08x}", hash as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO_V1: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 / /srv/with\\040space rw shared:5 - ext4 /dev/vda rw";

    #[test]
    fn mountinfo_is_parsed_with_optional_fields_and_escapes() {
        let mounts = parse_mounts(MOUNTINFO_V1);
        assert_eq!(mounts.len(), 7);
        assert_eq!(mounts[1].point, Path::new("/sys/fs/cgroup/cpu"));
        assert_eq!(mounts[1].options, ["rw", "cpu"]);
        assert_eq!(mounts[6].point, Path::new("/srv/with space"));
        assert_eq!(mounts[6].fs_type, "ext4");
    }

    #[test]
    fn a_unified_hierarchy_elsewhere_than_sys_fs_cgroup_is_not_v2() {
        assert_eq!(v2_base(&parse_mounts(MOUNTINFO_V1), "0::/\n"), None);
        let v2 = "30 23 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate";
        assert_eq!(
            v2_base(
                &parse_mounts(v2),
                "0::/system.slice/pysandbox-executor.service\n"
            ),
            Some(PathBuf::from(
                "/sys/fs/cgroup/system.slice/pysandbox-executor.service"
            ))
        );
    }

    #[test]
    fn keyed_files() {
        let events = "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n";
        assert_eq!(keyed(events, "oom_kill"), Some(2));
        assert_eq!(keyed(events, "oom"), Some(1));
        assert_eq!(keyed(events, "missing"), None);
        assert_eq!(
            keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 5\n", "oom_kill"),
            Some(5)
        );
    }

    #[test]
    fn instance_names_are_stable_and_differ_by_state_dir() {
        let a = instance_name(Path::new("/var/lib/pysandbox"));
        assert_eq!(a, instance_name(Path::new("/var/lib/pysandbox")));
        assert_ne!(a, instance_name(Path::new("/tmp/x/state")));
        assert!(a.starts_with("pysandbox-") && a.len() == "pysandbox-".len() + 8);
    }

    /// A fake v1 tree: the controller files the kernel would create are plain files.
    fn fake_v1(root: &Path) -> Cgroups {
        let mut bases = Vec::new();
        for c in ALL {
            let base = root.join(c.v1_name()).join("inst");
            fs::create_dir_all(&base).unwrap();
            bases.push((base, vec![c]));
        }
        Cgroups {
            version: Version::V1,
            bases,
        }
    }

    fn prepopulate(cgroups: &Cgroups, id: u64, files: &[(&str, &str)]) {
        for (base, _) in &cgroups.bases {
            let dir = base.join(format!("job-{id}"));
            fs::create_dir_all(&dir).unwrap();
            for (name, content) in files {
                fs::write(dir.join(name), content).unwrap();
            }
        }
    }

    #[test]
    fn v1_limits_land_in_the_right_files_and_reports_are_read() {
        let root = tempfile::tempdir().unwrap();
        let cgroups = fake_v1(root.path());
        prepopulate(
            &cgroups,
            7,
            &[
                ("tasks", ""),
                ("cgroup.procs", ""),
                ("memory.memsw.limit_in_bytes", ""),
                (
                    "memory.oom_control",
                    "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
                ),
                ("memory.max_usage_in_bytes", "1048576\n"),
                ("pids.events", "max 0\n"),
                ("cpuacct.usage", "2500000\n"),
            ],
        );
        let limits = CgroupLimits {
            memory_bytes: 512 << 20,
            max_processes: 64,
            cpu_percent: Some(150),
        };
        let job = cgroups.create(7, &limits).unwrap();
        let read = |c: &str, f: &str| {
            fs::read_to_string(root.path().join(c).join("inst/job-7").join(f)).unwrap()
        };
        assert_eq!(read("memory", "memory.limit_in_bytes"), "536870912");
        assert_eq!(read("memory", "memory.memsw.limit_in_bytes"), "536870912");
        assert_eq!(read("pids", "pids.max"), "64");
        assert_eq!(read("cpu", "cpu.cfs_quota_us"), "150000");
        assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
        assert_eq!(job.join_fds().len(), 4);
        assert_eq!(
            job.report(),
            Report {
                cpu_ns: Some(2_500_000),
                peak_memory_bytes: Some(1_048_576),
                oom_kills: 1,
                pids_refused: 0,
            }
        );
        // A job's one-threaded first process joins through `tasks`: no threadgroup lock.
        let join = job.join_fds_owned().unwrap().remove(0);
        std::io::Write::write_all(&mut fs::File::from(join), b"0").unwrap();
        assert_eq!(read("memory", "tasks"), "0");
        assert_eq!(read("memory", "cgroup.procs"), "");
        // A fake tree's directories hold plain files, which rmdir cannot remove.
        std::mem::forget((job, cgroups));
    }

    #[test]
    fn v2_reads_its_own_files() {
        let root = tempfile::tempdir().unwrap();
        let base = root.path().join("inst");
        fs::create_dir_all(&base).unwrap();
        let cgroups = Cgroups {
            version: Version::V2,
            bases: vec![(base, ALL.to_vec())],
        };
        prepopulate(
            &cgroups,
            1,
            &[
                ("cgroup.procs", ""),
                ("memory.swap.max", "max"),
                ("memory.events", "low 0\nhigh 0\nmax 4\noom 1\noom_kill 0\n"),
                ("memory.peak", "4096\n"),
                ("pids.events", "max 2\n"),
                ("cpu.stat", "usage_usec 1500\nuser_usec 1000\n"),
            ],
        );
        let limits = CgroupLimits {
            memory_bytes: 1 << 20,
            max_processes: 8,
            cpu_percent: Some(100),
        };
        let job = cgroups.create(1, &limits).unwrap();
        let read = |f: &str| fs::read_to_string(root.path().join("inst/job-1").join(f)).unwrap();
        assert_eq!(read("memory.max"), "1048576");
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("cpu.max"), "100000 100000");
        let report = job.report();
        assert_eq!(report.cpu_ns, Some(1_500_000));
        assert_eq!((report.oom_kills, report.pids_refused), (0, 2));
        assert!(job.is_empty());
        // v2 has no `tasks`; `cgroup.threads` cannot cross domains.
        let join = job.join_fds_owned().unwrap().remove(0);
        std::io::Write::write_all(&mut fs::File::from(join), b"0").unwrap();
        assert_eq!(read("cgroup.procs"), "0");
        std::mem::forget((job, cgroups));
    }

    /// Without swap accounting (v1 without `swapaccount=1`, v2 without
    /// `memory.swap.max`) there is no swap file to write: the memory limit still
    /// lands and setting limits does not fail; nothing is made up in place of the
    /// missing file. README says swap is off only where the kernel accounts it.
    #[test]
    fn without_swap_accounting_the_memory_limit_still_lands() {
        let limits = CgroupLimits {
            memory_bytes: 256 << 20,
            max_processes: 32,
            cpu_percent: None,
        };
        let root = tempfile::tempdir().unwrap();
        let cgroups = fake_v1(root.path());
        prepopulate(&cgroups, 3, &[("tasks", "")]);
        let job = cgroups.create(3, &limits).unwrap();
        let dir = root.path().join("memory/inst/job-3");
        assert_eq!(
            fs::read_to_string(dir.join("memory.limit_in_bytes")).unwrap(),
            "268435456"
        );
        assert!(!dir.join("memory.memsw.limit_in_bytes").exists());
        std::mem::forget((job, cgroups));

        let root = tempfile::tempdir().unwrap();
        let base = root.path().join("inst");
        fs::create_dir_all(&base).unwrap();
        let cgroups = Cgroups {
            version: Version::V2,
            bases: vec![(base, ALL.to_vec())],
        };
        prepopulate(&cgroups, 4, &[("cgroup.procs", "")]);
        let job = cgroups.create(4, &limits).unwrap();
        let dir = root.path().join("inst/job-4");
        assert_eq!(
            fs::read_to_string(dir.join("memory.max")).unwrap(),
            "268435456"
        );
        assert!(!dir.join("memory.swap.max").exists());
        std::mem::forget((job, cgroups));
    }

    /// A stopped executor's cgroups go: job cgroups left inside, then the base
    /// directory of each hierarchy.
    #[test]
    fn dropping_the_instance_removes_its_cgroups() {
        let root = tempfile::tempdir().unwrap();
        let bases: Vec<PathBuf> = ["memory", "pids"]
            .iter()
            .map(|h| root.path().join(h).join("inst"))
            .collect();
        for base in &bases {
            fs::create_dir_all(base.join("job-3")).unwrap();
        }
        let cgroups = Cgroups {
            version: Version::V1,
            bases: vec![
                (bases[0].clone(), vec![Controller::Memory]),
                (bases[1].clone(), vec![Controller::Pids]),
            ],
        };
        drop(cgroups);
        for base in &bases {
            assert!(!base.exists(), "{} is left", base.display());
            assert!(base.parent().unwrap().exists());
        }
    }

    /// `Delegate=yes`: the executor's own cgroup holds processes, and a v2 cgroup
    /// with processes cannot hand controllers to children ("no internal processes"),
    /// so it moves them into a `supervisor` leaf first, then enables the
    /// controllers for its children and for its instance dir.
    #[test]
    fn a_delegated_v2_cgroup_moves_its_processes_to_a_supervisor_leaf() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        fs::write(
            dir.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        fs::write(dir.join("cgroup.procs"), "4242\n").unwrap();
        let cgroups = Cgroups::adopt_v2(dir, "inst").unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("supervisor/cgroup.procs")).unwrap(),
            "4242"
        );
        let enabled = "+memory +pids +cpu";
        assert_eq!(
            fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap(),
            enabled
        );
        assert_eq!(
            fs::read_to_string(dir.join("inst/cgroup.subtree_control")).unwrap(),
            enabled
        );
        assert_eq!(cgroups.version(), Version::V2);
        assert!([Controller::Memory, Controller::Pids, Controller::Cpu]
            .into_iter()
            .all(|c| cgroups.has(c)));

        // An empty delegated cgroup needs no leaf; one without pids is refused.
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("cgroup.controllers"), "memory pids\n").unwrap();
        let cgroups = Cgroups::adopt_v2(root.path(), "inst").unwrap();
        assert!(!root.path().join("supervisor").exists());
        assert!(!cgroups.has(Controller::Cpu));
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
        let refused = Cgroups::adopt_v2(root.path(), "inst").unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::Unsupported);
    }
}
