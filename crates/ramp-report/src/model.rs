//! The document's data model: what a report says, before it is rendered. Serialised as is for
//! the JSON format; the Markdown and HTML renderers read nothing else.

use crate::Kind;
use ramp_wire::v1::{BlastRadius, SignalNumbers, StopReason, VariantNumbers, Verdict};
use serde::Serialize;

/// One report about one rollout.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// Which document this is.
    pub kind: Kind,
    /// The document's title (`payments-backend — final report`).
    pub title: String,
    /// The rollout's name.
    pub rollout: String,
    /// The plan's description, if it has one.
    pub description: Option<String>,
    /// Controller time the report was generated at (ms since the Unix epoch).
    pub generated_at: u64,
    /// The same as `YYYY-MM-DD HH:MM:SSZ`.
    pub generated_at_utc: String,
    /// Where the rollout is (`running`, `rolled_back`, ...).
    pub status: String,
    /// The current phase.
    pub phase: PhaseNow,
    /// When the rollout started, if it did.
    pub started_at: Option<Stamp>,
    /// When it ended, if it did.
    pub ended_at: Option<Stamp>,
    /// Per-variant numbers of the current phase.
    pub current: Variants,
    /// Per-variant numbers of the whole rollout.
    pub totals: Variants,
    /// Signals counted since the rollout started.
    pub signals: SignalNumbers,
    /// Every current gate verdict.
    pub gates: Vec<MetricRow>,
    /// Which part of the journal the timeline shows (`everything`, `the last 24 h`).
    pub timeline_scope: String,
    /// The decisions, oldest first.
    pub timeline: Vec<TimelineEntry>,
    /// Every phase that has ended, with its numbers.
    pub phases: Vec<PhaseRow>,
    /// The success metrics (final report only).
    pub success: Option<SuccessMetrics>,
    /// What happened and what it cost (incident review only).
    pub incident: Option<Incident>,
    /// The series the HTML charts draw.
    pub charts: Charts,
}

/// A controller time, raw and as UTC text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stamp {
    /// Ms since the Unix epoch.
    pub at: u64,
    /// `YYYY-MM-DD HH:MM:SSZ`.
    pub utc: String,
}

/// The current phase.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PhaseNow {
    /// Index into the plan's phases.
    pub index: usize,
    /// The phase's name (empty when the plan has no such phase).
    pub name: String,
    /// The canary share in basis points.
    pub share_bp: u16,
    /// The canary share as text (`5%`).
    pub share: String,
}

/// Numbers of both variants over one span.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Variants {
    /// The current version.
    pub stable: VariantNumbers,
    /// The new version.
    pub canary: VariantNumbers,
}

/// One journal entry as the timeline shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TimelineEntry {
    /// Journal position.
    pub seq: u64,
    /// Controller time (ms since the Unix epoch).
    pub at: u64,
    /// Time since the rollout started, as `HHhMMmSSs`.
    pub since_start: String,
    /// The event's kind (`phase_started`, `rolled_back`, ...).
    pub kind: String,
    /// The event as lines of text; the first is the headline.
    pub lines: Vec<String>,
}

/// A finished phase.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PhaseRow {
    /// The phase's name.
    pub name: String,
    /// Its canary share as text.
    pub share: String,
    /// When it started (ms).
    pub started_at: u64,
    /// When it ended (ms).
    pub ended_at: u64,
    /// How long it ran, as text.
    pub duration: String,
    /// How it ended (`passed`, `rolled_back`, ...).
    pub result: String,
    /// Canary errors of the phase.
    pub canary_errors: u64,
    /// Canary requests of the phase.
    pub canary_requests: u64,
    /// Canary error rate (fraction).
    pub canary_error_rate: f64,
    /// Stable errors of the phase.
    pub stable_errors: u64,
    /// Stable requests of the phase.
    pub stable_requests: u64,
    /// Stable error rate (fraction).
    pub stable_error_rate: f64,
}

/// The success metrics table: every criterion, overall and per phase.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SuccessMetrics {
    /// Every distinct criterion judged on the whole rollout's evidence.
    pub overall: Vec<MetricRow>,
    /// Each finished phase's last gate verdicts.
    pub per_phase: Vec<PhaseMetrics>,
}

