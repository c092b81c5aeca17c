//! The rollout state machine: `step(plan, state, input, now) -> (state, effects)`.
//!
//! Pure: it reads no clock and does no IO. The shell feeds it inputs (metric windows, clock
//! ticks, signals, operator commands) with the time they happened, and carries out the effects
//! it returns, **in order**: journal entries come before the actions they describe, and a
//! rollback's `SetShare(0)` comes before its notifications and its incident review.

use crate::cohort::ShareBp;
use crate::evidence::stats::{self, Cusum};
use crate::evidence::{
    Evidence, MetricWindow, Outcome, Signal, Verdict, combine,
    gate::{count, pct},
    judge_all,
};
use crate::plan::{Criterion, Metric, MetricKind, Op, Plan, StopAction, Test};
use crate::time::{Human, Millis};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;

/// Where a rollout is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Created, not started: no traffic on the canary.
    Pending,
    /// In a phase, collecting evidence (possibly extended past its duration).
    Running,
    /// A phase passed; the next one needs a person's approval before it starts.
    AwaitingApproval,
    /// Stopped at the current share: a gate failed or stayed inconclusive and the plan says
    /// hold. Waits for an operator to promote (with force) or roll back.
    Holding,
    /// Paused by an operator: the phase clock stops; triggers still fire.
    Paused,
    /// All traffic back on stable. Terminal.
    RolledBack,
    /// The last phase passed. Terminal.
    Completed,
}

impl Status {
    /// True for states nothing can leave.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::RolledBack | Status::Completed)
    }

    /// The name used in the API and timelines.
    pub fn name(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::AwaitingApproval => "awaiting_approval",
            Status::Holding => "holding",
            Status::Paused => "paused",
            Status::RolledBack => "rolled_back",
            Status::Completed => "completed",
        }
    }
}

/// The health summary shown in the status (as in the seed's "Health Status").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Completed with every gate passed.
    Healthy,
    /// In progress, nothing wrong so far.
    Monitoring,
    /// Something needs attention: a failed or stuck gate, or a trigger close to firing.
    Degraded,
    /// A trigger fired or the rollout was rolled back.
    Critical,
}

/// The sequential or counting state of one rollback trigger.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TriggerState {
    /// The trigger as written.
    pub trigger: String,
    /// The sequential test, for rate and latency triggers.
    pub cusum: Option<Cusum>,
    /// Whether it has fired.
    pub fired: bool,
}

/// A finished (or abandoned) phase, for reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhaseRecord {
    /// The phase's name.
    pub name: String,
    /// Its canary share.
    pub share: ShareBp,
    /// When it started.
    pub started_at: Millis,
    /// When it ended.
    pub ended_at: Millis,
    /// How it ended: "passed", "forced", "failed", "rolled_back", "held", "completed".
    pub result: String,
    /// The last gate verdicts.
    pub verdicts: Vec<Verdict>,
    /// Canary requests and errors during the phase.
    pub canary_requests: u64,
    /// Canary errors during the phase.
    pub canary_errors: u64,
    /// Stable requests during the phase.
    pub stable_requests: u64,
    /// Stable errors during the phase.
    pub stable_errors: u64,
}

/// The whole state of one rollout. Serializable, so the shell can journal and restore it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Where the rollout is.
    pub status: Status,
    /// Index of the current phase.
    pub phase: usize,
    /// The canary share the proxy must route by.
    pub share: ShareBp,
    /// When the rollout started.
    pub started_at: Option<Millis>,
    /// The latest time the state machine has seen.
    pub now: Millis,
    /// When the current phase started.
    pub phase_started_at: Millis,
    /// Time the current phase has been running (pauses and waits excluded).
    pub phase_elapsed: Millis,
    /// The status to return to on resume.
    pub resume_to: Option<Status>,
    /// Evidence collected in the current phase.
    pub evidence: Evidence,
    /// Evidence collected over the whole rollout.
    pub totals: Evidence,
    /// One entry per plan trigger, in plan order.
    pub triggers: Vec<TriggerState>,
    /// The latest gate verdicts of the current phase.
    pub verdicts: Vec<Verdict>,
    /// When the gates were last judged.
    pub last_gate_check: Option<Millis>,
    /// When the current phase was extended, if it was.
    pub extended_at: Option<Millis>,
    /// When the next scheduled status update is due.
    pub next_status_at: Option<Millis>,
    /// When the next summary is due.
    pub next_summary_at: Option<Millis>,
    /// When the rollout ended.
    pub ended_at: Option<Millis>,
    /// Why it ended, stopped or is holding.
    pub reason: Option<String>,
    /// Finished phases.
    pub history: Vec<PhaseRecord>,
    /// Digests (SHA-256, first 128 bits, in hex) of the keys of signals counted through
    /// [`Input::SignalOnce`], oldest first, at most [`REMEMBERED_SIGNAL_KEYS`]. Part of the
    /// journaled state, so a sender that re-delivers after a restart is still recognised. A
    /// cryptographic digest, because keys come from outside: a crafted key must not be able to
    /// collide with a future alert's and make it count as a repeat.
    #[serde(default)]
    pub signal_keys: VecDeque<String>,
}

