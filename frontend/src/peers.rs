//! Open connections per client address, so one client cannot hold them all
//! (review L6: 1100 idle connections from one client delayed everyone's `/health`
//! by about 7 s).
//!
//! An IPv6 client is counted by its /64: one host is normally given a whole /64
//! and can pick any address in it, so counting single addresses would not bound it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};

use pysandbox_shared::net::canonical;

/// Counts open connections per client and refuses those over the cap.
#[derive(Debug, Clone)]
pub struct PeerLimit {
    cap: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection counted against its client; uncounted when dropped.
#[derive(Debug)]
pub struct PeerSlot {
    key: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PeerLimit {
    /// At most `cap` connections per client.
    pub fn new(cap: usize) -> Self {
        PeerLimit {
            cap,
            open: Arc::default(),
        }
    }

    /// Counts a connection from `ip`, or `None` when its client already holds the
    /// cap.
    pub fn enter(&self, ip: IpAddr) -> Option<PeerSlot> {
        let key = client_key(ip);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(key).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            key,
            open: Arc::clone(&self.open),
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                // Forgotten at once, so the map holds only clients with connections.
                open.remove(&self.key);
            }
        }
    }
}

/// The client an address belongs to: IPv4 (an IPv4-mapped address counts as its
/// IPv4 address) or an IPv6 /64.
fn client_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn each_client_gets_the_cap_and_slots_free_on_drop() {
        let limit = PeerLimit::new(2);
        let a1 = limit.enter(ip("192.0.2.1")).unwrap();
        let _a2 = limit.enter(ip("::ffff:192.0.2.1")).unwrap();
        assert!(limit.enter(ip("192.0.2.1")).is_none(), "over the cap");
        let _b = limit.enter(ip("192.0.2.2")).unwrap();
        drop(a1);
        let _a3 = limit.enter(ip("192.0.2.1")).unwrap();
        assert!(limit.enter(ip("192.0.2.1")).is_none());
    }

    #[test]
    fn an_ipv6_client_is_its_slash_64() {
        let limit = PeerLimit::new(1);
        let _one = limit.enter(ip("2001:db8:1:2::1")).unwrap();
        assert!(limit.enter(ip("2001:db8:1:2:ffff::9")).is_none());
        assert!(limit.enter(ip("2001:db8:1:3::1")).is_some());
    }

    #[test]
    fn clients_without_connections_are_forgotten() {
        let limit = PeerLimit::new(3);
        let slots: Vec<_> = (0..3)
            .map(|i| limit.enter(IpAddr::from([10, 0, 0, i])).unwrap())
            .collect();
        assert_eq!(limit.open.lock().unwrap().len(), 3);
        drop(slots);
        assert!(limit.open.lock().unwrap().is_empty());
    }
}
