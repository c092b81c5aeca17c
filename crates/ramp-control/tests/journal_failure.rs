//! What the controller does when the journal cannot be written: a signal or command is not
//! carried out (and is answered with an error, so a retry counts once), a window's evidence is
//! kept and fed again, and a rollback still happens at once and reaches the journal with the
//! next successful write.

mod common;

use common::upstream;
use ramp::serve::{self, Control, ServeConfig};
use ramp::store::{SqliteStore, Store, StoreError, StoredRollout};
use ramp_core::evidence::{MetricWindow, Signal};
use ramp_core::plan::{Severity, parse_plan};
use ramp_core::rollout::{Event, EventKind, State};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::oneshot;

/// A SQLite store whose writes fail while `broken` is set (a full disk, say).
struct FlakyStore {
    inner: SqliteStore,
    broken: AtomicBool,
}

impl FlakyStore {
    fn check(&self) -> Result<(), StoreError> {
        if self.broken.load(Ordering::SeqCst) {
            Err(StoreError::Open("disk full (test)".into()))
        } else {
            Ok(())
        }
    }
}

impl Store for FlakyStore {
    fn create(&self, n: &str, p: &str, c: u64, s: &State) -> Result<(), StoreError> {
        self.check()?;
        self.inner.create(n, p, c, s)
    }
    fn append(&self, n: &str, e: &[Event], s: &State) -> Result<u64, StoreError> {
        self.check()?;
        self.inner.append(n, e, s)
    }
    fn append_window(
        &self,
        n: &str,
        w: &MetricWindow,
        e: &[Event],
        s: &State,
    ) -> Result<u64, StoreError> {
        self.check()?;
        self.inner.append_window(n, w, e, s)
    }
    fn windows(&self, n: &str, a: u64, l: usize) -> Result<Vec<(u64, MetricWindow)>, StoreError> {
        self.inner.windows(n, a, l)
    }
    fn load_all(&self) -> Result<Vec<Result<StoredRollout, StoreError>>, StoreError> {
        self.inner.load_all()
    }
    fn set_listen(&self, n: &str, l: &str) -> Result<(), StoreError> {
        self.inner.set_listen(n, l)
    }
    fn load(&self, n: &str) -> Result<StoredRollout, StoreError> {
        self.inner.load(n)
    }
    fn events(&self, n: &str, a: u64, l: usize) -> Result<Vec<(u64, Event)>, StoreError> {
        self.inner.events(n, a, l)
    }
    fn names(&self) -> Result<Vec<String>, StoreError> {
        self.inner.names()
    }
}

fn plan_text(stable: SocketAddr, canary: SocketAddr) -> String {
    format!(
        r#"name = "flaky"
[upstreams]
stable = "http://{stable}"
canary = "http://{canary}"
[[phase]]
name = "canary"
traffic = "50%"
duration = "240h"
success = ["error_rate < 0.1%"]
[[phase]]
name = "full"
traffic = "100%"
duration = "24h"
[rollback]
triggers = ["pci_alerts >= 2", "security_alerts[critical] >= 1"]
"#
    )
}

async fn signal(
    control: &tokio::sync::mpsc::Sender<Control>,
    signal: Signal,
) -> Result<u64, String> {
    let (tx, rx) = oneshot::channel();
    control
        .send(Control::Signal {
            signal,
            key: None,
            reply: Some(tx),
        })
        .await
        .unwrap();
    rx.await.unwrap().map(|r| r.seq)
}

async fn traffic(proxy: SocketAddr, n: u32) {
    assert_eq!(
        common::traffic(proxy, n, n).await,
        n,
        "every request answered"
    );
}

/// Waits (bounded) until `f` holds for the latest snapshot.
async fn until(server: &serve::Server, what: &str, f: impl Fn(&serve::Snapshot) -> bool) {
    let mut rx = server.snapshot.clone();
    let ok = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if f(&rx.borrow_and_update()) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(ok.is_ok(), "timed out waiting for: {what}");
}

