//! The routes and their handlers. Each handler authenticates first, then reads and validates
//! its input, then calls [`Rollouts`] and turns the answer into JSON.

use super::ApiConfig;
use super::alertmanager::{self, AlertmanagerResult};
use super::auth::Access;
use super::doc;
use super::error::{ErrorBody, Problem, json_body};
use super::input::{self, Action};
use super::metrics;
use super::plane::Rollouts;
use super::tokens::TokenSource;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use bytes::Bytes;
use prometheus_client::registry::Registry;
use ramp_wire::v1;
use std::sync::Arc;

/// What every handler shares.
pub(crate) struct Inner<R> {
    rollouts: Arc<R>,
    tokens: TokenSource,
    open_metrics: bool,
    body_limit: usize,
    alert_body_limit: usize,
    body_timeout: std::time::Duration,
    registry: Registry,
    alerts: Arc<metrics::AlertCounts>,
    certificates: Arc<ramp_proxy::tls::Certificates>,
    openapi: Bytes,
}

type St<R> = State<Arc<Inner<R>>>;
type Name = Result<Path<String>, PathRejection>;

/// The routes, and the tokens they check (shared with the request log).
pub(crate) fn router<R: Rollouts>(rollouts: Arc<R>, config: ApiConfig) -> (Router, TokenSource) {
    let tokens = config.tokens;
    let source = {
        let rollouts = Arc::clone(&rollouts);
        Arc::new(move || rollouts.metrics())
    };
    let journal = {
        let rollouts = Arc::clone(&rollouts);
        Arc::new(move || rollouts.journal())
    };
    let openapi = super::openapi()
        .to_pretty_json()
        .map(Bytes::from)
        .unwrap_or_default();
    let alerts = Arc::new(metrics::AlertCounts::default());
    let inner = Arc::new(Inner {
        rollouts,
        tokens: tokens.clone(),
        open_metrics: config.open_metrics,
        body_limit: config.body_limit,
        alert_body_limit: config.alert_body_limit,
        body_timeout: config.limits.body_read_timeout,
        registry: metrics::registry(
            source,
            journal,
            Arc::clone(&alerts),
            Arc::clone(&config.certificates),
            Arc::clone(&config.access_log_dropped),
        ),
        alerts,
        certificates: config.certificates,
        openapi,
    });
    let router = Router::new()
        .route(
            "/v1/rollouts",
            get(list_rollouts::<R>).post(create_rollout::<R>),
        )
        .route(
            "/v1/rollouts/{name}",
            get(get_rollout::<R>).merge(delete(retire_rollout::<R>)),
        )
        .route("/v1/rollouts/{name}/events", get(list_events::<R>))
        .route("/v1/rollouts/{name}/notices", get(list_notices::<R>))
        .route("/v1/rollouts/{name}/report", get(get_report::<R>))
        .route("/v1/rollouts/{name}/pause", post(pause::<R>))
        .route("/v1/rollouts/{name}/resume", post(resume::<R>))
        .route("/v1/rollouts/{name}/approve", post(approve::<R>))
        .route("/v1/rollouts/{name}/promote", post(promote::<R>))
        .route("/v1/rollouts/{name}/rollback", post(rollback::<R>))
        .route("/v1/rollouts/{name}/signals", post(post_signal::<R>))
        .route("/v1/alertmanager", post(alertmanager::<R>))
        .route("/v1/certificates", get(list_certificates::<R>))
        .route("/v1/openapi.json", get(openapi_json::<R>))
        .route("/metrics", get(metrics::<R>))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<R>))
        .fallback(not_found)
        .layer(axum::middleware::map_response(super::error::jsonify_errors))
        .with_state(inner);
    (router, tokens)
}

