//! What the controller does when the journal cannot be written: a signal or command is not
//! carried out (and is answered with an error, so a retry counts once), a window's evidence is
//! kept and fed again, and a rollback still happens at once and reaches the journal with the
//! next successful write. Driven through the real registry, proxy and controller, over a store
//! whose writes fail on demand.

use ramp_api::Rollouts;
use ramp_control::{Defaults, Registry, log};
use ramp_core::evidence::Signal;
use ramp_core::plan::Severity;
use ramp_harness::doubles::FlakyStore;
use ramp_harness::upstream;
use ramp_proxy::Workers;
use ramp_store::{SqliteStore, Store};
use ramp_wire::v1::{self, EventKind, RolloutStatus};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

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

/// A registry over `store` at ×3600, its proxies on free ports.
fn registry_over(store: Arc<dyn Store>) -> Arc<Registry> {
    Registry::new(
        store,
        Arc::new(Workers::new(1).unwrap()),
        Defaults {
            time_scale: 3600.0,
            default_listen: "127.0.0.1:0".parse().unwrap(),
            ..Defaults::default()
        },
        log::silent(),
        Arc::new(tokio::sync::Notify::new()),
    )
}

async fn signal(registry: &Registry, signal: Signal) -> Result<u64, String> {
    registry
        .signal("flaky", signal, None, "test".into())
        .await
        .map(|r| r.seq)
        .map_err(|e| e.to_string())
}

async fn traffic(proxy: SocketAddr, n: u32) {
    assert_eq!(
        ramp_harness::traffic(proxy, n, n).await,
        n,
        "every request answered"
    );
}

