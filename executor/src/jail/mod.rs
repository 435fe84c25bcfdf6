//! The jail a job runs in: bubblewrap namespaces and mounts, entered as the sandbox uid
//! through `jail-init`.
//!
//! Setting up a jail ([`Jail::spawn`]) is kept apart from the job it runs, so that a
//! later warm pool can prepare jails ahead of their jobs.

pub mod bwrap;
mod etc;
pub mod init;

use std::ffi::OsString;
use std::io::{Seek, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::net::unix::pipe;
use tokio::process::{Child, Command};

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
    python: PathBuf,
    socat: PathBuf,
    fixed_args: Vec<OsString>,
    uid: u32,
    gid: u32,
}

/// A started jail: the bwrap process, its output pipes, and the readiness pipe.
#[derive(Debug)]
pub struct Started {
    pub child: Child,
    /// Yields one byte once jail-init runs, or EOF if the jail never got that far.
    pub ready: pipe::Receiver,
}

impl Jail {
    /// Stages the jail's `/etc` under the state dir and precomputes bwrap's argv.
    pub fn new(config: &Config) -> Result<Jail, Error> {
        let init = std::env::current_exe().map_err(Error::setup("locate", "/proc/self/exe"))?;
        let mut ro_binds = vec![(PathBuf::from("/usr"), PathBuf::from("/usr"))];
        let mut symlinks = Vec::new();
        for dir in ROOT_LIB_DIRS.iter().map(Path::new) {
            match std::fs::read_link(dir) {
                Ok(target) => symlinks.push((target, dir.to_owned())),
                Err(_) if dir.is_dir() => ro_binds.push((dir.to_owned(), dir.to_owned())),
                Err(_) => {}
            }
        }
        ro_binds.extend(config.ro_binds.iter().map(|p| (p.clone(), p.clone())));
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
        Ok(Jail {
            bwrap: config.bwrap.clone(),
            python: config.python.clone(),
            socat: config.network.socat.clone(),
            fixed_args: bwrap::fixed_args(&layout),
            uid: config.sandbox_uid,
            gid: config.sandbox_gid,
        })
    }

    /// Starts a jail that runs `code` in `dir`, inside the cgroups whose `cgroup.procs`
    /// descriptors are `cgroup_procs`, with `rlimits` on every process. With a
    /// `proxy_dir` (holding the job's egress proxy socket), the job may use the
    /// network through it; without, it has none.
    ///
    /// The returned child is killed when dropped. `stdin` is the job's standard input
    /// (`Stdio::null()` for none); stdout and stderr are piped.
    pub fn spawn(
        &self,
        dir: &WorkDir,
        code: &str,
        stdin: Stdio,
        cgroup_procs: &[std::os::fd::RawFd],
        rlimits: &[Rlimit],
        proxy_dir: Option<&Path>,
    ) -> Result<Started, Error> {
        if cgroup_procs.len() > MAX_CGROUPS || rlimits.len() > MAX_RLIMITS {
            return Err(Error::Jail("too many cgroups or rlimits".into()));
        }
        let mut plan_cgroups = [-1; MAX_CGROUPS];
        plan_cgroups[..cgroup_procs.len()].copy_from_slice(cgroup_procs);
        let mut plan_rlimits = [None; MAX_RLIMITS];
        for (slot, &limit) in plan_rlimits.iter_mut().zip(rlimits) {
            *slot = Some(limit);
        }
        let code = code_fd(code).map_err(|e| Error::Jail(format!("cannot stage code: {e}")))?;
        let (ready_tx, ready) =
            pipe::pipe().map_err(|e| Error::Jail(format!("cannot create pipe: {e}")))?;
        let ready_tx = ready_tx
            .into_blocking_fd()
            .map_err(|e| Error::Jail(format!("cannot create pipe: {e}")))?;
        let mut cmd = Command::new(&self.bwrap);
        cmd.args(&self.fixed_args)
            .args(bwrap::job_args(
                &dir.work(),
                &dir.tmp(),
                &self.python,
                proxy_dir.map(|proxy_dir| bwrap::Egress {
                    proxy_dir,
                    socat: &self.socat,
                }),
            ))
            // bwrap's pid 1 keeps its own environment, which the job can read in
            // /proc/1/environ: it gets none of ours.
            .env_clear()
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        harden_spawn(
            &mut cmd,
            SpawnPlan {
                uid: self.uid,
                gid: self.gid,
                parent: std::process::id() as libc::pid_t,
                fds: [
                    (code.as_raw_fd(), bwrap::CODE_FD),
                    (ready_tx.as_raw_fd(), bwrap::READY_FD),
                ],
                cgroup_procs: plan_cgroups,
                rlimits: plan_rlimits,
            },
        );
        let child = cmd
            .spawn()
            .map_err(|e| Error::Jail(format!("cannot start {:?}: {e}", self.bwrap)))?;
        // Our copies close here, so the readiness pipe sees EOF when the jail's do.
        drop((code, ready_tx));
        Ok(Started { child, ready })
    }
}

/// The job's code in an anonymous memory file, rewound for bwrap to read.
fn code_fd(code: &str) -> std::io::Result<OwnedFd> {
    let fd = nix::sys::memfd::memfd_create(
        c"pysandbox-code",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )?;
    let mut file = std::fs::File::from(fd);
    file.write_all(code.as_bytes())?;
    file.rewind()?;
    Ok(file.into())
}
