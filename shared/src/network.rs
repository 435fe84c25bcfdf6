//! Network access a job asks for, and the requests its egress proxy refused.

use serde::{Deserialize, Serialize};

/// The most entries a job's `allowedDomains` may have; more is refused unread.
pub const MAX_REQUESTED_DOMAINS: usize = 256;

/// The most violations a result lists; later ones are only counted.
pub const MAX_VIOLATIONS: usize = 100;

/// A job's request for network access through the egress proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRequest {
    /// Domain patterns the job needs, each within the executor's configured allow
    /// list; `None` takes the whole configured list. An empty list means no network.
    #[serde(deserialize_with = "crate::bounded::option_vec::<_, _, MAX_REQUESTED_DOMAINS>")]
    pub allowed_domains: Option<Vec<String>>,
}

/// One request the egress proxy refused, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkViolation {
    /// The HTTP method of the refused request (`CONNECT`, `GET`, …), or `-` when the
    /// request could not be read.
    pub method: String,
    /// What it tried to reach, normalized: `host:port` (`[v6]:port` for IPv6), or the
    /// raw target, made printable and cut short, when it did not parse.
    pub target: String,
    /// Why it was refused, e.g. `not in allowed domains`.
    pub reason: String,
}
