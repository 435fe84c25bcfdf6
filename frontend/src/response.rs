//! The `200` body of `POST /execute`: the seed's fields first, under their seed
//! names and types, then the fields this service adds, and last the produced files
//! when the request asked for them, streamed from the spool.

use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use futures::{stream, Stream, StreamExt, TryStreamExt};
use pysandbox_shared::{JobEnd, LimitKind, NetworkViolation, SkippedFile, Usage};
use serde::Serialize;
use utoipa::ToSchema;

use crate::spool::Produced;

/// What a job that ran produced. Fields serialize in declaration order, which is
/// the order the contract lists; `skippedFiles` and `skippedFilesUnlisted` only
/// appear when they apply; [`render`] appends `displays` and `files`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(
    description = "How the job ended and what it printed; `skippedFiles` only when \
                        files were collected, `skippedFilesUnlisted` only when some were."
)]
pub struct ExecuteResponse {
    /// The interpreter's exit status; `null` when a signal ended it.
    #[schema(required = true)]
    pub exit_code: Option<i32>,
    /// The signal that ended it, e.g. `"SIGKILL"`.
    #[schema(required = true)]
    pub signal: Option<String>,
    /// What the job printed on standard output (the kept head).
    pub stdout: String,
    /// Standard error, with a `[sandbox] …` line per limit hit and per refused
    /// network request.
    pub stderr: String,
    /// One entry per produced file when they were uploaded, then one per skipped
    /// work-dir entry.
    pub uploads: Vec<Upload>,
    /// Whether the wall-clock limit ended the job.
    pub timed_out: bool,
    /// Wall-clock time of the job.
    pub duration_ms: u64,
    /// Whether standard output was cut at the cap.
    pub stdout_truncated: bool,
    /// Whether standard error was cut at the cap.
    pub stderr_truncated: bool,
    /// The limit that stopped or cut the job (`"memory"`, `"time"`, `"cpu"`,
    /// `"processes"`, `"disk"`, `"output"`), or `null`. Unlike the `[sandbox]` lines
    /// in `stderr`, which the job could print itself, this is authoritative.
    #[schema(required = true, value_type = Option<crate::openapi::LimitName>)]
    pub limit_exceeded: Option<&'static str>,
    /// What the job used.
    pub usage: UsageBody,
    /// Network requests the egress proxy refused, in order (at most 100).
    pub violations: Vec<ViolationBody>,
    /// The `repr()` of the value of the code's last top-level statement when it is
    /// an expression whose value is not `None`, as a REPL would echo it.
    #[schema(required = true)]
    pub result: Option<String>,
    /// Work-dir entries that were not collected and why, when files were collected
    /// (for uploads or `returnFiles`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped_files: Option<Vec<Skipped>>,
    /// How many more entries were skipped than `skippedFiles` lists; only when some were.
    #[serde(skip_serializing_if = "is_zero")]
    pub skipped_files_unlisted: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The head of a produced file in the response (`returnFiles`); its
/// `contentBase64` follows, streamed.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct FileHead<'a> {
    /// Its path relative to the work dir.
    path: &'a str,
    /// Its size in bytes.
    size: u64,
    /// Its MIME type, guessed from the extension.
    content_type: &'static str,
}

/// The head of a display; its `contentBase64` follows, streamed.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DisplayHead {
    content_type: &'static str,
}

