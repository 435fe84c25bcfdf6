//! What both pysandbox daemons agree on: the job a frontend hands to the executor,
//! the result it gets back (with the files the job produced), and the framed wire
//! protocol that carries them.
//!
//! Everything here decodes bytes from a peer that is not trusted (a compromised
//! frontend, a stray local process): sizes are bounded before allocation and no
//! input makes it panic.
#![forbid(unsafe_code)]

pub(crate) mod bounded;
pub mod codec;
pub mod files;
pub mod job;
pub mod limits;
pub mod net;
pub mod network;
pub mod protocol;
pub mod session;
pub mod text;

pub use codec::{
    ClientConnection, ClientReceiver, ClientSender, Connection, HelloError, ProtocolError,
    ServerConnection, ServerReceiver, ServerSender, MAX_REQUEST_FRAME_LEN, MAX_RESPONSE_FRAME_LEN,
};
pub use files::{InputFile, PathError, RelativePath, SkipReason, SkippedFile};
pub use job::{
    JobEnd, JobError, JobSpec, MAX_DISPLAYS, MAX_DISPLAYS_BYTES, MAX_RESULT_BYTES, MAX_TIMEOUT_MS,
};
pub use limits::{JobLimits, LimitKind, Usage, MAX_OUTPUT_BYTES};
pub use network::{NetworkRequest, NetworkViolation, MAX_REQUESTED_DOMAINS, MAX_VIOLATIONS};
pub use protocol::{
    Ask, AskAnswer, AskOutcome, Bucket, Count, DisplayStart, Enforcement, ExecutorMetrics,
    ExecutorStatus, FileStart, FilesEnd, Hello, Layer, OutputChunk, Request, Response, Started,
    Stream, Truncated, MAX_CHUNK_BYTES, PROTOCOL_VERSION,
};
pub use session::{is_session_id, SessionCall, SessionSpec, SessionState, MAX_SESSION_ID_LEN};
