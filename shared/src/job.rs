//! The job a frontend asks the executor to run, and what comes back.

use serde::{Deserialize, Serialize};

use crate::files::{InputFile, ProducedFile, SkippedFile};
use crate::limits::{JobLimits, LimitKind, Usage};
use crate::network::{NetworkRequest, NetworkViolation};

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
    pub files: Vec<InputFile>,
    /// Whether to collect the files the job leaves in its work dir into the result.
    pub collect_files: bool,
    /// Network access through the egress proxy; `None` means no network at all.
    pub network: Option<NetworkRequest>,
}

/// How a job that ran ended, and what it printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    /// The interpreter's exit status, or `None` when a signal ended it.
    pub exit_code: Option<i32>,
    /// The name of the signal that ended it (`"SIGKILL"`), if one did.
    pub signal: Option<String>,
    /// Standard output as UTF-8 (invalid bytes replaced), up to the output cap.
    pub stdout: String,
    /// Standard error like `stdout`, followed by one `[sandbox] …` line per limit hit
    /// and per refused network request.
    pub stderr: String,
    /// Whether standard output went past the cap and its tail was dropped.
    pub stdout_truncated: bool,
    /// Whether standard error went past the cap and its tail was dropped.
    pub stderr_truncated: bool,
    /// Whether the wall-clock limit ended the job.
    pub timed_out: bool,
    /// The limit that stopped or cut the job, if one did. Authoritative, unlike the
    /// `[sandbox]` lines in `stderr`, which the job can imitate.
    pub limit_exceeded: Option<LimitKind>,
    /// What the job used.
    pub usage: Usage,
    /// The regular files the job left in its work dir, in path order and within the
    /// executor's caps; empty unless the job asked for them. Input files the job
    /// left unchanged are not among them.
    pub files: Vec<ProducedFile>,
    /// Work-dir entries that were not collected, and why; at most
    /// [`crate::files::MAX_SKIPPED_LISTED`].
    pub skipped_files: Vec<SkippedFile>,
    /// How many more entries were skipped than `skipped_files` lists.
    pub skipped_unlisted: u32,
    /// Requests the egress proxy refused, at most [`crate::MAX_VIOLATIONS`]; each also
    /// has a `[sandbox] network: blocked …` line in `stderr`.
    pub violations: Vec<NetworkViolation>,
}

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
}
