//! The durable store: round trips of a realistic run through a reopened file, consecutive seq
//! numbers, one writer per rollout, the outbox, retention, paging, errors, migrations, reads
//! that do not wait for writes, journal rows of format 1 (a golden fixture), and acknowledged
//! appends surviving a writer process killed with SIGKILL.
// Tests bound their own waits and measure on the real clock; no decision reads it.
#![allow(clippy::disallowed_methods)]

use proptest::prelude::*;
use ramp_core::evidence::{MetricWindow, Signal};
use ramp_core::plan::{Plan, Severity, parse_plan};
use ramp_core::rollout::{Command, Effect, Event, EventKind, Input, State, Status, step};
use ramp_core::time::{HOUR, MINUTE, Millis};
use ramp_store::{Append, NewRollout, OutboxEntry, SqliteStore, Store, StoreError, StoredRollout};
use ramp_wire::v1;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const SEED: &str = include_str!("../../../examples/payments-backend.toml");
const FORMAT_1: &str = include_str!("fixtures/journal-format-1.sql");

fn seed_plan() -> Plan {
    parse_plan(SEED, "payments-backend.toml").unwrap()
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        TempDir(ramp_harness::fresh_dir(&format!("ramp-store-{tag}")))
    }
    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Core events as the journal stores them.
fn wire(events: &[Event]) -> Vec<v1::Event> {
    events.iter().map(v1::Event::from).collect()
}

/// The store driven from synchronous test code: each call runs to completion on a private
/// runtime (the store's own threads do the work).
struct Db {
    store: Arc<SqliteStore>,
    rt: tokio::runtime::Runtime,
}

impl Db {
    fn wrap(store: SqliteStore) -> Db {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Db {
            store: Arc::new(store),
            rt,
        }
    }
    fn open(path: &Path) -> Result<Db, StoreError> {
        SqliteStore::open(path).map(Db::wrap)
    }
    fn memory() -> Db {
        Db::wrap(SqliteStore::in_memory().unwrap())
    }
    fn create(
        &self,
        name: &str,
        plan: &str,
        created_at: Millis,
        state: &State,
    ) -> Result<u64, StoreError> {
        self.create_with(name, plan, created_at, &[], state)
    }
    fn create_with(
        &self,
        name: &str,
        plan: &str,
        created_at: Millis,
        events: &[Event],
        state: &State,
    ) -> Result<u64, StoreError> {
        self.rt.block_on(self.store.create(NewRollout {
            name: name.into(),
            plan_toml: plan.into(),
            created_at,
            listen: None,
            step: Append {
                events: wire(events),
                state: state.clone(),
                window: None,
                notices: Vec::new(),
            },
        }))
    }
    fn append(
        &self,
        name: &str,
        expected: u64,
        events: &[Event],
        state: &State,
    ) -> Result<u64, StoreError> {
        self.append_step(
            name,
            expected,
            Append {
                events: wire(events),
                state: state.clone(),
                window: None,
                notices: Vec::new(),
            },
        )
    }
    fn append_step(&self, name: &str, expected: u64, step: Append) -> Result<u64, StoreError> {
        self.rt.block_on(self.store.append(name, expected, step))
    }
    fn load(&self, name: &str) -> Result<StoredRollout, StoreError> {
        self.rt.block_on(self.store.load(name))
    }
    fn load_all(&self) -> Result<Vec<Result<StoredRollout, StoreError>>, StoreError> {
        self.rt.block_on(self.store.load_all())
    }
    fn names(&self) -> Vec<String> {
        self.load_all()
            .unwrap()
            .into_iter()
            .map(|r| r.unwrap().name)
            .collect()
    }
    fn events(
        &self,
        name: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, v1::Event)>, StoreError> {
        self.rt.block_on(self.store.events(name, after, limit))
    }
    fn sql<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> T {
        self.rt
            .block_on(self.store.with_connection(move |c| Ok(f(c)?)))
            .unwrap()
    }
    fn count(&self, table: &'static str) -> i64 {
        self.sql(move |c| c.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0)))
    }
}

/// The state holds `f64`s (CUSUM statistics, verdict bounds, feedback scores) that must come
/// back bit for bit. serde_json parses floats exactly only with its `float_roundtrip` feature.
fn assert_json_floats_are_exact() {
    for x in [
        0.9941414234139935_f64,
        0.11290774160688077,
        0.0009369754278950651,
    ] {
        let back: f64 = serde_json::from_str(&serde_json::to_string(&x).unwrap()).unwrap();
        assert_eq!(
            back.to_bits(),
            x.to_bits(),
            "serde_json parsed {x:?} back as {back:?}: floats in a stored State would not \
             round-trip. Enable serde_json's `float_roundtrip` feature in the workspace \
             Cargo.toml"
        );
    }
}

/// Drives the real state machine over the seed plan with realistic windows and signals.
struct Run {
    plan: Plan,
    state: State,
    now: Millis,
    windows: u64,
}

impl Run {
    fn new() -> Self {
        let plan = seed_plan();
        let state = State::new(&plan);
        Run {
            plan,
            state,
            now: 0,
            windows: 0,
        }
    }

    /// Applies one input; returns the journal events it produced.
    fn input(&mut self, input: Input) -> Vec<Event> {
        let state = std::mem::replace(&mut self.state, State::new(&self.plan));
        let (state, fx) = step(&self.plan, state, input, self.now);
        self.state = state;
        fx.into_iter()
            .filter_map(|e| match e {
                Effect::Journal(ev) => Some(ev),
                _ => None,
            })
            .collect()
    }

