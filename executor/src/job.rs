//! Running one job: a fresh work dir and jail, its input fed, its output captured,
//! its wall-clock limit enforced, and what happened turned into a [`JobResult`].

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pysandbox_shared::{JobError, JobResult, JobSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::process::{Child, ChildStdin};

use crate::config::Config;
use crate::error::Error;
use crate::jail::{Jail, Started};
use crate::output::{capture, Captured};
use crate::workdir::{jobs_dir, WorkDir};

/// How long output may keep flowing after the jail's pid 1 is gone. The kernel kills
/// the rest of the pid namespace with it, so the pipes close almost at once; this only
/// bounds a wait that should never be long.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Exit statuses above this are bwrap's report of a fatal signal (128 + signal number).
const SIGNAL_EXIT_BASE: i32 = 128;

/// Runs jobs, each in a jail of its own.
#[derive(Debug)]
pub struct Runner {
    jail: Jail,
    jobs_dir: PathBuf,
    uid: u32,
    gid: u32,
    default_timeout_ms: u32,
    max_timeout_ms: u32,
    output_bytes: usize,
    next_id: AtomicU64,
}

impl Runner {
    pub fn new(config: &Config, jail: Jail) -> Runner {
        Runner {
            jail,
            jobs_dir: jobs_dir(&config.state_dir),
            uid: config.sandbox_uid,
            gid: config.sandbox_gid,
            default_timeout_ms: config.default_timeout_ms,
            max_timeout_ms: config.max_timeout_ms,
            output_bytes: config.output_bytes as usize,
            next_id: AtomicU64::new(1),
        }
    }

    /// The job's wall-clock limit, or why the job asks for more than is allowed.
    pub fn timeout_ms(&self, spec: &JobSpec) -> Result<u32, JobError> {
        match spec.timeout_ms.unwrap_or(self.default_timeout_ms) {
            0 => Err(JobError::Rejected {
                field: "timeoutMs".into(),
                reason: "must be at least 1".into(),
            }),
            ms if ms > self.max_timeout_ms => Err(JobError::Rejected {
                field: "timeoutMs".into(),
                reason: format!("must be at most {}", self.max_timeout_ms),
            }),
            ms => Ok(ms),
        }
    }

    /// Runs `spec` to its end. Dropping the returned future kills the jail and removes
    /// the work dir.
    pub async fn run(&self, spec: &JobSpec, timeout_ms: u32) -> Result<JobResult, Error> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let work = WorkDir::create(&self.jobs_dir, id, self.uid, self.gid)?;
        let stdin = match spec.stdin {
            Some(_) => Stdio::piped(),
            None => Stdio::null(),
        };
        let started_at = Instant::now();
        let Started { mut child, ready } = self.jail.spawn(work.path(), &spec.code, stdin)?;
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let input = child.stdin.take();
        let timeout = Duration::from_millis(timeout_ms.into());
        let io = async {
            tokio::join!(
                capture_opt(stdout, self.output_bytes),
                capture_opt(stderr, self.output_bytes),
                feed(input, spec.stdin.as_deref().unwrap_or_default()),
                is_ready(ready),
            )
        };
        let (waited, io) = tokio::join!(
            wait_or_kill(&mut child, timeout),
            tokio::time::timeout(timeout + DRAIN_GRACE, io),
        );
        let duration = started_at.elapsed();
        let (status, timed_out) = waited.map_err(|e| Error::Jail(format!("cannot wait: {e}")))?;
        let Ok((stdout, stderr, (), ready)) = io else {
            return Err(Error::Jail("the jail's output did not close".into()));
        };
        if !ready {
            let reason = stderr.into_text();
            return Err(Error::Jail(reason.trim().chars().take(500).collect()));
        }
        drop(work);
        Ok(assemble(
            status,
            timed_out,
            timeout_ms,
            stdout,
            stderr,
            self.output_bytes,
            duration,
        ))
    }
}

/// Waits for the jail to end, killing it once `timeout` has passed. Killing bwrap is
/// enough: its pid 1 dies with it (`--die-with-parent`) and the kernel then kills
/// every other process of the jail's pid namespace.
async fn wait_or_kill(child: &mut Child, timeout: Duration) -> std::io::Result<(ExitStatus, bool)> {
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => Ok((status?, false)),
        Err(_) => {
            child.start_kill()?;
            Ok((child.wait().await?, true))
        }
    }
}

async fn capture_opt<R: tokio::io::AsyncRead + Unpin>(stream: Option<R>, cap: usize) -> Captured {
    match stream {
        Some(stream) => capture(stream, cap).await,
        None => Captured::default(),
    }
}

