//! Every kind of message, built at the worst case its producer allows, encodes
//! within its direction's frame limit. A limit that some legitimate message can
//! exceed would turn a job's result into a refused frame.

use pysandbox_shared::codec::encode;
use pysandbox_shared::files::{
    MAX_FILES, MAX_INPUT_BYTES, MAX_INPUT_FILES, MAX_NAME_LEN, MAX_PATH_DEPTH, MAX_PATH_LEN,
    MAX_SKIPPED_LISTED,
};
use pysandbox_shared::job::MAX_NOTES;
use pysandbox_shared::protocol::MAX_ASK_TEXT;
use pysandbox_shared::{
    Ask, Bucket, Count, DisplayStart, Enforcement, ExecutorMetrics, ExecutorStatus, FileStart,
    FilesEnd, Hello, InputFile, JobEnd, JobError, JobLimits, JobSpec, Layer, LimitKind,
    NetworkRequest, NetworkViolation, OutputChunk, RelativePath, Request, Response, SkipReason,
    SkippedFile, Started, Stream, Truncated, Usage, MAX_CHUNK_BYTES, MAX_REQUESTED_DOMAINS,
    MAX_REQUEST_FRAME_LEN, MAX_RESPONSE_FRAME_LEN, MAX_RESULT_BYTES, MAX_VIOLATIONS,
    PROTOCOL_VERSION,
};
use pysandbox_shared::{SessionCall, SessionState, MAX_SESSION_ID_LEN};

const MIB: usize = 1 << 20;

/// The proxy shows a client's text (method, raw target) cut at 100 characters; the
/// widest character is 4 bytes.
fn client_text() -> String {
    "\u{10FFFF}".repeat(100)
}

/// The longest path a skipped entry can be reported with: 15 directories of
/// `NAME_MAX` valid bytes, then a name of `NAME_MAX` bytes that are not UTF-8, each
/// shown as a 3-byte U+FFFD.
fn worst_shown_path() -> String {
    let mut path = format!("{}/", "d".repeat(MAX_NAME_LEN)).repeat(MAX_PATH_DEPTH - 1);
    path.push_str(&"\u{FFFD}".repeat(MAX_NAME_LEN));
    path
}

#[track_caller]
fn fits(what: &str, len: usize, limit: usize) {
    assert!(
        len <= limit,
        "{what} encodes to {len} bytes, over its frame limit of {limit}"
    );
}

