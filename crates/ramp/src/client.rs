//! The CLI client: `ramp status|pause|resume|approve|promote|rollback|signal|events`, talking
//! to a server's HTTP API with a bearer token.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Where the API is and who we are.
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: HttpClient<HttpConnector, Full<Bytes>>,
}

/// What went wrong talking to the API.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server URL is not usable.
    #[error("bad server URL {0:?}: use e.g. http://127.0.0.1:7070")]
    BadUrl(String),
    /// Could not reach the server.
    #[error("cannot reach {0}: {1}")]
    Unreachable(String, String),
    /// The server answered with an error.
    #[error("{status}: {message}")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// The error message (and field details) from the body.
        message: String,
    },
}

impl ClientError {
    /// Exit code: 2 for our mistakes (bad input, unknown rollout, auth), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::BadUrl(_) => 2,
            ClientError::Api { status, .. }
                if status.is_client_error() && *status != StatusCode::CONFLICT =>
            {
                2
            }
            _ => 1,
        }
    }
}

impl Client {
    /// A client for `server` (e.g. `http://127.0.0.1:7070`).
    pub fn new(server: &str, token: Option<String>) -> Result<Self, ClientError> {
        let base = server.trim_end_matches('/').to_string();
        if !base.starts_with("http://") || base.parse::<hyper::Uri>().is_err() {
            return Err(ClientError::BadUrl(server.to_string()));
        }
        let http = HttpClient::builder(TokioExecutor::new()).build_http();
        Ok(Client { base, token, http })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = Request::builder().method(method).uri(&url);
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Full::new(Bytes::from(v.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let req = req
            .body(body)
            .map_err(|_| ClientError::BadUrl(url.clone()))?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| ClientError::Unreachable(self.base.clone(), e.to_string()))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Unreachable(self.base.clone(), e.to_string()))?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        if status.is_success() {
            return Ok(value);
        }
        let mut message = value
            .get("error")
            .and_then(Value::as_str)
            .map(String::from)
            .unwrap_or_else(|| value.to_string());
        for key in ["fields", "errors"] {
            if let Some(items) = value.get(key).and_then(Value::as_array) {
                for item in items {
                    let what = item
                        .get("field")
                        .and_then(Value::as_str)
                        .map(String::from)
                        .or_else(|| {
                            Some(format!(
                                "{}:{}",
                                item.get("line")?.as_u64()?,
                                item.get("col")?.as_u64()?
                            ))
                        })
                        .unwrap_or_default();
                    let msg = item.get("message").and_then(Value::as_str).unwrap_or("");
                    message.push_str(&format!("\n  {what}: {msg}"));
                }
            }
        }
        Err(ClientError::Api { status, message })
    }

    /// `GET /v1/rollouts[/{name}]`.
    pub async fn status(&self, name: Option<&str>) -> Result<Value, ClientError> {
        match name {
            Some(n) => {
                self.call(Method::GET, &format!("/v1/rollouts/{n}"), None)
                    .await
            }
            None => self.call(Method::GET, "/v1/rollouts", None).await,
        }
    }

    /// `POST /v1/rollouts/{name}/{action}`.
    pub async fn action(
        &self,
        name: &str,
        action: &str,
        reason: Option<&str>,
        force: bool,
    ) -> Result<Value, ClientError> {
        let mut body = serde_json::Map::new();
        if let Some(r) = reason {
            body.insert("reason".into(), Value::String(r.to_string()));
        }
        if force {
            body.insert("force".into(), Value::Bool(true));
        }
        self.call(
            Method::POST,
            &format!("/v1/rollouts/{name}/{action}"),
            Some(Value::Object(body)),
        )
        .await
    }

    /// `POST /v1/rollouts/{name}/signals`.
    pub async fn signal(&self, name: &str, signal: Value) -> Result<Value, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/rollouts/{name}/signals"),
            Some(signal),
        )
        .await
    }

    /// `GET /v1/rollouts/{name}/events`.
    pub async fn events(&self, name: &str, after: u64, limit: usize) -> Result<Value, ClientError> {
        self.call(
            Method::GET,
            &format!("/v1/rollouts/{name}/events?after={after}&limit={limit}"),
            None,
        )
        .await
    }
}

fn pct(v: &Value) -> String {
    v.as_f64()
        .map(ramp_core::report::pct)
        .unwrap_or_else(|| "-".into())
}

/// A rollout's status for people.
pub fn render_status(s: &Value) -> String {
    let g = |k: &str| s.get(k).cloned().unwrap_or(Value::Null);
    let text = |v: Value| {
        v.as_str()
            .map(String::from)
            .unwrap_or_else(|| v.to_string())
    };
    let mut out = String::new();
    let elapsed = g("phase_elapsed").as_u64().unwrap_or(0);
    let duration = g("phase_duration").as_u64().unwrap_or(0);
    out += &format!(
        "{}  {}  health {}  phase {} ({}/{}{})  canary share {}%  proxy {}\n",
        text(g("name")),
        text(g("status")),
        text(g("health")),
        text(g("phase_name")),
        ramp_core::time::Human(elapsed),
        ramp_core::time::Human(duration),
        if g("extended").as_bool() == Some(true) {
            ", extended"
        } else {
            ""
        },
        g("share")
            .as_u64()
            .map(|bp| format!("{}", bp as f64 / 100.0))
            .unwrap_or_default(),
        text(g("listen")),
    );
    out += &format!(
        "  {:<7} {:>8} {:>11} {:>9} {:>9} {:>9} {:>8}  {}\n",
        "", "req/s", "requests", "errors", "p95", "success", "users", "backend"
    );
    for v in ["stable", "canary"] {
        let m = g(v);
        let f = |k: &str| m.get(k).cloned().unwrap_or(Value::Null);
        out += &format!(
            "  {:<7} {:>8.0} {:>11} {:>9} {:>9} {:>9} {:>8}  {}\n",
            v,
            f("rps").as_f64().unwrap_or(0.0),
            f("requests").as_u64().unwrap_or(0),
            pct(&f("error_rate")),
            f("p95_ms")
                .as_f64()
                .map(ramp_core::report::ms)
                .unwrap_or("-".into()),
            pct(&f("success_rate")),
            f("active_users").as_u64().unwrap_or(0),
            f("health").as_str().unwrap_or("-"),
        );
    }
    if let Some(vs) = g("verdicts").as_array() {
        for v in vs {
            let o = v
                .get("outcome")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_uppercase();
            out += &format!(
                "  {:<12} {} — {}\n",
                o,
                v.get("criterion").and_then(Value::as_str).unwrap_or(""),
                v.get("explanation").and_then(Value::as_str).unwrap_or("")
            );
        }
    }
    if let Some(r) = g("reason").as_str() {
        out += &format!("  reason: {r}\n");
    }
    out
}
