//! `ramp serve`: the proxy and the controller together, on the real (or a compressed) clock.
//!
//! Every analysis interval the controller takes the proxy's metric window, steps the pure state
//! machine and carries out its effects in order: a `SetShare` reaches the proxy's routing
//! snapshot before the next request is routed. Signals and operator commands arrive on a
//! channel and are stepped the moment they arrive. The controller never decides anything itself.

use crate::clock::Clock;
use crate::proxy::{self, BackendHealth, Limits, ProxyConfig, ProxyHandle};
use ramp_core::cohort::ShareBp;
use ramp_core::evidence::{Signal, VariantStats, Verdict};
use ramp_core::plan::Plan;
use ramp_core::rollout::{
    Command, Effect, Event, Input, Notification, Rejection, ReportKind, State, Status,
    current_verdicts, step,
};
use ramp_core::time::Millis;
use serde::Serialize;
use std::net::SocketAddr;
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
}

/// Something for the controller from outside the proxy.
#[derive(Debug)]
pub enum Control {
    /// A signal (PCI alert, security alert, bug report, feedback).
    Signal(Signal),
    /// An operator command; the reply says whether it was applied.
    Command(Command, oneshot::Sender<Result<(), Rejection>>),
    /// From now on, add every canary window to the blast-radius tally (used by `ramp demo`,
    /// which knows when it made the canary worse).
    MarkHarm,
    /// Stop serving (drains the proxy).
    Stop,
}

/// One variant's numbers for displays.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VariantView {
    /// Requests per second (real time) in the last window.
    pub rps: f64,
    /// Requests in the current phase.
    pub requests: u64,
    /// Error rate in the current phase.
    pub error_rate: f64,
    /// Success rate in the current phase.
    pub success_rate: f64,
    /// p95 latency (ms) in the current phase.
    pub p95_ms: Option<f64>,
    /// Distinct users in the current phase.
    pub active_users: u64,
    /// Health-check result.
    pub health: Option<BackendHealth>,
}

impl VariantView {
    fn from_stats(
        s: &VariantStats,
        last_window: u64,
        real_interval: f64,
        health: BackendHealth,
    ) -> Self {
        VariantView {
            rps: last_window as f64 / real_interval.max(1e-9),
            requests: s.requests,
            error_rate: s.error_rate(),
            success_rate: s.success_rate(),
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
    Notify(Notification),
    /// A report was asked for.
    Report(ReportKind),
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
    let clock = Clock::scaled(config.time_scale);
    let origin = clock.now();
    let mut state = State::new(&plan);
    let (s, effects) = step(&plan, state, Input::Start, origin);
    state = s;
    let initial_share = effects
        .iter()
        .rev()
        .find_map(|e| match e {
            Effect::SetShare { share } => Some(*share),
            _ => None,
        })
        .unwrap_or(ShareBp::ZERO);
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
    apply(&proxy, effects, origin, &mut log, &mut events);
    let (control, mut rx) = mpsc::channel::<Control>(1024);
    let (snap_tx, snapshot) = watch::channel(Snapshot {
        now: origin,
        origin,
        status: state.status.name().to_string(),
        health: "monitoring".into(),
        phase: state.phase,
        phase_name: plan.phases[state.phase].name.clone(),
        share: state.share,
        phase_elapsed: 0,
        phase_duration: plan.phases[state.phase].duration,
        extended: false,
        canary: VariantView::default(),
        stable: VariantView::default(),
        verdicts: Vec::new(),
        reason: None,
        ended: false,
    });
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
        let mut last_windows = (0u64, 0u64);
        loop {
            let mut stop = false;
            tokio::select! {
                _ = ticker.tick() => {
                    let window = proxy.recorder.take_window();
                    last_windows = (window.stable.requests, window.canary.requests);
                    if let Some(b) = blast.as_mut()
                        && !state.status.is_terminal()
                    {
                        b.merge(&window.canary);
                    }
                    let now = clock.now();
                    let (s, fx) = step(&plan, state, Input::Window(window), now);
                    state = s;
                    apply(&proxy, fx, origin, &mut log, &mut events);
                }
                msg = rx.recv() => {
                    let now = clock.now();
                    match msg {
                        Some(Control::Signal(sig)) => {
                            let (s, fx) = step(&plan, state, Input::Signal(sig), now);
                            state = s;
                            apply(&proxy, fx, origin, &mut log, &mut events);
                        }
                        Some(Control::Command(cmd, reply)) => {
                            let (s, fx) = step(&plan, state, Input::Command(cmd), now);
                            state = s;
                            let rejected = fx.iter().find_map(|e| match e {
                                Effect::Rejected(r) => Some(r.clone()),
                                _ => None,
                            });
                            apply(&proxy, fx, origin, &mut log, &mut events);
                            let _ = reply.send(rejected.map_or(Ok(()), Err));
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
            let real_interval = interval.as_secs_f64();
            let phase = &plan.phases[state.phase];
            let snap = Snapshot {
                now: clock.now(),
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
                canary: VariantView::from_stats(
                    &state.evidence.canary,
                    last_windows.1,
                    real_interval,
                    proxy.health.canary(),
                ),
                stable: VariantView::from_stats(
                    &state.evidence.stable,
                    last_windows.0,
                    real_interval,
                    proxy.health.stable(),
                ),
                verdicts: verdicts.clone(),
                reason: state.reason.clone(),
                ended,
            };
            let _ = snap_tx.send(snap);
            if stop || (exit_on_end && ended) {
                break;
            }
        }
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
