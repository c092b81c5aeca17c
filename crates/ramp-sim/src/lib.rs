//! `ramp simulate`: runs a plan against synthetic traffic on a virtual clock, and prints what
//! happened (`render`). Reads scenario files (`scenario`).
//!
//! The controller is the same pure state machine `ramp serve` uses; only the source of
//! metric windows (generated requests instead of proxied ones) and the clock (virtual) differ.
//! Every request is simulated individually: a user drawn at random, routed by the real
//! bucketing formula, an outcome and a latency drawn from the variant's model, recorded into
//! the same per-variant counters the proxy keeps.

#![forbid(unsafe_code)]

pub mod render;
pub mod scenario;

use crate::scenario::{Scenario, VariantSpec};
use ramp_core::cohort::{self, Salt, ShareBp};
use ramp_core::evidence::class::{Answer, Class, classify};
use ramp_core::evidence::sketch;
use ramp_core::evidence::{MetricWindow, Signal, VariantStats};
use ramp_core::plan::Plan;
use ramp_core::rollout::{Effect, Input, ReportKind, State, Status, step};
use ramp_core::time::{Millis, SECOND};
use ramp_wire::v1;
use rand_xoshiro::Xoshiro256PlusPlus;
use rand_xoshiro::rand_core::{Rng, SeedableRng};
use serde::Serialize;

/// Requests that reached the canary while it was harmful: from the first harmful change until
/// the rollback, the end of the run, or a change that made the canary healthy again (a burst
/// that ends stops counting; a later harmful change counts again). A harm signal (PCI alert,
/// high security alert) has no end: it counts until the rollback or the end of the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BlastRadius {
    /// Canary requests.
    pub requests: u64,
    /// Canary requests that failed (5xx, connect failure, timeout).
    pub failed_requests: u64,
    /// Distinct canary users.
    pub users: u64,
}

/// Something that happened in the run: a journal entry, a scenario change or a notification.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum TimelineEntry {
    /// From the controller's journal.
    Journal(v1::Event),
    /// The scenario changed a variant.
    Change {
        /// When.
        at: Millis,
        /// Always "scenario_change".
        kind: &'static str,
        /// What changed.
        description: String,
    },
    /// A notification the controller asked for.
    Notify {
        /// When.
        at: Millis,
        /// Always "notify".
        kind: &'static str,
        /// The notification.
        notification: v1::Notice,
    },
    /// A report the controller asked for.
    Report {
        /// When.
        at: Millis,
        /// Always "report".
        kind: &'static str,
        /// Which report.
        report: ReportKind,
    },
}

impl TimelineEntry {
    /// When it happened.
    pub fn at(&self) -> Millis {
        match self {
            TimelineEntry::Journal(e) => e.at,
            TimelineEntry::Change { at, .. }
            | TimelineEntry::Notify { at, .. }
            | TimelineEntry::Report { at, .. } => *at,
        }
    }
}

/// The result of a run.
#[derive(Clone, Debug)]
pub struct Run {
    /// The final controller state.
    pub state: State,
    /// "completed", "rolled_back" or "held".
    pub outcome: &'static str,
    /// When the run ended (virtual ms since start).
    pub ended_at: Millis,
    /// Everything that happened, in time order.
    pub timeline: Vec<TimelineEntry>,
    /// Harm done before the rollback.
    pub blast_radius: BlastRadius,
    /// When harm started, if it did.
    pub harm_started_at: Option<Millis>,
    /// When the last harm ended, if the canary was healthy again before the run ended.
    pub harm_ended_at: Option<Millis>,
    /// Requests simulated.
    pub requests: u64,
    /// Totals over the whole run per variant.
    pub stable_total: VariantStats,
    /// Totals over the whole run per variant.
    pub canary_total: VariantStats,
    /// The seed used.
    pub seed: u64,
    /// The evidence windows merged per analysis interval (as `ramp serve` journals them), for
    /// reports; empty unless asked for ([`run_for_reports`]).
    pub windows: Vec<(Millis, MetricWindow)>,
}

