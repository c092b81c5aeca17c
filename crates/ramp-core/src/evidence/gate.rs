//! Verdicts: a criterion judged against evidence, `pass | fail | inconclusive`, each with the
//! numbers behind it (observed value, confidence bound, sample size, threshold) and, when the
//! evidence is not yet enough, how much more it needs.

use super::confseq;
use super::dispersion::{Side, effective};
use super::window::{Evidence, RateStream, ratio};
use crate::plan::{Criterion, Metric, MetricKind, Op, Plan, Test};
use serde::{Deserialize, Serialize};

/// The three possible verdicts. Only `Pass` ever promotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The evidence proves the criterion at the plan's confidence.
    Pass,
    /// The evidence proves the criterion is violated.
    Fail,
    /// Not enough evidence either way.
    Inconclusive,
}

impl Outcome {
    /// Upper-case label for timelines.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::Inconclusive => "INCONCLUSIVE",
        }
    }
}

/// Which side a confidence bound is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BoundSide {
    /// The value is at most this (with the plan's confidence).
    Upper,
    /// The value is at least this.
    Lower,
}

/// A criterion's verdict with the numbers behind it. It carries no prose: the explanation is
/// rendered from these fields at the edges ([`crate::report::explain`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// The criterion as written.
    pub criterion: String,
    /// The verdict.
    pub outcome: Outcome,
    /// The point estimate in the metric's unit (fraction, ms, count); for latency criteria the
    /// share of requests slower than the threshold; for `not worse than stable` the difference.
    pub observed: Option<f64>,
    /// The confidence bound that decided (or would decide) the verdict.
    pub bound: Option<f64>,
    /// Which side `bound` is on.
    pub bound_side: Option<BoundSide>,
    /// Events counted (errors, slow requests, positive feedback, alerts...).
    pub events: u64,
    /// Sample size (requests, feedback, ...).
    pub n: u64,
    /// The threshold the bound was compared with, in the same unit as `observed`.
    pub threshold: f64,
    /// For inconclusive verdicts: how many more samples are needed at the current rate, when
    /// the current rate could pass at all.
    pub needed: Option<u64>,
    /// The confidence of the bounds (the plan's `analysis.confidence`).
    pub confidence: f64,
    /// What kind of measurement this was, with the numbers only it has.
    pub detail: Detail,
    /// Whether it judged the phase's evidence or the whole rollout's.
    #[serde(default, skip_serializing_if = "Scope::is_phase")]
    pub scope: Scope,
    /// When the canary's failures were found to cluster in time: how much the counts were
    /// deflated by (the bounds then treat `n/φ` requests as independent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clustered: Option<Clustered>,
}

/// Which evidence a criterion is judged on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The current phase's (a phase's `success`).
    #[default]
    Phase,
    /// Every phase's together (`[rollout] success`).
    Rollout,
}

impl Scope {
    /// True for [`Scope::Phase`].
    pub fn is_phase(&self) -> bool {
        *self == Scope::Phase
    }
}

/// The clustering correction applied to a rate verdict ([`super::dispersion`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Clustered {
    /// The factor: the spread of the total over the binomial one (an upper confidence limit).
    pub phi: f64,
    /// Analysis intervals per block at the time scale that showed it.
    pub windows: u32,
    /// The over-dispersion test's p-value at that scale.
    pub p_value: f64,
}

