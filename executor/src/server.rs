//! The executor's socket: who may connect, the hello, and one request per connection.

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pysandbox_shared::{
    Connection, ExecutorStatus, Hello, JobError, JobSpec, Request, Response, PROTOCOL_VERSION,
};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::{error, info, info_span, warn, Instrument};

use crate::cgroup::{self, Cgroups};
use crate::config::Config;
use crate::error::{chain, Error};
use crate::jail::Jail;
use crate::job::{Resolved, Runner};
use crate::pool::Pool;
use crate::workdir;

/// How long a peer has to say hello, and then to send its request.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long running jobs may go on after a shutdown signal before they are killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

type Conn = Connection<UnixStream>;

/// Shared state of the serving executor.
#[derive(Debug)]
struct Executor {
    runner: Runner,
    pool: Pool,
    permits: Semaphore,
    running: AtomicU32,
    max_jobs: u32,
    allowed_uids: Vec<u32>,
}

/// Prepares the state dir and jail, then serves `config.socket` until `shutdown`
/// resolves; running jobs get [`SHUTDOWN_GRACE`] to finish.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    workdir::prepare(&config.state_dir)?;
    let cgroups = Cgroups::detect(&cgroup::instance_name(&config.state_dir));
    match &cgroups {
        Some(cgroups) => {
            cgroups.sweep();
            info!(version = ?cgroups.version(), "per-job cgroups in use");
        }
        None => warn!(
            "no usable cgroup hierarchy (memory and pids controllers): falling back to \
             RLIMIT_AS and a per-uid RLIMIT_NPROC"
        ),
    }
    let jail = Jail::new(&config)?;
    let activated = crate::sys::activated_listener().map_err(Error::setup(
        "adopt the socket passed in LISTEN_FDS",
        &config.socket,
    ))?;
    let (listener, owns_socket_file) = match activated {
        // systemd owns the socket file and keeps it, with its backlog, across restarts.
        Some(listener) => {
            listener
                .set_nonblocking(true)
                .map_err(Error::setup("configure", &config.socket))?;
            let listener =
                UnixListener::from_std(listener).map_err(Error::setup("adopt", &config.socket))?;
            info!("socket-activated: serving the socket passed by the service manager");
            (listener, false)
        }
        None => (bind(&config.socket, config.socket_group)?, true),
    };
    let own_uid = nix::unistd::getuid().as_raw();
    let mut allowed_uids = vec![0, own_uid];
    allowed_uids.extend(&config.allow_uids);
    let executor = Arc::new(Executor {
        runner: Runner::new(&config, jail, cgroups),
        pool: Pool::new(config.warm_pool_size),
        permits: Semaphore::new(config.max_jobs as usize),
        running: AtomicU32::new(0),
        max_jobs: config.max_jobs,
        allowed_uids,
    });
    info!(socket = %config.socket.display(), max_jobs = config.max_jobs, "listening on {}", config.socket.display());

    let tasks = TaskTracker::new();
    let refill = tokio::spawn(Arc::clone(&executor).refill());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let executor = Arc::clone(&executor);
                    tasks.spawn(async move { executor.serve(stream).await });
                }
                // Out of descriptors and the like: back off instead of spinning.
                Err(e) => {
                    error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    info!("shutting down: no new connections");
    refill.abort();
    tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait())
        .await
        .is_err()
    {
        warn!("jobs still running after the grace period are killed");
    }
    if owns_socket_file {
        let _ = std::fs::remove_file(&config.socket);
    }
    Ok(())
}

