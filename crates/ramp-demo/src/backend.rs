//! A demo upstream for `ramp demo`: a tiny HTTP server on 127.0.0.1 whose error rate, latency
//! and availability can be changed while it runs.
//!
//! What it serves (any method, HTTP/1.1 keep-alive or HTTP/2, via hyper-util's auto builder):
//!
//! * `/health` → `200 ok` (`text/plain`), immediately, never failing. A backend that is *down*
//!   does not answer 503: it refuses connections (see below), which is what a crashed process
//!   looks like to a proxy.
//! * any other path → after a latency drawn from a log-normal distribution through the
//!   configured p50 and p95 (capped at 5 s), `500` with probability `error_rate`, else `200`,
//!   with the JSON body `{"backend":"<name>","path":"<path>"}` (500s add `"error":"injected"`).
//!
//! Every response carries `x-demo-backend: <name>`.
//!
//! **Down.** [`Behaviour::set_down`]`(true)` makes the backend close its listening socket (new
//! connections are refused with `ECONNREFUSED`) and drop every open connection, in-flight
//! requests included (clients see a reset or an early close). `set_down(false)` binds the
//! *same* port again and accepts as before. Both happen asynchronously, within a scheduler tick;
//! [`Backend::wait_listening`] waits until the change has taken effect. If the port cannot be
//! bound again (another process took it), the backend keeps retrying every 50 ms while it is
//! meant to be up.
//!
//! Per request the server allocates nothing beyond what hyper and `http` do: randomness comes
//! from a lock-free splitmix64 stream, the header value is shared, and the JSON body is written
//! straight from a pre-built prefix and the request's own URI (see `ReplyBody`).

use bytes::{Buf, Bytes};
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use ramp_sim::inverse_normal;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Longest latency the backend ever waits before answering.
pub const MAX_LATENCY: Duration = Duration::from_secs(5);
/// How long [`Backend::shutdown`] lets open connections finish their requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// Retry interval when the port cannot be bound again after being down.
const REBIND_RETRY: Duration = Duration::from_millis(50);
const PPM: u32 = 1_000_000;
/// The standard normal's 95th percentile.
const Z95: f64 = 1.644_853_626_951_472_2;
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// Live-adjustable behaviour of a demo backend. Changes apply to the next request (a request
/// already waiting out its latency keeps the outcome it drew on arrival).
#[derive(Debug)]
pub struct Behaviour {
    /// Share of failing requests in parts per million.
    error_ppm: AtomicU32,
    /// Latency median in µs.
    p50_us: AtomicU64,
    /// Latency 95th percentile in µs (never below the median).
    p95_us: AtomicU64,
    /// Down: the listener is closed and connections are refused.
    down: AtomicBool,
    /// Wakes the acceptor when `down` changes (mirrors `down`).
    down_tx: watch::Sender<bool>,
}

fn share_to_ppm(rate: f64) -> u32 {
    if rate.is_nan() {
        0
    } else {
        (rate.clamp(0.0, 1.0) * PPM as f64).round() as u32
    }
}

fn ms_to_us(ms: f64) -> u64 {
    // NaN and negatives become 0; an hour is plenty (the sleep is capped anyway).
    if ms.is_nan() {
        0
    } else {
        (ms.clamp(0.0, 3_600_000.0) * 1000.0).round() as u64
    }
}

impl Behaviour {
    /// `error_rate` is a share in [0, 1] (clamped); latencies are in ms. A p95 below the p50 is
    /// raised to the p50 (constant latency); a p50 of 0 means no added latency at all.
    pub fn new(error_rate: f64, p50_ms: f64, p95_ms: f64) -> Arc<Self> {
        let b = Behaviour {
            error_ppm: AtomicU32::new(0),
            p50_us: AtomicU64::new(0),
            p95_us: AtomicU64::new(0),
            down: AtomicBool::new(false),
            down_tx: watch::Sender::new(false),
        };
        b.set_error_rate(error_rate);
        b.set_latency(p50_ms, p95_ms);
        Arc::new(b)
    }