/// What a verdict measured, beyond the common fields of [`Verdict`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Detail {
    /// A rate: `events` of `n` requests (or feedback) against `threshold`.
    Rate {
        /// What `n` counts.
        unit: Unit,
    },
    /// A latency quantile, judged as the share of requests slower than a threshold.
    Latency {
        /// The quantile in per mille (950 = p95).
        quantile: u16,
        /// The threshold in milliseconds.
        threshold_ms: f64,
        /// The quantile's display estimate from the sketch, in milliseconds.
        estimate_ms: Option<f64>,
    },
    /// An exact count of signals received in the phase.
    Count {
        /// The comparison the criterion makes.
        op: Op,
    },
    /// Distinct users who reached the canary (a HyperLogLog estimate).
    Users {
        /// The comparison the criterion makes.
        op: Op,
    },
    /// A rate compared with stable's over the same windows, as a difference with bounds.
    VsStable {
        /// The bad-event stream compared (`error_rate`, `non-success_rate`, ...).
        what: String,
        /// Canary bad events.
        canary_events: u64,
        /// Canary requests.
        canary_n: u64,
        /// Stable bad events.
        stable_events: u64,
        /// Stable requests.
        stable_n: u64,
        /// Upper bound of the difference (canary minus stable).
        upper: f64,
    },
    /// A latency quantile compared with stable's.
    LatencyVsStable {
        /// The quantile in per mille.
        quantile: u16,
        /// Canary's display estimate (ms).
        canary_ms: Option<f64>,
        /// Stable's display estimate (ms).
        stable_ms: Option<f64>,
        /// Stable requests.
        stable_n: u64,
        /// The bound on stable's quantile used (lower for the pass test, upper when proven
        /// slower), in ms.
        stable_bound_ms: f64,
        /// The canary latency the comparison allows at that bound, in ms.
        limit_ms: f64,
        /// Allowed relative excess.
        relative: f64,
        /// Allowed absolute excess in ms.
        absolute_ms: f64,
        /// Which numbers these are.
        case: LatencyCase,
    },
    /// An explanation recorded as text by ramp's journal format 1, kept as written.
    Text {
        /// The explanation.
        text: String,
    },
}

/// What `n` counts in a rate verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Requests.
    Requests,
    /// Feedback signals.
    Feedback,
}

impl Unit {
    /// The plural noun.
    pub fn noun(self) -> &'static str {
        match self {
            Unit::Requests => "requests",
            Unit::Feedback => "feedback",
        }
    }
}

/// Which numbers a `pNN_latency not worse than stable` verdict carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatencyCase {
    /// One of the variants has no requests in the phase.
    NoData,
    /// Too few stable requests to bound stable's quantile from below.
    NoStableBound,
    /// Proven slower: `stable_bound_ms` is an upper bound on stable's quantile.
    Slower,
    /// The pass test's numbers: `stable_bound_ms` is a lower bound on stable's quantile.
    Compared,
}

/// Judges a rate `x / n` against `op threshold` with always-valid bounds ([`confseq`]): the
/// verdict keeps its confidence however often it is looked at. `phi` is the clustering factor
/// of [`super::dispersion`] (1 for independent requests): the counts become `(x/φ, n/φ)`,
/// rounded to widen each bound. Returns (outcome, bound, side, needed).
fn judge_rate(
    x: u64,
    n: u64,
    op: Op,
    t: f64,
    c: f64,
    phi: f64,
) -> (Outcome, f64, BoundSide, Option<u64>) {
    let x = x.min(n);
    // Counts for an upper bound (x up, n down) and for a lower one (x down, n up).
    let (xu, nu) = effective(x, n, phi, Side::Upper);
    let (xl, nl) = effective(x, n, phi, Side::Lower);
    let p_hat = (n > 0).then(|| x as f64 / n as f64);
    // Samples still needed, in real requests: the effective sample size times φ.
    let more =
        |m: Option<u64>| m.map(|m| ((m as f64 * phi).ceil() as u64).saturating_sub(n).max(1));
    match op {
        Op::Lt | Op::Le => {
            if nl > 0 && confseq::lower_above(xl, nl, t, c) {
                let bound = confseq::lower_bound(xl, nl, c);
                return (Outcome::Fail, bound, BoundSide::Lower, None);
            }
            let upper = confseq::upper_bound(xu, nu, c);
            if confseq::upper_below(xu, nu, t, c) {
                return (Outcome::Pass, upper, BoundSide::Upper, None);
            }
            let needed = more(confseq::min_n_upper_below(p_hat.unwrap_or(0.0), t, c));
            (Outcome::Inconclusive, upper, BoundSide::Upper, needed)
        }
        Op::Gt | Op::Ge | Op::Eq => {
            if nu > 0 && confseq::upper_below(xu, nu, t, c) {
                let bound = confseq::upper_bound(xu, nu, c);
                return (Outcome::Fail, bound, BoundSide::Upper, None);
            }
            let lower = confseq::lower_bound(xl, nl, c);
            if nl > 0 && confseq::lower_above(xl, nl, t, c) {
                return (Outcome::Pass, lower, BoundSide::Lower, None);
            }
            let needed = more(confseq::min_n_lower_above(p_hat.unwrap_or(1.0), t, c));
            (Outcome::Inconclusive, lower, BoundSide::Lower, needed)
        }
    }
}

