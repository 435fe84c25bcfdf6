//! The jail a job runs in: bubblewrap namespaces and mounts, entered as the sandbox uid
//! through `jail-init`.
//!
//! Setting up a jail ([`Jail::spawn`]) is kept apart from handing it a job: the
//! jail's Python (the launcher) starts, optionally imports modules, and waits for the
//! job on a pipe. A cold job is handed over at once, a warm one later; the steps
//! are the same, so warm and cold jobs run identically.

pub mod bwrap;
#[cfg(debug_assertions)]
mod drop_layer;
pub(crate) mod etc;
pub mod init;
pub(crate) mod landlock;
pub mod seccomp;

use std::ffi::OsString;
use std::io::{Seek, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::net::unix::pipe;
use tokio::process::{Child, Command};

use pysandbox_shared::Layer;

use crate::config::Config;
use crate::error::Error;
use crate::sys::{harden_spawn, Rlimit, SpawnPlan, MAX_CGROUPS, MAX_RLIMITS};
use crate::workdir::WorkDir;

/// Host directories that may hold the dynamic loader and libraries: bound, or
/// recreated as symlinks on merged-/usr hosts.
const ROOT_LIB_DIRS: &[&str] = &["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];

/// Everything needed to start jails, computed once at startup.
#[derive(Debug)]
pub struct Jail {
    bwrap: PathBuf,
    /// The same, for a job that may use the network: landlock lets it connect to
    /// the relay's port, and jail-init starts the relay first.
    command_net: Vec<OsString>,
    fixed_args: Vec<OsString>,
    /// What the executor binary runs inside the jail: jail-init, then Python.
    command: Vec<OsString>,
    /// The compiled seccomp filter, copied into a memfd for each jail.
    seccomp: Vec<u8>,
    /// What each isolation layer enforces on this host.
    layers: Vec<Layer>,
    /// A fork-server template's bwrap argv (its modules to import follow) and
    /// seccomp filter, when the fork server is on.
    template: Option<(Vec<OsString>, Vec<u8>)>,
    /// Host paths beyond the fixed layout that a jail may read (landlock grants
    /// them); forked jobs apply the same rules.
    extra_read: Vec<PathBuf>,
    /// A test build's host ids for jails in place of the sandbox user's (see
    /// `drop_layer`).
    #[cfg(debug_assertions)]
    stand_in_ids: Option<(u32, u32)>,
    /// Whether a test build leaves layers out (see `drop_layer`).
    #[cfg(debug_assertions)]
    layers_dropped: bool,
}

/// The jail setup in force, replaced as a whole when the host changes under it
/// (`host_watch`); a job keeps the setup it started with.
#[derive(Debug)]
pub struct Current(std::sync::RwLock<std::sync::Arc<Jail>>);

impl Current {
    pub fn new(jail: Jail) -> Current {
        Current(std::sync::RwLock::new(std::sync::Arc::new(jail)))
    }

    pub fn get(&self) -> std::sync::Arc<Jail> {
        std::sync::Arc::clone(&self.0.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn replace(&self, jail: Jail) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = std::sync::Arc::new(jail);
    }
}

/// The Python program every jail runs (see the file for its protocol).
const LAUNCHER: &str = include_str!("launcher.py");

/// A started jail: the bwrap process with its stdio pipes, the readiness pipe and
/// the hand-off pipe.
#[derive(Debug)]
pub struct Started {
    pub child: Child,
    /// Yields `R` once jail-init runs and `W` once Python is warm, or EOF if the
    /// jail never got that far.
    pub ready: pipe::Receiver,
    /// The launcher's orders: one `RLIMIT_NAME value` line per limit, then EOF.
    pub handoff: pipe::Sender,
}

impl Jail {
    /// Stages the jail's `/etc` under the state dir and precomputes bwrap's argv.
    pub fn new(config: &Config) -> Result<Jail, Error> {
        let init = std::env::current_exe().map_err(Error::setup("locate", "/proc/self/exe"))?;
        let mut ro_binds = vec![(PathBuf::from("/usr"), PathBuf::from("/usr"))];
        let mut symlinks = Vec::new();
        // Host paths bound read-only beyond the fixed layout: landlock must grant them.
        let mut extra_read = Vec::new();
        for dir in ROOT_LIB_DIRS.iter().map(Path::new) {
            match std::fs::read_link(dir) {
                Ok(target) => symlinks.push((target, dir.to_owned())),
                Err(_) if dir.is_dir() => extra_read.push(dir.to_owned()),
                Err(_) => {}
            }
        }
        extra_read.extend(config.ro_binds.iter().cloned());
        ro_binds.extend(extra_read.iter().map(|p| (p.clone(), p.clone())));
        let etc_dir = config.state_dir.join("etc");
        ro_binds.extend(etc::stage(
            &etc_dir,
            config.sandbox_uid,
            config.sandbox_gid,
        )?);
        let layout = bwrap::Layout {
            uid: config.sandbox_uid,
            gid: config.sandbox_gid,
            ro_binds,
            symlinks,
            init,
            shm_bytes: config.shm_bytes,
        };
        let python_command = |connect: &[u16], relay: Option<&Path>| {
            let mut command = init::argv(&extra_read, connect, relay, &config.python);
            command.extend(["-c".into(), LAUNCHER.into()]);
            command
        };
        let template = config.fork_server.then(|| {
            let mut command = vec![config.python.clone().into_os_string()];
            command.extend(
                ["-c", LAUNCHER, "--fork-server", bwrap::FORK_LIBRARY_PATH].map(OsString::from),
            );
            (
                bwrap::template_args(&layout, &config.fork_library, &command),
                seccomp::template_bytes(),
            )
        });
        #[allow(unused_mut, reason = "only a test build's switch edits them")]
        let (mut command, mut command_net, mut fixed_args) = (
            python_command(&[], None),
            python_command(&[bwrap::PROXY_PORT], Some(&config.network.socat)),
            bwrap::fixed_args(&layout),
        );
        #[cfg(debug_assertions)]
        let (stand_in_ids, layers_dropped) = {
            let dropped = drop_layer::Dropped::from_env().map_err(Error::Config)?;
            if dropped.any() {
                tracing::warn!(
                    ?dropped,
                    "TEST BUILD SWITCH {}: jails run WITHOUT these isolation layers; never \
                     run this outside the tests",
                    drop_layer::VARIABLE
                );
            }
            dropped.edit_bwrap_args(&mut fixed_args);
            dropped.edit_command(&mut command);
            dropped.edit_command(&mut command_net);
            let ids = dropped
                .stand_in_ids(&config.allow_uids, config.socket_group)
                .map_err(Error::Config)?;
            (ids, dropped.any())
        };
        let landlock_abi = crate::sys::landlock_abi();
        match landlock_abi {
            Some(abi) => {
                tracing::info!(abi, "landlock available; jails confine themselves with it")
            }
            None => tracing::warn!(
                "this kernel has no landlock: jails rely on namespaces, seccomp and the sandbox uid"
            ),
        }
        Ok(Jail {
            layers: layers(config, landlock_abi),
            bwrap: config.bwrap.clone(),
            command,
            command_net,
            fixed_args,
            seccomp: seccomp::bytes(),
            template,
            extra_read,
            #[cfg(debug_assertions)]
            stand_in_ids,
            #[cfg(debug_assertions)]
            layers_dropped,
        })
    }

    /// The host ids jails run as: the configured sandbox ids, except in a test build
    /// told to leave the uid layer out.
    pub fn host_ids(&self, configured: (u32, u32)) -> (u32, u32) {
        #[cfg(debug_assertions)]
        if let Some(ids) = self.stand_in_ids {
            return ids;
        }
        configured
    }

    /// What each isolation layer enforces on this host, for `/health`.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// Starts a jail on `dir`, as the host ids `(uid, gid)`, inside the cgroups whose
    /// join descriptors ([`crate::cgroup::JobCgroup::join_fds`]) are `cgroup_joins`,
    /// with `rlimits` on every process; its Python imports `preload` and then waits
    /// for the job. With a `proxy_dir` (holding the job's egress
    /// proxy socket), the job may use the network through it; without, it has none.
    /// The returned child is killed when dropped.
    pub fn spawn(
        &self,
        dir: &WorkDir,
        (uid, gid): (u32, u32),
        cgroup_joins: &[RawFd],
        rlimits: &[Rlimit],
        preload: &[String],
        proxy_dir: Option<&Path>,
    ) -> Result<Started, Error> {
        if cgroup_joins.len() > MAX_CGROUPS || rlimits.len() > MAX_RLIMITS {
            let plan = "fit the cgroups and rlimits in the spawn plan";
            return Err(Error::jail(plan)(std::io::ErrorKind::InvalidInput.into()));
        }
        let mut plan_cgroups = [-1; MAX_CGROUPS];
        plan_cgroups[..cgroup_joins.len()].copy_from_slice(cgroup_joins);
        let mut plan_rlimits = [None; MAX_RLIMITS];
        for (slot, &limit) in plan_rlimits.iter_mut().zip(rlimits) {
            *slot = Some(limit);
        }
        let pipe_error = |e| Error::jail("create a pipe")(e);
        let (handoff, handoff_rx) = pipe::pipe().map_err(pipe_error)?;
        let handoff_rx = handoff_rx.into_blocking_fd().map_err(pipe_error)?;
        let mut cmd = Command::new(&self.bwrap);
        cmd.args(&self.fixed_args)
            .args(bwrap::job_args(
                &dir.dirs(),
                proxy_dir,
                match proxy_dir {
                    Some(_) => &self.command_net,
                    None => &self.command,
                },
            ))
            .args(preload)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let (child, ready) = Jail::start(
            cmd,
            &self.seccomp,
            handoff_rx,
            (uid, gid),
            plan_cgroups,
            plan_rlimits,
            "start bwrap",
        )?;
        Ok(Started {
            child,
            ready,
            handoff,
        })
    }

    /// Starts `cmd` (bwrap and its arguments) as `(uid, gid)` in the cgroups whose
    /// join descriptors are `cgroup_joins`, with `rlimits`, `fd3` as its
    /// fd 3 (the launcher's hand-off pipe or control socket), a readiness pipe as
    /// fd 4 (returned) and `filter` staged in a memfd as fd 5; stderr is piped.
    /// bwrap's pid 1 keeps its own environment, which the job can read in
    /// `/proc/1/environ`: it gets none of ours. Our copies of the three close here,
    /// so the readiness pipe ends when the jail's copies do. The child is killed
    /// when dropped.
    fn start(
        mut cmd: Command,
        filter: &[u8],
        fd3: OwnedFd,
        (uid, gid): (u32, u32),
        cgroup_joins: [RawFd; MAX_CGROUPS],
        rlimits: [Option<Rlimit>; MAX_RLIMITS],
        step: &'static str,
    ) -> Result<(Child, pipe::Receiver), Error> {
        let pipe_error = |e| Error::jail("create a pipe")(e);
        let seccomp =
            memfd(c"pysandbox-seccomp", filter).map_err(Error::jail("stage the seccomp filter"))?;
        let (ready_tx, ready) = pipe::pipe().map_err(pipe_error)?;
        let ready_tx = ready_tx.into_blocking_fd().map_err(pipe_error)?;
        cmd.env_clear().stderr(Stdio::piped()).kill_on_drop(true);
        harden_spawn(
            &mut cmd,
            SpawnPlan {
                uid,
                gid,
                parent: std::process::id() as libc::pid_t,
                fds: [
                    (fd3.as_raw_fd(), bwrap::HANDOFF_FD),
                    (ready_tx.as_raw_fd(), bwrap::READY_FD),
                    (seccomp.as_raw_fd(), bwrap::SECCOMP_FD),
                ],
                cgroup_joins,
                rlimits,
            },
        );
        let child = cmd.spawn().map_err(Error::jail(step))?;
        drop((fd3, ready_tx, seccomp));
        Ok((child, ready))
    }
}

impl Jail {
    /// Whether a test build was told to leave isolation layers out of jails
    /// (`drop_layer`): the fork server then stays off, so that those tests prove
    /// the layers of a jail of the job's own.
    pub fn layers_dropped(&self) -> bool {
        #[cfg(debug_assertions)]
        return self.layers_dropped;
        #[cfg(not(debug_assertions))]
        false
    }

    /// The host paths a forked job may read beyond the fixed layout.
    pub fn extra_read(&self) -> &[PathBuf] {
        &self.extra_read
    }

    /// Starts a fork-server template that imports `preload`, as `(uid, gid)`,
    /// with `control` (its end of the control socket) as its fd 3. Returns the
    /// bwrap process, its stderr piped, and the pipe on which it says `W` once it
    /// is ready. With the fork server off, this is an error.
    pub fn spawn_template(
        &self,
        (uid, gid): (u32, u32),
        control: OwnedFd,
        preload: &[String],
    ) -> Result<(Child, pipe::Receiver), Error> {
        let Some((args, filter)) = &self.template else {
            let off = "start a template: the fork server is off";
            return Err(Error::jail(off)(std::io::ErrorKind::Unsupported.into()));
        };
        let mut cmd = Command::new(&self.bwrap);
        cmd.args(args)
            .args(preload)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let mut rlimits = [None; MAX_RLIMITS];
        rlimits[0] = Some((libc::RLIMIT_CORE, 0));
        Jail::start(
            cmd,
            filter,
            control,
            (uid, gid),
            [-1; MAX_CGROUPS],
            rlimits,
            "start the template's bwrap",
        )
    }
}

/// What landlock enforces with the kernel's ABI (best effort: an older kernel
/// enforces less, and `/health` says so).
fn landlock_layer(landlock_abi: Option<i64>) -> String {
    match landlock_abi {
        Some(abi) if abi >= 6 => format!(
            "ABI {abi}: filesystem, TCP connect, signals and abstract sockets scoped to the job"
        ),
        Some(abi) if abi >= 4 => format!("ABI {abi}: filesystem and TCP connect"),
        Some(abi) => format!("ABI {abi}: filesystem"),
        None => "not available on this kernel".into(),
    }
}

fn layers(config: &Config, landlock_abi: Option<i64>) -> Vec<Layer> {
    let landlock = landlock_layer(landlock_abi);
    [
        (
            "namespaces",
            "user, pid, net, ipc, uts, cgroup (bubblewrap)".to_owned(),
        ),
        (
            "uid",
            format!("jobs run as {}:{}", config.sandbox_uid, config.sandbox_gid),
        ),
        (
            "seccomp",
            format!(
                "{} rules: EPERM, clone3 ENOSYS, other ABIs refused",
                seccomp::RULE_COUNT
            ),
        ),
        ("landlock", landlock),
    ]
    .into_iter()
    .map(|(name, detail)| Layer {
        name: name.into(),
        detail,
    })
    .collect()
}

/// `data` in an anonymous memory file, rewound for bwrap to read.
fn memfd(name: &std::ffi::CStr, data: &[u8]) -> std::io::Result<OwnedFd> {
    let fd = nix::sys::memfd::memfd_create(name, nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(data)?;
    file.rewind()?;
    Ok(file.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// README: landlock is best effort, and `/health` says what the kernel
    /// enforces: each ABI step's rights (filesystem from 1, TCP connect from 4,
    /// signal and abstract-socket scoping from 6), or nothing without landlock.
    #[test]
    fn the_landlock_layer_names_what_each_abi_enforces() {
        let said: Vec<String> = [None, Some(1), Some(3), Some(4), Some(5), Some(6), Some(7)]
            .into_iter()
            .map(landlock_layer)
            .collect();
        assert_eq!(
            said,
            [
                "not available on this kernel",
                "ABI 1: filesystem",
                "ABI 3: filesystem",
                "ABI 4: filesystem and TCP connect",
                "ABI 5: filesystem and TCP connect",
                "ABI 6: filesystem, TCP connect, signals and abstract sockets scoped to the job",
                "ABI 7: filesystem, TCP connect, signals and abstract sockets scoped to the job",
            ]
        );
    }
}
