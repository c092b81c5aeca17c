//! The one listener the proxy and the control API share: the accept loop, the connection cap,
//! the deadlines every connection lives under, and graceful drain.
//!
//! * **Connection cap.** Every connection holds a slot (a permit of a [`Semaphore`] that
//!   several listeners may share). Over the cap a listener holds the one connection it has
//!   just accepted, unserved, and accepts nothing more until a slot frees, so further clients
//!   wait in the kernel's listen backlog: at most one connection per listener beyond the cap,
//!   none accepted and then dropped.
//! * **Deadlines.** An HTTP/1 request head must arrive within `header_read_timeout` (hyper's
//!   timer; it also closes idle keep-alive connections), any connection must deliver its first
//!   request within the same time whatever its protocol (a client that opens a connection and
//!   sends nothing is cut off), and with `write_timeout` a write that stays blocked that long
//!   (a client that stopped reading its answers) closes the connection.
//! * **Drain.** When `stop` turns true the listener closes at once, connections finish their
//!   in-flight requests for up to `drain_timeout` (idle HTTP/1 connections close, HTTP/2
//!   clients get GOAWAY), then whatever is left is closed.

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);
/// hyper's smallest HTTP/1 read buffer.
const MIN_READ_BUFFER: usize = 8 * 1024;

/// Which protocols a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocols {
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/1.1 and HTTP/2 over cleartext with prior knowledge (h2c), detected per connection.
    Http1AndH2c,
}

/// How connections of a listener live.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    /// Protocols spoken.
    pub protocols: Protocols,
    /// An HTTP/1 request head (and every connection's first request) must arrive within this.
    pub header_read_timeout: Duration,
    /// Largest request head, bytes (hyper's read buffer for HTTP/1; the header list size for
    /// HTTP/2).
    pub max_header_bytes: usize,
    /// Most header fields in an HTTP/1 request (hyper's default is 100).
    pub max_headers: usize,
    /// Close a connection whose write stays blocked this long (`None`: no limit).
    pub write_timeout: Option<Duration>,
    /// On stop, how long open requests may take to finish.
    pub drain_timeout: Duration,
    /// A connection that starts no request for this long is closed gracefully (HTTP/2:
    /// GOAWAY, its open streams finish; HTTP/1 idles out sooner, at `header_read_timeout`).
    /// HTTP/2 peers are also pinged at this interval and dropped when they do not answer.
    pub idle_timeout: Duration,
    /// When every slot is taken, close the oldest connection that has not sent a request yet
    /// to make room for the new one, instead of leaving the new one in the backlog. Idle
    /// strangers then cannot keep a client that talks at once from being served.
    pub evict_silent: bool,
    /// Every connection starts with a PROXY protocol (v1 or v2) header, read (within the
    /// first-request deadline) before anything else, TLS included; its source address is the
    /// connection's client. Only peers in the list may send one (an empty list: any peer);
    /// a connection without a valid header, or from another peer, is closed.
    pub proxy_protocol: Option<Arc<crate::client_addr::TrustedProxies>>,
}

/// The connections that have not delivered a request yet, oldest first, each with the way to
/// close it.
#[derive(Default)]
struct Silent {
    next: std::sync::atomic::AtomicU64,
    waiting:
        std::sync::Mutex<std::collections::BTreeMap<u64, (Seen, tokio::sync::oneshot::Sender<()>)>>,
}

impl Silent {
    /// Registers a connection; dropping the returned ticket unregisters it.
    fn enter(self: &Arc<Self>, seen: Seen) -> (SilentTicket, tokio::sync::oneshot::Receiver<()>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Ok(mut w) = self.waiting.lock() {
            w.insert(id, (seen, tx));
        }
        (
            SilentTicket {
                silent: self.clone(),
                id,
            },
            rx,
        )
    }

    /// Closes the oldest connection still silent; whether there was one.
    fn evict_oldest(&self) -> bool {
        let Ok(mut w) = self.waiting.lock() else {
            return false;
        };
        while let Some((_, (seen, tx))) = w.pop_first() {
            if !seen.any() && tx.send(()).is_ok() {
                return true;
            }
        }
        false
    }
}

struct SilentTicket {
    silent: Arc<Silent>,
    id: u64,
}

impl Drop for SilentTicket {
    fn drop(&mut self) {
        if let Ok(mut w) = self.silent.waiting.lock() {
            w.remove(&self.id);
        }
    }
}

