//! Version 1 of the wire format: what `/v1` serves and accepts, and what the journal stores.
//!
//! Every type here serializes to the JSON the API has always served; fields added later are
//! optional, so journal rows written by earlier versions (journal format 1) parse as they are.

use ramp_core::evidence as ev;
use ramp_core::report;
use ramp_core::rollout as ro;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

// ---- enumerations -----------------------------------------------------------------------

/// Where a rollout is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Created, not started.
    Pending,
    /// In a phase, collecting evidence.
    Running,
    /// A phase passed; the next waits for a person's approval.
    AwaitingApproval,
    /// Stopped at the current share, waiting for a person.
    Holding,
    /// Paused by an operator.
    Paused,
    /// All traffic back on stable.
    RolledBack,
    /// The last phase passed.
    Completed,
    /// The server knows the rollout but cannot run it (its journal could not be read or does
    /// not fit its plan).
    Unavailable,
}

impl Status {
    /// The name the API uses.
    pub fn name(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::AwaitingApproval => "awaiting_approval",
            Status::Holding => "holding",
            Status::Paused => "paused",
            Status::RolledBack => "rolled_back",
            Status::Completed => "completed",
            Status::Unavailable => "unavailable",
        }
    }
}

impl From<ro::Status> for Status {
    fn from(s: ro::Status) -> Self {
        match s {
            ro::Status::Pending => Status::Pending,
            ro::Status::Running => Status::Running,
            ro::Status::AwaitingApproval => Status::AwaitingApproval,
            ro::Status::Holding => Status::Holding,
            ro::Status::Paused => Status::Paused,
            ro::Status::RolledBack => Status::RolledBack,
            ro::Status::Completed => Status::Completed,
        }
    }
}

/// The health summary (the seed's "Health Status").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Completed with every gate passed.
    Healthy,
    /// In progress, nothing wrong so far.
    Monitoring,
    /// Needs attention: a failed or stuck gate, a trigger close to firing, a forced completion.
    Degraded,
    /// A trigger fired or the rollout was rolled back.
    Critical,
}

impl From<ro::Health> for Health {
    fn from(h: ro::Health) -> Self {
        match h {
            ro::Health::Healthy => Health::Healthy,
            ro::Health::Monitoring => Health::Monitoring,
            ro::Health::Degraded => Health::Degraded,
            ro::Health::Critical => Health::Critical,
        }
    }
}

/// A verdict; only `pass` promotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The evidence proves the criterion.
    Pass,
    /// The evidence proves the criterion violated.
    Fail,
    /// Not enough evidence either way.
    Inconclusive,
}

impl Outcome {
    /// Upper-case label for timelines.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::Inconclusive => "INCONCLUSIVE",
        }
    }
}

impl From<ev::Outcome> for Outcome {
    fn from(o: ev::Outcome) -> Self {
        match o {
            ev::Outcome::Pass => Outcome::Pass,
            ev::Outcome::Fail => Outcome::Fail,
            ev::Outcome::Inconclusive => Outcome::Inconclusive,
        }
    }
}

/// Which side a confidence bound is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BoundSide {
    /// The value is at most the bound.
    Upper,
    /// The value is at least the bound.
    Lower,
}

impl From<ev::BoundSide> for BoundSide {
    fn from(b: ev::BoundSide) -> Self {
        match b {
            ev::BoundSide::Upper => BoundSide::Upper,
            ev::BoundSide::Lower => BoundSide::Lower,
        }
    }
}

/// An upstream's health-check result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackendHealth {
    /// Answered 2xx/3xx within 1 s.
    Operational,
    /// Answered with another status, or slower than 1 s.
    Degraded,
    /// Did not answer.
    Down,
    /// Not probed (yet), or no health path configured.
    Unknown,
}

impl From<ev::BackendHealth> for BackendHealth {
    fn from(h: ev::BackendHealth) -> Self {
        match h {
            ev::BackendHealth::Operational => BackendHealth::Operational,
            ev::BackendHealth::Degraded => BackendHealth::Degraded,
            ev::BackendHealth::Down => BackendHealth::Down,
            ev::BackendHealth::Unknown => BackendHealth::Unknown,
        }
    }
}

/// A security alert's severity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// Critical.
    Critical,
}

impl From<ramp_core::plan::Severity> for Severity {
    fn from(s: ramp_core::plan::Severity) -> Self {
        use ramp_core::plan::Severity as S;
        match s {
            S::Low => Severity::Low,
            S::Medium => Severity::Medium,
            S::High => Severity::High,
            S::Critical => Severity::Critical,
        }
    }
}

impl From<Severity> for ramp_core::plan::Severity {
    fn from(s: Severity) -> Self {
        use ramp_core::plan::Severity as S;
        match s {
            Severity::Low => S::Low,
            Severity::Medium => S::Medium,
            Severity::High => S::High,
            Severity::Critical => S::Critical,
        }
    }
}

/// A comparison, as written in plans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum Op {
    /// `<`
    #[serde(rename = "<")]
    Lt,
    /// `<=`
    #[serde(rename = "<=")]
    Le,
    /// `>`
    #[serde(rename = ">")]
    Gt,
    /// `>=`
    #[serde(rename = ">=")]
    Ge,
    /// `==`
    #[serde(rename = "==")]
    Eq,
}

impl From<ramp_core::plan::Op> for Op {
    fn from(o: ramp_core::plan::Op) -> Self {
        use ramp_core::plan::Op as O;
        match o {
            O::Lt => Op::Lt,
            O::Le => Op::Le,
            O::Gt => Op::Gt,
            O::Ge => Op::Ge,
            O::Eq => Op::Eq,
        }
    }
}

/// Why a rollback happened, in one word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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