/// `response` as a JSON body, with `"displays"` (every figure the job showed) and,
/// when the request asked for them, `"files"` after its fields: each entry's bytes
/// base64-encoded (standard alphabet, padded) as they are read from the spool, so
/// no display or file is ever held whole. `keep` lives until the body is sent.
pub fn render<K: Send + 'static>(
    mut response: ExecuteResponse,
    displays: Vec<Produced>,
    files: Option<Vec<Produced>>,
    keep: K,
) -> Response {
    // `files` comes before `skippedFiles`, as in the contract's order.
    let tail = Tail {
        skipped_files: response.skipped_files.take(),
        skipped_files_unlisted: std::mem::take(&mut response.skipped_files_unlisted),
    };
    let mut head = serde_json::to_vec(&response).unwrap_or_default();
    // `{…}` becomes `{…,"displays":[`; the object is never empty.
    head.pop();
    head.extend_from_slice(br#","displays":["#);
    // `{"skippedFiles":…}` becomes `,"skippedFiles":…}`, and `{}` just `}`.
    let tail = serde_json::to_vec(&tail).unwrap_or_default();
    let end = match tail.get(1..) {
        Some(fields) if fields.len() > 1 => [&b","[..], fields].concat(),
        _ => b"}".to_vec(),
    };
    let streamed = !displays.is_empty() || files.as_ref().is_some_and(|f| !f.is_empty());
    let displays = displays.into_iter().map(|display| {
        let head = DisplayHead {
            content_type: "image/png",
        };
        (serde_json::to_vec(&head), display)
    });
    let mut middle = b"]".to_vec();
    let files = files.map(|files| {
        middle.extend_from_slice(br#","files":["#);
        files.into_iter().map(|file| {
            let head = FileHead {
                path: &file.path,
                size: file.size(),
                content_type: file.content_type(),
            };
            (serde_json::to_vec(&head), file)
        })
    });
    let closing = if files.is_some() {
        b"]".to_vec()
    } else {
        Vec::new()
    };
    if !streamed {
        let whole = [head, middle, closing, end].concat();
        return json_response(Body::from(whole));
    }
    let parts = piece(head)
        .chain(entries(displays.collect()))
        .chain(piece(middle))
        .chain(entries(files.into_iter().flatten().collect()))
        .chain(piece([closing, end].concat()))
        .map(move |part| {
            let _ = &keep;
            part
        });
    json_response(Body::from_stream(parts))
}

/// A JSON array's entries: each head object, left open for `contentBase64`, then
/// the content read from the spool and encoded chunk by chunk.
fn entries(
    entries: Vec<(serde_json::Result<Vec<u8>>, Produced)>,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send {
    stream::iter(entries.into_iter().enumerate()).flat_map(|(i, (head, content))| {
        let mut open = Vec::from(if i == 0 { "" } else { "," });
        open.extend(head.unwrap_or_default());
        open.pop();
        open.extend_from_slice(br#","contentBase64":""#);
        // Each chunk but the last is a multiple of 3 bytes long, so the encodings of
        // the chunks concatenate to the encoding of the whole.
        let content = content
            .chunks()
            .map_ok(|chunk| Bytes::from(BASE64.encode(chunk)));
        piece(open).chain(content).chain(piece(br#""}"#.to_vec()))
    })
}

fn json_response(body: Body) -> Response {
    let mut answer = body.into_response();
    answer.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    answer
}

/// The fields that follow `files`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Tail {
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped_files: Option<Vec<Skipped>>,
    #[serde(skip_serializing_if = "is_zero")]
    skipped_files_unlisted: u32,
}

fn piece(bytes: Vec<u8>) -> impl Stream<Item = std::io::Result<Bytes>> + Send {
    stream::once(async { Ok(Bytes::from(bytes)) })
}

/// A work-dir entry that was not collected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Skipped {
    /// Its path relative to the work dir (invalid bytes shown as U+FFFD).
    pub path: String,
    /// Why, e.g. `symlink` or `over the per-file cap of 33554432 bytes`.
    pub reason: String,
}

impl From<&SkippedFile> for Skipped {
    fn from(skipped: &SkippedFile) -> Self {
        Skipped {
            path: skipped.path.clone(),
            reason: skipped.reason.to_string(),
        }
    }
}

/// One entry of `violations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ViolationBody {
    /// `CONNECT`, `GET`, …, or `-` when the request could not be read.
    pub method: String,
    /// `host:port` as the proxy normalized it.
    pub target: String,
    /// Why it was refused, e.g. `not in allowed domains`.
    pub reason: String,
}

impl From<NetworkViolation> for ViolationBody {
    fn from(v: NetworkViolation) -> Self {
        ViolationBody {
            method: v.method,
            target: v.target,
            reason: v.reason,
        }
    }
}

/// The `usage` object; a figure is `null` where the executor's host cannot measure it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageBody {
    /// Wall-clock time of the job.
    pub wall_ms: u64,
    /// CPU time of all its processes.
    #[schema(required = true)]
    pub cpu_ms: Option<u64>,
    /// The peak memory of all its processes together.
    #[schema(required = true)]
    pub peak_memory_bytes: Option<u64>,
}

impl From<Usage> for UsageBody {
    fn from(usage: Usage) -> Self {
        UsageBody {
            wall_ms: usage.wall_ms,
            cpu_ms: usage.cpu_ms,
            peak_memory_bytes: usage.peak_memory_bytes,
        }
    }
}

/// The outcome of uploading one produced file, in the seed's entry shape; a skipped
/// work-dir entry is one too, with `error` saying why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Upload {
    /// The file's path relative to the job's work dir.
    pub filename: String,
    /// Where the upload service put it, when it said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The upload endpoint's HTTP status, as the seed reports it; 0 when none came.
    pub status: u16,
    /// Why the upload failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ExecuteResponse {
    /// The response of a job that ended as `end` and printed `stdout` and `stderr`
    /// (the heads the executor kept): the executor's notes follow stderr as one
    /// `[sandbox] …` line each.
    pub fn new(end: JobEnd, stdout: Vec<u8>, stderr: Vec<u8>) -> Self {
        let mut stderr_text = text(stderr, end.stderr_truncated);
        for note in &end.notes {
            if !stderr_text.is_empty() && !stderr_text.ends_with('\n') {
                stderr_text.push('\n');
            }
            stderr_text.push_str("[sandbox] ");
            stderr_text.push_str(note);
            stderr_text.push('\n');
        }
        ExecuteResponse {
            exit_code: end.exit_code,
            signal: end.signal,
            stdout: text(stdout, end.stdout_truncated),
            stderr: stderr_text,
            uploads: Vec::new(),
            timed_out: end.timed_out,
            duration_ms: end.usage.wall_ms,
            stdout_truncated: end.stdout_truncated,
            stderr_truncated: end.stderr_truncated,
            limit_exceeded: end.limit_exceeded.map(LimitKind::as_str),
            usage: end.usage.into(),
            violations: end.violations.into_iter().map(Into::into).collect(),
            result: end.result,
            skipped_files: None,
            skipped_files_unlisted: 0,
        }
    }
}

/// Output bytes as text: invalid UTF-8 is replaced, and a character cut in half by
/// the cap is dropped rather than shown as garbage.
fn text(mut bytes: Vec<u8>, truncated: bool) -> String {
    if truncated {
        if let Err(e) = std::str::from_utf8(&bytes) {
            if e.error_len().is_none() {
                bytes.truncate(e.valid_up_to());
            }
        }
    }
    match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end() -> JobEnd {
        JobEnd {
            exit_code: Some(0),
            signal: None,
            stdout_truncated: false,
            stderr_truncated: true,
            timed_out: false,
            limit_exceeded: Some(LimitKind::Output),
            usage: Usage {
                wall_ms: 12,
                cpu_ms: Some(5),
                peak_memory_bytes: None,
            },
            notes: vec![],
            violations: vec![NetworkViolation {
                method: "CONNECT".into(),
                target: "evil.com:443".into(),
                reason: "not in allowed domains".into(),
            }],
            result: Some("42".into()),
        }
    }

    async fn text_of(answer: Response) -> String {
        let body = axum::body::to_bytes(answer.into_body(), usize::MAX)
            .await
            .unwrap();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn keys_are_camel_case_in_contract_order() {
        let response = ExecuteResponse::new(end(), b"4\n".to_vec(), Vec::new());
        assert_eq!(
            text_of(render(response, Vec::new(), None, ())).await,
            r#"{"exitCode":0,"signal":null,"stdout":"4\n","stderr":"","uploads":[],"timedOut":false,"durationMs":12,"stdoutTruncated":false,"stderrTruncated":true,"limitExceeded":"output","usage":{"wallMs":12,"cpuMs":5,"peakMemoryBytes":null},"violations":[{"method":"CONNECT","target":"evil.com:443","reason":"not in allowed domains"}],"result":"42","displays":[]}"#
        );
    }

    #[test]
    fn a_killed_job_has_a_null_exit_code_a_signal_and_its_notes() {
        let killed = JobEnd {
            exit_code: None,
            signal: Some("SIGKILL".into()),
            stderr_truncated: false,
            timed_out: true,
            limit_exceeded: Some(LimitKind::Time),
            usage: Usage {
                wall_ms: 1003,
                cpu_ms: Some(1),
                peak_memory_bytes: Some(4096),
            },
            notes: vec!["killed: wall-clock timeout of 1000 ms exceeded".into()],
            violations: vec![],
            result: None,
            ..end()
        };
        let response = ExecuteResponse::new(killed, Vec::new(), b"partial".to_vec());
        assert_eq!(
            serde_json::to_string(&response).unwrap(),
            r#"{"exitCode":null,"signal":"SIGKILL","stdout":"","stderr":"partial\n[sandbox] killed: wall-clock timeout of 1000 ms exceeded\n","uploads":[],"timedOut":true,"durationMs":1003,"stdoutTruncated":false,"stderrTruncated":false,"limitExceeded":"time","usage":{"wallMs":1003,"cpuMs":1,"peakMemoryBytes":4096},"violations":[],"result":null}"#
        );
    }

    #[test]
    fn invalid_utf8_is_replaced_and_a_character_cut_by_the_cap_dropped() {
        assert_eq!(text(b"a\xffb".to_vec(), false), "a\u{fffd}b");
        assert_eq!(text("ab\u{2713}".as_bytes()[..3].to_vec(), true), "ab");
        assert_eq!(
            text("ab\u{2713}".as_bytes()[..3].to_vec(), false),
            "ab\u{fffd}"
        );
    }

    #[tokio::test]
    async fn returned_and_skipped_files_come_last() {
        let mut response = ExecuteResponse::new(end(), b"4\n".to_vec(), Vec::new());
        response.skipped_files = Some(vec![Skipped::from(&SkippedFile {
            path: "l".into(),
            reason: pysandbox_shared::SkipReason::Symlink,
        })]);
        response.skipped_files_unlisted = 3;
        let big: Vec<u8> = (0..crate::spool::READ_CHUNK * 2 + 1)
            .map(|i| i as u8)
            .collect();
        let files = vec![
            crate::spool::produced("a.png", &[0, 255]),
            crate::spool::produced("b \"q\".bin", &big),
            crate::spool::produced("c", b""),
        ];
        let displays = vec![crate::spool::produced("display", b"\x89PNG")];
        let json = text_of(render(response, displays, Some(files), ())).await;
        assert!(
            json.contains(r#""violations":[{"method":"CONNECT","target":"evil.com:443","reason":"not in allowed domains"}],"result":"42","displays":[{"contentType":"image/png","contentBase64":"iVBORw=="}],"files":[{"path":"a.png","size":2,"contentType":"image/png","contentBase64":"AP8="},{"path":"b \"q\".bin","size":98305,"#),
            "{json}"
        );
        assert!(
            json.ends_with(r#""},{"path":"c","size":0,"contentType":"application/octet-stream","contentBase64":""}],"skippedFiles":[{"path":"l","reason":"symlink"}],"skippedFilesUnlisted":3}"#),
            "{json}"
        );
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            parsed["files"][1]["contentBase64"].as_str().unwrap(),
            BASE64.encode(&big)
        );
    }

    #[tokio::test]
    async fn no_files_and_nothing_skipped_is_still_json() {
        let response = ExecuteResponse::new(end(), Vec::new(), Vec::new());
        let json = text_of(render(response, Vec::new(), Some(Vec::new()), ())).await;
        assert!(
            json.ends_with(
                r#""reason":"not in allowed domains"}],"result":"42","displays":[],"files":[]}"#
            ),
            "{json}"
        );
    }

    #[test]
    fn upload_entries_omit_absent_fields() {
        let ok = Upload {
            filename: "out/plot.png".into(),
            url: Some("https://files.example/plot.png".into()),
            status: 200,
            error: None,
        };
        assert_eq!(
            serde_json::to_string(&ok).unwrap(),
            r#"{"filename":"out/plot.png","url":"https://files.example/plot.png","status":200}"#
        );
        let failed = Upload {
            filename: "a.csv".into(),
            url: None,
            status: 0,
            error: Some("upload timed out".into()),
        };
        assert_eq!(
            serde_json::to_string(&failed).unwrap(),
            r#"{"filename":"a.csv","status":0,"error":"upload timed out"}"#
        );
    }
}
