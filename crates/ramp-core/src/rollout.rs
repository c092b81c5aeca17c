//! The rollout state machine: `step(plan, state, input, now) -> (state, effects)`.
//!
//! Pure: it reads no clock and does no IO. The shell feeds it inputs (metric windows, clock
//! ticks, signals, operator commands) with the time they happened, and carries out the effects
//! it returns, **in order**: journal entries come before the actions they describe, and a
//! rollback's `SetShare(0)` comes before its notifications and its incident review.

use crate::cohort::ShareBp;
use crate::cohort::Variant;
use crate::evidence::gate::Scope;
use crate::evidence::sequential::RateDetector;
use crate::evidence::stats::Cusum;
use crate::evidence::{
    BackendHealth, Evidence, MetricWindow, Outcome, Signal, Verdict, combine, judge_all,
};
use crate::plan::Topic;
use crate::plan::{Criterion, Metric, MetricKind, Op, Plan, StopAction, Test};
use crate::time::Millis;
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

    /// True once the rollout has come to rest and nothing more happens without a person:
    /// completed, rolled back, or holding.
    pub fn is_settled(self) -> bool {
        self.is_terminal() || self == Status::Holding
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
    /// Completed with every gate passed (a forced completion is `Degraded`).
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
    /// The sequential detector, for rate and latency triggers ([`RateDetector`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detector: Option<RateDetector>,
    /// The single CUSUM of a state journaled by ramp before the detector bank: kept as read,
    /// shown in health, and replaced by a fresh [`RateDetector`] at the trigger's next
    /// observation (the watch starts over; the budget is the detector's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cusum: Option<Cusum>,
    /// Whether it has fired.
    pub fired: bool,
}

/// How a phase ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseResult {
    /// Its gates passed and the next phase started (or waits for approval).
    Passed,
    /// An operator promoted past unproven gates.
    Forced,
    /// The last phase passed: the rollout completed.
    Completed,
    /// Rolled back during the phase.
    RolledBack,
}

impl PhaseResult {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            PhaseResult::Passed => "passed",
            PhaseResult::Forced => "forced",
            PhaseResult::Completed => "completed",
            PhaseResult::RolledBack => "rolled_back",
        }
    }
}

/// A finished (or abandoned) phase, for reports. Each phase has at most one.
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
    /// How it ended.
    pub result: PhaseResult,
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
    /// The canary share the proxy must route by (decided).
    pub share: ShareBp,
    /// The share the traffic split last reported in effect ([`Input::ShareApplied`]); differs
    /// from `share` while a change is on its way, or when the split failed to apply it.
    #[serde(default)]
    pub applied: Option<ShareBp>,
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
    /// When the gates were last looked at for an early failure ([`Input::Window`]s look at
    /// most once per analysis interval).
    #[serde(default)]
    pub last_early_check: Option<Millis>,
    /// When the current phase was extended, if it was.
    pub extended_at: Option<Millis>,
    /// When the next scheduled status update is due.
    pub next_status_at: Option<Millis>,
    /// When the next summary is due.
    pub next_summary_at: Option<Millis>,
    /// When the rollout ended.
    pub ended_at: Option<Millis>,
    /// Why it ended, stopped or is holding (`None` for a completion).
    pub reason: Option<StopReason>,
    /// True when the rollout completed through a forced promotion.
    #[serde(default)]
    pub forced: bool,
    /// Finished phases, one record each.
    pub history: Vec<PhaseRecord>,
    /// Whether the current phase already has its record in `history` (it passed and the
    /// next one waits for approval).
    #[serde(default)]
    pub phase_recorded: bool,
    /// Digests (SHA-256, first 128 bits, in hex) of the keys of signals counted through
    /// [`Input::SignalOnce`], oldest first, at most [`REMEMBERED_SIGNAL_KEYS`]. Part of the
    /// journaled state, so a sender that re-delivers after a restart is still recognised. A
    /// cryptographic digest, because keys come from outside: a crafted key must not be able to
    /// collide with a future alert's and make it count as a repeat. Holds the keys of alerts
    /// (PCI and security), which count toward triggers; other kinds have their own memory,
    /// [`State::other_signal_keys`], so no flood of keyed feedback can push an alert's key out
    /// and make its re-delivery count twice. (States journaled before the split hold every
    /// kind here.)
    #[serde(default)]
    pub signal_keys: VecDeque<String>,
    /// Digests of the keys of feedback and bug reports, as [`State::signal_keys`], at most
    /// [`REMEMBERED_SIGNAL_KEYS`], oldest forgotten first.
    #[serde(default)]
    pub other_signal_keys: VecDeque<String>,
    /// The backends' health as the shell last reported it ([`Input::Health`]): (stable, canary).
    #[serde(default = "unknown_health")]
    pub backends: (BackendHealth, BackendHealth),
}

fn unknown_health() -> (BackendHealth, BackendHealth) {
    (BackendHealth::Unknown, BackendHealth::Unknown)
}

impl TriggerState {
    /// How close a sequential trigger is to firing, in [0, 1) before it fires (0 for a
    /// counting trigger).
    pub fn progress(&self) -> f64 {
        match (&self.detector, &self.cusum) {
            (Some(d), _) => d.progress(),
            (None, Some(c)) if c.h > 0.0 => c.stat / c.h,
            _ => 0.0,
        }
    }
}

/// Observations a satisfaction trigger's detector is calibrated to: feedback is rare next to
/// requests (beyond it the detector stays calibrated, with boundaries that rise as the count
/// doubles).
pub const FEEDBACK_HORIZON: u64 = 100_000;