    /// One analysis window of `span` at 200 requests/s: a few canary errors, 1% slow requests,
    /// latencies in the histograms, and distinct users in the sketches.
    fn window(&mut self, span: Millis) -> Vec<Event> {
        self.now += span;
        self.windows += 1;
        let k = self.windows;
        let thresholds = self.plan.latency_thresholds_us().len();
        let mut w = MetricWindow::new(thresholds);
        let total = 200 * span / 1000;
        let canary = total * u64::from(self.state.share.bp()) / 10_000;
        for (v, n, errors) in [
            (&mut w.canary, canary, 1),
            (&mut w.stable, total - canary, 3),
        ] {
            v.requests = n;
            v.errors = errors.min(n);
            v.successes = n - v.errors;
            v.rate_limited = n / 5_000;
            v.auth_failures = n / 20_000;
            for s in v.slow.iter_mut() {
                *s = n / 100;
            }
            for i in 0..n.min(500) {
                v.latency
                    .record(20_000 + (i * 7_919 + k * 104_729) % 180_000);
                v.users
                    .insert_hash((k * 1_000 + i).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            }
        }
        self.input(Input::Window(w))
    }
}

/// Runs the seed plan for 30 hours in 15-minute windows with signals and operator commands,
/// appending each step to `db`; returns the run and every journaled event in order.
fn realistic_run(db: &Db, name: &str) -> (Run, Vec<Event>) {
    let mut run = Run::new();
    let events = run.input(Input::Start);
    let mut seq = db
        .create_with(name, SEED, 1_700_000_000_000, &events, &run.state)
        .unwrap();
    assert_eq!(seq, events.len() as u64);
    let mut journal = events;
    let mut record = |db: &Db, run: &Run, events: Vec<Event>| {
        let got = db.append(name, seq, &events, &run.state).unwrap();
        seq += events.len() as u64;
        assert_eq!(got, seq, "append returns the last seq");
        journal.extend(events);
    };
    for i in 0..120u64 {
        let events = run.window(15 * MINUTE);
        record(db, &run, events);
        if i % 7 == 3 {
            let score = 0.7 + (i as f64 * 0.618_033_988_749_895) % 0.3;
            let note = format!("checkout felt {} ✓ \"quoted\"", i);
            let events = run.input(Input::Signal(Signal::Feedback { score, note }));
            record(db, &run, events);
        }
        if i == 10 {
            let events = run.input(Input::Signal(Signal::SecurityAlert {
                severity: Severity::Low,
                note: "scanner noise".into(),
            }));
            record(db, &run, events);
            let events = run.input(Input::Signal(Signal::BugReport {
                note: "receipt e-mail late".into(),
            }));
            record(db, &run, events);
        }
        if i == 20 {
            let by = "alice".to_string();
            let reason = "vendor maintenance".to_string();
            let events = run.input(Input::Command(Command::Pause { by, reason }));
            record(db, &run, events);
            run.now += HOUR;
            let events = run.input(Input::Command(Command::Resume { by: "bob".into() }));
            record(db, &run, events);
        }
    }
    (run, journal)
}

#[test]
fn a_realistic_run_round_trips_through_a_reopened_file() {
    assert_json_floats_are_exact();
    let dir = TempDir::new("roundtrip");
    let path = dir.file("ramp.db");
    let (run, journal) = {
        let db = Db::open(&path).unwrap();
        realistic_run(&db, "payments-backend")
    };
    // The run got somewhere: promoted to the second phase with evidence in both phases.
    assert_eq!(run.state.phase, 1, "{:?}", run.state.verdicts);
    assert_eq!(run.state.status, Status::Running);
    assert_eq!(run.state.history.len(), 1);
    assert!(!run.state.history[0].verdicts.is_empty());
    assert!(run.state.triggers.iter().any(|t| t.detector.is_some()));
    assert!(run.state.totals.canary.users.estimate() > 1_000);
    assert!(
        journal
            .iter()
            .any(|e| matches!(e.kind, EventKind::Promoted { .. }))
    );

    let db = Db::open(&path).unwrap();
    let stored = db.load("payments-backend").unwrap();
    assert_eq!(stored.plan_toml, SEED);
    assert_eq!(stored.created_at, 1_700_000_000_000);
    assert_eq!(stored.last_seq, journal.len() as u64);
    assert_eq!(stored.state, run.state, "the state comes back exactly");
    let all: Vec<_> = db
        .load_all()
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(all, vec![stored.clone()]);

    let mut back = Vec::new();
    let mut after = 0;
    loop {
        let page = db.events("payments-backend", after, 7).unwrap();
        let Some(&(last, _)) = page.last() else { break };
        assert!(page.len() <= 7);
        after = last;
        back.extend(page);
    }
    let seqs: Vec<u64> = back.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=journal.len() as u64).collect::<Vec<_>>());
    let events: Vec<v1::Event> = back.into_iter().map(|(_, e)| e).collect();
    assert_eq!(events, wire(&journal));

    // Resuming from the stored state decides exactly as the uninterrupted run does.
    let mut resumed = Run {
        state: stored.state,
        ..Run::new()
    };
    resumed.now = run.now;
    resumed.windows = run.windows;
    let mut original = run;
    for _ in 0..8 {
        assert_eq!(resumed.window(15 * MINUTE), original.window(15 * MINUTE));
    }
    assert_eq!(resumed.state, original.state);
}

#[test]
fn a_snapshot_only_append_keeps_the_seq_and_replaces_the_state() {
    let db = Db::memory();
    let mut run = Run::new();
    let events = run.input(Input::Start);
    let seq = db.create_with("r", SEED, 5, &events, &run.state).unwrap();
    assert_eq!(seq, events.len() as u64);
    assert_eq!(db.load("r").unwrap().last_seq, seq);
    let events = run.window(MINUTE);
    assert!(events.is_empty(), "a quiet window journals nothing");
    assert_eq!(db.append("r", seq, &[], &run.state).unwrap(), seq);
    let stored = db.load("r").unwrap();
    assert_eq!((stored.last_seq, &stored.state), (seq, &run.state));
    assert_eq!(stored.state.evidence.canary.requests, 12_000 * 5 / 100);
}

fn signal_event(at: Millis, n: u64) -> Event {
    Event {
        at,
        phase: "canary".into(),
        kind: EventKind::SignalReceived {
            signal: Signal::BugReport {
                note: format!("report {n}"),
            },
            from: None,
            key: None,
        },
    }
}

#[test]
fn seq_numbers_are_consecutive_per_rollout() {
    let db = Db::memory();
    let state = State::new(&seed_plan());
    db.create("a", SEED, 1, &state).unwrap();
    db.create("b", SEED, 2, &state).unwrap();
    let ev = |n| signal_event(n, n);
    assert_eq!(db.append("a", 0, &[ev(1), ev(2)], &state).unwrap(), 2);
    assert_eq!(db.append("b", 0, &[ev(3)], &state).unwrap(), 1);
    assert_eq!(db.append("a", 2, &[], &state).unwrap(), 2);
    assert_eq!(db.append("a", 2, &[ev(4)], &state).unwrap(), 3);
    assert_eq!(
        db.append("b", 1, &[ev(5), ev(6), ev(7)], &state).unwrap(),
        4
    );
    let a: Vec<(u64, Millis)> = db
        .events("a", 0, 100)
        .unwrap()
        .into_iter()
        .map(|(s, e)| (s, e.at))
        .collect();
    assert_eq!(a, vec![(1, 1), (2, 2), (3, 4)]);
    let b: Vec<u64> = db
        .events("b", 0, 100)
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(b, vec![1, 2, 3, 4]);
    assert_eq!(db.load("b").unwrap().last_seq, 4);
}

/// Two writers of one rollout can never interleave its journal: an append that does not follow
/// the position its writer expects is refused and writes nothing, the state included.
#[test]
fn an_append_that_does_not_follow_the_journal_is_a_conflict() {
    let db = Db::memory();
    let mut state = State::new(&seed_plan());
    db.create("r", SEED, 1, &state).unwrap();
    assert_eq!(db.append("r", 0, &[signal_event(1, 1)], &state).unwrap(), 1);
    // A second writer that still believes the journal is at 0.
    state.now = 99;
    for expected in [0, 2, 7] {
        match db.append("r", expected, &[signal_event(2, 2)], &state) {
            Err(StoreError::Conflict {
                rollout,
                expected: e,
                actual,
            }) => assert_eq!((rollout.as_str(), e, actual), ("r", expected, 1)),
            other => panic!("{other:?}"),
        }
        // Not even a snapshot-only write goes through.
        assert!(matches!(
            db.append("r", expected, &[], &state),
            Err(StoreError::Conflict { .. })
        ));
    }
    let stored = db.load("r").unwrap();
    assert_eq!((stored.last_seq, stored.state.now), (1, 0));
    assert_eq!(db.count("journal"), 1);
}