/// A variant's behaviour compiled for fast sampling.
///
/// Latency is drawn from a table of the fitted log-normal's quantiles at the midpoints of
/// [`CELLS`] equal-probability cells (a resolution of 1/16,384 in probability); the top cell,
/// which holds the unbounded tail, is sampled exactly from the inverse CDF. Each cell's
/// histogram bucket and whether it exceeds each plan threshold are precomputed, so recording a
/// request costs two table loads and a few increments.
struct Model {
    /// Cumulative outcome thresholds on a u64 draw: below `error` → error, below `rl` → 429,
    /// below `auth` → 401/403, below `client` → other 4xx, else success.
    error: u64,
    rl: u64,
    auth: u64,
    client: u64,
    /// Latency (µs) of each cell (read by the tests; the recorder uses `bucket` and `cut`).
    #[cfg_attr(not(test), allow(dead_code))]
    lat_us: Vec<u32>,
    /// Histogram bucket of each cell.
    bucket: Vec<u16>,
    /// For each plan latency threshold, the first cell slower than it (cells are sorted).
    cut: Vec<usize>,
    /// The plan's latency thresholds (µs), ascending.
    thresholds: Vec<u64>,
    mu: f64,
    sigma: f64,
}

const CELL_BITS: u32 = 14;
const CELLS: usize = 1 << CELL_BITS;

fn share_to_u64(p: f64) -> u64 {
    if p >= 1.0 {
        u64::MAX
    } else {
        (p * 18_446_744_073_709_551_616.0) as u64
    }
}

impl Model {
    fn new(v: &VariantSpec, thresholds: &[u64]) -> Model {
        let (e, rl, auth, client) = if v.down {
            (1.0, 1.0, 1.0, 1.0)
        } else {
            let e = v.error_rate;
            let rl = e + v.rate_limit_rate;
            let auth = rl + v.auth_failure_rate;
            (e, rl, auth, auth + v.client_error_rate)
        };
        let mu = (v.latency_ms.p50 * 1000.0).ln();
        let sigma =
            ((v.latency_ms.p95 / v.latency_ms.p50).ln() / 1.644_853_626_951_472_2).max(1e-9);
        let lat_us: Vec<u32> = (0..CELLS)
            .map(|i| {
                let u = (i as f64 + 0.5) / CELLS as f64;
                (mu + sigma * inverse_normal(u))
                    .exp()
                    .clamp(1.0, u32::MAX as f64) as u32
            })
            .collect();
        let bucket = lat_us
            .iter()
            .map(|&l| sketch::bucket_index(l as u64) as u16)
            .collect();
        let cut = thresholds
            .iter()
            .map(|&t| lat_us.partition_point(|&l| l as u64 <= t))
            .collect();
        Model {
            error: share_to_u64(e),
            rl: share_to_u64(rl),
            auth: share_to_u64(auth),
            client: share_to_u64(client),
            lat_us,
            bucket,
            cut,
            thresholds: thresholds.to_vec(),
            mu,
            sigma,
        }
    }

    /// The top cell's latency, sampled exactly from the tail.
    fn tail_us(&self, r: u64) -> u64 {
        let frac =
            (r & ((1u64 << (64 - CELL_BITS)) - 1)) as f64 / (1u64 << (64 - CELL_BITS)) as f64;
        let u = ((CELLS as f64 - 1.0 + frac) / CELLS as f64).min(1.0 - 1e-15);
        (self.mu + self.sigma * inverse_normal(u)).exp().max(1.0) as u64
    }

    /// Draws a latency in µs (used by tests; the recorder inlines the same steps).
    #[cfg(test)]
    fn latency_us(&self, r: u64) -> u64 {
        let cell = (r >> (64 - CELL_BITS)) as usize;
        if cell == CELLS - 1 {
            self.tail_us(r)
        } else {
            self.lat_us[cell] as u64
        }
    }
}

