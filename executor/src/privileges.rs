//! The executor's capabilities: it starts as root and keeps only what running jails
//! needs, in every set, so a bug in the executor hands an attacker less than root.
//! Nothing it spawns inherits any of them: the jail's first process switches to the
//! sandbox uid, which clears its permitted and effective sets (capabilities(7)), and
//! the inheritable and ambient sets are emptied here.

use caps::{CapSet, Capability, CapsHashSet};

/// What the executor keeps, and why.
pub const KEPT: &[(Capability, &str)] = &[
    (
        Capability::CAP_SETUID,
        "switch each jail's first process to the sandbox uid",
    ),
    (
        Capability::CAP_SETGID,
        "switch it to the sandbox gid and drop supplementary groups",
    ),
    (
        Capability::CAP_SYS_ADMIN,
        "mount and unmount each job's tmpfs",
    ),
    (
        Capability::CAP_CHOWN,
        "give a job its work dir; give the socket its group",
    ),
    (
        Capability::CAP_DAC_OVERRIDE,
        "read and remove what a job left in its work dir, owned by the sandbox uid",
    ),
    (
        Capability::CAP_KILL,
        "kill a jail's processes, which run as the sandbox uid",
    ),
];

/// Empties the bounding, inheritable and ambient sets, drops every capability
/// outside [`KEPT`] from the effective and permitted sets, and returns what is left
/// in the effective set. Without privileges (not root) there is nothing to drop.
pub fn drop_unneeded() -> Result<CapsHashSet, caps::errors::CapsError> {
    let keep: CapsHashSet = KEPT.iter().map(|(cap, _)| *cap).collect();
    // The bounding set first: dropping from it needs CAP_SETPCAP, itself dropped here.
    // All of it: the executor never execs anything that needs a capability, and every
    // jail inherits this set, so a job's processes show an empty one on the host too
    // (a switch of uid clears the other sets, not this one). Only what is still in
    // it, so that a unit's CapabilityBoundingSet= that already removed CAP_SETPCAP
    // does not make this fail.
    for cap in caps::all() {
        if caps::has_cap(None, CapSet::Bounding, cap)? {
            caps::drop(None, CapSet::Bounding, cap)?;
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    let permitted: CapsHashSet = caps::read(None, CapSet::Permitted)?
        .intersection(&keep)
        .copied()
        .collect();
    caps::set(None, CapSet::Effective, &permitted)?;
    caps::set(None, CapSet::Permitted, &permitted)?;
    caps::read(None, CapSet::Effective)
}

/// The capabilities as the kernel's bit mask, as `CapEff:` in /proc/PID/status shows.
pub fn mask(set: &CapsHashSet) -> u64 {
    set.iter().fold(0, |mask, cap| mask | cap.bitmask())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kept_capability_says_why_and_the_mask_is_small() {
        assert!(KEPT.iter().all(|(_, why)| why.len() > 10));
        let keep: CapsHashSet = KEPT.iter().map(|(cap, _)| *cap).collect();
        // CAP_CHOWN 0, DAC_OVERRIDE 1, KILL 5, SETGID 6, SETUID 7, SYS_ADMIN 21.
        assert_eq!(mask(&keep), 0x2000e3);
    }
}
