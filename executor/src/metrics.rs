//! What the executor counts for the frontend's `/metrics`: jobs by outcome, their
//! durations, the egress proxies' refusals and bytes. Counters only grow; the
//! frontend reads them with [`Metrics::snapshot`] inside the status answer.
//!
//! Every label is a fixed identifier chosen here, never something a job chose (its
//! code, a host it tried, an address), so the series stay few.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use pysandbox_shared::{Bucket, Count, ExecutorMetrics, JobEnd, JobError, Response};

/// Outcomes of a job, in the order they are reported.
const OUTCOMES: [&str; 11] = [
    "ok",
    "error_exit",
    "limit_memory",
    "limit_time",
    "limit_cpu",
    "limit_processes",
    "limit_disk",
    "limit_output",
    "setup_failure",
    "client_gone",
    "shutdown",
];

/// Upper bounds of the job duration histogram, in milliseconds: from a warm job's
/// tens of milliseconds to the largest wall-clock limit.
const DURATION_BOUNDS_MS: [u64; 11] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 120_000,
];

/// Kinds of egress refusal, as [`crate::proxy`] names them.
pub(crate) const REFUSALS: [&str; 17] = [
    "bad_request",
    "malformed_target",
    "scheme",
    "host_mismatch",
    "denied",
    "not_allowed",
    "ip_literal",
    "port",
    "address",
    "too_many_connections",
    "too_many_client_connections",
    "executor_busy",
    "bytes",
    "ask_refused",
    "ask_failed",
    "ask_timed_out",
    "ask_limit",
];

/// The executor's counters since it started.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    jobs: [AtomicU64; OUTCOMES.len()],
    /// Per bound, not cumulative; the last one is past every bound.
    durations: [AtomicU64; DURATION_BOUNDS_MS.len() + 1],
    duration_sum_ms: AtomicU64,
    refusals: [AtomicU64; REFUSALS.len()],
    proxy_bytes: AtomicU64,
}

