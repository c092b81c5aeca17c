//! The outbox worker: delivers every notice the store's outbox holds, in the order they were
//! written, and marks each delivered once its notifier says it went out.
//!
//! Controllers write notices in the same transaction as the step that sends them and wake the
//! worker; the worker never holds a decision up. After a restart it starts with whatever was
//! not delivered before, so a notice decided before a crash goes out once. A notifier that
//! fails is retried with exponential backoff (from 100 ms, at most 30 s), from the notice that
//! failed, so order is kept. (A notice whose delivery succeeded but whose mark was lost is sent
//! again after a restart: delivery is at least once, and the notice id lets a receiver drop the
//! repeat.)

use crate::clock::{Clock, unix_now};
use ramp_notify::{Attempt, Notifier, Retry};
use ramp_store::{DeliveryState, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// How many notices are read from the store at a time.
const BATCH: usize = 100;
/// The longest wait between retries of a failing notifier.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A running outbox worker.
pub struct Outbox {
    wake: Arc<Notify>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    rounds: watch::Receiver<u64>,
}

impl Outbox {
    /// Starts delivering `store`'s outbox through `notifier`.
    pub fn start(store: Arc<dyn Store>, notifier: Arc<dyn Notifier>) -> Outbox {
        Outbox::start_waking(
            store,
            notifier,
            Arc::new(Notify::new()),
            watch::channel(0).0,
        )
    }

    /// [`Outbox::start`], woken by `wake` (created before the controllers that wake it),
    /// telling `round` after each round of deliveries (the channel workers listen).
    pub fn start_waking(
        store: Arc<dyn Store>,
        notifier: Arc<dyn Notifier>,
        wake: Arc<Notify>,
        round: watch::Sender<u64>,
    ) -> Outbox {
        let (stop, stopped) = watch::channel(false);
        let rounds = round.subscribe();
        let task = tokio::spawn(run(store, notifier, wake.clone(), stopped, round));
        Outbox {
            wake,
            stop,
            task,
            rounds,
        }
    }

    /// Changes after every round of deliveries to the live log: the channel workers look for
    /// new notices then.
    pub fn rounds(&self) -> watch::Receiver<u64> {
        self.rounds.clone()
    }

    /// What controllers wake the worker with after writing notices.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Delivers what is still undelivered (once more) and stops.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Delivers undelivered notices until none is left; `Err` when the notifier or the store
/// failed (the rest waits for the next round).
async fn deliver_all(store: &dyn Store, notifier: &dyn Notifier) -> Result<(), String> {
    loop {
        let batch = store.undelivered(BATCH).await.map_err(|e| e.to_string())?;
        if batch.is_empty() {
            return Ok(());
        }
        let mut done = Vec::with_capacity(batch.len());
        let mut failed = None;
        for entry in &batch {
            let attempt = Attempt {
                entry,
                number: 1,
                thread: None,
            };
            match notifier.deliver(attempt).await {
                Ok(_) => done.push(entry.id),
                Err(e) => {
                    failed = Some(format!("notice {} to {}: {e}", entry.id, notifier.name()));
                    break;
                }
            }
        }
        if !done.is_empty() {
            store
                .delivered(done, unix_now())
                .await
                .map_err(|e| e.to_string())?;
        }
        if let Some(e) = failed {
            return Err(e);
        }
    }
}

async fn run(
    store: Arc<dyn Store>,
    notifier: Arc<dyn Notifier>,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
    round: watch::Sender<u64>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = deliver_all(store.as_ref(), notifier.as_ref()).await;
        round.send_modify(|r| *r += 1);
        match result {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "notice not delivered");
                let stopping = tokio::select! {
                    _ = tokio::time::sleep(backoff) => false,
                    _ = stop.wait_for(|s| *s) => true,
                };
                if stopping {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        }
        let stopping = tokio::select! {
            _ = wake.notified() => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        if stopping {
            let _ = deliver_all(store.as_ref(), notifier.as_ref()).await;
            round.send_modify(|r| *r += 1);
            return;
        }
    }
}

/// The first retry's wait; each further one doubles, up to [`CHANNEL_MAX_BACKOFF`].
pub const CHANNEL_FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between two attempts on a channel (unless the receiver asks for longer).
pub const CHANNEL_MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The wait before attempt `next` (from 2): exponential, capped, with "equal jitter" (half
/// fixed, half spread by `seed`) so that receivers that come back are not hit in lockstep.
pub fn backoff(next: u32, seed: u64) -> Duration {
    let exp = CHANNEL_FIRST_BACKOFF.saturating_mul(1u32 << next.saturating_sub(2).min(16));
    let cap = exp.min(CHANNEL_MAX_BACKOFF);
    let spread = xxhash_rust::xxh3::xxh3_64(&seed.to_le_bytes()) % 1_000;
    cap / 2 + cap / 2 * (spread as u32) / 1_000
}

/// After a delivery was marked: `true` to go on. A mark the store could not take would leave
/// the notice pending and send it again at once, so the worker waits (doubling, at most
/// [`MAX_BACKOFF`]) before it looks again; `false` when told to stop meanwhile.
async fn marked_or_wait(
    marked: Result<(), ramp_store::StoreError>,
    rollout: &str,
    channel: &str,
    backoff: &mut Duration,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let Err(e) = marked else {
        return true;
    };
    tracing::warn!(rollout = %rollout, channel = %channel, error = %e, retry_in = ?backoff, "a delivery could not be recorded; waiting before sending more");
    let stopping = tokio::select! {
        _ = tokio::time::sleep(*backoff) => false,
        _ = stop.wait_for(|s| *s) => true,
    };
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    !stopping
}

/// What one channel worker has done since the server started, for `/metrics` and status.
#[derive(Debug, Default)]
pub struct ChannelStats {
    /// Notices delivered.
    pub delivered: std::sync::atomic::AtomicU64,
    /// Notices given up on.
    pub failed: std::sync::atomic::AtomicU64,
    /// Failed attempts that will be retried.
    pub retries: std::sync::atomic::AtomicU64,
    /// Notices waiting, as last counted.
    pub pending: std::sync::atomic::AtomicU64,
    /// The latest failure, while the channel keeps failing (cleared by a delivery).
    pub last_error: std::sync::Mutex<Option<String>>,
}

impl ChannelStats {
    fn set_error(&self, e: Option<String>) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = e;
        }
    }

    /// The latest failure, if the channel is failing.
    pub fn error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }
}

