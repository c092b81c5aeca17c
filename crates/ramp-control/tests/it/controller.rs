//! The real controller loop on tokio's paused clock: the seed plan's three days run in a
//! fraction of a second of real time, through the real store (SQLite in memory) and the real
//! outbox, with scripted evidence and a traffic split that records what it is told.

use ramp_control::controller::{self, Handle, Msg, Parts};
use ramp_control::outbox::Outbox;
use ramp_control::{ScaledClock, log};
use ramp_core::evidence::Signal;
use ramp_core::plan::parse_plan;
use ramp_core::rollout::{Effect, Input, PhaseResult, State, Status, step};
use ramp_harness::doubles::{RecordingNotifier, RecordingSplit, ScriptedEvidence, Traffic};
use ramp_store::{Append, NewRollout, SqliteStore, Store};
use ramp_wire::v1;
use std::sync::Arc;

const SEED: &str = include_str!("../../../../examples/payments-backend.toml");
const T0: u64 = 1_708_423_200_000; // 2024-02-20 10:00:00 UTC, the seed's start time

struct Run {
    handle: Handle,
    store: Arc<SqliteStore>,
    evidence: ScriptedEvidence,
    split: RecordingSplit,
    notifier: RecordingNotifier,
    outbox: Outbox,
}

/// Creates the seed plan's rollout in the store (as the registry does) and starts its
/// controller on the paused clock.
async fn start() -> Run {
    start_with(None).await
}

async fn start_with(refresh: Option<std::time::Duration>) -> Run {
    start_batched(refresh, None, 12_000).await
}

/// `per_take` requests arrive between two takes of evidence (a window, or a trigger batch).
async fn start_batched(
    refresh: Option<std::time::Duration>,
    batch: Option<std::time::Duration>,
    per_take: u64,
) -> Run {
    let plan = Arc::new(parse_plan(SEED, "seed").unwrap());
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    let (state, fx) = step(&plan, State::new(&plan), Input::Start, T0);
    let events = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Journal(ev) => Some(v1::Event::from(ev)),
            _ => None,
        })
        .collect();
    let notices = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Notify(n) => Some(v1::Notice::of(&plan.name, n)),
            _ => None,
        })
        .collect();
    let seq = store
        .create(NewRollout {
            name: plan.name.clone(),
            plan_toml: SEED.into(),
            created_at: T0,
            listen: None,
            step: Append {
                events,
                state: state.clone(),
                window: None,
                notices,
            },
        })
        .await
        .unwrap();
    let split = RecordingSplit::default();
    // 200 requests/s in total, one-minute windows: 12,000 requests a window.
    let evidence = ScriptedEvidence::new(
        Traffic {
            requests: per_take,
            canary_error_rate: 0.0,
        },
        plan.latency_thresholds_us().len(),
        &split,
    );
    let notifier = RecordingNotifier::default();
    let outbox = Outbox::start(store.clone(), Arc::new(notifier.clone()));
    let handle = controller::spawn(Parts {
        name: plan.name.clone(),
        plan,
        state,
        seq,
        pending: fx,
        restarted: false,
        pin: None,
        listen: "127.0.0.1:0".into(),
        store: store.clone(),
        evidence: evidence.clone(),
        split: split.clone(),
        clock: ScaledClock::starting_at(T0, 1.0),
        outbox: outbox.waker(),
        log: log::silent(),
        window_retention: 30 * ramp_core::time::DAY,
        refresh,
        batch,
    });
    Run {
        handle,
        store,
        evidence,
        split,
        notifier,
        outbox,
    }
}

/// Waits until the published status says so. (No timer bounds the wait: on the paused clock
/// a timer would be the next thing tokio jumps to whenever the loop waits for the store. The
/// number of status updates bounds it instead.)
async fn until(
    run: &mut Run,
    what: &str,
    f: impl Fn(&v1::RolloutStatus) -> bool,
) -> v1::RolloutStatus {
    for _ in 0..100_000 {
        let s = run.handle.published.borrow_and_update().status.clone();
        if f(&s) {
            return s;
        }
        if run.handle.published.changed().await.is_err() {
            panic!("the controller stopped before: {what}");
        }
    }
    panic!("100,000 status updates (over two months of windows) without: {what}")
}

