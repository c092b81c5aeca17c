//! Lock-free per-variant outcome counters, read out as [`MetricWindow`]s.
//!
//! Every request adds to its variant's atomic counters: exact counts per outcome class, one
//! exceedance counter per plan latency threshold, an atomic mirror of the
//! [`LatencyHistogram`] layout and an atomic mirror of the [`UserSketch`] registers (updated
//! with `fetch_max`). [`Recorder::take_window`] swaps everything back to zero and returns what
//! was there, so consecutive windows partition the recorded requests exactly.
//!
//! Consistency within a window: a request's `requests` increment is made before (Release) its
//! other counters, and `take_window` swaps the other counters (Acquire) before `requests`. So a
//! window never holds an error, success, slow count, latency or user of a request that it does
//! not also count in `requests`; a request caught mid-recording may have its class counted in
//! the next window instead, and merged windows are always exact.

use ramp_core::cohort::Variant;
use ramp_core::evidence::class::{Answer, Class, classify};
use ramp_core::evidence::hll::{self, UserSketch};
use ramp_core::evidence::sketch::{self, LatencyHistogram};
use ramp_core::evidence::{MetricWindow, VariantStats};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// Atomic counters of one variant.
struct VariantCounters {
    requests: AtomicU64,
    errors: AtomicU64,
    successes: AtomicU64,
    rate_limited: AtomicU64,
    auth_failures: AtomicU64,
    client_errors: AtomicU64,
    failed_probes: AtomicU64,
    /// One per latency threshold, same order as `Recorder::thresholds`.
    slow: Box<[AtomicU64]>,
    /// [`sketch::BUCKETS`] latency buckets.
    latency: Box<[AtomicU64]>,
    /// [`hll::REGISTERS`] user-sketch registers.
    users: Box<[AtomicU8]>,
}

fn zeroed_u64(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl VariantCounters {
    fn new(thresholds: usize) -> Self {
        VariantCounters {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            successes: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
            client_errors: AtomicU64::new(0),
            failed_probes: AtomicU64::new(0),
            slow: zeroed_u64(thresholds),
            latency: zeroed_u64(sketch::BUCKETS),
            users: (0..hll::REGISTERS).map(|_| AtomicU8::new(0)).collect(),
        }
    }

    fn take(&self) -> VariantStats {
        // Everything but `requests` first (see the module docs).
        let swap = |c: &AtomicU64| c.swap(0, Ordering::AcqRel);
        let errors = swap(&self.errors);
        let successes = swap(&self.successes);
        let rate_limited = swap(&self.rate_limited);
        let auth_failures = swap(&self.auth_failures);
        let client_errors = swap(&self.client_errors);
        let failed_probes = swap(&self.failed_probes);
        let slow = self.slow.iter().map(swap).collect();
        let latency: Vec<u64> = self.latency.iter().map(swap).collect();
        let users: Vec<u8> = self
            .users
            .iter()
            .map(|r| r.swap(0, Ordering::AcqRel))
            .collect();
        let requests = self.requests.swap(0, Ordering::AcqRel);
        VariantStats {
            requests,
            errors,
            successes,
            rate_limited,
            auth_failures,
            client_errors,
            slow,
            latency: LatencyHistogram::from_counts(&latency),
            users: UserSketch::from_registers(&users),
            failed_probes,
        }
    }
}

/// Per-variant outcome counters shared by every connection of the proxy. Recording takes no
/// lock and allocates nothing.
pub struct Recorder {
    /// Plan latency thresholds in µs, ascending.
    thresholds: Box<[u64]>,
    stable: VariantCounters,
    canary: VariantCounters,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("thresholds", &self.thresholds)
            .finish_non_exhaustive()
    }
}

/// The hash of a cohort key fed into the distinct-user sketch: XXH3-64 (seed 0) of its bytes.
#[inline]
pub fn user_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

impl Recorder {
    /// A recorder with one exceedance counter per latency threshold (µs; sorted and
    /// deduplicated here, as [`ramp_core::plan::Plan::latency_thresholds_us`] returns them).
    pub fn new(latency_thresholds_us: &[u64]) -> Self {
        let mut thresholds = latency_thresholds_us.to_vec();
        thresholds.sort_unstable();
        thresholds.dedup();
        let n = thresholds.len();
        Recorder {
            thresholds: thresholds.into_boxed_slice(),
            stable: VariantCounters::new(n),
            canary: VariantCounters::new(n),
        }
    }

    /// The latency thresholds (µs, ascending), one per `slow` counter.
    pub fn thresholds(&self) -> &[u64] {
        &self.thresholds
    }

