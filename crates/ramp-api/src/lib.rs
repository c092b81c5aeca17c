//! The HTTP API: the control plane over HTTP, with bearer tokens and roles.
//!
//! The API never decides anything: every request is authenticated, validated and then handed to
//! a [`Rollouts`] implementation (the server, or a fake in tests), whose answer is turned into
//! JSON. Endpoints (all JSON unless noted):
//!
//! | method | path | role |
//! | --- | --- | --- |
//! | GET | `/v1/rollouts`, `/v1/rollouts/{name}`, `/v1/rollouts/{name}/events` | viewer |
//! | POST | `/v1/rollouts` (plan TOML, or JSON `{"plan": ..}`) | admin |
//! | POST | `/v1/rollouts/{name}/pause|resume|approve|promote|rollback` | operator |
//! | POST | `/v1/rollouts/{name}/signals`, `/v1/alertmanager` | ingest |
//! | GET | `/metrics` (Prometheus/OpenMetrics text) | viewer, or none with `open_metrics` |
//! | GET | `/healthz`, `/readyz`, `/v1/openapi.json` | none |
//!
//! `admin` may do everything; `operator` may also read; `ingest` may only send signals.
//! Every error is JSON (`{"error": ..}`, plus `fields` naming each bad field for 400s); client
//! input never causes a 500.

mod alertmanager;
mod auth;
mod doc;
mod error;
mod handlers;
mod input;
mod metrics;
mod plane;
mod server;
mod tokens;

pub use auth::{Role, Tokens};
pub use doc::openapi;
pub use plane::{ControlError, JournalHealth, Recorded, RolloutDetail, RolloutMetrics, Rollouts};
pub use server::ApiLimits;
use std::sync::Arc;
pub use tokens::{
    TokenEntry, TokenSource, TokensFileError, add_token, list_tokens, read_tokens, revoke_token,
};

/// Why an API configuration call failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApiError {
    /// A configured token hash is not a SHA-256 digest in hex.
    #[error("token {name:?}: expected a SHA-256 hash as 64 hexadecimal digits")]
    InvalidHash {
        /// The token's name.
        name: String,
    },
    /// A role name that is not one of viewer, operator, admin, ingest.
    #[error("unknown role {0:?}: expected viewer, operator, admin or ingest")]
    UnknownRole(String),
}

/// The default request body limit: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1 << 20;

/// Largest Alertmanager webhook body accepted by default: 16 MiB. Alertmanager does not retry
/// a 4xx, so a batch refused for its size (an alert storm groups thousands of alerts) would be
/// lost, PCI alert included.
pub const DEFAULT_ALERT_BODY_LIMIT: usize = 16 << 20;

/// How the API runs.
#[derive(Debug)]
pub struct ApiConfig {
    /// Who may call it.
    pub tokens: TokenSource,
    /// Serve `/metrics` without a token.
    pub open_metrics: bool,
    /// Largest request body accepted, in bytes (larger: 413).
    pub body_limit: usize,
    /// Largest Alertmanager webhook body accepted, in bytes (larger: 413).
    pub alert_body_limit: usize,
    /// Connection cap and timeouts of the listener.
    pub limits: ApiLimits,
    /// Write one line per request to stderr (masked path, status, latency, token name).
    pub request_log: bool,
    /// TLS on the API's listener; `None`: cleartext.
    pub tls: Option<Arc<ramp_proxy::tls::ServerTls>>,
    /// Every certificate the server uses (`GET /v1/certificates`, `/metrics`).
    pub certificates: Arc<ramp_proxy::tls::Certificates>,
    /// Access-log lines the server's proxies dropped (`/metrics`).
    pub access_log_dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            tokens: TokenSource::fixed(Tokens::new()),
            open_metrics: false,
            body_limit: DEFAULT_BODY_LIMIT,
            alert_body_limit: DEFAULT_ALERT_BODY_LIMIT,
            limits: ApiLimits::default(),
            request_log: false,
            tls: None,
            certificates: Arc::default(),
            access_log_dropped: Arc::default(),
        }
    }
}

/// The API's routes over a [`Rollouts`] implementation.
pub fn router<R: Rollouts>(rollouts: Arc<R>, config: ApiConfig) -> axum::Router {
    handlers::router(rollouts, config).0
}

/// Serves the API on `listener` until `stop` turns true (then drains open requests), over
/// HTTP/1.1 on the listener the proxy uses too ([`ramp_proxy::listen`]), with the connection
/// cap and deadlines of `config.limits`.
pub async fn serve<R: Rollouts>(
    listener: tokio::net::TcpListener,
    rollouts: Arc<R>,
    config: ApiConfig,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let limits = config.limits.clone();
    let request_log = config.request_log;
    let tls = config.tls.clone();
    let (app, tokens) = handlers::router(rollouts, config);
    let log = request_log.then(|| Arc::new(server::RequestLog::new(tokens)));
    server::run(listener, app, limits, tls, log, stop).await
}