/// Waits (bounded) until `f` holds for the rollout's published status.
async fn until(registry: &Registry, what: &str, f: impl Fn(&RolloutStatus) -> bool) {
    let ok = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if registry.status("flaky").is_some_and(|s| f(&s)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(ok.is_ok(), "timed out waiting for: {what}");
}

fn status(registry: &Registry) -> v1::Status {
    registry.status("flaky").unwrap().status
}

struct Setup {
    registry: Arc<Registry>,
    store: Arc<FlakyStore<SqliteStore>>,
    proxy: SocketAddr,
    canary_hits: Arc<AtomicU64>,
}

/// The test plan served by a registry over a [`FlakyStore`].
async fn start() -> Setup {
    let canary_hits = Arc::new(AtomicU64::new(0));
    let stable = upstream(
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    )
    .await;
    let canary = upstream(Arc::new(AtomicBool::new(false)), canary_hits.clone()).await;
    let store = Arc::new(FlakyStore::new(SqliteStore::in_memory().unwrap()));
    let registry = Registry::new(
        store.clone(),
        Arc::new(Workers::new(2).unwrap()),
        Defaults {
            time_scale: 3600.0,
            default_listen: "127.0.0.1:0".parse().unwrap(),
            ..Defaults::default()
        },
        log::silent(),
        Arc::new(tokio::sync::Notify::new()),
    );
    let status = registry
        .start_new(&plan_text(stable, canary), "flaky.toml", None)
        .await
        .unwrap();
    Setup {
        proxy: status.listen.parse().unwrap(),
        registry,
        store,
        canary_hits,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_journal_undoes_signals_keeps_evidence_and_still_rolls_back() {
    let Setup {
        registry,
        store,
        proxy,
        canary_hits,
    } = start().await;

    // The disk fills up. Two PCI alerts arrive; neither can be journaled, so neither counts
    // (two would roll back) and each sender is told to retry.
    store.set_broken(true);
    for note in ["first", "second"] {
        let r = signal(&registry, Signal::PciAlert { note: note.into() }).await;
        assert!(r.is_err(), "an unjournaled signal is not acknowledged");
    }
    // Traffic meanwhile: its evidence must not be lost with the failed window writes.
    traffic(proxy, 200).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(status(&registry), v1::Status::Running);

    // The disk recovers: one retried alert counts once, the evidence is all there.
    store.set_broken(false);
    signal(
        &registry,
        Signal::PciAlert {
            note: "retried".into(),
        },
    )
    .await
    .expect("journaled");
    assert_eq!(
        status(&registry),
        v1::Status::Running,
        "one PCI alert, not two"
    );
    let sent = canary_hits.load(Ordering::SeqCst);
    assert!(sent > 50, "{sent}");
    until(&registry, "every canary request is in the evidence", |s| {
        s.canary.requests == sent
    })
    .await;
    let stored = store.load("flaky").await.unwrap();
    assert_eq!(
        stored.state.evidence.canary.requests, sent,
        "and in the journal"
    );

    // The disk fails again and a critical security alert arrives: the rollback happens at
    // once, journal or not.
    store.set_broken(true);
    let r = signal(
        &registry,
        Signal::SecurityAlert {
            severity: Severity::Critical,
            note: "token leak".into(),
        },
    )
    .await;
    assert!(r.is_err(), "not durable, so not acknowledged");
    until(&registry, "rolled back", |s| {
        s.status == v1::Status::RolledBack
    })
    .await;
    let before = canary_hits.load(Ordering::SeqCst);
    traffic(proxy, 50).await;
    assert_eq!(
        canary_hits.load(Ordering::SeqCst),
        before,
        "all traffic on stable"
    );

    // Once writes work again, the rollback reaches the journal with the next window.
    store.set_broken(false);
    let ok = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let events = store.events("flaky", 0, 1000).await.unwrap();
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
        store.load("flaky").await.unwrap().state.status.name(),
        "rolled_back"
    );
    registry.shutdown().await;
}

/// Regression (review): a rollback made while the store failed was kept only in memory until
/// the next window's write; stopping before that (Ctrl-C, `--exit-on-end`) lost it, and a
/// restart would have routed canary traffic again. Stopping now writes it, with retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_made_while_the_store_fails_is_written_before_stopping() {
    let Setup {
        registry, store, ..
    } = start().await;
    store.set_broken(true);
    let r = signal(
        &registry,
        Signal::SecurityAlert {
            severity: Severity::Critical,
            note: "token leak".into(),
        },
    )
    .await;
    assert!(r.is_err());
    until(&registry, "rolled back", |s| {
        s.status == v1::Status::RolledBack
    })
    .await;
    // Stop while the store still fails; it recovers moments later.
    let fixer = {
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            store.set_broken(false);
        })
    };
    tokio::time::timeout(Duration::from_secs(20), registry.shutdown())
        .await
        .expect("stops");
    fixer.await.unwrap();
    assert_eq!(status(&registry), v1::Status::RolledBack);
    let stored = store.load("flaky").await.unwrap();
    assert_eq!(
        stored.state.status.name(),
        "rolled_back",
        "the journal has the rollback"
    );
    assert_eq!(stored.state.share.bp(), 0);
    assert!(
        store
            .events("flaky", 0, 1000)
            .await
            .unwrap()
            .iter()
            .any(|(_, e)| matches!(e.kind, EventKind::RolledBack { .. }))
    );
}

