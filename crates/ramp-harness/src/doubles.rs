//! Test doubles of the controller's ports and of the store: a store whose writes fail on
//! demand, an evidence source that plays out a script, a traffic split that records (and can
//! refuse) what it is told, and a notifier that records what it delivers.

use ramp_control::ports::{EvidenceError, EvidenceSource, SplitError, TrafficSplit};
use ramp_core::cohort::ShareBp;
use ramp_core::evidence::{BackendHealth, MetricWindow};
use ramp_core::time::Millis;
use ramp_notify::{Attempt, Notifier, NotifyError, Sent};
use ramp_store::{
    Append, BoxFuture, DeliveryCounts, DeliveryState, NewRollout, OutboxEntry, SharePin, Store,
    StoreError, StoredRollout,
};
use ramp_wire::v1;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A store whose writes fail while `broken` is set (a full disk, say); reads always work.
pub struct FlakyStore<S> {
    /// The real store underneath.
    pub inner: S,
    /// While true, every write fails and writes nothing.
    pub broken: AtomicBool,
    /// While true, every write waits (a frozen disk) until it is cleared.
    pub frozen: Arc<AtomicBool>,
    /// Writes refused so far.
    pub refused: AtomicU64,
}

impl<S: Store> FlakyStore<S> {
    /// A working store over `inner`.
    pub fn new(inner: S) -> Self {
        FlakyStore {
            inner,
            broken: AtomicBool::new(false),
            frozen: Arc::new(AtomicBool::new(false)),
            refused: AtomicU64::new(0),
        }
    }

    /// Breaks or mends the disk.
    pub fn set_broken(&self, broken: bool) {
        self.broken.store(broken, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.broken.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            Err(StoreError::Open("disk full (test)".into()))
        } else {
            Ok(())
        }
    }
}

impl<S: Store> Store for FlakyStore<S> {
    fn create(&self, r: NewRollout) -> BoxFuture<'_, Result<u64, StoreError>> {
        match self.check() {
            Ok(()) => self.inner.create(r),
            Err(e) => Box::pin(async { Err(e) }),
        }
    }
    fn append(&self, n: &str, at: u64, step: Append) -> BoxFuture<'_, Result<u64, StoreError>> {
        let frozen = self.frozen.clone();
        let name = n.to_string();
        Box::pin(async move {
            while frozen.load(Ordering::SeqCst) {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            self.check()?;
            self.inner.append(&name, at, step).await
        })
    }
    fn load_all(
        &self,
    ) -> BoxFuture<'_, Result<Vec<Result<StoredRollout, StoreError>>, StoreError>> {
        self.inner.load_all()
    }
    fn load(&self, n: &str) -> BoxFuture<'_, Result<StoredRollout, StoreError>> {
        self.inner.load(n)
    }
    fn events(
        &self,
        n: &str,
        a: u64,
        l: usize,
    ) -> BoxFuture<'_, Result<Vec<(u64, v1::Event)>, StoreError>> {
        self.inner.events(n, a, l)
    }
    fn windows(
        &self,
        n: &str,
        a: Millis,
        l: usize,
    ) -> BoxFuture<'_, Result<Vec<(Millis, MetricWindow)>, StoreError>> {
        self.inner.windows(n, a, l)
    }
    fn prune_windows(&self, n: &str, b: Millis) -> BoxFuture<'_, Result<u64, StoreError>> {
        match self.check() {
            Ok(()) => self.inner.prune_windows(n, b),
            Err(e) => Box::pin(async { Err(e) }),
        }
    }
    /// Pins go through even while writes fail: they model the space the real store reserved
    /// (a full disk fails appends, not pins).
    fn pin_share(&self, n: &str, pin: SharePin) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.pin_share(n, pin)
    }
    fn set_listen(&self, n: &str, l: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        match self.check() {
            Ok(()) => self.inner.set_listen(n, l),
            Err(e) => Box::pin(async { Err(e) }),
        }
    }
    fn retire(&self, n: &str, at: Millis) -> BoxFuture<'_, Result<(), StoreError>> {
        match self.check() {
            Ok(()) => self.inner.retire(n, at),
            Err(e) => Box::pin(async { Err(e) }),
        }
    }
    fn undelivered(&self, l: usize) -> BoxFuture<'_, Result<Vec<OutboxEntry>, StoreError>> {
        self.inner.undelivered(l)
    }
    fn delivered(&self, ids: Vec<u64>, at: Millis) -> BoxFuture<'_, Result<(), StoreError>> {
        match self.check() {
            Ok(()) => self.inner.delivered(ids, at),
            Err(e) => Box::pin(async { Err(e) }),
        }
    }
    fn pending(
        &self,
        n: &str,
        c: &str,
        l: usize,
    ) -> BoxFuture<'_, Result<Vec<(OutboxEntry, u32)>, StoreError>> {
        self.inner.pending(n, c, l)
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
        match self.check() {
            Ok(()) => self.inner.attempted(id, c, state, attempts, at, error),
            Err(e) => Box::pin(async { Err(e) }),
        }
    }
    fn delivery_counts(
        &self,
        n: &str,
    ) -> BoxFuture<'_, Result<Vec<(String, DeliveryCounts)>, StoreError>> {
        self.inner.delivery_counts(n)
    }
    fn channel_ref(&self, n: &str, c: &str) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        self.inner.channel_ref(n, c)
    }
    fn set_channel_ref(&self, n: &str, c: &str, r: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        match self.check() {
            Ok(()) => self.inner.set_channel_ref(n, c, r),
            Err(e) => Box::pin(async { Err(e) }),
        }
    }
    fn notices(
        &self,
        n: &str,
        a: u64,
        l: usize,
    ) -> BoxFuture<'_, Result<Vec<OutboxEntry>, StoreError>> {
        self.inner.notices(n, a, l)
    }
}