/// How many signal keys a rollout remembers for [`Input::SignalOnce`]. Alertmanager re-sends
/// every firing alert of a group on each notification; a few thousand distinct alerts per
/// rollout is far beyond what a single rollout sees.
pub const REMEMBERED_SIGNAL_KEYS: usize = 4096;

impl State {
    /// A new rollout, not started.
    pub fn new(plan: &Plan) -> Self {
        let thresholds = plan.latency_thresholds_us().len();
        State {
            status: Status::Pending,
            phase: 0,
            share: ShareBp::ZERO,
            started_at: None,
            now: 0,
            phase_started_at: 0,
            phase_elapsed: 0,
            resume_to: None,
            evidence: Evidence::new(thresholds),
            totals: Evidence::new(thresholds),
            triggers: plan
                .triggers
                .iter()
                .map(|t| TriggerState {
                    trigger: t.text.clone(),
                    cusum: trigger_stream(plan, t).map(|(_, p0)| {
                        Cusum::new(
                            p0,
                            1.0 - plan.analysis.confidence,
                            plan.analysis.trigger_horizon,
                        )
                    }),
                    fired: false,
                })
                .collect(),
            verdicts: Vec::new(),
            last_gate_check: None,
            extended_at: None,
            next_status_at: None,
            next_summary_at: None,
            ended_at: None,
            reason: None,
            history: Vec::new(),
            signal_keys: VecDeque::new(),
        }
    }

    /// The health summary.
    pub fn health(&self) -> Health {
        match self.status {
            Status::RolledBack => Health::Critical,
            Status::Completed => Health::Healthy,
            _ if self.triggers.iter().any(|t| t.fired) => Health::Critical,
            Status::Holding => Health::Degraded,
            _ if self.verdicts.iter().any(|v| v.outcome == Outcome::Fail) => Health::Degraded,
            _ if self
                .triggers
                .iter()
                .filter_map(|t| t.cusum.as_ref())
                .any(|c| c.stat >= c.h / 2.0) =>
            {
                Health::Degraded
            }
            _ => Health::Monitoring,
        }
    }
}

/// An operator's command. `by` names who gave it, for the journal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Command {
    /// Stop the phase clock (triggers keep firing).
    Pause {
        /// Who.
        by: String,
        /// Why.
        #[serde(default)]
        reason: String,
    },
    /// Continue after a pause.
    Resume {
        /// Who.
        by: String,
    },
    /// Start the next phase when it waits for approval.
    Approve {
        /// Who.
        by: String,
    },
    /// Move to the next phase now. Without `force` only when every gate already passes;
    /// with `force` (and a reason) even when they don't, journaled as forced.
    Promote {
        /// Who.
        by: String,
        /// Skip unproven gates.
        #[serde(default)]
        force: bool,
        /// Why (required with `force`).
        #[serde(default)]
        reason: String,
    },
    /// Send all traffic back to stable.
    Rollback {
        /// Who.
        by: String,
        /// Why.
        reason: String,
    },
}

impl Command {
    /// The command's name.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Pause { .. } => "pause",
            Command::Resume { .. } => "resume",
            Command::Approve { .. } => "approve",
            Command::Promote { .. } => "promote",
            Command::Rollback { .. } => "rollback",
        }
    }
}

