//! pysandbox-executor: the privileged half of pysandbox. It serves a Unix socket, and
//! runs each job it is sent in a fresh bubblewrap jail as an unprivileged uid.
//!
//! Only what the binary needs is public; crate-private modules let rustc find dead
//! code. Every `unsafe` block lives in `sys`, and the compiler holds us to that.

#![deny(unsafe_code)]

pub(crate) mod cgroup;
pub(crate) mod check;
pub(crate) mod collect;
pub(crate) mod config;
pub(crate) mod display;
pub(crate) mod error;
pub mod fork;
pub(crate) mod forked;
pub(crate) mod host_watch;
pub(crate) mod ids;
pub(crate) mod inputs;
pub(crate) mod jail;
pub(crate) mod job;
pub(crate) mod metrics;
pub(crate) mod output;
pub(crate) mod pool;
pub(crate) mod privileges;
pub(crate) mod proxy;
pub(crate) mod server;
pub(crate) mod session;
#[allow(unsafe_code)]
mod sys;
pub(crate) mod template;
pub(crate) mod workdir;

pub use check::run as check_host;
pub use config::{Cli, Command, Config};
pub use error::{chain, Error};
pub use jail::init::{main as jail_init, SUBCOMMAND as JAIL_INIT};
pub use privileges::{drop_unneeded as drop_capabilities, mask as capability_mask};
pub use server::run as serve;

/// The proxy's pure parsers, for the fuzz targets in `executor/fuzz/`; not an API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use proxy::fuzzing;
