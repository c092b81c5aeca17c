//! The built-in reverse proxy against in-process upstreams on real sockets (127.0.0.1, port 0).
//! Every test is bounded in time and awaits events instead of sleeping for them.
// Tests bound their own waits and measure on the real clock; no decision reads it.
#![allow(clippy::disallowed_methods)]

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ramp_core::cohort::{Salt, ShareBp, bucket};
use ramp_core::plan::{CohortKey, UnkeyedRoute};
use ramp_proxy::{
    AccessLog, BackendHealth, Limits, ProxyConfig, ProxyHandle, Workers, start, user_hash,
};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, mpsc};

/// The proxies' event-loop threads, shared by every test (as a server shares them by all its
/// rollouts).
fn workers() -> &'static Workers {
    ramp_harness::proxy_workers()
}

const SALT: &str = "proxy-test-salt";
const CHUNK: usize = 64 * 1024;
const BIG: usize = 64 * 1024 * 1024;

type TestBody = BoxBody<Bytes, Infallible>;

use ramp_harness::bounded;

fn share(bp: u16) -> ShareBp {
    ShareBp::new(bp).unwrap()
}

fn empty() -> TestBody {
    Empty::new().boxed()
}

fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into()).boxed()
}

/// A body fed from a channel of chunks.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

// ---------------------------------------------------------------------------------------------
// Test upstream

/// What a test upstream has seen, and the knobs a test turns.
struct UpstreamState {
    name: &'static str,
    /// Accepted TCP connections.
    connections: AtomicUsize,
    /// Status of `/health`.
    health_status: AtomicU16,
    /// `/stream` sends its first chunk, then waits for this.
    release_stream: Notify,
    /// `/upload` notifies once it has received the first chunk.
    upload_started: Notify,
    /// `/sleep/..` notifies when a request arrives.
    arrived: Notify,
}

struct TestUpstream {
    addr: SocketAddr,
    state: Arc<UpstreamState>,
}

impl TestUpstream {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn spawn_upstream(name: &'static str) -> TestUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(UpstreamState {
        name,
        connections: AtomicUsize::new(0),
        health_status: AtomicU16::new(200),
        release_stream: Notify::new(),
        upload_started: Notify::new(),
        arrived: Notify::new(),
    });
    let st = state.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            st.connections.fetch_add(1, Ordering::SeqCst);
            let st = st.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let st = st.clone();
                    async move { Ok::<_, Infallible>(upstream_handle(st, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    TestUpstream { addr, state }
}

fn status_response(status: u16, body: TestBody) -> Response<TestBody> {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r
}

async fn upstream_handle(st: Arc<UpstreamState>, req: Request<Incoming>) -> Response<TestBody> {
    let path = req.uri().path().to_owned();
    let version = format!("{:?}", req.version());
    let mut response = if let Some(code) = path.strip_prefix("/status/") {
        let mut r = status_response(code.parse().unwrap(), full("status"));
        if code.starts_with('3') {
            r.headers_mut()
                .insert("location", "/elsewhere".parse().unwrap());
        }
        r
    } else if let Some(ms) = path.strip_prefix("/sleep/") {
        st.arrived.notify_one();
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
        status_response(200, full("slept"))
    } else if path == "/health" {
        status_response(st.health_status.load(Ordering::SeqCst), full("health"))
    } else if path == "/echo-headers" {
        let mut text = String::new();
        for (name, value) in req.headers() {
            text.push_str(&format!("{}: {}\n", name, value.to_str().unwrap_or("?")));
        }
        let mut r = status_response(200, full(text));
        // Hop-by-hop headers the proxy must not pass back to the client.
        let h = r.headers_mut();
        h.insert("connection", "x-resp-secret".parse().unwrap());
        h.insert("x-resp-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("proxy-authenticate", "Basic".parse().unwrap());
        h.insert("x-end-to-end", "kept".parse().unwrap());
        r
    } else if path == "/stream" {
        let (tx, rx) = mpsc::channel(4);
        let st = st.clone();
        tokio::spawn(async move {
            let chunk = Bytes::from(vec![b'x'; CHUNK]);
            if tx.send(chunk.clone()).await.is_err() {
                return;
            }
            st.release_stream.notified().await;
            for _ in 1..BIG / CHUNK {
                if tx.send(chunk.clone()).await.is_err() {
                    return;
                }
            }
        });
        status_response(200, ChannelBody(rx).boxed())
    } else if path == "/upload" {
        let mut body = req.into_body();
        let mut total = 0usize;
        let mut first = true;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                total += data.len();
                if first && !data.is_empty() {
                    first = false;
                    st.upload_started.notify_one();
                }
            }
        }
        status_response(200, full(total.to_string()))
    } else {
        status_response(200, full(st.name))
    };
    let h = response.headers_mut();
    h.insert("x-upstream", st.name.parse().unwrap());
    h.insert("x-upstream-version", version.parse().unwrap());
    response
}

/// An address nothing listens on.
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

// ---------------------------------------------------------------------------------------------
// Proxy and clients

fn config(stable: &str, canary: &str) -> ProxyConfig {
    ProxyConfig {
        limits: Limits {
            response_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(5),
            ..Limits::default()
        },
        ..ramp_harness::proxy_config(stable, canary, SALT)
    }
}

struct Setup {
    stable: TestUpstream,
    canary: TestUpstream,
    proxy: ProxyHandle,
}

async fn setup_with(initial: u16, edit: impl FnOnce(&mut ProxyConfig)) -> Setup {
    let stable = spawn_upstream("stable").await;
    let canary = spawn_upstream("canary").await;
    let mut cfg = config(&stable.url(), &canary.url());
    edit(&mut cfg);
    let proxy = start(cfg, share(initial), workers()).await.unwrap();
    Setup {
        stable,
        canary,
        proxy,
    }
}

async fn setup(initial: u16) -> Setup {
    setup_with(initial, |_| {}).await
}

/// An HTTP/1.1 client on one keep-alive connection.
struct H1 {
    send: hyper::client::conn::http1::SendRequest<TestBody>,
}

impl H1 {
    async fn connect(addr: SocketAddr) -> H1 {
        Self::over(TcpStream::connect(addr).await.unwrap()).await
    }

    /// Connects from a given loopback address (127.0.0.0/8 is all local on Linux).
    async fn connect_from(local: IpAddr, addr: SocketAddr) -> H1 {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(local, 0)).unwrap();
        Self::over(socket.connect(addr).await.unwrap()).await
    }

    async fn over(stream: TcpStream) -> H1 {
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        H1 { send }
    }

    async fn send(&mut self, req: Request<TestBody>) -> Response<Incoming> {
        self.send.ready().await.unwrap();
        self.send.send_request(req).await.unwrap()
    }

    async fn get(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Bytes) {
        let mut req = Request::get(path).header("host", "proxy.test");
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        let response = self.send(req.body(empty()).unwrap()).await;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (parts.status, parts.headers, body)
    }
}

