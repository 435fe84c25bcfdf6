//! A job forked from a fork-server template (`docs/fork-server.md`), seen from the
//! executor: everything the template's child needs to build the job's jail — the
//! order and its descriptors: stdio, a status pipe, detached clones of the job's
//! directories and its cgroups' join files — then, once the job was handed
//! over, its wait status as the child reports it.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

use crate::cgroup::JobCgroup;
use crate::error::Error;
use crate::fork::order::Order;
use crate::fork::{STATUS_EXITED, STATUS_FAILED, STATUS_STARTED};
use crate::jail::bwrap::JobDirs;
use crate::template::Template;

/// The longest report a job's child writes on the status pipe (a setup failure's
/// text); the rest is not read.
const MAX_REPORT_BYTES: usize = 4096;

/// The descriptors a forked job's hand-off passes, in the places
/// `fork::order::Slot` gives them, and the executor's ends of its pipes: made
/// before the job is known, since they depend only on its directories and cgroups.
#[derive(Debug)]
pub struct Passed {
    fds: Vec<OwnedFd>,
    status: pipe::Receiver,
    ends: Ends,
}

/// A job ready to be handed to its template: its order and descriptors.
#[derive(Debug)]
pub struct Pending {
    template: Arc<Template>,
    order: String,
    passed: Passed,
}

/// The executor's ends of a forked job's stdio.
#[derive(Debug)]
pub struct Ends {
    pub stdin: pipe::Sender,
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
}

/// A job its template forked, until its child reports how it ended.
#[derive(Debug)]
pub struct Running {
    status: pipe::Receiver,
    /// What the child reported so far: kept here, so that a wait given up halfway
    /// (a session's call ends while its interpreter lives on) loses nothing.
    report: Vec<u8>,
    /// Held until the job ended: a replaced template retires only after its last
    /// job, since killing it kills the jobs in its namespaces.
    _template: Arc<Template>,
}

impl Passed {
    /// The descriptors for a job whose directories are `dirs` and whose cgroups
    /// are `cgroup`.
    pub fn new(dirs: &JobDirs, cgroup: &JobCgroup) -> Result<Passed, Error> {
        let pipe_error = |e| Error::jail("create a pipe")(e);
        let (stdin, stdin_theirs) = pipe::pipe().map_err(pipe_error)?;
        let (stdout_theirs, stdout) = pipe::pipe().map_err(pipe_error)?;
        let (stderr_theirs, stderr) = pipe::pipe().map_err(pipe_error)?;
        let (status_theirs, status) = pipe::pipe().map_err(pipe_error)?;
        let mut fds = vec![
            stdin_theirs.into_blocking_fd().map_err(pipe_error)?,
            stdout_theirs.into_blocking_fd().map_err(pipe_error)?,
            stderr_theirs.into_blocking_fd().map_err(pipe_error)?,
            status_theirs.into_blocking_fd().map_err(pipe_error)?,
            clone_mount(&dirs.work, false)?,
            clone_mount(&dirs.tmp, false)?,
            clone_mount(&dirs.sandbox, true)?,
        ];
        let procs = cgroup.join_fds_owned();
        fds.extend(procs.map_err(Error::jail("pass the job's cgroups"))?);
        Ok(Passed {
            fds,
            status,
            ends: Ends {
                stdin,
                stdout,
                stderr,
            },
        })
    }
}

impl Pending {
    /// Prepares the hand-off of `order`, with `passed`, to `template`.
    pub fn new(template: Arc<Template>, order: &Order, passed: Passed) -> Pending {
        Pending {
            template,
            order: order.encode(),
            passed,
        }
    }

    /// Hands the job to its template, which forks it at once, and returns it with
    /// the executor's ends of its stdio. Our copies of the passed descriptors close
    /// here, so the job's pipes end when the job's copies do.
    pub fn hand_off(self) -> Result<(Running, Ends), Error> {
        let fds: Vec<RawFd> = self.passed.fds.iter().map(AsRawFd::as_raw_fd).collect();
        self.template
            .send(self.order.as_bytes(), &fds)
            .map_err(Error::NotForked)?;
        let running = Running {
            status: self.passed.status,
            report: Vec::new(),
            _template: self.template,
        };
        Ok((running, self.passed.ends))
    }
}

