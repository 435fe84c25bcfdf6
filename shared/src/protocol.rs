//! Messages between frontend and executor, split by direction.
//!
//! Each connection carries one exchange: both sides send a [`Hello`] first, then the
//! frontend sends one request. A job's answer is a sequence of frames, none larger
//! than a small fixed bound, so neither daemon ever holds a whole result:
//!
//! ```text
//! Failed                                  the job did not run (refused, busy, …)
//! Started (Output | Truncated | Violation | Display Data*)* Ended (File Data*)* Finished
//! Started Output* Failed                  the jail could not be set up, or the
//!                                         executor stopped before the job ended
//! ```
//!
//! While a job runs (between `Started` and `Ended`), the executor may also send
//! [`Response::Ask`]: its egress proxy wants the ask callback's word on a host no
//! list covers. The frontend, which makes that call, answers on the same
//! connection with [`Request::Answer`]; it is the only request it sends mid-job.
//!
//! postcard encodes an enum by its variant index, so variants are only ever
//! appended, never reordered or removed; the golden tests below fail on any
//! accidental change of the wire format.

use serde::{Deserialize, Serialize};

use crate::bounded;
use crate::files::SkippedFile;
use crate::job::{JobEnd, JobError, JobSpec};
use crate::network::NetworkViolation;
use crate::session::{SessionCall, SessionSpec, SessionState, MAX_SESSION_ID_LEN};

/// Bumped on every incompatible change of the messages below.
pub const PROTOCOL_VERSION: u32 = 8;

/// The most bytes one [`Response::Output`] or [`Response::Data`] frame carries.
pub const MAX_CHUNK_BYTES: usize = 64 * 1024;

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
    /// Run this job and answer with the frames the module docs list. Closing the
    /// connection before [`Response::Finished`] kills the job.
    Run(JobSpec),
    /// Answer with [`Response::Status`].
    Status,
    /// The ask callback's word on the [`Response::Ask`] of the same id.
    Answer(AskAnswer),
    /// Start a session: answer with [`Response::Session`] once its interpreter
    /// waits for its first call.
    OpenSession(SessionSpec),
    /// Run a job in a session; the answer's frames are those of [`Request::Run`].
    /// Closing the connection before [`Response::Finished`] interrupts the call.
    RunInSession(SessionCall),
    /// Answer with the session's [`Response::Session`].
    DescribeSession(#[serde(deserialize_with = "bounded::string::<_, MAX_SESSION_ID_LEN>")] String),
    /// End a session: answer [`Response::SessionClosed`] once every process, mount,
    /// cgroup and file of it is gone.
    CloseSession(#[serde(deserialize_with = "bounded::string::<_, MAX_SESSION_ID_LEN>")] String),
}

/// Executor → frontend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Opens the connection.
    Hello(Hello),
    /// The job left the queue and its jail is being set up: its wall-clock limit
    /// counts from here.
    Started(Started),
    /// Bytes the job wrote, as it wrote them, up to its output cap.
    Output(OutputChunk),
    /// How the job ended; produced files and [`Response::Finished`] follow.
    Ended(JobEnd),
    /// A produced file begins; its bytes follow in [`Response::Data`] frames.
    File(FileStart),
    /// The next bytes of the display or file last begun.
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The last frame of a job that ran: what was not collected, and why.
    Finished(FilesEnd),
    /// The job did not run, or did not end as a job: refused, busy, no jail.
    Failed(JobError),
    /// What the executor is doing and can do.
    Status(ExecutorStatus),
    /// The job showed something (a matplotlib figure); its bytes follow in
    /// [`Response::Data`] frames.
    Display(DisplayStart),
    /// The job's output on one stream just passed its cap: what it writes there from
    /// now on is dropped. Sent once per stream, at the moment it happens, so that a
    /// client watching the output live learns it then rather than at the end.
    Truncated(Truncated),
    /// The job's egress proxy refused a request, as it happened; one of the first
    /// [`crate::MAX_VIOLATIONS`], which [`JobEnd::violations`] lists again.
    Violation(NetworkViolation),
    /// The job's egress proxy wants the ask callback's word on a target: the
    /// frontend POSTs it to the callback and answers with [`Request::Answer`].
    Ask(Ask),
    /// A session's state: the answer to [`Request::OpenSession`] and
    /// [`Request::DescribeSession`].
    Session(SessionState),
    /// The session is gone, everything of it removed.
    SessionClosed,
}

