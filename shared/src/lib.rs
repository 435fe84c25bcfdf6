//! What both pysandbox daemons agree on: the job a frontend hands to the executor,
//! the result it gets back, and the framed wire protocol that carries them.
//!
//! Everything here decodes bytes from a peer that is not trusted (a compromised
//! frontend, a stray local process): sizes are bounded before allocation and no
//! input makes it panic.
#![forbid(unsafe_code)]

pub mod codec;
pub mod job;
pub mod limits;
pub mod network;
pub mod protocol;

pub use codec::{Connection, ProtocolError, MAX_FRAME_LEN};
pub use job::{JobError, JobResult, JobSpec, MAX_TIMEOUT_MS};
pub use limits::{JobLimits, LimitKind, Usage};
pub use network::{NetworkRequest, NetworkViolation, MAX_REQUESTED_DOMAINS, MAX_VIOLATIONS};
pub use protocol::{Enforcement, ExecutorStatus, Hello, Request, Response, PROTOCOL_VERSION};
