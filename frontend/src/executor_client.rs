//! Talking to pysandbox-executor over its Unix socket.
//!
//! Every exchange opens a fresh connection, so a dead one is never cached and the
//! frontend recovers by itself as soon as the executor is back. One connection
//! carries one job: dropping it (for instance because the HTTP client went away and
//! hyper dropped the handler) makes the executor kill the job.
//!
//! The executor owns job policy. It says when a job starts (after its queue, which
//! it bounds and answers "busy" for), and the job's deadline counts from there.
//!
//! A job is started ([`ExecutorClient::start`]: every refusal comes before this
//! returns), then its frames are taken one at a time ([`Running::next`]), which a
//! live stream shows as they come and [`Running::finish`] only gathers: both see
//! the same [`Ran`].
//!
//! While a job runs, its egress proxy may ask about a target (an [`Ask`] frame):
//! the question is handed to a task of the job's, which calls the ask callback
//! ([`AskCaller`]) and sends the answer back on the job's connection, while the
//! job's frames go on being read.

use std::path::PathBuf;
use std::time::Duration;

use pysandbox_shared::{
    Ask, AskAnswer, AskOutcome, ClientConnection, ClientReceiver, ClientSender, ExecutorStatus,
    FilesEnd, HelloError, JobEnd, JobError, JobSpec, NetworkViolation, OutputChunk, ProtocolError,
    Request, Response, SessionCall, Started, Stream, Truncated, MAX_DISPLAYS, MAX_DISPLAYS_BYTES,
    MAX_OUTPUT_BYTES,
};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{timeout, Instant};
use tracing::{error, info, warn};

use crate::ask::AskCaller;
use crate::error::ApiError;
use crate::spool::{Produced, Spool};

/// How long connecting and the hello exchange may take before the executor counts
/// as unavailable (the contract's 3 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a job turned away by an executor that was shutting down waits for the
/// next one: with socket activation its connection waits in the backlog while the
/// old executor drains its running jobs.
const RESTART_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `/health` waits for the executor's status.
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a job may wait to start: the executor answers "busy" once its own queue
/// timeout (at most 120 s) is up, so this only guards against a hung executor.
const START_TIMEOUT: Duration = Duration::from_secs(150);

/// How long past the job's own wall-clock limit the result may take: the executor
/// needs time to set up the jail, kill the job, collect its files and clean up.
const RESULT_GRACE: Duration = Duration::from_secs(30);

/// Questions of one job waiting for their call: the executor sends at most its
/// `max_asks_per_job`; past this many waiting, a question is left unanswered (the
/// executor refuses it at its timeout).
const WAITING_QUESTIONS: usize = 64;

/// Connects to the executor on demand.
#[derive(Debug, Clone)]
pub struct ExecutorClient {
    socket: PathBuf,
    /// Calls the ask callback for running jobs; without it, every question is
    /// answered [`AskOutcome::Failed`] unasked.
    asks: Option<AskCaller>,
}

/// What the executor sent for a job that ran.
#[derive(Debug)]
pub struct Ran {
    /// How it ended.
    pub end: JobEnd,
    /// The head of its stdout, as the executor kept it (not necessarily UTF-8).
    pub stdout: Vec<u8>,
    /// The head of its stderr, likewise.
    pub stderr: Vec<u8>,
    /// The figures it showed, as PNGs.
    pub displays: Spool,
    /// The files it produced, when the job asked for them.
    pub files: Spool,
    /// What was not collected.
    pub skipped: FilesEnd,
}

/// What [`ExecutorClient::start`] runs.
#[derive(Debug, Clone)]
pub enum Job {
    /// A job in a fresh jail.
    Fresh(JobSpec),
    /// A call in a session.
    InSession(SessionCall),
}

impl ExecutorClient {
    /// A client for the executor listening on `socket`.
    pub fn new(socket: PathBuf) -> Self {
        ExecutorClient { socket, asks: None }
    }

    /// The same client, answering jobs' questions with `caller`.
    pub fn with_asks(self, caller: AskCaller) -> Self {
        ExecutorClient {
            asks: Some(caller),
            ..self
        }
    }

