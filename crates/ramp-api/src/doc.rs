//! The OpenAPI document, generated from the handlers' `#[utoipa::path]` annotations and the
//! schemas below. Types that come from `ramp-core` and `serve` (which know nothing of utoipa)
//! are described here by mirror types of the same name and shape; a test in
//! `tests/api.rs` serialises the real types and checks that the field names agree.
#![allow(dead_code)] // mirror types only describe JSON; they are never built

use super::alertmanager::{AlertError, AlertmanagerResult};
use super::auth::Role;
use super::error::{ErrorBody, FieldError, PlanErrorBody};
use super::handlers;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// The OpenAPI document of the API (also served at `GET /v1/openapi.json` and committed as
/// `docs/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ramp API",
        description = "Control plane of ramp, progressive delivery with evidence-based gates. \
            Every endpoint except /healthz, /readyz and /v1/openapi.json needs \
            `Authorization: Bearer <token>`; the token's role decides what it may do: viewer \
            reads; operator reads and pauses, resumes, approves, promotes and rolls back; \
            admin does everything, including creating rollouts; ingest only sends signals. \
            Errors are JSON: {\"error\": \"...\"}, with `fields` naming each bad field for \
            400 invalid request and `errors` for 400 invalid plan."
    ),
    paths(
        handlers::list_rollouts,
        handlers::create_rollout,
        handlers::get_rollout,
        handlers::list_events,
        handlers::pause,
        handlers::resume,
        handlers::approve,
        handlers::promote,
        handlers::rollback,
        handlers::post_signal,
        handlers::alertmanager,
        handlers::metrics,
        handlers::healthz,
        handlers::readyz,
        handlers::openapi_json,
    ),
    components(schemas(
        RolloutStatus,
        VariantView,
        Verdict,
        Status,
        Health,
        Outcome,
        BoundSide,
        BackendHealth,
        EventPage,
        JournalEntry,
        EventKind,
        CreateRequest,
        ActionRequest,
        SignalRequest,
        Severity,
        SignalAccepted,
        AlertmanagerPayload,
        Alert,
        AlertmanagerResult,
        AlertError,
        ErrorBody,
        FieldError,
        PlanErrorBody,
        Role,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "rollouts", description = "Status, journal and creation of rollouts."),
        (name = "actions", description = "Operator commands; each answers with the new status."),
        (name = "signals", description = "Evidence from outside the proxy: alerts, bug reports, feedback."),
        (name = "operations", description = "Metrics, health and this document."),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A ramp token (`ramp_` and 64 hex digits). Missing or unknown: 401; \
                         a role that may not: 403.",
                    ))
                    .build(),
            ),
        );
    }
}

/// A rollout's deployment status: start time, current phase, traffic share, health, per-variant
/// metrics and each gate's latest verdict with its explanation.
#[derive(ToSchema)]
pub(crate) struct RolloutStatus {
    /// The rollout's name (the plan's `name`).
    name: String,
    /// When it started (controller time, ms since the Unix epoch).
    started_at: Option<u64>,
    /// Where the proxy for this rollout listens.
    listen: String,
    /// Controller time now (ms since the Unix epoch).
    now: u64,
    /// Controller time when serving started.
    origin: u64,
    /// Where the rollout is.
    status: Status,
    /// Health summary.
    health: Health,
    /// Current phase index (from 0).
    phase: u64,
    /// Current phase name.
    phase_name: String,
    /// Canary share in basis points (0 to 10000).
    #[schema(maximum = 10000)]
    share: u16,
    /// Time spent in the current phase (ms).
    phase_elapsed: u64,
    /// The phase's planned duration (ms).
    phase_duration: u64,
    /// Whether the phase was extended to collect more evidence.
    extended: bool,
    /// Canary numbers in the current phase.
    canary: VariantView,
    /// Stable numbers in the current phase.
    stable: VariantView,
    /// The current phase's gates judged now.
    verdicts: Vec<Verdict>,
    /// Why it ended or holds.
    reason: Option<String>,
    /// True once the rollout completed, rolled back or holds.
    ended: bool,
}