impl<R: Rollouts> Inner<R> {
    /// Who is calling, if their token's role allows `access`: the token's name.
    fn authorize(&self, headers: &HeaderMap, access: Access) -> Result<String, Problem> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(Problem::unauthorized(
                "missing token: send Authorization: Bearer <token>",
            ));
        };
        let token = super::auth::bearer(value).ok_or_else(|| {
            Problem::unauthorized("malformed Authorization header: expected Bearer <token>")
        })?;
        let (name, role) = self
            .tokens
            .current()
            .check(token)
            .ok_or_else(|| Problem::unauthorized("unknown token"))?;
        if role.allows(access) {
            Ok(name)
        } else {
            Err(Problem::new(
                StatusCode::FORBIDDEN,
                format!(
                    "a {role} token may not do this: it needs the {} role",
                    access.roles()
                ),
            ))
        }
    }
}

fn rollout_name(name: Name) -> Result<String, Problem> {
    match name {
        Ok(Path(name)) => Ok(name),
        Err(_) => Err(Problem::field("name", "not a valid rollout name")),
    }
}

fn json_status<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    let mut response = json_body(value);
    *response.status_mut() = status;
    response
}

fn text(body: impl Into<Body>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        body.into(),
    )
        .into_response()
}

/// Every rollout's status.
#[utoipa::path(
    get, path = "/v1/rollouts", tag = "rollouts",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every rollout's status.", body = Vec<v1::RolloutStatus>),
        (status = 401, description = "Missing or unknown token.", body = ErrorBody),
        (status = 403, description = "The token's role may not read (ingest).", body = ErrorBody),
    )
)]
pub(crate) async fn list_rollouts<R: Rollouts>(
    State(s): St<R>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    s.authorize(&headers, Access::Read)?;
    Ok(json_status(StatusCode::OK, &s.rollouts.list()))
}

/// Every certificate the server uses: the API's and each rollout's listener, client CAs,
/// upstream CAs and client certificates, with subject, issuer, validity and fingerprint.
#[utoipa::path(
    get, path = "/v1/certificates", tag = "operations",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The certificates in use.", body = v1::CertificateList),
        (status = 401, description = "Missing or unknown token.", body = ErrorBody),
        (status = 403, description = "The token's role may not read (ingest).", body = ErrorBody),
    )
)]
pub(crate) async fn list_certificates<R: Rollouts>(
    State(s): St<R>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    s.authorize(&headers, Access::Read)?;
    let certificates = s
        .certificates
        .list()
        .into_iter()
        .map(|c| v1::Certificate {
            days_to_expiry: ramp_proxy::tls::days_to_expiry(&c),
            owner: c.owner,
            role: c.role,
            path: c.path,
            subject: c.subject,
            issuer: c.issuer,
            serial: c.serial,
            not_before: c.not_before,
            not_after: c.not_after,
            sha256: c.sha256,
        })
        .collect();
    Ok(json_status(
        StatusCode::OK,
        &v1::CertificateList {
            certificates,
            reloads: s.certificates.reloads(),
            reload_failures: s.certificates.reload_failures(),
        },
    ))
}

/// Creates and starts a rollout from a plan.
///
/// The body is the plan file itself (`application/toml` or `text/plain`; no content type is
/// read as TOML) or JSON `{"plan": "<toml>"}`. The plan is validated exactly as
/// `ramp plan check` does; every problem is reported with its line and column.
#[utoipa::path(
    post, path = "/v1/rollouts", tag = "rollouts",
    security(("bearer" = [])),
    request_body(
        description = "The plan (TOML), or JSON {\"plan\": \"<toml>\"}.",
        content(
            (String = "application/toml"),
            (String = "text/plain"),
            (v1::CreateRequest = "application/json"),
        )
    ),
    responses(
        (status = 201, description = "Created and started.", body = v1::RolloutStatus),
        (status = 400, description = "Invalid plan (`errors`, with positions), a plan without `[upstreams]`, or an invalid request (`fields`). Nothing is created.", body = ErrorBody),
        (status = 401, description = "Missing or unknown token.", body = ErrorBody),
        (status = 403, description = "Only admin tokens may create rollouts; or the plan listens beyond loopback or names an upstream the server does not allow (`ramp serve --allow-listen`, `--allow-upstream`).", body = ErrorBody),
        (status = 409, description = "A rollout by that name exists, or its proxy address is taken.", body = ErrorBody),
        (status = 413, description = "Body over the limit.", body = ErrorBody),
        (status = 415, description = "Unsupported content type.", body = ErrorBody),
        (status = 503, description = "The store is unavailable.", body = ErrorBody),
    )
)]
pub(crate) async fn create_rollout<R: Rollouts>(
    State(s): St<R>,
    request: Request,
) -> Result<Response, Problem> {
    let (parts, body) = request.into_parts();
    s.authorize(&parts.headers, Access::Create)?;
    let bytes = input::read_body(&parts.headers, body, s.body_limit, s.body_timeout).await?;
    let plan = input::plan_text(&parts.headers, &bytes)?;
    let status = s.rollouts.create(&plan).await?;
    Ok(json_status(StatusCode::CREATED, &status))
}