/// Something that happened, for the state machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "input", rename_all = "snake_case")]
pub enum Input {
    /// Start the rollout (enter the first phase).
    Start,
    /// An analysis window closed: what each variant saw since the previous one.
    Window(MetricWindow),
    /// Time passed (schedules, deadlines).
    Tick,
    /// A signal from outside.
    Signal(Signal),
    /// A signal its sender may deliver more than once (Alertmanager re-sends firing alerts, a
    /// webhook retries after a timeout): counted the first time `key` is seen, journaled as
    /// [`EventKind::SignalRepeated`] and otherwise ignored after that.
    SignalOnce {
        /// Identifies the signal at its source (e.g. rollout, fingerprint and start time).
        key: String,
        /// The signal.
        signal: Signal,
    },
    /// An operator's command.
    Command(Command),
    /// The shell restarted and restored this state from its journal: the time since the last
    /// input was downtime, which does not count as phase time.
    Restarted,
}

/// Why a rollback happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// A rollback trigger fired.
    Trigger,
    /// A success gate failed and the plan says roll back.
    GateFailed,
    /// Gates stayed inconclusive past the deadline and the plan says roll back.
    Deadline,
    /// An operator asked.
    Operator,
}

/// A journal entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// When it happened.
    pub at: Millis,
    /// The phase it happened in.
    pub phase: String,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// The rollout started.
    Started,
    /// A phase started with a traffic share.
    PhaseStarted {
        /// The share.
        share: ShareBp,
    },
    /// The gates were judged.
    GateChecked {
        /// Combined verdict.
        outcome: Outcome,
        /// Each criterion's verdict.
        verdicts: Vec<Verdict>,
    },
    /// Gates inconclusive at the end of the phase: it runs on to collect evidence.
    Extended {
        /// Until when at most.
        until: Millis,
    },
    /// Moved to the next phase.
    Promoted {
        /// The phase left.
        from: String,
        /// The phase entered.
        to: String,
        /// True when gates were skipped by an operator.
        forced: bool,
        /// Who, when an operator promoted.
        by: Option<String>,
        /// Why, when forced.
        reason: Option<String>,
    },
    /// Waiting for approval to start a phase.
    AwaitingApproval {
        /// The phase waiting to start.
        next: String,
    },
    /// Approved.
    Approved {
        /// Who.
        by: String,
    },
    /// Paused.
    Paused {
        /// Who.
        by: String,
        /// Why.
        reason: String,
    },
    /// Resumed.
    Resumed {
        /// Who.
        by: String,
    },
    /// A signal arrived.
    SignalReceived {
        /// The signal.
        signal: Signal,
    },
    /// A signal already counted under the same key arrived again and was not counted.
    SignalRepeated {
        /// The key it was delivered under.
        key: String,
    },
    /// A rollback trigger fired.
    TriggerFired {
        /// The trigger as written.
        trigger: String,
        /// The numbers.
        explanation: String,
    },
    /// All traffic went back to stable.
    RolledBack {
        /// Why.
        cause: Cause,
        /// Details.
        reason: String,
        /// The canary share before.
        share_before: ShareBp,
    },
    /// Stopped at the current share, waiting for a person.
    Held {
        /// Why.
        reason: String,
    },
    /// The last phase passed.
    Completed,
    /// The controller restarted from its journal.
    Restarted {
        /// How long it was down (not counted as phase time).
        downtime: Millis,
    },
}

/// How urgent a notification is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyKind {
    /// Scheduled status update, or a phase change.
    Status,
    /// Periodic summary.
    Summary,
    /// Needs attention now.
    Critical,
}

/// A notification to send.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// How urgent.
    pub kind: NotifyKind,
    /// One line.
    pub headline: String,
}

/// A document to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportKind {
    /// After a rollback: what happened, with the numbers, for the incident review.
    IncidentReview,
    /// After the rollout ended: measured vs target.
    Final,
}

/// A command the current state does not allow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// The command.
    pub command: String,
    /// Why not.
    pub reason: String,
}

/// What the shell must do, in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum Effect {
    /// Write this to the journal (durably, before doing anything that follows).
    Journal(Event),
    /// Route this share of users to the canary from the next request on.
    SetShare {
        /// The share.
        share: ShareBp,
    },
    /// Send a notification.
    Notify(Notification),
    /// Write a report.
    Report {
        /// Which.
        report: ReportKind,
    },
    /// The command was not applied; the state is unchanged.
    Rejected(Rejection),
}

/// Which stream of outcomes a rate trigger watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Canary errors per request.
    Errors,
    /// Canary requests that were not successes.
    NonSuccess,
    /// Canary 429s.
    RateLimited,
    /// Canary 401/403s.
    AuthFailures,
    /// Canary requests slower than the plan's latency threshold at this index.
    Slow(usize),
    /// Feedback that was not positive.
    NegativeFeedback,
}