/// A server for the test plan over a [`FlakyStore`]; also returns the canary's hit counter.
async fn start() -> (serve::Server, Arc<FlakyStore>, Arc<AtomicU64>) {
    let canary_hits = Arc::new(AtomicU64::new(0));
    let stable = upstream(
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    )
    .await;
    let canary = upstream(Arc::new(AtomicBool::new(false)), canary_hits.clone()).await;
    let text = plan_text(stable, canary);
    let plan = parse_plan(&text, "flaky.toml").unwrap();
    let store = Arc::new(FlakyStore {
        inner: SqliteStore::in_memory().unwrap(),
        broken: AtomicBool::new(false),
    });
    store.create("flaky", &text, 0, &State::new(&plan)).unwrap();
    let server = serve::start(
        ServeConfig {
            plan,
            listen: "127.0.0.1:0".parse().unwrap(),
            time_scale: 3600.0,
            limits: Default::default(),
            variant_header: false,
            access_log: None,
            exit_on_end: false,
            store: Some(store.clone()),
            resume: None,
        },
        |_, _| {},
    )
    .await
    .unwrap();
    (server, store, canary_hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_journal_undoes_signals_keeps_evidence_and_still_rolls_back() {
    let (server, store, canary_hits) = start().await;

    // The disk fills up. Two PCI alerts arrive; neither can be journaled, so neither counts
    // (two would roll back) and each sender is told to retry.
    store.broken.store(true, Ordering::SeqCst);
    for note in ["first", "second"] {
        let r = signal(&server.control, Signal::PciAlert { note: note.into() }).await;
        assert!(r.is_err(), "an unjournaled signal is not acknowledged");
    }
    // Traffic meanwhile: its evidence must not be lost with the failed window writes.
    traffic(server.proxy_addr, 200).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.snapshot.borrow().status, "running");

    // The disk recovers: one retried alert counts once, the evidence is all there.
    store.broken.store(false, Ordering::SeqCst);
    signal(
        &server.control,
        Signal::PciAlert {
            note: "retried".into(),
        },
    )
    .await
    .expect("journaled");
    assert_eq!(
        server.snapshot.borrow().status,
        "running",
        "one PCI alert, not two"
    );
    let sent = canary_hits.load(Ordering::SeqCst);
    assert!(sent > 50, "{sent}");
    until(&server, "every canary request is in the evidence", |s| {
        s.canary.requests == sent
    })
    .await;
    let stored = store.load("flaky").unwrap();
    assert_eq!(
        stored.state.evidence.canary.requests, sent,
        "and in the journal"
    );

    // The disk fails again and a critical security alert arrives: the rollback happens at
    // once, journal or not.
    store.broken.store(true, Ordering::SeqCst);
    let r = signal(
        &server.control,
        Signal::SecurityAlert {
            severity: Severity::Critical,
            note: "token leak".into(),
        },
    )
    .await;
    assert!(r.is_err(), "not durable, so not acknowledged");
    until(&server, "rolled back", |s| s.status == "rolled_back").await;
    let before = canary_hits.load(Ordering::SeqCst);
    traffic(server.proxy_addr, 50).await;
    assert_eq!(
        canary_hits.load(Ordering::SeqCst),
        before,
        "all traffic on stable"
    );

    // Once writes work again, the rollback reaches the journal with the next window.
    store.broken.store(false, Ordering::SeqCst);
    let ok = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let events = store.events("flaky", 0, 1000).unwrap();
            if events
                .iter()
                .any(|(_, e)| matches!(e.kind, EventKind::RolledBack { .. }))
            {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the rollback is journaled after the store recovers");
    let signals = ok
        .iter()
        .filter(|(_, e)| matches!(e.kind, EventKind::SignalReceived { .. }))
        .count();
    assert_eq!(
        signals, 2,
        "the retried PCI alert and the security alert: {ok:?}"
    );
    assert_eq!(
        store.load("flaky").unwrap().state.status.name(),
        "rolled_back"
    );
    let _ = server.control.send(Control::Stop).await;
    let _ = server.wait().await;
}

/// Regression (review): a rollback made while the store failed was kept only in memory until
/// the next window's write; stopping before that (Ctrl-C, `--exit-on-end`) lost it, and a
/// restart would have routed canary traffic again. Stopping now writes it, with retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_made_while_the_store_fails_is_written_before_stopping() {
    let (server, store, _) = start().await;
    store.broken.store(true, Ordering::SeqCst);
    let r = signal(
        &server.control,
        Signal::SecurityAlert {
            severity: Severity::Critical,
            note: "token leak".into(),
        },
    )
    .await;
    assert!(r.is_err());
    until(&server, "rolled back", |s| s.status == "rolled_back").await;
    // Stop while the store still fails; it recovers moments later.
    server.control.send(Control::Stop).await.unwrap();
    let fixer = {
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            store.broken.store(false, Ordering::SeqCst);
        })
    };
    let result = tokio::time::timeout(Duration::from_secs(20), server.wait())
        .await
        .expect("stops");
    fixer.await.unwrap();
    assert_eq!(result.state.status.name(), "rolled_back");
    let stored = store.load("flaky").unwrap();
    assert_eq!(
        stored.state.status.name(),
        "rolled_back",
        "the journal has the rollback"
    );
    assert_eq!(stored.state.share.bp(), 0);
    assert!(
        store
            .events("flaky", 0, 1000)
            .unwrap()
            .iter()
            .any(|(_, e)| matches!(e.kind, EventKind::RolledBack { .. }))
    );
}