impl From<ro::Cause> for Cause {
    fn from(c: ro::Cause) -> Self {
        match c {
            ro::Cause::Trigger => Cause::Trigger,
            ro::Cause::GateFailed => Cause::GateFailed,
            ro::Cause::Deadline => Cause::Deadline,
            ro::Cause::Operator => Cause::Operator,
        }
    }
}

/// How urgent a notice is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotifyKind {
    /// A status update or a phase change.
    Status,
    /// A periodic summary.
    Summary,
    /// Needs attention now.
    Critical,
}

impl From<ro::NotifyKind> for NotifyKind {
    fn from(k: ro::NotifyKind) -> Self {
        match k {
            ro::NotifyKind::Status => NotifyKind::Status,
            ro::NotifyKind::Summary => NotifyKind::Summary,
            ro::NotifyKind::Critical => NotifyKind::Critical,
        }
    }
}

/// A report document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReportKind {
    /// After a rollback: what happened, with the numbers.
    IncidentReview,
    /// After the rollout ended: measured vs target.
    Final,
}

impl From<ro::ReportKind> for ReportKind {
    fn from(k: ro::ReportKind) -> Self {
        match k {
            ro::ReportKind::IncidentReview => ReportKind::IncidentReview,
            ro::ReportKind::Final => ReportKind::Final,
        }
    }
}

// ---- status -----------------------------------------------------------------------------

/// A rollout's deployment status (the seed's "Deployment Status"): start time, current phase,
/// traffic share, health, per-variant metrics and each gate's verdict with its numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RolloutStatus {
    /// The rollout's name (the plan's `name`).
    pub name: String,
    /// When it started (controller time, ms since the Unix epoch), if it has.
    pub started_at: Option<u64>,
    /// Where the rollout's proxy listens.
    pub listen: String,
    /// Whether the proxy's listener speaks TLS (`https://`).
    #[serde(default)]
    pub tls: bool,
    /// Controller time now (ms since the Unix epoch).
    pub now: u64,
    /// Controller time when this server started serving the rollout.
    pub origin: u64,
    /// Where the rollout is.
    pub status: Status,
    /// Health summary.
    pub health: Health,
    /// Current phase index (from 0).
    pub phase: u64,
    /// Current phase name.
    pub phase_name: String,
    /// Canary share the controller decided, in basis points (0 to 10000).
    #[schema(maximum = 10000)]
    pub share: u16,
    /// Canary share the traffic split reports as applied, in basis points; differs from
    /// `share` only while a change is on its way (or failed to apply).
    #[serde(default)]
    #[schema(maximum = 10000)]
    pub applied_share: Option<u16>,
    /// Time spent in the current phase (ms).
    pub phase_elapsed: u64,
    /// The phase's planned duration (ms).
    pub phase_duration: u64,
    /// Whether the phase was extended to collect more evidence.
    pub extended: bool,
    /// Canary numbers in the current phase.
    pub canary: VariantView,
    /// Stable numbers in the current phase.
    pub stable: VariantView,
    /// The current phase's gates, judged now.
    pub verdicts: Vec<Verdict>,
    /// Why it ended or holds, in words.
    pub reason: Option<String>,
    /// Why it ended or holds, with the evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<StopReason>,
    /// True once the rollout has settled: completed, rolled back or holding.
    pub ended: bool,
    /// When it completed or rolled back (controller time, ms since the Unix epoch).
    #[serde(default)]
    pub ended_at: Option<u64>,
    /// True when the rollout was retired (`DELETE`): its proxy and controller are stopped and
    /// its journal stays readable.
    #[serde(default)]
    pub retired: bool,
    /// Set while this rollout's latest journal write failed (a full or frozen disk): why.
    /// Signals and commands are refused meanwhile; a rollback still happens at once.
    #[serde(default)]
    pub journal_error: Option<String>,
    /// Its notification channels (besides the live log) and how each is doing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<ChannelView>,
}

/// One variant's numbers in the current phase.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VariantView {
    /// Requests per second (real time), averaged over about the last second.
    pub rps: f64,
    /// Requests in the current phase.
    pub requests: u64,
    /// Error rate (fraction).
    pub error_rate: f64,
    /// Success rate (fraction).
    pub success_rate: f64,
    /// Share of requests answered 429 (fraction).
    pub rate_limit_rate: f64,
    /// Share of requests answered 401/403 (fraction).
    pub auth_failure_rate: f64,
    /// p95 latency in ms (display estimate).
    pub p95_ms: Option<f64>,
    /// Distinct users (estimate).
    pub active_users: u64,
    /// Backend health-check result.
    pub health: Option<BackendHealth>,
}

impl VariantView {
    /// The numbers of some requests, with a request rate and the backend's health.
    pub fn of(s: &ev::VariantStats, rps: f64, health: Option<ev::BackendHealth>) -> Self {
        VariantView {
            rps,
            requests: s.requests,
            error_rate: s.error_rate(),
            success_rate: s.success_rate(),
            rate_limit_rate: s.rate_limit_rate(),
            auth_failure_rate: s.auth_failure_rate(),
            p95_ms: s.quantile_ms(0.95),
            active_users: s.users.estimate(),
            health: health.map(Into::into),
        }
    }
}

// ---- verdicts -----------------------------------------------------------------------------

/// A criterion's verdict with its numbers and its explanation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Verdict {
    /// The criterion as written in the plan.
    pub criterion: String,
    /// The verdict.
    pub outcome: Outcome,
    /// Point estimate in the metric's unit (fraction, ms, count); for latency criteria the
    /// share of requests slower than the threshold; for `not worse than stable` the difference.
    pub observed: Option<f64>,
    /// The confidence bound that decided (or would decide).
    pub bound: Option<f64>,
    /// Which side the bound is on.
    pub bound_side: Option<BoundSide>,
    /// Events counted.
    pub events: u64,
    /// Sample size.
    pub n: u64,
    /// The threshold compared with.
    pub threshold: f64,
    /// For inconclusive verdicts: samples still needed at the current rate.
    pub needed: Option<u64>,
    /// One line with the numbers.
    pub explanation: String,
    /// The confidence of the bounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    /// What was measured, with the numbers only this kind of verdict has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<VerdictDetail>,
    /// `rollout` for a criterion judged on the whole rollout's evidence (`[rollout] success`);
    /// absent for a phase's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Present when the canary's failures clustered in time and the bounds were widened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clustered: Option<Clustered>,
}

