//! The job a frontend asks the executor to run, and what comes back.

use serde::{Deserialize, Serialize};

use crate::bounded;
use crate::files::{InputFile, MAX_INPUT_FILES};
use crate::limits::{JobLimits, LimitKind, Usage};
use crate::network::{NetworkRequest, NetworkViolation, MAX_VIOLATIONS};

/// The most `[sandbox]` notes one job's end carries: one per listed violation, one
/// for the unlisted rest, and one per limit.
pub const MAX_NOTES: usize = MAX_VIOLATIONS + 16;

/// The largest wall-clock limit the HTTP API accepts, in milliseconds (seed-compatible).
pub const MAX_TIMEOUT_MS: u32 = 120_000;

/// One request to run Python code in a fresh jail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Carried into the executor's logs so one request can be followed across daemons.
    pub request_id: String,
    /// Python source, run as the `__main__` module.
    pub code: String,
    /// Bytes fed to the job's standard input; `None` means it reads EOF at once.
    pub stdin: Option<String>,
    /// Wall-clock limit in milliseconds; `None` takes the executor's default.
    pub timeout_ms: Option<u32>,
    /// Resource limits below the executor's maxima.
    pub limits: JobLimits,
    /// Files written into the work dir before the job starts, owned by the sandbox uid.
    #[serde(deserialize_with = "bounded::vec::<_, _, { MAX_INPUT_FILES as usize }>")]
    pub files: Vec<InputFile>,
    /// Whether to collect the files the job leaves in its work dir into the result.
    pub collect_files: bool,
    /// The network the job asks for; `None` takes everything the executor's
    /// configuration allows, which may be nothing.
    pub network: Option<NetworkRequest>,
}

/// How a job that ran ended. Its output went before it in
/// [`crate::protocol::Response::Output`] frames.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEnd {
    /// The interpreter's exit status, or `None` when a signal ended it.
    pub exit_code: Option<i32>,
    /// The name of the signal that ended it (`"SIGKILL"`), if one did.
    pub signal: Option<String>,
    /// Whether standard output went past the cap and its tail was dropped.
    pub stdout_truncated: bool,
    /// Whether standard error went past the cap and its tail was dropped.
    pub stderr_truncated: bool,
    /// Whether the wall-clock limit ended the job.
    pub timed_out: bool,
    /// The limit that stopped or cut the job, if the executor saw one fire.
    /// Authoritative, unlike the `[sandbox]` lines in `stderr`, which the job can
    /// imitate.
    pub limit_exceeded: Option<LimitKind>,
    /// What the job used.
    pub usage: Usage,
    /// One line per refused network request and per limit that fired, without the
    /// `[sandbox] ` prefix; the frontend appends them to `stderr`.
    #[serde(deserialize_with = "bounded::vec::<_, _, MAX_NOTES>")]
    pub notes: Vec<String>,
    /// Requests the egress proxy refused, at most [`crate::MAX_VIOLATIONS`].
    #[serde(deserialize_with = "bounded::vec::<_, _, MAX_VIOLATIONS>")]
    pub violations: Vec<NetworkViolation>,
    /// The `repr()` of the value of the code's last top-level statement, when that
    /// is an expression whose value is not `None`: what a REPL would echo. At most
    /// [`MAX_RESULT_BYTES`].
    pub result: Option<String>,
}

/// The most bytes of a job's `result` that are kept.
pub const MAX_RESULT_BYTES: usize = 64 * 1024;

/// The most displays one job may return, whatever the executor's configuration.
pub const MAX_DISPLAYS: usize = 100;

/// The most bytes all displays of one job may take, whatever the configuration.
pub const MAX_DISPLAYS_BYTES: u64 = 64 << 20;

/// Why a job could not run. The executor logs the detail; the frontend turns each
/// variant into an HTTP status without passing internal causes to its client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum JobError {
    /// The peer spoke another protocol version.
    #[error("protocol version mismatch: executor speaks {executor}, frontend {frontend}")]
    VersionMismatch {
        /// The executor's [`crate::PROTOCOL_VERSION`].
        executor: u32,
        /// The version the frontend announced.
        frontend: u32,
    },
    /// The job asked for more than the executor allows; nothing ran.
    #[error("{field}: {reason}")]
    Rejected {
        /// The API field at fault, e.g. `timeoutMs`.
        field: String,
        /// What is wrong with it, e.g. `must be at most 60000`.
        reason: String,
    },
    /// The jail could not be set up, so the job did not run (it never runs unjailed).
    #[error("could not set up the jail: {reason}")]
    JailSetup {
        /// The cause, for the frontend's log.
        reason: String,
    },
    /// The executor is shutting down and takes no new work.
    #[error("the executor is shutting down")]
    ShuttingDown,
    /// The peer broke the protocol (unexpected or undecodable message).
    #[error("protocol error: {reason}")]
    Protocol {
        /// What was wrong.
        reason: String,
    },
    /// Every job slot stayed taken, and the wait queue full or too slow, for as long
    /// as a job may wait: nothing ran, and the same job may be sent again later.
    #[error("every job slot is busy")]
    Busy {
        /// When a retry has a fair chance, in seconds.
        retry_after_secs: u32,
    },
    /// No session has that id: it never existed, was closed, expired, or ended
    /// long enough ago to be forgotten.
    #[error("session not found")]
    SessionNotFound,
    /// The session's interpreter is gone: it exited, a limit killed it, or it
    /// ignored an interrupt.
    #[error("session ended: {reason}")]
    SessionEnded {
        /// What ended it, in words for the client.
        reason: String,
    },
    /// The session is running another call.
    #[error("session is busy with another call")]
    SessionBusy,
    /// As many sessions are open, or hold as much memory, as the executor allows.
    #[error("too many sessions: {reason}")]
    SessionsFull {
        /// Which cap was reached.
        reason: String,
        /// When a retry has a fair chance, in seconds.
        retry_after_secs: u32,
    },
}
