//! The demo's load generator: virtual users sending GET requests at a target rate.
//!
//! * **Users.** Each request comes from a user drawn uniformly from `users` with a seeded
//!   xoshiro256++ (the same seed gives the same sequence of users) and carries
//!   `x-user-id: user-<n>`, `n` in `0..users` (the keys `ramp simulate` uses).
//! * **Pacing.** Open loop: request *k* is due at `start + k / rate`, computed from the
//!   schedule, not from when the previous one finished, so slow responses do not lower the
//!   rate. At most `concurrency` requests are in flight (a semaphore). When that limit holds the
//!   generator back it sends each due request as soon as a slot frees (as fast as
//!   `concurrency` allows); once it is more than a second behind schedule it drops the backlog
//!   and counts the dropped requests in [`LoadStats::skipped`] rather than bursting later.
//!   A rate of 0 (or negative, or NaN) pauses; [`LoadHandle::set_rate`] changes it live.
//! * **Connections.** One pooled keep-alive HTTP/1.1 client (hyper-util's legacy client),
//!   TCP_NODELAY; response bodies are read to the end and dropped. A request that takes longer
//!   than 10 s is abandoned and counted as failed.
//! * **Bounded.** [`LoadHandle::stop`] (or dropping the handle) stops sending at once, lets the
//!   requests in flight finish for up to 2 s, aborts the rest and closes the connections.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand_xoshiro::Xoshiro256PlusPlus;
use rand_xoshiro::rand_core::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// A request still unanswered after this long is abandoned (and counted as failed).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`LoadHandle::stop`] lets in-flight requests finish before aborting them.
pub const STOP_GRACE: Duration = Duration::from_secs(2);
/// How far behind schedule the generator may fall before it drops the backlog.
pub const MAX_BACKLOG: Duration = Duration::from_secs(1);

/// What to send, where and how fast.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// The proxy (or backend) to load.
    pub target: SocketAddr,
    /// Initial rate; 0 pauses until [`LoadHandle::set_rate`].
    pub requests_per_second: f64,
    /// Distinct virtual users (at least 1).
    pub users: u32,
    /// Most requests in flight at once (at least 1).
    pub concurrency: usize,
    /// Seed of the user sequence.
    pub seed: u64,
    /// Request path (and optional query), e.g. `/api/payments`; must start with `/`.
    pub path: String,
}

/// Live counters of a load run.
#[derive(Debug, Default)]
pub struct LoadStats {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    other: AtomicU64,
    canary: AtomicU64,
    stable: AtomicU64,
    skipped: AtomicU64,
}

impl LoadStats {
    /// Requests sent (handed to the client; in flight ones included).
    pub fn sent(&self) -> u64 {
        self.sent.load(Relaxed)
    }
    /// Requests answered 2xx or 3xx, body read completely.
    pub fn ok(&self) -> u64 {
        self.ok.load(Relaxed)
    }
    /// Requests answered 5xx, or that failed in transport (connect, reset, body error, timeout).
    pub fn failed(&self) -> u64 {
        self.failed.load(Relaxed)
    }
    /// Requests answered 1xx or 4xx (neither ok nor failed).
    pub fn other(&self) -> u64 {
        self.other.load(Relaxed)
    }
    /// Requests done (ok + failed + other); `sent() - completed()` are in flight (or aborted
    /// by stop).
    pub fn completed(&self) -> u64 {
        self.ok() + self.failed() + self.other()
    }
    /// Responses with `x-ramp-variant: canary`.
    pub fn canary(&self) -> u64 {
        self.canary.load(Relaxed)
    }
    /// Responses with `x-ramp-variant: stable`.
    pub fn stable(&self) -> u64 {
        self.stable.load(Relaxed)
    }
    /// Scheduled requests dropped because the generator was more than [`MAX_BACKLOG`] behind
    /// (the target could not keep up with `concurrency` requests in flight).
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Relaxed)
    }
}

/// A running load generator.
#[derive(Debug)]
pub struct LoadHandle {
    /// Its counters.
    pub stats: Arc<LoadStats>,
    rate: watch::Sender<f64>,
    stop: oneshot::Sender<()>,
    driver: JoinHandle<()>,
}

impl LoadHandle {
    /// Changes the rate from now on (0, negative or NaN pause).
    pub fn set_rate(&self, rps: f64) {
        self.rate.send_replace(rps);
    }

    /// Stops sending, waits for the requests in flight (up to [`STOP_GRACE`], then aborts
    /// them) and closes the connections. Once it returns nothing more is sent.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.driver.await;
    }
}

/// Starts generating load on the current tokio runtime.
///
/// # Panics
///
/// Outside a tokio runtime, or if `target` and `path` do not make a valid URI.
pub fn start(config: LoadConfig) -> LoadHandle {
    let uri: Uri = format!("http://{}{}", config.target, config.path)
        .parse()
        .unwrap_or_else(|e| panic!("load path {:?} is not a valid URI path: {e}", config.path));
    let stats = Arc::new(LoadStats::default());
    let (rate_tx, rate_rx) = watch::channel(config.requests_per_second);
    let (stop_tx, stop_rx) = oneshot::channel();
    let driver = tokio::spawn(drive(config, uri, stats.clone(), rate_rx, stop_rx));
    LoadHandle {
        stats,
        rate: rate_tx,
        stop: stop_tx,
        driver,
    }
}

