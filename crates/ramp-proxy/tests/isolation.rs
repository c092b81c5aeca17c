//! Isolation between variants and evidence that is fair to each, through the real proxy on
//! 127.0.0.1 with raw-socket upstreams and clients: a hanging canary fills only its own
//! bulkhead, a body reset or stalled mid-way is the upstream's error, a slow or stalled upload
//! is the client's doing, and malformed requests are refused before they reach anyone.
// Tests bound their own waits and measure on the real clock; no decision reads it.
#![allow(clippy::disallowed_methods)]
// The test prints the latencies it measured.
#![allow(clippy::print_stdout)]

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioExecutor;
use ramp_core::cohort::{Salt, ShareBp, bucket};
use ramp_proxy::{Limits, ProxyConfig, ProxyHandle, Workers, start};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SALT: &str = "isolation-test";

fn workers() -> &'static Workers {
    ramp_harness::proxy_workers()
}

use ramp_harness::bounded;

/// A user id that the share `bp` routes to the canary (or to stable).
fn user_on(canary: bool, bp: u16, n: usize) -> String {
    let salt = Salt::new(SALT);
    (0..)
        .map(|i| format!("user-{i}"))
        .filter(|k| (bucket(salt, k.as_bytes()) < bp) == canary)
        .nth(n)
        .unwrap()
}

/// How a raw upstream answers each request (after reading its head, and its body when
/// `content-length` says there is one).
#[derive(Clone, Copy)]
enum Behaviour {
    /// 200 "ok".
    Ok,
    /// Reads the request and never answers.
    Hang,
    /// A 200 head announcing 1000 bytes, 10 bytes, then the connection closes.
    ResetMidBody,
    /// A 200 head announcing 1000 bytes, 10 bytes, then nothing more (connection kept open).
    StallMidBody,
    /// `transfer-encoding: chunked` beside `content-length: 3`, with a 26-byte body.
    LengthBesideChunked,
    /// A 200 head at once, its 2-byte body 300 ms later.
    SlowBody,
    /// Accepts connections and never reads from them.
    NeverReads,
}

struct RawUpstream {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
}