/// Status and `/metrics` read what the controller last published: a controller stuck on a
/// frozen disk neither delays them nor drops out of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_metrics_never_wait_for_a_stuck_controller() {
    let Setup {
        registry, store, ..
    } = start().await;
    store.frozen.store(true, Ordering::SeqCst);
    let stuck = {
        let registry = registry.clone();
        tokio::spawn(async move {
            signal(
                &registry,
                Signal::BugReport {
                    note: "late".into(),
                },
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!stuck.is_finished(), "the signal waits for the frozen disk");
    let answered = tokio::time::timeout(Duration::from_secs(5), async {
        for _ in 0..100 {
            let metrics = registry.metrics();
            assert_eq!(metrics.len(), 1, "the stuck rollout is still listed");
            assert_eq!(metrics[0].status, v1::Status::Running);
            assert_eq!(status(&registry), v1::Status::Running);
        }
    })
    .await;
    assert!(
        answered.is_ok(),
        "status and metrics answered while the controller was stuck"
    );
    store.frozen.store(false, Ordering::SeqCst);
    assert!(
        stuck.await.unwrap().is_ok(),
        "and the signal is journaled once the disk thaws"
    );
    registry.shutdown().await;
}

/// Regression (issue 11): with the journal on a frozen disk a critical alert's rollback waited
/// for the write, and the canary kept its share for the whole freeze. The lowered share now
/// reaches the proxy before the write; the record follows when the disk thaws.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_does_not_wait_for_a_frozen_disk() {
    let Setup {
        registry,
        store,
        proxy,
        canary_hits,
    } = start().await;
    traffic(proxy, 200).await;
    assert!(canary_hits.load(Ordering::SeqCst) > 0, "the canary serves");
    store.frozen.store(true, Ordering::SeqCst);
    let alert = {
        let registry = registry.clone();
        tokio::spawn(async move {
            signal(
                &registry,
                Signal::SecurityAlert {
                    severity: Severity::Critical,
                    note: "auth bypass".into(),
                },
            )
            .await
        })
    };
    until(&registry, "rolled back while the disk is frozen", |s| {
        s.status == v1::Status::RolledBack && s.applied_share == Some(0)
    })
    .await;
    assert!(
        !alert.is_finished(),
        "the alert's answer waits for its record"
    );
    let hits = canary_hits.load(Ordering::SeqCst);
    traffic(proxy, 200).await;
    assert_eq!(
        canary_hits.load(Ordering::SeqCst),
        hits,
        "nobody reaches the canary while the disk is still frozen"
    );
    store.frozen.store(false, Ordering::SeqCst);
    assert!(alert.await.unwrap().is_ok(), "answered once written");
    let stored = store.load("flaky").await.unwrap();
    assert_eq!(stored.state.status.name(), "rolled_back");
    assert_eq!(stored.state.applied.map(|s| s.bp()), Some(0));
    registry.shutdown().await;
}

/// Regression (issue 11): card numbers in signal notes and operator reasons were journaled
/// raw (append-only: never removable) and shown by `ramp events`; control characters in them
/// could forge log lines. Both are scrubbed before the journal sees them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_numbers_and_control_characters_are_scrubbed_before_the_journal() {
    let Setup {
        registry, store, ..
    } = start().await;
    signal(
        &registry,
        Signal::PciAlert {
            note: "PAN 4111 1111 1111 1111 in a debug log\n12:00 ROLLED BACK".into(),
        },
    )
    .await
    .unwrap();
    let events = store.events("flaky", 0, 1000).await.unwrap();
    let text = serde_json::to_string(&events.iter().map(|(_, e)| e).collect::<Vec<_>>()).unwrap();
    assert!(!text.contains("4111 1111"), "{text}");
    assert!(text.contains("************1111"), "{text}");
    assert!(text.contains("in a debug log\\\\u{a}12:00"), "{text}");
    registry.shutdown().await;
}

