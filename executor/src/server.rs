//! The executor's socket: who may connect, the hello, and one request per connection.
//!
//! The executor owns job policy: a job's defaults and maxima, how many run at once,
//! how many may wait and for how long, and what happens to them at shutdown. The
//! frontend learns when a job starts from its [`Response::Started`] frame and counts
//! the job's deadline from there.

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pysandbox_shared::text::shown;
use pysandbox_shared::{
    is_session_id, ExecutorStatus, FilesEnd, JobError, JobSpec, Request, Response,
    ServerConnection, ServerReceiver, ServerSender, SessionCall, SessionSpec, SessionState,
    Started,
};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, info_span, warn, Instrument};

use crate::cgroup::{self, Cgroups};
use crate::config::Config;
use crate::error::{chain, Error};
use crate::host_watch;
use crate::jail::{self, Jail};
use crate::job::{Frames, Remains, Resolved, Runner};
use crate::metrics::{JobTally, Metrics};
use crate::pool::Pool;
use crate::proxy::ask::{Answers, AskLink};
use crate::session::{Live, Sessions};
use crate::template;
use crate::workdir;

/// How long a peer has to say hello, and then to send its request.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one frame may take to reach a peer that does not read: past it the peer
/// counts as gone, and its job is killed.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long jobs killed at the end of the shutdown grace get to send their answer.
const LAST_WORDS: Duration = Duration::from_secs(5);
/// Frames of one job waiting for the socket: with [`pysandbox_shared::MAX_CHUNK_BYTES`]
/// each, a job holds at most 512 KiB of its output and files in the executor.
const FRAME_QUEUE: usize = 8;

/// Shared state of the serving executor.
#[derive(Debug)]
struct Executor {
    runner: Arc<Runner>,
    pool: Pool,
    sessions: Arc<Sessions>,
    /// Job slots; closed at shutdown, which turns away every job still waiting.
    slots: Semaphore,
    running: AtomicU32,
    queued: AtomicU32,
    max_jobs: u32,
    max_queued: u32,
    queue_timeout: Duration,
    allowed_uids: Vec<u32>,
    metrics: Arc<Metrics>,
    /// Cancelled when the shutdown grace is over: running jobs are killed and told so.
    stopping: CancellationToken,
}