async fn raw_upstream(behaviour: Behaviour) -> RawUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let counted = counted.clone();
            if let Behaviour::NeverReads = behaviour {
                tokio::spawn(async move {
                    let _held = s;
                    std::future::pending::<()>().await;
                });
                continue;
            }
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // Read one request head and its content-length body.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < head_end + len {
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..head_end + len);
                    counted.fetch_add(1, Ordering::SeqCst);
                    let answer: &[u8] = match behaviour {
                        Behaviour::Ok => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                        Behaviour::Hang | Behaviour::NeverReads => {
                            std::future::pending::<()>().await;
                            return;
                        }
                        Behaviour::ResetMidBody | Behaviour::StallMidBody => {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789"
                        }
                        Behaviour::SlowBody => {
                            if s
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
                                .await
                                .is_err()
                            {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            b"ok"
                        }
                        Behaviour::LengthBesideChunked => {
                            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n"
                        }
                    };
                    if s.write_all(answer).await.is_err() {
                        return;
                    }
                    match behaviour {
                        Behaviour::ResetMidBody => return,
                        Behaviour::StallMidBody => {
                            std::future::pending::<()>().await;
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    RawUpstream { addr, requests }
}

fn config(stable: SocketAddr, canary: SocketAddr, limits: Limits) -> ProxyConfig {
    ProxyConfig {
        limits,
        owner: "rollout isolation".into(),
        ..ramp_harness::proxy_config(
            &format!("http://{stable}"),
            &format!("http://{canary}"),
            SALT,
        )
    }
}

async fn proxy(cfg: ProxyConfig, bp: u16) -> ProxyHandle {
    start(cfg, ShareBp::new(bp).unwrap(), workers())
        .await
        .unwrap()
}

/// Sends raw bytes on a fresh connection; returns everything the proxy sent until it closed
/// or `wait` passed.
async fn raw(proxy: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_canary_fills_only_its_own_bulkhead_and_stable_users_do_not_wait() {
    bounded(async {
        let stable = raw_upstream(Behaviour::Ok).await;
        let canary = raw_upstream(Behaviour::Hang).await;
        let limits = Limits {
            response_timeout: Duration::from_secs(20),
            variant_max_in_flight: 20,
            variant_max_queued: 20,
            variant_queue_timeout: Duration::from_millis(200),
            // Fewer client connections than the hanging canary requests below: without
            // bulkheads the canary's users would hold every slot.
            max_connections: 150,
            ..Limits::default()
        };
        let p = proxy(config(stable.addr, canary.addr, limits), 5_000).await;
        let addr = p.local_addr;
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http::<Empty<Bytes>>();
        let get = |user: String| {
            let client = client.clone();
            async move {
                let req = http::Request::get(format!("http://{addr}/pay"))
                    .header("x-user-id", user)
                    .body(Empty::new())
                    .unwrap();
                let started = Instant::now();
                let status = match client.request(req).await {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        let _ = r.into_body().collect().await;
                        s
                    }
                    Err(_) => 0,
                };
                (status, started.elapsed())
            }
        };
        // Stable latency before the canary hangs.
        let mut before = Vec::new();
        for i in 0..100 {
            before.push(get(user_on(false, 5_000, i)).await.1);
        }
        // 300 canary users at once: 20 in flight, 20 waiting, the rest refused at once.
        let mut canary_calls = Vec::new();
        for i in 0..300 {
            canary_calls.push(tokio::spawn(get(user_on(true, 5_000, i))));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Stable users meanwhile.
        let mut during = Vec::new();
        for i in 0..100 {
            let (status, took) = get(user_on(false, 5_000, i)).await;
            assert_eq!(
                status, 200,
                "a stable user was refused while the canary hangs"
            );
            during.push(took);
        }
        assert_eq!(
            p.bulkheads()[1].0,
            20,
            "the canary's bulkhead holds 20 in flight"
        );
        assert_eq!(p.bulkheads()[0].1, 0, "stable refused nobody");
        before.sort();
        during.sort();
        let p99 = |v: &[Duration]| v[v.len() * 99 / 100 - 1];
        println!(
            "stable p99 before {:?}, while the canary hangs {:?}",
            p99(&before),
            p99(&during)
        );
        // Generous: a stable user waiting behind the canary would wait for its 20 s timeout.
        assert!(p99(&during) < Duration::from_secs(2), "{:?}", p99(&during));
        // Every canary user beyond the 20 in flight gets a 503 (the 20 queued after their
        // 200 ms wait), and those count as canary errors — or, when 300 connect at once into
        // 150 slots, had its connection closed before its request was read (the listener
        // makes room by closing the oldest connection that has said nothing yet).
        let waited = Instant::now();
        while canary_calls.iter().filter(|c| c.is_finished()).count() < 280
            && waited.elapsed() < Duration::from_secs(30)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (mut refused, mut closed) = (0, 0);
        let mut hanging = Vec::new();
        for call in canary_calls {
            if call.is_finished() {
                match call.await.unwrap().0 {
                    503 => refused += 1,
                    0 => closed += 1,
                    other => panic!("a canary user got {other}"),
                }
            } else {
                hanging.push(call);
            }
        }
        assert_eq!((refused + closed, hanging.len()), (280, 20));
        assert!(refused >= 100, "{refused} refused, {closed} closed");
        let w = p.recorder.take_window();
        assert!(
            w.canary.errors >= refused,
            "{} < {refused}",
            w.canary.errors
        );
        assert_eq!(w.stable.errors, 0);
        assert_eq!(w.stable.requests, 200);
        for c in hanging {
            c.abort();
        }
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_reset_or_stalled_mid_way_is_an_error_of_that_variant() {
    bounded(async {
        let stable = raw_upstream(Behaviour::Ok).await;
        for behaviour in [Behaviour::ResetMidBody, Behaviour::StallMidBody] {
            let canary = raw_upstream(behaviour).await;
            let limits = Limits {
                upstream_body_timeout: Duration::from_millis(300),
                ..Limits::default()
            };
            let p = proxy(config(stable.addr, canary.addr, limits), 10_000).await;
            let answer = raw(
                p.local_addr,
                b"GET /pay HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\n\r\n",
                Duration::from_secs(5),
            )
            .await;
            // The client got the 200 head and part of the body, then the connection closed.
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            assert!(answer.ends_with("0123456789"), "{answer}");
            let w = p.recorder.take_window();
            assert_eq!(
                (w.canary.requests, w.canary.errors, w.canary.successes),
                (1, 1, 0),
                "a cut-off 200 is not a success"
            );
            p.shutdown().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_stalled_upload_never_counts_against_the_variant() {
    bounded(async {
        let up = raw_upstream(Behaviour::Ok).await;
        let limits = Limits {
            response_timeout: Duration::from_millis(300),
            client_body_timeout: Duration::from_millis(500),
            ..Limits::default()
        };
        let p = proxy(config(up.addr, up.addr, limits), 10_000).await;
        // A steady upload that takes longer than the response timeout: not a 504.
        let mut s = TcpStream::connect(p.local_addr).await.unwrap();
        s.write_all(b"POST /pay HTTP/1.1\r\nhost: x\r\nx-user-id: u\r\ncontent-length: 10\r\n\r\n")
            .await
            .unwrap();
        for b in b"0123456789" {
            tokio::time::sleep(Duration::from_millis(100)).await;
            s.write_all(&[*b]).await.unwrap();
        }
        let mut out = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut out))
            .await
            .unwrap()
            .unwrap();
        let answer = String::from_utf8_lossy(&out[..n]);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // An upload that stops half-way: 408 for the client, nothing against the variant.
        let answer = raw(
            p.local_addr,
            b"POST /pay HTTP/1.1\r\nhost: x\r\nx-user-id: u\r\ncontent-length: 10\r\n\r\n01234",
            Duration::from_secs(5),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        let w = p.recorder.take_window();
        assert_eq!((w.canary.requests, w.canary.errors), (2, 0));
        assert_eq!(w.canary.successes, 1);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_with_400_and_never_forwarded() {
    bounded(async {
        let up = raw_upstream(Behaviour::Ok).await;
        let p = proxy(config(up.addr, up.addr, Limits::default()), 0).await;
        let cases: [(&str, &[u8]); 7] = [
            (
                "chunked twice",
                b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
            ),
            ("no host", b"GET / HTTP/1.1\r\n\r\n"),
            ("two hosts", b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n"),
            ("a host with a path", b"GET / HTTP/1.1\r\nhost: a/b\r\n\r\n"),
            ("a host with user info", b"GET / HTTP/1.1\r\nhost: u@a\r\n\r\n"),
            ("authority form", b"GET example.com:443 HTTP/1.1\r\nhost: example.com\r\n\r\n"),
            (
                "two cohort headers",
                b"GET / HTTP/1.1\r\nhost: x\r\nx-user-id: a\r\nx-user-id: b\r\n\r\n",
            ),
        ];
        for (what, bytes) in cases {
            let answer = raw(p.local_addr, bytes, Duration::from_millis(500)).await;
            assert!(answer.starts_with("HTTP/1.1 400"), "{what}: {answer}");
        }
        assert_eq!(up.requests.load(Ordering::SeqCst), 0, "something was forwarded");
        // Both content-length and transfer-encoding: hyper's parser drops the length, reads
        // the body as chunked and closes the connection after the answer (RFC 9112 6.1 and
        // 6.3, what an intermediary must do before forwarding), so nothing can be smuggled
        // behind it on that connection.
        let answer = raw(
            p.local_addr,
            b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n",
            Duration::from_secs(2),
        )
        .await;
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
        assert!(answer.contains("connection: close"), "{answer}");
        // Well-formed requests still pass: HTTP/1.0 without a host, an IPv6 host with a port.
        for ok in [
            &b"GET / HTTP/1.0\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nhost: [::1]:8080\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: pay.example.com\r\nx-user-id: a\r\n\r\n",
        ] {
            let answer = raw(p.local_addr, ok, Duration::from_millis(300)).await;
            assert!(answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"), "{answer}");
        }
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_length_beside_chunked_framing_never_truncates_the_body() {
    bounded(async {
        let up = raw_upstream(Behaviour::LengthBesideChunked).await;
        let p = proxy(config(up.addr, up.addr, Limits::default()), 0).await;
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build_http::<Empty<Bytes>>();
        for _ in 0..3 {
            let r = client
                .request(
                    http::Request::get(format!("http://{}/", p.local_addr))
                        .body(Empty::new())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert!(r.headers().get("content-length").is_none());
            let body = r.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"abcdefghijklmnopqrstuvwxyz");
        }
        p.shutdown().await;
    })
    .await;
}

/// A log writer that takes 20 ms per line, far slower than the requests.
struct SlowWriter(Arc<AtomicUsize>);

impl std::io::Write for SlowWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::thread::sleep(Duration::from_millis(20));
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_never_wait_for_a_slow_access_log_and_its_drops_are_counted() {
    bounded(async {
        let up = raw_upstream(Behaviour::Ok).await;
        let written = Arc::new(AtomicUsize::new(0));
        let shared_drops = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut cfg = config(up.addr, up.addr, Limits::default());
        cfg.access_log = Some(
            ramp_proxy::AccessLog::new(SlowWriter(written.clone()))
                .with_queue(4)
                .counting_drops_in(shared_drops.clone()),
        );
        let p = proxy(cfg, 0).await;
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build_http::<Empty<Bytes>>();
        for _ in 0..200 {
            let r = client
                .request(
                    http::Request::get(format!("http://{}/pay", p.local_addr))
                        .body(Empty::new())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
        // Had requests waited for the log, nothing would have been dropped.
        let dropped = p.access_log_dropped();
        assert!(dropped > 100, "only {dropped} dropped");
        assert_eq!(shared_drops.load(Ordering::SeqCst), dropped);
        p.shutdown().await;
        assert_eq!(written.load(Ordering::SeqCst) as u64 + dropped, 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed_gracefully() {
    bounded(async {
        let up = raw_upstream(Behaviour::Ok).await;
        let limits = Limits {
            idle_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let p = proxy(config(up.addr, up.addr, limits), 0).await;
        let tcp = TcpStream::connect(p.local_addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        let conn = tokio::spawn(conn);
        let started = Instant::now();
        // Busy: a request every 100 ms keeps it open past the idle timeout.
        for _ in 0..8 {
            let r = send
                .send_request(
                    http::Request::get(format!("http://{}/", p.local_addr))
                        .body(Empty::<Bytes>::new())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!conn.is_finished(), "closed while in use");
        // Idle: the proxy sends GOAWAY and the connection ends.
        tokio::time::timeout(Duration::from_secs(10), conn)
            .await
            .expect("an idle HTTP/2 connection stayed open")
            .unwrap()
            .unwrap();
        println!("idle connection closed after {:?}", started.elapsed());
        assert!(started.elapsed() > Duration::from_millis(800));
        let stopping = Instant::now();
        p.shutdown().await;
        println!("shutdown took {:?}", stopping.elapsed());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_runs_to_the_head_by_default_and_to_the_last_byte_when_the_plan_says() {
    bounded(async {
        let up = raw_upstream(Behaviour::SlowBody).await;
        for last_byte in [false, true] {
            let mut cfg = config(up.addr, up.addr, Limits::default());
            cfg.latency_to_last_byte = last_byte;
            let p = proxy(cfg, 0).await;
            let answer = raw(
                p.local_addr,
                b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
                Duration::from_secs(5),
            )
            .await;
            assert!(answer.ends_with("ok"), "{answer}");
            let w = p.recorder.take_window();
            // The plan's threshold here is 200 ms; the body came 300 ms after the head.
            assert_eq!(w.stable.successes, 1);
            assert_eq!(
                w.stable.slow,
                vec![u64::from(last_byte)],
                "last_byte = {last_byte}"
            );
            p.shutdown().await;
        }
    })
    .await;
}

/// Regression: an upstream that never takes the upload (here: never reads its socket) kept the
/// request waiting until the client gave up, recorded as the client's doing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_never_takes_the_upload_times_out_as_its_error() {
    bounded(async {
        let stable = raw_upstream(Behaviour::Ok).await;
        let canary = raw_upstream(Behaviour::NeverReads).await;
        let limits = Limits {
            response_timeout: Duration::from_millis(500),
            ..Limits::default()
        };
        let p = proxy(config(stable.addr, canary.addr, limits), 10_000).await;
        let mut s = TcpStream::connect(p.local_addr).await.unwrap();
        let body = vec![b'x'; 32 << 20];
        let head = format!(
            "POST /pay HTTP/1.1\r\nhost: x\r\nx-user-id: u\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let (mut r, mut w) = s.into_split();
        // The client keeps sending as fast as the proxy takes it.
        let writer = tokio::spawn(async move {
            let _ = w.write_all(&body).await;
            w
        });
        let mut out = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(20), r.read(&mut out))
            .await
            .expect("no answer")
            .unwrap();
        let answer = String::from_utf8_lossy(&out[..n]).into_owned();
        assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
        writer.abort();
        let w = p.recorder.take_window();
        assert_eq!((w.canary.requests, w.canary.errors), (1, 1));
        p.shutdown().await;
    })
    .await;
}