/// The clustering factor to apply to a stream, and what to report about it.
fn clustering(ev: &Evidence, stream: RateStream) -> (f64, Option<Clustered>) {
    let a = ev.clustering.assess(stream);
    match (a.scale, a.p_value) {
        (Some(windows), Some(p_value)) if a.phi > 1.0 => (
            a.phi,
            Some(Clustered {
                phi: a.phi,
                windows,
                p_value,
            }),
        ),
        _ => (1.0, None),
    }
}

/// Relative half-width of the users bound: three standard errors of a 4,096-register
/// HyperLogLog (1.04/√4096 each). Conservative for small counts, where the sketch counts
/// linearly and is far more exact.
pub const USERS_RELATIVE_ERROR: f64 = 3.0 * 1.04 / 64.0;

/// Judges one success criterion against the phase's evidence.
pub fn judge(plan: &Plan, criterion: &Criterion, ev: &Evidence) -> Verdict {
    let c = plan.analysis.confidence;
    let text = criterion.text.clone();
    match (&criterion.test, criterion.metric.kind()) {
        (Test::Compare { op, threshold, .. }, MetricKind::Rate) => {
            let (x, n, unit) = match criterion.metric {
                Metric::Satisfaction => (
                    ev.signals.feedback_positive,
                    ev.signals.feedback,
                    Unit::Feedback,
                ),
                m => {
                    let (x, n) = ev.canary.rate_counts(m).expect("rate metric");
                    (x, n, Unit::Requests)
                }
            };
            // The success rate clusters as its failures do.
            let (phi, clustered) = match RateStream::of(criterion.metric) {
                Some(stream) => clustering(ev, stream),
                None => (1.0, None),
            };
            let (outcome, bound, side, needed) = judge_rate(x, n, *op, *threshold, c, phi);
            Verdict {
                criterion: text,
                outcome,
                observed: (n > 0).then(|| ratio(x, n)),
                bound: Some(bound),
                bound_side: Some(side),
                events: x,
                n,
                threshold: *threshold,
                needed,
                confidence: c,
                detail: Detail::Rate { unit },
                scope: Scope::Phase,
                clustered,
            }
        }
        (Test::Compare { op, .. }, MetricKind::Latency) => {
            let Metric::Latency(q) = criterion.metric else {
                unreachable!()
            };
            let t_us = criterion.latency_threshold_us().expect("latency threshold");
            let share_limit = 1.0 - q as f64 / 1000.0;
            let Some((idx, x)) = plan
                .threshold_index(t_us)
                .and_then(|i| Some((i, *ev.canary.slow.get(i)?)))
            else {
                // Evidence recorded without this threshold's counter: a missing count is not
                // zero slow requests, it is nothing known.
                return Verdict {
                    criterion: text,
                    outcome: Outcome::Inconclusive,
                    observed: None,
                    bound: None,
                    bound_side: None,
                    events: 0,
                    n: 0,
                    threshold: share_limit,
                    needed: None,
                    confidence: c,
                    detail: Detail::Text {
                        text: format!(
                            "no count of requests slower than {} ms in this evidence (recorded without that threshold): cannot be judged",
                            t_us as f64 / 1000.0
                        ),
                    },
                    scope: Scope::Phase,
                    clustered: None,
                };
            };
            let n = ev.canary.requests;
            let (phi, clustered) = clustering(ev, RateStream::Slow(idx));
            let (outcome, bound, side, needed) = judge_rate(x, n, *op, share_limit, c, phi);
            Verdict {
                criterion: text,
                outcome,
                observed: (n > 0).then(|| ratio(x, n)),
                bound: Some(bound),
                bound_side: Some(side),
                events: x.min(n),
                n,
                threshold: share_limit,
                needed,
                confidence: c,
                detail: Detail::Latency {
                    quantile: q,
                    threshold_ms: t_us as f64 / 1000.0,
                    estimate_ms: ev.canary.quantile_ms(q as f64 / 1000.0),
                },
                scope: Scope::Phase,
                clustered,
            }
        }
        (Test::Compare { op, threshold, .. }, MetricKind::Count) => {
            let k = ev.signals.count(criterion.metric).unwrap_or(0);
            let holds = op.holds(k as f64, *threshold);
            let outcome = if holds { Outcome::Pass } else { Outcome::Fail };
            Verdict {
                criterion: text,
                outcome,
                observed: Some(k as f64),
                bound: None,
                bound_side: None,
                events: k,
                n: k,
                threshold: *threshold,
                needed: None,
                confidence: c,
                detail: Detail::Count { op: *op },
                scope: Scope::Phase,
                clustered: None,
            }
        }
        (Test::Compare { op, threshold, .. }, MetricKind::Users) => {
            // The sketch's estimate with an honest margin: a gate "at least N users" passes
            // on the lower end, "at most N" on the upper.
            let users = ev.canary.users.estimate();
            let lower = (users as f64 * (1.0 - USERS_RELATIVE_ERROR)).floor();
            let upper = (users as f64 * (1.0 + USERS_RELATIVE_ERROR)).ceil();
            let (outcome, bound, side) = match op {
                Op::Gt | Op::Ge | Op::Eq if op.holds(lower, *threshold) => {
                    (Outcome::Pass, lower, BoundSide::Lower)
                }
                Op::Gt | Op::Ge | Op::Eq => (Outcome::Inconclusive, lower, BoundSide::Lower),
                Op::Lt | Op::Le if op.holds(upper, *threshold) => {
                    (Outcome::Pass, upper, BoundSide::Upper)
                }
                Op::Lt | Op::Le if !op.holds(lower, *threshold) => {
                    (Outcome::Fail, lower, BoundSide::Lower)
                }
                Op::Lt | Op::Le => (Outcome::Inconclusive, upper, BoundSide::Upper),
            };
            // Users still needed before the lower end reaches the threshold (more users only
            // ever help an "at least" gate).
            let needed =
                (outcome == Outcome::Inconclusive && side == BoundSide::Lower).then(|| {
                    let target = *threshold + f64::from(u8::from(*op == Op::Gt));
                    ((target / (1.0 - USERS_RELATIVE_ERROR)).ceil() as u64)
                        .saturating_sub(users)
                        .max(1)
                });
            Verdict {
                criterion: text,
                outcome,
                observed: Some(users as f64),
                bound: Some(bound),
                bound_side: Some(side),
                events: users,
                n: users,
                threshold: *threshold,
                needed,
                confidence: c,
                detail: Detail::Users { op: *op },
                scope: Scope::Phase,
                clustered: None,
            }
        }
        (Test::NotWorseThanStable { margin }, _) => not_worse(plan, criterion, ev, *margin),
        (
            Test::LatencyNotWorseThanStable {
                relative,
                absolute_ms,
            },
            _,
        ) => {
            let Metric::Latency(q) = criterion.metric else {
                unreachable!("the parser allows latency metrics only")
            };
            latency_not_worse(plan, criterion, q, ev, *relative, *absolute_ms)
        }
    }
}