/// Positive feedback from canary users (the expanded phase asks for satisfaction >= 90%).
async fn feedback(run: &Run, n: usize) {
    for _ in 0..n {
        let (reply, answer) = tokio::sync::oneshot::channel();
        run.handle
            .inbox
            .send(Msg::Signal {
                signal: Signal::Feedback {
                    score: 0.9,
                    note: String::new(),
                },
                key: None,
                from: "test".into(),
                reply,
            })
            .await
            .unwrap();
        answer.await.unwrap().unwrap();
    }
}

async fn stop(run: Run) -> (State, Arc<SqliteStore>, Vec<ramp_store::OutboxEntry>) {
    run.handle.inbox.send(Msg::Stop).await.unwrap();
    let state = run.handle.task.await.unwrap();
    run.outbox.shutdown().await;
    let delivered = run.notifier.delivered.lock().unwrap().clone();
    (state, run.store, delivered)
}

#[tokio::test(start_paused = true)]
async fn a_canary_that_fails_in_the_second_phase_is_rolled_back_by_the_real_loop() {
    let mut run = start().await;
    let s = until(&mut run, "the canary phase passes", |s| s.phase == 1).await;
    assert_eq!((s.share, s.applied_share), (2000, Some(2000)));
    assert_eq!(s.phase_name, "expanded");
    feedback(&run, 40).await;
    // Six hours into the expanded phase the canary starts failing 5% of its requests.
    until(&mut run, "six hours of the expanded phase", |s| {
        s.phase_elapsed >= 6 * 3_600_000
    })
    .await;
    let windows_before = run.evidence.windows();
    run.evidence.set(Traffic {
        requests: 12_000,
        canary_error_rate: 0.05,
    });
    let s = until(&mut run, "rolled back", |s| {
        s.status == v1::Status::RolledBack
    })
    .await;
    // 2,400 canary requests a window at 5% errors: the trigger needs a few windows, not hours.
    let windows_to_rollback = run.evidence.windows() - windows_before;
    assert!(
        windows_to_rollback <= 5,
        "{windows_to_rollback} windows to roll back"
    );
    assert_eq!((s.share, s.applied_share), (0, Some(0)));
    let reason = s.reason.clone().unwrap();
    assert!(
        reason.starts_with("trigger \"error_rate > 1%\" fired"),
        "{reason}"
    );
    assert!(matches!(
        s.why,
        Some(v1::StopReason::Trigger {
            evidence: Some(v1::TriggerEvidence::Sequential { .. }),
            ..
        })
    ));
    let shares: Vec<u16> = run
        .split
        .applied
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.bp())
        .collect();
    assert_eq!(
        shares,
        vec![500, 2000, 0],
        "5% → 20% → everyone back on stable"
    );

    let (state, store, delivered) = stop(run).await;
    assert_eq!(state.status, Status::RolledBack);
    let results: Vec<(&str, PhaseResult)> = state
        .history
        .iter()
        .map(|h| (h.name.as_str(), h.result))
        .collect();
    assert_eq!(
        results,
        vec![
            ("canary", PhaseResult::Passed),
            ("expanded", PhaseResult::RolledBack)
        ]
    );
    // The journal has the whole story, and the stored state is the final one.
    let stored = store.load("payments-backend").await.unwrap();
    assert!(stored.state == state, "the journal holds the final state");
    assert_eq!(stored.state.applied, Some(ramp_core::cohort::ShareBp::ZERO));
    let kinds: Vec<&'static str> = store
        .events("payments-backend", 0, 10_000)
        .await
        .unwrap()
        .iter()
        .map(|(_, e)| e.kind.name())
        .filter(|k| *k != "signal_received")
        .collect();
    assert_eq!(
        kinds,
        vec![
            "started",
            "phase_started",
            "gate_checked",
            "promoted",
            "phase_started",
            "trigger_fired",
            "rolled_back"
        ]
    );
    // Every notice was delivered once, in order: phase starts, 4-hourly updates, the daily
    // summary, the critical rollback notice, then the incident review's and final report's.
    let ids: Vec<u64> = delivered.iter().map(|n| n.id).collect();
    let mut sorted = ids.clone();
    sorted.dedup();
    assert_eq!(ids, sorted, "each once, in order");
    let about: Vec<&str> = delivered.iter().map(|n| n.notice.about.as_str()).collect();
    assert_eq!(about.first(), Some(&"phase_started"));
    assert_eq!(
        about[about.len() - 3..],
        ["rolled_back", "report", "report"]
    );
    assert!(about.contains(&"summary"));
    assert!(about.iter().filter(|a| **a == "status_update").count() >= 7);
    assert!(store.undelivered(10).await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_healthy_rollout_completes_all_three_phases_on_the_real_loop() {
    let mut run = start().await;
    until(&mut run, "expanded", |s| s.phase == 1).await;
    feedback(&run, 40).await;
    let s = until(&mut run, "completed", |s| s.status == v1::Status::Completed).await;
    assert_eq!(s.health, v1::Health::Healthy);
    assert_eq!(s.share, 10_000);
    // Three days of plan time, give or take the analysis intervals.
    let took = s.ended_at.unwrap() - T0;
    assert!(
        (72 * 3_600_000..73 * 3_600_000).contains(&took),
        "{took} ms of plan time"
    );
    let shares: Vec<u16> = run
        .split
        .applied
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.bp())
        .collect();
    assert_eq!(shares, vec![500, 2000, 10_000]);
    let (state, _, delivered) = stop(run).await;
    assert_eq!(state.history.len(), 3);
    assert!(delivered.iter().any(|n| n.notice.about == "completed"));
}