/// One rollout's status.
#[utoipa::path(
    get, path = "/v1/rollouts/{name}", tag = "rollouts",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The rollout's name.")),
    responses(
        (status = 200, description = "The rollout's status.", body = v1::RolloutStatus),
        (status = 401, description = "Missing or unknown token.", body = ErrorBody),
        (status = 403, description = "The token's role may not read (ingest).", body = ErrorBody),
        (status = 404, description = "No rollout by that name.", body = ErrorBody),
    )
)]
pub(crate) async fn get_rollout<R: Rollouts>(
    State(s): St<R>,
    headers: HeaderMap,
    name: Name,
) -> Result<Response, Problem> {
    s.authorize(&headers, Access::Read)?;
    let name = rollout_name(name)?;
    match s.rollouts.status(&name) {
        Some(status) => Ok(json_status(StatusCode::OK, &status)),
        None => Err(Problem::not_found(format!("no rollout named {name:?}"))),
    }
}

/// A page of a rollout's journal.
#[utoipa::path(
    get, path = "/v1/rollouts/{name}/events", tag = "rollouts",
    security(("bearer" = [])),
    params(
        ("name" = String, Path, description = "The rollout's name."),
        ("after" = Option<u64>, Query, description = "Entries after this position (default 0: from the start).", minimum = 0, maximum = 9223372036854775807_i64),
        ("limit" = Option<u32>, Query, description = "At most this many entries (1 to 1000, default 100).", minimum = 1, maximum = 1000),
    ),
    responses(
        (status = 200, description = "Entries with `seq > after`, oldest first.", body = v1::EventPage),
        (status = 400, description = "Bad `after` or `limit`.", body = ErrorBody),
        (status = 401, description = "Missing or unknown token.", body = ErrorBody),
        (status = 403, description = "The token's role may not read (ingest).", body = ErrorBody),
        (status = 404, description = "No rollout by that name.", body = ErrorBody),
        (status = 503, description = "The store is unavailable.", body = ErrorBody),
    )
)]
pub(crate) async fn list_events<R: Rollouts>(
    State(s): St<R>,
    headers: HeaderMap,
    name: Name,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, Problem> {
    s.authorize(&headers, Access::Read)?;
    let name = rollout_name(name)?;
    let Ok(Query(pairs)) = query else {
        return Err(Problem::field("query", "malformed query string"));
    };
    let (after, limit) = input::page(&pairs)?;
    let page = s.rollouts.events(&name, after, limit).await?;
    Ok(json_status(StatusCode::OK, &page))
}

/// A page of a rollout's notices: what was sent, to which groups and channels, when, and how
/// each delivery went (attempts, the latest error, delivered or failed).
#[utoipa::path(
    get, path = "/v1/rollouts/{name}/notices", tag = "rollouts",
    security(("bearer" = [])),
    params(
        ("name" = String, Path, description = "The rollout's name."),
        ("after" = Option<u64>, Query, description = "Notices with an id after this (default 0: from the start).", minimum = 0, maximum = 9223372036854775807_i64),
        ("limit" = Option<u32>, Query, description = "At most this many notices (1 to 1000, default 100).", minimum = 1, maximum = 1000),
    ),
    responses(
        (status = 200, description = "Notices with `id > after`, oldest first.", body = v1::NoticePage),
        (status = 400, description = "Bad `after` or `limit`.", body = ErrorBody),
        (status = 401, description = "Missing or unknown token.", body = ErrorBody),
        (status = 403, description = "The token's role may not read (ingest).", body = ErrorBody),
        (status = 404, description = "No rollout by that name.", body = ErrorBody),
        (status = 503, description = "The store is unavailable.", body = ErrorBody),
    )
)]
pub(crate) async fn list_notices<R: Rollouts>(
    State(s): St<R>,
    headers: HeaderMap,
    name: Name,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, Problem> {
    s.authorize(&headers, Access::Read)?;
    let name = rollout_name(name)?;
    let Ok(Query(pairs)) = query else {
        return Err(Problem::field("query", "malformed query string"));
    };
    let (after, limit) = input::page(&pairs)?;
    let page = s.rollouts.notices(&name, after, limit).await?;
    Ok(json_status(StatusCode::OK, &page))
}

/// A report on a rollout, built from its journal now: `status`, `daily`, `final` (the success
/// metrics measured against their targets, per phase and overall) or `incident` (the
/// rollback's trigger, evidence, timeline and blast radius), as Markdown, self-contained HTML
/// with SVG charts, or JSON.
#[utoipa::path(
    get, path = "/v1/rollouts/{name}/report", tag = "rollouts",
    security(("bearer" = [])),
    params(
        ("name" = String, Path, description = "The rollout's name."),
        ("kind" = Option<String>, Query, description = "status (default), daily, final or incident.", pattern = "^(status|daily|final|incident)$"),
        ("format" = Option<String>, Query, description = "md (default), html or json.", pattern = "^(md|html|json)$"),
    ),
    responses(
        (status = 200, description = "The report, in the media type `format` asks for.", content(
            (String = "text/markdown"),
            (String = "text/html"),
            (Object = "application/json"),
        )),
        (status = 400, description = "Unknown `kind` or `format`.", body = ErrorBody),
        (status = 401, description = "Missing or unknown token.", body = ErrorBody),
        (status = 403, description = "The token's role may not read (ingest).", body = ErrorBody),
        (status = 404, description = "No rollout by that name.", body = ErrorBody),
        (status = 409, description = "No such report yet (an incident review before any rollback).", body = ErrorBody),
        (status = 503, description = "The store is unavailable.", body = ErrorBody),
    )
)]
pub(crate) async fn get_report<R: Rollouts>(
    State(s): St<R>,
    headers: HeaderMap,
    name: Name,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, Problem> {
    s.authorize(&headers, Access::Read)?;
    let name = rollout_name(name)?;
    let Ok(Query(pairs)) = query else {
        return Err(Problem::field("query", "malformed query string"));
    };
    let (mut kind, mut format) = (v1::ReportDoc::Status, v1::ReportFormat::Md);
    for (k, v) in &pairs {
        match k.as_str() {
            "kind" => {
                kind = v1::ReportDoc::parse(v).ok_or_else(|| {
                    Problem::field("kind", "must be status, daily, final or incident")
                })?
            }
            "format" => {
                format = v1::ReportFormat::parse(v)
                    .ok_or_else(|| Problem::field("format", "must be md, html or json"))?
            }
            other => {
                return Err(Problem::field(
                    other,
                    "unknown query parameter (kind, format)",
                ));
            }
        }
    }
    let body = s.rollouts.report(&name, kind, format).await?;
    let mut resp = (StatusCode::OK, body).into_response();
    if let Ok(v) = HeaderValue::from_str(format.content_type()) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    Ok(resp)
}

/// Retires a rollout that has ended (completed or rolled back): its proxy stops listening and
/// its controller stops; its status and journal stay readable, and it is not resumed again.
#[utoipa::path(
    delete, path = "/v1/rollouts/{name}", tag = "rollouts",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The rollout's name.")),
    responses(
        (status = 200, description = "Retired: its final status.", body = v1::RolloutStatus),
        (status = 401, description = "Missing or unknown token.", body = ErrorBody),
        (status = 403, description = "Only admin tokens may retire rollouts.", body = ErrorBody),
        (status = 404, description = "No rollout by that name.", body = ErrorBody),
        (status = 409, description = "The rollout has not ended (roll it back or let it complete first).", body = ErrorBody),
        (status = 503, description = "The store is unavailable.", body = ErrorBody),
    )
)]
pub(crate) async fn retire_rollout<R: Rollouts>(
    State(s): St<R>,
    headers: HeaderMap,
    name: Name,
) -> Result<Response, Problem> {
    s.authorize(&headers, Access::Create)?;
    let name = rollout_name(name)?;
    let status = s.rollouts.retire(&name).await?;
    Ok(json_status(StatusCode::OK, &status))
}