/// The clustering correction applied to a rate verdict.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Clustered {
    /// The spread of the total over the binomial one: counts were divided by it.
    pub phi: f64,
    /// Analysis intervals per block at the time scale that showed it.
    pub windows: u32,
    /// The over-dispersion test's p-value.
    pub p_value: f64,
}

impl From<&ev::Verdict> for Verdict {
    fn from(v: &ev::Verdict) -> Self {
        Verdict {
            criterion: v.criterion.clone(),
            outcome: v.outcome.into(),
            observed: v.observed,
            bound: v.bound,
            bound_side: v.bound_side.map(Into::into),
            events: v.events,
            n: v.n,
            threshold: v.threshold,
            needed: v.needed,
            explanation: report::explain(v),
            confidence: Some(v.confidence),
            detail: VerdictDetail::of(&v.detail),
            scope: (!v.scope.is_phase()).then(|| "rollout".to_string()),
            clustered: v.clustered.map(|c| Clustered {
                phi: c.phi,
                windows: c.windows,
                p_value: c.p_value,
            }),
        }
    }
}

/// What a verdict measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum VerdictDetail {
    /// A rate: `events` of `n` (requests, or feedback) against `threshold`.
    Rate {
        /// `requests` or `feedback`.
        unit: String,
    },
    /// A latency quantile judged as the share of requests slower than a threshold.
    Latency {
        /// The quantile in per mille (950 = p95).
        quantile: u16,
        /// The threshold (ms).
        threshold_ms: f64,
        /// The quantile's display estimate (ms).
        estimate_ms: Option<f64>,
    },
    /// An exact count of signals in the phase.
    Count {
        /// The comparison.
        op: Op,
    },
    /// Distinct users who reached the canary.
    Users {
        /// The comparison.
        op: Op,
    },
    /// A rate compared with stable's over the same windows.
    VsStable {
        /// The bad-event stream compared.
        what: String,
        /// Canary bad events.
        canary_events: u64,
        /// Canary requests.
        canary_n: u64,
        /// Stable bad events.
        stable_events: u64,
        /// Stable requests.
        stable_n: u64,
        /// Upper bound of the difference (canary minus stable).
        upper: f64,
    },
    /// A latency quantile compared with stable's.
    LatencyVsStable {
        /// The quantile in per mille.
        quantile: u16,
        /// Canary's display estimate (ms).
        canary_ms: Option<f64>,
        /// Stable's display estimate (ms).
        stable_ms: Option<f64>,
        /// Stable requests.
        stable_n: u64,
        /// The bound on stable's quantile used (ms).
        stable_bound_ms: f64,
        /// The canary latency allowed at that bound (ms).
        limit_ms: f64,
        /// Allowed relative excess.
        relative: f64,
        /// Allowed absolute excess (ms).
        absolute_ms: f64,
        /// `no_data`, `no_stable_bound`, `slower` or `compared`.
        case: String,
    },
}

impl VerdictDetail {
    fn of(d: &ev::gate::Detail) -> Option<Self> {
        use ev::gate::{Detail as D, LatencyCase};
        Some(match d {
            D::Rate { unit } => VerdictDetail::Rate {
                unit: unit.noun().to_string(),
            },
            D::Latency {
                quantile,
                threshold_ms,
                estimate_ms,
            } => VerdictDetail::Latency {
                quantile: *quantile,
                threshold_ms: *threshold_ms,
                estimate_ms: *estimate_ms,
            },
            D::Count { op } => VerdictDetail::Count { op: (*op).into() },
            D::Users { op } => VerdictDetail::Users { op: (*op).into() },
            D::VsStable {
                what,
                canary_events,
                canary_n,
                stable_events,
                stable_n,
                upper,
            } => VerdictDetail::VsStable {
                what: what.clone(),
                canary_events: *canary_events,
                canary_n: *canary_n,
                stable_events: *stable_events,
                stable_n: *stable_n,
                upper: *upper,
            },
            D::LatencyVsStable {
                quantile,
                canary_ms,
                stable_ms,
                stable_n,
                stable_bound_ms,
                limit_ms,
                relative,
                absolute_ms,
                case,
            } => VerdictDetail::LatencyVsStable {
                quantile: *quantile,
                canary_ms: *canary_ms,
                stable_ms: *stable_ms,
                stable_n: *stable_n,
                stable_bound_ms: *stable_bound_ms,
                limit_ms: *limit_ms,
                relative: *relative,
                absolute_ms: *absolute_ms,
                case: match case {
                    LatencyCase::NoData => "no_data",
                    LatencyCase::NoStableBound => "no_stable_bound",
                    LatencyCase::Slower => "slower",
                    LatencyCase::Compared => "compared",
                }
                .to_string(),
            },
            D::Text { .. } => return None,
        })
    }
}

// ---- signals, triggers, reasons ---------------------------------------------------------

/// A signal from outside the proxy, as journaled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Signal {
    /// A PCI compliance alert.
    PciAlert {
        /// Free text.
        #[serde(default)]
        note: String,
    },
    /// A security alert.
    SecurityAlert {
        /// How severe.
        severity: Severity,
        /// Free text.
        #[serde(default)]
        note: String,
    },
    /// A bug report.
    BugReport {
        /// Free text.
        #[serde(default)]
        note: String,
    },
    /// User feedback.
    Feedback {
        /// From 0 (unhappy) to 1 (happy).
        score: f64,
        /// Free text.
        #[serde(default)]
        note: String,
    },
}