    fn counters(&self, variant: Variant) -> &VariantCounters {
        match variant {
            Variant::Stable => &self.stable,
            Variant::Canary => &self.canary,
        }
    }

    /// Records one request: its answer (classified by the core's table,
    /// [`ramp_core::evidence::class`]), its latency (request received to response head) and,
    /// when the request had a cohort key, the key's [`user_hash`].
    #[inline]
    pub fn record(&self, variant: Variant, answer: Answer, latency_us: u64, user: Option<u64>) {
        let c = self.counters(variant);
        c.requests.fetch_add(1, Ordering::Relaxed);
        let class = match classify(answer) {
            Class::Success => Some(&c.successes),
            Class::RateLimited => Some(&c.rate_limited),
            Class::AuthFailure => Some(&c.auth_failures),
            Class::ClientError => Some(&c.client_errors),
            Class::Error => Some(&c.errors),
            Class::Neither => None,
        };
        if let Some(counter) = class {
            counter.fetch_add(1, Ordering::Release);
        }
        for (threshold, slow) in self.thresholds.iter().zip(c.slow.iter()) {
            if latency_us <= *threshold {
                break;
            }
            slow.fetch_add(1, Ordering::Release);
        }
        c.latency[sketch::bucket_index(latency_us)].fetch_add(1, Ordering::Release);
        if let Some(h) = user {
            let (index, rank) = hll::register_update(h);
            let register = &c.users[index];
            // Most requests come from users already seen: skip the read-modify-write then.
            if register.load(Ordering::Relaxed) < rank {
                register.fetch_max(rank, Ordering::Release);
            }
        }
    }

    /// Records a health probe that found the upstream down: evidence of its own kind
    /// ([`VariantStats::failed_probes`]), a failed attempt for the error and success rates
    /// (so a down canary fails its error-rate triggers even without traffic), never a request
    /// (it has no latency and no user, and must not dilute the latency gates).
    pub fn record_probe_failure(&self, variant: Variant) {
        self.counters(variant)
            .failed_probes
            .fetch_add(1, Ordering::Release);
    }

    /// Everything recorded since the previous call (or since the start), per variant; the
    /// counters start again from zero.
    pub fn take_window(&self) -> MetricWindow {
        MetricWindow {
            stable: self.stable.take(),
            canary: self.canary.take(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_and_resets() {
        let r = Recorder::new(&[200_000, 100_000, 200_000]);
        assert_eq!(r.thresholds(), &[100_000, 200_000]);
        let user = Some(user_hash(b"u1"));
        for (status, latency) in [
            (200, 50_000),
            (302, 150_000),
            (404, 250_000),
            (429, 10),
            (401, 10),
            (403, 10),
            (500, 10),
            (503, 10),
        ] {
            r.record(Variant::Canary, Answer::Status(status), latency, user);
        }
        r.record(Variant::Canary, Answer::ConnectFailed, 10, None);
        r.record(Variant::Canary, Answer::TimedOut, 300_000, None);
        r.record(
            Variant::Stable,
            Answer::Status(204),
            7,
            Some(user_hash(b"u2")),
        );
        r.record_probe_failure(Variant::Canary);
        let w = r.take_window();
        let c = &w.canary;
        // The failed probe is not a request, but a failed attempt for the error rate.
        assert_eq!(c.requests, 10);
        assert_eq!(c.errors, 4);
        assert_eq!(c.failed_probes, 1);
        assert_eq!(c.error_counts(), (5, 11));
        assert_eq!(c.successes, 2);
        assert_eq!(c.rate_limited, 1);
        assert_eq!(c.auth_failures, 2);
        assert_eq!(c.slow, vec![3, 2]);
        assert_eq!(c.latency.count(), 10);
        assert_eq!(c.users.estimate(), 1);
        assert_eq!(w.stable.requests, 1);
        assert_eq!(w.stable.successes, 1);
        assert_eq!(w.stable.latency.quantile(1.0), Some(7));
        assert_eq!(w.stable.users.estimate(), 1);
        assert_eq!(r.take_window(), MetricWindow::new(2));
    }

    #[test]
    fn users_match_the_plain_sketch() {
        let r = Recorder::new(&[]);
        let mut plain = UserSketch::new();
        for i in 0..5_000u32 {
            let key = format!("user-{}", i % 3_000);
            let h = user_hash(key.as_bytes());
            plain.insert_hash(h);
            r.record(Variant::Stable, Answer::Status(200), 1, Some(h));
        }
        let w = r.take_window();
        assert_eq!(w.stable.users, plain);
        assert!(w.canary.users.is_empty());
    }
}