async fn action<R: Rollouts>(
    s: Arc<Inner<R>>,
    name: Name,
    request: Request,
    action: Action,
) -> Result<Response, Problem> {
    let (parts, body) = request.into_parts();
    let by = s.authorize(&parts.headers, Access::Operate)?;
    let name = rollout_name(name)?;
    let bytes = input::read_body(&parts.headers, body, s.body_limit, s.body_timeout).await?;
    let value = input::json(&parts.headers, &bytes)?;
    let command = input::command(action, value, &by).map_err(Problem::fields)?;
    let status = s.rollouts.command(&name, command).await?;
    Ok(json_status(StatusCode::OK, &status))
}

/// Pauses the phase clock (rollback triggers keep firing).
#[utoipa::path(
    post, path = "/v1/rollouts/{name}/pause", tag = "actions",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The rollout's name.")),
    request_body(content = Option<v1::PlainActionRequest>, description = "Optional: `reason`."),
    responses(
        (status = 200, description = "Paused: the new status.", body = v1::RolloutStatus),
        (status = 400, description = "Invalid body.", body = ErrorBody),
        (status = 401, description = "Missing or unknown token.", body = ErrorBody),
        (status = 403, description = "Needs operator or admin.", body = ErrorBody),
        (status = 404, description = "No rollout by that name.", body = ErrorBody),
        (status = 409, description = "The current state does not allow it.", body = ErrorBody),
        (status = 413, description = "Body over the limit.", body = ErrorBody),
        (status = 415, description = "Body is not JSON.", body = ErrorBody),
        (status = 503, description = "The store is unavailable.", body = ErrorBody),
    )
)]
pub(crate) async fn pause<R: Rollouts>(
    State(s): St<R>,
    name: Name,
    request: Request,
) -> Result<Response, Problem> {
    action(s, name, request, Action::Pause).await
}

