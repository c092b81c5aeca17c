//! `ramp serve`: the proxy and the controller together, on the real (or a compressed) clock.
//!
//! Every analysis interval the controller takes the proxy's metric window, steps the pure state
//! machine and carries out its effects in order: a `SetShare` reaches the proxy's routing
//! snapshot before the next request is routed. Signals and operator commands arrive on a
//! channel and are stepped the moment they arrive. The controller never decides anything itself.

use crate::clock::Clock;
use crate::control::Recorded;
use crate::proxy::{self, BackendHealth, Limits, ProxyConfig, ProxyHandle};
use crate::store::Store;
use ramp_core::cohort::ShareBp;
use ramp_core::evidence::{Signal, VariantStats, Verdict};
use ramp_core::plan::Plan;
use ramp_core::rollout::{
    Command, Effect, Event, EventKind, Input, Notice, Rejection, ReportKind, State, Status,
    current_verdicts, step,
};
use ramp_core::time::Millis;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// What `ramp serve` runs.
pub struct ServeConfig {
    /// The plan (its `[upstreams]` are required).
    pub plan: Plan,
    /// Where the proxy listens.
    pub listen: SocketAddr,
    /// Controller time runs this many times faster than real time.
    pub time_scale: f64,
    /// Proxy limits and timeouts.
    pub limits: Limits,
    /// Add `x-ramp-variant` to responses.
    pub variant_header: bool,
    /// Optional access log (paths masked, never bodies).
    pub access_log: Option<proxy::AccessLog>,
    /// Stop when the rollout completes, rolls back or holds.
    pub exit_on_end: bool,
    /// Where every decision is journaled before it takes effect (`None`: memory only).
    pub store: Option<Arc<dyn Store>>,
    /// A state restored from the store: resume it instead of starting a new rollout.
    pub resume: Option<State>,
}

/// Why serve could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The plan names no upstreams.
    #[error("the plan has no [upstreams] table: ramp serve needs `stable` and `canary` URLs")]
    NoUpstreams,
    /// The proxy could not start.
    #[error(transparent)]
    Proxy(#[from] proxy::ProxyError),
    /// The store refused the first journal write.
    #[error("cannot journal the rollout: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// Something for the controller from outside the proxy.
#[derive(Debug)]
pub enum Control {
    /// A signal (PCI alert, security alert, bug report, feedback). With a `key`, a signal
    /// already counted under that key is journaled as repeated and not counted again. The
    /// reply, if asked for, comes once the signal is journaled (durable).
    Signal {
        /// The signal.
        signal: Signal,
        /// Identifies it at its source, for senders that deliver more than once.
        key: Option<String>,
        /// Its journal position and whether it was a repeat, or why it failed.
        reply: Option<oneshot::Sender<Result<Recorded, String>>>,
    },
    /// Cumulative per-variant numbers since the rollout started (stable, canary).
    Totals(oneshot::Sender<(VariantStats, VariantStats)>),
    /// An operator command; the reply says whether it was applied.
    Command(Command, oneshot::Sender<Result<(), CommandError>>),
    /// From now on, add every canary window to the blast-radius tally (used by `ramp demo`,
    /// which knows when it made the canary worse).
    MarkHarm,
    /// Stop serving (drains the proxy).
    Stop,
}

/// Why a command was not applied.
#[derive(Debug)]
pub enum CommandError {
    /// The state machine refused it (e.g. promote while paused).
    Rejected(Rejection),
    /// It could not be journaled, so it was not carried out; retry.
    Unavailable(String),
}

/// One variant's numbers for displays.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VariantView {
    /// Requests per second (real time), averaged over about the last second.
    pub rps: f64,
    /// Requests in the current phase.
    pub requests: u64,
    /// Error rate in the current phase.
    pub error_rate: f64,
    /// Success rate in the current phase.
    pub success_rate: f64,
    /// Share of requests answered 429 in the current phase.
    pub rate_limit_rate: f64,
    /// Share of requests answered 401/403 in the current phase.
    pub auth_failure_rate: f64,
    /// p95 latency (ms) in the current phase.
    pub p95_ms: Option<f64>,
    /// Distinct users in the current phase.
    pub active_users: u64,
    /// Health-check result.
    pub health: Option<BackendHealth>,
}