/// One rollout's deliveries on one channel: in the order the notices were written, each
/// retried (backoff with jitter, a receiver's `Retry-After` honoured) until it is delivered,
/// refused for good, or older than the plan's `give_up_after` in controller time, then marked
/// failed. A channel that fails holds up only itself.
pub struct ChannelWorker {
    /// The channel's name.
    pub channel: String,
    /// What it has done.
    pub stats: Arc<ChannelStats>,
    stop: watch::Sender<bool>,
    drain: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// What a channel worker works with.
pub struct ChannelParts {
    /// The journal, with the deliveries.
    pub store: Arc<dyn Store>,
    /// The rollout.
    pub rollout: String,
    /// The channel.
    pub notifier: Arc<dyn Notifier>,
    /// Controller time, for `give_up_after`.
    pub clock: Arc<dyn Clock>,
    /// How long a notice is retried (controller time).
    pub give_up_after: ramp_core::time::Millis,
    /// Changes when new notices may be waiting.
    pub wake: watch::Receiver<u64>,
}

impl ChannelWorker {
    /// Starts delivering.
    pub fn start(parts: ChannelParts) -> ChannelWorker {
        let (stop, stopped) = watch::channel(false);
        let (drain, draining) = watch::channel(false);
        let stats = Arc::new(ChannelStats::default());
        let channel = parts.notifier.name().to_string();
        let task = tokio::spawn(run_channel(parts, stats.clone(), stopped, draining));
        ChannelWorker {
            channel,
            stats,
            stop,
            drain,
            task,
        }
    }

    /// Delivers what is pending for up to `grace`, then stops (an attempt still in flight is
    /// abandoned: the notice stays pending and goes out after a restart).
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.drain.send(true);
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            let _ = self.stop.send(true);
            let _ = task.await;
        }
    }
}

