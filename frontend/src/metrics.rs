//! `GET /metrics`: the Prometheus text exposition (format 0.0.4) of the frontend's
//! own counters and of the executor's, which come with its status over the socket.
//!
//! Labels take values from small fixed sets only: route templates (never the raw
//! path), status codes, outcome and reason identifiers. Code, ids, tokens and hosts
//! never become a label, so a client cannot grow the number of series.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pysandbox_shared::{AskOutcome, Count, ExecutorStatus, PROTOCOL_VERSION};

use crate::error::ApiError;
use crate::response::Upload;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The route label of a request that matched no route.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Why a request was turned away for want of capacity.
const REJECTIONS: [&str; 4] = [
    "frontend_queue_full",
    "executor_busy",
    "connections_full",
    "bodies_busy",
];

/// The frontend's counters since it started.
#[derive(Debug, Default)]
pub struct Metrics {
    /// By route template and status code: both from small fixed sets.
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    rejections: [AtomicU64; REJECTIONS.len()],
    uploads_ok: AtomicU64,
    uploads_failed: AtomicU64,
    /// Work-dir entries not uploaded because collection skipped them (symlinks,
    /// over a cap, …): not failures of the upload service.
    uploads_skipped: AtomicU64,
    /// Shared with the ask callback's caller, which counts its calls.
    asks: Arc<AskCounters>,
}

/// Upper bounds of the ask callback's latency histogram, in milliseconds, up to
/// the largest `ask_timeout_ms`.
const ASK_BOUNDS_MS: [u64; 9] = [5, 10, 25, 50, 100, 250, 1_000, 5_000, 60_000];

/// Calls of the ask callback: answers by outcome, and how long they took.
#[derive(Debug, Default)]
pub struct AskCounters {
    outcomes: [AtomicU64; AskOutcome::ALL.len()],
    /// Per bound, not cumulative; the last one is past every bound.
    latency: [AtomicU64; ASK_BOUNDS_MS.len() + 1],
    latency_sum_ms: AtomicU64,
}

impl AskCounters {
    /// Counts one call that came to `outcome` after `took`.
    pub fn observe(&self, outcome: AskOutcome, took: Duration) {
        let at = AskOutcome::ALL.iter().position(|o| *o == outcome);
        if let Some(i) = at {
            self.outcomes[i].fetch_add(1, Ordering::Relaxed);
        }
        let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        let bucket = ASK_BOUNDS_MS
            .iter()
            .position(|le| ms <= *le)
            .unwrap_or(ASK_BOUNDS_MS.len());
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_ms.fetch_add(ms, Ordering::Relaxed);
    }

    fn render(&self, out: &mut Exposition) {
        let name = "pysandbox_ask_answers_total";
        out.family(
            name,
            "counter",
            "Calls of the ask callback, by outcome (only allowed opens a target).",
        );
        for (outcome, n) in AskOutcome::ALL.iter().zip(&self.outcomes) {
            let n = n.load(Ordering::Relaxed);
            out.sample(name, &[("outcome", outcome.as_str())], n);
        }
        let name = "pysandbox_ask_duration_seconds";
        out.family(name, "histogram", "Time the ask callback took to answer.");
        let mut count = 0;
        let bounds = ASK_BOUNDS_MS.iter().map(|ms| seconds(*ms));
        for (le, n) in bounds.chain(["+Inf".to_owned()]).zip(&self.latency) {
            count += n.load(Ordering::Relaxed);
            out.sample(&format!("{name}_bucket"), &[("le", &le)], count);
        }
        let sum = self.latency_sum_ms.load(Ordering::Relaxed);
        out.line(&format!("{name}_sum {}", seconds(sum)));
        out.sample(&format!("{name}_count"), &[], count);
    }
}

impl Metrics {
    /// Counts one answered request; `route` is a template from the router.
    pub fn request(&self, route: &'static str, status: u16) {
        let mut requests = self
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *requests.entry((route, status)).or_default() += 1;
    }

    /// Counts `error` when it turned a request away for want of capacity.
    pub fn error(&self, error: &ApiError) {
        let reason = match error {
            ApiError::Saturated => 0,
            ApiError::Busy { .. } => 1,
            ApiError::ConnectionsFull => 2,
            ApiError::BodiesBusy => 3,
            _ => return,
        };
        self.rejections[reason].fetch_add(1, Ordering::Relaxed);
    }

    /// The ask callback's counters, for its caller to count in.
    pub fn asks(&self) -> Arc<AskCounters> {
        Arc::clone(&self.asks)
    }