/// One variant's numbers.
#[derive(ToSchema)]
pub(crate) struct VariantView {
    /// Requests per second, averaged over about the last second.
    rps: f64,
    /// Requests in the current phase.
    requests: u64,
    /// Error rate (fraction).
    error_rate: f64,
    /// Success rate (fraction).
    success_rate: f64,
    /// Share of requests answered 429 (fraction).
    rate_limit_rate: f64,
    /// Share of requests answered 401/403 (fraction).
    auth_failure_rate: f64,
    /// p95 latency in ms.
    p95_ms: Option<f64>,
    /// Distinct users.
    active_users: u64,
    /// Backend health-check result.
    health: Option<BackendHealth>,
}

/// A criterion's verdict with its explanation.
#[derive(ToSchema)]
pub(crate) struct Verdict {
    /// The criterion as written in the plan.
    criterion: String,
    /// The verdict.
    outcome: Outcome,
    /// Point estimate in the metric's unit.
    observed: Option<f64>,
    /// The confidence bound that decided (or would decide).
    bound: Option<f64>,
    /// Which side the bound is on.
    bound_side: Option<BoundSide>,
    /// Events counted.
    events: u64,
    /// Sample size.
    n: u64,
    /// The threshold compared with.
    threshold: f64,
    /// For inconclusive verdicts: samples still needed at the current rate.
    needed: Option<u64>,
    /// One line with the numbers.
    explanation: String,
}

/// A rollout's status.
#[derive(ToSchema, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Status {
    Pending,
    Running,
    AwaitingApproval,
    Holding,
    Paused,
    RolledBack,
    Completed,
}

/// Health summary.
#[derive(ToSchema, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Health {
    Healthy,
    Monitoring,
    Degraded,
    Critical,
}

/// A gate's verdict; only `pass` promotes.
#[derive(ToSchema, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Outcome {
    Pass,
    Fail,
    Inconclusive,
}

/// Which side a confidence bound is on.
#[derive(ToSchema, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum BoundSide {
    Upper,
    Lower,
}

/// An upstream's health-check result.
#[derive(ToSchema, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum BackendHealth {
    Operational,
    Degraded,
    Down,
    Unknown,
}

/// A page of the journal.
#[derive(ToSchema)]
pub(crate) struct EventPage {
    /// Entries with `seq > after`, oldest first.
    events: Vec<JournalEntry>,
    /// Pass as `after` for the next page; null when this page reached the end.
    next: Option<u64>,
}

/// A journal entry: position, time, phase and kind, plus the kind's own fields (e.g. `share`
/// for phase_started, `verdicts` for gate_checked, `by` and `reason` for operator actions,
/// `signal` for signal_received, `cause` and `reason` for rolled_back).
#[derive(ToSchema)]
pub(crate) struct JournalEntry {
    /// Position in the rollout's journal, from 1.
    seq: u64,
    /// When (controller time, ms since the Unix epoch).
    at: u64,
    /// The phase it happened in.
    phase: String,
    /// What happened.
    kind: EventKind,
}

/// What a journal entry records.
#[derive(ToSchema, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum EventKind {
    Started,
    PhaseStarted,
    GateChecked,
    Extended,
    Promoted,
    AwaitingApproval,
    Approved,
    Paused,
    Resumed,
    SignalReceived,
    TriggerFired,
    RolledBack,
    Held,
    Completed,
}

/// A plan as JSON (the body may also be the plan's TOML itself, as `application/toml` or
/// `text/plain`).
#[derive(ToSchema)]
pub(crate) struct CreateRequest {
    /// The plan file's text (TOML), validated exactly as `ramp plan check` does.
    plan: String,
}