/// Between windows (a minute apart here) the status is published every second, so its clock
/// and phase time are never a minute old.
#[tokio::test(start_paused = true)]
async fn the_status_stays_fresh_between_windows() {
    let mut run = start_with(Some(std::time::Duration::from_secs(1))).await;
    let first = until(&mut run, "published", |_| true).await;
    let later = until(&mut run, "five seconds later", |s| {
        s.now >= first.now + 5_000
    })
    .await;
    assert!(later.now < first.now + 60_000, "before the next window");
    assert_eq!(run.evidence.windows(), 0, "no window was taken meanwhile");
    let _ = stop(run).await;
}

/// Triggers decide on 100 ms batches while the seed plan's gates keep their 1-minute interval:
/// a canary that starts answering every request with an error is rolled back within a second
/// (not at the next window, up to a minute later), and batches that decide nothing are not
/// journaled one by one (one checkpoint per analysis interval).
#[tokio::test(start_paused = true)]
async fn a_canary_at_100_percent_errors_is_rolled_back_within_a_second_whatever_the_interval() {
    let batch = std::time::Duration::from_millis(100);
    // 200 requests/s: 20 a batch, 1 of them to the 5% canary.
    let mut run = start_batched(None, Some(batch), 20).await;
    let healthy = until(&mut run, "five minutes of the canary phase", |s| {
        s.phase_elapsed >= 5 * 60_000
    })
    .await;
    assert_eq!(healthy.status, v1::Status::Running);
    let windows = run
        .store
        .windows("payments-backend", 0, 10_000)
        .await
        .unwrap();
    assert!(
        (4..=6).contains(&windows.len()),
        "{} windows journaled for 3,000 batches in 5 minutes",
        windows.len()
    );
    let recorded: u64 = windows.iter().map(|(_, w)| w.canary.requests).sum();
    assert!(recorded >= 240, "{recorded} canary requests in the journal");

    let batches_before = run.evidence.windows();
    run.evidence.set(Traffic {
        requests: 20,
        canary_error_rate: 1.0,
    });
    // Paused tokio time: this measures the virtual clock the controller runs on.
    #[allow(clippy::disallowed_methods)]
    let fault_at = tokio::time::Instant::now();
    let s = until(&mut run, "rolled back", |s| {
        s.status == v1::Status::RolledBack
    })
    .await;
    let batches = run.evidence.windows() - batches_before;
    let took = fault_at.elapsed().as_millis();
    // One failed canary request a batch.
    assert!(
        batches <= 10 && took <= 1_000,
        "{batches} batches (= failed requests), {took} ms"
    );
    assert_eq!(
        s.phase, 0,
        "still in the canary phase: no gate was judged early"
    );
    assert!(matches!(
        s.why,
        Some(v1::StopReason::Trigger {
            evidence: Some(v1::TriggerEvidence::Sequential { .. }),
            ..
        })
    ));
    assert_eq!(
        run.split.applied.lock().unwrap().last().map(|s| s.bp()),
        Some(0)
    );
    let (state, store, _) = stop(run).await;
    assert_eq!(state.status, Status::RolledBack);
    let stored = store.load("payments-backend").await.unwrap();
    assert!(stored.state == state, "the rollback is in the journal");
}