    /// Sends one job and waits until it starts: every refusal (busy, rejected, no
    /// executor) is the error. A job the executor turned away before it started,
    /// because it was shutting down, is sent once more on a new connection: with
    /// socket activation that one waits for the next executor.
    pub async fn start(&self, job: Job) -> Result<Running, ApiError> {
        match self.start_once(job.clone(), CONNECT_TIMEOUT).await {
            Err(Attempt::NotStarted) => {
                info!("the executor was shutting down before the job started; sending it again");
                let again = self.start_once(job, RESTART_TIMEOUT).await;
                again.map_err(|attempt| match attempt {
                    Attempt::NotStarted => ApiError::ExecutorRestarting,
                    Attempt::Failed(e) => e,
                })
            }
            Err(Attempt::Failed(e)) => Err(e),
            Ok(running) => Ok(running),
        }
    }

    async fn start_once(&self, job: Job, connect_timeout: Duration) -> Result<Running, Attempt> {
        let (request_id, request) = match job {
            Job::Fresh(spec) => (spec.request_id.clone(), Request::Run(spec)),
            Job::InSession(call) => (call.spec.request_id.clone(), Request::RunInSession(call)),
        };
        let mut conn = self.connect(connect_timeout, &request).await?;
        let first = timeout(START_TIMEOUT, conn.recv()).await;
        let job_timeout = match first {
            Ok(Ok(Some(Response::Started(Started { timeout_ms })))) => {
                Duration::from_millis(timeout_ms.into())
            }
            Ok(Ok(Some(Response::Failed(JobError::ShuttingDown)))) => {
                return Err(Attempt::NotStarted)
            }
            Err(_) => {
                warn!("the job did not start within {START_TIMEOUT:?}; giving up on it");
                return Err(ApiError::ExecutorLost.into());
            }
            Ok(other) => return Err(unexpected(other, false).into()),
        };
        let (sender, conn) = conn.split();
        let (questions, waiting) = mpsc::channel(WAITING_QUESTIONS);
        let answering = tokio::spawn(answer_questions(
            waiting,
            sender,
            self.asks.clone(),
            request_id,
        ));
        Ok(Running {
            conn,
            questions,
            answering,
            deadline: Instant::now() + job_timeout + RESULT_GRACE,
            received: Receiving::default(),
            pending: None,
            display_open: false,
        })
    }

    /// Sends one of the session requests that the executor answers with one frame:
    /// open, describe, close. Refusals are the error.
    pub async fn session(&self, request: Request) -> Result<Response, ApiError> {
        let exchange = async {
            let mut conn = self.connect(CONNECT_TIMEOUT, &request).await?;
            match conn.recv().await {
                Ok(Some(Response::Failed(e))) => Err(job_error(e)),
                Ok(Some(response @ (Response::Session(_) | Response::SessionClosed))) => {
                    Ok(response)
                }
                other => Err(unexpected(other, false)),
            }
        };
        // Opening one may wait for a job slot, then start a jail.
        timeout(START_TIMEOUT, exchange).await.unwrap_or_else(|_| {
            warn!("the executor did not answer a session request within {START_TIMEOUT:?}");
            Err(ApiError::ExecutorLost)
        })
    }

    /// The executor's status, or `None` when it does not answer within 1 s.
    pub async fn status(&self) -> Option<ExecutorStatus> {
        let exchange = async {
            let mut conn = self.connect(STATUS_TIMEOUT, &Request::Status).await.ok()?;
            match conn.recv().await {
                Ok(Some(Response::Status(status))) => Some(status),
                Ok(Some(other)) => {
                    warn!(
                        "executor answered a status request with a {} message",
                        other.kind()
                    );
                    None
                }
                Ok(None) => {
                    warn!("executor closed the connection instead of sending its status");
                    None
                }
                Err(e) => {
                    warn!("could not read the executor's status: {e}");
                    None
                }
            }
        };
        match timeout(STATUS_TIMEOUT, exchange).await {
            Ok(status) => status,
            Err(_) => {
                warn!("executor did not send its status within {STATUS_TIMEOUT:?}");
                None
            }
        }
    }