impl Metrics {
    /// Counts one refusal of kind `kind`, one of [`REFUSALS`].
    pub(crate) fn refused(&self, kind: &str) {
        if let Some(i) = REFUSALS.iter().position(|k| *k == kind) {
            self.refusals[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts bytes an egress proxy relayed.
    pub(crate) fn relayed(&self, bytes: u64) {
        self.proxy_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn outcome(&self, outcome: &str) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.jobs[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn ended(&self, end: &JobEnd) {
        self.outcome(&outcome_of(end));
        let ms = end.usage.wall_ms;
        let bucket = DURATION_BOUNDS_MS
            .iter()
            .position(|&bound| ms <= bound)
            .unwrap_or(DURATION_BOUNDS_MS.len());
        self.durations[bucket].fetch_add(1, Ordering::Relaxed);
        self.duration_sum_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// The counters as the status answer carries them.
    pub(crate) fn snapshot(&self) -> ExecutorMetrics {
        let counts = |labels: &[&str], values: &[AtomicU64]| {
            labels
                .iter()
                .zip(values)
                .map(|(label, value)| Count {
                    label: (*label).to_owned(),
                    value: value.load(Ordering::Relaxed),
                })
                .collect()
        };
        let mut cumulative = 0;
        let bounds = DURATION_BOUNDS_MS.iter().map(|&b| Some(b)).chain([None]);
        let duration_buckets = bounds
            .zip(&self.durations)
            .map(|(le_ms, count)| {
                cumulative += count.load(Ordering::Relaxed);
                Bucket {
                    le_ms,
                    count: cumulative,
                }
            })
            .collect();
        ExecutorMetrics {
            jobs: counts(&OUTCOMES, &self.jobs),
            duration_buckets,
            duration_sum_ms: self.duration_sum_ms.load(Ordering::Relaxed),
            violations: counts(&REFUSALS, &self.refusals),
            proxy_bytes: self.proxy_bytes.load(Ordering::Relaxed),
        }
    }
}

/// The outcome label of a job that ended: the limit that fired wins over the exit
/// status, which a killed job does not have.
fn outcome_of(end: &JobEnd) -> String {
    match (end.limit_exceeded, end.exit_code) {
        (Some(limit), _) => format!("limit_{}", limit.as_str()),
        (None, Some(0)) => "ok".to_owned(),
        (None, _) => "error_exit".to_owned(),
    }
}

const QUEUED: u8 = 0;
const STARTED: u8 = 1;
const COUNTED: u8 = 2;

/// Follows one job's frames as they reach its peer and counts its outcome exactly
/// once: from its end, its setup failure, its kill at shutdown, or its peer leaving
/// while it ran. A job refused before it started (busy, invalid) is not a job here.
#[derive(Debug)]
pub(crate) struct JobTally {
    metrics: Arc<Metrics>,
    state: AtomicU8,
}

impl JobTally {
    pub(crate) fn new(metrics: Arc<Metrics>) -> JobTally {
        JobTally {
            metrics,
            state: AtomicU8::new(QUEUED),
        }
    }

    /// Sees a frame sent to the peer.
    pub(crate) fn sent(&self, frame: &Response) {
        match frame {
            Response::Started(_) => {
                let _ = self.state.compare_exchange(
                    QUEUED,
                    STARTED,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            Response::Ended(end) if self.count() => self.metrics.ended(end),
            Response::Failed(JobError::JailSetup { .. }) => self.count_as("setup_failure"),
            Response::Failed(JobError::ShuttingDown) if self.started() => self.count_as("shutdown"),
            _ => {}
        }
    }

    /// The peer went away (or stopped reading): a job that was running is killed.
    pub(crate) fn peer_gone(&self) {
        if self.started() {
            self.count_as("client_gone");
        }
    }

    fn started(&self) -> bool {
        self.state.load(Ordering::Relaxed) == STARTED
    }

    fn count_as(&self, outcome: &str) {
        if self.count() {
            self.metrics.outcome(outcome);
        }
    }

    /// Whether this call is the one that counts the job.
    fn count(&self) -> bool {
        self.state.swap(COUNTED, Ordering::Relaxed) != COUNTED
    }
}

#[cfg(test)]
mod tests {
    use pysandbox_shared::{LimitKind, Started, Usage};

    use super::*;

    fn end(exit_code: Option<i32>, limit: Option<LimitKind>, wall_ms: u64) -> JobEnd {
        JobEnd {
            exit_code,
            signal: None,
            stdout_truncated: false,
            stderr_truncated: false,
            timed_out: false,
            limit_exceeded: limit,
            usage: Usage {
                wall_ms,
                cpu_ms: None,
                peak_memory_bytes: None,
            },
            notes: Vec::new(),
            violations: Vec::new(),
            result: None,
        }
    }

    fn count(snapshot: &ExecutorMetrics, label: &str) -> u64 {
        let found = snapshot.jobs.iter().find(|c| c.label == label);
        found.map(|c| c.value).expect(label)
    }

    #[test]
    fn every_limit_has_an_outcome() {
        let limits = [
            LimitKind::Memory,
            LimitKind::Time,
            LimitKind::Cpu,
            LimitKind::Processes,
            LimitKind::Disk,
            LimitKind::Output,
        ];
        for limit in limits {
            let label = outcome_of(&end(None, Some(limit), 1));
            assert!(OUTCOMES.contains(&label.as_str()), "{label}");
        }
    }

    #[test]
    fn a_job_is_counted_once_by_how_it_ended() {
        let metrics = Arc::new(Metrics::default());
        let started = Response::Started(Started { timeout_ms: 1 });
        let ok = JobTally::new(Arc::clone(&metrics));
        ok.sent(&started);
        ok.sent(&Response::Ended(end(Some(0), None, 30)));
        // The peer leaving during the file transfer does not count it again.
        ok.peer_gone();
        let limited = JobTally::new(Arc::clone(&metrics));
        limited.sent(&started);
        limited.sent(&Response::Ended(end(
            None,
            Some(LimitKind::Memory),
            200_000,
        )));
        let gone = JobTally::new(Arc::clone(&metrics));
        gone.sent(&started);
        gone.peer_gone();
        let refused = JobTally::new(Arc::clone(&metrics));
        refused.sent(&Response::Failed(JobError::Busy {
            retry_after_secs: 1,
        }));
        refused.sent(&Response::Failed(JobError::ShuttingDown));
        refused.peer_gone();

        let snapshot = metrics.snapshot();
        assert_eq!(count(&snapshot, "ok"), 1);
        assert_eq!(count(&snapshot, "limit_memory"), 1);
        assert_eq!(count(&snapshot, "client_gone"), 1);
        let total: u64 = snapshot.jobs.iter().map(|c| c.value).sum();
        assert_eq!(total, 3, "the refused job is no job");
        // 30 ms falls in the 50 ms bucket; 200 s only in the unbounded one.
        let buckets: Vec<_> = snapshot.duration_buckets.iter().map(|b| b.count).collect();
        assert_eq!(buckets, [0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2]);
        assert_eq!(snapshot.duration_buckets.last().unwrap().le_ms, None);
        assert_eq!(snapshot.duration_sum_ms, 200_030);
    }

    #[test]
    fn unknown_refusal_kinds_are_not_counted() {
        let metrics = Metrics::default();
        metrics.refused("denied");
        metrics.refused("example.com");
        let snapshot = metrics.snapshot();
        let total: u64 = snapshot.violations.iter().map(|c| c.value).sum();
        assert_eq!(total, 1);
    }
}