/// Resumes after a pause.
#[utoipa::path(
    post, path = "/v1/rollouts/{name}/resume", tag = "actions",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The rollout's name.")),
    request_body(content = Option<v1::PlainActionRequest>, description = "Optional; no fields needed."),
    responses(
        (status = 200, description = "Resumed: the new status.", body = v1::RolloutStatus),
        (status = 400, description = "Invalid body.", body = ErrorBody),
        (status = 401, description = "Missing or unknown token.", body = ErrorBody),
        (status = 403, description = "Needs operator or admin.", body = ErrorBody),
        (status = 404, description = "No rollout by that name.", body = ErrorBody),
        (status = 409, description = "The current state does not allow it.", body = ErrorBody),
        (status = 413, description = "Body over the limit.", body = ErrorBody),
        (status = 415, description = "Body is not JSON.", body = ErrorBody),
        (status = 503, description = "The store is unavailable.", body = ErrorBody),
    )
)]
pub(crate) async fn resume<R: Rollouts>(
    State(s): St<R>,
    name: Name,
    request: Request,
) -> Result<Response, Problem> {
    action(s, name, request, Action::Resume).await
}

/// Approves the next phase when it waits for approval.
#[utoipa::path(
    post, path = "/v1/rollouts/{name}/approve", tag = "actions",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The rollout's name.")),
    request_body(content = Option<v1::PlainActionRequest>, description = "Optional; no fields needed."),
    responses(
        (status = 200, description = "Approved: the new status.", body = v1::RolloutStatus),
        (status = 400, description = "Invalid body.", body = ErrorBody),
        (status = 401, description = "Missing or unknown token.", body = ErrorBody),
        (status = 403, description = "Needs operator or admin.", body = ErrorBody),
        (status = 404, description = "No rollout by that name.", body = ErrorBody),
        (status = 409, description = "Nothing awaits approval.", body = ErrorBody),
        (status = 413, description = "Body over the limit.", body = ErrorBody),
        (status = 415, description = "Body is not JSON.", body = ErrorBody),
        (status = 503, description = "The store is unavailable.", body = ErrorBody),
    )
)]
pub(crate) async fn approve<R: Rollouts>(
    State(s): St<R>,
    name: Name,
    request: Request,
) -> Result<Response, Problem> {
    action(s, name, request, Action::Approve).await
}