impl VariantView {
    fn from_stats(s: &VariantStats, rps: f64, health: BackendHealth) -> Self {
        VariantView {
            rps,
            requests: s.requests,
            error_rate: s.error_rate(),
            success_rate: s.success_rate(),
            rate_limit_rate: s.rate_limit_rate(),
            auth_failure_rate: s.auth_failure_rate(),
            p95_ms: s.quantile_ms(0.95),
            active_users: s.users.estimate(),
            health: Some(health),
        }
    }
}

/// What displays show: the deployment status.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// Controller time now.
    pub now: Millis,
    /// Controller time when serving started.
    pub origin: Millis,
    /// Status name.
    pub status: String,
    /// Health summary (healthy / monitoring / degraded / critical).
    pub health: String,
    /// Current phase index.
    pub phase: usize,
    /// Current phase name.
    pub phase_name: String,
    /// Canary share.
    pub share: ShareBp,
    /// Time in the current phase.
    pub phase_elapsed: Millis,
    /// The phase's planned duration.
    pub phase_duration: Millis,
    /// Whether the phase has been extended.
    pub extended: bool,
    /// Canary numbers.
    pub canary: VariantView,
    /// Stable numbers.
    pub stable: VariantView,
    /// The current phase's gates judged now.
    pub verdicts: Vec<Verdict>,
    /// Why it ended or holds.
    pub reason: Option<String>,
    /// True once the rollout completed, rolled back or holds.
    pub ended: bool,
}

/// A line for the live log.
#[derive(Clone, Debug)]
pub enum LogEntry {
    /// A journal entry.
    Event(Event),
    /// A notification.
    Notify(Notice),
    /// A report was asked for.
    Report(ReportKind),
    /// The journal could not be written.
    StoreError(String),
}

/// The result of a serve run.
#[derive(Debug)]
pub struct ServeResult {
    /// The final state.
    pub state: State,
    /// Every journal entry.
    pub events: Vec<Event>,
    /// Canary outcomes from `MarkHarm` to the end (or the rollback).
    pub blast: Option<VariantStats>,
    /// When harm was marked (controller time).
    pub harm_at: Option<Millis>,
    /// Controller time when serving started.
    pub origin: Millis,
}

/// A running server.
pub struct Server {
    /// Where the proxy listens.
    pub proxy_addr: SocketAddr,
    /// Send signals and commands here.
    pub control: mpsc::Sender<Control>,
    /// The latest status.
    pub snapshot: watch::Receiver<Snapshot>,
    join: JoinHandle<ServeResult>,
}

impl Server {
    /// Waits until the controller stops (rollout ended with `exit_on_end`, or `Stop`).
    pub async fn wait(self) -> ServeResult {
        self.join.await.expect("the controller task does not panic")
    }
}

