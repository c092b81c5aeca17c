//! The API's listener: HTTP/1.1 with keep-alive, a cap on open connections, a deadline for each
//! request head (slow or idle clients are cut off), graceful shutdown, and an optional request
//! log. The API shares its process with the proxy, so a flood of idle API connections must not
//! be able to use up the file descriptors the proxy needs.

use super::tokens::TokenSource;
use http::header;
use hyper::body::Incoming;
use hyper_util::service::TowerToHyperService;
use ramp_proxy::listen;
use ramp_proxy::mask_pans;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// Limits of the API listener.
#[derive(Clone, Debug)]
pub struct ApiLimits {
    /// Most connections open at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// A request head must arrive within this time, and an idle keep-alive connection is
    /// closed after it.
    pub header_read_timeout: Duration,
    /// A request body must arrive within this time (else 408).
    pub body_read_timeout: Duration,
    /// A write to a client that stays blocked this long (the client stopped reading) closes
    /// the connection.
    pub write_timeout: Duration,
    /// On shutdown, open requests get this long to finish.
    pub drain_timeout: Duration,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_connections: 256,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// One line per API request: `api 127.0.0.1 POST /v1/rollouts/x/pause 200 1.2ms by alice`.
/// The path is PAN-masked; tokens, bodies and query values other than the path are never
/// written (the caller is named by its token's name).
pub(crate) struct RequestLog {
    tokens: TokenSource,
}

impl RequestLog {
    pub(crate) fn new(tokens: TokenSource) -> Self {
        RequestLog { tokens }
    }

    /// What the log line says about a request (taken before the request is handed on).
    fn head<B>(&self, req: &http::Request<B>, peer: SocketAddr) -> Head {
        Head {
            peer,
            method: req.method().clone(),
            path: mask_pans(req.uri().path()).into_owned(),
            caller: self.caller(req.headers()),
        }
    }

    fn caller(&self, headers: &http::HeaderMap) -> String {
        headers
            .get(header::AUTHORIZATION)
            .and_then(super::auth::bearer)
            .and_then(|token| self.tokens.current().check(token))
            .map_or_else(|| "-".to_string(), |(name, _)| name)
    }
}

/// The request's part of a log line.
struct Head {
    peer: SocketAddr,
    method: http::Method,
    path: String,
    caller: String,
}

impl Head {
    fn line(&self, status: u16, elapsed: Duration) -> String {
        format!(
            "api {} {} {} {status} {:.1}ms by {}\n",
            self.peer.ip(),
            self.method,
            self.path,
            elapsed.as_secs_f64() * 1000.0,
            self.caller
        )
    }
}

/// Serves `app` on `listener` until `stop` turns true, then drains open requests (for at most
/// `limits.drain_timeout`).
pub(crate) async fn run(
    listener: TcpListener,
    app: axum::Router,
    limits: ApiLimits,
    tls: Option<Arc<ramp_proxy::tls::ServerTls>>,
    log: Option<Arc<RequestLog>>,
    stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let conn = listen::ConnLimits {
        protocols: listen::Protocols::Http1,
        header_read_timeout: limits.header_read_timeout,
        max_header_bytes: 64 * 1024,
        max_headers: 100,
        write_timeout: Some(limits.write_timeout),
        drain_timeout: limits.drain_timeout,
        idle_timeout: limits.header_read_timeout.max(Duration::from_secs(10)),
        // Control calls must not wait behind connections that say nothing (issue 11).
        evict_silent: true,
        proxy_protocol: None,
    };
    let make = move |info: listen::ConnInfo| service(app.clone(), log.clone(), info.peer);
    listen::serve(listener, slots, conn, tls, make, stop).await;
}

/// The router as a hyper service, with the request log around it when there is one.
fn service(
    app: axum::Router,
    log: Option<Arc<RequestLog>>,
    peer: SocketAddr,
) -> impl hyper::service::Service<
    http::Request<Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send,
> + Clone {
    let inner = TowerToHyperService::new(app);
    hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let inner = inner.clone();
        let log = log.clone();
        async move {
            let Some(log) = log else {
                return hyper::service::Service::call(&inner, req).await;
            };
            // Latency is measured, never decided on.
            #[allow(clippy::disallowed_methods)]
            let started = Instant::now();
            let head = log.head(&req, peer);
            let response = hyper::service::Service::call(&inner, req).await?;
            let line = head.line(response.status().as_u16(), started.elapsed());
            // The request log is its own stream (like the proxy's access log), not diagnostics.
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
            Ok(response)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Role, Tokens};

    #[test]
    fn log_lines_name_the_caller_and_mask_card_numbers_never_the_token() {
        let mut tokens = Tokens::new();
        tokens.add("alice", Role::Operator, "ramp_secret_token_value");
        let log = RequestLog::new(TokenSource::fixed(tokens));
        let req = http::Request::post("/v1/rollouts/4111111111111111/pause?token=x")
            .header("authorization", "Bearer ramp_secret_token_value")
            .body(())
            .unwrap();
        let peer: SocketAddr = "127.0.0.1:5555".parse().unwrap();
        let line = log.head(&req, peer).line(409, Duration::from_micros(1500));
        assert!(
            line.starts_with("api 127.0.0.1 POST /v1/rollouts/"),
            "{line}"
        );
        assert!(line.ends_with(" 409 1.5ms by alice\n"), "{line}");
        assert!(!line.contains("4111111111111111"), "{line}");
        assert!(!line.contains("ramp_secret"), "{line}");
        assert!(
            !line.contains("token=x"),
            "query strings are not logged: {line}"
        );
        let anonymous = http::Request::get("/healthz").body(()).unwrap();
        assert!(
            log.head(&anonymous, peer)
                .line(200, Duration::ZERO)
                .ends_with("by -\n")
        );
        let wrong = http::Request::get("/v1/rollouts")
            .header("authorization", "Bearer nope")
            .body(())
            .unwrap();
        assert!(
            log.head(&wrong, peer)
                .line(401, Duration::ZERO)
                .ends_with("by -\n")
        );
    }
}
