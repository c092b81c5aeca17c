//! Per-variant bulkheads: each upstream gets at most `max_in_flight` requests at once and
//! `max_queued` more waiting (each for at most `queue_timeout`) for a slot. A request that
//! finds both full is answered 503 and counted as an error *of that variant*, so a canary that
//! hangs fills its own bulkhead and its users get fast 503s (and the rollback trigger sees
//! them), while stable users never wait behind it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One variant's bulkhead, shared by every worker of a proxy.
#[derive(Debug)]
pub(crate) struct Bulkhead {
    slots: Arc<Semaphore>,
    max_in_flight: usize,
    queued: AtomicUsize,
    max_queued: usize,
    queue_timeout: Duration,
    rejected: AtomicU64,
}

/// A place in a bulkhead's queue, given back on drop.
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Bulkhead {
    pub(crate) fn new(max_in_flight: usize, max_queued: usize, queue_timeout: Duration) -> Self {
        Bulkhead {
            slots: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            queued: AtomicUsize::new(0),
            max_queued,
            queue_timeout,
            rejected: AtomicU64::new(0),
        }
    }

    /// A slot toward the upstream, held until the response ends; `None`: the bulkhead is full.
    pub(crate) async fn enter(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Some(p);
        }
        // Counted out on drop: a client that leaves while it waits (its future dropped) must
        // not keep its queue place for ever.
        let taken = self.queued.fetch_add(1, Ordering::AcqRel);
        let place = Queued(&self.queued);
        if taken >= self.max_queued {
            drop(place);
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let waited =
            tokio::time::timeout(self.queue_timeout, self.slots.clone().acquire_owned()).await;
        drop(place);
        match waited {
            Ok(Ok(p)) => Some(p),
            _ => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Requests toward the upstream now.
    pub(crate) fn in_flight(&self) -> usize {
        self.max_in_flight - self.slots.available_permits()
    }

    /// Requests refused since start.
    pub(crate) fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Requests waiting for a slot now.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a request that gave up while it waited kept its queue place, so the queue
    /// filled with ghosts and every request beyond the slots got a 503.
    #[tokio::test]
    async fn a_waiter_that_leaves_gives_its_queue_place_back() {
        let b = Bulkhead::new(1, 1, Duration::from_secs(60));
        let held = b.enter().await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(20), b.enter()).await;
        assert!(waiting.is_err(), "it waited");
        assert_eq!(
            b.queued(),
            0,
            "its place was given back when it was dropped"
        );
        drop(held);
        assert!(b.enter().await.is_some());
        assert_eq!(b.rejected(), 0);
    }
}