/// Whether a connection has delivered a request yet, and how many (set by the service
/// wrapper; the idle watchdog compares the count between its ticks).
#[derive(Clone, Debug, Default)]
struct Seen(Arc<Activity>);

#[derive(Debug, Default)]
struct Activity {
    seen: AtomicBool,
    requests: std::sync::atomic::AtomicU64,
    /// Notified at the first request.
    first: tokio::sync::Notify,
}

impl Seen {
    fn any(&self) -> bool {
        self.0.seen.load(Ordering::Relaxed)
    }

    fn requests(&self) -> u64 {
        self.0.requests.load(Ordering::Relaxed)
    }
}

/// A service that notes its first call, for the first-request deadline.
#[derive(Clone)]
struct Noting<S> {
    inner: S,
    seen: Seen,
}

impl<S, B> Service<Request<Incoming>> for Noting<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let a = &self.seen.0;
        if !a.seen.load(Ordering::Relaxed) {
            a.seen.store(true, Ordering::Relaxed);
            a.first.notify_one();
        }
        a.requests.fetch_add(1, Ordering::Relaxed);
        self.inner.call(req)
    }
}

/// The connection builder for these limits.
fn builder(limits: &ConnLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .max_buf_size(limits.max_header_bytes.max(MIN_READ_BUFFER));
    if limits.max_headers != 100 {
        // hyper's default is 100 on the stack; any other value costs a heap allocation.
        builder.http1().max_headers(limits.max_headers);
    }
    match limits.protocols {
        Protocols::Http1 => builder = builder.http1_only(),
        Protocols::Http1AndH2c => {
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(limits.idle_timeout))
                .keep_alive_timeout(limits.header_read_timeout)
                .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
        }
    }
    builder
}

/// A listener's connections are served, draining (finish what is open), or closing now.
const SERVING: u8 = 0;
const DRAINING: u8 = 1;
const CLOSING: u8 = 2;

/// Resolves once the listener's phase reaches `level` (or its sender is gone).
async fn at_least(phase: &mut watch::Receiver<u8>, level: u8) {
    let _ = phase.wait_for(|p| *p >= level).await;
}

