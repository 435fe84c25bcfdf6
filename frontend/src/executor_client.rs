//! Talking to pysandbox-executor over its Unix socket.
//!
//! Every exchange opens a fresh connection, so a dead one is never cached and the
//! frontend recovers by itself as soon as the executor is back. One connection
//! carries one job: dropping it (for instance because the HTTP client went away and
//! hyper dropped the handler) makes the executor kill the job.

use std::path::PathBuf;
use std::time::Duration;

use pysandbox_shared::{
    Connection, ExecutorStatus, Hello, JobError, JobResult, JobSpec, ProtocolError, Request,
    Response, MAX_TIMEOUT_MS, PROTOCOL_VERSION,
};
use tokio::net::UnixStream;
use tokio::time::timeout;
use tracing::{error, warn};

use crate::error::ApiError;

/// How long connecting and the hello exchange may take before the executor counts
/// as unavailable (the contract's 3 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long `/health` waits for the executor's status.
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// How long past the job's own wall-clock limit the result may take: the executor
/// needs time to set up the jail, kill the job, collect its files and clean up.
const RESULT_GRACE: Duration = Duration::from_secs(30);

/// Connects to the executor on demand.
#[derive(Debug, Clone)]
pub struct ExecutorClient {
    socket: PathBuf,
}

impl ExecutorClient {
    /// A client for the executor listening on `socket`.
    pub fn new(socket: PathBuf) -> Self {
        ExecutorClient { socket }
    }

    /// Runs one job and waits for its result.
    pub async fn run(&self, spec: JobSpec) -> Result<JobResult, ApiError> {
        let job_timeout =
            Duration::from_millis(u64::from(spec.timeout_ms.unwrap_or(MAX_TIMEOUT_MS)));
        let mut conn = self.connect(CONNECT_TIMEOUT).await?;
        if let Err(e) = conn.send(&Request::Run(spec)).await {
            warn!("could not send the job to the executor: {e}");
            return Err(ApiError::ExecutorUnavailable);
        }
        let wait = job_timeout + RESULT_GRACE;
        let answer = match timeout(wait, conn.recv::<Response>()).await {
            Ok(answer) => answer,
            Err(_) => {
                warn!("no result from the executor within {wait:?}; giving up on the job");
                return Err(ApiError::ExecutorLost);
            }
        };
        match answer {
            Ok(Some(Response::Finished(result))) => Ok(result),
            Ok(Some(Response::Failed(e))) => Err(job_error(e)),
            Ok(Some(other)) => {
                error!("executor answered a job with a {} message", kind_of(&other));
                Err(ApiError::Internal)
            }
            Ok(None) => {
                warn!("executor closed the connection while the job ran");
                Err(ApiError::ExecutorLost)
            }
            Err(ProtocolError::Io(e)) => {
                warn!("executor connection failed while the job ran: {e}");
                Err(ApiError::ExecutorLost)
            }
            Err(e) => {
                error!("executor sent an unreadable result: {e}");
                Err(ApiError::Internal)
            }
        }
    }

    /// The executor's status, or `None` when it does not answer within 1 s.
    pub async fn status(&self) -> Option<ExecutorStatus> {
        let exchange = async {
            let mut conn = self.handshake().await.ok()?;
            if let Err(e) = conn.send(&Request::Status).await {
                warn!("could not ask the executor for its status: {e}");
                return None;
            }
            match conn.recv::<Response>().await {
                Ok(Some(Response::Status(status))) => Some(status),
                Ok(Some(other)) => {
                    warn!(
                        "executor answered a status request with a {} message",
                        kind_of(&other)
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

    /// Connects and exchanges hellos, all within `limit`.
    async fn connect(&self, limit: Duration) -> Result<Connection<UnixStream>, ApiError> {
        match timeout(limit, self.handshake()).await {
            Ok(conn) => conn,
            Err(_) => {
                warn!(
                    socket = %self.socket.display(),
                    "executor did not complete its hello within {limit:?}"
                );
                Err(ApiError::ExecutorUnavailable)
            }
        }
    }

    /// Connects and exchanges hellos, with no time limit of its own.
    async fn handshake(&self) -> Result<Connection<UnixStream>, ApiError> {
        let socket = self.socket.display();
        let stream = UnixStream::connect(&self.socket).await.map_err(|e| {
            warn!(%socket, "cannot connect to the executor: {e}");
            ApiError::ExecutorUnavailable
        })?;
        let mut conn = Connection::client(stream);
        let hello = async {
            conn.send(&Request::Hello(Hello::CURRENT)).await?;
            conn.recv::<Response>().await
        };
        match hello.await {
            Ok(Some(Response::Hello(hello))) if hello.version == PROTOCOL_VERSION => Ok(conn),
            Ok(Some(Response::Hello(hello))) => {
                error!(
                    %socket,
                    "executor speaks protocol version {}, this frontend {PROTOCOL_VERSION}; \
                     deploy matching versions",
                    hello.version
                );
                Err(ApiError::ExecutorUnavailable)
            }
            Ok(Some(Response::Failed(e))) => {
                error!(%socket, "executor refused the connection: {e}");
                Err(ApiError::ExecutorUnavailable)
            }
            Ok(Some(other)) => {
                error!(%socket, "executor opened with a {} message instead of a hello", kind_of(&other));
                Err(ApiError::ExecutorUnavailable)
            }
            Ok(None) => {
                warn!(%socket, "executor closed the connection before its hello");
                Err(ApiError::ExecutorUnavailable)
            }
            Err(e) => {
                warn!(%socket, "hello exchange with the executor failed: {e}");
                Err(ApiError::ExecutorUnavailable)
            }
        }
    }
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
            ApiError::ExecutorUnavailable
        }
        JobError::VersionMismatch { .. } => {
            error!("{e}; deploy matching versions");
            ApiError::ExecutorUnavailable
        }
        JobError::Protocol { reason } => {
            error!("executor says we broke the protocol: {reason}");
            ApiError::Internal
        }
    }
}

/// A message's variant name, for logs (its payload may hold job output).
fn kind_of(response: &Response) -> &'static str {
    match response {
        Response::Hello(_) => "Hello",
        Response::Finished(_) => "Finished",
        Response::Failed(_) => "Failed",
        Response::Status(_) => "Status",
    }
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
            ApiError::ExecutorUnavailable
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
}
