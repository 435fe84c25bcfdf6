//! Messages between frontend and executor, split by direction.
//!
//! Each connection carries one exchange: both sides send a [`Hello`] first, then the
//! frontend sends one request and the executor answers it once. postcard encodes an
//! enum by its variant index, so variants are only ever appended, never reordered or
//! removed; the golden tests below fail on any accidental change of the wire format.

use serde::{Deserialize, Serialize};

use crate::job::{JobError, JobResult, JobSpec};

/// Bumped on every incompatible change of the messages below.
pub const PROTOCOL_VERSION: u32 = 3;

/// The first frame each way. Its encoding must never change, so that peers of
/// different versions can at least tell each other so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's [`PROTOCOL_VERSION`].
    pub version: u32,
}

impl Hello {
    /// A hello announcing this build's protocol version.
    pub const CURRENT: Hello = Hello {
        version: PROTOCOL_VERSION,
    };
}

/// Frontend → executor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Opens the connection.
    Hello(Hello),
    /// Run this job and answer with [`Response::Finished`] or [`Response::Failed`].
    /// Closing the connection before the answer kills the job.
    Run(JobSpec),
    /// Answer with [`Response::Status`].
    Status,
}

/// Executor → frontend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Opens the connection.
    Hello(Hello),
    /// The job ran (whatever its exit status).
    Finished(JobResult),
    /// The job did not run, or the request was refused.
    Failed(JobError),
    /// What the executor is doing and can do.
    Status(ExecutorStatus),
}

/// The executor's view of itself, shown (without secrets) by the frontend's `/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutorStatus {
    /// Jobs running now.
    pub running_jobs: u32,
    /// Jobs that may run at once.
    pub max_jobs: u32,
    /// How each limit is enforced on this host, e.g. memory by "cgroup v1".
    pub enforcement: Vec<Enforcement>,
    /// The isolation layers in force on this host, e.g. landlock and its ABI.
    pub isolation: Vec<Layer>,
    /// Warm jails waiting for a job.
    pub warm_jails: u32,
}

/// One isolation layer and what of it this host enforces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    /// The layer, e.g. `landlock`.
    pub name: String,
    /// What is in force, e.g. `ABI 6: filesystem, TCP connect, scoped signals`.
    pub detail: String,
}