/// The gap between requests at `rps`, or `None` when paused.
fn period(rps: f64) -> Option<Duration> {
    // Above a million per second the schedule is meaningless anyway.
    (rps.is_finite() && rps > 0.0).then(|| Duration::from_secs_f64(1.0 / rps.min(1e6)))
}

/// Whole periods in `d`.
fn periods_in(d: Duration, period: Duration) -> u32 {
    (d.as_nanos() / period.as_nanos().max(1)).min(u128::from(u32::MAX)) as u32
}

// The load generator paces requests on the clock; it decides nothing about the rollout.
#[allow(clippy::disallowed_methods)]
async fn drive(
    config: LoadConfig,
    uri: Uri,
    stats: Arc<LoadStats>,
    mut rate_rx: watch::Receiver<f64>,
    mut stop_rx: oneshot::Receiver<()>,
) {
    let concurrency = config.concurrency.max(1);
    let users = u64::from(config.users.max(1));
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build(connector);
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(config.seed);
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut rate = *rate_rx.borrow_and_update();
    // The schedule's previous slot; the next is due one period later.
    let mut last = Instant::now();
    let mut timer = pin!(tokio::time::sleep_until(last));
    'run: loop {
        let Some(gap) = period(rate) else {
            // Paused: wait for a rate (or the end).
            tokio::select! {
                biased;
                _ = &mut stop_rx => break 'run,
                changed = rate_rx.changed() => {
                    if changed.is_err() {
                        break 'run;
                    }
                    rate = *rate_rx.borrow_and_update();
                    last = Instant::now();
                    continue 'run;
                }
            }
        };
        let due = last + gap;
        timer.as_mut().reset(due);
        tokio::select! {
            biased;
            _ = &mut stop_rx => break 'run,
            changed = rate_rx.changed() => {
                if changed.is_err() {
                    break 'run;
                }
                rate = *rate_rx.borrow_and_update();
                // We were waiting for the next slot, so not behind: re-anchor so that the
                // next slot is at most one new period away.
                if let Some(new_gap) = period(rate)
                    && let Some(earliest) = Instant::now().checked_sub(new_gap)
                {
                    last = last.max(earliest);
                }
                continue 'run;
            }
            _ = timer.as_mut() => {}
        }
        last = due;
        let permit = tokio::select! {
            biased;
            _ = &mut stop_rx => break 'run,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break 'run, // never closed
            },
        };
        // More than MAX_BACKLOG behind: drop the backlog (counted) instead of bursting later.
        let now = Instant::now();
        if let Some(behind) = now.checked_duration_since(last + MAX_BACKLOG) {
            let k = periods_in(behind + MAX_BACKLOG, gap);
            stats.skipped.fetch_add(u64::from(k), Relaxed);
            last += gap * k;
        }
        let user = rng.next_u64() % users;
        let req = Request::builder()
            .method(Method::GET)
            .uri(uri.clone())
            .header(HeaderName::from_static("x-user-id"), user_id(user))
            .body(Empty::new())
            .expect("a valid request (uri checked at start)");
        stats.sent.fetch_add(1, Relaxed);
        let (client, stats) = (client.clone(), stats.clone());
        tasks.spawn(async move {
            let outcome = tokio::time::timeout(REQUEST_TIMEOUT, send(&client, req, &stats)).await;
            let counter = match outcome {
                Ok(Some(status)) if (200..400).contains(&status) => &stats.ok,
                Ok(Some(status)) if status >= 500 => &stats.failed,
                Ok(Some(_)) => &stats.other,
                Ok(None) | Err(_) => &stats.failed,
            };
            counter.fetch_add(1, Relaxed);
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    // Stop: nothing new is sent; let requests in flight finish, then abort the rest.
    let _ = tokio::time::timeout(STOP_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.shutdown().await;
    drop(client);
}

/// `user-<n>` as a header value.
fn user_id(n: u64) -> HeaderValue {
    HeaderValue::try_from(format!("user-{n}")).expect("ASCII")
}

/// Sends one request and reads the response to its end: the status, or `None` on a transport
/// or body error. Counts the `x-ramp-variant` as soon as the head arrives.
async fn send(
    client: &Client<HttpConnector, Empty<Bytes>>,
    req: Request<Empty<Bytes>>,
    stats: &LoadStats,
) -> Option<u16> {
    let resp = client.request(req).await.ok()?;
    let variant = match resp.headers().get("x-ramp-variant").map(|v| v.as_bytes()) {
        Some(b"canary") => Some(&stats.canary),
        Some(b"stable") => Some(&stats.stable),
        _ => None,
    };
    if let Some(counter) = variant {
        counter.fetch_add(1, Relaxed);
    }
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        frame.ok()?;
    }
    Some(status)
}
