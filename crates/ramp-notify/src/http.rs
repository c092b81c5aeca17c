//! The one HTTP client the webhook, Slack and PagerDuty channels post with: HTTPS through
//! rustls (ring, the system's roots), HTTP/1.1, a deadline over the whole exchange.

use crate::{NotifyError, Retry};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// How long one delivery may take, connect to last byte.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(15);
/// The most of a receiver's answer that is read (enough for Slack's JSON).
const MAX_ANSWER: usize = 64 * 1024;
/// The longest `Retry-After` honoured: a receiver cannot park a channel for hours.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(15 * 60);

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

fn client() -> &'static Client<Https, Full<Bytes>> {
    static CLIENT: OnceLock<Client<Https, Full<Bytes>>> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(found.certs);
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth());
        let tls = match tls {
            Ok(t) => t,
            // ring supports the default versions; kept total rather than panicking.
            Err(_) => rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map(|b| {
                b.with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            })
            .unwrap_or_else(|_| unreachable!("TLS 1.3 with ring")),
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https)
    })
}

/// A receiver's answer.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Bytes,
}

/// POSTs `body` (JSON) to `url` with `headers`. A 2xx is `Ok`; anything else is an error that
/// says whether to retry: 408, 429 (after its `Retry-After`), 5xx and transport failures
/// later; other answers never. `what` names the receiver in errors (never the URL: it may be
/// the credential, as a Slack incoming webhook's is).
pub(crate) async fn post_json(
    what: &str,
    url: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Result<Answer, NotifyError> {
    let mut req = http::Request::post(url).header("content-type", "application/json");
    req = req.header("user-agent", concat!("ramp/", env!("CARGO_PKG_VERSION")));
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| NotifyError::never(format!("{what}: the request cannot be built: {e}")))?;
    let exchange = async {
        let resp = client()
            .request(req)
            .await
            .map_err(|e| NotifyError::later(format!("{what}: {}", transport_error(&e))))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok::<_, NotifyError>((status, retry_after, body))
    };
    let (status, retry_after, body) = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| NotifyError::later(format!("{what}: no answer within {TIMEOUT:?}")))??;
    match status {
        200..=299 => Ok(Answer { status, body }),
        429 => Err(NotifyError {
            error: format!("{what}: HTTP 429 (rate limited)"),
            retry: retry_after.map_or(Retry::Later, Retry::After),
            thread: None,
        }),
        408 | 500..=599 => Err(NotifyError::later(format!("{what}: HTTP {status}"))),
        _ => Err(NotifyError::never(format!(
            "{what}: HTTP {status}{}",
            snippet(&body)
        ))),
    }
}

/// The start of a refusal's body, for the operator: one line, printable, short.
fn snippet(body: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(body)
        .chars()
        .filter(|c| !c.is_control())
        .take(120)
        .collect();
    if text.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", text.trim())
    }
}

fn transport_error(e: &hyper_util::client::legacy::Error) -> String {
    use std::error::Error;
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
