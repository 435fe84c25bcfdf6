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
//! - [`target`]: strict parsing and normalization of `host:port`.
//! - [`policy`]: domain patterns, allow/deny lists, ports, address classes.
//! - `server`: the per-job socket, HTTP CONNECT and absolute-URI HTTP/1.x.

pub mod policy;
mod server;
pub mod target;

/// The jail binds the socket under this name (checked by the jail's tests).
#[cfg(test)]
pub use server::SOCKET_NAME;
pub use server::{JobProxy, NetworkReport, ProxyLimits};