impl From<&ev::Signal> for Signal {
    fn from(s: &ev::Signal) -> Self {
        match s {
            ev::Signal::PciAlert { note } => Signal::PciAlert { note: note.clone() },
            ev::Signal::SecurityAlert { severity, note } => Signal::SecurityAlert {
                severity: (*severity).into(),
                note: note.clone(),
            },
            ev::Signal::BugReport { note } => Signal::BugReport { note: note.clone() },
            ev::Signal::Feedback { score, note } => Signal::Feedback {
                score: *score,
                note: note.clone(),
            },
        }
    }
}

impl From<&Signal> for ev::Signal {
    fn from(s: &Signal) -> Self {
        match s {
            Signal::PciAlert { note } => ev::Signal::PciAlert { note: note.clone() },
            Signal::SecurityAlert { severity, note } => ev::Signal::SecurityAlert {
                severity: (*severity).into(),
                note: note.clone(),
            },
            Signal::BugReport { note } => ev::Signal::BugReport { note: note.clone() },
            Signal::Feedback { score, note } => ev::Signal::Feedback {
                score: *score,
                note: note.clone(),
            },
        }
    }
}

impl Signal {
    /// The signal's kind as the API names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Signal::PciAlert { .. } => "pci_alert",
            Signal::SecurityAlert { .. } => "security_alert",
            Signal::BugReport { .. } => "bug_report",
            Signal::Feedback { .. } => "feedback",
        }
    }

    /// A one-line description.
    pub fn describe(&self) -> String {
        ev::Signal::from(self).describe()
    }
}

/// The numbers behind a fired trigger.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "test", rename_all = "snake_case")]
pub enum TriggerEvidence {
    /// A rate or latency trigger's sequential test crossed its boundary.
    Sequential {
        /// The rate at and below which the trigger must not fire (H0).
        p0: f64,
        /// The rate the test is tuned to detect (H1).
        p1: f64,
        /// The boundary crossed.
        boundary: f64,
        /// The statistic when it crossed.
        statistic: f64,
        /// Bad events in the stretch that drove the statistic up.
        events: u64,
        /// Observations in that stretch.
        observations: u64,
        /// Exact lower confidence bound on that stretch's rate.
        lower_bound: f64,
        /// The confidence of the bound.
        confidence: f64,
        /// Bad events and observations of the batch that made it cross.
        window: Option<(u64, u64)>,
        /// How many alternatives the detector watched at once (absent for journals written
        /// before the detector bank: one CUSUM).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        alternatives: Option<u32>,
        /// Observations the trigger had watched in all when it fired.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        watched: Option<u64>,
    },
    /// A counting trigger reached its threshold.
    Count {
        /// Signals counted since the rollout started.
        count: u64,
        /// The comparison.
        op: Op,
        /// The threshold.
        threshold: f64,
        /// The signal that made it fire.
        latest: Signal,
    },
}

impl TriggerEvidence {
    fn of(e: &ro::TriggerEvidence) -> Option<Self> {
        Some(match e {
            ro::TriggerEvidence::Sequential {
                p0,
                p1,
                boundary,
                statistic,
                events,
                observations,
                lower_bound,
                confidence,
                window,
                alternatives,
                watched,
            } => TriggerEvidence::Sequential {
                p0: *p0,
                p1: *p1,
                boundary: *boundary,
                statistic: *statistic,
                events: *events,
                observations: *observations,
                lower_bound: *lower_bound,
                confidence: *confidence,
                window: *window,
                alternatives: *alternatives,
                watched: *watched,
            },
            ro::TriggerEvidence::Count {
                count,
                op,
                threshold,
                latest,
            } => TriggerEvidence::Count {
                count: *count,
                op: (*op).into(),
                threshold: *threshold,
                latest: latest.into(),
            },
            ro::TriggerEvidence::Text { .. } => return None,
        })
    }
}

/// Why a rollout rolled back or holds, with the evidence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "why", rename_all = "snake_case")]
pub enum StopReason {
    /// A rollback trigger fired.
    Trigger {
        /// The trigger as written.
        trigger: String,
        /// Its numbers.
        evidence: Option<TriggerEvidence>,
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
        /// Phase time spent (ms).
        elapsed: u64,
        /// The extension used up (ms).
        extension: u64,
        /// The verdicts still inconclusive.
        verdicts: Vec<Verdict>,
    },
    /// An operator rolled back.
    Operator {
        /// Who (the token's name).
        by: String,
        /// What they said.
        note: String,
    },
}

impl StopReason {
    /// The structured reason, when there is one (journal format 1 recorded only words).
    pub fn of(r: &ro::StopReason) -> Option<Self> {
        let verdicts = |vs: &[ev::Verdict]| vs.iter().map(Verdict::from).collect();
        Some(match r {
            ro::StopReason::Trigger { trigger, evidence } => StopReason::Trigger {
                trigger: trigger.clone(),
                evidence: TriggerEvidence::of(evidence),
            },
            ro::StopReason::GateFailed { phase, verdicts: v } => StopReason::GateFailed {
                phase: phase.clone(),
                verdicts: verdicts(v),
            },
            ro::StopReason::NotEnoughEvidence {
                phase,
                elapsed,
                extension,
                verdicts: v,
            } => StopReason::NotEnoughEvidence {
                phase: phase.clone(),
                elapsed: *elapsed,
                extension: *extension,
                verdicts: verdicts(v),
            },
            ro::StopReason::Operator { by, note } => StopReason::Operator {
                by: by.clone(),
                note: note.clone(),
            },
            ro::StopReason::Text { .. } => return None,
        })
    }
}

// ---- the journal ----------------------------------------------------------------------------

/// A page of the journal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventPage {
    /// Entries with `seq > after`, oldest first.
    pub events: Vec<JournalEntry>,
    /// Pass as `after` to get the next page; null when this page reached the end.
    pub next: Option<u64>,
}