async fn run_channel(
    p: ChannelParts,
    stats: Arc<ChannelStats>,
    mut stop: watch::Receiver<bool>,
    mut draining: watch::Receiver<bool>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let channel = p.notifier.name().to_string();
    let mut wake = p.wake;
    let mut thread: Option<String> = None;
    let mut thread_loaded = false;
    let mut store_backoff = Duration::from_millis(200);
    // Sleeps unless told to stop; `true` when stopping.
    async fn pause(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = stop.wait_for(|s| *s) => true,
        }
    }
    loop {
        if *stop.borrow() {
            return;
        }
        if !thread_loaded {
            match p.store.channel_ref(&p.rollout, &channel).await {
                Ok(t) => {
                    thread = t;
                    thread_loaded = true;
                }
                Err(e) => {
                    tracing::warn!(rollout = %p.rollout, channel = %channel, error = %e, "cannot read the channel's reference; retrying");
                }
            }
        }
        let batch = match p.store.pending(&p.rollout, &channel, BATCH).await {
            Ok(b) => {
                store_backoff = Duration::from_millis(200);
                b
            }
            Err(e) => {
                tracing::warn!(rollout = %p.rollout, channel = %channel, error = %e, "cannot read pending notices; retrying");
                if pause(store_backoff, &mut stop).await {
                    return;
                }
                store_backoff = (store_backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        if let Ok(counts) = p.store.delivery_counts(&p.rollout).await
            && let Some((_, c)) = counts.iter().find(|(c, _)| *c == channel)
        {
            stats.pending.store(c.pending, Relaxed);
        }
        if batch.is_empty() {
            if *draining.borrow() {
                return;
            }
            tokio::select! {
                _ = wake.changed() => {}
                _ = draining.wait_for(|d| *d) => {}
                // Also looks again now and then: a wake-up lost to a store hiccup is not lost.
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            continue;
        }
        for (entry, attempts) in batch {
            let mut number = attempts + 1;
            loop {
                let attempt = Attempt {
                    entry: &entry,
                    number,
                    thread: thread.as_deref(),
                };
                let outcome = tokio::select! {
                    r = p.notifier.deliver(attempt) => r,
                    _ = stop.wait_for(|s| *s) => return,
                };
                let made = match &outcome {
                    Ok(sent) => sent.thread.clone(),
                    Err(e) => e.thread.clone(),
                };
                if let Some(t) = made {
                    if let Err(e) = p.store.set_channel_ref(&p.rollout, &channel, &t).await {
                        tracing::warn!(rollout = %p.rollout, channel = %channel, error = %e, "the channel's new thread could not be stored");
                    }
                    thread = Some(t);
                }
                match outcome {
                    Ok(_) => {
                        let marked = p
                            .store
                            .attempted(
                                entry.id,
                                &channel,
                                DeliveryState::Delivered,
                                number,
                                unix_now(),
                                None,
                            )
                            .await;
                        stats.delivered.fetch_add(1, Relaxed);
                        stats.set_error(None);
                        let (rollout, ch) = (&p.rollout, &channel);
                        if !marked_or_wait(marked, rollout, ch, &mut store_backoff, &mut stop).await
                        {
                            return;
                        }
                        break;
                    }
                    Err(e) => {
                        let too_old = p.clock.now() >= entry.at.saturating_add(p.give_up_after);
                        let never = e.retry == Retry::Never;
                        if never || too_old {
                            let why = if never {
                                e.error.clone()
                            } else {
                                format!("{} (gave up after {} attempts)", e.error, number)
                            };
                            tracing::error!(rollout = %p.rollout, channel = %channel, notice = entry.id, attempts = number, error = %why, "notice not delivered: marked failed");
                            let marked = p
                                .store
                                .attempted(
                                    entry.id,
                                    &channel,
                                    DeliveryState::Failed,
                                    number,
                                    unix_now(),
                                    Some(why.clone()),
                                )
                                .await;
                            stats.failed.fetch_add(1, Relaxed);
                            stats.set_error(Some(why));
                            let (rollout, ch) = (&p.rollout, &channel);
                            if !marked_or_wait(marked, rollout, ch, &mut store_backoff, &mut stop)
                                .await
                            {
                                return;
                            }
                            break;
                        }
                        // A receiver's `Retry-After` is honoured, but never below the backoff: an
                        // answer of 0 must not make the worker spin.
                        let own = backoff(number + 1, entry.id ^ u64::from(number) ^ unix_now());
                        let wait = match e.retry {
                            Retry::After(d) => d.max(own),
                            _ => own,
                        };
                        tracing::warn!(rollout = %p.rollout, channel = %channel, notice = entry.id, attempt = number, retry_in = ?wait, error = %e.error, "notice not delivered; retrying");
                        let _ = p
                            .store
                            .attempted(
                                entry.id,
                                &channel,
                                DeliveryState::Pending,
                                number,
                                unix_now(),
                                Some(e.error.clone()),
                            )
                            .await;
                        stats.retries.fetch_add(1, Relaxed);
                        stats.set_error(Some(e.error));
                        if pause(wait, &mut stop).await {
                            return;
                        }
                        number += 1;
                    }
                }
            }
        }
    }
}