    /// Connects, says hello with `request` right behind it, and takes the
    /// executor's hello, all within `limit`.
    async fn connect(
        &self,
        limit: Duration,
        request: &Request,
    ) -> Result<ClientConnection<UnixStream>, ApiError> {
        let socket = self.socket.display();
        let hello_failed = |e: HelloError| {
            match &e {
                HelloError::Version { .. } | HelloError::Refused(_) => {
                    error!(%socket, "{}; deploy matching versions", chain(&e))
                }
                _ => warn!(%socket, "hello exchange with the executor failed: {}", chain(&e)),
            }
            ApiError::ExecutorUnavailable
        };
        let opened = timeout(limit, async {
            let stream = UnixStream::connect(&self.socket).await.map_err(|e| {
                warn!(%socket, "cannot connect to the executor: {e}");
                ApiError::ExecutorUnavailable
            })?;
            ClientConnection::open(stream, Some(request))
                .await
                .map_err(hello_failed)
        });
        match opened.await {
            Ok(conn) => conn,
            Err(_) => {
                warn!(%socket, "executor did not complete its hello within {limit:?}");
                Err(ApiError::ExecutorUnavailable)
            }
        }
    }
}

/// A job that started: its connection, so dropping this kills the job.
#[derive(Debug)]
pub struct Running {
    conn: ClientReceiver<UnixStream>,
    /// Questions of the job's proxy, for `answering`.
    questions: mpsc::Sender<Ask>,
    /// Holds the connection's sending half: aborted with the job, so that the
    /// connection closes.
    answering: JoinHandle<()>,
    deadline: Instant,
    received: Receiving,
    /// What closed a display (a frame, the end, an error), taken after the display
    /// is shown.
    pending: Option<Result<Option<Response>, ProtocolError>>,
    /// Whether the last frame began a display or continued one.
    display_open: bool,
}

/// What a running job did next, in the order it happened.
#[derive(Debug)]
pub enum Progress {
    /// It wrote this (within its cap; also kept for the result).
    Output(OutputChunk),
    /// One of its streams passed its cap: the rest of it is dropped.
    Truncated(Truncated),
    /// It showed a figure, which is complete (a PNG).
    Display(Produced),
    /// Its egress proxy refused this request.
    Violation(NetworkViolation),
    /// It ended, and everything it produced is here.
    Finished(Box<Ran>),
}

impl Running {
    /// Waits for all of the job.
    pub async fn finish(mut self) -> Result<Ran, ApiError> {
        loop {
            if let Progress::Finished(ran) = self.next().await? {
                return Ok(*ran);
            }
        }
    }