/// Starts the proxy and the controller. `log` receives every decision as it happens.
pub async fn start(
    config: ServeConfig,
    mut log: impl FnMut(&LogEntry, Millis) + Send + 'static,
) -> Result<Server, ServeError> {
    let plan = config.plan;
    let upstreams = plan.upstreams.clone().ok_or(ServeError::NoUpstreams)?;
    let store = config.store.clone();
    let name = plan.name.clone();
    let (clock, mut state, effects) = match config.resume {
        Some(restored) => {
            let clock = Clock::resumed(config.time_scale, restored.now);
            let (state, effects) = step(&plan, restored, Input::Restarted, clock.now());
            (clock, state, effects)
        }
        None => {
            let clock = Clock::scaled(config.time_scale);
            let (state, effects) = step(&plan, State::new(&plan), Input::Start, clock.now());
            (clock, state, effects)
        }
    };
    let origin = state.started_at.unwrap_or_else(|| clock.now());
    // Journal before acting: the first share is only routed once it is durable.
    if let Some(store) = &store {
        store.append(&name, &journal_of(&effects), &state)?;
    }
    let initial_share = state.share;
    let proxy = proxy::start(
        ProxyConfig {
            listen: config.listen,
            upstreams,
            cohort: plan.cohort.clone(),
            latency_thresholds_us: plan.latency_thresholds_us(),
            limits: config.limits,
            variant_header: config.variant_header,
            access_log: config.access_log,
        },
        initial_share,
    )
    .await?;
    let proxy_addr = proxy.local_addr;
    let mut events = Vec::new();
    let mut journal = Journal::default();
    apply(&proxy, effects, origin, &mut log, &mut events);
    let (control, mut rx) = mpsc::channel::<Control>(1024);
    let (snap_tx, snapshot) = watch::channel(snapshot_of(
        &plan,
        &state,
        clock.now(),
        origin,
        current_verdicts(&plan, &state),
        (0.0, 0.0),
        &proxy,
    ));
    let exit_on_end = config.exit_on_end;
    let join = tokio::spawn(async move {
        let interval = clock
            .real(plan.analysis.interval)
            .max(Duration::from_millis(5));
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut blast: Option<VariantStats> = None;
        let mut harm_at = None;
        let mut last_verdicts_at = std::time::Instant::now() - Duration::from_secs(1);
        let mut verdicts = Vec::new();
        // Request rates shown in displays: an exponential moving average over about a second
        // of real time, so tiny windows under a large --time-scale don't make them jitter.
        let mut rates = (0.0f64, 0.0f64);
        let alpha = (interval.as_secs_f64() / 1.0).min(1.0);
        loop {
            let mut stop = false;
            tokio::select! {
                _ = ticker.tick() => {
                    let mut window = proxy.recorder.take_window();
                    let secs = interval.as_secs_f64();
                    rates.0 += alpha * (window.stable.requests as f64 / secs - rates.0);
                    rates.1 += alpha * (window.canary.requests as f64 / secs - rates.1);
                    if let Some(b) = blast.as_mut()
                        && !state.status.is_terminal()
                    {
                        b.merge(&window.canary);
                    }
                    // A window whose step could not be journaled is fed again with this one.
                    if let Some(mut earlier) = journal.carry.take() {
                        earlier.stable.merge(&window.stable);
                        earlier.canary.merge(&window.canary);
                        window = earlier;
                    }
                    let now = clock.now();
                    // The window is journaled with the step it caused, in one transaction.
                    let recorded = store.is_some().then(|| window.clone());
                    let prev = store.is_some().then(|| state.clone());
                    let (s, fx) = step(&plan, state, Input::Window(window), now);
                    let (s, outcome) = journal.commit(store.as_deref(), &name, recorded, prev, s, &fx, &mut log, origin);
                    state = s;
                    if !matches!(outcome, Commit::Reverted(_)) {
                        apply(&proxy, fx, origin, &mut log, &mut events);
                    }
                }
                msg = rx.recv() => {
                    let now = clock.now();
                    match msg {
                        Some(Control::Signal { signal, key, reply }) => {
                            let input = match key {
                                Some(key) => Input::SignalOnce { key, signal },
                                None => Input::Signal(signal),
                            };
                            let prev = store.is_some().then(|| state.clone());
                            let (s, fx) = step(&plan, state, input, now);
                            let duplicate = fx.iter().any(|e| matches!(
                                e,
                                Effect::Journal(ev) if matches!(ev.kind, EventKind::SignalRepeated { .. })
                            ));
                            let (s, outcome) = journal.commit(store.as_deref(), &name, None, prev, s, &fx, &mut log, origin);
                            state = s;
                            let answer = match outcome {
                                Commit::Durable(seq) => {
                                    apply(&proxy, fx, origin, &mut log, &mut events);
                                    Ok(Recorded {
                                        seq: seq.unwrap_or(events.len() as u64),
                                        duplicate,
                                    })
                                }
                                Commit::ActedUnsaved(e) => {
                                    apply(&proxy, fx, origin, &mut log, &mut events);
                                    Err(e)
                                }
                                Commit::Reverted(e) => Err(e),
                            };
                            if let Some(reply) = reply {
                                let _ = reply.send(answer);
                            }
                        }
                        Some(Control::Totals(reply)) => {
                            let _ = reply.send((state.totals.stable.clone(), state.totals.canary.clone()));
                        }
                        Some(Control::Command(cmd, reply)) => {
                            let prev = store.is_some().then(|| state.clone());
                            let (s, fx) = step(&plan, state, Input::Command(cmd), now);
                            let rejected = fx.iter().find_map(|e| match e {
                                Effect::Rejected(r) => Some(r.clone()),
                                _ => None,
                            });
                            let (s, outcome) = journal.commit(store.as_deref(), &name, None, prev, s, &fx, &mut log, origin);
                            state = s;
                            let answer = match (outcome, rejected) {
                                (Commit::Reverted(e), _) => Err(CommandError::Unavailable(e)),
                                (_, Some(r)) => {
                                    apply(&proxy, fx, origin, &mut log, &mut events);
                                    Err(CommandError::Rejected(r))
                                }
                                // A rollback carried out although its journal write failed: it
                                // took effect, so it is not an error for the operator.
                                (Commit::Durable(_) | Commit::ActedUnsaved(_), None) => {
                                    apply(&proxy, fx, origin, &mut log, &mut events);
                                    Ok(())
                                }
                            };
                            let _ = reply.send(answer);
                        }
                        Some(Control::MarkHarm) => {
                            if blast.is_none() {
                                blast = Some(VariantStats::new(plan.latency_thresholds_us().len()));
                                harm_at = Some(now);
                            }
                        }
                        Some(Control::Stop) | None => stop = true,
                    }
                }
            }
            let ended = state.status.is_terminal() || state.status == Status::Holding;
            if last_verdicts_at.elapsed() >= Duration::from_millis(200) || ended || stop {
                verdicts = current_verdicts(&plan, &state);
                last_verdicts_at = std::time::Instant::now();
            }
            let snap = snapshot_of(
                &plan,
                &state,
                clock.now(),
                origin,
                verdicts.clone(),
                rates,
                &proxy,
            );
            let _ = snap_tx.send(snap);
            if stop || (exit_on_end && ended) {
                break;
            }
        }
        // Nothing carried out may stay unjournaled: a window still waiting to be fed is fed,
        // and entries of a rollback made while the store failed are written now, with a few
        // retries. (A restart from a journal without them would route by the old share.)
        if let Some(window) = journal.carry.take() {
            let recorded = store.is_some().then(|| window.clone());
            let prev = store.is_some().then(|| state.clone());
            let (s, fx) = step(&plan, state, Input::Window(window), clock.now());
            let (s, outcome) = journal.commit(
                store.as_deref(),
                &name,
                recorded,
                prev,
                s,
                &fx,
                &mut log,
                origin,
            );
            state = s;
            if !matches!(outcome, Commit::Reverted(_)) {
                apply(&proxy, fx, origin, &mut log, &mut events);
            }
        }
        journal
            .flush(store.as_deref(), &name, &state, &mut log, origin)
            .await;
        proxy.shutdown().await;
        ServeResult {
            state,
            events,
            blast,
            harm_at,
            origin,
        }
    });
    Ok(Server {
        proxy_addr,
        control,
        snapshot,
        join,
    })
}