#[test]
fn every_response_fits_its_frame_limit_at_its_worst() {
    let violation = NetworkViolation {
        method: client_text(),
        target: client_text(),
        reason: client_text(),
    };
    let note = format!(
        "network: blocked {} {} ({})",
        client_text(),
        client_text(),
        client_text()
    );
    let responses = [
        (
            "Hello",
            Response::Hello(Hello {
                version: PROTOCOL_VERSION,
            }),
        ),
        (
            "Started",
            Response::Started(Started {
                timeout_ms: u32::MAX,
            }),
        ),
        (
            "Output",
            Response::Output(OutputChunk {
                stream: Stream::Stderr,
                data: vec![0xff; MAX_CHUNK_BYTES],
            }),
        ),
        (
            "Ended",
            Response::Ended(JobEnd {
                exit_code: Some(i32::MIN),
                signal: Some("SIGKILL".into()),
                stdout_truncated: true,
                stderr_truncated: true,
                timed_out: true,
                limit_exceeded: Some(LimitKind::Memory),
                usage: Usage {
                    wall_ms: u64::MAX,
                    cpu_ms: Some(u64::MAX),
                    peak_memory_bytes: Some(u64::MAX),
                },
                notes: vec![note; MAX_NOTES],
                violations: vec![violation.clone(); MAX_VIOLATIONS],
                result: Some("\u{10FFFF}".repeat(MAX_RESULT_BYTES / 4)),
            }),
        ),
        (
            "File",
            Response::File(FileStart {
                path: "\u{10FFFF}".repeat(MAX_PATH_LEN / 4),
            }),
        ),
        ("Data", Response::Data(vec![0xff; MAX_CHUNK_BYTES])),
        (
            "Truncated",
            Response::Truncated(Truncated {
                stream: Stream::Stdout,
                cap_bytes: u32::MAX,
            }),
        ),
        ("Violation", Response::Violation(violation.clone())),
        (
            "Ask",
            Response::Ask(Ask {
                id: u32::MAX,
                host: "x".repeat(MAX_ASK_TEXT),
                port: u16::MAX,
                method: "x".repeat(MAX_ASK_TEXT),
                url: "x".repeat(MAX_ASK_TEXT),
                token: Some("x".repeat(MAX_ASK_TEXT)),
                timeout_ms: u32::MAX,
            }),
        ),
        (
            "Display",
            Response::Display(DisplayStart {
                content_type: "image/png".into(),
            }),
        ),
        (
            "Finished",
            Response::Finished(FilesEnd {
                skipped_files: vec![
                    SkippedFile {
                        path: worst_shown_path(),
                        reason: SkipReason::NameHasControlCharacter,
                    };
                    MAX_SKIPPED_LISTED
                ],
                skipped_unlisted: u32::MAX,
            }),
        ),
        (
            "Failed",
            Response::Failed(JobError::Rejected {
                field: "x".repeat(64 * 1024),
                reason: "x".repeat(64 * 1024),
            }),
        ),
        (
            "Status",
            Response::Status(ExecutorStatus {
                running_jobs: u32::MAX,
                max_jobs: u32::MAX,
                enforcement: vec![
                    Enforcement {
                        limit: "x".repeat(64),
                        mechanism: "x".repeat(1024),
                    };
                    6
                ],
                isolation: vec![
                    Layer {
                        name: "x".repeat(64),
                        detail: "x".repeat(1024),
                    };
                    4
                ],
                warm_jails: u32::MAX,
                queued_jobs: u32::MAX,
                sessions: u32::MAX,
                metrics: ExecutorMetrics {
                    jobs: vec![
                        Count {
                            label: "x".repeat(64),
                            value: u64::MAX,
                        };
                        32
                    ],
                    duration_buckets: vec![
                        Bucket {
                            le_ms: Some(u64::MAX),
                            count: u64::MAX,
                        };
                        32
                    ],
                    duration_sum_ms: u64::MAX,
                    violations: vec![
                        Count {
                            label: "x".repeat(64),
                            value: u64::MAX,
                        };
                        32
                    ],
                    proxy_bytes: u64::MAX,
                },
            }),
        ),
    ];
    let session = Response::Session(SessionState {
        session_id: "x".repeat(MAX_SESSION_ID_LEN),
        created_ms: u64::MAX,
        last_used_ms: u64::MAX,
        expires_ms: u64::MAX,
        idle_timeout_ms: u32::MAX,
        calls: u64::MAX,
        busy: true,
        memory_bytes: Some(u64::MAX),
        memory_mb: u32::MAX,
        max_processes: u32::MAX,
        disk_mb: u32::MAX,
    });
    fits("Session", encode(&session).unwrap().len(), 512);
    for (what, response) in &responses {
        let len = encode(response).expect("encodes").len();
        fits(what, len, MAX_RESPONSE_FRAME_LEN);
    }
    // Files themselves never ride in one frame: a whole result's worth of them
    // is chunked (the old single-frame result could not fit).
    assert!((MAX_FILES as usize) * MAX_CHUNK_BYTES > MAX_RESPONSE_FRAME_LEN);
}

#[test]
fn the_largest_job_fits_the_request_frame_limit() {
    // Every input file at the path and count maxima, sharing the byte maximum.
    let per_file = MAX_INPUT_BYTES as usize / MAX_INPUT_FILES as usize;
    let files: Vec<InputFile> = (0..MAX_INPUT_FILES)
        .map(|n| {
            let name = format!("{n:0width$}", width = MAX_NAME_LEN);
            let path = vec![name; MAX_PATH_DEPTH].join("/");
            assert!(path.len() <= MAX_PATH_LEN);
            InputFile {
                path: RelativePath::parse(&path).expect("a valid path"),
                data: vec![0xff; per_file],
            }
        })
        .collect();
    // The documented 16 MiB for everything but the files: code and stdin, with
    // room left for the longest allow list and the rest.
    let domain = format!("*.{}", "a".repeat(250));
    let job = JobSpec {
        request_id: "f".repeat(64),
        code: "\u{10FFFF}".repeat(7 * MIB / 4),
        stdin: Some("\u{10FFFF}".repeat(7 * MIB / 4)),
        timeout_ms: Some(u32::MAX),
        limits: JobLimits {
            memory_mb: Some(u32::MAX),
            cpu_ms: Some(u32::MAX),
            max_processes: Some(u32::MAX),
            disk_mb: Some(u32::MAX),
            output_bytes: Some(u32::MAX),
        },
        files,
        collect_files: true,
        network: Some(NetworkRequest {
            allowed_domains: Some(vec![domain; MAX_REQUESTED_DOMAINS]),
        }),
    };
    let len = encode(&Request::Run(job.clone())).expect("encodes").len();
    fits("Run", len, MAX_REQUEST_FRAME_LEN);
    let call = Request::RunInSession(SessionCall {
        session_id: "x".repeat(MAX_SESSION_ID_LEN),
        spec: job,
    });
    fits(
        "RunInSession",
        encode(&call).expect("encodes").len(),
        MAX_REQUEST_FRAME_LEN,
    );
    fits("Status", encode(&Request::Status).unwrap().len(), 64);
}