/// Requests in buckets `index..` of a histogram's counts: those at or above the bucket's lower
/// edge. `suffix[i]` for every bucket, plus a final 0.
fn at_or_above(counts: &[u64]) -> Vec<u64> {
    let mut suffix = vec![0u64; counts.len() + 1];
    for i in (0..counts.len()).rev() {
        suffix[i] = suffix[i + 1].saturating_add(counts[i]);
    }
    suffix
}

/// `pNN_latency not worse than stable`: is the canary's quantile at most stable's
/// `× (1 + relative) + absolute`? Quantiles are compared through exceedance shares, with exact
/// per-variant bounds at the Bonferroni-split confidence, on the display histogram's bucket edges
/// (exact counts per bucket, edges at most 1/128 apart):
///
/// * **pass**: a lower confidence bound `L` on stable's quantile (the highest edge `e` with
///   `P(stable ≥ e) > 1 - p` proven, so `q_s ≥ e`), then the canary's quantile proven at most
///   `L × (1 + relative) + absolute` (the share of canary requests at or above the next edge is
///   proven at most `1 - p`). Then `q_c ≤ q_s × (1 + relative) + absolute`.
/// * **fail**: an upper bound `U` on stable's quantile (the lowest edge with the share at or
///   above it proven at most `1 - p`), and the canary's quantile proven above
///   `U × (1 + relative) + absolute`.
/// * otherwise inconclusive. Each of the two statements holds with the plan's confidence.
fn latency_not_worse(
    plan: &Plan,
    criterion: &Criterion,
    q: u16,
    ev: &Evidence,
    relative: f64,
    absolute_ms: f64,
) -> Verdict {
    use super::sketch::{bucket_index, bucket_lower};
    let c = plan.analysis.confidence;
    let split = 1.0 - (1.0 - c) / 2.0;
    let tail = 1.0 - f64::from(q) / 1000.0;
    let (hs, hc) = (&ev.stable.latency, &ev.canary.latency);
    let (ns, nc) = (hs.count(), hc.count());
    let (ss, sc) = (at_or_above(hs.counts()), at_or_above(hc.counts()));
    let allowed = |us: u64| us as f64 * (1.0 + relative) + absolute_ms * 1000.0;
    // Lower bound on stable's quantile: the share at or above an edge only falls as the edge
    // rises, so the proven edges form a prefix; take the last (0 when none is proven).
    let lower_s = if ns == 0 {
        0
    } else {
        let proven =
            ss[..ss.len() - 1].partition_point(|&x| confseq::lower_above(x, ns, tail, split));
        proven.checked_sub(1).map_or(0, bucket_lower)
    };
    // Upper bound on stable's quantile: the first edge whose share is proven at most the tail;
    // q_s is then below that edge.
    let upper_s = if ns == 0 {
        None
    } else {
        let first =
            ss[..ss.len() - 1].partition_point(|&x| !confseq::upper_below(x, ns, tail, split));
        (first < ss.len() - 1).then(|| bucket_lower(first).saturating_sub(1))
    };
    // Pass: canary's share at or above the edge just past the allowed value, proven ≤ tail.
    let pass_limit = allowed(lower_s);
    let pass_edge = bucket_index(pass_limit.floor() as u64 + 1);
    let x_pass = sc[pass_edge];
    let pass_bound = confseq::upper_bound(x_pass, nc, split);
    let passes = ns > 0 && nc > 0 && lower_s > 0 && confseq::upper_below(x_pass, nc, tail, split);
    // Fail: canary's share strictly above the allowed value, proven > tail.
    let fail = upper_s.filter(|_| nc > 0).and_then(|u| {
        let limit = allowed(u);
        let edge = bucket_index(limit.floor() as u64) + 1;
        let x = *sc.get(edge)?;
        confseq::lower_above(x, nc, tail, split)
            .then(|| (limit, x, confseq::lower_bound(x, nc, split)))
    });
    let outcome = if passes {
        Outcome::Pass
    } else if fail.is_some() {
        Outcome::Fail
    } else {
        Outcome::Inconclusive
    };
    let share = ratio(x_pass, nc);
    let needed = if outcome == Outcome::Inconclusive && nc > 0 && ns > 0 && lower_s > 0 {
        confseq::min_n_upper_below(share, tail, split).map(|n| n.saturating_sub(nc))
    } else {
        None
    };
    let estimate = |h: &super::window::VariantStats| h.quantile_ms(f64::from(q) / 1000.0);
    let (case, stable_bound_us, limit_us) = if nc == 0 || ns == 0 {
        (LatencyCase::NoData, 0.0, 0.0)
    } else if let Some((limit, _, _)) = fail {
        (LatencyCase::Slower, upper_s.unwrap_or(0) as f64, limit)
    } else if lower_s == 0 {
        (LatencyCase::NoStableBound, 0.0, 0.0)
    } else {
        (LatencyCase::Compared, lower_s as f64, pass_limit)
    };
    let (events, bound, side) = match fail {
        Some((_, x, b)) => (x, b, BoundSide::Lower),
        None => (x_pass, pass_bound, BoundSide::Upper),
    };
    Verdict {
        criterion: criterion.text.clone(),
        outcome,
        observed: (nc > 0).then(|| ratio(events, nc)),
        bound: (nc > 0 && ns > 0).then_some(bound),
        bound_side: Some(side),
        events,
        n: nc,
        threshold: tail,
        needed,
        confidence: c,
        detail: Detail::LatencyVsStable {
            quantile: q,
            canary_ms: estimate(&ev.canary),
            stable_ms: estimate(&ev.stable),
            stable_n: ns,
            stable_bound_ms: stable_bound_us / 1000.0,
            limit_ms: limit_us / 1000.0,
            relative,
            absolute_ms,
            case,
        },
        scope: Scope::Phase,
        clustered: None,
    }
}