/// The status displays show, from the state.
fn snapshot_of(
    plan: &Plan,
    state: &State,
    now: Millis,
    origin: Millis,
    verdicts: Vec<Verdict>,
    rates: (f64, f64),
    proxy: &ProxyHandle,
) -> Snapshot {
    let phase = &plan.phases[state.phase];
    Snapshot {
        now,
        origin,
        status: state.status.name().to_string(),
        health: serde_json::to_value(state.health())
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        phase: state.phase,
        phase_name: phase.name.clone(),
        share: state.share,
        phase_elapsed: state.phase_elapsed,
        phase_duration: phase.duration,
        extended: state.extended_at.is_some(),
        canary: VariantView::from_stats(&state.evidence.canary, rates.1, proxy.health.canary()),
        stable: VariantView::from_stats(&state.evidence.stable, rates.0, proxy.health.stable()),
        verdicts,
        reason: state.reason.as_ref().map(ramp_core::report::stop_text),
        ended: state.status.is_terminal() || state.status == Status::Holding,
    }
}

/// The journal entries among some effects.
fn journal_of(effects: &[Effect]) -> Vec<Event> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Journal(ev) => Some(ev.clone()),
            _ => None,
        })
        .collect()
}

/// How a step's journal write went, and so what the controller does with the step.
enum Commit {
    /// Journaled durably (with its position; `None` without a store): carry out its effects.
    Durable(Option<u64>),
    /// Not journaled, but it lowers the traffic share (a rollback): carried out anyway, since a
    /// rollback must not wait for a disk; its entries are written with the next successful
    /// append.
    ActedUnsaved(String),
    /// Not journaled, and not a rollback: undone, as if the input had not arrived (a signal or
    /// command is answered with the error and may be retried; a window is fed again with the
    /// next one, so no evidence is lost and nothing is promoted without a durable record).
    Reverted(String),
}

/// The controller's side of the journal: what is still to be written after a failed append.
#[derive(Default)]
struct Journal {
    /// Entries of steps carried out without a durable record, oldest first.
    unsaved: Vec<Event>,
    /// Windows of such steps, merged, to be recorded with the next append.
    unsaved_window: Option<ramp_core::evidence::MetricWindow>,
    /// A window whose step was undone, to be fed again with the next one.
    carry: Option<ramp_core::evidence::MetricWindow>,
}