    /// Counts the uploads of one job's files by result, and the `skipped` work-dir
    /// entries that were not uploaded.
    pub fn uploads(&self, uploads: &[Upload], skipped: usize) {
        self.uploads_skipped
            .fetch_add(skipped as u64, Ordering::Relaxed);
        for upload in uploads {
            let counter = match upload.error {
                None => &self.uploads_ok,
                Some(_) => &self.uploads_failed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The exposition, with the executor's figures when it answered.
    pub fn render(&self, executor: Option<&ExecutorStatus>) -> String {
        let mut out = Exposition::default();
        out.family(
            "pysandbox_build_info",
            "gauge",
            "Version of this frontend and of its wire protocol; always 1.",
        );
        let version = env!("CARGO_PKG_VERSION");
        let protocol = PROTOCOL_VERSION.to_string();
        out.sample(
            "pysandbox_build_info",
            &[("version", version), ("protocol", &protocol)],
            1,
        );
        self.render_own(&mut out);
        out.family(
            "pysandbox_executor_up",
            "gauge",
            "Whether the executor answered its last status query (cached up to 1 s).",
        );
        out.sample("pysandbox_executor_up", &[], u64::from(executor.is_some()));
        if let Some(status) = executor {
            render_executor(&mut out, status);
        }
        out.text
    }

    fn render_own(&self, out: &mut Exposition) {
        out.family(
            "pysandbox_http_requests_total",
            "counter",
            "HTTP requests answered, by route template and status code.",
        );
        let requests = self
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for ((route, status), n) in requests {
            let status = status.to_string();
            out.sample(
                "pysandbox_http_requests_total",
                &[("route", route), ("status", &status)],
                n,
            );
        }
        out.family(
            "pysandbox_admission_rejections_total",
            "counter",
            "Requests turned away for want of capacity, by reason.",
        );
        for (reason, n) in REJECTIONS.iter().zip(&self.rejections) {
            out.sample(
                "pysandbox_admission_rejections_total",
                &[("reason", reason)],
                n.load(Ordering::Relaxed),
            );
        }
        out.family(
            "pysandbox_uploads_total",
            "counter",
            "Uploads of produced files, by result; skipped: work-dir entries not collected.",
        );
        for (result, n) in [
            ("ok", &self.uploads_ok),
            ("failed", &self.uploads_failed),
            ("skipped", &self.uploads_skipped),
        ] {
            out.sample(
                "pysandbox_uploads_total",
                &[("result", result)],
                n.load(Ordering::Relaxed),
            );
        }
        self.asks.render(out);
    }
}

/// Whether the executor says its fork-server templates are ready: its status
/// lists the fork server among the isolation layers, its detail starting "ready".
fn fork_server_ready(status: &ExecutorStatus) -> bool {
    status
        .isolation
        .iter()
        .any(|layer| layer.name == "fork server" && layer.detail.starts_with("ready"))
}

fn render_executor(out: &mut Exposition, status: &ExecutorStatus) {
    let gauges = [
        (
            "pysandbox_jobs_running",
            "Jobs running now.",
            status.running_jobs,
        ),
        (
            "pysandbox_jobs_queued",
            "Jobs waiting at the executor for a slot.",
            status.queued_jobs,
        ),
        (
            "pysandbox_job_slots",
            "Jobs that may run at once.",
            status.max_jobs,
        ),
        (
            "pysandbox_warm_jails",
            "Warm jails ready for a job.",
            status.warm_jails,
        ),
        (
            "pysandbox_sessions_active",
            "Sessions open now.",
            status.sessions,
        ),
        (
            "pysandbox_fork_server_ready",
            "1 while the fork server's templates are ready to fork jobs, else 0.",
            u32::from(fork_server_ready(status)),
        ),
    ];
    for (name, help, value) in gauges {
        out.family(name, "gauge", help);
        out.sample(name, &[], u64::from(value));
    }
    let metrics = &status.metrics;
    out.counts(
        "pysandbox_jobs_total",
        "Jobs by how they ended.",
        "outcome",
        &metrics.jobs,
    );
    let name = "pysandbox_job_duration_seconds";
    out.family(
        name,
        "histogram",
        "Wall-clock time of jobs from the start of their jail to their end.",
    );
    let mut count = 0;
    for bucket in &metrics.duration_buckets {
        let le = match bucket.le_ms {
            Some(ms) => seconds(ms),
            None => "+Inf".to_owned(),
        };
        out.sample(&format!("{name}_bucket"), &[("le", &le)], bucket.count);
        count = bucket.count;
    }
    out.line(&format!("{name}_sum {}", seconds(metrics.duration_sum_ms)));
    out.sample(&format!("{name}_count"), &[], count);
    out.counts(
        "pysandbox_network_violations_total",
        "Requests the egress proxies refused, by reason.",
        "reason",
        &metrics.violations,
    );
    out.family(
        "pysandbox_proxy_bytes_total",
        "counter",
        "Bytes the egress proxies relayed, both ways.",
    );
    out.sample("pysandbox_proxy_bytes_total", &[], metrics.proxy_bytes);
}

/// Milliseconds as seconds, exactly: `1500` → `1.5`.
fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        self.line(&format!("# HELP {name} {help}"));
        self.line(&format!("# TYPE {name} {kind}"));
    }

    fn counts(&mut self, name: &str, help: &str, label: &str, counts: &[Count]) {
        self.family(name, "counter", help);
        for count in counts {
            self.sample(name, &[(label, &count.label)], count.value);
        }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        let mut line = name.to_owned();
        if !labels.is_empty() {
            let pairs: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = write!(line, "{{{}}}", pairs.join(","));
        }
        let _ = write!(line, " {value}");
        self.line(&line);
    }

    fn line(&mut self, line: &str) {
        self.text.push_str(line);
        self.text.push('\n');
    }
}

/// A label value as the exposition format quotes it: the executor's label values
/// are identifiers, but a peer's bytes are never written raw.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use pysandbox_shared::{Bucket, ExecutorMetrics};