/// `metric not worse than stable`: canary's bad share minus stable's, bounded with exact
/// per-variant bounds (Bonferroni), compared with the margin.
fn not_worse(plan: &Plan, criterion: &Criterion, ev: &Evidence, margin: f64) -> Verdict {
    let c = plan.analysis.confidence;
    let metric = criterion.metric;
    let bad = |v: &super::window::VariantStats| {
        let (x, n) = v.rate_counts(metric).expect("rate metric");
        if metric.higher_is_better() {
            (n.saturating_sub(x), n)
        } else {
            (x, n)
        }
    };
    let (xc, nc) = bad(&ev.canary);
    let (xs, ns) = bad(&ev.stable);
    let (lo, hi) = if nc == 0 || ns == 0 {
        (-1.0, 1.0)
    } else {
        diff_bounds(xc, nc, xs, ns, c)
    };
    let outcome = if nc > 0 && ns > 0 && hi <= margin {
        Outcome::Pass
    } else if nc > 0 && ns > 0 && lo > margin {
        Outcome::Fail
    } else {
        Outcome::Inconclusive
    };
    let diff = ratio(xc, nc) - ratio(xs, ns);
    let needed = if outcome == Outcome::Inconclusive {
        needed_for_difference(xc, nc, xs, ns, margin, c)
    } else {
        None
    };
    let what = if metric.higher_is_better() {
        format!("non-{}", metric.name())
    } else {
        metric.name()
    };
    Verdict {
        criterion: criterion.text.clone(),
        outcome,
        observed: (nc > 0 && ns > 0).then_some(diff),
        bound: (nc > 0 && ns > 0).then_some(if outcome == Outcome::Fail { lo } else { hi }),
        bound_side: Some(if outcome == Outcome::Fail {
            BoundSide::Lower
        } else {
            BoundSide::Upper
        }),
        events: xc,
        n: nc,
        threshold: margin,
        needed,
        confidence: c,
        detail: Detail::VsStable {
            what,
            canary_events: xc,
            canary_n: nc,
            stable_events: xs,
            stable_n: ns,
            upper: hi,
        },
        scope: Scope::Phase,
        clustered: None,
    }
}