/// Notices are written in the same transaction as the step that sends them, and stay in the
/// outbox until marked delivered.
#[test]
fn notices_are_written_with_their_step_and_wait_until_delivered() {
    let db = Db::memory();
    let plan = seed_plan();
    let (state, fx) = step(&plan, State::new(&plan), Input::Start, 10);
    let events: Vec<Event> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Journal(ev) => Some(ev.clone()),
            _ => None,
        })
        .collect();
    let notices: Vec<v1::Notice> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Notify(n) => Some(v1::Notice::of(&plan.name, n)),
            _ => None,
        })
        .collect();
    assert_eq!(notices.len(), 1, "phase started");
    let seq = db
        .rt
        .block_on(db.store.create(NewRollout {
            name: "r".into(),
            plan_toml: SEED.into(),
            created_at: 10,
            listen: Some("127.0.0.1:8080".into()),
            step: Append {
                events: wire(&events),
                state: state.clone(),
                window: None,
                notices: notices.clone(),
            },
        }))
        .unwrap();
    assert_eq!(
        db.load("r").unwrap().listen.as_deref(),
        Some("127.0.0.1:8080")
    );
    let pending = db.rt.block_on(db.store.undelivered(10)).unwrap();
    assert_eq!(
        pending
            .iter()
            .map(|n| (n.rollout.as_str(), n.seq, n.notice.clone(), n.delivered_at))
            .collect::<Vec<_>>(),
        vec![("r", seq, notices[0].clone(), None)]
    );
    assert!(
        pending[0]
            .notice
            .headline
            .starts_with("phase canary started")
    );

    // A step whose write fails leaves no notice behind: all or nothing.
    let bad = Append {
        events: vec![v1::Event {
            at: u64::MAX,
            phase: String::new(),
            kind: v1::EventKind::Started,
        }],
        state: state.clone(),
        window: None,
        notices: notices.clone(),
    };
    assert!(matches!(
        db.append_step("r", seq, bad),
        Err(StoreError::Encode(_))
    ));
    assert_eq!(db.count("outbox"), 1);

    db.rt
        .block_on(db.store.delivered(vec![pending[0].id], 20))
        .unwrap();
    assert!(db.rt.block_on(db.store.undelivered(10)).unwrap().is_empty());
    let all: Vec<OutboxEntry> = db.rt.block_on(db.store.notices("r", 0, 10)).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].delivered_at, Some(20));
    // Marking again changes nothing (a second delivery attempt after a lost acknowledgement).
    db.rt
        .block_on(db.store.delivered(vec![pending[0].id], 30))
        .unwrap();
    let again = db.rt.block_on(db.store.notices("r", 0, 10)).unwrap();
    assert_eq!(again[0].delivered_at, Some(20));
    assert!(matches!(
        db.rt.block_on(db.store.notices("nope", 0, 10)),
        Err(StoreError::NotFound(_))
    ));
}

#[test]
fn windows_are_recorded_with_their_step_and_pruned_by_age() {
    let db = Db::memory();
    let mut state = State::new(&seed_plan());
    db.create("r", SEED, 1, &state).unwrap();
    for (i, at) in [1_000u64, 2_000, 3_000, 4_000].into_iter().enumerate() {
        state.now = at;
        let mut w = MetricWindow::new(1);
        w.canary.requests = i as u64 + 1;
        db.append_step(
            "r",
            0,
            Append {
                events: Vec::new(),
                state: state.clone(),
                window: Some(w),
                notices: Vec::new(),
            },
        )
        .unwrap();
    }
    let all = db.rt.block_on(db.store.windows("r", 0, 100)).unwrap();
    assert_eq!(
        all.iter()
            .map(|(at, w)| (*at, w.canary.requests))
            .collect::<Vec<_>>(),
        vec![(1_000, 1), (2_000, 2), (3_000, 3), (4_000, 4)]
    );
    let pruned = db.rt.block_on(db.store.prune_windows("r", 3_000)).unwrap();
    assert_eq!(pruned, 2);
    let left = db.rt.block_on(db.store.windows("r", 0, 100)).unwrap();
    assert_eq!(
        left.iter().map(|(at, _)| *at).collect::<Vec<_>>(),
        vec![3_000, 4_000]
    );
    // The evidence the windows added up to stays in the state.
    assert_eq!(db.load("r").unwrap().state.now, 4_000);
}

#[test]
fn a_retired_rollout_is_marked_and_stays_readable() {
    let db = Db::memory();
    let state = State::new(&seed_plan());
    db.create_with("r", SEED, 1, &[signal_event(1, 1)], &state)
        .unwrap();
    assert_eq!(db.load("r").unwrap().retired_at, None);
    db.rt.block_on(db.store.retire("r", 50)).unwrap();
    // Retiring twice keeps the first time.
    db.rt.block_on(db.store.retire("r", 60)).unwrap();
    let stored = db.load("r").unwrap();
    assert_eq!(stored.retired_at, Some(50));
    assert_eq!(db.events("r", 0, 10).unwrap().len(), 1);
    assert!(matches!(
        db.rt.block_on(db.store.retire("nope", 1)),
        Err(StoreError::NotFound(_))
    ));
}

/// Reads go to their own connection and thread: a write that is stuck (here: the writer
/// thread held inside a job) does not delay them.
#[test]
fn reads_do_not_wait_for_a_stuck_writer() {
    let dir = TempDir::new("stuck");
    let db = Db::open(&dir.file("ramp.db")).unwrap();
    let state = State::new(&seed_plan());
    db.create_with("r", SEED, 1, &[signal_event(1, 1)], &state)
        .unwrap();
    let (release, held) = mpsc::channel::<()>();
    let (entered, inside) = mpsc::channel::<()>();
    let store = db.store.clone();
    let writer = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(store.with_connection(move |_| {
            let _ = entered.send(());
            let _ = held.recv_timeout(Duration::from_secs(30));
            Ok(())
        }))
        .unwrap();
    });
    inside.recv().unwrap();
    // The writer is busy; these must answer anyway.
    assert_eq!(db.load("r").unwrap().last_seq, 1);
    assert_eq!(db.events("r", 0, 10).unwrap().len(), 1);
    assert_eq!(db.load_all().unwrap().len(), 1);
    release.send(()).unwrap();
    writer.join().unwrap();
}

#[test]
fn events_are_paged_oldest_first() {
    let db = Db::memory();
    let state = State::new(&seed_plan());
    db.create("r", SEED, 1, &state).unwrap();
    let all: Vec<Event> = (1..=10).map(|n| signal_event(n * 10, n)).collect();
    db.append("r", 0, &all[..4], &state).unwrap();
    db.append("r", 4, &all[4..], &state).unwrap();
    let page = |after, limit| -> Vec<u64> {
        db.events("r", after, limit)
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect()
    };
    assert_eq!(page(0, 3), vec![1, 2, 3]);
    assert_eq!(page(3, 3), vec![4, 5, 6]);
    assert_eq!(page(8, 3), vec![9, 10]);
    assert_eq!(page(10, 3), Vec::<u64>::new());
    assert_eq!(page(0, 0), Vec::<u64>::new());
    assert_eq!(page(0, usize::MAX), (1..=10).collect::<Vec<_>>());
    assert_eq!(page(u64::MAX, 5), Vec::<u64>::new());
    let (seq, e) = db.events("r", 6, 1).unwrap().remove(0);
    assert_eq!((seq, e), (7, v1::Event::from(&all[6])));
}

#[test]
fn names_must_be_new_to_create_and_known_to_use() {
    let db = Db::memory();
    let state = State::new(&seed_plan());
    db.create("r", SEED, 1, &state).unwrap();
    match db.create("r", "name = \"other\"", 2, &state) {
        Err(StoreError::AlreadyExists(n)) => assert_eq!(n, "r"),
        other => panic!("{other:?}"),
    }
    let kept = db.load("r").unwrap();
    assert_eq!((kept.plan_toml.as_str(), kept.created_at), (SEED, 1));

    let missing = |r: Result<(), StoreError>| match r {
        Err(StoreError::NotFound(n)) => assert_eq!(n, "nope"),
        other => panic!("{other:?}"),
    };
    missing(db.load("nope").map(|_| ()));
    missing(
        db.append("nope", 0, &[signal_event(1, 1)], &state)
            .map(|_| ()),
    );
    missing(db.append("nope", 0, &[], &state).map(|_| ()));
    missing(db.events("nope", 0, 10).map(|_| ()));
    assert_eq!(db.names(), vec!["r".to_string()]);
    assert!(
        StoreError::NotFound("nope".into())
            .to_string()
            .contains("nope")
    );
}

