//! The host uids and gids jails run as. By default every jail runs as the one
//! sandbox user; with a range (`sandbox_ids` > 1) each jail alive, running or warm,
//! holds a uid and gid of its own, so that two jobs are different users on the host
//! even if both left their namespaces (as isolate gives each box its own uid).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::Error;

/// Offsets into the range that no jail holds now, least recently used first.
type Free = Arc<Mutex<VecDeque<u32>>>;

/// Where jails get their host ids.
#[derive(Debug)]
pub struct SandboxIds {
    uid: u32,
    gid: u32,
    /// `None`: one uid and gid for every jail.
    free: Option<Free>,
}

/// The host ids of one jail; a ranged pair goes back to the range when dropped.
#[derive(Debug)]
pub struct Lease {
    pub uid: u32,
    pub gid: u32,
    returned: Option<(Free, u32)>,
}

impl SandboxIds {
    /// `count` pairs from `(uid, gid)` up; the configuration checked that they fit.
    pub fn new(uid: u32, gid: u32, count: u32) -> SandboxIds {
        SandboxIds {
            uid,
            gid,
            free: (count > 1).then(|| Arc::new(Mutex::new((0..count).collect()))),
        }
    }

    /// Ids for a new jail: a pair no other jail holds, when there is a range. The
    /// least recently returned pair comes first, so that a uid is reused as late
    /// as possible.
    pub fn take(&self) -> Result<Lease, Error> {
        let Some(free) = &self.free else {
            return Ok(Lease {
                uid: self.uid,
                gid: self.gid,
                returned: None,
            });
        };
        let offset = lock(free).pop_front().ok_or(Error::NoSandboxId)?;
        Ok(Lease {
            uid: self.uid + offset,
            gid: self.gid + offset,
            returned: Some((free.clone(), offset)),
        })
    }
}

impl Lease {
    /// `(uid, gid)`.
    pub fn pair(&self) -> (u32, u32) {
        (self.uid, self.gid)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some((free, offset)) = self.returned.take() {
            lock(&free).push_back(offset);
        }
    }
}

fn lock(free: &Free) -> MutexGuard<'_, VecDeque<u32>> {
    // A panic while holding the lock cannot leave the queue inconsistent.
    free.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jails_alive_at_once_have_distinct_ids_and_a_freed_pair_is_reused_last() {
        let ids = SandboxIds::new(70_000, 80_000, 3);
        let a = ids.take().unwrap();
        let b = ids.take().unwrap();
        assert_eq!((a.pair(), b.pair()), ((70_000, 80_000), (70_001, 80_001)));
        drop(a);
        let c = ids.take().unwrap();
        assert_eq!(c.pair(), (70_002, 80_002));
        let d = ids.take().unwrap();
        assert_eq!(d.pair(), (70_000, 80_000));
        assert!(matches!(ids.take(), Err(Error::NoSandboxId)));
    }

    #[test]
    fn without_a_range_every_jail_shares_the_pair() {
        let ids = SandboxIds::new(999, 998, 1);
        let (a, b) = (ids.take().unwrap(), ids.take().unwrap());
        assert_eq!((a.pair(), b.pair()), ((999, 998), (999, 998)));
    }
}