/// Always-valid bounds for `p_canary - p_stable` at overall confidence `c`: each variant's
/// [`confseq`] bound at `1 - (1 - c)/2` (Bonferroni), so both hold together, at every look,
/// with probability at least `c`. Returns `(lower, upper)`.
pub fn diff_bounds(xc: u64, nc: u64, xs: u64, ns: u64, c: f64) -> (f64, f64) {
    let split = 1.0 - (1.0 - c) / 2.0;
    let upper = confseq::upper_bound(xc, nc, split) - confseq::lower_bound(xs, ns, split);
    let lower = confseq::lower_bound(xc, nc, split) - confseq::upper_bound(xs, ns, split);
    (lower, upper)
}

/// More canary requests needed (traffic split unchanged, rates unchanged) before the
/// difference's upper bound drops to the margin; `None` when the observed difference is
/// already at or above the margin.
fn needed_for_difference(xc: u64, nc: u64, xs: u64, ns: u64, margin: f64, c: f64) -> Option<u64> {
    if nc == 0 || ns == 0 {
        return None;
    }
    let (pc, ps) = (ratio(xc, nc), ratio(xs, ns));
    if pc - ps >= margin {
        return None;
    }
    let ok = |k: f64| {
        let nc2 = (nc as f64 * k).round() as u64;
        let ns2 = (ns as f64 * k).round() as u64;
        let xc2 = (pc * nc2 as f64).floor() as u64;
        let xs2 = (ps * ns2 as f64).ceil() as u64;
        diff_bounds(xc2, nc2, xs2.min(ns2), ns2, c).1 <= margin
    };
    let mut hi = 2.0;
    while !ok(hi) {
        hi *= 2.0;
        if hi > 1e7 {
            return None;
        }
    }
    let mut lo = 1.0;
    // To within 0.1% of the answer: an estimate, not a bound.
    for _ in 0..12 {
        let mid = (lo + hi) / 2.0;
        if ok(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(((hi - 1.0) * nc as f64).ceil().max(1.0) as u64)
}

/// Judges every criterion of a phase.
pub fn judge_all(plan: &Plan, criteria: &[Criterion], ev: &Evidence) -> Vec<Verdict> {
    criteria.iter().map(|c| judge(plan, c, ev)).collect()
}

/// The combined verdict of a gate: fail if any fails, else inconclusive if any is, else pass.
/// A gate with no criteria passes.
pub fn combine(verdicts: &[Verdict]) -> Outcome {
    if verdicts.iter().any(|v| v.outcome == Outcome::Fail) {
        Outcome::Fail
    } else if verdicts.iter().any(|v| v.outcome == Outcome::Inconclusive) {
        Outcome::Inconclusive
    } else {
        Outcome::Pass
    }
}