/// The sequential detector for a rate or latency trigger: threshold from the trigger, budget
/// `1 - confidence`, calibrated to the plan's trigger horizon (requests) or
/// [`FEEDBACK_HORIZON`] (feedback).
pub fn detector_for(plan: &Plan, t: &Criterion) -> Option<RateDetector> {
    let (stream, p0) = trigger_stream(plan, t)?;
    let horizon = match stream {
        Stream::NegativeFeedback => FEEDBACK_HORIZON,
        _ => plan.analysis.trigger_horizon,
    };
    Some(RateDetector::new(
        p0,
        1.0 - plan.analysis.confidence,
        horizon,
    ))
}

/// A restored state that does not fit its plan (see [`State::check`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the stored state does not fit its plan: {0}")]
pub struct Inconsistent(pub String);

/// How many signal keys a rollout remembers for [`Input::SignalOnce`], per memory (alerts;
/// feedback and bug reports). Alertmanager re-sends every firing alert of a group on each
/// notification; a few thousand distinct alerts per rollout is far beyond what a single
/// rollout sees. When a memory is full its oldest key is forgotten: a re-delivery of that
/// alert, 4,096 distinct alerts later, would count again. (Each key costs 34 bytes of every
/// journaled snapshot.)
pub const REMEMBERED_SIGNAL_KEYS: usize = 4096;