#[test]
fn load_all_lists_every_rollout() {
    let db = Db::memory();
    assert!(db.load_all().unwrap().is_empty());
    let mut state = State::new(&seed_plan());
    for (i, name) in ["zeta", "alpha", "mid"].into_iter().enumerate() {
        state.now = i as u64;
        db.create(name, SEED, i as u64, &state).unwrap();
    }
    db.append("mid", 0, &[signal_event(1, 1)], &state).unwrap();
    assert_eq!(db.names(), ["alpha", "mid", "zeta"]);
    let all: Vec<_> = db
        .load_all()
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let summary: Vec<(&str, u64, u64, u64)> = all
        .iter()
        .map(|r| (r.name.as_str(), r.created_at, r.last_seq, r.state.now))
        .collect();
    assert_eq!(
        summary,
        [("alpha", 1, 0, 1), ("mid", 2, 1, 2), ("zeta", 0, 0, 0)]
    );
}

#[test]
fn the_listen_address_is_remembered() {
    let dir = TempDir::new("listen");
    let path = dir.file("ramp.db");
    {
        let db = Db::open(&path).unwrap();
        db.create("r", SEED, 1, &State::new(&seed_plan())).unwrap();
        assert_eq!(db.load("r").unwrap().listen, None);
        db.rt
            .block_on(db.store.set_listen("r", "127.0.0.1:41234"))
            .unwrap();
        assert!(matches!(
            db.rt.block_on(db.store.set_listen("nope", "127.0.0.1:1")),
            Err(StoreError::NotFound(_))
        ));
    }
    let db = Db::open(&path).unwrap();
    assert_eq!(
        db.load("r").unwrap().listen.as_deref(),
        Some("127.0.0.1:41234")
    );
}

/// Regression: one rollout with an unreadable state used to fail `load_all` as a whole, so a
/// restart resumed none of the others either.
#[test]
fn one_corrupt_rollout_does_not_hide_the_others() {
    let dir = TempDir::new("corrupt-one");
    let path = dir.file("ramp.db");
    let state = State::new(&seed_plan());
    let db = Db::open(&path).unwrap();
    for name in ["a", "b", "c"] {
        db.create(name, SEED, 1, &state).unwrap();
    }
    db.sql(|c| {
        c.execute(
            "UPDATE snapshots SET state = '{\"not\": \"a state\"}' WHERE rollout = 'b'",
            [],
        )
    });
    let all = db.load_all().unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].as_ref().unwrap().name, "a");
    match &all[1] {
        Err(StoreError::Corrupt { rollout, .. }) => assert_eq!(rollout, "b"),
        other => panic!("{other:?}"),
    }
    assert_eq!(all[2].as_ref().unwrap().name, "c");

    // A value SQLite cannot even hand back as text (found in review: bad UTF-8 used to fail
    // load_all as a whole) fails only its own rollout too.
    db.sql(|c| {
        c.execute(
            "UPDATE snapshots SET state = CAST(X'FFFE7B7D' AS TEXT) WHERE rollout = 'c'",
            [],
        )
    });
    let all = db.load_all().unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].as_ref().unwrap().name, "a");
    match &all[2] {
        Err(StoreError::Corrupt { rollout, .. }) => assert_eq!(rollout, "c"),
        other => panic!("{other:?}"),
    }

    // A row without a name (SQLite lets a TEXT PRIMARY KEY be NULL) fails only itself.
    db.sql(|c| {
        c.execute(
            "INSERT INTO rollouts (name, plan_toml, created_at) VALUES (NULL, 'x', 0)",
            [],
        )
    });
    let all = db.load_all().unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(all.iter().filter(|r| r.is_ok()).count(), 1, "{all:?}");
    assert!(all.iter().any(|r| matches!(
        r,
        Err(StoreError::Corrupt { rollout, .. }) if rollout.starts_with("(unnamed row")
    )));
}

#[test]
fn corrupt_rows_name_the_rollout_and_seq() {
    let db = Db::memory();
    let state = State::new(&seed_plan());
    db.create("r", SEED, 1, &state).unwrap();
    db.append(
        "r",
        0,
        &[signal_event(1, 1), signal_event(2, 2), signal_event(3, 3)],
        &state,
    )
    .unwrap();
    db.sql(|c| c.execute("UPDATE journal SET body = '{\"at\":' WHERE seq = 2", []));
    match db.events("r", 0, 10) {
        Err(StoreError::Corrupt { rollout, seq, .. }) => {
            assert_eq!((rollout.as_str(), seq), ("r", 2))
        }
        other => panic!("{other:?}"),
    }
    // The rows before the bad one are still readable.
    assert_eq!(db.events("r", 0, 1).unwrap().len(), 1);
    assert_eq!(db.events("r", 2, 10).unwrap().len(), 1);
    db.sql(|c| {
        c.execute(
            "UPDATE snapshots SET state = 'null' WHERE rollout = 'r'",
            [],
        )
    });
    assert!(matches!(
        db.load("r"),
        Err(StoreError::Corrupt { seq: 3, .. })
    ));
    assert!(matches!(
        db.load_all().unwrap().as_slice(),
        [Err(StoreError::Corrupt { seq: 3, .. })]
    ));
}