impl Running {
    /// Waits for the child's report: the job's wait status. A child killed before
    /// it reported (the executor killed the job's cgroup) reads as SIGKILL; one
    /// that could not build the jail is an error with its reason; an order no
    /// spare took is a [`NotTaken`] error.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        let mut chunk = [0u8; 512];
        loop {
            let n = self.status.read(&mut chunk).await?;
            let room = MAX_REPORT_BYTES.saturating_sub(self.report.len());
            self.report.extend_from_slice(&chunk[..n.min(room)]);
            // An exit status is the report's last word: the job's processes are
            // gone by then (its pid 1 with them); the reporter need not be.
            if n == 0 || is_exit_status(&self.report) {
                return read_report(&self.report);
            }
        }
    }
}

/// The order was dropped unread (its template is gone) or refused before the
/// job began: no code of the job ran.
#[derive(Debug, thiserror::Error)]
#[error("no spare of the template took the job")]
pub struct NotTaken;

/// Whether `error` (from [`Running::wait`]) says no code of the job ran.
pub fn not_taken(error: &io::Error) -> bool {
    error.get_ref().is_some_and(|e| e.is::<NotTaken>())
}

/// Whether `report` is a whole report of an exit status, which nothing follows.
fn is_exit_status(report: &[u8]) -> bool {
    matches!(report, [STATUS_STARTED, STATUS_EXITED, _, _, _, _])
}

fn read_report(report: &[u8]) -> io::Result<ExitStatus> {
    let Some(report) = report.strip_prefix(&[STATUS_STARTED]) else {
        return Err(io::Error::other(NotTaken));
    };
    match report.split_first() {
        Some((&STATUS_EXITED, status)) => {
            let status: [u8; 4] = status
                .try_into()
                .map_err(|_| io::Error::other("a malformed status report"))?;
            Ok(ExitStatus::from_raw(i32::from_be_bytes(status)))
        }
        Some((&STATUS_FAILED, why)) => Err(io::Error::other(format!(
            "the forked job's jail was not built: {}",
            pysandbox_shared::text::shown(&String::from_utf8_lossy(why), 500)
        ))),
        _ => Ok(ExitStatus::from_raw(libc::SIGKILL)),
    }
}

/// A detached clone of the job directory at `path` (read-only if asked).
fn clone_mount(path: &Path, read_only: bool) -> Result<OwnedFd, Error> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| Error::jail("name a job directory")(io::Error::other(e)))?;
    crate::sys::clone_mount(&path, read_only)
        .map_err(Error::jail("clone the job's directory mounts"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_read_as_the_child_wrote_them_and_garbage_as_killed() {
        let exited = read_report(b"RS\0\0\x03\0").unwrap();
        assert_eq!(exited.code(), Some(3));
        let signaled = read_report(b"RS\0\0\0\x09").unwrap();
        assert_eq!(signaled.signal(), Some(9));
        let failed = read_report(b"RFcannot unshare\x1b[2J").unwrap_err();
        assert!(failed.to_string().contains("cannot unshare"), "{failed}");
        assert!(!failed.to_string().contains('\x1b'));
        assert!(!not_taken(&failed));
        assert!(read_report(b"RS\x01").is_err());
        for garbage in [&b"R"[..], b"RX", b"R\0\0\0\0\0"] {
            assert_eq!(read_report(garbage).unwrap().signal(), Some(libc::SIGKILL));
        }
    }

    #[test]
    fn a_report_without_the_start_says_no_code_ran() {
        for never in [&b""[..], b"S\0\0\0\0", b"Fno"] {
            assert!(not_taken(&read_report(never).unwrap_err()), "{never:?}");
        }
    }
}
