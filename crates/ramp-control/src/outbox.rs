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

use crate::clock::unix_now;
use ramp_notify::Notifier;
use ramp_store::Store;
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
}

impl Outbox {
    /// Starts delivering `store`'s outbox through `notifier`.
    pub fn start(store: Arc<dyn Store>, notifier: Arc<dyn Notifier>) -> Outbox {
        Outbox::start_waking(store, notifier, Arc::new(Notify::new()))
    }

    /// [`Outbox::start`], woken by `wake` (created before the controllers that wake it).
    pub fn start_waking(
        store: Arc<dyn Store>,
        notifier: Arc<dyn Notifier>,
        wake: Arc<Notify>,
    ) -> Outbox {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(store, notifier, wake.clone(), stopped));
        Outbox { wake, stop, task }
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
            match notifier.deliver(entry).await {
                Ok(()) => done.push(entry.id),
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
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match deliver_all(store.as_ref(), notifier.as_ref()).await {
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
            return;
        }
    }
}