#[test]
fn a_snapshot_that_lags_the_journal_is_corrupt() {
    let db = Db::memory();
    let state = State::new(&seed_plan());
    db.create("r", SEED, 1, &state).unwrap();
    db.append("r", 0, &[signal_event(1, 1), signal_event(2, 2)], &state)
        .unwrap();
    db.sql(|c| c.execute("UPDATE snapshots SET seq = 1", []));
    match db.load("r") {
        Err(StoreError::Corrupt { reason, .. }) => {
            assert!(reason.contains("journal ends at 2"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    db.sql(|c| c.execute("DELETE FROM snapshots", []));
    assert!(matches!(db.load("r"), Err(StoreError::Corrupt { .. })));
    assert!(matches!(
        db.append("r", 2, &[], &state),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn a_failed_append_writes_nothing() {
    let db = Db::memory();
    let state = State::new(&seed_plan());
    db.create("r", SEED, 1, &state).unwrap();
    // The second event's time cannot be stored: neither event, nor the state, is written.
    let mut later = state.clone();
    later.now = 99;
    let err = db.append(
        "r",
        0,
        &[signal_event(1, 1), signal_event(u64::MAX, 2)],
        &later,
    );
    assert!(matches!(err, Err(StoreError::Encode(_))), "{err:?}");
    assert_eq!(db.count("journal"), 0);
    assert_eq!(db.load("r").unwrap().state, state);
    // A constraint failure inside the transaction rolls it back too.
    db.sql(|c| {
        c.execute(
            "INSERT INTO journal (rollout, seq, at, kind, body) VALUES ('r', 2, 0, 'x', '{}')",
            [],
        )
    });
    assert!(matches!(
        db.append("r", 0, &[signal_event(1, 1), signal_event(2, 2)], &later),
        Err(StoreError::Sqlite(_))
    ));
    assert_eq!(db.count("journal"), 1);
}

#[test]
fn pragmas_give_durable_commits_and_foreign_keys() {
    let dir = TempDir::new("pragmas");
    let db = Db::open(&dir.file("ramp.db")).unwrap();
    let (mode, sync, fk): (String, i64, i64) = db.sql(|c| {
        Ok((
            c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?,
            c.query_row("PRAGMA synchronous", [], |r| r.get(0))?,
            c.query_row("PRAGMA foreign_keys", [], |r| r.get(0))?,
        ))
    });
    assert_eq!(
        (mode.as_str(), sync, fk),
        ("truncate", 2, 1),
        "a rollback journal, FULL, foreign keys"
    );
    let orphan = db.rt.block_on(db.store.with_connection(|c| {
        Ok(c.execute(
            "INSERT INTO journal (rollout, seq, at, kind, body) VALUES ('ghost', 1, 0, 'x', '{}')",
            [],
        ))
    }));
    assert!(orphan.unwrap().is_err());
}

#[test]
fn migrations_are_applied_once() {
    let dir = TempDir::new("migrate");
    let path = dir.file("ramp.db");
    let latest = SqliteStore::latest_schema_version();
    assert!(latest >= 4);
    let state = State::new(&seed_plan());
    {
        let db = Db::open(&path).unwrap();
        assert_eq!(db.rt.block_on(db.store.schema_version()).unwrap(), latest);
        db.create("r", SEED, 1, &state).unwrap();
        db.append("r", 0, &[signal_event(1, 1)], &state).unwrap();
    }
    for _ in 0..3 {
        let db = Db::open(&path).unwrap();
        assert_eq!(db.rt.block_on(db.store.schema_version()).unwrap(), latest);
        assert_eq!(db.load("r").unwrap().last_seq, 1);
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    let (rows, max): (i64, i64) = conn
        .query_row(
            "SELECT COUNT(*), MAX(version) FROM schema_migrations",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((rows, max), (i64::from(latest), i64::from(latest)));
    let memory = Db::memory();
    assert_eq!(
        memory.rt.block_on(memory.store.schema_version()).unwrap(),
        latest
    );
}

#[test]
fn a_database_from_a_newer_ramp_is_refused_and_left_alone() {
    let dir = TempDir::new("newer");
    let path = dir.file("ramp.db");
    let newer = SqliteStore::latest_schema_version() + 1;
    {
        let db = Db::open(&path).unwrap();
        db.create("r", SEED, 1, &State::new(&seed_plan())).unwrap();
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, 0)",
        [newer],
    )
    .unwrap();
    drop(conn);
    match SqliteStore::open(&path) {
        Err(StoreError::Migration(msg)) => {
            assert!(msg.contains(&format!("schema version {newer}")), "{msg}");
            assert!(msg.contains("newer ramp"), "{msg}");
            assert!(msg.contains("ramp.db"), "names the file: {msg}");
        }
        other => panic!("{other:?}"),
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    let n: i64 = conn
        .query_row("SELECT COUNT(*) FROM rollouts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1, "nothing was dropped or changed");
}

#[test]
fn a_file_that_is_not_a_database_is_an_error_not_a_panic() {
    let dir = TempDir::new("garbage");
    let path = dir.file("ramp.db");
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Sqlite(_)), "{err:?}");
}

/// Writers on one file (as two processes would be) that each follow the journal they read:
/// whoever loses a race gets a conflict, reloads and tries again; no position is ever given
/// twice, and every append stays whole.
#[test]
fn concurrent_writers_never_share_a_seq() {
    let dir = TempDir::new("concurrent");
    let path = dir.file("ramp.db");
    let state = State::new(&seed_plan());
    let a = Arc::new(Db::open(&path).unwrap());
    let b = Arc::new(Db::open(&path).unwrap());
    a.create("r", SEED, 1, &state).unwrap();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let path = path.clone();
            let state = state.clone();
            std::thread::spawn(move || {
                let db = Db::open(&path).unwrap();
                let mut conflicts = 0;
                let acks = (0..6u64)
                    .map(|i| {
                        let events = [signal_event(t * 100 + i, t), signal_event(t * 100 + i, t)];
                        loop {
                            let at = db.load("r").unwrap().last_seq;
                            match db.append("r", at, &events, &state) {
                                Ok(seq) => {
                                    assert_eq!(seq, at + 2);
                                    return seq;
                                }
                                Err(StoreError::Conflict { .. }) => conflicts += 1,
                                Err(e) => panic!("{e}"),
                            }
                        }
                    })
                    .collect::<Vec<u64>>();
                (acks, conflicts)
            })
        })
        .collect();
    let mut acks: Vec<u64> = Vec::new();
    for t in threads {
        let (a, _conflicts) = t.join().unwrap();
        acks.extend(a);
    }
    acks.sort_unstable();
    assert_eq!(acks, (1..=24).map(|i| i * 2).collect::<Vec<_>>());
    let seqs: Vec<u64> = b
        .events("r", 0, 1_000)
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(seqs, (1..=48).collect::<Vec<_>>());
    // The two events of one append are adjacent: appends are atomic.
    let events = a.events("r", 0, 1_000).unwrap();
    for pair in events.chunks(2) {
        assert_eq!(pair[0].1, pair[1].1);
    }
}

// --- Journal format 1 ------------------------------------------------------------------------

/// A journal written by ramp before records had formats (schema version 3, taken from a real
/// `ramp serve` run): six rollouts that completed by force, hold after an approval, rolled back
/// on PCI alerts, on the error trigger and by an operator, and hold after a pause. Rebuilt from
/// its SQL dump, opened, migrated and read with today's code.
fn format_1_db(dir: &TempDir) -> Db {
    let path = dir.file("ramp.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    // The dump lists tables by name, the journal before the rollouts it refers to.
    conn.pragma_update(None, "foreign_keys", "OFF").unwrap();
    conn.execute_batch(FORMAT_1).unwrap();
    drop(conn);
    Db::open(&path).unwrap()
}

#[test]
fn a_format_1_journal_loads_after_the_upgrade() {
    let dir = TempDir::new("format-1");
    let db = format_1_db(&dir);
    let all: Vec<StoredRollout> = db
        .load_all()
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let statuses: Vec<(&str, Status)> = all
        .iter()
        .map(|r| (r.name.as_str(), r.state.status))
        .collect();
    assert_eq!(
        statuses,
        vec![
            ("fx-approve", Status::Holding),
            ("fx-errors", Status::RolledBack),
            ("fx-forced", Status::Completed),
            ("fx-hold", Status::Holding),
            ("fx-operator", Status::RolledBack),
            ("fx-pci", Status::RolledBack),
        ]
    );
    for r in &all {
        let plan = parse_plan(&r.plan_toml, &r.name).unwrap();
        assert_eq!(r.state.check(&plan), Ok(()), "{}", r.name);
        // Every event of every rollout reads, in order.
        let events = db.events(&r.name, 0, 1_000).unwrap();
        assert_eq!(events.len() as u64, r.last_seq, "{}", r.name);
        // A resumed rollout steps on from its format-1 state.
        let (next, _) = step(
            &plan,
            r.state.clone(),
            Input::Restarted,
            r.state.now + 1_000,
        );
        assert_eq!(next.status, r.state.status);
    }
    let by_name = |n: &str| all.iter().find(|r| r.name == n).unwrap();
    // Prose became the core's text variants.
    let hold = by_name("fx-hold");
    let reason = ramp_core::report::stop_text(hold.state.reason.as_ref().unwrap());
    assert!(reason.starts_with("not enough evidence after"), "{reason}");
    let v = &hold.state.verdicts[0];
    assert!(
        ramp_core::report::explain(v).starts_with("observed 0% (0 of 2 requests)"),
        "{v:?}"
    );
    // A forced completion is known as forced.
    assert!(by_name("fx-forced").state.forced);
    assert!(!by_name("fx-approve").state.forced);

    // Journal rows keep their words; the numbers that format 1 did not record are absent.
    let pci = db.events("fx-pci", 0, 100).unwrap();
    let fired = pci
        .iter()
        .find_map(|(_, e)| match &e.kind {
            v1::EventKind::TriggerFired {
                explanation,
                evidence,
                ..
            } => Some((explanation.clone(), evidence.clone())),
            _ => None,
        })
        .unwrap();
    assert!(
        fired.0.starts_with("2 counted since the rollout started"),
        "{}",
        fired.0
    );
    assert_eq!(fired.1, None);
    let repeated = pci
        .iter()
        .filter(|(_, e)| matches!(e.kind, v1::EventKind::SignalRepeated { .. }))
        .count();
    assert_eq!(repeated, 1);
    let forced = db.events("fx-forced", 0, 100).unwrap();
    assert!(forced.iter().any(|(_, e)| matches!(
        &e.kind,
        v1::EventKind::Promoted { forced: true, reason: Some(r), .. } if r == "vendor deadline"
    )));
    let windows = db.rt.block_on(db.store.windows("fx-hold", 0, 100)).unwrap();
    assert_eq!(windows.len(), 3);
}

#[test]
fn a_format_1_journal_takes_new_rows_after_its_old_ones() {
    let dir = TempDir::new("format-1-append");
    let db = format_1_db(&dir);
    let hold = db.load("fx-hold").unwrap();
    let plan = parse_plan(&hold.plan_toml, "fx-hold").unwrap();
    let (state, fx) = step(
        &plan,
        hold.state.clone(),
        Input::Restarted,
        hold.state.now + 5,
    );
    let events: Vec<Event> = fx
        .into_iter()
        .filter_map(|e| match e {
            Effect::Journal(ev) => Some(ev),
            _ => None,
        })
        .collect();
    assert_eq!(events.len(), 1, "restarted");
    let seq = db
        .append("fx-hold", hold.last_seq, &events, &state)
        .unwrap();
    assert_eq!(seq, hold.last_seq + 1);
    let formats: Vec<i64> = db.sql(|c| {
        c.prepare("SELECT format FROM journal WHERE rollout = 'fx-hold' ORDER BY seq")?
            .query_map([], |r| r.get(0))?
            .collect()
    });
    assert!(formats[..formats.len() - 1].iter().all(|&f| f == 1));
    assert_eq!(formats.last(), Some(&ramp_store::EVENT_FORMAT));
    let again = db.load("fx-hold").unwrap();
    assert_eq!(
        again.state, state,
        "the snapshot is format 2 now and reads back exactly"
    );
}

// --- Durability across SIGKILL -----------------------------------------------------------

const CHILD_DB: &str = "RAMP_STORE_TEST_CHILD_DB";
const KILLED: &str = "killed";

/// Not a test on its own: the writer process for `acknowledged_appends_survive_sigkill`, which
/// re-runs this test binary with `CHILD_DB` set. Appends (a window and 1-3 signals per append)
/// as fast as it can and prints `ack <seq> <state.now>` after each append has returned.
#[test]
fn child_writer() {
    let Ok(path) = std::env::var(CHILD_DB) else {
        return;
    };
    let db = Db::open(Path::new(&path)).unwrap();
    let stored = db.load(KILLED).unwrap();
    let mut seq = stored.last_seq;
    let mut run = Run {
        now: stored.state.now,
        state: stored.state,
        ..Run::new()
    };
    let mut out = std::io::stdout().lock();
    #[allow(clippy::disallowed_methods)] // a bound on the writer's life, not a decision
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0u64;
    #[allow(clippy::disallowed_methods)]
    while Instant::now() < deadline {
        i += 1;
        let mut events = run.window(MINUTE);
        for k in 0..=(i % 3) {
            let score = (i * 3 + k) as f64 / 17.0 % 1.0;
            let note = format!("append {i}.{k}");
            events.extend(run.input(Input::Signal(Signal::Feedback { score, note })));
        }
        seq = db.append(KILLED, seq, &events, &run.state).unwrap();
        if writeln!(out, "ack {seq} {}", run.state.now)
            .and_then(|()| out.flush())
            .is_err()
        {
            return;
        }
    }
}

/// Starts a writer process, waits for `acks` acknowledgements and then `delay`, SIGKILLs it,
/// and returns every `(seq, now)` it acknowledged (including those still in the pipe).
fn write_until_killed(path: &Path, acks: usize, delay: Duration) -> Vec<(u64, Millis)> {
    let mut child = Process::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
        .env(CHILD_DB, path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        while matches!(r.read_line(&mut line), Ok(n) if n > 0) {
            // Only whole lines count: a line cut short by the kill was not acknowledged.
            if let Some(ack) = line.strip_suffix('\n').and_then(parse_ack) {
                let _ = tx.send(ack);
            }
            line.clear();
        }
    });
    let mut got = Vec::new();
    while got.len() < acks {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(ack) => got.push(ack),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("writer gave {} of {acks} acks: {e}", got.len());
            }
        }
    }
    // The delay moves the kill to other points of the writer's loop (mid-serialization,
    // mid-transaction, mid-fsync).
    std::thread::sleep(delay);
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the writer was killed, it did not finish"
    );
    reader.join().unwrap();
    got.extend(rx.try_iter());
    got
}

fn parse_ack(line: &str) -> Option<(u64, Millis)> {
    // libtest may print "test child_writer ... " on the same line as the first ack.
    let start = line.find("ack ")? + "ack ".len();
    let mut parts = line[start..].split(' ');
    let seq = parts.next()?.parse().ok()?;
    let now = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((seq, now))
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    let dir = TempDir::new("sigkill");
    let path = dir.file("ramp.db");
    {
        let db = Db::open(&path).unwrap();
        let mut run = Run::new();
        let events = run.input(Input::Start);
        db.create_with(KILLED, SEED, 1, &events, &run.state)
            .unwrap();
    }
    let mut acked: Vec<(u64, Millis)> = Vec::new();
    // Kill the writer at a few points; each new writer resumes from what the last one left.
    let rounds = [(7, 0), (23, 150), (3, 400), (41, 1_000), (11, 2_500)];
    for (round, (acks, delay_us)) in rounds.into_iter().enumerate() {
        let got = write_until_killed(&path, acks, Duration::from_micros(delay_us));
        assert!(got.len() >= acks);
        if let (Some(prev), Some(first)) = (acked.last(), got.first()) {
            assert!(first.0 > prev.0, "round {round} continued the journal");
        }
        acked.extend(got);

        // The writer died with its rollback journal possibly hot (mid-transaction): the next
        // open rolls it back. No write-ahead log or shared-memory file is ever made.
        for f in ["ramp.db-wal", "ramp.db-shm"] {
            assert!(!dir.file(f).exists(), "round {round}: {f} (WAL mode)");
        }
        // The file opens cleanly and holds every acknowledged append.
        let conn = rusqlite::Connection::open(&path).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        drop(conn);
        let db = Db::open(&path).unwrap();
        let stored = db.load(KILLED).unwrap();
        let &(max_seq, max_now) = acked.last().unwrap();
        assert!(
            stored.last_seq >= max_seq,
            "round {round}: acked seq {max_seq}, stored {}",
            stored.last_seq
        );
        if stored.last_seq == max_seq {
            assert_eq!(
                stored.state.now, max_now,
                "the snapshot is the last acked state"
            );
        } else {
            assert!(stored.state.now > max_now, "a later, unacknowledged append");
        }
        let seqs: Vec<u64> = db
            .events(KILLED, 0, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(seqs, (1..=stored.last_seq).collect::<Vec<_>>());
        for (seq, now) in &acked {
            let (_, e) = db.events(KILLED, seq - 1, 1).unwrap().remove(0);
            assert!(e.at <= *now, "event {seq} belongs to the acked append");
        }
    }
}

// --- Properties ----------------------------------------------------------------------------

fn arb_event() -> impl Strategy<Value = Event> {
    let kind = prop_oneof![
        Just(EventKind::Started),
        (
            0.0f64..=1.0,
            ".{0,12}",
            proptest::option::of(".{0,12}"),
            proptest::option::of(".{0,12}")
        )
            .prop_map(|(score, note, from, key)| EventKind::SignalReceived {
                signal: Signal::Feedback { score, note },
                from,
                key,
            }),
        ".{0,20}".prop_map(|note| EventKind::Held {
            reason: ramp_core::rollout::StopReason::Operator {
                by: "p".into(),
                note
            }
        }),
        (0u64..1 << 50).prop_map(|until| EventKind::Extended { until }),
    ];
    (0u64..1 << 50, "[a-z]{0,8}", kind).prop_map(|(at, phase, kind)| Event { at, phase, kind })
}

proptest! {
    // No regression file: it would land in the shared source tree; a failure prints its seed.
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Any interleaving of appends (including empty ones) to two rollouts keeps each
    /// rollout's seq consecutive from 1, and paging gives back exactly what was appended.
    #[test]
    fn arbitrary_appends_keep_seq_consecutive(
        batches in prop::collection::vec(
            (any::<bool>(), prop::collection::vec(arb_event(), 0..5)),
            0..24,
        ),
        page in 1usize..9,
    ) {
        assert_json_floats_are_exact();
        let db = Db::memory();
        let mut state = State::new(&seed_plan());
        db.create("a", SEED, 1, &state).unwrap();
        db.create("b", SEED, 1, &state).unwrap();
        let mut expected: [Vec<Event>; 2] = [Vec::new(), Vec::new()];
        for (i, (to_b, events)) in batches.into_iter().enumerate() {
            let (name, k) = if to_b { ("b", 1) } else { ("a", 0) };
            state.now = i as u64;
            let at = expected[k].len() as u64;
            let seq = db.append(name, at, &events, &state).unwrap();
            expected[k].extend(events);
            prop_assert_eq!(seq, expected[k].len() as u64);
        }
        for (name, want) in ["a", "b"].into_iter().zip(&expected) {
            let mut got = Vec::new();
            loop {
                let after = got.len() as u64;
                let p = db.events(name, after, page).unwrap();
                prop_assert!(p.len() <= page);
                if p.is_empty() {
                    break;
                }
                got.extend(p);
            }
            let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
            prop_assert_eq!(seqs, (1..=want.len() as u64).collect::<Vec<_>>());
            let events: Vec<v1::Event> = got.into_iter().map(|(_, e)| e).collect();
            prop_assert_eq!(events, wire(want));
            prop_assert_eq!(db.load(name).unwrap().last_seq, want.len() as u64);
        }
    }
}

// --- Measurement ---------------------------------------------------------------------------

/// Mean latency of a durable append (one window's snapshot of a realistic state plus one
/// event) to a file. `cargo test -p ramp --test store -- --ignored --nocapture append_latency`
#[test]
#[ignore = "measurement, run by hand"]
#[allow(clippy::disallowed_methods, clippy::print_stderr)] // measures, decides nothing
fn append_latency() {
    let dir = TempDir::new("latency");
    let db = Db::open(&dir.file("ramp.db")).unwrap();
    let (mut run, journal) = realistic_run(&db, "r");
    let mut seq = journal.len() as u64;
    let json = serde_json::to_string(&run.state).unwrap().len();
    let n = 300;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let mut events = run.window(MINUTE);
        events.push(signal_event(run.now, i as u64));
        let t = Instant::now();
        seq = db.append("r", seq, &events, &run.state).unwrap();
        samples.push(t.elapsed());
    }
    samples.sort_unstable();
    let mean = samples.iter().sum::<Duration>() / n as u32;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(serde_json::to_string(&run.state).unwrap());
    }
    let encode = t.elapsed() / n as u32;
    eprintln!(
        "append of a {json}-byte state + 1 event, synchronous=FULL: mean {:?}, p50 {:?}, \
         p99 {:?} (of which serializing the state: {:?})",
        mean,
        samples[n / 2],
        samples[n * 99 / 100],
        encode
    );
}

/// Regression (issue 11): the database, which holds signal notes and operator reasons, was
/// created 0644. It and its `-journal` and `-pins` files are the owner's only; an existing looser file
/// is narrowed when opened.
#[cfg(unix)]
#[test]
fn the_journal_files_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("modes");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let path = dir.file("ramp.db");
    {
        let db = Db::open(&path).unwrap();
        let _ = realistic_run(&db, "payments-backend");
        for f in ["ramp.db", "ramp.db-journal", "ramp.db-pins"] {
            let p = dir.file(f);
            if p.exists() {
                assert_eq!(mode(&p), 0o600, "{f}");
            }
        }
        assert!(
            dir.file("ramp.db-pins").exists(),
            "the pins file is reserved at open"
        );
        assert!(!dir.file("ramp.db-wal").exists(), "no WAL");
    }
    let old = dir.file("old.db");
    std::fs::write(&old, b"").unwrap();
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
    let _db = Db::open(&old).unwrap();
    assert_eq!(mode(&old), 0o600);
}

/// `chattr +i` on a file (even root cannot write it then), undone on drop. `None` where chattr
/// cannot do it (not root, a filesystem without the flag): the caller skips.
struct Immutable(PathBuf);

impl Immutable {
    fn set(path: &Path) -> Option<Immutable> {
        let done = Process::new("chattr")
            .arg("+i")
            .arg(path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !done {
            #[allow(clippy::print_stderr)] // the only way a skipped test can say so
            {
                eprintln!("skipped: chattr +i is not available here");
            }
        }
        done.then(|| Immutable(path.to_path_buf()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Process::new("chattr").arg("-i").arg(&self.0).status();
    }
}

/// Regression (issue 11): in WAL mode SQLite maps the `-shm` file, and a fault on that mapping
/// (the file made immutable or truncated, a filesystem that failed) is a SIGBUS that ends the
/// process and every proxy in it. No file of the store may be mapped, at any point of its use.
#[cfg(target_os = "linux")]
#[test]
fn no_file_of_the_store_is_memory_mapped() {
    let dir = TempDir::new("mmap");
    let db = Db::open(&dir.file("ramp.db")).unwrap();
    let _ = realistic_run(&db, "payments-backend");
    db.load_all().unwrap();
    db.events("payments-backend", 0, 50).unwrap();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let dir_name = dir.0.to_string_lossy().to_string();
    let mapped: Vec<&str> = maps.lines().filter(|l| l.contains(&dir_name)).collect();
    assert!(mapped.is_empty(), "mapped: {mapped:#?}");
}

/// A database an earlier ramp left in WAL mode opens with a rollback journal, its rows intact
/// and its `-wal`/`-shm` files gone.
#[test]
fn a_wal_database_is_switched_to_a_rollback_journal() {
    let dir = TempDir::new("from-wal");
    let path = dir.file("ramp.db");
    let state = State::new(&seed_plan());
    {
        let db = Db::open(&path).unwrap();
        db.create("r", SEED, 1, &state).unwrap();
    }
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        // A row written in WAL mode, still in the log when the process ends.
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        conn.execute_batch("PRAGMA foreign_keys = ON").unwrap();
        drop(conn);
        let db = Db::open(&path).unwrap();
        db.append("r", 0, &[signal_event(2, 1)], &state).unwrap();
    }
    let db = Db::open(&path).unwrap();
    let mode: String = db.sql(|c| c.query_row("PRAGMA journal_mode", [], |r| r.get(0)));
    assert_eq!(mode, "truncate");
    assert_eq!(db.load("r").unwrap().last_seq, 1);
    for f in ["ramp.db-wal", "ramp.db-shm"] {
        assert!(!dir.file(f).exists(), "{f}");
    }
}

/// A database that exists but cannot be written (here immutable) still opens: reads work,
/// writes fail with the reason, and once the file can be written again the same store writes,
/// without being opened again.
#[test]
fn an_unwritable_database_opens_for_reading_and_recovers() {
    let dir = TempDir::new("unwritable");
    let path = dir.file("ramp.db");
    let state = State::new(&seed_plan());
    {
        let db = Db::open(&path).unwrap();
        db.create("r", SEED, 1, &state).unwrap();
        db.append("r", 0, &[signal_event(2, 1)], &state).unwrap();
    }
    let Some(frozen) = Immutable::set(&path) else {
        return;
    };
    let db = Db::open(&path).expect("an unwritable database opens for reading");
    assert_eq!(db.load("r").unwrap().last_seq, 1);
    assert_eq!(db.events("r", 0, 10).unwrap().len(), 1);
    assert!(!db.rt.block_on(db.store.writable()));
    let err = db
        .append("r", 1, &[signal_event(3, 2)], &state)
        .unwrap_err();
    let why = err.to_string();
    assert!(
        why.contains("ramp.db") && !why.contains("cannot open store: cannot"),
        "{why}"
    );
    // A pin lives in its own reserved file, so it lands while the database cannot be written.
    let pin = ramp_store::SharePin {
        after_seq: 1,
        share: ramp_core::cohort::ShareBp::new(0).unwrap(),
        at: 3,
        reason: "3 PCI alerts".into(),
    };
    db.rt
        .block_on(db.store.pin_share("r", pin.clone()))
        .unwrap();
    assert_eq!(db.load("r").unwrap().pin, Some(pin.clone()));
    drop(frozen);
    assert_eq!(db.append("r", 1, &[signal_event(3, 2)], &state).unwrap(), 2);
    assert!(db.rt.block_on(db.store.writable()));
    assert_eq!(
        db.load("r").unwrap().pin,
        None,
        "the journal moved past the pin"
    );
    drop(db);
    let db = Db::open(&path).unwrap();
    assert_eq!(db.load("r").unwrap().last_seq, 2);
}

/// A pin survives reopening the store and stands until the journal holds a later position.
#[test]
fn a_pinned_share_stands_until_the_journal_moves_past_it() {
    let dir = TempDir::new("pins");
    let path = dir.file("ramp.db");
    let state = State::new(&seed_plan());
    let pin = ramp_store::SharePin {
        after_seq: 1,
        share: ramp_core::cohort::ShareBp::new(0).unwrap(),
        at: 5,
        reason: "error rate 7.1% over 5%".into(),
    };
    {
        let db = Db::open(&path).unwrap();
        db.create("r", SEED, 1, &state).unwrap();
        db.create("other", SEED, 1, &state).unwrap();
        db.append("r", 0, &[signal_event(2, 1)], &state).unwrap();
        db.rt
            .block_on(db.store.pin_share("r", pin.clone()))
            .unwrap();
    }
    let db = Db::open(&path).unwrap();
    assert_eq!(db.load("r").unwrap().pin, Some(pin.clone()));
    assert_eq!(db.load("other").unwrap().pin, None);
    let all: Vec<_> = db
        .load_all()
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(all.iter().filter(|r| r.pin.is_some()).count(), 1);
    db.append("r", 1, &[signal_event(6, 2)], &state).unwrap();
    assert_eq!(db.load("r").unwrap().pin, None);
    drop(db);
    assert_eq!(Db::open(&path).unwrap().load("r").unwrap().pin, None);
}

/// Regression (issue 11, found by the real-binary fault test): a writer killed mid-commit
/// leaves a hot journal, which only a writer may roll back, so an unwritable database with one
/// could not even be read and `ramp serve` exited. The store reads a rolled-back private copy
/// (the last committed state) until the database can be written, then the database itself.
#[test]
fn an_unwritable_database_with_a_hot_journal_is_read_from_a_rolled_back_copy() {
    let dir = TempDir::new("hot");
    let live = dir.file("live.db");
    let state = State::new(&seed_plan());
    {
        let db = Db::open(&live).unwrap();
        db.create("r", SEED, 1, &state).unwrap();
        db.append("r", 0, &[signal_event(2, 1)], &state).unwrap();
    }
    // A crash image: copy the files while a big transaction has spilled pages into the
    // database file (a tiny cache forces it) and before it commits.
    let crashed = dir.file("ramp.db");
    {
        let conn = rusqlite::Connection::open(&live).unwrap();
        conn.pragma_update(None, "journal_mode", "TRUNCATE")
            .unwrap();
        conn.pragma_update(None, "cache_size", 1).unwrap();
        conn.execute_batch(
            "BEGIN IMMEDIATE; CREATE TABLE filler (x BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 400)
             INSERT INTO filler SELECT randomblob(4000) FROM n;
             UPDATE snapshots SET seq = seq;",
        )
        .unwrap();
        std::fs::copy(&live, &crashed).unwrap();
        std::fs::copy(dir.file("live.db-journal"), dir.file("ramp.db-journal")).unwrap();
        conn.execute_batch("ROLLBACK").unwrap();
    }
    assert!(
        std::fs::metadata(dir.file("ramp.db-journal"))
            .unwrap()
            .len()
            > 0
    );
    let Some(frozen) = Immutable::set(&crashed) else {
        return;
    };
    // Read-only, SQLite cannot use it at all (the failure ramp serve exited with).
    let ro =
        rusqlite::Connection::open_with_flags(&crashed, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let err = ro
        .query_row("SELECT COUNT(*) FROM rollouts", [], |r| r.get::<_, i64>(0))
        .unwrap_err();
    assert_eq!(
        err.sqlite_error().map(|e| e.extended_code),
        Some(776),
        "SQLITE_READONLY_ROLLBACK: {err}"
    );
    drop(ro);
    let db = Db::open(&crashed).expect("opens from a rolled-back copy");
    assert_eq!(
        db.load("r").unwrap().last_seq,
        1,
        "the last committed state"
    );
    assert_eq!(db.events("r", 0, 10).unwrap().len(), 1);
    assert!(!db.rt.block_on(db.store.writable()));
    let leftovers: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("ramp-snapshot-{}-", std::process::id()))
        })
        .collect();
    assert!(leftovers.is_empty(), "the copy is not left behind");
    drop(frozen);
    // The writer opens the database (rolling its journal back); the reader follows it.
    assert_eq!(db.append("r", 1, &[signal_event(3, 2)], &state).unwrap(), 2);
    assert_eq!(
        db.load("r").unwrap().last_seq,
        2,
        "reads see the database again"
    );
    let filler: i64 = db.sql(|c| {
        c.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'filler'",
            [],
            |r| r.get(0),
        )
    });
    assert_eq!(filler, 0, "the uncommitted transaction was rolled back");
}