/// Resolves once `stop` says true or its sender is gone.
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// What the service of a connection knows about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// A client connection: plain TCP or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Serves connections accepted on `listener` with the service `make` builds for each, over
/// TLS when `tls` is set, until `stop` turns true; then drains (see the module docs). `slots`
/// caps the connections open at once; several listeners may share one. A TLS handshake must
/// finish within the first-request deadline and happens on the connection's own task, so a
/// slow one never delays accepting others.
pub async fn serve<M, S, B>(
    listener: TcpListener,
    slots: Arc<Semaphore>,
    limits: ConnLimits,
    tls: Option<Arc<crate::tls::ServerTls>>,
    make: M,
    mut stop: watch::Receiver<bool>,
) where
    M: Fn(ConnInfo) -> S + Send + Sync + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let builder = Arc::new(builder(&limits));
    let make = Arc::new(make);
    // Drain: `phase` goes to DRAINING on stop, and to CLOSING when the drain time is up (one
    // signal, so each connection waits on one future); every connection task holds a `live`
    // sender, so `all_done` ends when the last one has finished.
    let (phase_tx, phase_rx) = watch::channel(SERVING);
    let (live, mut all_done) = tokio::sync::mpsc::channel::<()>(1);
    let silent = Arc::new(Silent::default());
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => {
                    // Typically EMFILE: back off instead of spinning.
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Over the cap, this connection waits here, unserved, and this listener accepts
        // nothing more until a slot frees: further clients wait in the kernel's backlog. (A
        // slot cannot be taken *before* accepting: with several `SO_REUSEPORT` listeners
        // sharing the cap, the listener holding the freed slot may not be the one the next
        // client is queued on.)
        let ready = slots.clone().try_acquire_owned();
        let permit = match ready {
            Ok(p) => p,
            Err(_) => {
                if limits.evict_silent {
                    silent.evict_oldest();
                }
                tokio::select! {
                    biased;
                    _ = stopped(&mut stop) => break,
                    permit = slots.clone().acquire_owned() => match permit {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let seen = Seen::default();
        let (ticket, mut evicted) = if limits.evict_silent {
            let (t, rx) = silent.enter(seen.clone());
            (Some(t), Some(rx))
        } else {
            (None, None)
        };
        let acceptor = tls.as_ref().map(|t| (t.acceptor(), t.clone()));
        let proxy_protocol = limits.proxy_protocol.clone();
        let mut phase = phase_rx.clone();
        let live = live.clone();
        let first_request = limits.header_read_timeout;
        let write_timeout = limits.write_timeout;
        let idle_timeout = limits.idle_timeout;
        let builder = builder.clone();
        let make = make.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _live = live;
            let mut closed = std::pin::pin!(async {
                match evicted.as_mut() {
                    Some(rx) => {
                        let _ = rx.await;
                    }
                    None => std::future::pending::<()>().await,
                }
            });
            // A connection must deliver its first request in time, whatever the protocol,
            // its TLS handshake included; a silent one may be closed sooner to make room.
            let mut deadline = std::pin::pin!(tokio::time::sleep(first_request));
            let mut stream = stream;
            let mut peer = peer;
            if let Some(allowed) = proxy_protocol {
                if !allowed.is_empty() && !allowed.contains(peer.ip()) {
                    return;
                }
                let header = tokio::select! {
                    biased;
                    _ = at_least(&mut phase, DRAINING) => return,
                    _ = &mut closed => return,
                    _ = &mut deadline => return,
                    h = crate::client_addr::read_proxy_header(&mut stream) => h,
                };
                match header {
                    Ok(h) => peer = h.source_or(peer),
                    Err(_) => return,
                }
            }
            let io = match acceptor {
                None => Stream::Plain(stream),
                Some((acceptor, counted)) => tokio::select! {
                    biased;
                    _ = at_least(&mut phase, DRAINING) => return,
                    _ = &mut closed => return,
                    _ = &mut deadline => {
                        counted.handshake_failed();
                        return;
                    }
                    done = acceptor.accept(stream) => match done {
                        Ok(s) => Stream::Tls(Box::new(s)),
                        // A failed handshake (an old protocol version, an unknown CA, not
                        // TLS at all) closes the connection; rustls has sent its alert.
                        Err(_) => {
                            counted.handshake_failed();
                            return;
                        }
                    },
                },
            };
            let info = ConnInfo {
                peer,
                tls: matches!(io, Stream::Tls(_)),
            };
            let service = Noting {
                inner: make(info),
                seen: seen.clone(),
            };
            let io = WriteDeadline::new(io, write_timeout);
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(io), service)
                .into_owned();
            let mut conn = std::pin::pin!(conn);
            let mut closing = false;
            tokio::select! {
                biased;
                _ = &mut conn => return,
                _ = at_least(&mut phase, DRAINING) => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                _ = seen.0.first.notified() => {}
                _ = &mut closed => {
                    if !seen.any() {
                        return;
                    }
                }
                _ = &mut deadline => {
                    if !seen.any() {
                        return;
                    }
                }
            }
            drop(ticket);
            // Idle watchdog: a tick that saw no new request closes the connection gracefully
            // (HTTP/2: GOAWAY, open streams finish), as does the drain.
            let mut requests = seen.requests();
            loop {
                let next = if closing { CLOSING } else { DRAINING };
                tokio::select! {
                    biased;
                    _ = &mut conn => return,
                    _ = at_least(&mut phase, next) => {
                        if closing {
                            return;
                        }
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    _ = tokio::time::sleep(idle_timeout), if !closing => {
                        let now = seen.requests();
                        if now == requests {
                            conn.as_mut().graceful_shutdown();
                            closing = true;
                        }
                        requests = now;
                    }
                }
            }
        });
    }
    drop(listener);
    let _ = phase_tx.send(DRAINING);
    drop(live);
    if tokio::time::timeout(limits.drain_timeout, all_done.recv())
        .await
        .is_err()
    {
        let _ = phase_tx.send(CLOSING);
    }
}

/// A stream whose writes fail once they have been blocked for `limit`, so that a client that
/// sends requests but never reads the answers cannot hold a connection slot for ever.
struct WriteDeadline<S> {
    inner: S,
    limit: Option<Duration>,
    blocked: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteDeadline<S> {
    fn new(inner: S, limit: Option<Duration>) -> Self {
        WriteDeadline {
            inner,
            limit,
            blocked: None,
        }
    }

    /// Passes a write's result through; a `Pending` write starts (or checks) the deadline.
    fn deadline<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let Some(limit) = self.limit else {
            return result;
        };
        match result {
            Poll::Ready(r) => {
                self.blocked = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let sleep = self
                    .blocked
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.blocked = None;
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the client stopped reading",
                        )))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.deadline(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.deadline(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.deadline(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