/// Promotes to the next phase now.
///
/// Without `force` only when every gate already passes (the gates are judged again); with
/// `force` and a `reason` even when they do not, journaled as forced.
#[utoipa::path(
    post, path = "/v1/rollouts/{name}/promote", tag = "actions",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The rollout's name.")),
    request_body(content = Option<v1::ActionRequest>, description = "Optional: `force` (then `reason` is required)."),
    responses(
        (status = 200, description = "Promoted: the new status.", body = v1::RolloutStatus),
        (status = 400, description = "Invalid body, e.g. force without a reason.", body = ErrorBody),
        (status = 401, description = "Missing or unknown token.", body = ErrorBody),
        (status = 403, description = "Needs operator or admin.", body = ErrorBody),
        (status = 404, description = "No rollout by that name.", body = ErrorBody),
        (status = 409, description = "Gates not passed (without force) or the state does not allow it.", body = ErrorBody),
        (status = 413, description = "Body over the limit.", body = ErrorBody),
        (status = 415, description = "Body is not JSON.", body = ErrorBody),
        (status = 503, description = "The store is unavailable.", body = ErrorBody),
    )
)]
pub(crate) async fn promote<R: Rollouts>(
    State(s): St<R>,
    name: Name,
    request: Request,
) -> Result<Response, Problem> {
    action(s, name, request, Action::Promote).await
}

/// Sends all traffic back to stable.
#[utoipa::path(
    post, path = "/v1/rollouts/{name}/rollback", tag = "actions",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The rollout's name.")),
    request_body(content = v1::RollbackRequest, description = "`reason` is required."),
    responses(
        (status = 200, description = "Rolled back: the new status.", body = v1::RolloutStatus),
        (status = 400, description = "Invalid body, e.g. no reason.", body = ErrorBody),
        (status = 401, description = "Missing or unknown token.", body = ErrorBody),
        (status = 403, description = "Needs operator or admin.", body = ErrorBody),
        (status = 404, description = "No rollout by that name.", body = ErrorBody),
        (status = 409, description = "Already ended.", body = ErrorBody),
        (status = 413, description = "Body over the limit.", body = ErrorBody),
        (status = 415, description = "Body is not JSON.", body = ErrorBody),
        (status = 503, description = "The store is unavailable.", body = ErrorBody),
    )
)]
pub(crate) async fn rollback<R: Rollouts>(
    State(s): St<R>,
    name: Name,
    request: Request,
) -> Result<Response, Problem> {
    action(s, name, request, Action::Rollback).await
}

