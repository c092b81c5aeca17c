//! Helpers shared by ramp's tests: tiny upstreams on 127.0.0.1, fresh temporary directories,
//! test traffic, and doubles of the controller's ports and of the store ([`doubles`]).

pub mod pki;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::net::TcpListener;

/// The proxy worker pool the tests of one binary share (two event-loop threads).
pub fn proxy_workers() -> &'static ramp_proxy::Workers {
    static WORKERS: std::sync::OnceLock<ramp_proxy::Workers> = std::sync::OnceLock::new();
    WORKERS.get_or_init(|| ramp_proxy::Workers::new(2).expect("proxy workers"))
}

/// A proxy configuration for tests: `http(s)://` upstreams as given, the cohort by
/// `x-user-id` with `salt`, one 200 ms latency threshold, `x-ramp-variant` on, default limits,
/// cleartext, nobody trusted. Tests override fields with `..proxy_config(…)`.
pub fn proxy_config(stable: &str, canary: &str, salt: &str) -> ramp_proxy::ProxyConfig {
    use ramp_core::plan::{Cohort, CohortKey, UnkeyedRoute, Upstreams};
    ramp_proxy::ProxyConfig {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        upstreams: Upstreams {
            stable: stable.to_owned(),
            canary: canary.to_owned(),
            health_path: None,
            health_interval: 1_000,
            stable_tls: Default::default(),
            canary_tls: Default::default(),
        },
        cohort: Cohort {
            key: CohortKey::Header("x-user-id".into()),
            salt: salt.into(),
            formula: 1,
            unkeyed: UnkeyedRoute::Stable,
        },
        latency_thresholds_us: vec![200_000],
        latency_to_last_byte: false,
        limits: ramp_proxy::Limits::default(),
        variant_header: true,
        access_log: None,
        listen_tls: None,
        certificates: ramp_proxy::tls::Certificates::new(),
        owner: "rollout test".into(),
        trusted_proxies: Default::default(),
        proxy_protocol: false,
    }
}

/// Runs a test body with an upper bound on its duration (60 s).
pub async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(60), f)
        .await
        .expect("test took longer than 60 s")
}

/// A tiny upstream on 127.0.0.1: 200 normally, 500 while `fail` is set; counts requests.
pub async fn upstream(fail: Arc<AtomicBool>, hits: Arc<AtomicU64>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let fail = fail.clone();
            let hits = hits.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    let status = if fail.load(Ordering::Relaxed) {
                        500
                    } else {
                        200
                    };
                    hits.fetch_add(1, Ordering::Relaxed);
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from_static(b"ok")))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A new, empty directory for one test run: unique per process and moment, so a stale journal
/// from an earlier run (or a reused pid) can never leak in.
pub fn fresh_dir(name: &str) -> std::path::PathBuf {
    // Only for a unique directory name.
    #[allow(clippy::disallowed_methods)]
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("{name}-{}-{nanos}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    dir
}

/// Sends `n` GET requests to `proxy` with `x-user-id` values `user-0`, `user-1`, ... cycling
/// through `users` distinct users; answers how many got a response (bodies are drained).
pub async fn traffic(proxy: SocketAddr, n: u32, users: u32) -> u32 {
    use http_body_util::{BodyExt, Empty};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let mut answered = 0;
    for i in 0..n {
        let req = Request::get(format!("http://{proxy}/pay"))
            .header("x-user-id", format!("user-{}", i % users.max(1)))
            .body(Empty::new())
            .unwrap();
        if let Ok(resp) = client.request(req).await {
            let _ = resp.into_body().collect().await;
            answered += 1;
        }
    }
    answered
}

pub mod doubles;
