//! A session's processes, and one call in them: its cell sent, its output, figures
//! and refusals passed on as they come, its limits interrupting it, its end read
//! from the display channel, and the files it changed collected.

use std::collections::HashSet;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use pysandbox_shared::{FilesEnd, LimitKind, NetworkViolation, Response, Stream, Usage};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cgroup::JobCgroup;
use crate::collect;
use crate::config::Limits;
use crate::display::{self, CellEnd};
use crate::error::Error;
use crate::ids::Lease;
use crate::inputs;
use crate::job::{
    assemble, collect_files, cpu_spent, is_ready, pass_violations, wait_until_empty, Begun,
    Observed, Prepared, Process, Runner, SessionJail,
};
use crate::output::forward_call;
use crate::proxy::policy::Policy;
use crate::proxy::JobProxy;
use crate::workdir::WorkDir;

use super::Call;

/// How long a session's interpreter may take to start and say it waits for cells.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an interrupted cell has to stop before its session is killed.
const INTERRUPT_GRACE: Duration = Duration::from_secs(2);

/// A session's processes and everything the executor holds of them. Dropping it
/// kills them all and removes the session's cgroup and tmpfs, in that order.
#[derive(Debug)]
pub struct Live {
    process: Process,
    /// Its egress proxy, when it may use the network.
    proxy: Option<JobProxy>,
    violations: mpsc::Receiver<NetworkViolation>,
    /// Where a cell's orders go: the interpreter's stdin.
    orders: pipe::Sender,
    stdout: pipe::Receiver,
    stderr: pipe::Receiver,
    display: pipe::Receiver,
    /// The interpreter, for interrupts.
    interpreter: OwnedFd,
    cgroup: JobCgroup,
    dir: WorkDir,
    /// Last, so that the ids are free again only once everything else is gone.
    ids: Lease,
}

impl Live {
    /// Starts a session's jail within `limits` and waits until its interpreter
    /// waits for cells.
    pub async fn start(
        runner: &Runner,
        limits: &Limits,
        network: Option<Policy>,
    ) -> Result<Live, Error> {
        let SessionJail {
            jail: prepared,
            orders,
            proxy,
            violations,
        } = runner.prepare_session(limits, network)?;
        let Prepared {
            dir,
            mut display,
            cgroup,
            started,
            warm,
            ids,
        } = prepared;
        let cgroup = cgroup.ok_or(Error::SessionsNeedCgroups)?;
        let Begun {
            mut process,
            stdout,
            stderr,
            input,
            ready,
            handoff,
        } = started.begin(warm)?;
        let gone = CancellationToken::new();
        let pid = async {
            if let Some(mut handoff) = handoff {
                let _ = handoff.write_all(orders.as_bytes()).await;
            }
            if let Some(ready) = ready {
                if !is_ready(ready).await {
                    return None;
                }
            }
            display::read_pid(&mut display, &gone).await
        };
        let pid = tokio::select! {
            pid = tokio::time::timeout(START_TIMEOUT, pid) => pid.ok().flatten(),
            _ = process.wait() => None,
        };
        let pid = pid.ok_or(Error::SessionDidNotStart)?;
        let host_pid = host_pid(&cgroup, pid).ok_or(Error::SessionDidNotStart)?;
        let interpreter = crate::sys::pidfd_open(host_pid)
            .map_err(Error::jail("open the session interpreter's pidfd"))?;
        Ok(Live {
            process,
            proxy,
            violations,
            orders: input,
            stdout,
            stderr,
            display,
            interpreter,
            cgroup,
            dir,
            ids,
        })
    }

