//! Active health checks of both upstreams.
//!
//! When the plan names a `health_path`, each upstream gets `GET <base><health_path>` every
//! `health_interval` (real time), on a fresh connection, with a timeout of
//! `min(health_interval, 2 s)`:
//!
//! * a 2xx/3xx answer within 1 s → [`BackendHealth::Operational`];
//! * any other answer, or a 2xx/3xx slower than 1 s → [`BackendHealth::Degraded`];
//! * a connect failure, a broken connection or no answer before the timeout →
//!   [`BackendHealth::Down`].
//!
//! Before the first probe finishes (and always, without a health path) both are
//! [`BackendHealth::Unknown`].
//!
//! A canary that is down counts as failing: every canary probe that finds it
//! [`BackendHealth::Down`] is recorded as a failed probe, evidence of its own kind
//! (`VariantStats::failed_probes`): a failed attempt for the error and success rates, so
//! rollback triggers on the error rate fire even when no user traffic reaches the canary, but
//! never a request, so the latency gates are not diluted by probes without a latency.
//! Successful or degraded probes are not recorded, and stable probes never are.

use super::recorder::Recorder;
use super::{Upstream, UpstreamClient};
use bytes::Bytes;
use http_body_util::Empty;
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use ramp_core::cohort::Variant;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Answers slower than this are degraded.
const SLOW_PROBE: Duration = Duration::from_secs(1);
/// The longest a probe waits.
const MAX_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Shortest probe interval (guards against a zero interval).
const MIN_INTERVAL: Duration = Duration::from_millis(10);

pub use ramp_core::evidence::BackendHealth;

fn health_from_u8(v: u8) -> BackendHealth {
    match v {
        0 => BackendHealth::Operational,
        1 => BackendHealth::Degraded,
        2 => BackendHealth::Down,
        _ => BackendHealth::Unknown,
    }
}

fn health_to_u8(h: BackendHealth) -> u8 {
    match h {
        BackendHealth::Operational => 0,
        BackendHealth::Degraded => 1,
        BackendHealth::Down => 2,
        BackendHealth::Unknown => 3,
    }
}

/// Both upstreams' health after some probe round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSnapshot {
    /// The stable upstream.
    pub stable: BackendHealth,
    /// The canary upstream.
    pub canary: BackendHealth,
    /// Probes finished so far (both upstreams together).
    pub probes: u64,
}

/// The latest health of both upstreams. Reads are plain atomic loads; [`HealthState::subscribe`]
/// lets a caller await changes.
#[derive(Debug)]
pub struct HealthState {
    stable: AtomicU8,
    canary: AtomicU8,
    updates: watch::Sender<HealthSnapshot>,
}

impl Default for HealthState {
    fn default() -> Self {
        Self::new()
    }
}

impl HealthState {
    /// Both upstreams [`BackendHealth::Unknown`].
    pub fn new() -> Self {
        let unknown = health_to_u8(BackendHealth::Unknown);
        HealthState {
            stable: AtomicU8::new(unknown),
            canary: AtomicU8::new(unknown),
            updates: watch::Sender::new(HealthSnapshot {
                stable: BackendHealth::Unknown,
                canary: BackendHealth::Unknown,
                probes: 0,
            }),
        }
    }

    /// The stable upstream's health.
    pub fn stable(&self) -> BackendHealth {
        health_from_u8(self.stable.load(Ordering::Acquire))
    }

    /// The canary upstream's health.
    pub fn canary(&self) -> BackendHealth {
        health_from_u8(self.canary.load(Ordering::Acquire))
    }

    /// A receiver that sees a new snapshot after every probe.
    pub fn subscribe(&self) -> watch::Receiver<HealthSnapshot> {
        self.updates.subscribe()
    }

    /// Stores a probe result.
    pub fn set(&self, variant: Variant, health: BackendHealth) {
        let slot = match variant {
            Variant::Stable => &self.stable,
            Variant::Canary => &self.canary,
        };
        slot.store(health_to_u8(health), Ordering::Release);
        let (stable, canary) = (self.stable(), self.canary());
        self.updates.send_modify(|s| {
            s.stable = stable;
            s.canary = canary;
            s.probes += 1;
        });
    }
}

/// A client for probes: no pooling, so every probe opens a fresh connection and a closed port
/// shows as down at once.
fn probe_client(
    upstream: &Upstream,
    tls: Option<&crate::tls::UpstreamTls>,
    timeout: Duration,
) -> UpstreamClient<Empty<Bytes>> {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .pool_timer(TokioTimer::new())
        .build(crate::connector(upstream, tls, timeout))
}

/// One probe of `url`.
async fn probe(
    client: &UpstreamClient<Empty<Bytes>>,
    url: &hyper::Uri,
    timeout: Duration,
) -> BackendHealth {
    let request = match Request::get(url.clone()).body(Empty::new()) {
        Ok(r) => r,
        Err(_) => return BackendHealth::Down,
    };
    // Measures the probe's latency (slow answers are degraded).
    #[allow(clippy::disallowed_methods)]
    let started = Instant::now();
    match tokio::time::timeout(timeout, client.request(request)).await {
        Ok(Ok(response)) => {
            let status = response.status();
            if (status.is_success() || status.is_redirection()) && started.elapsed() <= SLOW_PROBE {
                BackendHealth::Operational
            } else {
                BackendHealth::Degraded
            }
        }
        Ok(Err(_)) | Err(_) => BackendHealth::Down,
    }
}

/// Probes one upstream every `interval` until `stop` fires (or its sender is dropped).
pub(crate) async fn run(
    variant: Variant,
    (upstream, tls): (Upstream, Option<Arc<crate::tls::UpstreamTls>>),
    path: String,
    interval: Duration,
    state: Arc<HealthState>,
    recorder: Arc<Recorder>,
    mut stop: watch::Receiver<bool>,
) {
    let interval = interval.max(MIN_INTERVAL);
    let timeout = interval.min(MAX_PROBE_TIMEOUT);
    let client = probe_client(&upstream, tls.as_deref(), timeout);
    let url = match upstream.uri_for(&path) {
        Some(url) => url,
        None => return,
    };
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = crate::listen::stopped(&mut stop) => return,
            _ = ticks.tick() => {}
        }
        let health = tokio::select! {
            biased;
            _ = crate::listen::stopped(&mut stop) => return,
            health = probe(&client, &url, timeout) => health,
        };
        if variant == Variant::Canary && health == BackendHealth::Down {
            recorder.record_probe_failure(Variant::Canary);
        }
        state.set(variant, health);
    }
}
