//! Warm jails: set up ahead of their jobs, so a job skips the jail's setup and
//! Python's start (and the configured imports). Each serves exactly one job and is
//! then destroyed like any other; isolation is the same as a cold jail's, because it
//! is the same jail, handed its job later.

use std::sync::Mutex;

use tokio::sync::Notify;

use crate::job::Prepared;

/// The jails waiting for a job.
#[derive(Debug)]
pub struct Pool {
    jails: Mutex<Vec<Prepared>>,
    size: usize,
    /// Wakes the refill task: a job finished, so a slot is free and maybe a jail
    /// was used.
    pub wake: Notify,
}

impl Pool {
    pub fn new(size: u32) -> Pool {
        Pool {
            jails: Mutex::new(Vec::new()),
            size: size as usize,
            wake: Notify::new(),
        }
    }

    /// A warm jail, if one is waiting. The refill task is told only once the job
    /// that took it is done (see the server): setting up a jail meanwhile would
    /// compete with that job for the CPU.
    pub fn take(&self) -> Option<Prepared> {
        self.lock().pop()
    }

    /// Adds a warm jail.
    pub fn put(&self, jail: Prepared) {
        self.lock().push(jail);
    }

    /// Whether the pool is below its size.
    pub fn wants_more(&self) -> bool {
        self.lock().len() < self.size
    }

    /// Jails waiting now.
    pub fn waiting(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Prepared>> {
        // A panic while holding the lock cannot leave the Vec inconsistent.
        self.jails
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