/// Regression (issue 11): disk full → critical alert → rollback carried out (share 0) but not
/// journaled → the process dies before any write succeeds → restart: the rollout ran at 50%
/// again and the journal held no rollback. The lowered share is pinned in the store's reserved
/// space; the restart starts the proxy at it and journals the rollback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_made_with_the_disk_full_survives_a_crash() {
    let dir = ramp_harness::fresh_dir("pinned-share");
    let path = dir.join("ramp.db");
    let canary_hits = Arc::new(AtomicU64::new(0));
    let stable = upstream(
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    )
    .await;
    let canary = upstream(Arc::new(AtomicBool::new(false)), canary_hits.clone()).await;
    let plan = plan_text(stable, canary);
    {
        let store = Arc::new(FlakyStore::new(SqliteStore::open(&path).unwrap()));
        let registry = registry_over(store.clone());
        let status = registry.start_new(&plan, "flaky.toml", None).await.unwrap();
        let proxy: SocketAddr = status.listen.parse().unwrap();
        traffic(proxy, 200).await;
        assert!(canary_hits.load(Ordering::SeqCst) > 0, "the canary serves");
        store.set_broken(true);
        let r = signal(
            &registry,
            Signal::SecurityAlert {
                severity: Severity::Critical,
                note: "token leak".into(),
            },
        )
        .await;
        let err = r.unwrap_err();
        assert!(err.contains("pinned"), "{err}");
        // The store never recovers before the process goes: nothing reaches the journal.
        registry.shutdown().await;
        assert_eq!(store.load("flaky").await.unwrap().state.share.bp(), 5_000);
    }
    let hits_before = canary_hits.load(Ordering::SeqCst);
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
    let stored = store.load("flaky").await.unwrap();
    let pin = stored.pin.clone().expect("the lowered share is pinned");
    assert_eq!(pin.share.bp(), 0);
    assert!(pin.reason.contains("security"), "{}", pin.reason);
    let registry = registry_over(store.clone());
    let resumed = registry.resume_all().await.unwrap();
    let proxy = resumed[0].outcome.as_ref().unwrap().listen.unwrap();
    // From its first request the resumed proxy sends nobody to the canary.
    traffic(proxy, 200).await;
    assert_eq!(canary_hits.load(Ordering::SeqCst), hits_before);
    until(&registry, "rolled back", |s| {
        s.status == v1::Status::RolledBack
    })
    .await;
    registry.shutdown().await;
    let stored = store.load("flaky").await.unwrap();
    assert_eq!(stored.state.status.name(), "rolled_back");
    assert_eq!(
        stored.pin, None,
        "the journal took it: the pin no longer stands"
    );
    let rolled_back = store.events("flaky", 0, 1000).await.unwrap();
    let reason = rolled_back
        .iter()
        .find_map(|(_, e)| match &e.kind {
            EventKind::RolledBack { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .expect("the rollback is journaled");
    assert!(reason.contains("recovered after a restart"), "{reason}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Regression (found in review): a restart onto a journal that cannot be written sent every
/// user to stable, also for a rollout that had completed at 100% (whose stable may be gone). A
/// settled rollout decides nothing more: it keeps the share it settled at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_rollout_keeps_its_share_when_its_restart_cannot_be_journaled() {
    let dir = ramp_harness::fresh_dir("settled-restart");
    let path = dir.join("ramp.db");
    let stable_hits = Arc::new(AtomicU64::new(0));
    let stable = upstream(Arc::new(AtomicBool::new(false)), stable_hits.clone()).await;
    let canary = upstream(
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    )
    .await;
    let plan = plan_text(stable, canary);
    {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
        let registry = registry_over(store);
        registry.start_new(&plan, "flaky.toml", None).await.unwrap();
        for _ in 0..2 {
            let promote = ramp_core::rollout::Command::Promote {
                by: "ops".into(),
                force: true,
                reason: "vendor deadline".into(),
            };
            registry.command("flaky", promote).await.unwrap();
        }
        until(&registry, "completed", |s| {
            s.status == v1::Status::Completed
        })
        .await;
        registry.shutdown().await;
    }
    let store = Arc::new(FlakyStore::new(SqliteStore::open(&path).unwrap()));
    store.set_broken(true);
    let registry = registry_over(store.clone());
    let resumed = registry.resume_all().await.unwrap();
    let proxy = resumed[0].outcome.as_ref().unwrap().listen.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = stable_hits.load(Ordering::SeqCst);
    traffic(proxy, 100).await;
    assert_eq!(
        stable_hits.load(Ordering::SeqCst),
        before,
        "every user stays on the version the rollout completed with"
    );
    registry.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