/// One phase's rows of the success metrics table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PhaseMetrics {
    /// The phase's name.
    pub phase: String,
    /// How it ended.
    pub result: String,
    /// Its criteria.
    pub rows: Vec<MetricRow>,
}

/// One criterion in the success metrics table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricRow {
    /// The criterion as written.
    pub metric: String,
    /// The target, as text.
    pub target: String,
    /// What was measured, as text.
    pub measured: String,
    /// The confidence bound with its side, as text (`≤ 0.042%`).
    pub bound: String,
    /// The sample size.
    pub n: u64,
    /// The sample still needed, as text (empty when none is).
    pub needed: String,
    /// `met`, `not met` or `not proven`.
    pub verdict: String,
    /// The verdict with all its numbers.
    pub detail: Verdict,
}

/// The incident review's own sections.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Incident {
    /// What triggered it, in words with the numbers (absent when the rollout did not stop).
    pub trigger: Option<String>,
    /// The cause in one word (`trigger`, `gate_failed`, `deadline`, `operator`).
    pub cause: Option<String>,
    /// The trigger's evidence, structured.
    pub why: Option<StopReason>,
    /// The verdicts behind the stop (those of the stop reason, else the current ones).
    pub evidence: Vec<MetricRow>,
    /// What the rollout exposed users to.
    pub blast_radius: BlastRadius,
    /// The blast radius's exposure as text.
    pub exposure: String,
    /// The share before the rollback, as text.
    pub share_before: String,
    /// The phases that passed before the incident.
    pub last_good_phases: Vec<String>,
    /// Where traffic is now.
    pub traffic_now: String,
    /// The notices sent about the rollout.
    pub notices: Vec<NoticeView>,
    /// Rows for the team to fill in.
    pub follow_ups: Vec<FollowUp>,
}

/// A notice in the incident review.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NoticeView {
    /// The outbox id.
    pub id: u64,
    /// When it was queued (ms).
    pub at: u64,
    /// The same as UTC text.
    pub at_utc: String,
    /// `status`, `summary` or `critical`.
    pub kind: String,
    /// What it is about.
    pub about: String,
    /// Its headline.
    pub headline: String,
    /// The groups it went to.
    pub groups: Vec<String>,
    /// Its delivery per channel.
    pub deliveries: Vec<Delivery>,
}

/// A notice's delivery on one channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Delivery {
    /// The channel.
    pub channel: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last error, if any.
    pub error: Option<String>,
}

/// A follow-up action (placeholder rows are empty).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FollowUp {
    /// Who.
    pub owner: String,
    /// What.
    pub action: String,
    /// By when.
    pub due: String,
}

/// The series of the HTML charts. Times are hours since the rollout started.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Charts {
    /// The span the x axis covers, in hours.
    pub span_hours: f64,
    /// Controller time the x axis starts at (ms).
    pub origin: u64,
    /// How long each point of the per-variant series spans (ms).
    pub bucket_ms: u64,
    /// The canary's traffic share over time (hours, percent), as steps.
    pub share: Vec<(f64, f64)>,
    /// Error rate per variant (fractions).
    pub error_rate: PerVariant,
    /// p95 latency per variant (ms).
    pub p95_ms: PerVariant,
    /// Error-rate thresholds from the plan (fractions).
    pub error_thresholds: Vec<Threshold>,
    /// p95 latency thresholds from the plan (ms).
    pub p95_thresholds: Vec<Threshold>,
    /// The decisions, as vertical markers.
    pub decisions: Vec<Marker>,
}

/// One series per variant: (hours, value) points, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PerVariant {
    /// The current version.
    pub stable: Vec<(f64, f64)>,
    /// The new version.
    pub canary: Vec<(f64, f64)>,
}

/// A horizontal threshold line.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Threshold {
    /// Where it comes from (the criterion as written, or `baseline`).
    pub label: String,
    /// Its value in the chart's unit.
    pub value: f64,
}

/// A vertical decision marker.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Marker {
    /// When, in hours since the start.
    pub hours: f64,
    /// What (`promoted → expanded`, `rolled back`, ...).
    pub label: String,
}
