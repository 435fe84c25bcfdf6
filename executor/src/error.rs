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
    /// A job's jail could not be created or started; the job did not run.
    #[error("jail setup failed: {0}")]
    Jail(String),
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
}

impl Error {
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
