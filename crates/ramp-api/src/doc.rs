//! The OpenAPI document, generated from the handlers' `#[utoipa::path]` annotations and the
//! wire types they serve and accept ([`ramp_wire::v1`]) — the very types that are serialized,
//! so the document cannot drift from the answers. The one schema defined here describes
//! Alertmanager's webhook payload, an external format the handler parses by hand.
#![allow(dead_code)] // the Alertmanager payload type only describes JSON; it is never built

use super::alertmanager::{AlertError, AlertmanagerResult};
use super::auth::Role;
use super::error::{ErrorBody, FieldError, PlanErrorBody};
use super::handlers;
use ramp_wire::v1;
use std::collections::BTreeMap;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// The OpenAPI document of the API (also served at `GET /v1/openapi.json` and committed as
/// `docs/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    close_signal_variants(&mut doc);
    doc
}

/// The server refuses unknown fields in a signal (`deny_unknown_fields`), which utoipa does not
/// carry into the variants of an internally tagged enum: close each variant here.
fn close_signal_variants(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{AdditionalProperties, Schema};
    let Some(components) = doc.components.as_mut() else {
        return;
    };
    if let Some(RefOr::T(Schema::OneOf(one_of))) = components.schemas.get_mut("SignalRequest") {
        for item in &mut one_of.items {
            if let RefOr::T(Schema::Object(object)) = item {
                object.additional_properties =
                    Some(Box::new(AdditionalProperties::FreeForm(false)));
            }
        }
    }
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
        handlers::list_notices,
        handlers::get_report,
        handlers::retire_rollout,
        handlers::pause,
        handlers::resume,
        handlers::approve,
        handlers::promote,
        handlers::rollback,
        handlers::post_signal,
        handlers::alertmanager,
        handlers::list_certificates,
        handlers::metrics,
        handlers::healthz,
        handlers::readyz,
        handlers::openapi_json,
    ),
    components(schemas(
        v1::RolloutStatus,
        v1::VariantView,
        v1::Verdict,
        v1::VerdictDetail,
        v1::Status,
        v1::Health,
        v1::Outcome,
        v1::BoundSide,
        v1::BackendHealth,
        v1::EventPage,
        v1::JournalEntry,
        v1::Event,
        v1::EventKind,
        v1::Signal,
        v1::TriggerEvidence,
        v1::StopReason,
        v1::Cause,
        v1::Op,
        v1::CreateRequest,
        v1::ActionRequest,
        v1::PlainActionRequest,
        v1::RollbackRequest,
        v1::SignalRequest,
        v1::Severity,
        v1::SignalAccepted,
        v1::Certificate,
        v1::CertificateList,
        v1::NoticePage,
        v1::NoticeRecord,
        v1::Notice,
        v1::NoticeNumbers,
        v1::VariantNumbers,
        v1::SignalNumbers,
        v1::BlastRadius,
        v1::DeliveryView,
        v1::ChannelView,
        v1::NotifyKind,
        v1::ReportKind,
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
    #[schema(pattern = "^4$")]
    version: Option<String>,
    /// Not read by ramp (any value).
    group_key: Option<serde_json::Value>,
    /// Not read by ramp (any value).
    truncated_alerts: Option<serde_json::Value>,
    /// Not read by ramp (each alert has its own `status`).
    status: Option<serde_json::Value>,
    /// Not read by ramp (any value).
    receiver: Option<serde_json::Value>,
    /// Not read by ramp (any value).
    group_labels: Option<serde_json::Value>,
    /// Not read by ramp (any value).
    common_labels: Option<serde_json::Value>,
    /// Not read by ramp (any value).
    common_annotations: Option<serde_json::Value>,
    /// Not read by ramp (any value).
    #[schema(rename = "externalURL")]
    external_url: Option<serde_json::Value>,
    /// The alerts.
    alerts: Vec<Alert>,
}

/// One alert of an Alertmanager webhook.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct Alert {
    /// firing or resolved; anything else is skipped.
    status: String,
    /// `rollout` and `category` (pci or security) are required for ramp, and `severity` for
    /// security alerts: those must be strings (an alert with one of another type is listed in
    /// `errors`); other labels may be anything. An alert without them is skipped.
    labels: Option<BTreeMap<String, serde_json::Value>>,
    /// `summary` or `description` becomes the signal's note.
    annotations: Option<serde_json::Value>,
    /// With the fingerprint, identifies the alert (a string; otherwise ignored).
    starts_at: Option<serde_json::Value>,
    /// Not read by ramp (any value).
    ends_at: Option<serde_json::Value>,
    /// Not read by ramp (any value).
    #[schema(rename = "generatorURL")]
    generator_url: Option<serde_json::Value>,
    /// Identifies the alert (a string of at most 64 characters; otherwise the labels do).
    fingerprint: Option<serde_json::Value>,
}