/// For a rate or latency trigger: the bad-event stream it watches and the event rate at and
/// below which it must not fire (the CUSUM's H0).
pub fn trigger_stream(plan: &Plan, t: &Criterion) -> Option<(Stream, f64)> {
    let Test::Compare { threshold, .. } = t.test else {
        return None;
    };
    match t.metric {
        Metric::ErrorRate => Some((Stream::Errors, threshold)),
        Metric::SuccessRate => Some((Stream::NonSuccess, 1.0 - threshold)),
        Metric::RateLimitRate => Some((Stream::RateLimited, threshold)),
        Metric::AuthFailureRate => Some((Stream::AuthFailures, threshold)),
        Metric::Satisfaction => Some((Stream::NegativeFeedback, 1.0 - threshold)),
        Metric::Latency(q) => {
            let idx = plan.threshold_index(t.latency_threshold_us()?)?;
            Some((Stream::Slow(idx), 1.0 - q as f64 / 1000.0))
        }
        _ => None,
    }
}

/// The pure transition function. See the module docs for the effect-ordering contract.
pub fn step(plan: &Plan, mut state: State, input: Input, now: Millis) -> (State, Vec<Effect>) {
    let mut fx = Vec::new();
    Machine {
        plan,
        s: &mut state,
        fx: &mut fx,
    }
    .apply(input, now);
    (state, fx)
}

struct Machine<'a> {
    plan: &'a Plan,
    s: &'a mut State,
    fx: &'a mut Vec<Effect>,
}

