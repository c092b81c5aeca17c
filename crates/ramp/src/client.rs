//! The CLI client: `ramp status|pause|resume|approve|promote|rollback|signal|events|notices|
//! report|retire`,
//! talking to a server's HTTP API with a bearer token, in the wire types the server speaks.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ramp_wire::v1;
use serde::de::DeserializeOwned;

/// Where the API is and who we are.
#[derive(Clone, Debug)]
pub(crate) struct Client {
    base: String,
    token: Option<String>,
    http: HttpClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// What went wrong talking to the API.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    /// The server URL is not usable.
    #[error("bad server URL {0:?}: use e.g. http://127.0.0.1:7070")]
    BadUrl(String),
    /// The CA file could not be used.
    #[error("--ca-file: {0}")]
    Tls(String),
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
    /// The server answered something this client does not understand.
    #[error("unexpected answer from {0}: {1}")]
    Answer(String, String),
}

impl ClientError {
    /// Exit code: 2 for our mistakes (bad input, unknown rollout, auth), 1 otherwise.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            ClientError::BadUrl(_) | ClientError::Tls(_) => 2,
            ClientError::Api { status, .. }
                if status.is_client_error() && *status != StatusCode::CONFLICT =>
            {
                2
            }
            _ => 1,
        }
    }
}

