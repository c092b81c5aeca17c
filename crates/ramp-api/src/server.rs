//! The API's listener: HTTP/1.1 with keep-alive, a cap on open connections, a deadline for each
//! request head (slow or idle clients are cut off), graceful shutdown, and an optional request
//! log. The API shares its process with the proxy, so a flood of idle API connections must not
//! be able to use up the file descriptors the proxy needs.

use super::auth::Tokens;
use crate::proxy::mask_pans;
use http::header;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

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
    tokens: Arc<Tokens>,
}

impl RequestLog {
    pub(crate) fn new(tokens: Arc<Tokens>) -> Self {
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
            .and_then(|token| self.tokens.check(token))
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

/// Serves `app` on `listener` until `shutdown` resolves, then drains open requests (for at most
/// `limits.drain_timeout`).
pub(crate) async fn run(
    listener: TcpListener,
    app: axum::Router,
    limits: ApiLimits,
    log: Option<RequestLog>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let log = log.map(Arc::new);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // Take a slot before accepting: over the limit, clients wait in the backlog.
        let permit = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => {
                    // Typically EMFILE: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = service(app.clone(), log.clone(), peer);
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .keep_alive(true);
        let stream = WriteDeadline::new(stream, limits.write_timeout);
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _permit = permit;
            let _ = conn.await;
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(limits.drain_timeout, graceful.shutdown()).await;
    Ok(())
}

/// A stream whose writes fail once they have been blocked for `limit`, so that a client that
/// sends requests but never reads the answers cannot hold a connection slot for ever.
struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    blocked: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteDeadline<S> {
    fn new(inner: S, limit: Duration) -> Self {
        WriteDeadline {
            inner,
            limit,
            blocked: None,
        }
    }

    /// Turns a pending write into an error once it has been pending for `limit`.
    fn deadline<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(r) => {
                self.blocked = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let limit = self.limit;
                let sleep = self
                    .blocked
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if sleep.as_mut().poll(cx).is_ready() {
                    self.blocked = None;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client stopped reading",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.deadline(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.deadline(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.deadline(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
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
            let started = Instant::now();
            let head = log.head(&req, peer);
            let response = hyper::service::Service::call(&inner, req).await?;
            let line = head.line(response.status().as_u16(), started.elapsed());
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
            Ok(response)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Role;

    #[test]
    fn log_lines_name_the_caller_and_mask_card_numbers_never_the_token() {
        let mut tokens = Tokens::new();
        tokens.add("alice", Role::Operator, "ramp_secret_token_value");
        let log = RequestLog::new(Arc::new(tokens));
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