/// Prepares the state dir and jail, then serves `config.socket` until `shutdown`
/// resolves. Then it takes no new connection, turns away jobs still waiting for a
/// slot, gives running jobs `shutdown_grace` to finish, and kills the rest, telling
/// their peers the executor is shutting down.
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
    let jail = Arc::new(jail::Current::new(Jail::new(&config)?));
    let templates = template::start(&config, cgroups.as_ref(), &jail);
    // Forked jobs need no warm jails; jobs with network always start cold.
    tokio::spawn(host_watch::watch(
        config.clone(),
        Arc::clone(&jail),
        templates.clone(),
    ));
    let fork_server = templates.is_some();
    let warm_pool_size = if fork_server {
        0
    } else {
        config.warm_pool_size
    };
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
    let metrics = Arc::new(Metrics::default());
    let executor = Arc::new(Executor {
        runner: Arc::new(Runner::new(
            &config,
            jail,
            templates,
            cgroups,
            Arc::clone(&metrics),
        )),
        pool: Pool::new(warm_pool_size),
        sessions: Arc::new(Sessions::new(config.sessions.clone())),
        slots: Semaphore::new(config.max_jobs as usize),
        running: AtomicU32::new(0),
        queued: AtomicU32::new(0),
        max_jobs: config.max_jobs,
        max_queued: config.max_queued_jobs,
        queue_timeout: config.queue_timeout,
        allowed_uids,
        metrics,
        stopping: CancellationToken::new(),
    });
    info!(socket = %config.socket.display(), max_jobs = config.max_jobs, warm_pool_size, fork_server, "listening on {}", config.socket.display());

    // Every connection holds one of these: past the cap, new ones wait in the
    // listen backlog instead of costing descriptors and memory.
    let connections = Arc::new(Semaphore::new(config.max_connections as usize));
    let tasks = TaskTracker::new();
    let refill = tokio::spawn(Arc::clone(&executor).refill());
    // The first forked jobs find their kits made; each job's cleanup makes more.
    let runner = Arc::clone(&executor.runner);
    tokio::task::spawn_blocking(move || runner.make_kits());
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let executor = Arc::clone(&executor);
                    tasks.spawn(async move {
                        executor.serve(stream).await;
                        drop(permit);
                    });
                }
                // Out of descriptors and the like: back off instead of spinning.
                Err(e) => {
                    error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    // New connections now wait in the backlog for the next executor (systemd keeps
    // the socket); jobs that have not started are refused so they can go there.
    drop(listener);
    info!("shutting down: no new connections; jobs waiting for a slot are turned away");
    refill.abort();
    executor.slots.close();
    tasks.close();
    if tokio::time::timeout(config.shutdown_grace, tasks.wait())
        .await
        .is_err()
    {
        warn!("jobs still running after the shutdown grace are killed");
        executor.stopping.cancel();
        let _ = tokio::time::timeout(LAST_WORDS, tasks.wait()).await;
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
        let mut conn = match tokio::time::timeout(PEER_TIMEOUT, ServerConnection::accept(stream))
            .await
        {
            Ok(Ok(Some(conn))) => conn,
            Ok(Ok(None)) | Err(_) => return,
            Ok(Err(e)) => return warn!(error = %chain(&e), uid, "hello exchange failed; refused"),
        };
        let request = match tokio::time::timeout(PEER_TIMEOUT, conn.recv()).await {
            Ok(Ok(Some(request))) => request,
            Ok(Ok(None)) | Err(_) => return,
            Ok(Err(e)) => return warn!(error = %chain(&e), uid, "unreadable request"),
        };
        let answer = |answer: Result<Response, JobError>| answer.unwrap_or_else(Response::Failed);
        let served = match request {
            Request::Run(spec) => {
                let span = info_span!("job", request_id = %shown(&spec.request_id, 64));
                self.run(conn, Work::Job(spec)).instrument(span).await
            }
            Request::RunInSession(call) => {
                let span = info_span!("call", request_id = %shown(&call.spec.request_id, 64));
                self.run(conn, Work::Call(call)).instrument(span).await
            }
            Request::Status => conn
                .send(&Response::Status(self.status()))
                .await
                .map_err(Error::from),
            Request::OpenSession(spec) => {
                let span = info_span!("session", request_id = %shown(&spec.request_id, 64));
                let opened = self.open_session(&spec).instrument(span).await;
                let response = answer(opened.map(Response::Session));
                conn.send(&response).await.map_err(Error::from)
            }
            Request::DescribeSession(id) => {
                let state = self.known(&id).and_then(|()| self.sessions.describe(&id));
                let response = answer(state.map(Response::Session));
                conn.send(&response).await.map_err(Error::from)
            }
            Request::CloseSession(id) => {
                let closed = match self.known(&id) {
                    Ok(()) => self.sessions.close(&id).await,
                    Err(e) => Err(e),
                };
                let response = answer(closed.map(|()| Response::SessionClosed));
                conn.send(&response).await.map_err(Error::from)
            }
            Request::Hello(_) | Request::Answer(_) => {
                warn!(kind = request.kind(), "protocol violation: not a request");
                let reason = format!("a {} message instead of a request", request.kind());
                conn.send(&Response::Failed(JobError::Protocol { reason }))
                    .await
                    .map_err(Error::from)
            }
        };
        if let Err(e) = served {
            warn!(error = %chain(&e), uid, "connection ended with an error");
        }
    }

    fn status(&self) -> ExecutorStatus {
        ExecutorStatus {
            running_jobs: self.running.load(Ordering::Relaxed),
            max_jobs: self.max_jobs,
            enforcement: self.runner.enforcement(),
            isolation: self.runner.isolation(),
            warm_jails: self.pool.waiting() as u32,
            queued_jobs: self.queued.load(Ordering::Relaxed),
            sessions: self.sessions.open_count(),
            metrics: self.metrics.snapshot(),
        }
    }

    /// Runs one job, sending its frames as they come. Anything but an answer to
    /// the ask callback's questions arriving from the peer meanwhile means it is
    /// gone or broken, and so does a frame it does not take within
    /// [`SEND_TIMEOUT`]: the job is then dropped, which kills its jail and removes
    /// its work dir.
    async fn run(&self, conn: ServerConnection<UnixStream>, work: Work) -> Result<(), Error> {
        let (sender, mut receiver) = conn.split();
        let (frames, outgoing) = mpsc::channel(FRAME_QUEUE);
        let tally = Arc::new(JobTally::new(Arc::clone(&self.metrics)));
        let mut writer = tokio::spawn(send_all(outgoing, sender, Arc::clone(&tally)));
        let answers = Arc::new(Answers::default());
        let link = AskLink::new(&frames, Arc::clone(&answers));
        let job = async {
            let (ran, leftover) = match work {
                Work::Job(spec) => match self.job(&spec, &frames, link).await {
                    Ok(Answered { files, leftover }) => (Ok(files), Some(leftover)),
                    Err(refusal) => (Err(refusal), None),
                },
                Work::Call(call) => (self.call(call, &frames).await, None),
            };
            let frame = match ran {
                Ok(files) => Response::Finished(files),
                Err(refusal) => Response::Failed(refusal),
            };
            let _ = frames.send(frame).await;
            drop(frames);
            leftover
        };
        tokio::pin!(job);
        let leftover = tokio::select! {
            leftover = &mut job => leftover,
            () = peer_gone(&mut receiver, &answers) => {
                writer.abort();
                tally.peer_gone();
                info!("peer went away; job killed");
                return Ok(());
            }
            sent = &mut writer => {
                tally.peer_gone();
                warn!("the peer stopped taking frames; job killed");
                return sent.map_err(Error::Sender)?;
            }
        };
        // Everything is queued: wait until it has left, or the peer is gone.
        let sent = tokio::select! {
            sent = &mut writer => sent.map_err(Error::Sender)?,
            () = peer_gone(&mut receiver, &answers) => {
                writer.abort();
                Ok(())
            }
        };
        if let Some(leftover) = leftover {
            leftover.remove(&self.runner).await;
        }
        sent
    }

    /// The job's life from the queue to its last file: what comes after its frames
    /// is the last frame, [`Response::Finished`] or [`Response::Failed`].
    async fn job(
        &self,
        spec: &JobSpec,
        frames: &Frames,
        asks: AskLink,
    ) -> Result<Answered<'_>, JobError> {
        let mut resolved = self.runner.resolve(spec)?;
        if let Some(policy) = &mut resolved.network {
            policy.link_asks(asks);
        }
        let disk_mb = resolved.limits.disk_mb;
        let slot = self.admit().await?;
        let started = Started {
            timeout_ms: resolved.timeout_ms,
        };
        if frames.send(Response::Started(started)).await.is_err() {
            return Err(JobError::ShuttingDown);
        }
        let ran = tokio::select! {
            ran = self.start(spec, resolved, frames) => ran,
            () = self.stopping.cancelled() => {
                warn!("killed at the end of the shutdown grace");
                return Err(JobError::ShuttingDown);
            }
        };
        match ran {
            Ok((files, remains)) => Ok(Answered {
                files,
                leftover: Leftover::new(remains, slot),
            }),
            Err(Error::InputsDoNotFit) => Err(JobError::Rejected {
                field: "files".into(),
                reason: format!(
                    "do not fit in the job's disk limit of {disk_mb} MiB (limits.diskMb)"
                ),
            }),
            Err(e) => {
                error!(error = %chain(&e), "job did not run");
                Err(JobError::JailSetup { reason: chain(&e) })
            }
        }
    }

    /// A call in a session, from the queue to its last file, as [`Executor::job`].
    async fn call(&self, call: SessionCall, frames: &Frames) -> Result<FilesEnd, JobError> {
        self.known(&call.session_id)?;
        let admitted =
            self.sessions
                .admit(&self.runner, &call.session_id, call.spec, frames.clone())?;
        let _slot = self.admit().await?;
        let started = Started {
            timeout_ms: admitted.timeout_ms(),
        };
        if frames.send(Response::Started(started)).await.is_err() {
            return Err(JobError::ShuttingDown);
        }
        tokio::select! {
            ran = admitted.run() => ran,
            () = self.stopping.cancelled() => Err(JobError::ShuttingDown),
        }
    }

    /// Starts a session: its jail set up like a job's, within a job slot, and its
    /// interpreter waiting for its first call.
    async fn open_session(&self, spec: &SessionSpec) -> Result<SessionState, JobError> {
        let (limits, idle_timeout, network) = self.sessions.resolve(&self.runner, spec)?;
        let reservation = self.sessions.reserve(limits.memory_mb)?;
        let _slot = self.admit().await?;
        let started = tokio::select! {
            started = Live::start(&self.runner, &limits, network) => started,
            () = self.stopping.cancelled() => return Err(JobError::ShuttingDown),
        };
        let live = started.map_err(|e| {
            error!(error = %chain(&e), "session did not start");
            JobError::JailSetup { reason: chain(&e) }
        })?;
        Ok(reservation.open(Arc::clone(&self.runner), live, limits, idle_timeout))
    }

    /// Refuses an id no session could have, before it reaches a map or a log.
    fn known(&self, id: &str) -> Result<(), JobError> {
        if is_session_id(id) {
            Ok(())
        } else {
            Err(JobError::SessionNotFound)
        }
    }

    async fn start(
        &self,
        spec: &JobSpec,
        resolved: Resolved,
        frames: &Frames,
    ) -> Result<(FilesEnd, Remains), Error> {
        // A job that may use the network needs its proxy before its jail: a cold one.
        let warm = match resolved.network {
            None => self.pool.take(),
            Some(_) => None,
        };
        self.runner.run(spec, resolved, warm, frames).await
    }

    /// A job slot, at once or after a wait in the bounded queue. A job that cannot
    /// get one in time is told the truth (busy, retry later), never left to time out.
    async fn admit(&self) -> Result<Slot<'_>, JobError> {
        let permit = match self.slots.try_acquire() {
            Ok(permit) => permit,
            Err(tokio::sync::TryAcquireError::Closed) => return Err(JobError::ShuttingDown),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                let busy = JobError::Busy {
                    retry_after_secs: 1,
                };
                let Some(_queued) = Counted::up_to(&self.queued, self.max_queued) else {
                    info!("job refused: every slot is taken and the queue is full");
                    return Err(busy);
                };
                match tokio::time::timeout(self.queue_timeout, self.slots.acquire()).await {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_closed)) => return Err(JobError::ShuttingDown),
                    Err(_) => {
                        info!("job refused: no slot freed within the queue timeout");
                        return Err(busy);
                    }
                }
            }
        };
        let running = Counted::up_to(&self.running, u32::MAX);
        Ok(Slot {
            _permit: permit,
            running,
            wake: &self.pool,
        })
    }

    /// Keeps the pool full, but never ahead of admitted work: a warm jail is only set
    /// up while a job slot is free, and it holds that slot while it starts.
    async fn refill(self: Arc<Self>) {
        loop {
            while self.pool.wants_more() {
                let Ok(_slot) = self.slots.try_acquire() else {
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

/// What a connection runs: a job of its own, or a call in a session.
enum Work {
    Job(JobSpec),
    Call(SessionCall),
}

/// A job that ran to its end: what its last frame says, and what is left of it.
struct Answered<'a> {
    files: FilesEnd,
    leftover: Leftover<'a>,
}

/// What is left of a job whose processes are gone, removed once its answer is
/// out: the job keeps its slot until then (so cleanups cannot pile up), but no
/// longer counts as running.
struct Leftover<'a> {
    remains: Remains,
    slot: Slot<'a>,
}

impl<'a> Leftover<'a> {
    fn new(remains: Remains, mut slot: Slot<'a>) -> Leftover<'a> {
        slot.running = None;
        Leftover { remains, slot }
    }

    /// Removes the job's tmpfs and cgroups off the async workers (this task just
    /// woke the one sending the answer), makes the next forked job's kit there
    /// too, then frees its slot.
    async fn remove(self, runner: &Arc<Runner>) {
        let Leftover { remains, slot } = self;
        let runner = Arc::clone(runner);
        let _ = tokio::task::spawn_blocking(move || {
            drop(remains);
            runner.make_kits();
        })
        .await;
        drop(slot);
    }
}

/// A running job's hold on its slot. However the job ends — normally, killed, or
/// dropped because its peer went away — the slot is freed and the pool told it may
/// refill.
struct Slot<'a> {
    _permit: SemaphorePermit<'a>,
    running: Option<Counted<'a>>,
    wake: &'a Pool,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.wake.wake.notify_one();
    }
}

/// Counts something for as long as it lives.
struct Counted<'a>(&'a AtomicU32);

impl<'a> Counted<'a> {
    /// Counts one more, unless `max` are counted already.
    fn up_to(counter: &'a AtomicU32, max: u32) -> Option<Counted<'a>> {
        counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Counted(counter))
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Hands the peer's answers to the ask callback's questions to `answers`, and
/// returns once anything else arrives (or nothing more can): the peer is gone.
async fn peer_gone(receiver: &mut ServerReceiver<UnixStream>, answers: &Answers) {
    while let Ok(Some(Request::Answer(answer))) = receiver.recv().await {
        answers.answer(answer);
    }
}

/// Sends a job's frames to its peer as they are queued, each within
/// [`SEND_TIMEOUT`], until the job drops its end of the queue; `tally` counts the
/// job's outcome from the frames its peer was sent.
async fn send_all(
    mut outgoing: mpsc::Receiver<Response>,
    mut sender: ServerSender<UnixStream>,
    tally: Arc<JobTally>,
) -> Result<(), Error> {
    while let Some(frame) = outgoing.recv().await {
        match tokio::time::timeout(SEND_TIMEOUT, sender.send(&frame)).await {
            Ok(sent) => sent?,
            Err(_) => return Err(Error::PeerStalled),
        }
        tally.sent(&frame);
    }
    Ok(())
}