/// An error with its causes ("client error (Connect): invalid peer certificate:
/// UnknownIssuer"), so a TLS or DNS failure says what it was.
fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A path segment with everything but unreserved characters percent-encoded, so that a name
/// can never reach another path or a query (`a b`, `x?y=1`, `../x`).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    /// A client for `server` (e.g. `http://127.0.0.1:7070`).
    /// For `https://`, the server's certificate must chain to `ca_file` (or the system's
    /// roots).
    pub(crate) fn new(
        server: &str,
        token: Option<String>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, ClientError> {
        let base = server.trim_end_matches('/').to_string();
        let https = base.starts_with("https://");
        if !(https || base.starts_with("http://")) || base.parse::<hyper::Uri>().is_err() {
            return Err(ClientError::BadUrl(server.to_string()));
        }
        let tls = ramp_proxy::tls::UpstreamTls::load(
            ramp_proxy::tls::UpstreamTlsFiles {
                ca_file: ca_file.map(Into::into),
                ..Default::default()
            },
            "api",
            "client",
            &ramp_proxy::tls::Certificates::new(),
        );
        let config = match tls {
            Ok(t) => t.client_config(),
            Err(e) if https => return Err(ClientError::Tls(e.to_string())),
            // Plain http needs no roots; an unusable store must not stop it.
            Err(_) => rustls::ClientConfig::builder_with_provider(ramp_proxy::tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| ClientError::Tls(e.to_string()))?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .build();
        let http = HttpClient::builder(TokioExecutor::new()).build(connector);
        Ok(Client { base, token, http })
    }

    /// One call; the raw body of a success.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = Request::builder().method(method).uri(&url);
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Full::new(Bytes::from(b))
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
            .map_err(|e| ClientError::Unreachable(self.base.clone(), causes(&e)))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Unreachable(self.base.clone(), e.to_string()))?
            .to_bytes();
        if status.is_success() {
            return Ok(bytes);
        }
        let message = match serde_json::from_slice::<v1::ErrorBody>(&bytes) {
            Ok(e) => {
                let mut message = e.error;
                for f in e.fields.unwrap_or_default() {
                    message.push_str(&format!("\n  {}: {}", f.field, f.message));
                }
                for p in e.errors.unwrap_or_default() {
                    message.push_str(&format!("\n  {}:{}: {}", p.line, p.col, p.message));
                }
                message
            }
            Err(_) => String::from_utf8_lossy(&bytes).into_owned(),
        };
        Err(ClientError::Api { status, message })
    }

    fn parse<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, ClientError> {
        serde_json::from_slice(bytes)
            .map_err(|e| ClientError::Answer(self.base.clone(), e.to_string()))
    }

    /// `GET /v1/rollouts` (raw JSON and typed).
    pub(crate) async fn list(&self) -> Result<(Bytes, Vec<v1::RolloutStatus>), ClientError> {
        let raw = self.call(Method::GET, "/v1/rollouts", None).await?;
        let list = self.parse(&raw)?;
        Ok((raw, list))
    }

    /// `GET /v1/rollouts/{name}` (raw JSON and typed).
    pub(crate) async fn status(
        &self,
        name: &str,
    ) -> Result<(Bytes, v1::RolloutStatus), ClientError> {
        let raw = self
            .call(
                Method::GET,
                &format!("/v1/rollouts/{}", segment(name)),
                None,
            )
            .await?;
        let status = self.parse(&raw)?;
        Ok((raw, status))
    }

    /// `POST /v1/rollouts/{name}/{action}`.
    pub(crate) async fn action(
        &self,
        name: &str,
        action: &str,
        reason: Option<&str>,
        force: bool,
    ) -> Result<v1::RolloutStatus, ClientError> {
        let body = v1::ActionRequest {
            reason: reason.map(String::from),
            force: force.then_some(true),
        };
        let raw = self
            .call(
                Method::POST,
                &format!("/v1/rollouts/{}/{action}", segment(name)),
                Some(serde_json::to_vec(&body).unwrap_or_default()),
            )
            .await?;
        self.parse(&raw)
    }

    /// `DELETE /v1/rollouts/{name}`.
    pub(crate) async fn retire(&self, name: &str) -> Result<v1::RolloutStatus, ClientError> {
        let raw = self
            .call(
                Method::DELETE,
                &format!("/v1/rollouts/{}", segment(name)),
                None,
            )
            .await?;
        self.parse(&raw)
    }

    /// `POST /v1/rollouts/{name}/signals`.
    pub(crate) async fn signal(
        &self,
        name: &str,
        signal: &v1::SignalRequest,
    ) -> Result<v1::SignalAccepted, ClientError> {
        let raw = self
            .call(
                Method::POST,
                &format!("/v1/rollouts/{}/signals", segment(name)),
                Some(serde_json::to_vec(signal).unwrap_or_default()),
            )
            .await?;
        self.parse(&raw)
    }

    /// `GET /v1/rollouts/{name}/events` (raw JSON and typed).
    pub(crate) async fn events(
        &self,
        name: &str,
        after: u64,
        limit: usize,
    ) -> Result<(Bytes, v1::EventPage), ClientError> {
        let raw = self
            .call(
                Method::GET,
                &format!(
                    "/v1/rollouts/{}/events?after={after}&limit={limit}",
                    segment(name)
                ),
                None,
            )
            .await?;
        let page = self.parse(&raw)?;
        Ok((raw, page))
    }

    /// `GET /v1/rollouts/{name}/notices` (raw JSON and typed).
    pub(crate) async fn notices(
        &self,
        name: &str,
        after: u64,
        limit: usize,
    ) -> Result<(Bytes, v1::NoticePage), ClientError> {
        let raw = self
            .call(
                Method::GET,
                &format!(
                    "/v1/rollouts/{}/notices?after={after}&limit={limit}",
                    segment(name)
                ),
                None,
            )
            .await?;
        let page = self.parse(&raw)?;
        Ok((raw, page))
    }

    /// `GET /v1/rollouts/{name}/report?kind=&format=`: the document as served.
    pub(crate) async fn report(
        &self,
        name: &str,
        kind: &str,
        format: &str,
    ) -> Result<Bytes, ClientError> {
        self.call(
            Method::GET,
            &format!(
                "/v1/rollouts/{}/report?kind={}&format={}",
                segment(name),
                segment(kind),
                segment(format)
            ),
            None,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape_their_path_segment() {
        assert_eq!(segment("payments-backend"), "payments-backend");
        assert_eq!(segment("a b"), "a%20b");
        assert_eq!(segment("x?y=1"), "x%3Fy%3D1");
        assert_eq!(segment("../admin"), "..%2Fadmin");
        assert_eq!(segment("é"), "%C3%A9");
    }
}