/// The most characters of an ask callback's URL or token on the wire.
pub const MAX_ASK_TEXT: usize = 4096;

/// A question for the ask callback, about one `host:port` of one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ask {
    /// Names the question within its job; the answer carries it back.
    pub id: u32,
    /// The target's host, normalized: a lower-case ASCII name or an IP address.
    #[serde(deserialize_with = "bounded::string::<_, MAX_ASK_TEXT>")]
    pub host: String,
    /// The target's port.
    pub port: u16,
    /// The job's request method, `CONNECT`, `GET`, ….
    #[serde(deserialize_with = "bounded::string::<_, MAX_ASK_TEXT>")]
    pub method: String,
    /// The callback: the executor's `network.ask_url`.
    #[serde(deserialize_with = "bounded::string::<_, MAX_ASK_TEXT>")]
    pub url: String,
    /// The bearer token for the callback, when configured.
    #[serde(deserialize_with = "bounded::option_string::<_, MAX_ASK_TEXT>")]
    pub token: Option<String>,
    /// How long the callback may take, in milliseconds.
    pub timeout_ms: u32,
}

/// The ask callback's word on one question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AskAnswer {
    /// The [`Ask::id`] answered.
    pub id: u32,
    /// What came of the call.
    pub outcome: AskOutcome,
}

/// What came of one call to the ask callback. Only [`AskOutcome::Allowed`] opens
/// the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AskOutcome {
    /// `200` with JSON `{"allow": true}`.
    Allowed,
    /// `200` with JSON `{"allow": false}`.
    Refused,
    /// Anything else: an error, another status, a redirect, a malformed answer.
    Failed,
    /// No answer within the timeout.
    TimedOut,
}

impl AskOutcome {
    /// Every outcome, for metrics.
    pub const ALL: [AskOutcome; 4] = [
        AskOutcome::Allowed,
        AskOutcome::Refused,
        AskOutcome::Failed,
        AskOutcome::TimedOut,
    ];

    /// A short identifier, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            AskOutcome::Allowed => "allowed",
            AskOutcome::Refused => "refused",
            AskOutcome::Failed => "failed",
            AskOutcome::TimedOut => "timed_out",
        }
    }
}

/// Where a job's output started being dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Truncated {
    /// The stream that reached its cap.
    pub stream: Stream,
    /// The cap, in bytes: how much of the stream was passed on.
    pub cap_bytes: u32,
}

/// The header of a display.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisplayStart {
    /// Its MIME type: `image/png`.
    pub content_type: String,
}

/// Sent when a job starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    /// The wall-clock limit in force, in milliseconds: the request's, or the
    /// executor's default when the request set none.
    pub timeout_ms: u32,
}

/// Which output stream a chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Bytes of one output stream, at most [`MAX_CHUNK_BYTES`]; not necessarily UTF-8,
/// and a character may be split across two chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputChunk {
    /// The stream written to.
    pub stream: Stream,
    /// The bytes, in order.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// The header of a produced file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStart {
    /// Its path relative to the work dir (valid UTF-8, no control characters).
    pub path: String,
}

/// What the collection of a job's files left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesEnd {
    /// Work-dir entries that were not collected, and why; at most
    /// [`crate::files::MAX_SKIPPED_LISTED`].
    #[serde(deserialize_with = "bounded::vec::<_, _, { crate::files::MAX_SKIPPED_LISTED }>")]
    pub skipped_files: Vec<SkippedFile>,
    /// How many more entries were skipped than `skipped_files` lists.
    pub skipped_unlisted: u32,
}

