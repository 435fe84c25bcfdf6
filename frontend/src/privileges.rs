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
    drop_all(&mut Kernel)
}

/// The capability calls of [`drop_all`], so what it asks of the kernel is tested
/// without privileges.
trait Capabilities {
    fn held(&self, set: CapSet) -> Result<caps::CapsHashSet, caps::errors::CapsError>;
    fn clear(&mut self, set: CapSet) -> Result<(), caps::errors::CapsError>;
}

/// This process's capabilities (`capget`, `capset`, `prctl(PR_CAP_AMBIENT)`).
struct Kernel;

impl Capabilities for Kernel {
    fn held(&self, set: CapSet) -> Result<caps::CapsHashSet, caps::errors::CapsError> {
        caps::read(None, set)
    }

    fn clear(&mut self, set: CapSet) -> Result<(), caps::errors::CapsError> {
        caps::clear(None, set)
    }
}

/// Clears every capability set, but only when something is held: `capset` is in
/// systemd's `@privileged` group, which the frontend's unit forbids (a filtered
/// syscall killed the service with SIGSYS at every start, issue 11). Holding nothing,
/// the frontend has nothing to drop, and the unit's empty `CapabilityBoundingSet=`
/// guarantees that; allowing `capset` in the filter instead would widen it for every
/// later bug. `capget` (in `@system-service`) is all this path needs then.
fn drop_all(caps: &mut impl Capabilities) -> Result<(), PrivilegeError> {
    // Effective is a subset of permitted, ambient of permitted and inheritable
    // (capabilities(7)): with those two empty, nothing is held.
    if caps.held(CapSet::Permitted)?.is_empty() && caps.held(CapSet::Inheritable)?.is_empty() {
        return Ok(());
    }
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        caps.clear(set)?;
    }
    let remaining = caps.held(CapSet::Effective)?;
    if remaining.is_empty() {
        Ok(())
    } else {
        Err(PrivilegeError::Remaining(remaining))
    }
}

#[cfg(test)]
mod tests {
    use caps::errors::CapsError;
    use caps::{CapSet, Capability, CapsHashSet};

    use super::{drop_all, Capabilities, PrivilegeError};

    /// Capability sets in memory. `filtered` plays a seccomp filter that forbids
    /// `capset`, as the frontend's unit does (`SystemCallFilter=~@privileged`).
    struct Fake {
        permitted: CapsHashSet,
        inheritable: CapsHashSet,
        effective: CapsHashSet,
        filtered: bool,
        cleared: Vec<CapSet>,
    }

    impl Fake {
        fn holding(caps: &[Capability], filtered: bool) -> Fake {
            let set: CapsHashSet = caps.iter().copied().collect();
            Fake {
                permitted: set.clone(),
                inheritable: CapsHashSet::new(),
                effective: set,
                filtered,
                cleared: Vec::new(),
            }
        }
    }

    impl Capabilities for Fake {
        fn held(&self, set: CapSet) -> Result<CapsHashSet, CapsError> {
            Ok(match set {
                CapSet::Permitted => self.permitted.clone(),
                CapSet::Inheritable => self.inheritable.clone(),
                CapSet::Effective => self.effective.clone(),
                _ => CapsHashSet::new(),
            })
        }

        fn clear(&mut self, set: CapSet) -> Result<(), CapsError> {
            if self.filtered {
                return Err(CapsError::from("capset failure: Operation not permitted"));
            }
            self.cleared.push(set);
            match set {
                CapSet::Permitted => self.permitted.clear(),
                CapSet::Inheritable => self.inheritable.clear(),
                CapSet::Effective => self.effective.clear(),
                _ => {}
            }
            Ok(())
        }
    }

    #[test]
    fn holding_nothing_under_a_filter_that_forbids_capset_starts() {
        let mut caps = Fake::holding(&[], true);
        drop_all(&mut caps).unwrap();
        assert!(caps.cleared.is_empty());
    }

    #[test]
    fn held_capabilities_are_all_dropped() {
        let mut caps = Fake::holding(&[Capability::CAP_NET_BIND_SERVICE], false);
        drop_all(&mut caps).unwrap();
        assert_eq!(caps.cleared.len(), 4);
        assert!(caps.permitted.is_empty() && caps.effective.is_empty());
    }

    #[test]
    fn an_inheritable_capability_alone_is_dropped_too() {
        let mut caps = Fake::holding(&[], false);
        caps.inheritable.insert(Capability::CAP_NET_ADMIN);
        drop_all(&mut caps).unwrap();
        assert!(caps.inheritable.is_empty());
    }

    #[test]
    fn capabilities_that_cannot_be_dropped_stop_the_start() {
        let mut caps = Fake::holding(&[Capability::CAP_SYS_ADMIN], true);
        assert!(matches!(drop_all(&mut caps), Err(PrivilegeError::Caps(_))));
    }
}