/// A journal entry with its position.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JournalEntry {
    /// Position in the rollout's journal, from 1.
    pub seq: u64,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

/// Something that happened to a rollout, as journaled: when, in which phase, and what.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// When (controller time, ms since the Unix epoch).
    pub at: u64,
    /// The phase it happened in.
    pub phase: String,
    /// What happened, with the kind's own fields.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What a journal entry records. Words (`explanation`, `reason`) are kept beside the numbers
/// (`evidence`, `why`), which journal format 1 did not record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// The rollout started.
    Started,
    /// A phase started with a traffic share.
    PhaseStarted {
        /// The share in basis points.
        share: u16,
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
        /// Until when at most (ms since the Unix epoch).
        until: u64,
    },
    /// Moved to the next phase.
    Promoted {
        /// The phase left.
        from: String,
        /// The phase entered.
        to: String,
        /// True when an operator skipped unproven gates.
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
        /// Who sent it: the API token's name (`token pagerduty`), for Alertmanager
        /// `alertmanager via token am`. Absent in journals written before senders were recorded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        /// The key it was delivered under, if its sender may deliver it again: `id …` for a
        /// signal sent with an `id`, `alertmanager fingerprint <fingerprint> <startsAt>` for an alert (the
        /// same fingerprint with a later start is the alert resolved and firing again).
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
        /// The numbers, in words.
        explanation: String,
        /// The numbers.
        #[serde(default)]
        evidence: Option<TriggerEvidence>,
    },
    /// All traffic went back to stable.
    RolledBack {
        /// Why, in one word.
        cause: Cause,
        /// Why, in words.
        reason: String,
        /// The canary share before (basis points).
        share_before: u16,
        /// Why, with the evidence.
        #[serde(default)]
        why: Option<StopReason>,
    },
    /// Stopped at the current share, waiting for a person.
    Held {
        /// Why, in words.
        reason: String,
        /// Why, with the evidence.
        #[serde(default)]
        why: Option<StopReason>,
    },
    /// The last phase passed, or an operator promoted past it.
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
        /// How long it was down (ms, not counted as phase time).
        downtime: u64,
    },
}

impl EventKind {
    /// The kind's name (the `kind` field).
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Started => "started",
            EventKind::PhaseStarted { .. } => "phase_started",
            EventKind::GateChecked { .. } => "gate_checked",
            EventKind::Extended { .. } => "extended",
            EventKind::Promoted { .. } => "promoted",
            EventKind::AwaitingApproval { .. } => "awaiting_approval",
            EventKind::Approved { .. } => "approved",
            EventKind::Paused { .. } => "paused",
            EventKind::Resumed { .. } => "resumed",
            EventKind::SignalReceived { .. } => "signal_received",
            EventKind::SignalRepeated { .. } => "signal_repeated",
            EventKind::TriggerFired { .. } => "trigger_fired",
            EventKind::RolledBack { .. } => "rolled_back",
            EventKind::Held { .. } => "held",
            EventKind::Completed { .. } => "completed",
            EventKind::Restarted { .. } => "restarted",
        }
    }
}

impl From<&ro::Event> for Event {
    fn from(e: &ro::Event) -> Self {
        use ro::EventKind as K;
        let verdicts = |vs: &[ev::Verdict]| vs.iter().map(Verdict::from).collect();
        let kind = match &e.kind {
            K::Started => EventKind::Started,
            K::PhaseStarted { share } => EventKind::PhaseStarted { share: share.bp() },
            K::GateChecked {
                outcome,
                verdicts: v,
            } => EventKind::GateChecked {
                outcome: (*outcome).into(),
                verdicts: verdicts(v),
            },
            K::Extended { until } => EventKind::Extended { until: *until },
            K::Promoted {
                from,
                to,
                forced,
                by,
                reason,
            } => EventKind::Promoted {
                from: from.clone(),
                to: to.clone(),
                forced: *forced,
                by: by.clone(),
                reason: reason.clone(),
            },
            K::AwaitingApproval { next } => EventKind::AwaitingApproval { next: next.clone() },
            K::Approved { by } => EventKind::Approved { by: by.clone() },
            K::Paused { by, reason } => EventKind::Paused {
                by: by.clone(),
                reason: reason.clone(),
            },
            K::Resumed { by } => EventKind::Resumed { by: by.clone() },
            K::SignalReceived { signal, from, key } => EventKind::SignalReceived {
                signal: signal.into(),
                from: from.clone(),
                key: key.clone(),
            },
            K::SignalRepeated { key, from } => EventKind::SignalRepeated {
                key: key.clone(),
                from: from.clone(),
            },
            K::TriggerFired { trigger, evidence } => EventKind::TriggerFired {
                trigger: trigger.clone(),
                explanation: report::trigger_text(evidence),
                evidence: TriggerEvidence::of(evidence),
            },
            K::RolledBack {
                cause,
                reason,
                share_before,
            } => EventKind::RolledBack {
                cause: (*cause).into(),
                reason: report::stop_text(reason),
                share_before: share_before.bp(),
                why: StopReason::of(reason),
            },
            K::Held { reason } => EventKind::Held {
                reason: report::stop_text(reason),
                why: StopReason::of(reason),
            },
            K::Completed { forced, by, reason } => EventKind::Completed {
                forced: *forced,
                by: by.clone(),
                reason: reason.clone(),
            },
            K::Restarted { downtime } => EventKind::Restarted {
                downtime: *downtime,
            },
        };
        Event {
            at: e.at,
            phase: e.phase.clone(),
            kind,
        }
    }
}

// ---- notices ------------------------------------------------------------------------------