impl Machine<'_> {
    fn phase_name(&self) -> String {
        self.plan
            .phases
            .get(self.s.phase)
            .map(|p| p.name.clone())
            .unwrap_or_default()
    }

    fn journal(&mut self, kind: EventKind) {
        let e = Event {
            at: self.s.now,
            phase: self.phase_name(),
            kind,
        };
        self.fx.push(Effect::Journal(e));
    }

    fn notify(&mut self, kind: NotifyKind, headline: String) {
        if kind == NotifyKind::Critical && !self.plan.notify.critical_immediately {
            return;
        }
        self.fx
            .push(Effect::Notify(Notification { kind, headline }));
    }

    fn reject(&mut self, cmd: &Command, reason: impl Into<String>) {
        self.fx.push(Effect::Rejected(Rejection {
            command: cmd.name().to_string(),
            reason: reason.into(),
        }));
    }

    /// Moves the clock forward; the phase clock runs only while `Running`.
    fn advance(&mut self, now: Millis) {
        if now > self.s.now {
            if self.s.status == Status::Running {
                self.s.phase_elapsed += now - self.s.now;
            }
            self.s.now = now;
        }
    }

    fn apply(&mut self, input: Input, now: Millis) {
        if let Input::Restarted = input {
            let downtime = now.saturating_sub(self.s.now);
            self.s.now = self.s.now.max(now);
            if self.s.status != Status::Pending && !self.s.status.is_terminal() {
                self.journal(EventKind::Restarted { downtime });
                // A notification that fell due while down is sent now, once.
                self.scheduled_notifications();
            }
            return;
        }
        self.advance(now);
        match input {
            Input::Start => self.start(),
            Input::Window(w) => {
                if matches!(self.s.status, Status::Pending) || self.s.status.is_terminal() {
                    return;
                }
                self.s.evidence.add_window(&w);
                self.s.totals.add_window(&w);
                self.check_rate_triggers(&w);
                self.after_time_passed();
            }
            Input::Tick => self.after_time_passed(),
            Input::Signal(sig) => self.signal(sig),
            Input::SignalOnce { key, signal } => self.signal_once(key, signal),
            Input::Command(cmd) => self.command(cmd),
            Input::Restarted => unreachable!("handled above"),
        }
    }

    fn start(&mut self) {
        if self.s.status != Status::Pending {
            return;
        }
        let now = self.s.now;
        self.s.started_at = Some(now);
        self.s.next_status_at = self.plan.notify.status_every.map(|e| now + e);
        self.s.next_summary_at = self.plan.notify.summary_every.map(|e| now + e);
        self.journal(EventKind::Started);
        self.enter_phase(0);
    }

    fn enter_phase(&mut self, k: usize) {
        let phase = &self.plan.phases[k];
        self.s.phase = k;
        self.s.status = Status::Running;
        self.s.share = phase.share;
        self.s.phase_started_at = self.s.now;
        self.s.phase_elapsed = 0;
        self.s.evidence = Evidence::new(self.plan.latency_thresholds_us().len());
        self.s.verdicts.clear();
        self.s.last_gate_check = None;
        self.s.extended_at = None;
        self.s.reason = None;
        self.journal(EventKind::PhaseStarted { share: phase.share });
        self.fx.push(Effect::SetShare { share: phase.share });
        let headline = format!(
            "phase {} started: {} of users on the new version for {}",
            phase.name,
            phase.share,
            Human(phase.duration)
        );
        self.notify(NotifyKind::Status, headline);
    }

    fn record_phase(&mut self, result: &str) {
        let phase = &self.plan.phases[self.s.phase];
        let ev = &self.s.evidence;
        self.s.history.push(PhaseRecord {
            name: phase.name.clone(),
            share: phase.share,
            started_at: self.s.phase_started_at,
            ended_at: self.s.now,
            result: result.to_string(),
            verdicts: self.s.verdicts.clone(),
            canary_requests: ev.canary.requests,
            canary_errors: ev.canary.errors,
            stable_requests: ev.stable.requests,
            stable_errors: ev.stable.errors,
        });
    }

    /// Phase deadlines, gate checks and scheduled notifications.
    fn after_time_passed(&mut self) {
        if self.s.status == Status::Running {
            self.check_phase_end();
        }
        self.scheduled_notifications();
    }

    fn scheduled_notifications(&mut self) {
        if self.s.status.is_terminal() || self.s.status == Status::Pending {
            return;
        }
        let now = self.s.now;
        if let (Some(due), Some(every)) = (self.s.next_status_at, self.plan.notify.status_every)
            && now >= due
        {
            let mut next = due;
            while next <= now {
                next += every;
            }
            self.s.next_status_at = Some(next);
            let headline = self.status_line();
            self.notify(NotifyKind::Status, headline);
        }
        if let (Some(due), Some(every)) = (self.s.next_summary_at, self.plan.notify.summary_every)
            && now >= due
        {
            let mut next = due;
            while next <= now {
                next += every;
            }
            self.s.next_summary_at = Some(next);
            let headline = format!("summary: {}", self.status_line());
            self.notify(NotifyKind::Summary, headline);
        }
    }

    /// A one-line status: phase, share, elapsed, canary error rate.
    fn status_line(&self) -> String {
        let phase = &self.plan.phases[self.s.phase];
        let c = &self.s.evidence.canary;
        format!(
            "{} in phase {} ({} of users), {} of {}; canary error rate {} over {} requests",
            self.s.status.name(),
            phase.name,
            self.s.share,
            Human(self.s.phase_elapsed),
            Human(phase.duration),
            pct(c.error_rate()),
            count(c.requests)
        )
    }

    fn check_phase_end(&mut self) {
        let phase = self.plan.phases[self.s.phase].clone();
        if self.s.phase_elapsed < phase.duration {
            return;
        }
        // While extended, judge once per analysis interval.
        if let Some(last) = self.s.last_gate_check
            && self.s.extended_at.is_some()
            && self.s.now < last + self.plan.analysis.interval
        {
            return;
        }
        let verdicts = judge_all(self.plan, &phase.criteria, &self.s.evidence);
        let outcome = combine(&verdicts);
        self.s.verdicts = verdicts.clone();
        self.s.last_gate_check = Some(self.s.now);
        let deadline_passed = self.s.phase_elapsed >= phase.duration + phase.max_extension;
        match outcome {
            Outcome::Pass => {
                self.journal(EventKind::GateChecked { outcome, verdicts });
                self.phase_passed(false, None, None);
            }
            Outcome::Fail => {
                self.journal(EventKind::GateChecked {
                    outcome,
                    verdicts: verdicts.clone(),
                });
                let failed: Vec<String> = verdicts
                    .iter()
                    .filter(|v| v.outcome == Outcome::Fail)
                    .map(|v| v.to_string())
                    .collect();
                let reason = format!("gate failed in phase {}: {}", phase.name, failed.join("; "));
                match phase.on_failure {
                    StopAction::Rollback => self.rollback(Cause::GateFailed, reason),
                    StopAction::Hold => self.hold(reason),
                }
            }
            Outcome::Inconclusive if deadline_passed => {
                self.journal(EventKind::GateChecked {
                    outcome,
                    verdicts: verdicts.clone(),
                });
                let pending: Vec<String> = verdicts
                    .iter()
                    .filter(|v| v.outcome == Outcome::Inconclusive)
                    .map(|v| v.to_string())
                    .collect();
                let reason = format!(
                    "not enough evidence after {} in phase {} (extension of {} used up): {}",
                    Human(self.s.phase_elapsed),
                    phase.name,
                    Human(phase.max_extension),
                    pending.join("; ")
                );
                match phase.on_inconclusive {
                    StopAction::Rollback => self.rollback(Cause::Deadline, reason),
                    StopAction::Hold => self.hold(reason),
                }
            }
            Outcome::Inconclusive => {
                if self.s.extended_at.is_none() {
                    self.journal(EventKind::GateChecked { outcome, verdicts });
                    self.s.extended_at = Some(self.s.now);
                    let until =
                        self.s.now + (phase.duration + phase.max_extension - self.s.phase_elapsed);
                    self.journal(EventKind::Extended { until });
                    let headline = format!(
                        "phase {} extended by up to {}: gates inconclusive, collecting more evidence",
                        phase.name,
                        Human(phase.max_extension)
                    );
                    self.notify(NotifyKind::Status, headline);
                }
            }
        }
    }

    /// Gates passed (or were forced): complete, wait for approval, or promote.
    fn phase_passed(&mut self, forced: bool, by: Option<String>, reason: Option<String>) {
        let k = self.s.phase;
        let from = self.plan.phases[k].name.clone();
        if k + 1 == self.plan.phases.len() {
            self.record_phase(if forced { "forced" } else { "completed" });
            if forced {
                self.journal(EventKind::Promoted {
                    from: from.clone(),
                    to: from.clone(),
                    forced,
                    by,
                    reason,
                });
            }
            self.s.status = Status::Completed;
            self.s.ended_at = Some(self.s.now);
            self.journal(EventKind::Completed);
            self.notify(
                NotifyKind::Status,
                format!("rollout {} completed: all phases passed", self.plan.name),
            );
            if self.plan.notify.final_report {
                self.fx.push(Effect::Report {
                    report: ReportKind::Final,
                });
            }
            return;
        }
        let next = &self.plan.phases[k + 1];
        if next.approval && !forced && by.is_none() {
            self.record_phase("passed");
            self.s.status = Status::AwaitingApproval;
            self.journal(EventKind::AwaitingApproval {
                next: next.name.clone(),
            });
            let headline = format!(
                "phase {from} passed; phase {} ({}) waits for approval",
                next.name, next.share
            );
            self.notify(NotifyKind::Status, headline);
            return;
        }
        self.record_phase(if forced { "forced" } else { "passed" });
        self.journal(EventKind::Promoted {
            from,
            to: next.name.clone(),
            forced,
            by,
            reason,
        });
        self.enter_phase(k + 1);
    }

    fn hold(&mut self, reason: String) {
        self.s.status = Status::Holding;
        self.s.reason = Some(reason.clone());
        self.journal(EventKind::Held {
            reason: reason.clone(),
        });
        self.notify(
            NotifyKind::Critical,
            format!(
                "rollout {} is holding and needs a decision: {reason}",
                self.plan.name
            ),
        );
    }

    /// Rollback wins: share to 0 first, then notify, then the incident review.
    fn rollback(&mut self, cause: Cause, reason: String) {
        if self.s.status.is_terminal() {
            return;
        }
        let share_before = self.s.share;
        if self.s.status != Status::Pending {
            self.record_phase("rolled_back");
        }
        self.s.status = Status::RolledBack;
        self.s.share = ShareBp::ZERO;
        self.s.ended_at = Some(self.s.now);
        self.s.reason = Some(reason.clone());
        self.s.resume_to = None;
        self.journal(EventKind::RolledBack {
            cause,
            reason: reason.clone(),
            share_before,
        });
        self.fx.push(Effect::SetShare {
            share: ShareBp::ZERO,
        });
        self.notify(
            NotifyKind::Critical,
            format!(
                "rollout {} ROLLED BACK, all traffic on stable: {reason}",
                self.plan.name
            ),
        );
        self.fx.push(Effect::Report {
            report: ReportKind::IncidentReview,
        });
        if self.plan.notify.final_report {
            self.fx.push(Effect::Report {
                report: ReportKind::Final,
            });
        }
    }

    fn check_rate_triggers(&mut self, w: &MetricWindow) {
        for i in 0..self.plan.triggers.len() {
            let t = &self.plan.triggers[i];
            let Some((stream, _)) = trigger_stream(self.plan, t) else {
                continue;
            };
            let c = &w.canary;
            let (x, n) = match stream {
                Stream::Errors => (c.errors, c.requests),
                Stream::NonSuccess => (c.requests - c.successes, c.requests),
                Stream::RateLimited => (c.rate_limited, c.requests),
                Stream::AuthFailures => (c.auth_failures, c.requests),
                Stream::Slow(idx) => (c.slow.get(idx).copied().unwrap_or(0), c.requests),
                Stream::NegativeFeedback => continue,
            };
            self.feed_trigger(i, x, n, Some((x, n)));
            if self.s.status.is_terminal() {
                return;
            }
        }
    }

    /// Feeds `x` events in `n` observations to trigger `i`; fires it when its test alarms.
    fn feed_trigger(&mut self, i: usize, x: u64, n: u64, window: Option<(u64, u64)>) {
        if n == 0 {
            return;
        }
        let state = &mut self.s.triggers[i];
        let Some(cusum) = state.cusum.as_mut() else {
            return;
        };
        if state.fired || !cusum.observe(x, n) {
            return;
        }
        state.fired = true;
        let cusum = cusum.clone();
        let t = self.plan.triggers[i].clone();
        let c = self.plan.analysis.confidence;
        let run_lower = stats::cp_lower(cusum.events, cusum.since_reset, c);
        let mut explanation = format!(
            "sequential test (CUSUM, H0 rate {} vs H1 {}) crossed its boundary {:.1}: {} bad of the last {} canary observations ({}), {}% lower bound {}",
            pct(cusum.p0),
            pct(cusum.p1),
            cusum.h,
            count(cusum.events),
            count(cusum.since_reset),
            pct(crate::evidence::window::ratio(
                cusum.events,
                cusum.since_reset
            )),
            (c * 100.0).round(),
            pct(run_lower),
        );
        if let Some((wx, wn)) = window {
            explanation.push_str(&format!(
                "; this window {} of {} ({})",
                count(wx),
                count(wn),
                pct(crate::evidence::window::ratio(wx, wn))
            ));
        }
        self.fire(&t.text, explanation);
    }

    fn fire(&mut self, trigger: &str, explanation: String) {
        self.journal(EventKind::TriggerFired {
            trigger: trigger.to_string(),
            explanation: explanation.clone(),
        });
        self.rollback(
            Cause::Trigger,
            format!("trigger {trigger:?} fired: {explanation}"),
        );
    }

    fn signal_once(&mut self, key: String, sig: Signal) {
        let digest = Sha256::digest(key.as_bytes());
        let hash: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        if self.s.signal_keys.contains(&hash) {
            self.journal(EventKind::SignalRepeated { key });
            return;
        }
        if self.s.signal_keys.len() >= REMEMBERED_SIGNAL_KEYS {
            self.s.signal_keys.pop_front();
        }
        self.s.signal_keys.push_back(hash);
        self.signal(sig);
    }

    fn signal(&mut self, sig: Signal) {
        if self.s.status.is_terminal() {
            // Still journaled: nothing accepted is lost.
            self.journal(EventKind::SignalReceived { signal: sig });
            return;
        }
        self.journal(EventKind::SignalReceived {
            signal: sig.clone(),
        });
        if self.s.status != Status::Pending {
            self.s.evidence.signals.add(&sig);
        }
        self.s.totals.signals.add(&sig);
        // Count triggers over the whole rollout.
        for i in 0..self.plan.triggers.len() {
            if self.s.status.is_terminal() {
                break;
            }
            let t = self.plan.triggers[i].clone();
            match (t.metric.kind(), &t.test) {
                (MetricKind::Count, Test::Compare { op, threshold, .. }) => {
                    let k = self.s.totals.signals.count(t.metric).unwrap_or(0);
                    if !self.s.triggers[i].fired && op.holds(k as f64, *threshold) {
                        self.s.triggers[i].fired = true;
                        let explanation = format!(
                            "{} counted since the rollout started (exact count), trigger at {} {}; latest: {}",
                            count(k),
                            op.symbol(),
                            threshold,
                            sig.describe()
                        );
                        self.fire(&t.text, explanation);
                    }
                }
                (MetricKind::Rate, _) if t.metric == Metric::Satisfaction => {
                    if let Signal::Feedback { score, .. } = sig {
                        let bad = u64::from(score < crate::plan::POSITIVE_FEEDBACK);
                        self.feed_trigger(i, bad, 1, None);
                    }
                }
                _ => {}
            }
        }
        if !self.s.status.is_terminal() && self.s.status != Status::Pending {
            self.after_time_passed();
        }
    }

    fn command(&mut self, cmd: Command) {
        let status = self.s.status;
        if status.is_terminal() {
            let reason = format!("the rollout has ended ({})", status.name());
            return self.reject(&cmd, reason);
        }
        match &cmd {
            Command::Pause { by, reason } => {
                if !matches!(
                    status,
                    Status::Running | Status::AwaitingApproval | Status::Holding
                ) {
                    return self.reject(&cmd, format!("cannot pause while {}", status.name()));
                }
                self.s.resume_to = Some(status);
                self.s.status = Status::Paused;
                self.journal(EventKind::Paused {
                    by: by.clone(),
                    reason: reason.clone(),
                });
            }
            Command::Resume { by } => {
                if status != Status::Paused {
                    return self.reject(
                        &cmd,
                        format!("cannot resume while {} (not paused)", status.name()),
                    );
                }
                self.s.status = self.s.resume_to.take().unwrap_or(Status::Running);
                self.journal(EventKind::Resumed { by: by.clone() });
                self.after_time_passed();
            }
            Command::Approve { by } => {
                if status != Status::AwaitingApproval {
                    return self.reject(
                        &cmd,
                        format!(
                            "nothing waits for approval (the rollout is {})",
                            status.name()
                        ),
                    );
                }
                self.journal(EventKind::Approved { by: by.clone() });
                let k = self.s.phase;
                let from = self.plan.phases[k].name.clone();
                let to = self.plan.phases[k + 1].name.clone();
                self.journal(EventKind::Promoted {
                    from,
                    to,
                    forced: false,
                    by: Some(by.clone()),
                    reason: None,
                });
                self.enter_phase(k + 1);
            }
            Command::Promote { by, force, reason } => {
                match status {
                    Status::AwaitingApproval => {
                        return self.command(Command::Approve { by: by.clone() });
                    }
                    Status::Running | Status::Holding => {}
                    _ => {
                        return self
                            .reject(&cmd, format!("cannot promote while {}", status.name()));
                    }
                }
                let phase = &self.plan.phases[self.s.phase];
                let verdicts = judge_all(self.plan, &phase.criteria, &self.s.evidence);
                let outcome = combine(&verdicts);
                if outcome == Outcome::Pass {
                    self.s.verdicts = verdicts.clone();
                    self.s.last_gate_check = Some(self.s.now);
                    self.journal(EventKind::GateChecked { outcome, verdicts });
                    self.phase_passed(false, Some(by.clone()), None);
                    return;
                }
                let unproven: Vec<String> = verdicts
                    .iter()
                    .filter(|v| v.outcome != Outcome::Pass)
                    .map(|v| v.to_string())
                    .collect();
                if !force {
                    return self.reject(
                        &cmd,
                        format!(
                            "gates are not proven ({}); promoting anyway needs force and a reason",
                            unproven.join("; ")
                        ),
                    );
                }
                if reason.trim().is_empty() {
                    return self.reject(&cmd, "a forced promotion needs a reason");
                }
                self.s.verdicts = verdicts.clone();
                self.s.last_gate_check = Some(self.s.now);
                self.journal(EventKind::GateChecked { outcome, verdicts });
                self.phase_passed(true, Some(by.clone()), Some(reason.clone()));
            }
            Command::Rollback { by, reason } => {
                let reason = if reason.trim().is_empty() {
                    format!("rolled back by {by}")
                } else {
                    format!("rolled back by {by}: {reason}")
                };
                self.rollback(Cause::Operator, reason);
            }
        }
    }
}

/// Judges the current phase's gates now, without changing anything (for status displays).
pub fn current_verdicts(plan: &Plan, state: &State) -> Vec<Verdict> {
    match plan.phases.get(state.phase) {
        Some(p) if !matches!(state.status, Status::Pending) => {
            judge_all(plan, &p.criteria, &state.evidence)
        }
        _ => Vec::new(),
    }
}

/// True when a trigger of this kind is checked continuously by a sequential test.
pub fn is_sequential(t: &Criterion) -> bool {
    matches!(t.metric.kind(), MetricKind::Rate | MetricKind::Latency)
        && matches!(
            t.test,
            Test::Compare {
                op: Op::Gt | Op::Ge | Op::Lt | Op::Le,
                ..
            }
        )
}
