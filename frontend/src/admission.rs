//! Admission control for jobs: at most `MAX_INFLIGHT` at the executor, at most
//! `MAX_QUEUE` more waiting for a slot, and a 429 for anything beyond.
//!
//! Both bounds are released by `Drop`, so a request whose client goes away (its
//! handler future is dropped) gives its place back at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// Counts the jobs in the service and hands out executor slots.
#[derive(Debug, Clone)]
pub struct Admission {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    slots: Arc<Semaphore>,
    /// Requests between [`Admission::enter`] and the drop of their ticket.
    in_service: AtomicUsize,
    /// `MAX_INFLIGHT + MAX_QUEUE`.
    capacity: usize,
}

/// A request's place in the service (running or queued).
#[derive(Debug)]
pub struct Ticket {
    inner: Arc<Inner>,
}

/// Permission to have one job at the executor; the slot frees when this drops.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    _ticket: Ticket,
}

impl Admission {
    /// Up to `max_inflight` jobs at once, with `max_queue` more waiting.
    pub fn new(max_inflight: usize, max_queue: usize) -> Self {
        Admission {
            inner: Arc::new(Inner {
                slots: Arc::new(Semaphore::new(max_inflight)),
                in_service: AtomicUsize::new(0),
                capacity: max_inflight.saturating_add(max_queue),
            }),
        }
    }

    /// Takes a place in the service, or answers 429 when it is full.
    pub fn enter(&self) -> Result<Ticket, ApiError> {
        let inner = &self.inner;
        inner
            .in_service
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < inner.capacity).then_some(n + 1)
            })
            .map_err(|_| ApiError::Saturated)?;
        Ok(Ticket {
            inner: Arc::clone(inner),
        })
    }

    /// Requests in the service now (running or queued).
    pub fn in_service(&self) -> usize {
        self.inner.in_service.load(Ordering::Acquire)
    }
}

impl Ticket {
    /// Waits (in the queue) for an executor slot.
    pub async fn slot(self) -> Result<Slot, ApiError> {
        // The semaphore is never closed, so this error would be a bug.
        let permit = Arc::clone(&self.inner.slots)
            .acquire_owned()
            .await
            .map_err(|_| ApiError::Internal)?;
        Ok(Slot {
            _permit: permit,
            _ticket: self,
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.inner.in_service.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn queue_full_is_429_and_places_come_back() {
        let admission = Admission::new(1, 2);
        let running = admission.enter().unwrap().slot().await.unwrap();
        let queued: Vec<Ticket> = (0..2).map(|_| admission.enter().unwrap()).collect();
        assert_eq!(admission.in_service(), 3);
        assert_eq!(admission.enter().unwrap_err(), ApiError::Saturated);

        drop(running);
        assert_eq!(admission.in_service(), 2);
        let again = admission.enter().unwrap();
        assert_eq!(admission.enter().unwrap_err(), ApiError::Saturated);
        drop(again);
        drop(queued);
        assert_eq!(admission.in_service(), 0);
    }

    #[tokio::test]
    async fn queued_requests_wait_for_a_slot() {
        let admission = Admission::new(1, 1);
        let running = admission.enter().unwrap().slot().await.unwrap();
        let waiting = tokio::spawn(admission.enter().unwrap().slot());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        drop(running);
        let slot = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(admission.in_service(), 1);
        drop(slot);
        assert_eq!(admission.in_service(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_wait_gives_its_place_back() {
        let admission = Admission::new(1, 1);
        let _running = admission.enter().unwrap().slot().await.unwrap();
        let waiting = tokio::spawn(admission.enter().unwrap().slot());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(admission.enter().unwrap_err(), ApiError::Saturated);
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(admission.in_service(), 1);
        assert!(admission.enter().is_ok());
    }

    #[test]
    fn zero_queue_means_only_running_jobs() {
        let admission = Admission::new(2, 0);
        let _a = admission.enter().unwrap();
        let _b = admission.enter().unwrap();
        assert_eq!(admission.enter().unwrap_err(), ApiError::Saturated);
    }
}