/// Inverse of the standard normal CDF (Acklam's algorithm, relative error < 1.2e-9).
pub fn inverse_normal(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let p_low = 0.02425;
    if p < p_low {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - p_low {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        let q = (-2.0 * (1.0 - p).ln()).sqrt();
        -(((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    }
}

/// splitmix64: the user-key hash fed to the distinct-user sketch.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One variant's counters for the current batch (latency recorded by precomputed bucket).
struct Counters {
    stats: VariantStats,
}

impl Counters {
    fn new(thresholds: usize) -> Self {
        Counters {
            stats: VariantStats::new(thresholds),
        }
    }

    /// Records one request; returns true when it failed. The draw picks an answer and the
    /// core's table classifies it, as the proxy's recorder does.
    #[inline]
    fn record(&mut self, model: &Model, r_outcome: u64, r_latency: u64, user_hash: u64) -> bool {
        let s = &mut self.stats;
        let answer = if r_outcome < model.error {
            Answer::Status(500)
        } else if r_outcome < model.rl {
            Answer::Status(429)
        } else if r_outcome < model.auth {
            Answer::Status(401)
        } else if r_outcome < model.client {
            Answer::Status(404)
        } else {
            Answer::Status(200)
        };
        let class = classify(answer);
        s.count_request(class);
        let failed = class == Class::Error;
        let cell = (r_latency >> (64 - CELL_BITS)) as usize;
        if cell == CELLS - 1 {
            let lat = model.tail_us(r_latency);
            s.latency.record_bucket(sketch::bucket_index(lat), 1);
            for (i, t) in model.thresholds.iter().enumerate() {
                if lat > *t {
                    s.slow[i] += 1;
                }
            }
        } else {
            s.latency.record_bucket(model.bucket[cell] as usize, 1);
            for (i, t) in model.cut.iter().enumerate() {
                if cell >= *t {
                    s.slow[i] += 1;
                } else {
                    break;
                }
            }
        }
        s.users.insert_hash(user_hash);
        failed
    }

    /// Closes the batch.
    fn take(&mut self, thresholds: usize) -> VariantStats {
        std::mem::replace(&mut self.stats, VariantStats::new(thresholds))
    }
}

/// Runs the plan against the scenario. Deterministic for a given seed.
pub fn run(plan: &Plan, sc: &Scenario, seed: u64) -> Run {
    run_inner(plan, sc, seed, false)
}

/// [`run`], also keeping the evidence windows (merged per analysis interval) that reports
/// chart; costs memory, so only when reports are written.
pub fn run_for_reports(plan: &Plan, sc: &Scenario, seed: u64) -> Run {
    run_inner(plan, sc, seed, true)
}

fn run_inner(plan: &Plan, sc: &Scenario, seed: u64, collect: bool) -> Run {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let salt = Salt::new(&plan.cohort.salt);
    let n_users = sc.users as usize;
    // Each user's bucket and sketch hash, computed once (the proxy computes them per request).
    let buckets: Vec<u16> = (0..n_users)
        .map(|i| cohort::bucket(salt, format!("user-{i}").as_bytes()))
        .collect();
    let user_hashes: Vec<u64> = (0..n_users as u64).map(mix).collect();
    // Thresholds sorted ascending: a request slower than threshold i+1 is slower than i, so
    // the recorder can stop at the first threshold it does not exceed.
    let thresholds = plan.latency_thresholds_us();
    let mut stable_spec = sc.stable.clone();
    let mut canary_spec = sc.canary.clone();
    // Index 0 is stable, 1 is canary.
    let mut models = [
        Model::new(&stable_spec, &thresholds),
        Model::new(&canary_spec, &thresholds),
    ];

    // Evidence reaches the core every simulated second, as `ramp serve` delivers its 100 ms
    // trigger batches: triggers decide on each batch, the core judges gates once per interval.
    let interval = plan.analysis.interval.min(SECOND);
    let limit = sc.duration.unwrap_or(plan.max_duration() + 3_600_000);
    let mut state = State::new(plan);
    let mut timeline: Vec<TimelineEntry> = Vec::new();
    let mut windows: Vec<(Millis, MetricWindow)> = Vec::new();
    let mut share = ShareBp::ZERO;
    let mut counters = [
        Counters::new(thresholds.len()),
        Counters::new(thresholds.len()),
    ];
    let mut stable_total = VariantStats::new(thresholds.len());
    let mut canary_total = VariantStats::new(thresholds.len());
    let mut blast = BlastRadius::default();
    let mut blast_users = vec![false; n_users];
    let mut harm_started_at: Option<Millis> = if canary_spec.worse_than(&stable_spec) {
        Some(0)
    } else {
        None
    };
    // Whether the canary is harmful now, and what it was like before the harm began (the
    // reference for "healthy again"). A harm signal makes the harm permanent.
    let mut harmful = harm_started_at.is_some();
    let mut healthy_ref = stable_spec.clone();
    let mut harm_signalled = false;
    let mut harm_ended_at: Option<Millis> = None;
    let mut next_change = 0;
    let mut next_signal = 0;
    let mut carry = 0.0f64;
    let mut requests = 0u64;
    let per_second_feedback = sc
        .feedback
        .as_ref()
        .map(|f| (share_to_u64((f.per_hour / 3600.0).min(1.0)), f.positive));

    let apply = |state: State,
                 input: Input,
                 now: Millis,
                 share: &mut ShareBp,
                 timeline: &mut Vec<TimelineEntry>|
     -> State {
        let (state, effects) = step(plan, state, input, now);
        for e in effects {
            match e {
                Effect::Journal(ev) => timeline.push(TimelineEntry::Journal((&ev).into())),
                Effect::SetShare { share: s } => *share = s,
                Effect::Notify(n) => timeline.push(TimelineEntry::Notify {
                    at: now,
                    kind: "notify",
                    notification: v1::Notice::at(plan, &state, &n),
                }),
                Effect::Report { report } => timeline.push(TimelineEntry::Report {
                    at: now,
                    kind: "report",
                    report,
                }),
                Effect::Rejected(_) => {}
            }
        }
        state
    };

    state = apply(state, Input::Start, 0, &mut share, &mut timeline);
    let mut t: Millis = 0;
    let mut next_window = interval;
    let done = |s: &State| s.status.is_terminal() || s.status == Status::Holding;
    while t < limit && !done(&state) {
        // Scenario changes and signals due at this second.
        while next_change < sc.changes.len() && sc.changes[next_change].0 <= t {
            let (at, c) = &sc.changes[next_change];
            let before = canary_spec.clone();
            let mut desc = Vec::new();
            if let Some(p) = &c.stable {
                stable_spec.apply(p);
                models[0] = Model::new(&stable_spec, &thresholds);
                desc.push(format!("stable: {}", describe_patch(p)));
            }
            if let Some(p) = &c.canary {
                canary_spec.apply(p);
                models[1] = Model::new(&canary_spec, &thresholds);
                desc.push(format!("canary: {}", describe_patch(p)));
            }
            if !harmful && (canary_spec.worse_than(&before) || canary_spec.worse_than(&stable_spec))
            {
                harmful = true;
                healthy_ref = before;
                harm_started_at.get_or_insert(*at);
                harm_ended_at = None;
            } else if harmful
                && !harm_signalled
                && !canary_spec.worse_than(&healthy_ref)
                && !canary_spec.worse_than(&stable_spec)
            {
                harmful = false;
                harm_ended_at = Some(*at);
            }
            timeline.push(TimelineEntry::Change {
                at: *at,
                kind: "scenario_change",
                description: desc.join("; "),
            });
            next_change += 1;
        }
        while next_signal < sc.signals.len() && sc.signals[next_signal].0 <= t {
            let (at, sig) = sc.signals[next_signal].clone();
            if is_harm_signal(&sig) {
                harm_started_at.get_or_insert(at);
                harmful = true;
                harm_signalled = true;
                harm_ended_at = None;
            }
            state = apply(
                state,
                Input::Signal(sig),
                at.max(t),
                &mut share,
                &mut timeline,
            );
            next_signal += 1;
        }
        if done(&state) {
            break;
        }
        if let Some((p, positive)) = per_second_feedback
            && share > ShareBp::ZERO
            && rng.next_u64() < p
        {
            let good = (rng.next_u64() as f64 / u64::MAX as f64) < positive;
            let score = if good { 0.9 } else { 0.3 };
            state = apply(
                state,
                Input::Signal(Signal::Feedback {
                    score,
                    note: String::new(),
                }),
                t,
                &mut share,
                &mut timeline,
            );
            if done(&state) {
                break;
            }
        }
        // This second's requests.
        carry += sc.requests_per_second;
        let n = carry as u64;
        carry -= n as f64;
        let share_bp = share.bp();
        let harmed = harmful;
        for _ in 0..n {
            // One draw picks the user (high 32 bits) and the outcome (low 32 bits, a
            // resolution of 2^-32 on the outcome shares); a second draws the latency.
            let r = rng.next_u64();
            let u = (((r >> 32) * n_users as u64) >> 32) as usize;
            let r_outcome = r << 32;
            let r_latency = rng.next_u64();
            let h = user_hashes[u];
            // A branch, not an index by variant: measured faster (the recorder specialises).
            if buckets[u] < share_bp {
                let failed = counters[1].record(&models[1], r_outcome, r_latency, h);
                if harmed {
                    blast.requests += 1;
                    blast.failed_requests += u64::from(failed);
                    blast_users[u] = true;
                }
            } else {
                counters[0].record(&models[0], r_outcome, r_latency, h);
            }
        }
        requests += n;
        t += SECOND;
        if t >= next_window {
            let w = MetricWindow {
                stable: counters[0].take(thresholds.len()),
                canary: counters[1].take(thresholds.len()),
            };
            stable_total.merge(&w.stable);
            canary_total.merge(&w.canary);
            if collect {
                let slot = t.div_ceil(plan.analysis.interval) * plan.analysis.interval;
                match windows.last_mut() {
                    Some((at, last)) if *at == slot => {
                        last.stable.merge(&w.stable);
                        last.canary.merge(&w.canary);
                    }
                    _ => windows.push((slot, w.clone())),
                }
            }
            state = apply(state, Input::Window(w), t, &mut share, &mut timeline);
            next_window += interval;
        }
    }
    blast.users = blast_users.iter().filter(|b| **b).count() as u64;
    let outcome = match state.status {
        Status::Completed => "completed",
        Status::RolledBack => "rolled_back",
        _ => "held",
    };
    timeline.sort_by_key(TimelineEntry::at);
    Run {
        windows,
        ended_at: state.ended_at.unwrap_or(t),
        state,
        outcome,
        timeline,
        blast_radius: blast,
        harm_started_at,
        harm_ended_at,
        requests,
        stable_total,
        canary_total,
        seed,
    }
}

/// Signals that mean users were harmed: a PCI alert, or a security alert of high or critical
/// severity (a low or medium finding is not treated as harm done).
fn is_harm_signal(sig: &Signal) -> bool {
    match sig {
        Signal::PciAlert { .. } => true,
        Signal::SecurityAlert { severity, .. } => *severity >= ramp_core::plan::Severity::High,
        _ => false,
    }
}

fn describe_patch(p: &crate::scenario::VariantPatch) -> String {
    let mut parts = Vec::new();
    if let Some(v) = p.error_rate {
        parts.push(format!("error_rate → {}", ramp_core::report::pct(v)));
    }
    if let Some(v) = p.rate_limit_rate {
        parts.push(format!("rate_limit_rate → {}", ramp_core::report::pct(v)));
    }
    if let Some(v) = p.auth_failure_rate {
        parts.push(format!("auth_failure_rate → {}", ramp_core::report::pct(v)));
    }
    if let Some(v) = p.client_error_rate {
        parts.push(format!("client_error_rate → {}", ramp_core::report::pct(v)));
    }
    if let Some(l) = p.latency_ms {
        if let Some(v) = l.p50 {
            parts.push(format!("p50 → {v}ms"));
        }
        if let Some(v) = l.p95 {
            parts.push(format!("p95 → {v}ms"));
        }
    }
    if let Some(d) = p.down {
        parts.push(if d { "down".into() } else { "up again".into() });
    }
    parts.join(", ")
}

/// Seconds, for JSON.
pub fn secs(ms: Millis) -> f64 {
    ms as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normal_cdf(z: f64) -> f64 {
        // Bisection on inverse_normal is enough for a test.
        let (mut lo, mut hi) = (1e-12, 1.0 - 1e-12);
        for _ in 0..100 {
            let mid = (lo + hi) / 2.0;
            if inverse_normal(mid) < z {
                lo = mid
            } else {
                hi = mid
            }
        }
        lo
    }

    #[test]
    fn inverse_normal_known_values() {
        for (p, z) in [
            (0.5, 0.0),
            (0.95, 1.644_853_626_951_472),
            (0.975, 1.959_963_984_540_054),
            (0.001, -3.090_232_306_167_813),
        ] {
            assert!((inverse_normal(p) - z).abs() < 1e-8, "{p}");
        }
    }

    #[test]
    fn latency_model_matches_its_quantiles() {
        let spec = VariantSpec {
            error_rate: 0.0,
            rate_limit_rate: 0.0,
            auth_failure_rate: 0.0,
            client_error_rate: 0.0,
            latency_ms: crate::scenario::LatencySpec {
                p50: 40.0,
                p95: 120.0,
            },
            down: false,
        };
        let m = Model::new(&spec, &[]);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        let mut v: Vec<u64> = (0..200_000).map(|_| m.latency_us(rng.next_u64())).collect();
        v.sort_unstable();
        let p50 = v[100_000] as f64 / 1000.0;
        let p95 = v[190_000] as f64 / 1000.0;
        assert!((p50 - 40.0).abs() < 1.0, "p50 {p50}");
        assert!((p95 - 120.0).abs() < 3.0, "p95 {p95}");
    }

    #[test]
    fn outcome_shares_follow_the_model() {
        let spec = VariantSpec {
            error_rate: 0.01,
            rate_limit_rate: 0.02,
            auth_failure_rate: 0.03,
            client_error_rate: 0.04,
            latency_ms: crate::scenario::LatencySpec {
                p50: 40.0,
                p95: 120.0,
            },
            down: false,
        };
        let m = Model::new(&spec, &[100_000, 200_000]);
        let mut c = Counters::new(2);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(9);
        for i in 0..100_000 {
            c.record(&m, rng.next_u64(), rng.next_u64(), i);
        }
        let s = c.take(2);
        // Exceedance counters agree with the model: P(L > 100ms) and P(L > 200ms) for a
        // log-normal through p50 = 40ms, p95 = 120ms.
        let sigma = (3.0f64).ln() / 1.644_853_626_951_472_2;
        let tail = |t: f64| 1.0 - normal_cdf((t / 40.0).ln() / sigma);
        assert!(
            ((s.slow[0] as f64 / 1e5) - tail(100.0)).abs() < 0.003,
            "{:?}",
            s.slow
        );
        assert!(
            ((s.slow[1] as f64 / 1e5) - tail(200.0)).abs() < 0.002,
            "{:?}",
            s.slow
        );
        assert_eq!(s.latency.count(), 100_000);
        let near = |x: u64, p: f64| ((x as f64 / 100_000.0) - p).abs() < 0.003;
        assert!(near(s.errors, 0.01));
        assert!(near(s.rate_limited, 0.02));
        assert!(near(s.auth_failures, 0.03));
        assert!(near(s.successes, 0.90));
    }

    /// Regression: the blast radius kept counting after a burst ended (a 20 s burst reported
    /// ~10,000 failed requests over 72 h). It now stops at the change that heals the canary.
    #[test]
    fn blast_radius_ends_when_the_harm_does() {
        let plan = ramp_core::plan::parse_plan(
            include_str!("../../../examples/payments-backend.toml"),
            "payments-backend.toml",
        )
        .expect("the example plan parses");
        let sc = crate::scenario::parse_scenario(
            r#"
seed = 3
requests_per_second = 200
users = 20000
[stable]
error_rate = 0.0
latency_ms = { p50 = 40, p95 = 120 }
[canary]
error_rate = 0.0
latency_ms = { p50 = 40, p95 = 120 }
[feedback]
per_hour = 12
positive = 0.97
[[change]]
at = "2h"
canary.error_rate = 0.005
[[change]]
at = "2h 20s"
canary.error_rate = 0.0
"#,
            "burst.toml",
        )
        .expect("the scenario parses");
        let run = run(&plan, &sc, 3);
        assert_eq!(run.harm_started_at, Some(7_200_000));
        assert_eq!(run.harm_ended_at, Some(7_220_000));
        // 5% of 200 req/s for 20 s: about 200 canary requests, about one failure.
        let b = run.blast_radius;
        assert!((100..=300).contains(&b.requests), "{b:?}");
        assert!(b.failed_requests <= 10, "{b:?}");
        assert_eq!(
            run.outcome, "completed",
            "a 0.5% burst for 20 s is below every trigger"
        );
    }
}