/// The executor's view of itself, shown (without secrets) by the frontend's `/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutorStatus {
    /// Jobs running now.
    pub running_jobs: u32,
    /// Jobs that may run at once.
    pub max_jobs: u32,
    /// How each limit is enforced on this host, e.g. memory by "cgroup v1".
    #[serde(deserialize_with = "bounded::vec::<_, _, 32>")]
    pub enforcement: Vec<Enforcement>,
    /// The isolation layers in force on this host, e.g. landlock and its ABI.
    #[serde(deserialize_with = "bounded::vec::<_, _, 32>")]
    pub isolation: Vec<Layer>,
    /// Warm jails waiting for a job.
    pub warm_jails: u32,
    /// Jobs waiting for a slot.
    pub queued_jobs: u32,
    /// Sessions open now.
    pub sessions: u32,
    /// Counters since the executor started, for the frontend's `/metrics`.
    pub metrics: ExecutorMetrics,
}

/// What the executor counted since it started. Every label value is one of a small
/// fixed set the executor chooses (never code, ids, hosts or addresses), so the
/// frontend can expose them as Prometheus labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutorMetrics {
    /// Jobs by how they ended: `ok`, `error_exit`, `limit_<kind>`, `setup_failure`,
    /// `client_gone`, `shutdown`.
    #[serde(deserialize_with = "bounded::vec::<_, _, 32>")]
    pub jobs: Vec<Count>,
    /// Wall-clock time of the jobs that ran, from their start to their end: one
    /// cumulative count per upper bound, ascending, the last one unbounded.
    #[serde(deserialize_with = "bounded::vec::<_, _, 32>")]
    pub duration_buckets: Vec<Bucket>,
    /// The sum of those durations, in milliseconds.
    pub duration_sum_ms: u64,
    /// Requests the egress proxies refused, by the kind of reason (`denied`,
    /// `not_allowed`, `address`, …).
    #[serde(deserialize_with = "bounded::vec::<_, _, 32>")]
    pub violations: Vec<Count>,
    /// Bytes the egress proxies relayed, both ways, all jobs together.
    pub proxy_bytes: u64,
}

/// How many times one thing was counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Count {
    /// What was counted, e.g. an outcome; a short identifier.
    pub label: String,
    /// How many.
    pub value: u64,
}

/// One cumulative bucket of a histogram.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// Upper bound in milliseconds, inclusive; `None` for the last, unbounded one.
    pub le_ms: Option<u64>,
    /// Observations at or below it.
    pub count: u64,
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

impl Response {
    /// The variant's name, for logs: the payload may hold job output or code.
    pub fn kind(&self) -> &'static str {
        match self {
            Response::Hello(_) => "Hello",
            Response::Started(_) => "Started",
            Response::Output(_) => "Output",
            Response::Ended(_) => "Ended",
            Response::File(_) => "File",
            Response::Data(_) => "Data",
            Response::Finished(_) => "Finished",
            Response::Failed(_) => "Failed",
            Response::Status(_) => "Status",
            Response::Display(_) => "Display",
            Response::Truncated(_) => "Truncated",
            Response::Violation(_) => "Violation",
            Response::Ask(_) => "Ask",
            Response::Session(_) => "Session",
            Response::SessionClosed => "SessionClosed",
        }
    }
}

