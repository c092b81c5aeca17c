//! The store, watched: a [`Store`] that passes every call through and keeps count of how the
//! storage is doing (write and read failures, the last successful write, whether the latest
//! write failed), for `/readyz`, `/metrics` and the log. A decorator of the store port, so the
//! controller and the store stay as they are.

use crate::clock::unix_now;
use ramp_api::JournalHealth;
use ramp_core::evidence::MetricWindow;
use ramp_core::time::Millis;
use ramp_store::{
    Append, BoxFuture, DeliveryCounts, DeliveryState, NewRollout, OutboxEntry, SharePin, Store,
    StoreError, StoredRollout,
};
use ramp_wire::v1;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The counts, shared by the watched store and whoever reports them.
#[derive(Debug, Default)]
pub struct JournalWatch {
    write_errors: AtomicU64,
    read_errors: AtomicU64,
    /// ms since the Unix epoch; 0 until a write succeeds.
    last_write_at: AtomicU64,
    failing: Mutex<Option<(u64, String)>>,
    /// Writes under way: an id each, and when it started (ms since the Unix epoch).
    pending: Mutex<std::collections::BTreeMap<u64, u64>>,
    next: AtomicU64,
}

/// A write that has waited this long for the disk makes the journal count as failing (a
/// frozen or dying disk answers nothing, so no error would ever say so).
pub const STALLED_AFTER: Millis = 2_000;

/// Removes a write from the pending ones when it ends, or when its caller gives up on it.
struct Pending<'a> {
    watch: &'a JournalWatch,
    id: u64,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Ok(mut p) = self.watch.pending.lock() {
            p.remove(&self.id);
        }
    }
}

impl JournalWatch {
    /// The numbers now.
    pub fn health(&self) -> JournalHealth {
        let last = self.last_write_at.load(Ordering::Relaxed);
        JournalHealth {
            write_errors: self.write_errors.load(Ordering::Relaxed),
            read_errors: self.read_errors.load(Ordering::Relaxed),
            last_write_at: (last > 0).then_some(last),
            failing: self
                .failing
                .lock()
                .map(|f| f.clone())
                .unwrap_or_default()
                .or_else(|| self.stalled(unix_now())),
        }
    }

    /// Since when, and how long, the oldest write under way has waited, once that is over
    /// [`STALLED_AFTER`].
    fn stalled(&self, now: u64) -> Option<(u64, String)> {
        let oldest = *self.pending.lock().ok()?.values().min()?;
        let waited = now.saturating_sub(oldest);
        (waited >= STALLED_AFTER).then(|| {
            (
                oldest,
                format!(
                    "a journal write has waited {:.1} s for the disk (frozen or very slow storage)",
                    waited as f64 / 1000.0
                ),
            )
        })
    }