/// A notice as the outbox keeps it: how urgent, its headline, and what it is about.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Notice {
    /// How urgent.
    pub kind: NotifyKind,
    /// One line, with the numbers.
    pub headline: String,
    /// What happened: `phase_started`, `extended`, `awaiting_approval`, `completed`, `held`,
    /// `rolled_back`, `status_update`, `summary`, `alert`, `backend_down`,
    /// `backend_recovered`, `forced_promotion` or `report`.
    pub about: String,
    /// For holds and rollbacks: why, with the evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<StopReason>,
    /// The routing topic: `critical`, `security`, `phase`, `status`, `daily`, `final` or
    /// `incident` (absent in notices written before ramp routed them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// The stakeholder groups it goes to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// The channels that carry it (besides the live log).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// For a report notice: which report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<ReportKind>,
    /// The numbers at the moment of the decision: the same ones `ramp status` shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numbers: Option<Box<NoticeNumbers>>,
    /// The rollout's page on the dashboard, when the plan sets `[notify] link`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// One variant's numbers, as a notice carries them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VariantNumbers {
    /// Requests (health probes that failed are counted in `errors` and `attempts` only).
    pub requests: u64,
    /// Errors (5xx, timeouts, resets, failed probes).
    pub errors: u64,
    /// Attempts the error rate is over: requests plus failed probes.
    pub attempts: u64,
    /// `errors / attempts`.
    pub error_rate: f64,
    /// Requests answered successfully.
    pub successes: u64,
    /// `successes / requests`.
    pub success_rate: f64,
    /// p95 latency in ms (display estimate).
    pub p95_ms: Option<f64>,
    /// Distinct users (estimate).
    pub users: u64,
}

impl VariantNumbers {
    /// The numbers of some requests.
    pub fn of(s: &ev::VariantStats) -> Self {
        let (errors, attempts) = s.error_counts();
        VariantNumbers {
            requests: s.requests,
            errors,
            attempts,
            error_rate: s.error_rate(),
            successes: s.successes,
            success_rate: s.success_rate(),
            p95_ms: s.quantile_ms(0.95),
            users: s.users.estimate(),
        }
    }
}

/// Signals counted, as a notice carries them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SignalNumbers {
    /// PCI compliance alerts.
    pub pci_alerts: u64,
    /// Security alerts by severity: low, medium, high, critical.
    pub security_alerts: [u64; 4],
    /// Bug reports.
    pub bug_reports: u64,
    /// Feedback received.
    pub feedback: u64,
    /// Of which positive.
    pub feedback_positive: u64,
}

impl From<&ev::SignalCounts> for SignalNumbers {
    fn from(c: &ev::SignalCounts) -> Self {
        SignalNumbers {
            pci_alerts: c.pci_alerts,
            security_alerts: c.security,
            bug_reports: c.bug_reports,
            feedback: c.feedback,
            feedback_positive: c.feedback_positive,
        }
    }
}

/// What a rollback exposed users to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BlastRadius {
    /// Requests the new version served during the rollout.
    pub canary_requests: u64,
    /// Of which failed (errors).
    pub failed_requests: u64,
    /// Distinct users who reached the new version (estimate).
    pub users: u64,
    /// How long users were on the new version (ms): start to rollback.
    pub exposure_ms: u64,
    /// The share of users on it just before the rollback (basis points).
    pub share_before: u16,
}

/// The numbers a notice carries: phase, share, per-variant rates and p95 with their n, every
/// gate's verdict with observed value, bound, threshold and the requests still needed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NoticeNumbers {
    /// Controller time of the decision (ms since the Unix epoch).
    pub at: u64,
    /// Where the rollout is.
    pub status: Status,
    /// Current phase index.
    pub phase: u64,
    /// Current phase name.
    pub phase_name: String,
    /// Canary share (basis points).
    pub share: u16,
    /// Time in the phase (ms).
    pub phase_elapsed: u64,
    /// The phase's planned duration (ms).
    pub phase_duration: u64,
    /// Stable in the current phase.
    pub stable: VariantNumbers,
    /// Canary in the current phase.
    pub canary: VariantNumbers,
    /// Stable since the rollout started.
    pub stable_total: VariantNumbers,
    /// Canary since the rollout started.
    pub canary_total: VariantNumbers,
    /// Signals since the rollout started.
    pub signals: SignalNumbers,
    /// The gates, judged at the decision.
    pub verdicts: Vec<Verdict>,
    /// For a rollback: what it exposed users to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blast_radius: Option<BlastRadius>,
    /// For an alert: the alert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<Signal>,
    /// For a backend notice: `stable` or `canary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Notice {
    /// A core notice for rollout `rollout`, with its headline rendered (no numbers, no
    /// routing: see [`Notice::at`]).
    pub fn of(rollout: &str, n: &ro::Notice) -> Self {
        use ro::About as A;
        let (about, why) = match &n.about {
            A::PhaseStarted { .. } => ("phase_started", None),
            A::Extended { .. } => ("extended", None),
            A::AwaitingApproval { .. } => ("awaiting_approval", None),
            A::Completed { .. } => ("completed", None),
            A::Held { reason } => ("held", StopReason::of(reason)),
            A::RolledBack { reason, .. } => ("rolled_back", StopReason::of(reason)),
            A::StatusUpdate(_) => ("status_update", None),
            A::Summary(_) => ("summary", None),
            A::Alert { .. } => ("alert", None),
            A::BackendDown { .. } => ("backend_down", None),
            A::BackendRecovered { .. } => ("backend_recovered", None),
            A::ForcedPromotion { .. } => ("forced_promotion", None),
            A::Report { .. } => ("report", None),
        };
        Notice {
            kind: n.kind.into(),
            headline: report::headline(rollout, n),
            about: about.to_string(),
            why,
            topic: Some(n.topic().name().to_string()),
            groups: Vec::new(),
            channels: Vec::new(),
            report: match &n.about {
                A::Report { report } => Some((*report).into()),
                _ => None,
            },
            numbers: None,
            link: None,
        }
    }

    /// A core notice as the step that sent it leaves the rollout: routed to the plan's groups
    /// and channels, with the numbers of `state` (the state after the step).
    pub fn at(plan: &ramp_core::plan::Plan, state: &ro::State, n: &ro::Notice) -> Self {
        use ro::About as A;
        let mut out = Notice::of(&plan.name, n);
        let route = plan.notify.route(n.topic());
        out.groups = route.groups;
        out.channels = route.channels;
        out.link = plan
            .notify
            .link
            .as_ref()
            .map(|base| format!("{base}/rollouts/{}", plan.name));
        let phase = &plan.phases[state.phase.min(plan.phases.len() - 1)];
        let canary_total = VariantNumbers::of(&state.totals.canary);
        out.numbers = Some(Box::new(NoticeNumbers {
            at: state.now,
            status: state.status.into(),
            phase: state.phase as u64,
            phase_name: phase.name.clone(),
            share: state.share.bp(),
            phase_elapsed: state.phase_elapsed,
            phase_duration: phase.duration,
            stable: VariantNumbers::of(&state.evidence.stable),
            canary: VariantNumbers::of(&state.evidence.canary),
            stable_total: VariantNumbers::of(&state.totals.stable),
            signals: (&state.totals.signals).into(),
            verdicts: ro::current_verdicts(plan, state)
                .iter()
                .map(Verdict::from)
                .collect(),
            blast_radius: match &n.about {
                A::RolledBack { share_before, .. } => Some(BlastRadius {
                    canary_requests: canary_total.requests,
                    failed_requests: canary_total.errors,
                    users: canary_total.users,
                    exposure_ms: state
                        .ended_at
                        .unwrap_or(state.now)
                        .saturating_sub(state.started_at.unwrap_or(state.now)),
                    share_before: share_before.bp(),
                }),
                _ => None,
            },
            canary_total,
            signal: match &n.about {
                A::Alert { signal } => Some(signal.into()),
                _ => None,
            },
            variant: match &n.about {
                A::BackendDown { variant } | A::BackendRecovered { variant } => {
                    Some(variant.as_str().to_string())
                }
                _ => None,
            },
        }));
        out
    }
}