/// Records a signal; answers once it is durable.
#[utoipa::path(
    post, path = "/v1/rollouts/{name}/signals", tag = "signals",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The rollout's name.")),
    request_body = v1::SignalRequest,
    responses(
        (status = 202, description = "Recorded durably (or, with an `id` already counted, recognised as a repeat); its journal position.", body = v1::SignalAccepted),
        (status = 400, description = "Invalid signal; `fields` names each bad field.", body = ErrorBody),
        (status = 401, description = "Missing or unknown token.", body = ErrorBody),
        (status = 403, description = "Needs ingest or admin.", body = ErrorBody),
        (status = 404, description = "No rollout by that name.", body = ErrorBody),
        (status = 409, description = "The rollout was retired: it takes no more signals. (A rollout that completed or rolled back still journals signals, with 202, and counts them toward nothing.)", body = ErrorBody),
        (status = 413, description = "Body over the limit.", body = ErrorBody),
        (status = 415, description = "Body is not JSON.", body = ErrorBody),
        (status = 503, description = "The store is unavailable: not recorded, retry.", body = ErrorBody),
    )
)]
pub(crate) async fn post_signal<R: Rollouts>(
    State(s): St<R>,
    name: Name,
    request: Request,
) -> Result<Response, Problem> {
    let (parts, body) = request.into_parts();
    let who = s.authorize(&parts.headers, Access::Ingest)?;
    let name = rollout_name(name)?;
    let bytes = input::read_body(&parts.headers, body, s.body_limit, s.body_timeout).await?;
    let value = input::json(&parts.headers, &bytes)?;
    let (signal, id) = input::signal(value).map_err(Problem::fields)?;
    let recorded = s
        .rollouts
        .signal(
            &name,
            signal,
            id.map(|i| format!("id {i}")),
            format!("token {who}"),
        )
        .await?;
    Ok(json_status(
        StatusCode::ACCEPTED,
        &v1::SignalAccepted {
            seq: recorded.seq,
            duplicate: recorded.duplicate,
        },
    ))
}

/// Prometheus Alertmanager webhook receiver.
///
/// Configure a webhook receiver with `http_config.authorization.credentials` set to an ingest
/// token. Bodies up to 16 MiB are taken (an alert storm). An alert that cannot be taken (its
/// `rollout` names no rollout, or one that takes no more signals) fails alone, listed in
/// `errors`, and the answer is 422 so that Alertmanager logs it (it does not retry a 4xx; the
/// other alerts were recorded). When the store is unavailable the answer is 503 so that
/// Alertmanager retries; alerts already recorded are then skipped as duplicates.
#[utoipa::path(
    post, path = "/v1/alertmanager", tag = "signals",
    security(("bearer" = [])),
    request_body = doc::AlertmanagerPayload,
    responses(
        (status = 200, description = "Every alert accepted or skipped.", body = AlertmanagerResult),
        (status = 400, description = "Not a version 4 webhook payload.", body = ErrorBody),
        (status = 401, description = "Missing or unknown token.", body = ErrorBody),
        (status = 403, description = "Needs ingest or admin.", body = ErrorBody),
        (status = 413, description = "Body over the limit.", body = ErrorBody),
        (status = 415, description = "Body is not JSON.", body = ErrorBody),
        (status = 422, description = "Some alerts could not be taken (listed in `errors`); the others were recorded.", body = AlertmanagerResult),
        (status = 503, description = "Some alerts could not be stored; retry.", body = AlertmanagerResult),
    )
)]
pub(crate) async fn alertmanager<R: Rollouts>(
    State(s): St<R>,
    request: Request,
) -> Result<Response, Problem> {
    let (parts, body) = request.into_parts();
    let who = s.authorize(&parts.headers, Access::Ingest)?;
    let bytes = input::read_body(&parts.headers, body, s.alert_body_limit, s.body_timeout).await?;
    let value = input::json(&parts.headers, &bytes)?;
    let items = alertmanager::parse(value)?;
    let (mut result, unavailable) = alertmanager::deliver(
        &*s.rollouts,
        items,
        &format!("alertmanager via token {who}"),
    )
    .await;
    {
        use std::sync::atomic::Ordering::Relaxed;
        let a = &s.alerts;
        a.accepted.fetch_add(result.accepted, Relaxed);
        a.duplicates.fetch_add(result.duplicates, Relaxed);
        a.skipped
            .fetch_add(result.skipped.saturating_sub(result.duplicates), Relaxed);
        a.errors.fetch_add(result.errors.len() as u64, Relaxed);
    }
    let status = if unavailable {
        StatusCode::SERVICE_UNAVAILABLE
    } else if !result.errors.is_empty() {
        result.error = Some(format!(
            "{} alert(s) could not be taken (see errors); {} accepted",
            result.errors.len(),
            result.accepted
        ));
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    Ok(json_status(status, &result))
}

/// Prometheus exposition: the Prometheus text format 0.0.4 by default, OpenMetrics 1.0 when
/// the `Accept` header prefers `application/openmetrics-text` (as Prometheus itself does).
///
/// Per rollout and variant: `ramp_requests_total`, `ramp_errors_total`,
/// `ramp_successes_total`, `ramp_rate_limited_total`, `ramp_auth_failures_total`, the
/// histogram `ramp_request_duration_seconds` and `ramp_backend_health{state}`; per rollout:
/// `ramp_rollout_share_ratio`, `ramp_rollout_phase`, `ramp_rollout_status{status}`,
/// `ramp_phase_elapsed_seconds`, `ramp_phase_duration_seconds`,
/// `ramp_gate_verdict{criterion,scope,outcome}`, `ramp_trigger_progress_ratio{trigger}`,
/// `ramp_signals_total{kind,severity}`, `ramp_feedback_positive_total`; per server:
/// `ramp_journal_errors_total{op}`, `ramp_journal_failing`,
/// `ramp_journal_last_write_timestamp_seconds`, `ramp_alertmanager_alerts_total{result}`,
/// `ramp_build_info{version}`. Counters move with every 100 ms evidence batch (published at
/// least once a second). Needs a viewer, operator or admin token unless the server opened it.
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    security(("bearer" = []), ()),
    responses(
        (status = 200, description = "The exposition.", content(
            (String = "text/plain; version=0.0.4; charset=utf-8"),
            (String = "application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )),
        (status = 401, description = "Missing or unknown token.", body = ErrorBody),
        (status = 403, description = "The token's role may not read (ingest).", body = ErrorBody),
    )
)]
pub(crate) async fn metrics<R: Rollouts>(
    State(s): St<R>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    if !s.open_metrics {
        s.authorize(&headers, Access::Read)?;
    }
    let text = metrics::encode(&s.registry).map_err(|_| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics could not be encoded",
        )
    })?;
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, text) = if metrics::wants_openmetrics(accept) {
        (metrics::CONTENT_TYPE, text)
    } else {
        (metrics::TEXT_CONTENT_TYPE, metrics::to_text_format(&text))
    };
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::VARY, HeaderValue::from_static("accept")),
        ],
        text,
    )
        .into_response())
}

