//! pysandbox-executor: the privileged half of pysandbox. It serves a Unix socket, and
//! runs each job it is sent in a fresh bubblewrap jail as an unprivileged uid.

pub mod cgroup;
pub mod check;
pub mod collect;
pub mod config;
pub mod error;
pub mod ids;
pub mod inputs;
pub mod jail;
pub mod job;
pub mod output;
pub mod pool;
pub mod privileges;
pub mod proxy;
pub mod server;
mod sys;
pub mod workdir;

pub use config::{Cli, Command, Config};
pub use error::{chain, Error};
