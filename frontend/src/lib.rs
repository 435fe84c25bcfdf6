//! pysandbox-frontend: the unprivileged HTTP service in front of pysandbox-executor.
//!
//! It authenticates clients, validates requests, bounds how much work is admitted,
//! and hands each job to the executor over a fresh Unix-socket connection.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admission;
pub mod auth;
pub mod error;
pub mod request;
pub mod response;

pub use auth::AuthToken;
pub use error::ApiError;