impl Journal {
    /// Writes a step's journal entries (after any left unsaved) and the new state in one
    /// durable transaction, before its effects are carried out, and decides what happens when
    /// that fails (see [`Commit`]). `prev` is the state before the step (needed only with a
    /// store). Returns the state to keep.
    #[allow(clippy::too_many_arguments)]
    fn commit(
        &mut self,
        store: Option<&dyn Store>,
        name: &str,
        window: Option<ramp_core::evidence::MetricWindow>,
        prev: Option<State>,
        next: State,
        effects: &[Effect],
        log: &mut impl FnMut(&LogEntry, Millis),
        origin: Millis,
    ) -> (State, Commit) {
        let Some(store) = store else {
            return (next, Commit::Durable(None));
        };
        let mut entries = self.unsaved.clone();
        entries.extend(journal_of(effects));
        let record = merge_windows(self.unsaved_window.clone(), window.clone());
        let result = tokio::task::block_in_place(|| match &record {
            Some(w) => store.append_window(name, w, &entries, &next),
            None => store.append(name, &entries, &next),
        });
        match result {
            Ok(seq) => {
                self.unsaved.clear();
                self.unsaved_window = None;
                (next, Commit::Durable(Some(seq)))
            }
            Err(e) => {
                let before = prev.as_ref().map_or(next.share, |p| p.share);
                let lowers = effects
                    .iter()
                    .any(|e| matches!(e, Effect::SetShare { share } if *share < before));
                match prev {
                    Some(prev) if !lowers => {
                        let msg = format!("journal write failed, not carried out (retry): {e}");
                        log(&LogEntry::StoreError(msg.clone()), origin);
                        self.carry = merge_windows(self.carry.take(), window);
                        (prev, Commit::Reverted(msg))
                    }
                    _ => {
                        let msg = format!(
                            "journal write failed; the rollback was carried out anyway and will be journaled with the next write: {e}"
                        );
                        log(&LogEntry::StoreError(msg.clone()), origin);
                        self.unsaved = entries;
                        self.unsaved_window = record;
                        (next, Commit::ActedUnsaved(msg))
                    }
                }
            }
        }
    }
}

impl Journal {
    /// Writes entries left unsaved by failed appends, retrying for a few seconds; logs loudly
    /// if they still cannot be written.
    async fn flush(
        &mut self,
        store: Option<&dyn Store>,
        name: &str,
        state: &State,
        log: &mut impl FnMut(&LogEntry, Millis),
        origin: Millis,
    ) {
        let Some(store) = store else { return };
        if self.unsaved.is_empty() && self.unsaved_window.is_none() {
            return;
        }
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=6 {
            let result = tokio::task::block_in_place(|| match &self.unsaved_window {
                Some(w) => store.append_window(name, w, &self.unsaved, state),
                None => store.append(name, &self.unsaved, state),
            });
            match result {
                Ok(_) => {
                    self.unsaved.clear();
                    self.unsaved_window = None;
                    return;
                }
                Err(e) if attempt == 6 => {
                    log(
                        &LogEntry::StoreError(format!(
                            "LOST: {} journal entries (the latest state: {}, share {}) could not be written before stopping: {e}. The journal still holds the state before them; check the rollout before restarting.",
                            self.unsaved.len(),
                            state.status.name(),
                            state.share
                        )),
                        origin,
                    );
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    }
}

/// Two optional windows as one.
fn merge_windows(
    a: Option<ramp_core::evidence::MetricWindow>,
    b: Option<ramp_core::evidence::MetricWindow>,
) -> Option<ramp_core::evidence::MetricWindow> {
    match (a, b) {
        (Some(mut a), Some(b)) => {
            a.stable.merge(&b.stable);
            a.canary.merge(&b.canary);
            Some(a)
        }
        (a, b) => a.or(b),
    }
}

/// Carries out effects in order. Journal entries are logged before the share changes they
/// describe; the share change reaches the proxy before any notification is sent.
fn apply(
    proxy: &ProxyHandle,
    effects: Vec<Effect>,
    origin: Millis,
    log: &mut impl FnMut(&LogEntry, Millis),
    events: &mut Vec<Event>,
) {
    for e in effects {
        match e {
            Effect::Journal(ev) => {
                log(&LogEntry::Event(ev.clone()), origin);
                events.push(ev);
            }
            Effect::SetShare { share } => proxy.routing.set_share(share),
            Effect::Notify(n) => log(&LogEntry::Notify(n), origin),
            Effect::Report { report } => log(&LogEntry::Report(report), origin),
            Effect::Rejected(_) => {}
        }
    }
}