/// Optional body of an action. `force` only for promote, and then with a `reason`; rollback
/// needs a `reason`. The caller's token name is journaled as `by`. Resume and approve journal no
/// reason.
#[derive(ToSchema)]
pub(crate) struct ActionRequest {
    /// Why (required for rollback and for a forced promotion; at most 4096 characters).
    reason: Option<String>,
    /// Promote even though the gates have not passed (journaled as forced).
    force: Option<bool>,
}

/// A signal. Notes are at most 4096 characters.
#[derive(ToSchema, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum SignalRequest {
    /// A PCI compliance alert.
    PciAlert {
        /// Free text.
        note: Option<String>,
        /// The sender's identity for this signal (1 to 200 characters). A signal whose id was
        /// already counted for the rollout is acknowledged with `duplicate: true` and not counted
        /// again, so a sender may safely retry.
        id: Option<String>,
    },
    /// A security alert.
    SecurityAlert {
        /// How severe.
        severity: Severity,
        /// Free text.
        note: Option<String>,
        /// The sender's identity for this signal (1 to 200 characters). A signal whose id was
        /// already counted for the rollout is acknowledged with `duplicate: true` and not counted
        /// again, so a sender may safely retry.
        id: Option<String>,
    },
    /// A bug report.
    BugReport {
        /// Free text.
        note: Option<String>,
        /// The sender's identity for this signal (1 to 200 characters). A signal whose id was
        /// already counted for the rollout is acknowledged with `duplicate: true` and not counted
        /// again, so a sender may safely retry.
        id: Option<String>,
    },
    /// User feedback.
    Feedback {
        /// From 0 (unhappy) to 1 (happy); 0.75 and above counts as positive.
        #[schema(minimum = 0.0, maximum = 1.0)]
        score: f64,
        /// Free text.
        note: Option<String>,
        /// The sender's identity for this signal (1 to 200 characters). A signal whose id was
        /// already counted for the rollout is acknowledged with `duplicate: true` and not counted
        /// again, so a sender may safely retry.
        id: Option<String>,
    },
}

/// A security alert's severity.
#[derive(ToSchema, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

/// A signal was recorded durably.
#[derive(ToSchema, Serialize)]
pub(crate) struct SignalAccepted {
    /// Its position in the rollout's journal.
    pub(crate) seq: u64,
    /// The request carried an `id` already counted: journaled as a repeat, not counted again.
    pub(crate) duplicate: bool,
}

/// Alertmanager's webhook payload (version 4). Firing alerts with labels `rollout` and
/// `category` (`pci` → pci_alert, `security` → security_alert with the `severity` label:
/// critical, high, medium, low; warning → medium, info → low, missing or other → high) become
/// signals; the note is the `summary` or `description` annotation or the `alertname` label.
/// Resolved alerts and alerts without the labels are skipped. Repeats of an alert already
/// recorded (same rollout, fingerprint and startsAt) are skipped as duplicates.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct AlertmanagerPayload {
    /// "4" (other versions are refused).
    version: Option<String>,
    group_key: Option<String>,
    truncated_alerts: Option<u64>,
    /// firing or resolved.
    status: Option<String>,
    receiver: Option<String>,
    group_labels: Option<BTreeMap<String, String>>,
    common_labels: Option<BTreeMap<String, String>>,
    common_annotations: Option<BTreeMap<String, String>>,
    #[schema(rename = "externalURL")]
    external_url: Option<String>,
    /// The alerts.
    alerts: Vec<Alert>,
}

/// One alert of an Alertmanager webhook.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct Alert {
    /// firing or resolved.
    status: String,
    /// `rollout` and `category` (pci or security) are required for ramp; `severity` for
    /// security alerts.
    labels: BTreeMap<String, String>,
    annotations: Option<BTreeMap<String, String>>,
    starts_at: Option<String>,
    ends_at: Option<String>,
    #[schema(rename = "generatorURL")]
    generator_url: Option<String>,
    fingerprint: Option<String>,
}