    /// Share of requests (other than `/health`) answered with 500, in [0, 1] (clamped; NaN = 0).
    pub fn set_error_rate(&self, error_rate: f64) {
        self.error_ppm.store(share_to_ppm(error_rate), Relaxed);
    }

    /// Latency median and 95th percentile in ms. The two are stored separately: a request that
    /// races the change may see the new p95 with the old p50 (harmless; the p95 is raised to
    /// the p50 when below it).
    pub fn set_latency(&self, p50_ms: f64, p95_ms: f64) {
        let p50 = ms_to_us(p50_ms);
        let p95 = ms_to_us(p95_ms).max(p50);
        self.p95_us.store(p95, Relaxed);
        self.p50_us.store(p50, Relaxed);
    }

    /// Takes the backend down (`true`: refuse connections, drop open ones) or back up on the
    /// same port (`false`). Applied asynchronously; see [`Backend::wait_listening`].
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Relaxed);
        self.down_tx.send_replace(down);
    }

    /// The configured error share (to a millionth).
    pub fn error_rate(&self) -> f64 {
        self.error_ppm.load(Relaxed) as f64 / PPM as f64
    }

    /// The configured latency `(p50_ms, p95_ms)`.
    pub fn latency(&self) -> (f64, f64) {
        let p50 = self.p50_us.load(Relaxed) as f64 / 1000.0;
        let p95 = self.p95_us.load(Relaxed) as f64 / 1000.0;
        (p50, p95.max(p50))
    }

    /// Whether the backend is meant to be down.
    pub fn is_down(&self) -> bool {
        self.down.load(Relaxed)
    }

    /// Whether a request fails, from 64 random bits.
    fn draws_error(&self, r: u64) -> bool {
        r % u64::from(PPM) < u64::from(self.error_ppm.load(Relaxed))
    }

    /// A latency from the log-normal through p50 and p95, from 64 random bits; capped at
    /// [`MAX_LATENCY`].
    pub fn sample_latency(&self, r: u64) -> Duration {
        let p50 = self.p50_us.load(Relaxed);
        if p50 == 0 {
            return Duration::ZERO;
        }
        let p95 = self.p95_us.load(Relaxed).max(p50);
        let sigma = (p95 as f64 / p50 as f64).ln() / Z95;
        // A uniform in (0, 1) from the top 53 bits.
        let u = ((r >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let us = p50 as f64 * (sigma * inverse_normal(u)).exp();
        Duration::from_micros(us.min(MAX_LATENCY.as_micros() as f64) as u64)
    }
}

/// A running demo backend. Dropping it shuts it down in the background; [`Backend::shutdown`]
/// does the same and waits for it.
#[derive(Debug)]
pub struct Backend {
    /// Where it listens (127.0.0.1, a port chosen by the OS; kept across down/up).
    pub addr: SocketAddr,
    /// Its live behaviour (the `Arc` given to [`start`]).
    pub behaviour: Arc<Behaviour>,
    stop_tx: watch::Sender<bool>,
    listening: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl Backend {
    /// Stops accepting, lets open connections finish their requests for up to a second (then
    /// drops them) and waits until everything has ended.
    pub async fn shutdown(self) {
        self.stop_tx.send_replace(true);
        let _ = self.task.await;
    }

    /// Whether the listening socket is open right now (false while down, or once stopped).
    pub fn is_listening(&self) -> bool {
        *self.listening.borrow()
    }

    /// Waits until the listening socket is open (`true`) or closed (`false`): after
    /// [`Behaviour::set_down`], until the change has taken effect. Returns at once if the
    /// backend has stopped.
    pub async fn wait_listening(&self, listening: bool) {
        let mut rx = self.listening.clone();
        let _ = rx.wait_for(|l| *l == listening).await;
    }
}

/// State shared by the acceptor, the connections and the request handler.
struct Shared {
    behaviour: Arc<Behaviour>,
    /// `x-demo-backend` value.
    header: HeaderValue,
    /// `{"backend":"<name>","path":"` with the name JSON-escaped.
    json_head: Bytes,
    /// splitmix64 state.
    rng: AtomicU64,
    builder: auto::Builder<TokioExecutor>,
}

impl Shared {
    /// The next value of a splitmix64 stream shared by all connections (lock-free).
    fn random(&self) -> u64 {
        let mut z = self.rng.fetch_add(GOLDEN, Relaxed).wrapping_add(GOLDEN);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn json_escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
}

/// Starts a demo backend named `name` on 127.0.0.1 (an OS-chosen port). `name` must be a
/// valid header value (visible ASCII is); it fails with `InvalidInput` otherwise.
///
/// The backend runs on the current tokio runtime until [`Backend::shutdown`] or until the
/// [`Backend`] is dropped. If `behaviour` is already down, the port is bound (so it is known)
/// and closed again at once.
pub async fn start(name: &'static str, behaviour: Arc<Behaviour>) -> std::io::Result<Backend> {
    let header = HeaderValue::from_str(name).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("backend name {name:?} is not a valid header value"),
        )
    })?;
    let mut head = String::from("{\"backend\":\"");
    json_escape_into(&mut head, name);
    head.push_str("\",\"path\":\"");
    // A seed per name, so two backends draw different streams (FNV-1a).
    let seed = name.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    });
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        behaviour: behaviour.clone(),
        header,
        json_head: Bytes::from(head),
        rng: AtomicU64::new(seed),
        builder: auto::Builder::new(TokioExecutor::new()),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let (listening_tx, listening) = watch::channel(true);
    let task = tokio::spawn(accept_loop(shared, listener, addr, stop_rx, listening_tx));
    Ok(Backend {
        addr,
        behaviour,
        stop_tx,
        listening,
        task,
    })
}