/// A notice's delivery to one channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryView {
    /// The channel (as the plan names it).
    pub channel: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    /// Attempts made.
    pub attempts: u32,
    /// When the latest attempt was made (ms since the Unix epoch).
    pub last_attempt_at: Option<u64>,
    /// Why the latest attempt failed.
    pub error: Option<String>,
}

/// A notice as sent: what, when, to whom, and how each delivery went.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NoticeRecord {
    /// Its id (increasing in the order notices were written); the idempotency key receivers
    /// get is `ramp-<rollout>-<id>`.
    pub id: u64,
    /// The journal position of the step that sent it.
    pub seq: u64,
    /// When it was decided (controller time, ms since the Unix epoch).
    pub at: u64,
    /// The notice.
    pub notice: Notice,
    /// When the live log took it.
    pub logged_at: Option<u64>,
    /// Its deliveries to the channels it was routed to.
    pub deliveries: Vec<DeliveryView>,
}

/// A page of a rollout's notices.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NoticePage {
    /// The rollout.
    pub rollout: String,
    /// Notices with `id > after`, oldest first.
    pub notices: Vec<NoticeRecord>,
    /// The `after` for the next page (the last id here, or the request's when empty).
    pub next: u64,
}

/// How one notification channel of a rollout is doing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChannelView {
    /// The channel.
    pub channel: String,
    /// Notices delivered since the server started.
    pub delivered: u64,
    /// Notices given up on since the server started.
    pub failed: u64,
    /// Failed attempts that were retried since the server started.
    pub retries: u64,
    /// Notices waiting, as last counted.
    pub pending: u64,
    /// The latest failure, while the channel keeps failing.
    pub error: Option<String>,
}

/// A report document kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReportDoc {
    /// Where the rollout stands now.
    Status,
    /// The last day.
    Daily,
    /// The whole rollout, measured against its success metrics.
    Final,
    /// After a rollback: the trigger, its evidence, the timeline, the blast radius.
    Incident,
}

impl ReportDoc {
    /// The name used in URLs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ReportDoc::Status => "status",
            ReportDoc::Daily => "daily",
            ReportDoc::Final => "final",
            ReportDoc::Incident => "incident",
        }
    }

    /// The kind a URL or command line names.
    pub fn parse(s: &str) -> Option<Self> {
        [
            ReportDoc::Status,
            ReportDoc::Daily,
            ReportDoc::Final,
            ReportDoc::Incident,
        ]
        .into_iter()
        .find(|k| k.name() == s)
    }
}

/// A report's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReportFormat {
    /// Markdown.
    Md,
    /// Self-contained HTML with SVG charts.
    Html,
    /// The report's data as JSON.
    Json,
}

impl ReportFormat {
    /// The name used in URLs and on the command line (also the file extension).
    pub fn name(self) -> &'static str {
        match self {
            ReportFormat::Md => "md",
            ReportFormat::Html => "html",
            ReportFormat::Json => "json",
        }
    }

    /// The format a URL or command line names.
    pub fn parse(s: &str) -> Option<Self> {
        [ReportFormat::Md, ReportFormat::Html, ReportFormat::Json]
            .into_iter()
            .find(|k| k.name() == s)
    }

    /// Its media type.
    pub fn content_type(self) -> &'static str {
        match self {
            ReportFormat::Md => "text/markdown; charset=utf-8",
            ReportFormat::Html => "text/html; charset=utf-8",
            ReportFormat::Json => "application/json",
        }
    }
}

// ---- requests and answers -----------------------------------------------------------------

/// A plan as JSON (the body of `POST /v1/rollouts` may also be the plan's TOML itself, as
/// `application/toml` or `text/plain`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// The plan file's text (TOML), validated exactly as `ramp plan check` does.
    pub plan: String,
}

