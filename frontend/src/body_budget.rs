//! How many bytes of request bodies are being read at once, all requests together.
//!
//! Bodies are read before admission (the body says what the job is), so without
//! this bound MAX_CONNECTIONS × MAX_BODY_BYTES could be buffered: 1024 × 1 MiB
//! pinned about 1.1 GB (security-2 F9). A request reserves its declared length, or
//! MAX_BODY_BYTES for a chunked body, before reading; when the budget is spent it
//! is answered 503 with `Retry-After` at once rather than queued.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// The semaphore counts KiB, so that a `u32` count covers any body.
const UNIT: u64 = 1024;

/// The bytes of request bodies that may be buffered at once.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    units: Arc<Semaphore>,
    total_units: u32,
}

/// Bytes reserved for one body; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    _permit: OwnedSemaphorePermit,
}

impl BodyBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: u64) -> Self {
        let total_units = u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX);
        BodyBudget {
            units: Arc::new(Semaphore::new(total_units as usize)),
            total_units,
        }
    }

    /// Reserves room for a body of `bytes` (a body larger than the whole budget
    /// takes all of it), or refuses when that much is not free now.
    pub fn reserve(&self, bytes: u64) -> Result<Reservation, ApiError> {
        let units = u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total_units.max(1));
        Arc::clone(&self.units)
            .try_acquire_many_owned(units)
            .map(|permit| Reservation { _permit: permit })
            .map_err(|_| ApiError::BodiesBusy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_bounded_and_given_back() {
        let budget = BodyBudget::new(3 * 1024 * 1024);
        let first = budget.reserve(1 << 20).unwrap();
        let second = budget.reserve(1 << 20).unwrap();
        let _small = budget.reserve(10).unwrap();
        assert_eq!(budget.reserve(1 << 20).unwrap_err(), ApiError::BodiesBusy);
        drop((first, second));
        let _again = budget.reserve(2 << 20).unwrap();
    }

    #[test]
    fn a_body_larger_than_the_budget_takes_all_of_it() {
        let budget = BodyBudget::new(1 << 20);
        let all = budget.reserve(u64::MAX).unwrap();
        assert_eq!(budget.reserve(0).unwrap_err(), ApiError::BodiesBusy);
        drop(all);
        assert!(budget.reserve(0).is_ok());
    }
}