    /// Runs a write, counted as under way until it ends.
    async fn writing<T>(
        &self,
        write: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut p) = self.pending.lock() {
            p.insert(id, unix_now());
        }
        let guard = Pending { watch: self, id };
        let r = write.await;
        drop(guard);
        self.wrote(r)
    }

    fn wrote<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        match &r {
            Ok(_) => {
                self.last_write_at.store(unix_now(), Ordering::Relaxed);
                if let Ok(mut f) = self.failing.lock() {
                    *f = None;
                }
            }
            Err(e) if is_fault(e) => {
                self.write_errors.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut f) = self.failing.lock() {
                    let since = f.as_ref().map_or_else(unix_now, |(since, _)| *since);
                    *f = Some((since, e.to_string()));
                }
            }
            Err(_) => {}
        }
        r
    }

    fn read<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e) = &r
            && is_fault(e)
        {
            self.read_errors.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

/// Whether an error says something about the storage (not "no such rollout" or "exists").
fn is_fault(e: &StoreError) -> bool {
    !matches!(e, StoreError::NotFound(_) | StoreError::AlreadyExists(_))
}

/// `inner`, watched by `watch`.
pub struct Watched {
    inner: Arc<dyn Store>,
    watch: Arc<JournalWatch>,
}

/// Wraps `store`; answers the watched store and its counts.
pub fn watch(store: Arc<dyn Store>) -> (Arc<dyn Store>, Arc<JournalWatch>) {
    let watch = Arc::new(JournalWatch::default());
    let watched = Watched {
        inner: store,
        watch: watch.clone(),
    };
    (Arc::new(watched), watch)
}

impl Store for Watched {
    fn create(&self, r: NewRollout) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move { self.watch.writing(self.inner.create(r)).await })
    }
    fn append(&self, n: &str, at: u64, step: Append) -> BoxFuture<'_, Result<u64, StoreError>> {
        let n = n.to_string();
        Box::pin(async move { self.watch.writing(self.inner.append(&n, at, step)).await })
    }
    fn load_all(
        &self,
    ) -> BoxFuture<'_, Result<Vec<Result<StoredRollout, StoreError>>, StoreError>> {
        Box::pin(async move { self.watch.read(self.inner.load_all().await) })
    }
    fn load(&self, n: &str) -> BoxFuture<'_, Result<StoredRollout, StoreError>> {
        let n = n.to_string();
        Box::pin(async move { self.watch.read(self.inner.load(&n).await) })
    }
    fn events(
        &self,
        n: &str,
        a: u64,
        l: usize,
    ) -> BoxFuture<'_, Result<Vec<(u64, v1::Event)>, StoreError>> {
        let n = n.to_string();
        Box::pin(async move { self.watch.read(self.inner.events(&n, a, l).await) })
    }
    fn windows(
        &self,
        n: &str,
        a: Millis,
        l: usize,
    ) -> BoxFuture<'_, Result<Vec<(Millis, MetricWindow)>, StoreError>> {
        let n = n.to_string();
        Box::pin(async move { self.watch.read(self.inner.windows(&n, a, l).await) })
    }
    fn prune_windows(&self, n: &str, b: Millis) -> BoxFuture<'_, Result<u64, StoreError>> {
        let n = n.to_string();
        Box::pin(async move { self.watch.writing(self.inner.prune_windows(&n, b)).await })
    }
    fn pin_share(&self, n: &str, pin: SharePin) -> BoxFuture<'_, Result<(), StoreError>> {
        // A pin is written *because* the journal failed: its success says nothing about the
        // journal, so only its failure is counted.
        let n = n.to_string();
        Box::pin(async move {
            let r = self.inner.pin_share(&n, pin).await;
            if r.is_err() {
                self.watch.write_errors.fetch_add(1, Ordering::Relaxed);
            }
            r
        })
    }
    fn set_listen(&self, n: &str, l: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let (n, l) = (n.to_string(), l.to_string());
        Box::pin(async move { self.watch.writing(self.inner.set_listen(&n, &l)).await })
    }
    fn retire(&self, n: &str, at: Millis) -> BoxFuture<'_, Result<(), StoreError>> {
        let n = n.to_string();
        Box::pin(async move { self.watch.writing(self.inner.retire(&n, at)).await })
    }
    fn undelivered(&self, l: usize) -> BoxFuture<'_, Result<Vec<OutboxEntry>, StoreError>> {
        Box::pin(async move { self.watch.read(self.inner.undelivered(l).await) })
    }
    fn delivered(&self, ids: Vec<u64>, at: Millis) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { self.watch.writing(self.inner.delivered(ids, at)).await })
    }
    fn pending(
        &self,
        n: &str,
        c: &str,
        l: usize,
    ) -> BoxFuture<'_, Result<Vec<(OutboxEntry, u32)>, StoreError>> {
        let (n, c) = (n.to_string(), c.to_string());
        Box::pin(async move { self.watch.read(self.inner.pending(&n, &c, l).await) })
    }
    fn attempted(
        &self,
        id: u64,
        c: &str,
        state: DeliveryState,
        attempts: u32,
        at: Millis,
        error: Option<String>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let c = c.to_string();
        Box::pin(async move {
            self.watch
                .writing(self.inner.attempted(id, &c, state, attempts, at, error))
                .await
        })
    }
    fn delivery_counts(
        &self,
        n: &str,
    ) -> BoxFuture<'_, Result<Vec<(String, DeliveryCounts)>, StoreError>> {
        let n = n.to_string();
        Box::pin(async move { self.watch.read(self.inner.delivery_counts(&n).await) })
    }
    fn channel_ref(&self, n: &str, c: &str) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        let (n, c) = (n.to_string(), c.to_string());
        Box::pin(async move { self.watch.read(self.inner.channel_ref(&n, &c).await) })
    }
    fn set_channel_ref(&self, n: &str, c: &str, r: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let (n, c, r) = (n.to_string(), c.to_string(), r.to_string());
        Box::pin(async move {
            self.watch
                .writing(self.inner.set_channel_ref(&n, &c, &r))
                .await
        })
    }
    fn notices(
        &self,
        n: &str,
        a: u64,
        l: usize,
    ) -> BoxFuture<'_, Result<Vec<OutboxEntry>, StoreError>> {
        let n = n.to_string();
        Box::pin(async move { self.watch.read(self.inner.notices(&n, a, l).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ramp_harness::doubles::FlakyStore;
    use ramp_store::SqliteStore;

    #[tokio::test]
    async fn failures_are_counted_and_a_success_clears_failing() {
        let flaky = Arc::new(FlakyStore::new(SqliteStore::in_memory().unwrap()));
        let (store, watch) = super::watch(flaky.clone());
        assert_eq!(watch.health(), JournalHealth::default());
        assert!(matches!(
            store.load("nobody").await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(watch.health().read_errors, 0, "not found is no fault");
        flaky.set_broken(true);
        assert!(store.set_listen("nobody", "x").await.is_err());
        assert!(store.retire("nobody", 1).await.is_err());
        let h = watch.health();
        assert_eq!(h.write_errors, 2);
        let (since, why) = h.failing.expect("failing");
        assert!(since > 0 && !why.is_empty());
        assert_eq!(h.last_write_at, None);
        flaky.set_broken(false);
        // NotFound from the real store: no fault, and nothing written either.
        assert!(store.retire("nobody", 1).await.is_err());
        assert!(watch.health().failing.is_some(), "not cleared by a refusal");
        store.delivered(Vec::new(), 1).await.unwrap();
        let h = watch.health();
        assert_eq!(h.failing, None, "a write succeeded");
        assert!(h.last_write_at.is_some());
        assert_eq!(h.write_errors, 2, "the count stays");
    }

    /// Regression (issue 11, seen with `fsfreeze`): on a frozen disk a write neither succeeds
    /// nor fails, so `/readyz` said ready for the whole freeze. A write that has waited over
    /// [`STALLED_AFTER`] counts as failing, and stops counting when it ends.
    #[tokio::test]
    async fn a_write_that_waits_too_long_counts_as_failing() {
        let watch = JournalWatch::default();
        assert_eq!(watch.stalled(10_000), None);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let write = watch.writing(async move {
            let _ = rx.await;
            Ok(())
        });
        let mut write = Box::pin(write);
        assert!(futures_poll_once(&mut write).await.is_none(), "under way");
        let started = *watch.pending.lock().unwrap().values().next().unwrap();
        assert_eq!(watch.stalled(started + STALLED_AFTER - 1), None);
        let (since, why) = watch.stalled(started + STALLED_AFTER + 500).unwrap();
        assert_eq!(since, started);
        assert!(why.contains("2.5 s") && why.contains("frozen"), "{why}");
        tx.send(()).unwrap();
        write.await.unwrap();
        assert_eq!(watch.stalled(started + 60_000), None, "it ended");
        assert!(watch.health().last_write_at.is_some());
    }

    /// Polls `f` once.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut *f).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