/// Optional body of an action. `force` only for promote, and then with a `reason`; rollback
/// needs a `reason`. The caller's token name is journaled as `by`. Resume and approve journal
/// no reason.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    /// Why (required for rollback and for a forced promotion; at most 4096 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 4096)]
    pub reason: Option<String>,
    /// Promote even though the gates have not passed (journaled as forced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force: Option<bool>,
}

/// Optional body of pause, resume and approve (`force` is refused: only promote can be
/// forced).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlainActionRequest {
    /// Why (journaled for pause; at most 4096 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 4096)]
    pub reason: Option<String>,
}

/// Body of a rollback: why, which is journaled and sent with the critical notice.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// Why (not blank; at most 4096 characters).
    #[schema(min_length = 1, max_length = 4096, pattern = r"\S")]
    pub reason: String,
}

/// A signal to record. Notes are at most 4096 characters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SignalRequest {
    /// A PCI compliance alert.
    PciAlert {
        /// Free text (at most 4096 characters).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(max_length = 4096)]
        note: Option<String>,
        /// The sender's identity for this signal (1 to 200 characters). A signal whose id was
        /// already counted for the rollout is acknowledged with `duplicate: true` and not
        /// counted again, so a sender may safely retry.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(min_length = 1, max_length = 200)]
        id: Option<String>,
    },
    /// A security alert.
    SecurityAlert {
        /// How severe.
        severity: Severity,
        /// Free text (at most 4096 characters).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(max_length = 4096)]
        note: Option<String>,
        /// The sender's identity for this signal (see `pci_alert`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(min_length = 1, max_length = 200)]
        id: Option<String>,
    },
    /// A bug report.
    BugReport {
        /// Free text (at most 4096 characters).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(max_length = 4096)]
        note: Option<String>,
        /// The sender's identity for this signal (see `pci_alert`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(min_length = 1, max_length = 200)]
        id: Option<String>,
    },
    /// User feedback.
    Feedback {
        /// From 0 (unhappy) to 1 (happy); 0.75 and above counts as positive.
        #[schema(minimum = 0.0, maximum = 1.0)]
        score: f64,
        /// Free text (at most 4096 characters).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(max_length = 4096)]
        note: Option<String>,
        /// The sender's identity for this signal (see `pci_alert`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(min_length = 1, max_length = 200)]
        id: Option<String>,
    },
}

/// A signal was recorded durably.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SignalAccepted {
    /// Its position in the rollout's journal (of the repeat entry, for a repeat).
    pub seq: u64,
    /// The request carried an `id` already counted: journaled as a repeat, not counted again.
    pub duplicate: bool,
}

/// A field of the request that was wrong, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    /// The field (`body` for the body as a whole, `alerts[2].labels` for nested ones).
    pub field: String,
    /// What is wrong and what was expected.
    pub message: String,
}

/// One problem in a plan, with its position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PlanErrorBody {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// What is wrong and what was expected.
    pub message: String,
    /// A suggestion, e.g. "did you mean `error_rate`?".
    pub help: Option<String>,
    /// The plan's line, for display.
    pub source_line: String,
}

/// The body of every error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, in one line.
    pub error: String,
    /// For 400 "invalid request": each bad field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<FieldError>>,
    /// For 400 "invalid plan": each problem in the plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<PlanErrorBody>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Journal format 1 rows (taken from a real journal) parse as v1 events.
    #[test]
    fn format_1_rows_parse() {
        let rows = [
            r#"{"at":1796193810884,"phase":"canary","kind":"trigger_fired","trigger":"pci_alerts >= 2","explanation":"2 counted since the rollout started (exact count), trigger at >= 2; latest: PCI compliance alert: card number in logs"}"#,
            r#"{"at":1,"phase":"canary","kind":"rolled_back","cause":"operator","reason":"rolled back by admin: x","share_before":5000}"#,
            r#"{"at":1,"phase":"full","kind":"completed"}"#,
            r#"{"at":1,"phase":"canary","kind":"gate_checked","outcome":"inconclusive","verdicts":[{"criterion":"error_rate < 0.1%","outcome":"inconclusive","observed":null,"bound":1.0,"bound_side":"upper","events":0,"n":0,"threshold":0.001,"needed":2995,"explanation":"no requests yet"}]}"#,
        ];
        for row in rows {
            let e: Event = serde_json::from_str(row).unwrap_or_else(|e| panic!("{row}: {e}"));
            let back = serde_json::to_value(&e).unwrap();
            let orig: serde_json::Value = serde_json::from_str(row).unwrap();
            for (k, v) in orig.as_object().unwrap() {
                assert_eq!(&back[k], v, "{row}: field {k}");
            }
        }
    }
}

// ---- certificates -----------------------------------------------------------------------

/// One certificate the server uses (PCI DSS 4.0 requirement 4.2.1.1's inventory).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Certificate {
    /// Who uses it: `api`, or `rollout NAME`.
    pub owner: String,
    /// What for: `listener`, `listener client CA`, `stable upstream CA`, `canary client
    /// certificate`, …
    pub role: String,
    /// The file it was loaded from.
    pub path: String,
    /// Subject (RFC 4514).
    pub subject: String,
    /// Issuer (RFC 4514).
    pub issuer: String,
    /// Serial number, hex.
    pub serial: String,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// Days left until `not_after` (negative once expired), when the list was made.
    pub days_to_expiry: f64,
    /// SHA-256 of the DER encoding, hex.
    pub sha256: String,
}

/// Every certificate in use, and how reloading has gone since the server started.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CertificateList {
    /// The certificates, by owner and role.
    pub certificates: Vec<Certificate>,
    /// Sets of TLS material replaced since start (a file changed, or SIGHUP).
    pub reloads: u64,
    /// Reloads that failed (the old material stayed in use).
    pub reload_failures: u64,
}