    /// The job's next step; after [`Progress::Finished`], an error. Cancel-safe: its
    /// only wait is for the next frame, so a caller may race it with a timer.
    pub async fn next(&mut self) -> Result<Progress, ApiError> {
        loop {
            let frame = match self.pending.take() {
                Some(frame) => frame,
                None => match tokio::time::timeout_at(self.deadline, self.conn.recv()).await {
                    Ok(frame) => frame,
                    Err(_) => {
                        warn!("no result from the executor within the job's timeout and grace; giving up on the job");
                        return Err(ApiError::ExecutorLost);
                    }
                },
            };
            // A display is complete when the next frame is not more of it.
            if self.display_open && !matches!(frame, Ok(Some(Response::Data(_)))) {
                self.display_open = false;
                self.pending = Some(frame);
                if let Some(shown) = self.received.displays.last() {
                    return Ok(Progress::Display(shown));
                }
                continue;
            }
            let ran = &mut self.received;
            match frame {
                Ok(Some(Response::Output(chunk))) => {
                    ran.output(&chunk);
                    return Ok(Progress::Output(chunk));
                }
                Ok(Some(Response::Truncated(cut))) if ran.end.is_none() => {
                    return Ok(Progress::Truncated(cut))
                }
                Ok(Some(Response::Violation(violation))) if ran.end.is_none() => {
                    return Ok(Progress::Violation(violation))
                }
                Ok(Some(Response::Ask(ask))) if ran.end.is_none() => {
                    if self.questions.try_send(ask).is_err() {
                        warn!("too many questions of one job waiting for the ask callback; one is left unanswered");
                    }
                }
                Ok(Some(Response::Display(_))) if ran.end.is_none() => {
                    ran.displays.begin("display".into()).map_err(spool_failed)?;
                    self.display_open = true;
                }
                Ok(Some(Response::Ended(end))) if ran.end.is_none() => ran.end = Some(end),
                Ok(Some(Response::File(start))) if ran.end.is_some() => {
                    ran.files.begin(start.path).map_err(spool_failed)?
                }
                // Displays come while the job runs, files after it ended.
                Ok(Some(Response::Data(data))) => match ran.end {
                    None => ran.displays.append(&data),
                    Some(_) => ran.files.append(&data),
                }
                .map_err(spool_failed)?,
                Ok(Some(Response::Finished(skipped))) => {
                    let ran = std::mem::take(ran);
                    let Some(end) = ran.end else {
                        error!("the executor finished a job it never ended");
                        return Err(ApiError::Internal);
                    };
                    return Ok(Progress::Finished(Box::new(Ran {
                        end,
                        stdout: ran.stdout,
                        stderr: ran.stderr,
                        displays: ran.displays,
                        files: ran.files,
                        skipped,
                    })));
                }
                other => return Err(unexpected(other, true)),
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.answering.abort();
    }
}

/// Calls the ask callback for each of a job's questions, several at once, and
/// sends each answer as it comes, until the job is dropped.
async fn answer_questions(
    mut questions: mpsc::Receiver<Ask>,
    mut sender: ClientSender<UnixStream>,
    caller: Option<AskCaller>,
    request_id: String,
) {
    let mut calls = JoinSet::new();
    loop {
        tokio::select! {
            question = questions.recv() => {
                let Some(ask) = question else { return };
                let (caller, request_id) = (caller.clone(), request_id.clone());
                calls.spawn(async move {
                    let outcome = match caller {
                        Some(caller) => caller.call(&ask, &request_id).await,
                        None => AskOutcome::Failed,
                    };
                    AskAnswer { id: ask.id, outcome }
                });
            }
            Some(called) = calls.join_next(), if !calls.is_empty() => {
                let Ok(answer) = called else { continue };
                if let Err(e) = sender.send(&Request::Answer(answer)).await {
                    return warn!("cannot send the ask callback's answer to the executor: {e}");
                }
            }
        }
    }
}

/// How one attempt at a job failed.
#[derive(Debug)]
enum Attempt {
    /// The executor turned the job away before it started: it is shutting down.
    NotStarted,
    /// Anything else, as the client's answer.
    Failed(ApiError),
}

impl From<ApiError> for Attempt {
    fn from(e: ApiError) -> Self {
        Attempt::Failed(e)
    }
}

/// A job's frames as they come in.
#[derive(Debug)]
struct Receiving {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    end: Option<JobEnd>,
    displays: Spool,
    files: Spool,
}

impl Default for Receiving {
    fn default() -> Self {
        Receiving {
            stdout: Vec::new(),
            stderr: Vec::new(),
            end: None,
            displays: Spool::new(MAX_DISPLAYS, MAX_DISPLAYS_BYTES),
            files: Spool::default(),
        }
    }
}

impl Receiving {
    /// Keeps an output chunk; never more than the largest cap, whatever the
    /// executor sends.
    fn output(&mut self, chunk: &OutputChunk) {
        let kept = match chunk.stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        let room = (MAX_OUTPUT_BYTES as usize).saturating_sub(kept.len());
        kept.extend_from_slice(&chunk.data[..chunk.data.len().min(room)]);
    }
}

/// The client's answer to a frame that does not continue a job, or to none.
fn unexpected(frame: Result<Option<Response>, ProtocolError>, started: bool) -> ApiError {
    match frame {
        Ok(Some(Response::Failed(JobError::ShuttingDown))) if started => {
            warn!("the executor stopped while the job ran");
            ApiError::ExecutorRestarting
        }
        Ok(Some(Response::Failed(e))) => job_error(e),
        Ok(Some(other)) => {
            error!("executor sent a {} message out of turn", other.kind());
            ApiError::Internal
        }
        Ok(None) => {
            warn!("executor closed the connection while the job ran");
            ApiError::ExecutorLost
        }
        Err(ProtocolError::Io(e)) => {
            warn!("executor connection failed while the job ran: {e}");
            ApiError::ExecutorLost
        }
        Err(e) => {
            error!("executor sent an unreadable frame: {}", chain(&e));
            ApiError::Internal
        }
    }
}

fn spool_failed(e: crate::spool::SpoolError) -> ApiError {
    error!("{}", chain(&e));
    ApiError::Internal
}

/// Maps the executor's refusal of a job to the client's answer, logging the cause.
fn job_error(e: JobError) -> ApiError {
    match e {
        JobError::Rejected { field, reason } => ApiError::InvalidField { field, reason },
        JobError::JailSetup { reason } => {
            error!("executor could not set up the jail: {reason}");
            ApiError::SandboxUnavailable
        }
        JobError::ShuttingDown => {
            warn!("executor is shutting down and refused the job");
            ApiError::ExecutorRestarting
        }
        JobError::Busy { retry_after_secs } => {
            info!("executor is busy: every job slot taken and its queue full or too slow");
            ApiError::Busy {
                retry_after: retry_after_secs.clamp(1, 60),
            }
        }
        JobError::VersionMismatch { .. } => {
            error!("{e}; deploy matching versions");
            ApiError::ExecutorUnavailable
        }
        JobError::Protocol { reason } => {
            error!("executor says we broke the protocol: {reason}");
            ApiError::Internal
        }
        JobError::SessionNotFound => ApiError::SessionNotFound,
        JobError::SessionEnded { reason } => ApiError::SessionEnded { reason },
        JobError::SessionBusy => ApiError::SessionBusy,
        JobError::SessionsFull {
            reason,
            retry_after_secs,
        } => ApiError::SessionsFull {
            reason,
            retry_after: retry_after_secs.clamp(1, 60),
        },
    }
}

/// An error with its causes, `outer: inner`, for a log line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_errors_map_to_contract_errors() {
        assert_eq!(
            job_error(JobError::Rejected {
                field: "timeoutMs".into(),
                reason: "must be at most 60000".into()
            }),
            ApiError::InvalidField {
                field: "timeoutMs".into(),
                reason: "must be at most 60000".into()
            }
        );
        assert_eq!(
            job_error(JobError::JailSetup {
                reason: "bwrap: No such file".into()
            }),
            ApiError::SandboxUnavailable
        );
        assert_eq!(
            job_error(JobError::ShuttingDown),
            ApiError::ExecutorRestarting
        );
        assert_eq!(
            job_error(JobError::Busy {
                retry_after_secs: 0
            }),
            ApiError::Busy { retry_after: 1 }
        );
        assert_eq!(
            job_error(JobError::VersionMismatch {
                executor: 2,
                frontend: 1
            }),
            ApiError::ExecutorUnavailable
        );
        assert_eq!(
            job_error(JobError::Protocol {
                reason: "bad".into()
            }),
            ApiError::Internal
        );
    }

    #[test]
    fn output_is_kept_up_to_the_largest_cap() {
        let mut ran = Receiving::default();
        let chunk = |stream, len| OutputChunk {
            stream,
            data: vec![b'x'; len],
        };
        ran.output(&chunk(Stream::Stdout, 3));
        ran.output(&chunk(Stream::Stderr, MAX_OUTPUT_BYTES as usize + 9));
        ran.output(&chunk(Stream::Stderr, 1));
        assert_eq!(ran.stdout.len(), 3);
        assert_eq!(ran.stderr.len(), MAX_OUTPUT_BYTES as usize);
    }
}