/// Accepts connections while up; closes the listener and drops all connections while down;
/// re-binds the same address when back up; on stop, drains gracefully.
async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    addr: SocketAddr,
    mut stop_rx: watch::Receiver<bool>,
    listening_tx: watch::Sender<bool>,
) {
    let mut down_rx = shared.behaviour.down_tx.subscribe();
    let mut listener = Some(listener);
    let mut conns: JoinSet<()> = JoinSet::new();
    loop {
        match &listener {
            Some(l) => {
                tokio::select! {
                    biased;
                    // A stop request, or the Backend was dropped.
                    _ = stop_rx.changed() => break,
                    () = wait_down(&mut down_rx, true) => {
                        listener = None;
                        conns.shutdown().await;
                        listening_tx.send_replace(false);
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                    accepted = l.accept() => match accepted {
                        Ok((stream, _)) => {
                            conns.spawn(serve(shared.clone(), stream, stop_rx.clone()));
                        }
                        // Transient (e.g. out of file descriptors): back off a little.
                        Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    },
                }
            }
            None => {
                tokio::select! {
                    biased;
                    _ = stop_rx.changed() => break,
                    () = wait_down(&mut down_rx, false) => match TcpListener::bind(addr).await {
                        Ok(l) => {
                            listener = Some(l);
                            listening_tx.send_replace(true);
                        }
                        Err(_) => tokio::time::sleep(REBIND_RETRY).await,
                    },
                }
            }
        }
    }
    drop(listener);
    listening_tx.send_replace(false);
    // Connections saw the stop signal and are shutting down gracefully.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.shutdown().await;
}

/// Waits until the down flag equals `down`. (The flag's sender lives in the `Behaviour`, which
/// the caller holds, so the channel never closes; if it did, this would wait forever.)
async fn wait_down(rx: &mut watch::Receiver<bool>, down: bool) {
    if rx.wait_for(|d| *d == down).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Serves one connection until it ends or a stop is requested (then gracefully).
async fn serve(shared: Arc<Shared>, stream: TcpStream, mut stop_rx: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let handler = shared.clone();
    let service = service_fn(move |req| handle(handler.clone(), req));
    let mut conn = pin!(
        shared
            .builder
            .serve_connection(TokioIo::new(stream), service)
    );
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stop_rx.changed() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<ReplyBody>>, Infallible> {
    let (parts, body) = req.into_parts();
    drop(body);
    let (status, content_type, body) = if parts.uri.path() == "/health" {
        (StatusCode::OK, "text/plain", ReplyBody::plain(b"ok"))
    } else {
        let b = &shared.behaviour;
        let fail = b.draws_error(shared.random());
        let delay = b.sample_latency(shared.random());
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if fail {
            let tail: &[u8] = b"\",\"error\":\"injected\"}";
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "application/json",
                ReplyBody::json(shared.json_head.clone(), parts.uri, tail),
            )
        } else {
            (
                StatusCode::OK,
                "application/json",
                ReplyBody::json(shared.json_head.clone(), parts.uri, b"\"}"),
            )
        }
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        HeaderName::from_static("x-demo-backend"),
        shared.header.clone(),
    );
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(resp)
}

/// A response body written without allocating: `head`, then the request path JSON-escaped on
/// the fly (a path can hold `"` and `\`, which `http` accepts; never control characters), then
/// `tail`.
#[derive(Debug)]
struct ReplyBody {
    head: Bytes,
    uri: Option<Uri>,
    /// Byte offset into the path.
    at: usize,
    /// The backslash of an escape was consumed; the escaped byte itself comes next.
    in_escape: bool,
    tail: &'static [u8],
    remaining: usize,
}

/// Which piece [`ReplyBody::chunk`] returns right now.
enum Piece {
    Head,
    Backslash,
    /// `n` plain path bytes (or the escaped byte itself, n = 1).
    Path(usize),
    Tail,
}

fn needs_escape(b: u8) -> bool {
    b == b'"' || b == b'\\'
}

impl ReplyBody {
    fn plain(text: &'static [u8]) -> Self {
        ReplyBody {
            head: Bytes::from_static(text),
            uri: None,
            at: 0,
            in_escape: false,
            tail: b"",
            remaining: text.len(),
        }
    }

    fn json(head: Bytes, uri: Uri, tail: &'static [u8]) -> Self {
        let path = uri.path().as_bytes();
        let escaped = path.len() + path.iter().filter(|&&b| needs_escape(b)).count();
        ReplyBody {
            remaining: head.len() + escaped + tail.len(),
            head,
            uri: Some(uri),
            at: 0,
            in_escape: false,
            tail,
        }
    }

    fn path(&self) -> &[u8] {
        self.uri.as_ref().map_or(b"", |u| u.path().as_bytes())
    }

    fn piece(&self) -> Piece {
        if !self.head.is_empty() {
            return Piece::Head;
        }
        let rest = &self.path()[self.at..];
        if rest.is_empty() {
            Piece::Tail
        } else if self.in_escape {
            Piece::Path(1)
        } else {
            match rest.iter().position(|&b| needs_escape(b)) {
                Some(0) => Piece::Backslash,
                Some(n) => Piece::Path(n),
                None => Piece::Path(rest.len()),
            }
        }
    }
}

impl Buf for ReplyBody {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        match self.piece() {
            Piece::Head => &self.head,
            Piece::Backslash => b"\\",
            Piece::Path(n) => &self.path()[self.at..self.at + n],
            Piece::Tail => self.tail,
        }
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advance past the end of the body");
        self.remaining -= cnt;
        while cnt > 0 {
            match self.piece() {
                Piece::Head => {
                    let n = cnt.min(self.head.len());
                    self.head.advance(n);
                    cnt -= n;
                }
                Piece::Backslash => {
                    self.in_escape = true;
                    cnt -= 1;
                }
                Piece::Path(n) => {
                    let n = cnt.min(n);
                    self.at += n;
                    self.in_escape = false;
                    cnt -= n;
                }
                Piece::Tail => {
                    let n = cnt.min(self.tail.len());
                    self.tail = &self.tail[n..];
                    cnt -= n;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(mut b: ReplyBody, step: usize) -> String {
        let mut out = Vec::new();
        let total = b.remaining();
        while b.has_remaining() {
            let c = b.chunk();
            assert!(!c.is_empty());
            let n = c.len().min(step);
            out.extend_from_slice(&c[..n]);
            b.advance(n);
        }
        assert_eq!(out.len(), total);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn reply_body_escapes_the_path() {
        for step in [1, 2, 3, 1000] {
            let uri: Uri = "/a\"b\\c/d?q=1".parse().unwrap();
            let body = ReplyBody::json(Bytes::from_static(b"{\"path\":\""), uri, b"\"}");
            let s = drain(body, step);
            assert_eq!(s, r#"{"path":"/a\"b\\c/d"}"#);
            let v: serde_json::Value = serde_json::from_str(&s).unwrap();
            assert_eq!(v["path"], "/a\"b\\c/d");
        }
        assert_eq!(drain(ReplyBody::plain(b"ok"), 1), "ok");
    }

    #[test]
    fn reply_body_advances_across_pieces() {
        let uri: Uri = "/x\"y".parse().unwrap();
        let mut b = ReplyBody::json(Bytes::from_static(b"ab"), uri, b"cd");
        assert_eq!(b.remaining(), 2 + 5 + 2);
        b.advance(5); // "ab" + "/x" + the backslash
        assert_eq!(b.chunk(), b"\"");
        b.advance(3);
        assert_eq!(b.chunk(), b"d");
        b.advance(1);
        assert!(!b.has_remaining());
    }

    #[test]
    fn latency_quantiles_follow_the_configuration() {
        let b = Behaviour::new(0.0, 20.0, 60.0);
        let mut r = 1u64;
        let mut v: Vec<Duration> = (0..20_000)
            .map(|_| {
                r = r.wrapping_add(GOLDEN);
                let z = (r ^ (r >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                b.sample_latency(z ^ (z >> 29))
            })
            .collect();
        v.sort();
        let p50 = v[10_000].as_secs_f64() * 1000.0;
        let p95 = v[19_000].as_secs_f64() * 1000.0;
        assert!((18.0..22.0).contains(&p50), "p50 {p50}");
        assert!((54.0..66.0).contains(&p95), "p95 {p95}");

        b.set_latency(60_000.0, 120_000.0);
        assert_eq!(b.sample_latency(1 << 63), MAX_LATENCY);
        assert_eq!(b.sample_latency(u64::MAX), MAX_LATENCY);
        b.set_latency(0.0, 50.0);
        assert_eq!(b.sample_latency(u64::MAX), Duration::ZERO);
        b.set_latency(10.0, 5.0);
        assert_eq!(b.latency(), (10.0, 10.0));
        assert_eq!(b.sample_latency(12345), Duration::from_millis(10));
    }

    #[test]
    fn error_share_is_clamped_and_exact_at_the_ends() {
        let b = Behaviour::new(1.5, 0.0, 0.0);
        assert_eq!(b.error_rate(), 1.0);
        assert!((0..1000u64).all(|i| b.draws_error(i.wrapping_mul(GOLDEN))));
        b.set_error_rate(f64::NAN);
        assert_eq!(b.error_rate(), 0.0);
        assert!((0..1000u64).all(|i| !b.draws_error(i.wrapping_mul(GOLDEN))));
        b.set_error_rate(0.25);
        assert_eq!(b.error_rate(), 0.25);
    }
}
