//! The executor's error type: one variant per operation that can fail, the cause kept.

use std::path::PathBuf;

/// Everything that can go wrong in the executor outside a job's own Python.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid; the message names the key.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The `--config` file could not be read.
    #[error("cannot read config file {path:?}")]
    ConfigRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Setting up the state dir, socket or staged jail files failed.
    #[error("cannot {action} {path:?}")]
    Setup {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A step of starting a job's jail failed; the job did not run.
    #[error("jail setup failed: cannot {step}")]
    Jail {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The fork server did not take a job: the template was gone, or no spare of
    /// its took the order. No code of the job ran; it runs in a jail of its own.
    #[error("the fork server did not take the job")]
    NotForked(#[source] std::io::Error),
    /// The jail ended before jail-init said it was set up; bwrap's stderr says why.
    #[error("the jail did not start: {stderr}")]
    JailDidNotStart { stderr: String },
    /// A warm jail did not say in time that its Python waits for a job.
    #[error("a warm jail did not start")]
    WarmJailDidNotStart,
    /// A session's interpreter did not say in time that it waits for cells.
    #[error("the session's interpreter did not start")]
    SessionDidNotStart,
    /// Sessions hold their limits through cgroups, which this host lacks.
    #[error("sessions need memory and pids cgroups, which this host does not provide")]
    SessionsNeedCgroups,
    /// A fork-server template did not say in time that it is ready.
    #[error("the fork-server template did not start (its stderr is in the log)")]
    TemplateDidNotStart,
    /// The jail's output pipes stayed open after it was killed.
    #[error("the jail's output did not close")]
    OutputDidNotClose,
    /// The executor is stopping and takes no more jobs.
    #[error("the executor is shutting down")]
    ShuttingDown,
    /// Every host uid of the configured range is held by a jail.
    #[error("no sandbox uid is free (sandbox_ids is smaller than the jails alive)")]
    NoSandboxId,
    /// Writing an input file into a job's work dir failed.
    #[error("cannot write input file {path:?}")]
    WriteInput {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The input files do not fit in the job's disk limit; the job did not run.
    #[error("the input files do not fit in the job's disk")]
    InputsDoNotFit,
    /// The job's work dir could not be opened to collect its files.
    #[error("cannot collect produced files")]
    Collect(#[source] std::io::Error),
    /// Talking to a frontend failed.
    #[error(transparent)]
    Protocol(#[from] pysandbox_shared::ProtocolError),
    /// The frontend took no frame of a job's for [`crate::server`]'s send timeout.
    #[error("the peer stopped taking frames")]
    PeerStalled,
    /// The task sending a job's frames ended abnormally.
    #[error("the frame sender failed")]
    Sender(#[source] tokio::task::JoinError),
}

impl Error {
    /// Wraps an I/O failure at `step` of starting a jail.
    pub fn jail(step: &'static str) -> impl FnOnce(std::io::Error) -> Error {
        move |source| Error::Jail { step, source }
    }

    /// Wraps an I/O failure on `path` during setup.
    pub fn setup(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Setup {
            action,
            path,
            source,
        }
    }
}

/// `error` and every cause below it, outermost first, joined by ": ", for the few
/// places that print an error: Display alone shows only the outermost message
/// ("cannot create …" without "No space left on device").
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_shows_the_errno_text() {
        let full = Error::setup("create", "/state/jobs/1")(std::io::Error::from_raw_os_error(
            libc::ENOSPC,
        ));
        assert_eq!(
            chain(&full),
            "cannot create \"/state/jobs/1\": No space left on device (os error 28)"
        );
        let jail =
            Error::jail("wait for the jail")(std::io::Error::from_raw_os_error(libc::ECHILD));
        assert_eq!(
            chain(&jail),
            "jail setup failed: cannot wait for the jail: No child processes (os error 10)"
        );
    }
}
