//! The executor's status as `/health` shows it, asked at most about once a second.
//!
//! `/health` needs no token, and each status query costs the executor a connection
//! and its descriptors: a flood of `/health` once held enough of them to make jail
//! setup fail (security-2 F1). The status is cached for [`MAX_AGE`], and one query
//! at a time refreshes it (single flight): the others wait for that answer, so a
//! flood makes O(1) executor connections.

use std::time::Duration;

use pysandbox_shared::ExecutorStatus;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::executor_client::ExecutorClient;

/// How old a cached status may be when it is shown.
pub const MAX_AGE: Duration = Duration::from_secs(1);

/// The last status asked for (`None` inside: the executor did not answer).
#[derive(Debug)]
pub struct StatusCache {
    executor: ExecutorClient,
    last: Mutex<Option<(Instant, Option<ExecutorStatus>)>>,
}

impl StatusCache {
    /// A cache asking `executor`.
    pub fn new(executor: ExecutorClient) -> Self {
        StatusCache {
            executor,
            last: Mutex::new(None),
        }
    }

    /// The executor's status, at most [`MAX_AGE`] old.
    pub async fn status(&self) -> Option<ExecutorStatus> {
        // Held across the query: whoever comes meanwhile waits for its answer
        // instead of asking too.
        let mut last = self.last.lock().await;
        if let Some((at, status)) = last.as_ref() {
            if at.elapsed() < MAX_AGE {
                return status.clone();
            }
        }
        let status = self.executor.status().await;
        *last = Some((Instant::now(), status.clone()));
        status
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use pysandbox_shared::{Request, Response};

    use super::*;
    use crate::testing::{handshake, FakeExecutor};

    fn status() -> ExecutorStatus {
        ExecutorStatus {
            running_jobs: 0,
            max_jobs: 2,
            enforcement: Vec::new(),
            isolation: Vec::new(),
            warm_jails: 0,
            queued_jobs: 0,
            sessions: 0,
            metrics: Default::default(),
        }
    }

    /// An executor that counts its connections and answers status queries slowly
    /// enough for concurrent callers to overlap.
    fn counting_executor() -> (FakeExecutor, Arc<AtomicUsize>) {
        let count = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&count);
        let executor = FakeExecutor::start(move |mut conn| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                assert_eq!(handshake(&mut conn).await, Request::Status);
                tokio::time::sleep(Duration::from_millis(100)).await;
                conn.send(&Response::Status(status())).await.unwrap();
            }
        });
        (executor, count)
    }

    #[tokio::test]
    async fn a_flood_of_queries_makes_one_connection_per_second() {
        let (executor, connections) = counting_executor();
        let cache = Arc::new(StatusCache::new(ExecutorClient::new(
            executor.socket.clone(),
        )));
        let queries: Vec<_> = (0..200)
            .map(|_| {
                let cache = Arc::clone(&cache);
                tokio::spawn(async move { cache.status().await })
            })
            .collect();
        for query in queries {
            assert_eq!(query.await.unwrap(), Some(status()));
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1);
        assert_eq!(cache.status().await, Some(status()));
        assert_eq!(connections.load(Ordering::SeqCst), 1, "still fresh");

        tokio::time::sleep(MAX_AGE).await;
        assert_eq!(cache.status().await, Some(status()));
        assert_eq!(
            connections.load(Ordering::SeqCst),
            2,
            "refreshed once stale"
        );
    }

    #[tokio::test]
    async fn a_down_executor_is_remembered_too() {
        let dir = tempfile::tempdir().unwrap();
        let cache = StatusCache::new(ExecutorClient::new(dir.path().join("none.sock")));
        assert_eq!(cache.status().await, None);
        // Came up within the second: the cached "down" is still shown, no query.
        let (executor, connections) = counting_executor();
        std::fs::hard_link(&executor.socket, dir.path().join("none.sock")).unwrap();
        assert_eq!(cache.status().await, None);
        assert_eq!(connections.load(Ordering::SeqCst), 0);
    }
}
