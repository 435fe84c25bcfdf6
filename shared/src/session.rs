//! Sessions: one interpreter kept alive between calls, as the executor opens,
//! runs, describes and closes them for the frontend.

use serde::{Deserialize, Serialize};

use crate::bounded;
use crate::job::JobSpec;
use crate::limits::JobLimits;
use crate::network::NetworkRequest;

/// The longest session id: a routing key of at most 63 characters, a dot, 32 hex
/// digits.
pub const MAX_SESSION_ID_LEN: usize = 96;

/// Whether `id` could be a session id: 1 to [`MAX_SESSION_ID_LEN`] ASCII letters,
/// digits, `-` and `.`. Anything else names no session, so it is answered "not
/// found" before it reaches a log line or a map.
pub fn is_session_id(id: &str) -> bool {
    (1..=MAX_SESSION_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// A request to open a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSpec {
    /// Carried into the executor's logs.
    pub request_id: String,
    /// How long the session may sit unused before it ends; `None` takes the
    /// executor's default.
    pub idle_timeout_ms: Option<u32>,
    /// The session's limits: memory, processes and disk for the whole session; CPU
    /// time and output the default of each call.
    pub limits: JobLimits,
    /// The network the session asks for, as for a job.
    pub network: Option<NetworkRequest>,
}

/// A job to run in a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCall {
    /// The session, as [`SessionState::session_id`] named it.
    #[serde(deserialize_with = "bounded::string::<_, MAX_SESSION_ID_LEN>")]
    pub session_id: String,
    /// The call: its code, stdin, files, timeout and CPU and output limits.
    pub spec: JobSpec,
}

/// What a session is and holds, as the executor sees it now. Times are
/// milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    /// Names the session in every later request.
    #[serde(deserialize_with = "bounded::string::<_, MAX_SESSION_ID_LEN>")]
    pub session_id: String,
    pub created_ms: u64,
    /// When the last call ended, or the session was created.
    pub last_used_ms: u64,
    /// When it ends unless called again.
    pub expires_ms: u64,
    pub idle_timeout_ms: u32,
    /// Calls run so far.
    pub calls: u64,
    /// Whether a call runs now.
    pub busy: bool,
    /// Memory its processes use now, when a cgroup counts it.
    pub memory_bytes: Option<u64>,
    pub memory_mb: u32,
    pub max_processes: u32,
    pub disk_mb: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};
    use crate::protocol::Request;

    #[test]
    fn session_ids_are_short_and_plain() {
        for good in [
            "h.0123abcd",
            "a",
            "pod-7.ff",
            &"x".repeat(MAX_SESSION_ID_LEN),
        ] {
            assert!(is_session_id(good), "{good}");
        }
        for bad in [
            "",
            "../x",
            "a/b",
            "a b",
            "é",
            "a%2F",
            "a\n",
            &"x".repeat(MAX_SESSION_ID_LEN + 1),
        ] {
            assert!(!is_session_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn an_overlong_session_id_on_the_wire_is_refused() {
        let long = "x".repeat(MAX_SESSION_ID_LEN + 1);
        for request in [
            Request::DescribeSession(long.clone()),
            Request::CloseSession(long),
        ] {
            assert!(decode::<Request>(&encode(&request).unwrap()).is_err());
        }
    }
}
