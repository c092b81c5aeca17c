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
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.max_queued {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let waited =
            tokio::time::timeout(self.queue_timeout, self.slots.clone().acquire_owned()).await;
        self.queued.fetch_sub(1, Ordering::AcqRel);
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
}
