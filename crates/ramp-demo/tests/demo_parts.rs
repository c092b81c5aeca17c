//! The demo's building blocks on real sockets (127.0.0.1): the demo backend and the load
//! generator. Every test is bounded in time.
// Tests bound their own waits and measure on the real clock; no decision reads it.
#![allow(clippy::disallowed_methods)]

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ramp_demo::backend::{self, Behaviour};
use ramp_demo::load::{self, LoadConfig};
use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// Upper bound of every test.
const LIMIT: Duration = Duration::from_secs(30);

async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("the test took too long")
}

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

async fn get(c: &HttpClient, addr: SocketAddr, path: &str) -> Result<Reply, String> {
    let uri = format!("http://{addr}{path}");
    let resp = c
        .get(uri.parse().map_err(|e| format!("{e}"))?)
        .await
        .map_err(|e| format!("{e}"))?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| format!("{e}"))?.to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8(body.to_vec()).map_err(|e| format!("{e}"))?,
    })
}

/// Sends `n` GETs to `path`, `parallel` at a time; returns each reply and its duration.
async fn many(
    addr: SocketAddr,
    path: &'static str,
    n: usize,
    parallel: usize,
) -> Vec<(Reply, Duration)> {
    let c = client();
    let mut out = Vec::with_capacity(n);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        if i >= parallel {
            out.push(set.join_next().await.unwrap().unwrap());
        }
        let c = c.clone();
        set.spawn(async move {
            let t = Instant::now();
            let r = get(&c, addr, path).await.expect("a reply");
            (r, t.elapsed())
        });
    }
    while let Some(r) = set.join_next().await {
        out.push(r.unwrap());
    }
    out
}