impl State {
    /// A new rollout, not started.
    pub fn new(plan: &Plan) -> Self {
        let thresholds = plan.latency_thresholds_us().len();
        State {
            status: Status::Pending,
            phase: 0,
            share: ShareBp::ZERO,
            applied: None,
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
                    detector: detector_for(plan, t),
                    cusum: None,
                    fired: false,
                })
                .collect(),
            verdicts: Vec::new(),
            last_gate_check: None,
            last_early_check: None,
            extended_at: None,
            next_status_at: None,
            next_summary_at: None,
            ended_at: None,
            reason: None,
            forced: false,
            history: Vec::new(),
            phase_recorded: false,
            signal_keys: VecDeque::new(),
            other_signal_keys: VecDeque::new(),
            backends: unknown_health(),
        }
    }

    /// Checks that a restored state fits its plan: the phase exists, there is one trigger
    /// state per plan trigger (the same triggers, in order) and one latency counter per plan
    /// threshold. A state that loads but does not fit (a plan edited under a journal, a
    /// damaged snapshot) must never reach [`step`], which indexes by these.
    pub fn check(&self, plan: &Plan) -> Result<(), Inconsistent> {
        if self.phase >= plan.phases.len() {
            return Err(Inconsistent(format!(
                "phase index {} but the plan has {} phases",
                self.phase,
                plan.phases.len()
            )));
        }
        if self.triggers.len() != plan.triggers.len() {
            return Err(Inconsistent(format!(
                "{} trigger states but the plan has {} triggers",
                self.triggers.len(),
                plan.triggers.len()
            )));
        }
        for (t, p) in self.triggers.iter().zip(&plan.triggers) {
            if t.trigger != p.text {
                return Err(Inconsistent(format!(
                    "trigger state for {:?} where the plan has {:?}",
                    t.trigger, p.text
                )));
            }
            let sequential = t.detector.is_some() || t.cusum.is_some();
            if sequential != trigger_stream(plan, p).is_some() {
                return Err(Inconsistent(format!(
                    "trigger {:?}: sequential state does not match its kind",
                    p.text
                )));
            }
        }
        let thresholds = plan.latency_thresholds_us().len();
        for (what, v) in [
            ("phase canary", &self.evidence.canary),
            ("phase stable", &self.evidence.stable),
            ("total canary", &self.totals.canary),
            ("total stable", &self.totals.stable),
        ] {
            if v.slow.len() != thresholds {
                return Err(Inconsistent(format!(
                    "{what} evidence has {} latency counters but the plan has {thresholds} thresholds",
                    v.slow.len()
                )));
            }
        }
        Ok(())
    }

    /// How close each plan trigger is to firing, in plan order, from 0 to 1 (1 once fired): a
    /// rate or latency trigger's detector statistic over its boundary, a count trigger's count
    /// over the count that fires it (one PCI alert of `pci_alerts >= 2` is 0.5).
    pub fn trigger_progress(&self, plan: &Plan) -> Vec<f64> {
        plan.triggers
            .iter()
            .zip(&self.triggers)
            .map(|(t, st)| {
                if st.fired {
                    return 1.0;
                }
                let counted = match (t.metric.kind(), &t.test) {
                    (MetricKind::Count, Test::Compare { op, threshold, .. }) => {
                        let k = self.totals.signals.count(t.metric).unwrap_or(0) as f64;
                        let fires_at = match op {
                            Op::Ge | Op::Eq => threshold.ceil(),
                            Op::Gt => threshold.floor() + 1.0,
                            Op::Lt | Op::Le => f64::NAN,
                        };
                        (fires_at >= 1.0).then(|| k / fires_at)
                    }
                    _ => None,
                };
                counted.unwrap_or_else(|| st.progress()).clamp(0.0, 1.0)
            })
            .collect()
    }

    /// The health summary.
    pub fn health(&self) -> Health {
        match self.status {
            Status::RolledBack => Health::Critical,
            Status::Completed if self.forced => Health::Degraded,
            Status::Completed => Health::Healthy,
            _ if self.triggers.iter().any(|t| t.fired) => Health::Critical,
            Status::Holding => Health::Degraded,
            _ if self.verdicts.iter().any(|v| v.outcome == Outcome::Fail) => Health::Degraded,
            _ if self.triggers.iter().any(|t| t.progress() >= 0.5) => Health::Degraded,
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
// A window is the common input and is moved, once, into `step`: boxing it would cost an
// allocation per window to save stack space nobody is short of.
#[allow(clippy::large_enum_variant)]
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
    /// A signal as the shell takes it in: who sent it (the API token's name, and for an
    /// Alertmanager alert its fingerprint) and, if its sender may deliver it again, its key
    /// ([`Input::SignalOnce`]). Both are journaled with it.
    SignalFrom {
        /// Who sent it, in words (`token pagerduty`, `alertmanager via token am`).
        from: String,
        /// Identifies the signal at its source, for a sender that may deliver it again: matched
        /// exactly as sent.
        key: Option<String>,
        /// The key as the journal shows it (the shell masks card numbers in it); `key` if absent.
        shown_key: Option<String>,
        /// The signal.
        signal: Signal,
    },
    /// An operator's command.
    Command(Command),
    /// The shell restarted and restored this state from its journal: the time since the last
    /// input was downtime, which does not count as phase time.
    Restarted,
    /// The traffic split reports this share in effect (after a `SetShare`). Recorded, nothing
    /// else: it is how the core knows what users actually get.
    ShareApplied(ShareBp),
    /// The backends' health changed (stable, canary), as the health checks found it: a backend
    /// that goes down is a critical notice, one that comes back a phase notice.
    Health {
        /// The stable backend.
        stable: BackendHealth,
        /// The canary backend.
        canary: BackendHealth,
    },
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
        /// Who sent it (absent in journals written before senders were recorded).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        /// The key it was delivered under, if its sender may deliver it again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    /// A signal already counted under the same key arrived again and was not counted.
    SignalRepeated {
        /// The key it was delivered under.
        key: String,
        /// Who sent it this time.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
    },
    /// A rollback trigger fired.
    TriggerFired {
        /// The trigger as written.
        trigger: String,
        /// The numbers.
        evidence: TriggerEvidence,
    },
    /// All traffic went back to stable.
    RolledBack {
        /// Why, in one word.
        cause: Cause,
        /// Why, with the evidence.
        reason: StopReason,
        /// The canary share before.
        share_before: ShareBp,
    },
    /// Stopped at the current share, waiting for a person.
    Held {
        /// Why, with the evidence.
        reason: StopReason,
    },
    /// The last phase passed (or was promoted past by force).
    Completed {
        /// True when an operator promoted past unproven gates of the last phase.
        #[serde(default)]
        forced: bool,
        /// Who, for a forced completion.
        #[serde(default)]
        by: Option<String>,
        /// Why, for a forced completion.
        #[serde(default)]
        reason: Option<String>,
    },
    /// The controller restarted from its journal.
    Restarted {
        /// How long it was down (not counted as phase time).
        downtime: Millis,
    },
}

/// The numbers behind a fired trigger.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "test", rename_all = "snake_case")]
pub enum TriggerEvidence {
    /// A rate or latency trigger's sequential test crossed its boundary.
    Sequential {
        /// The rate at and below which the trigger must not fire (H0).
        p0: f64,
        /// The alternative rate whose CUSUM crossed (H1).
        p1: f64,
        /// The boundary crossed (nats).
        boundary: f64,
        /// The statistic when it crossed (nats).
        statistic: f64,
        /// Bad events in the stretch that drove the statistic up.
        events: u64,
        /// Observations in that stretch.
        observations: u64,
        /// Exact (Clopper–Pearson) lower confidence bound on that stretch's rate.
        lower_bound: f64,
        /// The confidence of `lower_bound`.
        confidence: f64,
        /// Bad events and observations of the batch that made it cross, if it came from one.
        window: Option<(u64, u64)>,
        /// How many alternatives the detector watched at once (its bank of CUSUMs); `None`
        /// for the single CUSUM of journals written before the bank.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        alternatives: Option<u32>,
        /// Observations the trigger had watched in all when it fired.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        watched: Option<u64>,
    },
    /// A counting trigger (PCI, security alerts) reached its threshold.
    Count {
        /// Signals counted since the rollout started.
        count: u64,
        /// The trigger's comparison.
        op: Op,
        /// Its threshold.
        threshold: f64,
        /// The signal that made it fire.
        latest: Signal,
    },
    /// The explanation as journal format 1 recorded it.
    Text {
        /// The explanation.
        text: String,
    },
}

/// Why a rollout rolled back or holds, with the evidence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "why", rename_all = "snake_case")]
pub enum StopReason {
    /// A rollback trigger fired.
    Trigger {
        /// The trigger as written.
        trigger: String,
        /// Its numbers.
        evidence: TriggerEvidence,
    },
    /// A success gate failed.
    GateFailed {
        /// The phase.
        phase: String,
        /// The verdicts that failed.
        verdicts: Vec<Verdict>,
    },
    /// Gates stayed inconclusive past the phase's extension.
    NotEnoughEvidence {
        /// The phase.
        phase: String,
        /// Phase time spent.
        elapsed: Millis,
        /// The extension that was used up.
        extension: Millis,
        /// The verdicts still inconclusive.
        verdicts: Vec<Verdict>,
    },
    /// An operator rolled back.
    Operator {
        /// Who.
        by: String,
        /// What they said.
        note: String,
    },
    /// The reason as journal format 1 recorded it.
    Text {
        /// The reason.
        text: String,
    },
}

impl StopReason {
    /// The cause, in one word.
    pub fn cause(&self) -> Cause {
        match self {
            StopReason::Trigger { .. } | StopReason::Text { .. } => Cause::Trigger,
            StopReason::GateFailed { .. } => Cause::GateFailed,
            StopReason::NotEnoughEvidence { .. } => Cause::Deadline,
            StopReason::Operator { .. } => Cause::Operator,
        }
    }
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

/// A notice to send: how urgent, and what it is about (rendered to prose at the edges,
/// [`crate::report::headline`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    /// How urgent.
    pub kind: NotifyKind,
    /// What happened, with its numbers.
    pub about: About,
}

/// What a notice is about.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "about", rename_all = "snake_case")]
pub enum About {
    /// A phase started.
    PhaseStarted {
        /// The phase.
        phase: String,
        /// Its share.
        share: ShareBp,
        /// Its planned duration.
        duration: Millis,
    },
    /// A phase was extended to collect more evidence.
    Extended {
        /// The phase.
        phase: String,
        /// By up to this much.
        by: Millis,
    },
    /// A phase passed and the next waits for approval.
    AwaitingApproval {
        /// The phase that passed.
        passed: String,
        /// The phase waiting.
        next: String,
        /// Its share.
        share: ShareBp,
    },
    /// The rollout completed.
    Completed {
        /// Through a forced promotion.
        forced: bool,
    },
    /// The rollout holds and needs a decision.
    Held {
        /// Why.
        reason: StopReason,
    },
    /// The rollout rolled back.
    RolledBack {
        /// Why.
        reason: StopReason,
        /// The canary share before.
        share_before: ShareBp,
    },
    /// A scheduled status update.
    StatusUpdate(Progress),
    /// A scheduled summary.
    Summary(Progress),
    /// A PCI compliance or security alert arrived (sent the moment it is counted).
    Alert {
        /// The alert.
        signal: Signal,
    },
    /// A backend's health checks found it down.
    BackendDown {
        /// Which.
        variant: Variant,
    },
    /// A backend that was down answers its health checks again.
    BackendRecovered {
        /// Which.
        variant: Variant,
    },
    /// An operator promoted past gates that were not proven.
    ForcedPromotion {
        /// The phase left.
        from: String,
        /// The phase entered (`None`: the rollout completed).
        to: Option<String>,
        /// Who.
        by: String,
        /// Why.
        reason: String,
    },
    /// A report was written (the final report, the incident review).
    Report {
        /// Which.
        report: ReportKind,
    },
}

impl Notice {
    /// What the notice is about, for routing it to the groups that receive it.
    pub fn topic(&self) -> Topic {
        match &self.about {
            About::Held { .. }
            | About::RolledBack { .. }
            | About::AwaitingApproval { .. }
            | About::BackendDown { .. }
            | About::ForcedPromotion { .. } => Topic::Critical,
            About::Alert { .. } => Topic::Security,
            About::PhaseStarted { .. }
            | About::Extended { .. }
            | About::Completed { .. }
            | About::BackendRecovered { .. } => Topic::Phase,
            About::StatusUpdate(_) => Topic::Status,
            About::Summary(_) => Topic::Daily,
            About::Report {
                report: ReportKind::Final,
            } => Topic::Final,
            About::Report {
                report: ReportKind::IncidentReview,
            } => Topic::Incident,
        }
    }
}

/// Where a rollout stands, for scheduled notices.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Its status.
    pub status: Status,
    /// The current phase.
    pub phase: String,
    /// The canary share.
    pub share: ShareBp,
    /// Phase time spent.
    pub elapsed: Millis,
    /// The phase's planned duration.
    pub duration: Millis,
    /// Canary requests in the phase.
    pub canary_requests: u64,
    /// Canary errors in the phase.
    pub canary_errors: u64,
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rejection {
    /// The command.
    pub command: String,
    /// Why not.
    pub reason: RejectReason,
}

/// Why a command was refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "why", rename_all = "snake_case")]
pub enum RejectReason {
    /// The rollout has ended.
    Ended {
        /// How it ended.
        status: Status,
    },
    /// The command does not apply in this status.
    NotWhile {
        /// The command's verb.
        action: String,
        /// The status.
        status: Status,
    },
    /// Resume when not paused.
    NotPaused {
        /// The status.
        status: Status,
    },
    /// Approve when nothing waits.
    NothingAwaitsApproval {
        /// The status.
        status: Status,
    },
    /// An unforced promotion while gates are not proven.
    Unproven {
        /// The verdicts that are not a pass.
        verdicts: Vec<Verdict>,
    },
    /// A forced promotion without a reason.
    ForceNeedsReason,
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
    /// Send a notice.
    Notify(Notice),
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

/// What the shell does with a step whose journal write failed (disk full, I/O error, a store
/// that is down): decided here, so that every shell applies the same rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unrecorded {
    /// Carry the step out anyway and write its entries with the next successful append: the
    /// step lowers the canary's share (a rollback), and a rollback must never wait for a disk.
    CarryOut,
    /// Undo the step, as if its input had not arrived: keep the state from before it. A signal
    /// or command is answered with the error (the sender retries; a keyed signal still counts
    /// once), and an analysis window is fed again with the next one, so no evidence is lost
    /// and nothing is promoted without a durable record.
    Undo,
}

/// The rule for a step (from `before`, with these effects) that could not be journaled.
pub fn when_unrecorded(before: &State, effects: &[Effect]) -> Unrecorded {
    let lowers = effects
        .iter()
        .any(|e| matches!(e, Effect::SetShare { share } if *share < before.share));
    if lowers {
        Unrecorded::CarryOut
    } else {
        Unrecorded::Undo
    }
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

    fn notify(&mut self, mut kind: NotifyKind, about: About) {
        if kind == NotifyKind::Critical && !self.plan.notify.critical_immediately {
            // With immediate critical notices off, an approval still has to be asked for.
            if !matches!(about, About::AwaitingApproval { .. }) {
                return;
            }
            kind = NotifyKind::Status;
        }
        self.fx.push(Effect::Notify(Notice { kind, about }));
    }

    fn reject(&mut self, cmd: &Command, reason: RejectReason) {
        self.fx.push(Effect::Rejected(Rejection {
            command: cmd.name().to_string(),
            reason,
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
        if let Input::ShareApplied(share) = input {
            self.s.applied = Some(share);
            return;
        }
        if let Input::Health { stable, canary } = input {
            self.advance(now);
            self.health_changed(stable, canary);
            return;
        }
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
                let (now, interval) = (self.s.now, self.plan.analysis.interval);
                self.s.evidence.add_window_at(&w, now, interval);
                self.s.totals.add_window_at(&w, now, interval);
                self.check_rate_triggers(&w);
                if self.s.status.is_terminal() {
                    return;
                }
                self.early_gate_check(false);
                self.after_time_passed();
            }
            Input::Tick => self.after_time_passed(),
            Input::Signal(sig) => self.signal(sig, None, None),
            Input::SignalOnce { key, signal } => self.signal_once(key, None, signal, None),
            Input::SignalFrom {
                from,
                key: Some(key),
                shown_key,
                signal,
            } => self.signal_once(key, shown_key, signal, Some(from)),
            Input::SignalFrom {
                from,
                key: None,
                signal,
                ..
            } => self.signal(signal, Some(from), None),
            Input::Command(cmd) => self.command(cmd),
            Input::Restarted | Input::ShareApplied(_) | Input::Health { .. } => {
                unreachable!("handled above")
            }
        }
    }

    /// A backend going down needs a person (critical); coming back is worth a line.
    fn health_changed(&mut self, stable: BackendHealth, canary: BackendHealth) {
        let before = self.s.backends;
        self.s.backends = (stable, canary);
        if self.s.status == Status::Pending || self.s.status.is_terminal() {
            return;
        }
        for (variant, was, now) in [
            (Variant::Stable, before.0, stable),
            (Variant::Canary, before.1, canary),
        ] {
            if now == BackendHealth::Down && was != BackendHealth::Down {
                self.notify(NotifyKind::Critical, About::BackendDown { variant });
            } else if was == BackendHealth::Down
                && matches!(now, BackendHealth::Operational | BackendHealth::Degraded)
            {
                self.notify(NotifyKind::Status, About::BackendRecovered { variant });
            }
        }
    }

    /// A report to write, and the notice that tells its readers it is there.
    fn report(&mut self, report: ReportKind) {
        self.fx.push(Effect::Report { report });
        self.fx.push(Effect::Notify(Notice {
            kind: NotifyKind::Summary,
            about: About::Report { report },
        }));
    }

    fn start(&mut self) {
        if self.s.status != Status::Pending {
            return;
        }
        let now = self.s.now;
        self.s.started_at = Some(now);
        self.s.next_status_at = self.plan.notify.status_every.map(|e| now + e);
        self.s.next_summary_at = self.plan.notify.summary_every.map(|e| now + e);
        self.s.totals.clustering.start(now);
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
        self.s.evidence.clustering.start(self.s.now);
        self.s.verdicts.clear();
        self.s.last_early_check = None;
        self.s.last_gate_check = None;
        self.s.extended_at = None;
        self.s.reason = None;
        self.s.phase_recorded = false;
        self.journal(EventKind::PhaseStarted { share: phase.share });
        self.fx.push(Effect::SetShare { share: phase.share });
        let about = About::PhaseStarted {
            phase: phase.name.clone(),
            share: phase.share,
            duration: phase.duration,
        };
        self.notify(NotifyKind::Status, about);
    }

    /// Closes the current phase's record in the history; a phase gets one record, however it
    /// goes on (a phase that passed and then waits for approval keeps its `passed` record
    /// even if the rollout is rolled back before the next phase starts).
    fn record_phase(&mut self, result: PhaseResult) {
        if self.s.phase_recorded {
            return;
        }
        self.s.phase_recorded = true;
        let phase = &self.plan.phases[self.s.phase];
        let ev = &self.s.evidence;
        self.s.history.push(PhaseRecord {
            name: phase.name.clone(),
            share: phase.share,
            started_at: self.s.phase_started_at,
            ended_at: self.s.now,
            result,
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
            let about = About::StatusUpdate(self.progress());
            self.notify(NotifyKind::Status, about);
        }
        if let (Some(due), Some(every)) = (self.s.next_summary_at, self.plan.notify.summary_every)
            && now >= due
        {
            let mut next = due;
            while next <= now {
                next += every;
            }
            self.s.next_summary_at = Some(next);
            let about = About::Summary(self.progress());
            self.notify(NotifyKind::Summary, about);
        }
    }

    /// Where the rollout stands: phase, share, elapsed, canary numbers.
    fn progress(&self) -> Progress {
        let phase = &self.plan.phases[self.s.phase];
        let c = &self.s.evidence.canary;
        Progress {
            status: self.s.status,
            phase: phase.name.clone(),
            share: self.s.share,
            elapsed: self.s.phase_elapsed,
            duration: phase.duration,
            canary_requests: c.requests,
            canary_errors: c.errors,
        }
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
        let verdicts = gate_verdicts(self.plan, self.s);
        let outcome = gate_outcome(self.plan, self.s.phase, &verdicts);
        self.s.verdicts = verdicts.clone();
        self.s.last_gate_check = Some(self.s.now);
        let deadline_passed = self.s.phase_elapsed >= phase.duration + phase.max_extension;
        // The verdicts a stop is blamed on: only those that counted.
        let with = |o: Outcome| -> Vec<Verdict> {
            verdicts
                .iter()
                .filter(|v| v.outcome == o && counts(self.plan, self.s.phase, v))
                .cloned()
                .collect()
        };
        match outcome {
            Outcome::Pass => {
                self.journal(EventKind::GateChecked { outcome, verdicts });
                self.phase_passed(false, None, None);
            }
            Outcome::Fail => {
                let reason = StopReason::GateFailed {
                    phase: phase.name.clone(),
                    verdicts: with(Outcome::Fail),
                };
                self.journal(EventKind::GateChecked { outcome, verdicts });
                match phase.on_failure {
                    StopAction::Rollback => self.rollback(reason),
                    StopAction::Hold => self.hold(reason),
                }
            }
            Outcome::Inconclusive if deadline_passed => {
                let reason = StopReason::NotEnoughEvidence {
                    phase: phase.name.clone(),
                    elapsed: self.s.phase_elapsed,
                    extension: phase.max_extension,
                    verdicts: with(Outcome::Inconclusive),
                };
                self.journal(EventKind::GateChecked { outcome, verdicts });
                match phase.on_inconclusive {
                    StopAction::Rollback => self.rollback(reason),
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
                    let about = About::Extended {
                        phase: phase.name.clone(),
                        by: phase.max_extension,
                    };
                    self.notify(NotifyKind::Status, about);
                }
            }
        }
    }

    /// Gates passed (or were forced): complete, wait for approval, or promote.
    fn phase_passed(&mut self, forced: bool, by: Option<String>, reason: Option<String>) {
        let k = self.s.phase;
        let from = self.plan.phases[k].name.clone();
        if k + 1 == self.plan.phases.len() {
            self.record_phase(if forced {
                PhaseResult::Forced
            } else {
                PhaseResult::Completed
            });
            self.s.status = Status::Completed;
            self.s.forced = forced;
            self.s.ended_at = Some(self.s.now);
            let (by, reason) = if forced { (by, reason) } else { (None, None) };
            if forced {
                let about = About::ForcedPromotion {
                    from: from.clone(),
                    to: None,
                    by: by.clone().unwrap_or_default(),
                    reason: reason.clone().unwrap_or_default(),
                };
                self.notify(NotifyKind::Critical, about);
            }
            self.journal(EventKind::Completed { forced, by, reason });
            self.notify(NotifyKind::Status, About::Completed { forced });
            if self.plan.notify.final_report {
                self.report(ReportKind::Final);
            }
            return;
        }
        let next = &self.plan.phases[k + 1];
        if next.approval && !forced && by.is_none() {
            self.record_phase(PhaseResult::Passed);
            self.s.status = Status::AwaitingApproval;
            self.journal(EventKind::AwaitingApproval {
                next: next.name.clone(),
            });
            let about = About::AwaitingApproval {
                passed: from,
                next: next.name.clone(),
                share: next.share,
            };
            self.notify(NotifyKind::Critical, about);
            return;
        }
        self.record_phase(if forced {
            PhaseResult::Forced
        } else {
            PhaseResult::Passed
        });
        if forced {
            let about = About::ForcedPromotion {
                from: from.clone(),
                to: Some(next.name.clone()),
                by: by.clone().unwrap_or_default(),
                reason: reason.clone().unwrap_or_default(),
            };
            self.notify(NotifyKind::Critical, about);
        }
        self.journal(EventKind::Promoted {
            from,
            to: next.name.clone(),
            forced,
            by,
            reason,
        });
        self.enter_phase(k + 1);
    }

    fn hold(&mut self, reason: StopReason) {
        self.s.status = Status::Holding;
        self.s.reason = Some(reason.clone());
        self.journal(EventKind::Held {
            reason: reason.clone(),
        });
        self.notify(NotifyKind::Critical, About::Held { reason });
    }

    /// Rollback wins: share to 0 first, then notify, then the incident review.
    fn rollback(&mut self, reason: StopReason) {
        if self.s.status.is_terminal() {
            return;
        }
        let share_before = self.s.share;
        if self.s.status != Status::Pending {
            self.record_phase(PhaseResult::RolledBack);
        }
        self.s.status = Status::RolledBack;
        self.s.share = ShareBp::ZERO;
        self.s.ended_at = Some(self.s.now);
        self.s.reason = Some(reason.clone());
        self.s.resume_to = None;
        self.journal(EventKind::RolledBack {
            cause: reason.cause(),
            reason: reason.clone(),
            share_before,
        });
        self.fx.push(Effect::SetShare {
            share: ShareBp::ZERO,
        });
        self.notify(
            NotifyKind::Critical,
            About::RolledBack {
                reason,
                share_before,
            },
        );
        self.report(ReportKind::IncidentReview);
        if self.plan.notify.final_report {
            self.report(ReportKind::Final);
        }
    }

    fn check_rate_triggers(&mut self, w: &MetricWindow) {
        for i in 0..self.plan.triggers.len() {
            let t = &self.plan.triggers[i];
            let Some((stream, _)) = trigger_stream(self.plan, t) else {
                continue;
            };
            let c = &w.canary;
            // A window can hold a class count of a request whose `requests` count fell into
            // the previous window (see the proxy's recorder): events never exceed trials.
            let (x, n) = match stream {
                Stream::Errors => c.error_counts(),
                Stream::NonSuccess => (c.non_successes(), c.judged().1),
                Stream::RateLimited => (c.rate_limited, c.requests),
                Stream::AuthFailures => (c.auth_failures, c.requests),
                Stream::Slow(idx) => (c.slow.get(idx).copied().unwrap_or(0), c.requests),
                Stream::NegativeFeedback => continue,
            };
            let x = x.min(n);
            self.feed_trigger(i, x, n, Some((x, n)));
            if self.s.status.is_terminal() {
                return;
            }
        }
    }

    /// Feeds `x` events in `n` observations to trigger `i`; fires it when its detector alarms.
    fn feed_trigger(&mut self, i: usize, x: u64, n: u64, batch: Option<(u64, u64)>) {
        if n == 0 {
            return;
        }
        let plan = self.plan;
        let state = &mut self.s.triggers[i];
        if state.fired {
            return;
        }
        if state.detector.is_none() {
            // A state from before the detector bank: its CUSUM gives way to a detector.
            state.detector = detector_for(plan, &plan.triggers[i]);
            state.cusum = None;
        }
        let Some(detector) = state.detector.as_mut() else {
            return;
        };
        if !detector.observe(x, n) {
            return;
        }
        state.fired = true;
        let Some(alarm) = detector.alarm().cloned() else {
            return;
        };
        let evidence = TriggerEvidence::Sequential {
            p0: detector.p0,
            p1: alarm.p1,
            boundary: alarm.boundary,
            statistic: alarm.statistic,
            events: alarm.events,
            observations: alarm.stretch,
            lower_bound: alarm.rate_lower,
            confidence: alarm.confidence,
            window: batch,
            alternatives: Some(detector.members.len() as u32),
            watched: Some(alarm.observations),
        };
        self.fire(plan.triggers[i].text.clone(), evidence);
    }

    fn fire(&mut self, trigger: String, evidence: TriggerEvidence) {
        self.journal(EventKind::TriggerFired {
            trigger: trigger.clone(),
            evidence: evidence.clone(),
        });
        self.rollback(StopReason::Trigger { trigger, evidence });
    }

    fn signal_once(
        &mut self,
        key: String,
        shown_key: Option<String>,
        sig: Signal,
        from: Option<String>,
    ) {
        let digest = Sha256::digest(key.as_bytes());
        let key = shown_key.unwrap_or(key);
        let hash: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        // Either memory may hold it (states journaled before the split kept every kind in
        // the alerts' one).
        if self.s.signal_keys.contains(&hash) || self.s.other_signal_keys.contains(&hash) {
            self.journal(EventKind::SignalRepeated { key, from });
            return;
        }
        let memory = match sig {
            Signal::PciAlert { .. } | Signal::SecurityAlert { .. } => &mut self.s.signal_keys,
            Signal::BugReport { .. } | Signal::Feedback { .. } => &mut self.s.other_signal_keys,
        };
        if memory.len() >= REMEMBERED_SIGNAL_KEYS {
            memory.pop_front();
        }
        memory.push_back(hash);
        self.signal(sig, from, Some(key));
    }

    fn signal(&mut self, sig: Signal, from: Option<String>, key: Option<String>) {
        // Always journaled: nothing accepted is lost. Counted only while the rollout runs: a
        // signal before the start or after the end is about no canary of this rollout.
        self.journal(EventKind::SignalReceived {
            signal: sig.clone(),
            from,
            key,
        });
        if self.s.status.is_terminal() || self.s.status == Status::Pending {
            return;
        }
        self.s.evidence.signals.add(&sig);
        self.s.totals.signals.add(&sig);
        // Every alert goes to the groups that receive `security` at once; PCI alerts and high
        // or critical security alerts are critical (they page), a low or medium finding is not.
        let urgency = match &sig {
            Signal::PciAlert { .. } => Some(NotifyKind::Critical),
            Signal::SecurityAlert { severity, .. } if *severity >= crate::plan::Severity::High => {
                Some(NotifyKind::Critical)
            }
            Signal::SecurityAlert { .. } => Some(NotifyKind::Status),
            _ => None,
        };
        if let Some(kind) = urgency {
            let about = About::Alert {
                signal: sig.clone(),
            };
            self.notify(kind, about);
        }
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
                        let evidence = TriggerEvidence::Count {
                            count: k,
                            op: *op,
                            threshold: *threshold,
                            latest: sig.clone(),
                        };
                        self.fire(t.text.clone(), evidence);
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
        if !self.s.status.is_terminal() {
            self.early_gate_check(true);
        }
        if !self.s.status.is_terminal() {
            self.after_time_passed();
        }
    }

    /// Before the phase's duration is up, a gate that is already proven violated acts at once
    /// (its `on_failure`) instead of waiting for the phase to end: a signal is judged the moment
    /// it arrives (`now`), rates at most once per analysis interval. Only failures act early;
    /// a pass still waits for the phase's duration. Every bound is always-valid, so looking
    /// early costs no confidence.
    fn early_gate_check(&mut self, now: bool) {
        if self.s.status != Status::Running {
            return;
        }
        let phase = self.plan.phases[self.s.phase].clone();
        if self.s.phase_elapsed >= phase.duration {
            return; // check_phase_end judges from here on
        }
        if !now
            && let Some(last) = self.s.last_early_check
            && self.s.now < last + self.plan.analysis.interval
        {
            return;
        }
        self.s.last_early_check = Some(self.s.now);
        let verdicts = gate_verdicts(self.plan, self.s);
        if combine(&verdicts) != Outcome::Fail {
            return;
        }
        self.s.verdicts = verdicts.clone();
        self.s.last_gate_check = Some(self.s.now);
        let failed: Vec<Verdict> = verdicts
            .iter()
            .filter(|v| v.outcome == Outcome::Fail)
            .cloned()
            .collect();
        self.journal(EventKind::GateChecked {
            outcome: Outcome::Fail,
            verdicts,
        });
        let reason = StopReason::GateFailed {
            phase: phase.name.clone(),
            verdicts: failed,
        };
        match phase.on_failure {
            StopAction::Rollback => self.rollback(reason),
            StopAction::Hold => self.hold(reason),
        }
    }

    fn command(&mut self, cmd: Command) {
        let status = self.s.status;
        if status.is_terminal() {
            return self.reject(&cmd, RejectReason::Ended { status });
        }
        let not_while = |action: &str| RejectReason::NotWhile {
            action: action.to_string(),
            status,
        };
        match &cmd {
            Command::Pause { by, reason } => {
                if !matches!(
                    status,
                    Status::Running | Status::AwaitingApproval | Status::Holding
                ) {
                    return self.reject(&cmd, not_while("pause"));
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
                    return self.reject(&cmd, RejectReason::NotPaused { status });
                }
                self.s.status = self.s.resume_to.take().unwrap_or(Status::Running);
                self.journal(EventKind::Resumed { by: by.clone() });
                self.after_time_passed();
            }
            Command::Approve { by } => {
                if status != Status::AwaitingApproval {
                    return self.reject(&cmd, RejectReason::NothingAwaitsApproval { status });
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
                    _ => return self.reject(&cmd, not_while("promote")),
                }
                let verdicts = gate_verdicts(self.plan, self.s);
                let outcome = gate_outcome(self.plan, self.s.phase, &verdicts);
                if outcome == Outcome::Pass {
                    self.s.verdicts = verdicts.clone();
                    self.s.last_gate_check = Some(self.s.now);
                    self.journal(EventKind::GateChecked { outcome, verdicts });
                    self.phase_passed(false, Some(by.clone()), None);
                    return;
                }
                if !force {
                    let unproven = verdicts
                        .into_iter()
                        .filter(|v| v.outcome != Outcome::Pass)
                        .collect();
                    return self.reject(&cmd, RejectReason::Unproven { verdicts: unproven });
                }
                if reason.trim().is_empty() {
                    return self.reject(&cmd, RejectReason::ForceNeedsReason);
                }
                self.s.verdicts = verdicts.clone();
                self.s.last_gate_check = Some(self.s.now);
                self.journal(EventKind::GateChecked { outcome, verdicts });
                self.phase_passed(true, Some(by.clone()), Some(reason.clone()));
            }
            Command::Rollback { by, reason } => {
                self.rollback(StopReason::Operator {
                    by: by.clone(),
                    note: reason.trim().to_string(),
                });
            }
        }
    }
}

/// Judges the current phase's gates now, without changing anything (for status displays).
pub fn current_verdicts(plan: &Plan, state: &State) -> Vec<Verdict> {
    if state.status == Status::Pending || state.phase >= plan.phases.len() {
        return Vec::new();
    }
    gate_verdicts(plan, state)
}

/// The verdicts a phase's gate is decided on: the phase's criteria on the phase's evidence,
/// then the rollout's criteria (`[rollout] success`) on the whole rollout's.
pub fn gate_verdicts(plan: &Plan, state: &State) -> Vec<Verdict> {
    let phase = &plan.phases[state.phase];
    let mut verdicts = judge_all(plan, &phase.criteria, &state.evidence);
    verdicts.extend(
        judge_all(plan, &plan.rollout_criteria, &state.totals)
            .into_iter()
            .map(|mut v| {
                v.scope = Scope::Rollout;
                v
            }),
    );
    verdicts
}

/// The gate's outcome from [`gate_verdicts`]: any failure fails it; the rollout's criteria are
/// required to pass only at the last phase (before it, an unproven rollout criterion does not
/// hold a phase up: the rest of the rollout still adds evidence).
pub fn gate_outcome(plan: &Plan, phase: usize, verdicts: &[Verdict]) -> Outcome {
    let counted: Vec<Verdict> = verdicts
        .iter()
        .filter(|v| counts(plan, phase, v))
        .cloned()
        .collect();
    combine(&counted)
}

/// Whether a verdict counts toward phase `phase`'s outcome: every phase criterion; a rollout
/// criterion when it fails, or at the last phase (before that, its pass or inconclusive
/// decides nothing yet).
pub fn counts(plan: &Plan, phase: usize, v: &Verdict) -> bool {
    phase + 1 >= plan.phases.len() || v.scope == Scope::Phase || v.outcome == Outcome::Fail
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