/// What the scripted evidence source produces per window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Traffic {
    /// Requests per window in total; the canary gets the current share of them.
    pub requests: u64,
    /// Share of canary requests that fail.
    pub canary_error_rate: f64,
}

/// An evidence source that makes each window from the current [`Traffic`] and the share the
/// split applied: deterministic, no sockets, no clock.
#[derive(Clone)]
pub struct ScriptedEvidence {
    traffic: Arc<Mutex<Traffic>>,
    share: Arc<Mutex<ShareBp>>,
    thresholds: usize,
    windows: Arc<AtomicU64>,
}

impl ScriptedEvidence {
    /// A source for a plan with `thresholds` latency thresholds, following `split`'s share.
    pub fn new(traffic: Traffic, thresholds: usize, split: &RecordingSplit) -> Self {
        ScriptedEvidence {
            traffic: Arc::new(Mutex::new(traffic)),
            share: split.share.clone(),
            thresholds,
            windows: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Changes the traffic from the next window on.
    pub fn set(&self, traffic: Traffic) {
        *self.traffic.lock().unwrap() = traffic;
    }

    /// Windows taken so far.
    pub fn windows(&self) -> u64 {
        self.windows.load(Ordering::SeqCst)
    }
}

impl EvidenceSource for ScriptedEvidence {
    async fn take(&mut self) -> Result<MetricWindow, EvidenceError> {
        self.windows.fetch_add(1, Ordering::SeqCst);
        let t = *self.traffic.lock().unwrap();
        let share = *self.share.lock().unwrap();
        let mut w = MetricWindow::new(self.thresholds);
        let canary = t.requests * u64::from(share.bp()) / 10_000;
        let errors = (canary as f64 * t.canary_error_rate).round() as u64;
        w.canary.requests = canary;
        w.canary.errors = errors;
        w.canary.successes = canary - errors;
        for i in 0..canary.min(64) {
            w.canary.latency.record(20_000 + i * 100);
            w.canary
                .users
                .insert_hash(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        }
        w.stable.requests = t.requests - canary;
        w.stable.successes = t.requests - canary;
        for i in 0..(t.requests - canary).min(64) {
            w.stable.latency.record(20_000 + i * 100);
        }
        Ok(w)
    }

    fn health(&self) -> (BackendHealth, BackendHealth) {
        (BackendHealth::Operational, BackendHealth::Operational)
    }
}

/// A traffic split that records every share it is told, and refuses while `failing`.
#[derive(Clone)]
pub struct RecordingSplit {
    share: Arc<Mutex<ShareBp>>,
    /// Every share applied, in order.
    pub applied: Arc<Mutex<Vec<ShareBp>>>,
    /// While true, `apply` fails (an external router that is down).
    pub failing: Arc<AtomicBool>,
}

impl Default for RecordingSplit {
    fn default() -> Self {
        RecordingSplit {
            share: Arc::new(Mutex::new(ShareBp::ZERO)),
            applied: Arc::default(),
            failing: Arc::default(),
        }
    }
}

impl TrafficSplit for RecordingSplit {
    async fn apply(&mut self, share: ShareBp) -> Result<(), SplitError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(SplitError("router down (test)".into()));
        }
        *self.share.lock().unwrap() = share;
        self.applied.lock().unwrap().push(share);
        Ok(())
    }

    fn applied(&self) -> Option<ShareBp> {
        Some(*self.share.lock().unwrap())
    }
}

/// A notifier that records every notice it delivers.
#[derive(Clone, Default)]
pub struct RecordingNotifier {
    /// What was delivered, in order.
    pub delivered: Arc<Mutex<Vec<OutboxEntry>>>,
}

impl Notifier for RecordingNotifier {
    fn name(&self) -> &str {
        "recording"
    }

    fn deliver<'a>(&'a self, attempt: Attempt<'a>) -> BoxFuture<'a, Result<Sent, NotifyError>> {
        self.delivered.lock().unwrap().push(attempt.entry.clone());
        Box::pin(async { Ok(Sent::default()) })
    }
}