/// Writes the job's stdin, then closes it so the job reads EOF. A job that exits
/// without reading it all just ends the write.
async fn feed(input: Option<ChildStdin>, data: &str) {
    if let Some(mut input) = input {
        let _ = input.write_all(data.as_bytes()).await;
    }
}

/// Whether jail-init reported the jail set up before the pipe closed.
async fn is_ready(mut ready: pipe::Receiver) -> bool {
    let mut byte = [0u8; 1];
    matches!(ready.read(&mut byte).await, Ok(1))
}

fn assemble(
    status: ExitStatus,
    timed_out: bool,
    timeout_ms: u32,
    stdout: Captured,
    stderr: Captured,
    cap: usize,
    duration: Duration,
) -> JobResult {
    let (exit_code, signal) = exit_of(status, timed_out);
    let (stdout_truncated, stderr_truncated) = (stdout.truncated, stderr.truncated);
    let mut notes = Vec::new();
    if timed_out {
        notes.push(format!(
            "killed: wall-clock timeout of {timeout_ms} ms exceeded"
        ));
    }
    if stdout_truncated {
        notes.push(format!("stdout truncated at {cap} bytes"));
    }
    if stderr_truncated {
        notes.push(format!("stderr truncated at {cap} bytes"));
    }
    let mut stderr = stderr.into_text();
    for note in notes {
        if !stderr.is_empty() && !stderr.ends_with('\n') {
            stderr.push('\n');
        }
        stderr.push_str("[sandbox] ");
        stderr.push_str(&note);
        stderr.push('\n');
    }
    JobResult {
        exit_code,
        signal,
        stdout: stdout.into_text(),
        stderr,
        stdout_truncated,
        stderr_truncated,
        timed_out,
        duration_ms: duration.as_millis() as u64,
    }
}

/// The job's exit code or the name of the signal that ended it.
///
/// bwrap reports a job killed by signal N as exit status 128 + N, so a Python that
/// calls `sys.exit(137)` reads as SIGKILL too; the shell has the same ambiguity.
fn exit_of(status: ExitStatus, timed_out: bool) -> (Option<i32>, Option<String>) {
    let name = |n: i32| {
        nix::sys::signal::Signal::try_from(n)
            .ok()
            .map(|s| s.as_str().to_owned())
    };
    if timed_out {
        return (None, Some("SIGKILL".into()));
    }
    if let Some(n) = status.signal() {
        return (None, name(n).or(Some(format!("signal {n}"))));
    }
    let code = status.code().unwrap_or(-1);
    match code
        .checked_sub(SIGNAL_EXIT_BASE)
        .filter(|&n| n > 0)
        .and_then(name)
    {
        Some(signal) => (None, Some(signal)),
        None => (Some(code), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    fn text(s: &str, truncated: bool) -> Captured {
        Captured {
            bytes: s.as_bytes().to_vec(),
            truncated,
        }
    }

    #[test]
    fn exit_codes_and_signals() {
        assert_eq!(exit_of(exited(0), false), (Some(0), None));
        assert_eq!(exit_of(exited(3), false), (Some(3), None));
        assert_eq!(
            exit_of(exited(128 + 11), false),
            (None, Some("SIGSEGV".into()))
        );
        assert_eq!(exit_of(exited(128), false), (Some(128), None));
        assert_eq!(exit_of(exited(255), false), (Some(255), None));
        assert_eq!(
            exit_of(ExitStatus::from_raw(9), false),
            (None, Some("SIGKILL".into()))
        );
        assert_eq!(exit_of(exited(0), true), (None, Some("SIGKILL".into())));
    }

    #[test]
    fn every_limit_hit_adds_one_sandbox_line() {
        let result = assemble(
            exited(0),
            true,
            1000,
            text("out", true),
            text("partial", true),
            3,
            Duration::from_millis(5),
        );
        assert_eq!(
            result.stderr,
            "partial\n[sandbox] killed: wall-clock timeout of 1000 ms exceeded\n\
             [sandbox] stdout truncated at 3 bytes\n[sandbox] stderr truncated at 3 bytes\n"
        );
        assert!(result.timed_out && result.stdout_truncated && result.stderr_truncated);
        assert_eq!((result.exit_code, result.duration_ms), (None, 5));
    }

    #[test]
    fn a_clean_run_adds_nothing() {
        let result = assemble(
            exited(0),
            false,
            1000,
            text("4\n", false),
            text("", false),
            10,
            Duration::ZERO,
        );
        assert_eq!(
            (result.stdout.as_str(), result.stderr.as_str()),
            ("4\n", "")
        );
    }
}
