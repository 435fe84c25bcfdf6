//! The frontend needs no privilege at all: it refuses to run as root (unless told
//! to, with a warning) and sheds every capability it was started with, so a bug in
//! its HTTP handling hands an attacker nothing beyond an ordinary user.

use caps::CapSet;

/// Why the frontend will not start.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// Started as root without `--allow-root`.
    #[error(
        "refusing to run as root: the frontend needs no privilege; run it as an unprivileged \
         user (e.g. User=pysandbox), or pass --allow-root"
    )]
    Root,
    /// Capabilities could not be dropped.
    #[error("cannot drop capabilities: {0}")]
    Caps(#[from] caps::errors::CapsError),
    /// Some capability is still effective after dropping them all.
    #[error("capabilities remain after dropping them: {0:?}")]
    Remaining(caps::CapsHashSet),
}

/// Checks the process is unprivileged and drops any capability it holds (from file
/// capabilities or an ambient set). With `allow_root`, root is accepted and keeps
/// what it has.
pub fn shed(allow_root: bool) -> Result<(), PrivilegeError> {
    if nix::unistd::geteuid().is_root() {
        if !allow_root {
            return Err(PrivilegeError::Root);
        }
        tracing::warn!("running as root because of --allow-root; the frontend needs no privilege");
        return Ok(());
    }
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        caps::clear(None, set)?;
    }
    let remaining = caps::read(None, CapSet::Effective)?;
    if remaining.is_empty() {
        Ok(())
    } else {
        Err(PrivilegeError::Remaining(remaining))
    }
}
