//! The egress proxy: the only way out of a jail that may use the network.
//!
//! A job's net namespace has nothing but loopback. When the job may use the network,
//! the executor serves a proxy on a Unix socket of that job ([`JobProxy`]); the
//! socket is bind-mounted into the jail, where socat relays `127.0.0.1:3128` to it
//! and the `*_PROXY` variables point there. The proxy runs in the executor as tokio
//! tasks owned by the job's run, with no capability of its own to lean on: it
//! connects only where the job's [`policy::Policy`] allows, to the address it
//! checked.
//!
//! - [`ask`]: the ask callback, which decides targets neither list covers.
//! - [`target`]: strict parsing and normalization of `host:port`.
//! - [`policy`]: domain patterns, allow/deny lists, ports, address classes.
//! - `server`: the per-job socket, its accept loop, and each request's answer.
//! - `http`: HTTP/1 heads and chunk sizes as the proxy parses and writes them.
//! - `relay`: the bytes of a served request, counted and timed.

pub mod ask;
mod http;
pub mod policy;
mod relay;
mod server;
pub mod target;

/// The jail binds the socket under this name (checked by the jail's tests).
#[cfg(test)]
pub use server::SOCKET_NAME;
pub use server::{JobProxy, NetworkReport, Proxies, ProxyLimits};

/// The pure parsers, for the fuzz targets in `executor/fuzz/`; not an API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    /// Request head parsing, as the proxy does it on a client's first bytes.
    pub fn request_head(bytes: &[u8]) {
        let _ = super::http::request_head_done(bytes);
        if let Ok(parsed) = super::http::parse_request(bytes) {
            if let super::http::Request::Forward(forward) = parsed.request {
                let _ = forward.head();
            }
        }
    }

    /// Response head parsing and rewriting.
    pub fn response_head(bytes: &[u8]) {
        let _ = super::http::response_head(bytes);
    }

    /// A chunk-size line.
    pub fn chunk_size(bytes: &[u8]) {
        let _ = super::http::chunk_size(bytes);
    }

    /// A `host:port` target: one that parses prints as text that parses back to
    /// itself.
    pub fn target_authority(text: &str) {
        use super::target::Target;
        if let Ok(target) = Target::parse_authority(text, Some(80)) {
            let again = Target::parse_authority(&target.to_string(), None);
            assert_eq!(again.ok(), Some(target));
        }
    }
}