impl Request {
    /// The variant's name, for logs: the payload may hold job code.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Hello(_) => "Hello",
            Request::Run(_) => "Run",
            Request::Status => "Status",
            Request::Answer(_) => "Answer",
            Request::OpenSession(_) => "OpenSession",
            Request::RunInSession(_) => "RunInSession",
            Request::DescribeSession(_) => "DescribeSession",
            Request::CloseSession(_) => "CloseSession",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};
    use crate::files::{InputFile, RelativePath, SkipReason};
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

    fn sample_end() -> JobEnd {
        JobEnd {
            exit_code: Some(0),
            signal: None,
            stdout_truncated: false,
            stderr_truncated: true,
            timed_out: false,
            limit_exceeded: Some(LimitKind::Output),
            usage: Usage {
                wall_ms: 12,
                cpu_ms: Some(3),
                peak_memory_bytes: None,
            },
            notes: vec!["n".into()],
            result: Some("42".into()),
            violations: vec![NetworkViolation {
                method: "GET".into(),
                target: "b:80".into(),
                reason: "r".into(),
            }],
        }
    }

    fn sample_files_end() -> FilesEnd {
        FilesEnd {
            skipped_files: vec![SkippedFile {
                path: "l".into(),
                reason: SkipReason::OverFileCap { cap: 5 },
            }],
            skipped_unlisted: 2,
        }
    }

    fn sample_metrics() -> ExecutorMetrics {
        ExecutorMetrics {
            jobs: vec![Count {
                label: "ok".into(),
                value: 3,
            }],
            duration_buckets: vec![
                Bucket {
                    le_ms: Some(100),
                    count: 2,
                },
                Bucket {
                    le_ms: None,
                    count: 3,
                },
            ],
            duration_sum_ms: 300,
            violations: vec![Count {
                label: "denied".into(),
                value: 1,
            }],
            proxy_bytes: 200,
        }
    }

    fn sample_ask() -> Ask {
        Ask {
            id: 1,
            host: "a.io".into(),
            port: 443,
            method: "GET".into(),
            url: "http://c".into(),
            token: Some("t".into()),
            timeout_ms: 2000,
        }
    }

    fn all_requests() -> Vec<Request> {
        let mut all = vec![
            Request::Hello(Hello::CURRENT),
            Request::Run(sample_job()),
            Request::Status,
            Request::OpenSession(SessionSpec {
                request_id: "r2".into(),
                idle_timeout_ms: Some(5000),
                limits: JobLimits::default(),
                network: None,
            }),
            Request::RunInSession(SessionCall {
                session_id: "h.0f".into(),
                spec: sample_job(),
            }),
            Request::DescribeSession("h.0f".into()),
            Request::CloseSession("h.0f".into()),
        ];
        all.extend(AskOutcome::ALL.map(|outcome| Request::Answer(AskAnswer { id: 7, outcome })));
        all
    }

    fn all_responses() -> Vec<Response> {
        vec![
            Response::Hello(Hello::CURRENT),
            Response::Ask(sample_ask()),
            Response::Ask(Ask {
                token: None,
                ..sample_ask()
            }),
            Response::Started(Started { timeout_ms: 30_000 }),
            Response::Output(OutputChunk {
                stream: Stream::Stderr,
                data: vec![0xff, b'a'],
            }),
            Response::Ended(sample_end()),
            Response::File(FileStart { path: "o".into() }),
            Response::Data(vec![9]),
            Response::Finished(sample_files_end()),
            Response::Display(DisplayStart {
                content_type: "image/png".into(),
            }),
            Response::Truncated(Truncated {
                stream: Stream::Stdout,
                cap_bytes: 1 << 20,
            }),
            Response::Violation(NetworkViolation {
                method: "GET".into(),
                target: "b:80".into(),
                reason: "r".into(),
            }),
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
            Response::Failed(JobError::Busy {
                retry_after_secs: 3,
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
                queued_jobs: 3,
                sessions: 1,
                metrics: sample_metrics(),
            }),
            Response::Session(sample_session()),
            Response::SessionClosed,
            Response::Failed(JobError::SessionNotFound),
            Response::Failed(JobError::SessionEnded {
                reason: "the interpreter exited with code 3".into(),
            }),
            Response::Failed(JobError::SessionBusy),
            Response::Failed(JobError::SessionsFull {
                reason: "16 are open".into(),
                retry_after_secs: 5,
            }),
        ]
    }

    fn sample_session() -> SessionState {
        SessionState {
            session_id: "host-1.00ff".into(),
            created_ms: 1,
            last_used_ms: 2,
            expires_ms: 3,
            idle_timeout_ms: 1000,
            calls: 4,
            busy: true,
            memory_bytes: Some(5),
            memory_mb: 6,
            max_processes: 7,
            disk_mb: 8,
        }
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
            (Request::Hello(Hello { version: 7 }), &[0, 7]),
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
            // id 7, then the outcome's index
            (
                Request::Answer(AskAnswer {
                    id: 7,
                    outcome: AskOutcome::Allowed,
                }),
                &[3, 7, 0],
            ),
            (
                Request::Answer(AskAnswer {
                    id: 300,
                    outcome: AskOutcome::TimedOut,
                }),
                &[3, 0xac, 0x02, 3],
            ),
            (
                Request::DescribeSession("h.0f".into()),
                &[6, 4, b'h', b'.', b'0', b'f'],
            ),
            (
                Request::CloseSession("h.0f".into()),
                &[7, 4, b'h', b'.', b'0', b'f'],
            ),
        ];
        for (msg, bytes) in golden {
            assert_eq!(&encode(msg).unwrap()[..], *bytes, "{msg:?}");
        }
        let golden: &[(Response, &[u8])] = &[
            (Response::Hello(Hello { version: 7 }), &[0, 7]),
            // id 1, "a.io", port 443, "GET", "http://c", token "t", 2000 ms
            (
                Response::Ask(sample_ask()),
                &[
                    12, 1, 4, b'a', b'.', b'i', b'o', 0xbb, 0x03, 3, b'G', b'E', b'T', 8, b'h',
                    b't', b't', b'p', b':', b'/', b'/', b'c', 1, 1, b't', 0xd0, 0x0f,
                ],
            ),
            // 30000 as a varint
            (
                Response::Started(Started { timeout_ms: 30_000 }),
                &[1, 0xb0, 0xea, 0x01],
            ),
            (
                Response::Output(OutputChunk {
                    stream: Stream::Stderr,
                    data: vec![0xff, b'a'],
                }),
                &[2, 1, 2, 0xff, b'a'],
            ),
            (
                Response::Ended(sample_end()),
                &[
                    3, 1, 0, 0, 0, 1, 0, 1, 5, 12, 1, 3, 0, // notes: ["n"]
                    1, 1, b'n', // violations: GET b:80, reason r
                    1, 3, b'G', b'E', b'T', 4, b'b', b':', b'8', b'0', 1, b'r',
                    // result: "42"
                    1, 2, b'4', b'2',
                ],
            ),
            (
                Response::File(FileStart { path: "o".into() }),
                &[4, 1, b'o'],
            ),
            (Response::Data(vec![9]), &[5, 1, 9]),
            (
                Response::Display(DisplayStart {
                    content_type: "image/png".into(),
                }),
                &[9, 9, b'i', b'm', b'a', b'g', b'e', b'/', b'p', b'n', b'g'],
            ),
            // stdout, 1 MiB as a varint
            (
                Response::Truncated(Truncated {
                    stream: Stream::Stdout,
                    cap_bytes: 1 << 20,
                }),
                &[10, 0, 0x80, 0x80, 0x40],
            ),
            (
                Response::Violation(NetworkViolation {
                    method: "GET".into(),
                    target: "b:80".into(),
                    reason: "r".into(),
                }),
                &[11, 3, b'G', b'E', b'T', 4, b'b', b':', b'8', b'0', 1, b'r'],
            ),
            // skipped: one, "l" over a per-file cap of 5; 2 more unlisted
            (
                Response::Finished(sample_files_end()),
                &[6, 1, 1, b'l', 6, 5, 2],
            ),
            (Response::Failed(JobError::ShuttingDown), &[7, 3]),
            (Response::Failed(JobError::SessionBusy), &[7, 8]),
            (Response::SessionClosed, &[14]),
            (
                Response::Session(sample_session()),
                &[
                    13, 11, b'h', b'o', b's', b't', b'-', b'1', b'.', b'0', b'0', b'f', b'f', 1, 2,
                    3, 0xe8, 0x07, 4, 1, 1, 5, 6, 7, 8,
                ],
            ),
            (
                Response::Failed(JobError::Busy {
                    retry_after_secs: 3,
                }),
                &[7, 5, 3],
            ),
            (
                Response::Status(ExecutorStatus {
                    running_jobs: 1,
                    max_jobs: 2,
                    enforcement: vec![],
                    isolation: vec![],
                    warm_jails: 1,
                    queued_jobs: 4,
                    sessions: 2,
                    metrics: sample_metrics(),
                }),
                &[
                    8, 1, 2, 0, 0, 1, 4, 2, // jobs: ok 3
                    1, 2, b'o', b'k', 3, // buckets: le 100 → 2, +Inf → 3
                    2, 1, 100, 2, 0, 3, // sum 300 ms as a varint
                    0xac, 0x02, // violations: denied 1
                    1, 6, b'd', b'e', b'n', b'i', b'e', b'd', 1, // proxy bytes 200
                    0xc8, 0x01,
                ],
            ),
        ];
        for (msg, bytes) in golden {
            assert_eq!(&encode(msg).unwrap()[..], *bytes, "{msg:?}");
        }
    }

    /// Hostile bytes in place of an answer or a question: truncated, an unknown
    /// outcome, a string past its bound, trailing bytes. Each is an error, none a
    /// panic.
    #[test]
    fn hostile_ask_frames_are_refused() {
        for bytes in [
            &[3][..],
            &[3, 7],
            &[3, 7, 4],
            &[3, 0xff, 0xff, 0xff, 0xff, 0xff, 0],
            &[3, 7, 0, 0],
        ] {
            assert!(decode::<Request>(bytes).is_err(), "{bytes:?}");
        }
        let long = "x".repeat(MAX_ASK_TEXT + 1);
        for ask in [
            Ask {
                host: long.clone(),
                ..sample_ask()
            },
            Ask {
                method: long.clone(),
                ..sample_ask()
            },
            Ask {
                url: long.clone(),
                ..sample_ask()
            },
            Ask {
                token: Some(long.clone()),
                ..sample_ask()
            },
        ] {
            assert!(decode::<Response>(&encode(&Response::Ask(ask)).unwrap()).is_err());
        }
        let good = encode(&Response::Ask(sample_ask())).unwrap();
        for cut in 1..good.len() {
            assert!(decode::<Response>(&good[..cut]).is_err(), "cut at {cut}");
        }
        // A string that declares four billion bytes.
        assert!(decode::<Response>(&[12, 1, 0xff, 0xff, 0xff, 0xff, 0x0f, b'a']).is_err());
    }

    /// A hello from a future version must still decode, so the mismatch can be reported.
    #[test]
    fn hello_of_another_version_decodes() {
        assert_eq!(
            decode::<Request>(&[0, 0xac, 0x02]).unwrap(),
            Request::Hello(Hello { version: 300 })
        );
    }

    /// The review's decode amplification: a frame that declares ten million empty
    /// domain names is refused at the bound instead of costing 240 MB.
    #[test]
    fn sequences_past_their_bound_are_refused() {
        let mut job = sample_job();
        job.network = Some(NetworkRequest {
            allowed_domains: Some(vec![String::new(); crate::MAX_REQUESTED_DOMAINS + 1]),
        });
        assert!(decode::<Request>(&encode(&Request::Run(job)).unwrap()).is_err());
        let mut job = sample_job();
        job.files = vec![job.files[0].clone(); crate::files::MAX_INPUT_FILES as usize + 1];
        assert!(decode::<Request>(&encode(&Request::Run(job)).unwrap()).is_err());
    }
}