    /// Runs one call to its end: its output and displays sent as they come, then
    /// [`Response::Ended`], then the files it changed; the answer is what collection
    /// left out. When the call ended the interpreter too, `ended` says why. The
    /// session `closing` interrupts the call as its caller leaving does.
    pub(super) async fn call(
        &mut self,
        runner: &Runner,
        call: &Call,
        closing: &CancellationToken,
        ended: &mut Option<String>,
    ) -> Result<FilesEnd, Error> {
        let Call {
            spec,
            resolved,
            frames,
            gone: caller_gone,
            ..
        } = call;
        let limits = resolved.limits;
        let Live {
            process,
            proxy,
            violations,
            orders,
            stdout,
            stderr,
            display,
            interpreter,
            cgroup,
            dir,
            ids,
        } = self;
        let work = dir.dirs().work;
        inputs::write(&work, &spec.files, ids.pair(), true)?;
        let stdin = spec.stdin.as_deref().unwrap_or_default();
        let order = [
            format!("run {} {}\n", spec.code.len(), stdin.len()).as_bytes(),
            spec.code.as_bytes(),
            stdin.as_bytes(),
        ]
        .concat();
        // The call returns what it created or changed: every file as it is now is
        // left out unless it changes.
        let unchanged = match spec.collect_files {
            true => {
                let work = work.clone();
                tokio::task::spawn_blocking(move || collect::stamps(&work))
                    .await
                    .map_err(|e| Error::Collect(std::io::Error::other(e)))?
                    .map_err(Error::Collect)?
            }
            false => HashSet::new(),
        };
        let before = cgroup.report();
        let cpu_base = before.cpu_ns.unwrap_or(0);
        cgroup.reset_peak();
        let started_at = Instant::now();
        // Cancelled when the cell ended, or the interpreter did.
        let over = CancellationToken::new();
        // Cancelled when the interpreter is gone: the display channel is drained.
        let dead = CancellationToken::new();
        let cap = limits.output_bytes as usize;
        let io = async {
            let shown = async {
                let shown =
                    display::read(display, runner.display_caps(), frames, &dead, true).await;
                over.cancel();
                shown
            };
            // Sent alongside the rest, under the call's deadline: an interpreter
            // that does not read its orders is interrupted, then killed, like one
            // that does not end its cell. A dead one shows as the process's end.
            let send = async {
                let _ = orders.write_all(&order).await;
            };
            let (out, err, shown, (), ()) = tokio::join!(
                forward_call(stdout, Stream::Stdout, cap, frames, over.cancelled()),
                forward_call(stderr, Stream::Stderr, cap, frames, over.cancelled()),
                shown,
                send,
                pass_violations(violations, frames, &over),
            );
            ((out, err), shown)
        };
        let timeout = Duration::from_millis(resolved.timeout_ms.into());
        let cpu = Duration::from_millis(limits.cpu_ms.into());
        let watch = async {
            let watched = watch(
                process,
                cgroup,
                interpreter,
                timeout,
                (cpu_base, cpu),
                [caller_gone, closing],
                &over,
            )
            .await;
            if !matches!(watched, Ok(Watched::CellEnded | Watched::Interrupted(_))) {
                dead.cancel();
            }
            over.cancel();
            watched
        };
        let (watched, (truncated, shown)) = tokio::join!(watch, io);
        let watched = watched.map_err(Error::jail("wait for the session's interpreter"))?;
        let cell = |end: Option<CellEnd>| match end {
            Some(CellEnd::Ok) => ExitStatus::from_raw(0),
            _ => ExitStatus::from_raw(1 << 8),
        };
        let interrupted = ExitStatus::from_raw(libc::SIGINT);
        let (status, killed_by, was_interrupted) = match watched {
            // The channel carried something else than the cell's end: the job wrote
            // into it, and the session can no longer tell where a cell ends.
            Watched::CellEnded if shown.cell_end.is_none() => {
                *ended = Some("the session wrote into its own control channel".into());
                (cell(None), None, false)
            }
            Watched::CellEnded => (cell(shown.cell_end), None, false),
            Watched::Interrupted(why) => (interrupted, why, true),
            Watched::Died(status) => {
                *ended = Some(end_reason(
                    status,
                    cgroup.report().oom_kills > before.oom_kills,
                ));
                (status, None, false)
            }
            Watched::Killed(why, status) => {
                *ended = Some("a call did not stop when interrupted at its limit".into());
                (status, why, false)
            }
        };
        if ended.is_some() {
            cgroup.kill_all();
            wait_until_empty(cgroup).await;
        }
        // What the proxy refused after the live pass stopped, so that every
        // violation `Ended` lists was sent before it.
        pass_violations(violations, frames, &over).await;
        let report = cgroup.report();
        let observed = Observed {
            status: Some(status),
            killed_by,
            interrupted: was_interrupted,
            oom_killed: report.oom_kills > before.oom_kills,
            pids_limited: report.pids_refused > before.pids_refused,
            disk_full: dir.is_full(),
            usage: Usage {
                wall_ms: started_at.elapsed().as_millis() as u64,
                cpu_ms: report
                    .cpu_ns
                    .map(|ns| ns.saturating_sub(cpu_base) / 1_000_000),
                peak_memory_bytes: report.peak_memory_bytes,
            },
            network: proxy
                .as_ref()
                .map(JobProxy::take_report)
                .unwrap_or_default(),
        };
        let end = assemble(observed, resolved, truncated, shown);
        info!(
            exit_code = end.exit_code,
            signal = end.signal.as_deref(),
            limit = end.limit_exceeded.map(LimitKind::as_str),
            wall_ms = end.usage.wall_ms,
            "session call finished"
        );
        if frames.send(Response::Ended(end)).await.is_err() || !spec.collect_files {
            return Ok(FilesEnd::default());
        }
        let collected =
            collect_files(work, runner.collect_caps(), unchanged, frames.clone()).await?;
        Ok(FilesEnd {
            skipped_files: collected.skipped,
            skipped_unlisted: collected.skipped_unlisted,
        })
    }
}