/// Binds the socket: a stale socket file is replaced, any other file is left alone.
/// The file is created under the process umask (0077) and only then opened to the
/// group, so there is no moment when others could connect.
fn bind(path: &Path, group: Option<u32>) -> Result<UnixListener, Error> {
    // Directories made here, under the executor's umask (0077), would keep the
    // frontend from even reaching the socket: they are opened to traversal, and the
    // socket's own mode and group guard it.
    let missing: Vec<&Path> = path
        .ancestors()
        .skip(1)
        .take_while(|dir| !dir.exists())
        .collect();
    for dir in missing.into_iter().rev() {
        std::fs::create_dir(dir).map_err(Error::setup("create", dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(Error::setup("chmod", dir))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(Error::setup("remove stale socket", path))?;
        }
        Ok(_) => {
            return Err(Error::setup("replace (not a socket)", path)(
                std::io::ErrorKind::AlreadyExists.into(),
            ))
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(Error::setup("bind", path))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(Error::setup("chown", path))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(Error::setup("chmod", path))?;
    Ok(listener)
}

impl Executor {
    async fn serve(&self, stream: UnixStream) {
        // The socket's mode already keeps others out; checking the kernel's word on
        // who is calling also covers a socket exposed by mistake (bind mounts, 0777).
        let uid = match stream.peer_cred() {
            Ok(cred) => cred.uid(),
            Err(e) => return warn!(error = %e, "cannot read peer credentials; refused"),
        };
        if !self.allowed_uids.contains(&uid) {
            return warn!(uid, "connection from a uid that is not allowed; refused");
        }
        let mut conn = Connection::server(stream);
        if let Err(e) = self.exchange(&mut conn).await {
            warn!(error = %e, uid, "connection ended with an error");
        }
    }

    async fn exchange(&self, conn: &mut Conn) -> Result<(), Error> {
        let hello = match tokio::time::timeout(PEER_TIMEOUT, conn.recv()).await {
            Ok(Ok(Some(Request::Hello(hello)))) => hello,
            Ok(Ok(None)) | Err(_) => return Ok(()),
            Ok(Ok(Some(other))) => {
                return refuse(conn, format!("expected hello, got {other:?}")).await
            }
            Ok(Err(e)) => return Err(e.into()),
        };
        conn.send(&Response::Hello(Hello::CURRENT)).await?;
        if hello.version != PROTOCOL_VERSION {
            let mismatch = JobError::VersionMismatch {
                executor: PROTOCOL_VERSION,
                frontend: hello.version,
            };
            warn!(%mismatch, "refusing a peer");
            return Ok(conn.send(&Response::Failed(mismatch)).await?);
        }
        let request = match tokio::time::timeout(PEER_TIMEOUT, conn.recv()).await {
            Ok(Ok(Some(request))) => request,
            Ok(Ok(None)) | Err(_) => return Ok(()),
            Ok(Err(e)) => return Err(e.into()),
        };
        match request {
            Request::Run(spec) => {
                let span = info_span!("job", request_id = %printable(&spec.request_id));
                self.run(conn, spec).instrument(span).await
            }
            Request::Status => Ok(conn.send(&Response::Status(self.status())).await?),
            Request::Hello(_) => refuse(conn, "a second hello".into()).await,
        }
    }

    fn status(&self) -> ExecutorStatus {
        ExecutorStatus {
            running_jobs: self.running.load(Ordering::Relaxed),
            max_jobs: self.max_jobs,
            enforcement: self.runner.enforcement(),
            isolation: self.runner.isolation(),
            warm_jails: self.pool.waiting() as u32,
        }
    }

    /// Runs one job and answers with its result. Anything arriving from the peer while
    /// the job waits or runs means it is gone or broken: the job is then dropped, which
    /// kills its jail and removes its work dir.
    async fn run(&self, conn: &mut Conn, spec: JobSpec) -> Result<(), Error> {
        let resolved = match self.runner.resolve(&spec) {
            Ok(resolved) => resolved,
            Err(rejected) => return Ok(conn.send(&Response::Failed(rejected)).await?),
        };
        let disk_mb = resolved.limits.disk_mb;
        let outcome = tokio::select! {
            outcome = self.admitted_run(&spec, resolved) => outcome,
            _ = conn.recv::<Request>() => {
                info!("peer went away; job killed");
                return Ok(());
            }
        };
        let response = match outcome {
            Ok(result) => {
                info!(
                    exit_code = result.exit_code,
                    signal = result.signal.as_deref(),
                    limit = result.limit_exceeded.map(|l| l.as_str()),
                    wall_ms = result.usage.wall_ms,
                    cpu_ms = result.usage.cpu_ms,
                    peak_memory_bytes = result.usage.peak_memory_bytes,
                    "job finished"
                );
                Response::Finished(result)
            }
            Err(Error::InputsDoNotFit) => Response::Failed(JobError::Rejected {
                field: "files".into(),
                reason: format!(
                    "do not fit in the job's disk limit of {} MiB (limits.diskMb)",
                    disk_mb
                ),
            }),
            Err(e) => {
                error!(error = %chain(&e), "job did not run");
                Response::Failed(JobError::JailSetup { reason: chain(&e) })
            }
        };
        Ok(conn.send(&response).await?)
    }

    async fn admitted_run(
        &self,
        spec: &JobSpec,
        resolved: Resolved,
    ) -> Result<pysandbox_shared::JobResult, Error> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| Error::ShuttingDown)?;
        self.running.fetch_add(1, Ordering::Relaxed);
        let _running = RunningGuard(&self.running);
        // A job that may use the network needs its proxy before its jail: a cold one.
        let warm = match resolved.network {
            None => self.pool.take(),
            Some(_) => None,
        };
        let result = self.runner.run(spec, resolved, warm).await;
        // The slot is free again: the pool may refill now, not while the job ran.
        drop(permit);
        self.pool.wake.notify_one();
        result
    }

    /// Keeps the pool full, but never ahead of admitted work: a warm jail is only set
    /// up while a job slot is free, and it holds that slot while it starts.
    async fn refill(self: Arc<Self>) {
        loop {
            while self.pool.wants_more() {
                let Ok(_slot) = self.permits.try_acquire() else {
                    break;
                };
                match self.runner.prepare_warm().await {
                    Ok(jail) => self.pool.put(jail),
                    Err(e) => {
                        warn!(error = %chain(&e), "cannot set up a warm jail; retrying in a second");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            self.pool.wake.notified().await;
        }
    }
}

/// Counts a job as running for as long as it lives, however it ends.
struct RunningGuard<'a>(&'a AtomicU32);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn refuse(conn: &mut Conn, reason: String) -> Result<(), Error> {
    warn!(%reason, "protocol violation");
    Ok(conn
        .send(&Response::Failed(JobError::Protocol { reason }))
        .await?)
}

/// A peer-chosen id, cut to a length fit for a log line and without control
/// characters, which could forge log lines.
fn printable(id: &str) -> String {
    id.chars().filter(|c| !c.is_control()).take(64).collect()
}