/// The variant the proxy reported, checked against the upstream that actually answered.
fn variant_of(headers: &HeaderMap) -> &str {
    let variant = headers["x-ramp-variant"].to_str().unwrap();
    assert_eq!(
        headers["x-upstream"], variant,
        "answered by the other upstream"
    );
    variant
}

fn expected_bucket(key: &str) -> u16 {
    bucket(Salt::new(SALT), key.as_bytes())
}

/// Sends raw bytes and returns everything the proxy answers until it closes (bounded).
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // Read until the head is complete or the connection closes.
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no answer"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Routing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_share_and_users_stay_in_the_canary_as_it_grows() {
    bounded(async {
        let s = setup(500).await;
        let mut client = H1::connect(s.proxy.local_addr).await;
        let users: Vec<String> = (0..2_000).map(|i| format!("user-{i}")).collect();
        let mut was_canary = vec![false; users.len()];
        let mut total_requests = 0u64;
        for bp in [500u16, 2_000, 10_000] {
            s.proxy.routing.set_share(share(bp));
            assert_eq!(s.proxy.routing.share(), share(bp));
            let mut canary = 0usize;
            for (i, user) in users.iter().enumerate() {
                let (status, headers, _) = client.get("/", &[("x-user-id", user)]).await;
                assert_eq!(status, 200);
                total_requests += 1;
                let is_canary = variant_of(&headers) == "canary";
                // The published formula decides, exactly.
                assert_eq!(is_canary, expected_bucket(user) < bp, "{user} at {bp} bp");
                // Never canary -> stable while the share rises.
                assert!(
                    is_canary || !was_canary[i],
                    "{user} left the canary at {bp} bp"
                );
                was_canary[i] = is_canary;
                canary += usize::from(is_canary);
            }
            let observed = canary as f64 / users.len() as f64;
            let target = f64::from(bp) / 10_000.0;
            // 2,000 users: binomial standard deviation at most 1.1 points; allow 3.5 points.
            assert!(
                (observed - target).abs() <= 0.035,
                "{bp} bp: {canary} of {} users in the canary",
                users.len()
            );
        }
        let w = s.proxy.recorder.take_window();
        assert_eq!(w.stable.requests + w.canary.requests, total_requests);
        assert_eq!(w.stable.successes + w.canary.successes, total_requests);
        assert_eq!(w.stable.errors + w.canary.errors, 0);
        // Every user reached the canary at 100%: the distinct-user sketch sees about 2,000.
        let canary_users = w.canary.users.estimate() as f64;
        assert!((canary_users - 2_000.0).abs() <= 100.0, "{canary_users}");
        let stable_users = w.stable.users.estimate() as f64;
        let expected_stable = users.iter().filter(|u| expected_bucket(u) >= 500).count() as f64;
        assert!(
            (stable_users - expected_stable).abs() <= expected_stable * 0.05,
            "{stable_users} vs {expected_stable}"
        );
        s.proxy.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_key_go_to_stable_by_default() {
    bounded(async {
        let s = setup(10_000).await;
        let mut client = H1::connect(s.proxy.local_addr).await;
        let (_, headers, _) = client.get("/", &[]).await;
        assert_eq!(variant_of(&headers), "stable");
        let (_, headers, _) = client.get("/", &[("x-user-id", "")]).await;
        assert_eq!(variant_of(&headers), "stable", "an empty key is no key");
        let (_, headers, _) = client.get("/", &[("x-user-id", "someone")]).await;
        assert_eq!(variant_of(&headers), "canary");
        let w = s.proxy.recorder.take_window();
        assert_eq!((w.stable.requests, w.canary.requests), (2, 1));
        // Unkeyed requests have no user.
        assert!(w.stable.users.is_empty());
        assert_eq!(w.canary.users.estimate(), 1);
        s.proxy.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_keys() {
    bounded(async {
        let s = setup_with(5_000, |c| c.cohort.key = CohortKey::Cookie("uid".into())).await;
        let mut client = H1::connect(s.proxy.local_addr).await;
        let (mut stable, mut canary) = (0, 0);
        for i in 0..60 {
            let user = format!("cookie-user-{i}");
            let cookie = format!("theme=dark; uid={user}; other=1");
            // The header key is ignored when the plan says cookie.
            let (_, headers, _) = client
                .get("/", &[("cookie", &cookie), ("x-user-id", "ignored")])
                .await;
            let expected = if expected_bucket(&user) < 5_000 {
                "canary"
            } else {
                "stable"
            };
            assert_eq!(variant_of(&headers), expected, "{user}");
            if expected == "canary" {
                canary += 1;
            } else {
                stable += 1;
            }
        }
        assert!(stable > 0 && canary > 0);
        // No uid cookie: stable.
        let (_, headers, _) = client.get("/", &[("cookie", "theme=dark")]).await;
        assert_eq!(variant_of(&headers), "stable");
        s.proxy.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ip_keys_and_unkeyed_by_client_ip() {
    bounded(async {
        // Key = client address.
        let s = setup_with(5_000, |c| c.cohort.key = CohortKey::ClientIp).await;
        // Key = header, but unkeyed requests bucketed by client address.
        let t = setup_with(5_000, |c| c.cohort.unkeyed = UnkeyedRoute::ClientIp).await;
        let mut seen = std::collections::HashSet::new();
        for last in 1..=24u8 {
            let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, last));
            let expected = if expected_bucket(&ip.to_string()) < 5_000 {
                "canary"
            } else {
                "stable"
            };
            seen.insert(expected);
            let mut client = H1::connect_from(ip, s.proxy.local_addr).await;
            let (_, headers, body) = client.get("/echo-headers", &[]).await;
            assert_eq!(variant_of(&headers), expected, "{ip}");
            let echoed = String::from_utf8_lossy(&body).into_owned();
            assert!(
                echoed.contains(&format!("x-forwarded-for: {ip}\n")),
                "{echoed}"
            );

            let mut client = H1::connect_from(ip, t.proxy.local_addr).await;
            let (_, headers, _) = client.get("/", &[]).await;
            assert_eq!(variant_of(&headers), expected, "unkeyed from {ip}");
        }
        assert_eq!(seen.len(), 2, "24 addresses all landed on one side");
        let w = s.proxy.recorder.take_window();
        let users = w.stable.users.estimate() + w.canary.users.estimate();
        assert_eq!(users, 24);
        s.proxy.shutdown().await;
        t.proxy.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_change_applies_to_the_very_next_request() {
    bounded(async {
        let s = setup(0).await;
        let user = "user-share-change";
        let b = expected_bucket(user);
        let mut client = H1::connect(s.proxy.local_addr).await;
        for (bp, expected) in [
            (b, "stable"),
            (b + 1, "canary"),
            (b, "stable"),
            (b + 1, "canary"),
            (0, "stable"),
        ] {
            s.proxy.routing.set_share(share(bp));
            let (_, headers, _) = client.get("/", &[("x-user-id", user)]).await;
            assert_eq!(variant_of(&headers), expected, "share {bp}, bucket {b}");
        }
        s.proxy.shutdown().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Classification

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classifies_each_status_class() {
    bounded(async {
        let s = setup(10_000).await;
        let mut client = H1::connect(s.proxy.local_addr).await;
        for code in [200u16, 302, 404, 429, 401, 403, 500, 503] {
            let (status, _, _) = client
                .get(&format!("/status/{code}"), &[("x-user-id", "u")])
                .await;
            assert_eq!(status.as_u16(), code);
        }
        let w = s.proxy.recorder.take_window();
        let c = &w.canary;
        assert_eq!(c.requests, 8);
        assert_eq!(c.successes, 2, "200 and 302");
        assert_eq!(c.errors, 2, "500 and 503");
        assert_eq!(c.rate_limited, 1);
        assert_eq!(c.auth_failures, 2, "401 and 403");
        assert_eq!(c.latency.count(), 8);
        assert_eq!(c.slow, vec![0]);
        assert_eq!(w.stable.requests, 0);
        // The window was taken: the next one starts empty.
        assert_eq!(s.proxy.recorder.take_window().canary.requests, 0);
        s.proxy.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connect_failure_is_a_502_and_an_error() {
    bounded(async {
        let stable = spawn_upstream("stable").await;
        let dead = closed_port().await;
        let proxy = start(
            config(&stable.url(), &format!("http://{dead}")),
            share(10_000),
            workers(),
        )
        .await
        .unwrap();
        let mut client = H1::connect(proxy.local_addr).await;
        let (status, headers, _) = client.get("/", &[("x-user-id", "u")]).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(headers["x-ramp-variant"], "canary");
        // Unkeyed traffic still reaches stable.
        let (status, _, _) = client.get("/", &[]).await;
        assert_eq!(status, 200);
        let w = proxy.recorder.take_window();
        assert_eq!((w.canary.requests, w.canary.errors), (1, 1));
        assert_eq!((w.stable.requests, w.stable.errors), (1, 0));
        proxy.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_timeout_is_a_504_and_an_error() {
    bounded(async {
        let s = setup_with(10_000, |c| {
            c.limits.response_timeout = Duration::from_millis(300);
            c.latency_thresholds_us = vec![100_000, 10_000_000];
        })
        .await;
        let mut client = H1::connect(s.proxy.local_addr).await;
        let started = Instant::now();
        let (status, _, _) = client.get("/sleep/3000", &[("x-user-id", "u")]).await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        assert!(started.elapsed() < Duration::from_millis(2_500));
        let w = s.proxy.recorder.take_window();
        assert_eq!((w.canary.requests, w.canary.errors), (1, 1));
        // The 300 ms it waited is slower than 100 ms, faster than 10 s.
        assert_eq!(w.canary.slow, vec![1, 0]);
        s.proxy.shutdown().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Streaming and connections

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_download_streams_without_buffering() {
    bounded(async {
        let s = setup(0).await;
        let mut client = H1::connect(s.proxy.local_addr).await;
        let req = Request::get("/stream")
            .header("host", "proxy.test")
            .body(empty())
            .unwrap();
        let response = client.send(req).await;
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        // The upstream has sent one chunk and waits: a buffering proxy would never hand us
        // anything (and the test would time out).
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(!first.is_empty());
        let mut total = first.len();
        s.stable.state.release_stream.notify_one();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                total += data.len();
            }
        }
        assert_eq!(total, BIG);
        s.proxy.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_streams_to_the_upstream() {
    bounded(async {
        let s = setup(0).await;
        let mut client = H1::connect(s.proxy.local_addr).await;
        let (tx, rx) = mpsc::channel::<Bytes>(4);
        let req = Request::post("/upload")
            .header("host", "proxy.test")
            .body(ChannelBody(rx).boxed())
            .unwrap();
        let upstream = s.stable.state.clone();
        let sender = tokio::spawn(async move {
            let chunk = Bytes::from(vec![b'u'; CHUNK]);
            tx.send(chunk.clone()).await.unwrap();
            // The upstream must see the first chunk while the rest is not even produced yet.
            upstream.upload_started.notified().await;
            for _ in 1..BIG / CHUNK {
                tx.send(chunk.clone()).await.unwrap();
            }
        });
        let response = client.send(req).await;
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, BIG.to_string());
        sender.await.unwrap();
        s.proxy.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_are_reused_both_sides() {
    bounded(async {
        let s = setup(5_000).await;
        let mut client = H1::connect(s.proxy.local_addr).await;
        for i in 0..100 {
            let (status, _, _) = client.get("/", &[("x-user-id", &format!("u{i}"))]).await;
            assert_eq!(status, 200);
        }
        let stable = s.stable.state.connections.load(Ordering::SeqCst);
        let canary = s.canary.state.connections.load(Ordering::SeqCst);
        // 100 sequential requests over one client connection: one pooled upstream connection
        // per upstream (two at most if one was closed in between).
        assert!((1..=2).contains(&stable), "stable saw {stable} connections");
        assert!((1..=2).contains(&canary), "canary saw {canary} connections");
        s.proxy.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_clients_work() {
    bounded(async {
        let s = setup(5_000).await;
        let stream = TcpStream::connect(s.proxy.local_addr).await.unwrap();
        let (send, conn) = hyper::client::conn::http2::handshake::<_, _, TestBody>(
            TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let mut tasks = Vec::new();
        for i in 0..20 {
            let mut send = send.clone();
            tasks.push(tokio::spawn(async move {
                let user = format!("h2-user-{i}");
                let req = Request::get(format!("http://proxy.test/echo-headers?i={i}"))
                    .version(Version::HTTP_2)
                    .header("x-user-id", &user)
                    .header("cookie", "a=1")
                    .header("cookie", "b=2")
                    .body(empty())
                    .unwrap();
                send.ready().await.unwrap();
                let response = send.send_request(req).await.unwrap();
                assert_eq!(response.version(), Version::HTTP_2);
                assert_eq!(response.status(), 200);
                let (parts, body) = response.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                (user, parts.headers, body)
            }));
        }
        for task in tasks {
            let (user, headers, body) = task.await.unwrap();
            let expected = if expected_bucket(&user) < 5_000 {
                "canary"
            } else {
                "stable"
            };
            assert_eq!(variant_of(&headers), expected);
            // Upstreams are spoken to in HTTP/1.1, with the cookies joined into one field.
            assert_eq!(headers["x-upstream-version"], "HTTP/1.1");
            let echoed = String::from_utf8_lossy(&body).into_owned();
            assert!(echoed.contains("cookie: a=1; b=2\n"), "{echoed}");
            assert!(
                echoed.contains("x-forwarded-host: proxy.test\n"),
                "{echoed}"
            );
        }
        let w = s.proxy.recorder.take_window();
        assert_eq!(w.stable.requests + w.canary.requests, 20);
        s.proxy.shutdown().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_or_too_many_headers_get_431() {
    bounded(async {
        let s = setup(0).await;
        let addr = s.proxy.local_addr;
        // 20 KiB header against the 16 KiB default.
        let big = format!(
            "GET / HTTP/1.1\r\nhost: proxy.test\r\nx-big: {}\r\n\r\n",
            "a".repeat(20 * 1024)
        );
        let answer = raw_exchange(addr, big.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
        // 150 small headers against the default 100.
        let mut many = String::from("GET / HTTP/1.1\r\nhost: proxy.test\r\n");
        for i in 0..150 {
            many.push_str(&format!("x-h{i}: v\r\n"));
        }
        many.push_str("\r\n");
        let answer = raw_exchange(addr, many.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
        // A smaller configured limit, below hyper's minimum buffer, is enforced by the proxy.
        let t = setup_with(0, |c| {
            c.limits.max_header_bytes = 1_024;
            c.limits.max_headers = 10;
        })
        .await;
        let mut client = H1::connect(t.proxy.local_addr).await;
        let long = "b".repeat(2_000);
        let (status, _, _) = client.get("/", &[("x-long", &long)]).await;
        assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let mut client = H1::connect(t.proxy.local_addr).await;
        let headers: Vec<(String, String)> = (0..12)
            .map(|i| (format!("x-h{i}"), "v".to_owned()))
            .collect();
        let refs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let (status, _, _) = client.get("/", &refs).await;
        assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        // hyper closes the connection after its own 431.
        let mut client = H1::connect(t.proxy.local_addr).await;
        let (status, _, _) = client.get("/", &refs[..5]).await;
        assert_eq!(status, 200);
        // Refused requests are not recorded; the last one is.
        let w = t.proxy.recorder.take_window();
        assert_eq!(w.stable.requests, 1);
        assert_eq!(s.proxy.recorder.take_window().stable.requests, 0);
        s.proxy.shutdown().await;
        t.proxy.shutdown().await;
    })
    .await;
}

/// Sends `bytes` one at a time, `gap` apart, until the peer closes; returns what was read and
/// when the connection closed.
async fn dribble(addr: SocketAddr, bytes: &[u8], gap: Duration) -> (String, Duration) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let bytes = bytes.to_vec();
    let writer = tokio::spawn(async move {
        for b in bytes {
            if write.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(gap).await;
        }
    });
    let started = Instant::now();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), read.read_to_end(&mut out)).await;
    writer.abort();
    assert!(closed.is_ok(), "slow client was not cut off");
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    bounded(async {
        let s = setup_with(0, |c| {
            c.limits.header_read_timeout = Duration::from_millis(400)
        })
        .await;
        let addr = s.proxy.local_addr;
        // 60 bytes at 100 ms each would take 6 s.
        let request = b"GET / HTTP/1.1\r\nhost: proxy.test\r\nx-user-id: slowloris-user\r\n\r\n";
        let (answer, took) = dribble(addr, request, Duration::from_millis(100)).await;
        assert!(!answer.contains("200"), "{answer}");
        assert!(
            took >= Duration::from_millis(350),
            "closed early, after {took:?}"
        );
        assert!(took < Duration::from_secs(3), "cut off after {took:?}");
        // The same for a client that starts like HTTP/2 and then stalls.
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let (answer, took) = dribble(addr, preface, Duration::from_millis(100)).await;
        assert!(answer.is_empty(), "{answer:?}");
        assert!(
            took >= Duration::from_millis(350),
            "closed early, after {took:?}"
        );
        assert!(took < Duration::from_secs(3), "cut off after {took:?}");
        // And one that connects and says nothing.
        let (_, took) = dribble(addr, b"", Duration::from_millis(100)).await;
        assert!(took < Duration::from_secs(3), "cut off after {took:?}");
        // A normal client is unaffected.
        let mut client = H1::connect(addr).await;
        assert_eq!(client.get("/", &[]).await.0, 200);
        assert_eq!(s.proxy.recorder.take_window().stable.requests, 1);
        s.proxy.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excess_connections_wait_for_a_free_slot() {
    bounded(async {
        let s = setup_with(0, |c| c.limits.max_connections = 1).await;
        let addr = s.proxy.local_addr;
        let mut first = H1::connect(addr).await;
        assert_eq!(first.get("/", &[]).await.0, 200);
        // The second connection is not accepted while the first is open ...
        let second = tokio::spawn(async move {
            let mut c = H1::connect(addr).await;
            c.get("/", &[]).await.0
        });
        tokio::task::yield_now().await;
        let mut second = second;
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut second)
                .await
                .is_err(),
            "a second connection was served while the limit is one"
        );
        // ... and is served as soon as the first closes.
        drop(first);
        assert_eq!(second.await.unwrap(), 200);
        s.proxy.shutdown().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Headers and the access log

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_stripped_and_forwarding_headers_added() {
    bounded(async {
        let s = setup(0).await;
        let mut client = H1::connect(s.proxy.local_addr).await;
        let (status, headers, body) = client
            .get(
                "/echo-headers?q=1",
                &[
                    ("connection", "keep-alive, x-hop"),
                    ("x-hop", "secret"),
                    ("keep-alive", "timeout=5"),
                    ("proxy-authorization", "Basic Zm9vOmJhcg=="),
                    ("proxy-connection", "keep-alive"),
                    ("te", "trailers"),
                    ("trailer", "x-checksum"),
                    ("x-forwarded-for", "10.0.0.1"),
                    ("x-forwarded-host", "spoofed.example"),
                    ("forwarded", "for=10.0.0.1"),
                    ("x-end-to-end", "yes"),
                ],
            )
            .await;
        assert_eq!(status, 200);
        let echoed = String::from_utf8_lossy(&body).into_owned();
        for gone in [
            "connection:",
            "x-hop:",
            "keep-alive:",
            "proxy-authorization:",
            "proxy-connection:",
            "te:",
            "trailer:",
            "spoofed",
        ] {
            assert!(
                !echoed
                    .lines()
                    .any(|l| l.starts_with(gone) || l.contains("spoofed")),
                "{gone} reached the upstream:\n{echoed}"
            );
        }
        let upstream_host = format!("host: {}\n", s.stable.addr);
        for kept in [
            "x-end-to-end: yes\n",
            "x-forwarded-for: 10.0.0.1, 127.0.0.1\n",
            "x-forwarded-proto: http\n",
            "x-forwarded-host: proxy.test\n",
            "forwarded: for=10.0.0.1, for=127.0.0.1;proto=http;host=proxy.test\n",
            &upstream_host,
        ] {
            assert!(echoed.contains(kept), "missing {kept:?} in:\n{echoed}");
        }
        // Response hop-by-hop headers do not reach the client; end-to-end ones do.
        assert!(headers.get("x-resp-secret").is_none(), "{headers:?}");
        assert!(headers.get("keep-alive").is_none(), "{headers:?}");
        assert!(headers.get("proxy-authenticate").is_none(), "{headers:?}");
        assert_eq!(headers["x-end-to-end"], "kept");
        assert_eq!(headers["x-ramp-variant"], "stable");
        s.proxy.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variant_header_is_optional() {
    bounded(async {
        let s = setup_with(0, |c| c.variant_header = false).await;
        let mut client = H1::connect(s.proxy.local_addr).await;
        let (status, headers, _) = client.get("/", &[]).await;
        assert_eq!(status, 200);
        assert!(headers.get("x-ramp-variant").is_none());
        s.proxy.shutdown().await;
    })
    .await;
}

/// A `Write` that hands each write to a channel the test can await.
struct ChannelWriter(mpsc::UnboundedSender<String>);

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.send(String::from_utf8_lossy(buf).into_owned());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_masks_card_numbers_and_never_logs_bodies() {
    bounded(async {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let s = setup_with(10_000, |c| {
            c.access_log = Some(AccessLog::new(ChannelWriter(tx)));
            c.limits.max_header_bytes = 1_024;
        })
        .await;
        let mut client = H1::connect(s.proxy.local_addr).await;
        let req = Request::post("/pay/4111111111111111?card=5500-0000-0000-0004")
            .header("host", "proxy.test")
            .header("x-user-id", "payer")
            .header("authorization", "Bearer secret-token")
            .body(full("card=4111111111111111&cvv=123&secret-body"))
            .unwrap();
        let response = client.send(req).await;
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
        let line = rx.recv().await.unwrap();
        assert!(line.ends_with('\n'), "{line:?}");
        assert!(
            line.contains(" POST /pay/************1111?card=************0004 200 canary "),
            "{line}"
        );
        assert!(line.trim_end().ends_with("ms"), "{line}");
        // A refused request (head over the 1 KiB limit) is logged too, without a variant.
        let answer = raw_exchange(
            s.proxy.local_addr,
            format!(
                "GET /x/4111111111111111 HTTP/1.1\r\nhost: p\r\nx-big: {}\r\n\r\n",
                "a".repeat(2_000)
            )
            .as_bytes(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
        let refused = rx.recv().await.unwrap();
        assert!(
            refused.contains(" GET /x/************1111 431 - "),
            "{refused}"
        );
        s.proxy.shutdown().await;
        let mut all = format!("{line}{refused}");
        while let Ok(more) = rx.try_recv() {
            all.push_str(&more);
        }
        for secret in [
            "4111111111111111",
            "5500-0000-0000-0004",
            "secret-body",
            "cvv",
            "secret-token",
            "payer",
            "aaaa",
        ] {
            assert!(!all.contains(secret), "{secret} in the access log: {all}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_gives_up_is_recorded_as_499_not_as_an_error() {
    bounded(async {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let s = setup_with(10_000, |c| {
            c.access_log = Some(AccessLog::new(ChannelWriter(tx)));
        })
        .await;
        // HTTP/2, so that giving up resets the stream at once.
        let stream = TcpStream::connect(s.proxy.local_addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake::<_, _, TestBody>(
            TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let req = Request::get("http://proxy.test/sleep/5000")
            .header("x-user-id", "impatient")
            .body(empty())
            .unwrap();
        send.ready().await.unwrap();
        let pending = send.send_request(req);
        let gave_up = tokio::select! {
            _ = pending => false,
            _ = s.canary.state.arrived.notified() => true,
        };
        assert!(gave_up);
        let line = rx.recv().await.unwrap();
        assert!(line.contains(" GET /sleep/5000 499 canary "), "{line}");
        let w = s.proxy.recorder.take_window();
        assert_eq!(w.canary.requests, 1);
        assert_eq!(w.canary.errors, 0);
        assert_eq!(w.canary.successes, 0);
        assert_eq!(w.canary.latency.count(), 1);
        s.proxy.shutdown().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Health checks and shutdown

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_find_degraded_and_down_upstreams() {
    bounded(async {
        let stable = spawn_upstream("stable").await;
        stable.state.health_status.store(500, Ordering::SeqCst);
        let dead = closed_port().await;
        let mut cfg = config(&stable.url(), &format!("http://{dead}"));
        cfg.upstreams.health_path = Some("/health".into());
        cfg.upstreams.health_interval = 50;
        let proxy = start(cfg, share(0), workers()).await.unwrap();
        let mut updates = proxy.health.subscribe();
        let snapshot = *updates
            .wait_for(|h| h.stable != BackendHealth::Unknown && h.canary != BackendHealth::Unknown)
            .await
            .unwrap();
        assert_eq!(snapshot.stable, BackendHealth::Degraded);
        assert_eq!(snapshot.canary, BackendHealth::Down);
        assert_eq!(proxy.health.stable(), BackendHealth::Degraded);
        assert_eq!(proxy.health.canary(), BackendHealth::Down);
        // Each probe that found the canary down is a failed attempt of its own kind: the
        // error rate sees it, no request (no latency, no user) is made up.
        let w = proxy.recorder.take_window();
        assert!(w.canary.failed_probes >= 1);
        assert_eq!((w.canary.requests, w.canary.errors), (0, 0));
        assert_eq!(
            w.canary.error_counts(),
            (w.canary.failed_probes, w.canary.failed_probes)
        );
        assert_eq!(w.canary.error_rate(), 1.0);
        assert_eq!(w.stable.failed_probes, 0, "stable probes are not recorded");
        // The stable upstream recovers.
        stable.state.health_status.store(204, Ordering::SeqCst);
        updates
            .wait_for(|h| h.stable == BackendHealth::Operational)
            .await
            .unwrap();
        assert_eq!(
            serde_json::to_string(&proxy.health.stable()).unwrap(),
            "\"operational\""
        );
        proxy.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_health_path_health_is_unknown() {
    bounded(async {
        let s = setup(0).await;
        assert_eq!(s.proxy.health.stable(), BackendHealth::Unknown);
        assert_eq!(s.proxy.health.canary(), BackendHealth::Unknown);
        s.proxy.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_in_flight_requests_finish() {
    bounded(async {
        let s = setup(0).await;
        let addr = s.proxy.local_addr;
        let mut client = H1::connect(addr).await;
        let in_flight = tokio::spawn(async move { client.get("/sleep/500", &[]).await });
        // Wait until the request is at the upstream, then shut down.
        s.stable.state.arrived.notified().await;
        let started = Instant::now();
        s.proxy.shutdown().await;
        let (status, _, body) = in_flight.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, "slept");
        assert!(started.elapsed() < Duration::from_secs(4));
        // No longer accepting.
        assert!(TcpStream::connect(addr).await.is_err());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_is_refused() {
    bounded(async {
        let ok = "http://127.0.0.1:1";
        for (stable, canary) in [
            ("ftp://127.0.0.1:1", ok),
            (ok, "127.0.0.1:1"),
            (ok, "http://"),
            ("not a url", ok),
        ] {
            let err = start(config(stable, canary), share(0), workers())
                .await
                .unwrap_err();
            assert!(err.to_string().contains("upstream"), "{err}");
        }
        let mut cfg = config(ok, ok);
        cfg.cohort.key = CohortKey::Header("bad header".into());
        assert!(start(cfg, share(0), workers()).await.is_err());
        let mut cfg = config(ok, ok);
        cfg.cohort.formula = 2;
        assert!(start(cfg, share(0), workers()).await.is_err());
        let mut cfg = config(ok, ok);
        cfg.limits.max_connections = 0;
        assert!(start(cfg, share(0), workers()).await.is_err());
        // Binding a port in use fails with a bind error.
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut cfg = config(ok, ok);
        cfg.listen = taken.local_addr().unwrap();
        let err = start(cfg, share(0), workers()).await.unwrap_err();
        assert!(err.to_string().contains("cannot listen"), "{err}");
    })
    .await;
}

#[test]
fn user_hash_is_xxh3_of_the_key() {
    assert_eq!(user_hash(b"user-1"), xxhash_rust::xxh3::xxh3_64(b"user-1"));
}

#[test]
fn config_from_the_example_plan() {
    let src = include_str!("../../../examples/payments-backend.toml");
    let plan = ramp_core::plan::parse_plan(src, "payments-backend.toml").unwrap();
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let cfg = ProxyConfig::for_plan(listen, &plan).unwrap();
    assert_eq!(cfg.upstreams, plan.upstreams.clone().unwrap());
    assert_eq!(cfg.cohort, plan.cohort);
    assert_eq!(cfg.latency_thresholds_us, plan.latency_thresholds_us());
    assert_eq!(cfg.limits, Limits::default());
    let mut no_upstreams = plan.clone();
    no_upstreams.upstreams = None;
    assert!(ProxyConfig::for_plan(listen, &no_upstreams).is_err());
}

/// Regression (issue 11, found by schemathesis): with SO_REUSEPORT a second proxy could bind
/// an address another proxy listened on, and the two split its users. A taken address is a
/// bind error, whoever holds it; port 0 still picks a free port.
#[tokio::test]
async fn an_address_another_proxy_listens_on_is_refused() {
    let s = setup(0).await;
    let taken = s.proxy.local_addr;
    let mut cfg = config(&s.stable.url(), &s.canary.url());
    cfg.listen = taken;
    let err = start(cfg, share(5_000), workers()).await.unwrap_err();
    assert!(
        matches!(&err, ramp_proxy::ProxyError::Bind { addr, .. } if *addr == taken),
        "{err}"
    );
    // A plain listener holds it too.
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg = config(&s.stable.url(), &s.canary.url());
    cfg.listen = plain.local_addr().unwrap();
    assert!(start(cfg, share(0), workers()).await.is_err());
    let other = start(
        config(&s.stable.url(), &s.canary.url()),
        share(0),
        workers(),
    )
    .await
    .unwrap();
    assert_ne!(other.local_addr, taken);
}