impl Live {
    /// The file of the session cgroup's memory figure.
    pub(super) fn memory_file(&self) -> Option<PathBuf> {
        self.cgroup.memory_file()
    }

    /// Waits until the interpreter ends between calls; why, in words.
    pub(super) async fn died(&mut self) -> String {
        let status = self.process.wait().await;
        let oom = self.cgroup.report().oom_kills > 0;
        match status {
            Ok(status) => end_reason(status, oom),
            Err(_) => "the interpreter ended".into(),
        }
    }
}

/// How a call's wait ended.
enum Watched {
    /// The cell ran to its end (or raised).
    CellEnded,
    /// The cell stopped when interrupted: at its time or CPU limit, or because its
    /// caller left (`None`).
    Interrupted(Option<LimitKind>),
    /// The interpreter ended.
    Died(ExitStatus),
    /// The cell did not stop when interrupted; the session was killed.
    Killed(Option<LimitKind>, ExitStatus),
}

/// Waits for the cell to end (`over`) or the interpreter to die; at the call's time
/// or CPU limit, or when its caller is gone or the session closing (`stop`),
/// interrupts the cell and gives it
/// [`INTERRUPT_GRACE`] to stop before everything of the session is killed.
async fn watch(
    process: &mut Process,
    cgroup: &JobCgroup,
    interpreter: &OwnedFd,
    timeout: Duration,
    (cpu_base, cpu_limit): (u64, Duration),
    stop: [&CancellationToken; 2],
    over: &CancellationToken,
) -> std::io::Result<Watched> {
    let why = tokio::select! {
        biased;
        () = over.cancelled() => return Ok(Watched::CellEnded),
        status = process.wait() => return Ok(Watched::Died(status?)),
        () = tokio::time::sleep(timeout) => Some(LimitKind::Time),
        () = cpu_spent(cgroup, cpu_base, cpu_limit) => Some(LimitKind::Cpu),
        () = stop[0].cancelled() => None,
        () = stop[1].cancelled() => None,
    };
    if let Err(e) = crate::sys::pidfd_send_signal(interpreter.as_fd(), libc::SIGINT) {
        warn!(error = %e, "cannot interrupt the session's interpreter");
    }
    tokio::select! {
        biased;
        () = over.cancelled() => Ok(Watched::Interrupted(why)),
        status = process.wait() => Ok(Watched::Died(status?)),
        () = tokio::time::sleep(INTERRUPT_GRACE) => {
            cgroup.kill_all();
            let status = process.wait().await?;
            Ok(Watched::Killed(why, status))
        }
    }
}

/// Why a session whose interpreter ended with `status` is over, in words for its
/// client.
fn end_reason(status: ExitStatus, oom_killed: bool) -> String {
    if oom_killed {
        return "the memory limit was exceeded".into();
    }
    match (status.code(), status.signal()) {
        (Some(code), _) if code > 128 => {
            format!("the interpreter was killed by signal {}", code - 128)
        }
        (Some(code), _) => format!("the interpreter exited with code {code}"),
        (None, Some(signal)) => format!("the interpreter was killed by signal {signal}"),
        (None, None) => "the interpreter ended".into(),
    }
}

/// The host pid of the session's interpreter, whose pid in its own namespace is
/// `pid`: the process of the session's cgroup whose innermost `NSpid` it is.
fn host_pid(cgroup: &JobCgroup, pid: i32) -> Option<i32> {
    cgroup.pids().into_iter().find(|host| {
        let status = std::fs::read_to_string(format!("/proc/{host}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("NSpid:"))
            .and_then(|ids| ids.split_whitespace().last())
            .and_then(|inner| inner.parse::<i32>().ok())
            == Some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ended_session_says_why_in_words() {
        let exited = |code: i32| ExitStatus::from_raw(code << 8);
        assert_eq!(
            end_reason(exited(3), false),
            "the interpreter exited with code 3"
        );
        assert_eq!(
            end_reason(exited(128 + 11), false),
            "the interpreter was killed by signal 11"
        );
        assert_eq!(
            end_reason(ExitStatus::from_raw(libc::SIGKILL), false),
            "the interpreter was killed by signal 9"
        );
        assert_eq!(
            end_reason(ExitStatus::from_raw(libc::SIGKILL), true),
            "the memory limit was exceeded"
        );
    }
}