fn header<'a>(r: &'a Reply, name: &str) -> &'a str {
    r.headers
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_answers_200_with_its_header_and_a_json_body() {
    bounded(async {
        let b = backend::start("stable", Behaviour::new(0.0, 0.0, 0.0))
            .await
            .unwrap();
        assert!(b.addr.ip().is_loopback());
        let c = client();

        let r = get(&c, b.addr, "/api/payments?amount=3").await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(header(&r, "x-demo-backend"), "stable");
        assert_eq!(header(&r, "content-type"), "application/json");
        assert_eq!(r.body, r#"{"backend":"stable","path":"/api/payments"}"#);

        // A path `http` accepts with a quote and a backslash still makes valid JSON.
        let r = get(&c, b.addr, "/odd\"path\\x").await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["path"], "/odd\"path\\x");
        assert_eq!(v["backend"], "stable");

        let r = get(&c, b.addr, "/health").await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ok"));
        assert_eq!(header(&r, "x-demo-backend"), "stable");

        b.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_shutdown_closes_the_port() {
    bounded(async {
        let b = backend::start("x", Behaviour::new(0.0, 0.0, 0.0))
            .await
            .unwrap();
        let addr = b.addr;
        assert_eq!(get(&client(), addr, "/").await.unwrap().status, 200);
        b.shutdown().await;
        let err = TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_rate_one_fails_every_request_and_changes_live() {
    bounded(async {
        let behaviour = Behaviour::new(1.0, 0.0, 0.0);
        let b = backend::start("canary", behaviour.clone()).await.unwrap();
        for (r, _) in many(b.addr, "/api/payments", 100, 10).await {
            assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(header(&r, "x-demo-backend"), "canary");
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(v["error"], "injected");
        }
        // /health never fails.
        let c = client();
        assert_eq!(get(&c, b.addr, "/health").await.unwrap().status, 200);
        behaviour.set_error_rate(0.0);
        assert_eq!(b.behaviour.error_rate(), 0.0);
        for (r, _) in many(b.addr, "/api/payments", 50, 10).await {
            assert_eq!(r.status, StatusCode::OK);
        }
        b.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_rate_is_honoured_within_tolerance() {
    bounded(async {
        let b = backend::start("canary", Behaviour::new(0.3, 0.0, 0.0))
            .await
            .unwrap();
        let replies = many(b.addr, "/api/payments", 500, 20).await;
        let failed = replies
            .iter()
            .filter(|(r, _)| r.status == StatusCode::INTERNAL_SERVER_ERROR)
            .count();
        let ok = replies
            .iter()
            .filter(|(r, _)| r.status == StatusCode::OK)
            .count();
        assert_eq!(failed + ok, 500);
        // Expected 150, σ ≈ 10.2: four sigmas either side.
        assert!((109..=191).contains(&failed), "{failed} of 500 failed");
        b.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_median_is_roughly_as_configured() {
    bounded(async {
        let behaviour = Behaviour::new(0.0, 20.0, 40.0);
        let b = backend::start("slow", behaviour.clone()).await.unwrap();
        let mut times: Vec<Duration> = many(b.addr, "/api", 200, 50)
            .await
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        times.sort();
        let median = times[100];
        assert!(
            median >= Duration::from_millis(10) && median <= Duration::from_millis(40),
            "median {median:?}"
        );
        // /health does not wait.
        let t = Instant::now();
        get(&client(), b.addr, "/health").await.unwrap();
        assert!(t.elapsed() < Duration::from_millis(500));

        behaviour.set_latency(0.0, 0.0);
        let mut times: Vec<Duration> = many(b.addr, "/api", 100, 10)
            .await
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        times.sort();
        assert!(times[50] < Duration::from_millis(10), "{:?}", times[50]);
        b.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_refuses_connections_and_up_serves_again_on_the_same_port() {
    bounded(async {
        let behaviour = Behaviour::new(0.0, 0.0, 0.0);
        let b = backend::start("canary", behaviour.clone()).await.unwrap();
        let addr = b.addr;
        let c = client();
        assert_eq!(get(&c, addr, "/api").await.unwrap().status, 200);
        assert!(b.is_listening());

        // A request in flight when the backend goes down is cut off.
        behaviour.set_latency(2000.0, 2000.0);
        let in_flight = tokio::spawn({
            let c = c.clone();
            async move { get(&c, addr, "/api/slow").await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;

        behaviour.set_down(true);
        assert!(behaviour.is_down());
        b.wait_listening(false).await;
        assert!(!b.is_listening());
        let err = TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        // The pooled keep-alive connection is gone too.
        assert!(get(&c, addr, "/api").await.is_err());
        let cut = in_flight.await.unwrap();
        assert!(cut.is_err(), "the in-flight request should fail");

        behaviour.set_latency(0.0, 0.0);
        behaviour.set_down(false);
        b.wait_listening(true).await;
        assert_eq!(b.addr, addr);
        let r = get(&client(), addr, "/api").await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(header(&r, "x-demo-backend"), "canary");

        // Down and up again, quickly.
        for _ in 0..3 {
            behaviour.set_down(true);
            b.wait_listening(false).await;
            behaviour.set_down(false);
            b.wait_listening(true).await;
        }
        assert_eq!(get(&client(), addr, "/health").await.unwrap().status, 200);
        b.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_started_down_refuses_until_up() {
    bounded(async {
        let behaviour = Behaviour::new(0.0, 0.0, 0.0);
        behaviour.set_down(true);
        let b = backend::start("stable", behaviour.clone()).await.unwrap();
        b.wait_listening(false).await;
        let err = TcpStream::connect(b.addr).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        behaviour.set_down(false);
        b.wait_listening(true).await;
        assert_eq!(get(&client(), b.addr, "/").await.unwrap().status, 200);
        b.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_backend_stops_listening() {
    bounded(async {
        let b = backend::start("x", Behaviour::new(0.0, 0.0, 0.0))
            .await
            .unwrap();
        let addr = b.addr;
        drop(b);
        let t = Instant::now();
        loop {
            match TcpStream::connect(addr).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
                _ => {
                    assert!(t.elapsed() < Duration::from_secs(3), "still listening");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    })
    .await;
}

/// What the counting test server saw.
#[derive(Default)]
struct Seen {
    requests: AtomicU64,
    users: Mutex<HashSet<String>>,
    bad_user_ids: AtomicU64,
}

/// A tiny server that counts requests and distinct `x-user-id` values, answers after `delay`
/// with `x-ramp-variant: canary` for users whose number is a multiple of 4 (else `stable`).
async fn counting_server(delay: Duration, users: u64) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let shared = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let seen = shared.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        seen.requests.fetch_add(1, Relaxed);
                        let id = req
                            .headers()
                            .get("x-user-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let n = id
                            .strip_prefix("user-")
                            .and_then(|n| n.parse::<u64>().ok())
                            .filter(|&n| n < users);
                        if n.is_none() {
                            seen.bad_user_ids.fetch_add(1, Relaxed);
                        }
                        seen.users.lock().unwrap().insert(id);
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        let variant = if n.unwrap_or(1).is_multiple_of(4) {
                            "canary"
                        } else {
                            "stable"
                        };
                        let resp = Response::builder()
                            .header("x-ramp-variant", variant)
                            .body(Full::new(Bytes::from_static(b"{\"ok\":true}")))
                            .unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn config(target: SocketAddr, rps: f64, users: u32, concurrency: usize) -> LoadConfig {
    LoadConfig {
        target,
        requests_per_second: rps,
        users,
        concurrency,
        seed: 7,
        path: "/api/payments".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_paces_500_rps_over_many_users_and_stops() {
    bounded(async {
        let (addr, seen) = counting_server(Duration::ZERO, 1000).await;
        let handle = load::start(config(addr, 500.0, 1000, 64));
        let stats = handle.stats.clone();
        tokio::time::sleep(Duration::from_secs(2)).await;
        handle.stop().await;

        let sent = stats.sent();
        assert!(
            (900..=1100).contains(&sent),
            "sent {sent} in 2 s at 500 rps"
        );
        assert_eq!(stats.skipped(), 0);
        // Everything sent arrived and was answered.
        assert_eq!(seen.requests.load(Relaxed), sent);
        assert_eq!(stats.completed(), sent);
        assert_eq!(stats.ok(), sent);
        assert_eq!(stats.failed(), 0);
        assert_eq!(stats.canary() + stats.stable(), sent);
        let canary_share = stats.canary() as f64 / sent as f64;
        assert!(
            (0.17..0.33).contains(&canary_share),
            "canary share {canary_share}"
        );
        // Users spread uniformly: ~632 distinct among 1000 draws from 1000 users.
        assert_eq!(seen.bad_user_ids.load(Relaxed), 0);
        let distinct = seen.users.lock().unwrap().len();
        assert!(distinct > 500, "{distinct} distinct users");

        // Nothing arrives after stop.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(seen.requests.load(Relaxed), sent);
        assert_eq!(stats.sent(), sent);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_rate_can_pause_and_change_and_a_dropped_handle_stops() {
    bounded(async {
        let (addr, seen) = counting_server(Duration::ZERO, 50).await;
        let handle = load::start(config(addr, 0.0, 50, 8));
        let stats = handle.stats.clone();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(stats.sent(), 0, "paused at rate 0");

        handle.set_rate(200.0);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let first = stats.sent();
        assert!((150..=250).contains(&first), "{first} in 1 s at 200 rps");

        handle.set_rate(0.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let paused = stats.sent();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(stats.sent(), paused);

        handle.set_rate(100.0);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(stats.sent() > paused);
        drop(handle);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after_drop = seen.requests.load(Relaxed);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(seen.requests.load(Relaxed), after_drop);
        assert_eq!(stats.sent(), after_drop);
        assert!(seen.users.lock().unwrap().len() <= 50);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_that_cannot_keep_up_sends_as_fast_as_concurrency_allows() {
    bounded(async {
        // 4 in flight at 100 ms each: at most ~40 req/s against a target of 200.
        let (addr, seen) = counting_server(Duration::from_millis(100), 100).await;
        let handle = load::start(config(addr, 200.0, 100, 4));
        let stats = handle.stats.clone();
        tokio::time::sleep(Duration::from_secs(3)).await;
        handle.stop().await;
        let (sent, skipped) = (stats.sent(), stats.skipped());
        assert!((90..=125).contains(&sent), "sent {sent}");
        // 600 slots in 3 s: what was not sent was dropped, except at most ~1 s of backlog.
        assert!(skipped >= 250, "skipped {skipped}");
        assert!(sent + skipped <= 610, "sent {sent} + skipped {skipped}");
        assert_eq!(seen.requests.load(Relaxed), sent);
        assert_eq!(stats.ok(), sent);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_stop_abandons_requests_that_never_end() {
    bounded(async {
        let (addr, seen) = counting_server(Duration::from_secs(20), 10).await;
        let handle = load::start(config(addr, 100.0, 10, 8));
        let stats = handle.stats.clone();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t = Instant::now();
        handle.stop().await;
        let took = t.elapsed();
        assert!(took >= load::STOP_GRACE, "stop waited {took:?}");
        assert!(took < load::STOP_GRACE + Duration::from_secs(1), "{took:?}");
        assert_eq!(stats.sent(), 8, "at most `concurrency` in flight");
        assert_eq!(stats.completed(), 0);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(seen.requests.load(Relaxed), 8);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_against_a_demo_backend_counts_failures() {
    bounded(async {
        let b = backend::start("canary", Behaviour::new(0.5, 1.0, 3.0))
            .await
            .unwrap();
        let handle = load::start(config(b.addr, 400.0, 1000, 32));
        let stats = handle.stats.clone();
        tokio::time::sleep(Duration::from_secs(1)).await;
        handle.stop().await;
        let sent = stats.sent();
        assert!((340..=460).contains(&sent), "sent {sent}");
        assert_eq!(stats.ok() + stats.failed(), sent);
        let share = stats.failed() as f64 / sent as f64;
        assert!((0.38..0.62).contains(&share), "failed share {share}");
        // The demo backend does not route: no variant header.
        assert_eq!(stats.canary() + stats.stable(), 0);

        // Down: every request fails in transport, quickly.
        b.behaviour.set_down(true);
        b.wait_listening(false).await;
        let handle = load::start(config(b.addr, 200.0, 10, 8));
        let stats = handle.stats.clone();
        tokio::time::sleep(Duration::from_millis(500)).await;
        handle.stop().await;
        assert!(stats.sent() > 50);
        assert_eq!(stats.failed(), stats.sent());
        b.shutdown().await;
    })
    .await;
}