    use super::*;

    #[test]
    fn labels_are_escaped_and_seconds_exact() {
        let status = ExecutorStatus {
            running_jobs: 1,
            max_jobs: 2,
            enforcement: Vec::new(),
            isolation: Vec::new(),
            warm_jails: 0,
            queued_jobs: 0,
            sessions: 0,
            metrics: ExecutorMetrics {
                jobs: vec![Count {
                    label: "a\"b\\c\nd".into(),
                    value: 1,
                }],
                duration_buckets: vec![
                    Bucket {
                        le_ms: Some(25),
                        count: 1,
                    },
                    Bucket {
                        le_ms: None,
                        count: 2,
                    },
                ],
                duration_sum_ms: 1500,
                violations: Vec::new(),
                proxy_bytes: 0,
            },
        };
        let text = Metrics::default().render(Some(&status));
        assert!(text.contains("pysandbox_jobs_total{outcome=\"a\\\"b\\\\c\\nd\"} 1\n"));
        assert!(text.contains("pysandbox_job_duration_seconds_bucket{le=\"0.025\"} 1\n"));
        assert!(text.contains("pysandbox_job_duration_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("pysandbox_job_duration_seconds_sum 1.500\n"));
        assert!(text.contains("pysandbox_job_duration_seconds_count 2\n"));
        assert!(text.contains("pysandbox_executor_up 1\n"));
    }

    #[test]
    fn ask_answers_and_latency() {
        let metrics = Metrics::default();
        let asks = metrics.asks();
        asks.observe(AskOutcome::Allowed, Duration::from_millis(7));
        asks.observe(AskOutcome::TimedOut, Duration::from_secs(120));
        let text = metrics.render(None);
        for line in [
            "pysandbox_ask_answers_total{outcome=\"allowed\"} 1\n",
            "pysandbox_ask_answers_total{outcome=\"refused\"} 0\n",
            "pysandbox_ask_answers_total{outcome=\"timed_out\"} 1\n",
            "pysandbox_ask_duration_seconds_bucket{le=\"0.005\"} 0\n",
            "pysandbox_ask_duration_seconds_bucket{le=\"0.010\"} 1\n",
            "pysandbox_ask_duration_seconds_bucket{le=\"60.000\"} 1\n",
            "pysandbox_ask_duration_seconds_bucket{le=\"+Inf\"} 2\n",
            "pysandbox_ask_duration_seconds_sum 120.007\n",
            "pysandbox_ask_duration_seconds_count 2\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[test]
    fn only_capacity_errors_are_rejections() {
        let metrics = Metrics::default();
        metrics.error(&ApiError::Saturated);
        metrics.error(&ApiError::InvalidToken);
        let text = metrics.render(None);
        assert!(text
            .contains("pysandbox_admission_rejections_total{reason=\"frontend_queue_full\"} 1\n"));
        assert!(text.contains("pysandbox_admission_rejections_total{reason=\"executor_busy\"} 0\n"));
        assert!(text.contains("pysandbox_executor_up 0\n"));
        assert!(!text.contains("pysandbox_jobs_total"));
    }

    #[test]
    fn skipped_entries_are_not_failed_uploads() {
        let metrics = Metrics::default();
        let upload = |error: Option<&str>| Upload {
            filename: "f".into(),
            url: None,
            status: 200,
            error: error.map(Into::into),
        };
        metrics.uploads(&[upload(None), upload(Some("upload timed out"))], 3);
        let text = metrics.render(None);
        assert!(text.contains("pysandbox_uploads_total{result=\"ok\"} 1\n"));
        assert!(text.contains("pysandbox_uploads_total{result=\"failed\"} 1\n"));
        assert!(text.contains("pysandbox_uploads_total{result=\"skipped\"} 3\n"));
    }
}
