//! The `200` body of `POST /execute`: the seed's fields first, under their seed
//! names and types, then the fields this service adds.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use pysandbox_shared::{JobResult, LimitKind, NetworkViolation, SkippedFile, Usage};
use serde::Serialize;

use crate::upload::Produced;

/// What a job that ran produced. Fields serialize in declaration order, which is
/// the order the contract lists; `files`, `skippedFiles` and `skippedFilesUnlisted`
/// only appear when they apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecuteResponse {
    /// The interpreter's exit status; `null` when a signal ended it.
    pub exit_code: Option<i32>,
    /// The signal that ended it, e.g. `"SIGKILL"`.
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
    pub limit_exceeded: Option<&'static str>,
    /// What the job used.
    pub usage: UsageBody,
    /// Network requests the egress proxy refused, in order (at most 100).
    pub violations: Vec<ViolationBody>,
    /// The produced files themselves, when the request set `returnFiles`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<ReturnedFile>>,
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

/// A produced file in the response (`returnFiles`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReturnedFile {
    /// Its path relative to the work dir.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its MIME type, guessed from the extension.
    pub content_type: &'static str,
    /// Its bytes, base64-encoded (standard alphabet, padded).
    pub content_base64: String,
}

impl From<&Produced> for ReturnedFile {
    fn from(file: &Produced) -> Self {
        ReturnedFile {
            path: file.path.clone(),
            size: file.data.len() as u64,
            content_type: file.content_type(),
            content_base64: BASE64.encode(&file.data),
        }
    }
}

/// A work-dir entry that was not collected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageBody {
    /// Wall-clock time of the job.
    pub wall_ms: u64,
    /// CPU time of all its processes.
    pub cpu_ms: Option<u64>,
    /// The peak memory of all its processes together.
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

impl From<JobResult> for ExecuteResponse {
    fn from(result: JobResult) -> Self {
        ExecuteResponse {
            exit_code: result.exit_code,
            signal: result.signal,
            stdout: result.stdout,
            stderr: result.stderr,
            uploads: Vec::new(),
            timed_out: result.timed_out,
            duration_ms: result.usage.wall_ms,
            stdout_truncated: result.stdout_truncated,
            stderr_truncated: result.stderr_truncated,
            limit_exceeded: result.limit_exceeded.map(LimitKind::as_str),
            usage: result.usage.into(),
            violations: result.violations.into_iter().map(Into::into).collect(),
            files: None,
            skipped_files: None,
            skipped_files_unlisted: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_camel_case_in_contract_order() {
        let response = ExecuteResponse::from(JobResult {
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
                cpu_ms: Some(5),
                peak_memory_bytes: None,
            },
            violations: vec![NetworkViolation {
                method: "CONNECT".into(),
                target: "evil.com:443".into(),
                reason: "not in allowed domains".into(),
            }],
            files: Vec::new(),
            skipped_files: Vec::new(),
            skipped_unlisted: 0,
        });
        assert_eq!(
            serde_json::to_string(&response).unwrap(),
            r#"{"exitCode":0,"signal":null,"stdout":"4\n","stderr":"","uploads":[],"timedOut":false,"durationMs":12,"stdoutTruncated":false,"stderrTruncated":true,"limitExceeded":"output","usage":{"wallMs":12,"cpuMs":5,"peakMemoryBytes":null},"violations":[{"method":"CONNECT","target":"evil.com:443","reason":"not in allowed domains"}]}"#
        );
    }

    #[test]
    fn a_killed_job_has_a_null_exit_code_and_a_signal() {
        let response = ExecuteResponse::from(JobResult {
            exit_code: None,
            signal: Some("SIGKILL".into()),
            stdout: String::new(),
            stderr: "[sandbox] killed: wall-clock timeout of 1000 ms exceeded\n".into(),
            stdout_truncated: false,
            stderr_truncated: false,
            timed_out: true,
            limit_exceeded: Some(LimitKind::Time),
            usage: Usage {
                wall_ms: 1003,
                cpu_ms: Some(1),
                peak_memory_bytes: Some(4096),
            },
            violations: vec![],
            files: Vec::new(),
            skipped_files: Vec::new(),
            skipped_unlisted: 0,
        });
        assert_eq!(
            serde_json::to_string(&response).unwrap(),
            r#"{"exitCode":null,"signal":"SIGKILL","stdout":"","stderr":"[sandbox] killed: wall-clock timeout of 1000 ms exceeded\n","uploads":[],"timedOut":true,"durationMs":1003,"stdoutTruncated":false,"stderrTruncated":false,"limitExceeded":"time","usage":{"wallMs":1003,"cpuMs":1,"peakMemoryBytes":4096},"violations":[]}"#
        );
    }

    #[test]
    fn returned_and_skipped_files_come_last() {
        let mut response = ExecuteResponse::from(crate::testing::four());
        response.files = Some(vec![ReturnedFile::from(&Produced {
            path: "a.png".into(),
            data: bytes::Bytes::from_static(&[0, 255]),
        })]);
        response.skipped_files = Some(vec![Skipped::from(&SkippedFile {
            path: "l".into(),
            reason: pysandbox_shared::SkipReason::Symlink,
        })]);
        response.skipped_files_unlisted = 3;
        let json = serde_json::to_string(&response).unwrap();
        assert!(
            json.ends_with(r#""usage":{"wallMs":7,"cpuMs":3,"peakMemoryBytes":1048576},"violations":[],"files":[{"path":"a.png","size":2,"contentType":"image/png","contentBase64":"AP8="}],"skippedFiles":[{"path":"l","reason":"symlink"}],"skippedFilesUnlisted":3}"#),
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