/// Liveness: always 200 `ok`.
#[utoipa::path(
    get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive.", body = String, content_type = "text/plain"))
)]
pub(crate) async fn healthz() -> Response {
    text("ok\n")
}

/// Readiness of the control plane: 200 `ready` once the API serves and the journal takes
/// writes; 503 with the journal's error while its latest write failed (signals and commands
/// are refused then, rollbacks still happen). The proxies keep serving either way: gate
/// proxy traffic on `/healthz`, not on this. A rollout that could not be resumed does not make
/// the server unready (that would take every other rollout out of rotation too): it shows in
/// `/metrics` as `ramp_rollout_status{status="unavailable"}`.
#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready.", body = String, content_type = "text/plain"),
        (status = 503, description = "The journal cannot be written: since when, and why.", body = ErrorBody),
    )
)]
pub(crate) async fn readyz<R: Rollouts>(State(s): St<R>) -> Response {
    match s.rollouts.journal().failing {
        None => text("ready\n"),
        Some((since, why)) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: the journal cannot be written (failing since Unix time {}): {why}",
                since / 1000
            ),
        )
        .into_response(),
    }
}

/// This document.
#[utoipa::path(
    get, path = "/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document.", body = Object))
)]
pub(crate) async fn openapi_json<R: Rollouts>(State(s): St<R>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        Body::from(s.openapi.clone()),
    )
        .into_response()
}

async fn not_found() -> Problem {
    Problem::not_found("no such endpoint")
}