/// How one limit is enforced on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enforcement {
    /// The limit, as in [`crate::LimitKind::as_str`].
    pub limit: String,
    /// The mechanism, e.g. `cgroup v2 memory.max` or `RLIMIT_AS (fallback)`.
    pub mechanism: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};
    use crate::files::{InputFile, ProducedFile, RelativePath, SkipReason, SkippedFile};
    use crate::limits::{JobLimits, LimitKind, Usage};
    use crate::network::{NetworkRequest, NetworkViolation};

    fn sample_job() -> JobSpec {
        JobSpec {
            request_id: "r1".into(),
            code: "print(2 + 2)".into(),
            stdin: Some("in".into()),
            timeout_ms: Some(1000),
            limits: JobLimits {
                memory_mb: Some(256),
                ..JobLimits::default()
            },
            files: vec![InputFile {
                path: RelativePath::parse("a/b").unwrap(),
                data: vec![1, 2],
            }],
            collect_files: true,
            network: Some(NetworkRequest {
                allowed_domains: Some(vec!["a.io".into()]),
            }),
        }
    }

    fn sample_result() -> JobResult {
        JobResult {
            exit_code: Some(0),
            signal: None,
            stdout: "4\n".into(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: true,
            timed_out: false,
            limit_exceeded: Some(LimitKind::Output),
            usage: Usage {
                wall_ms: 12,
                cpu_ms: Some(3),
                peak_memory_bytes: None,
            },
            files: vec![ProducedFile {
                path: "o".into(),
                data: vec![9],
            }],
            skipped_files: vec![SkippedFile {
                path: "l".into(),
                reason: SkipReason::OverFileCap { cap: 5 },
            }],
            skipped_unlisted: 2,
            violations: vec![NetworkViolation {
                method: "GET".into(),
                target: "b:80".into(),
                reason: "r".into(),
            }],
        }
    }

    fn all_requests() -> Vec<Request> {
        vec![
            Request::Hello(Hello::CURRENT),
            Request::Run(sample_job()),
            Request::Status,
        ]
    }

    fn all_responses() -> Vec<Response> {
        vec![
            Response::Hello(Hello::CURRENT),
            Response::Finished(sample_result()),
            Response::Failed(JobError::VersionMismatch {
                executor: 1,
                frontend: 2,
            }),
            Response::Failed(JobError::Rejected {
                field: "timeoutMs".into(),
                reason: "too large".into(),
            }),
            Response::Failed(JobError::JailSetup {
                reason: "no bwrap".into(),
            }),
            Response::Failed(JobError::ShuttingDown),
            Response::Failed(JobError::Protocol {
                reason: "bad".into(),
            }),
            Response::Status(ExecutorStatus {
                running_jobs: 1,
                max_jobs: 2,
                enforcement: vec![Enforcement {
                    limit: "memory".into(),
                    mechanism: "cgroup v1".into(),
                }],
                isolation: vec![Layer {
                    name: "landlock".into(),
                    detail: "ABI 6".into(),
                }],
                warm_jails: 2,
            }),
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for msg in all_requests() {
            assert_eq!(decode::<Request>(&encode(&msg).unwrap()).unwrap(), msg);
        }
        for msg in all_responses() {
            assert_eq!(decode::<Response>(&encode(&msg).unwrap()).unwrap(), msg);
        }
    }

    /// Any change here is a wire-format change: bump PROTOCOL_VERSION, and keep the
    /// hello bytes identical forever.
    #[test]
    fn golden_encodings() {
        let golden: &[(Request, &[u8])] = &[
            (Request::Hello(Hello { version: 3 }), &[0, 3]),
            (
                Request::Run(sample_job()),
                &[
                    1, 2, b'r', b'1', 12, b'p', b'r', b'i', b'n', b't', b'(', b'2', b' ', b'+',
                    b' ', b'2', b')', 1, 2, b'i', b'n', 1, 0xe8, 0x07, 1, 0x80, 0x02, 0, 0, 0, 0,
                    // files: one, "a/b" with bytes [1, 2]; collect_files: true
                    1, 3, b'a', b'/', b'b', 2, 1, 2, 1, // network: allowed domains ["a.io"]
                    1, 1, 1, 4, b'a', b'.', b'i', b'o',
                ],
            ),
            (Request::Status, &[2]),
        ];
        for (msg, bytes) in golden {
            assert_eq!(&encode(msg).unwrap()[..], *bytes, "{msg:?}");
        }
        let golden: &[(Response, &[u8])] = &[
            (Response::Hello(Hello { version: 3 }), &[0, 3]),
            (
                Response::Finished(sample_result()),
                &[
                    1, 1, 0, 0, 2, b'4', b'\n', 0, 0, 1, 0, 1, 5, 12, 1, 3, 0,
                    // files: one, "o" with [9]; skipped: one, "l" over a per-file cap
                    // of 5; 2 more unlisted
                    1, 1, b'o', 1, 9, 1, 1, b'l', 6, 5, 2, // violations: GET b:80, reason r
                    1, 3, b'G', b'E', b'T', 4, b'b', b':', b'8', b'0', 1, b'r',
                ],
            ),
            (Response::Failed(JobError::ShuttingDown), &[2, 3]),
            (
                Response::Status(ExecutorStatus {
                    running_jobs: 1,
                    max_jobs: 2,
                    enforcement: vec![],
                    isolation: vec![],
                    warm_jails: 1,
                }),
                &[3, 1, 2, 0, 0, 1],
            ),
        ];
        for (msg, bytes) in golden {
            assert_eq!(&encode(msg).unwrap()[..], *bytes, "{msg:?}");
        }
    }

    /// A hello from a future version must still decode, so the mismatch can be reported.
    #[test]
    fn hello_of_another_version_decodes() {
        assert_eq!(
            decode::<Request>(&[0, 0xac, 0x02]).unwrap(),
            Request::Hello(Hello { version: 300 })
        );
    }
}
