//! Always-valid one-sided bounds for a binomial proportion (a confidence sequence).
//!
//! A gate that re-judges a fixed-sample Clopper–Pearson bound at the phase end, then every
//! analysis interval during an extension, then whenever an operator asks to promote, spends its
//! error rate again at every look: a canary exactly at the threshold is promoted 15–18% of the
//! time at a nominal 5%. The bounds here hold **simultaneously at every n**:
//!
//! > `P(upper_below(X_n, n, t, c) for some n ≥ 1 | rate ≥ t) ≤ 1 - c`, and likewise
//! > `P(lower_above(X_n, n, t, c) for some n | rate ≤ t) ≤ 1 - c`,
//!
//! for independent Bernoulli observations, however often and whenever the bound is looked at
//! (including after peeking at the data, and with the sampling stopped for any reason).
//!
//! **Construction.** To prove `rate < t`, mix the likelihood ratios of alternatives `p' < t`
//! against t: `M_n(t) = ∫ Π_i (p'/t)^{x_i} ((1-p')/(1-t))^{1-x_i} π_t(dp')`. For every true rate
//! `p ≥ t` each factor has conditional mean `p p'/t + (1-p)(1-p')/(1-t) ≤ 1`, so `M_n(t)` is a
//! non-negative supermartingale with `M_0 = 1`, and by Ville's inequality
//! `P(sup_n M_n(t) ≥ 1/α) ≤ α`. The gate passes when `M_n(t) ≥ 1/α` (α = 1 - c). The lower side
//! mixes alternatives `p' > t` in the same way.
//!
//! **The mixture.** The mixing distribution is on the log odds ratio `λ = |ln(odds(p')/odds(t))|`,
//! exponential with rate [`KAPPA`] = 1/2: a scale-free choice (it depends on t only through its
//! odds, so "error rate < 0.1%", "success rate > 99%" and "p95 < 200 ms" all get the same
//! shape), symmetric under `p ↔ 1 - p`, and with a closed form: for the upper side
//! `M = κ ω^{-κ} B(x+κ, n-x-κ) I_t(x+κ, n-x-κ) / (t^x (1-t)^{n-x})` with ω = odds(t) (the
//! regularized incomplete beta function of [`super::stats::inc_beta`]). κ trades the case "no
//! event at all" (small κ: mass near p' = 0) against "a few events" (large κ: mass near t); 1/2
//! minimises the worst price over the counts that decide gates (0–10 events at the threshold),
//! measured against the fixed-sample bound: to prove `error_rate < 0.1%` at 95% the sequence
//! needs 3,787 requests with 0 errors (fixed: 2,995; ×1.26), 6,655 with 1 (4,742; ×1.40),
//! 8,857 with 2 (6,294; ×1.41) and 14,397 with 5 (10,511; ×1.37). That is the price of being
//! allowed to look at every request. When `n - x ≤ κ` (upper) or `x ≤ κ` (lower) the integral
//! has no closed form and the evidence is taken as 0: never a decision, so still valid.
//!
//! Everything here is decided with one evaluation of `M` (no root finding), like
//! [`super::stats::upper_below`]; the bounds themselves ([`upper_bound`], [`lower_bound`]) are
//! for explanations. Planning: [`min_n_upper_below`], [`min_n_lower_above`] and the exact
//! probability of passing by n at a stated true rate, [`pass_probability`].

use super::stats::{inc_beta, ln_gamma};

/// Rate of the exponential mixing distribution on the log odds ratio.
pub const KAPPA: f64 = 0.5;

/// `ln(1/α)` for confidence c, or `None` when c gives no usable test (c ≤ 0: everything
/// passes is not allowed; c ≥ 1: nothing ever passes).
fn log_threshold(confidence: f64) -> f64 {
    let c = if confidence.is_nan() {
        0.0
    } else {
        confidence.clamp(0.0, 1.0)
    };
    -(-c).ln_1p()
}

fn ln_beta(a: f64, b: f64) -> f64 {
    ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b)
}

/// `ln M_n(t)` for the upper side (evidence that the rate is below t): `-∞` when there is no
/// evidence (n - x ≤ κ, or t outside (0, 1)).
pub fn log_evidence_below(x: u64, n: u64, t: f64) -> f64 {
    let x = x.min(n);
    if !(t > 0.0 && t < 1.0) || (n - x) as f64 <= KAPPA {
        return f64::NEG_INFINITY;
    }
    let (xf, nf) = (x as f64, n as f64);
    let (a, b) = (xf + KAPPA, nf - xf - KAPPA);
    let tail = inc_beta(a, b, t);
    // Below 1e-290 the tail has lost its precision to subnormals: that far from any decision
    // (ln M < -600) the evidence is taken as none, which can only delay a decision.
    if tail.is_nan() || tail < 1e-290 {
        return f64::NEG_INFINITY;
    }
    let ln_omega = t.ln() - (-t).ln_1p();
    KAPPA.ln() - KAPPA * ln_omega + ln_beta(a, b) + tail.ln()
        - xf * t.ln()
        - (nf - xf) * (-t).ln_1p()
}

/// `ln M_n(t)` for the lower side (evidence that the rate is above t): `-∞` when there is no
/// evidence (x ≤ κ, or t outside (0, 1)).
pub fn log_evidence_above(x: u64, n: u64, t: f64) -> f64 {
    let x = x.min(n);
    if !(t > 0.0 && t < 1.0) || x as f64 <= KAPPA {
        return f64::NEG_INFINITY;
    }
    let (xf, nf) = (x as f64, n as f64);
    let (a, b) = (xf - KAPPA, nf - xf + KAPPA);
    // ∫_t^1 p^{a-1}(1-p)^{b-1} dp / B(a, b) = I_{1-t}(b, a).
    let tail = inc_beta(b, a, 1.0 - t);
    // Below 1e-290 the tail has lost its precision to subnormals: that far from any decision
    // (ln M < -600) the evidence is taken as none, which can only delay a decision.
    if tail.is_nan() || tail < 1e-290 {
        return f64::NEG_INFINITY;
    }
    let ln_omega = t.ln() - (-t).ln_1p();
    KAPPA.ln() + KAPPA * ln_omega + ln_beta(a, b) + tail.ln()
        - xf * t.ln()
        - (nf - xf) * (-t).ln_1p()
}

/// Whether the always-valid upper bound is below `t`: `M_n(t) ≥ 1/(1 - confidence)`.
/// Thresholds above 1 always hold, thresholds at or below 0 never do.
pub fn upper_below(x: u64, n: u64, t: f64, confidence: f64) -> bool {
    if t.is_nan() || t <= 0.0 {
        return false;
    }
    if t > 1.0 {
        return true;
    }
    if t == 1.0 {
        return x.min(n) < n;
    }
    log_evidence_below(x, n, t) >= log_threshold(confidence)
}

/// Whether the always-valid lower bound is above `t`: `M_n^+(t) ≥ 1/(1 - confidence)`: the
/// early-fail decision of a gate (`rate < t` is already disproven) and the rollback decision of
/// a one-shot trigger. Thresholds below 0 always hold, at or above 1 never do.
pub fn lower_above(x: u64, n: u64, t: f64, confidence: f64) -> bool {
    if t.is_nan() || t >= 1.0 {
        return false;
    }
    if t < 0.0 {
        return true;
    }
    if t == 0.0 {
        return x.min(n) > 0;
    }
    log_evidence_above(x, n, t) >= log_threshold(confidence)
}

/// The always-valid upper bound: the smallest t with `upper_below(x, n, t, c)` (1 when there is
/// none), by bisection on the log odds (the evidence is increasing in t). For explanations.
pub fn upper_bound(x: u64, n: u64, confidence: f64) -> f64 {
    let x = x.min(n);
    if n == 0 || (n - x) as f64 <= KAPPA || log_threshold(confidence) == f64::INFINITY {
        return 1.0;
    }
    let p_hat = x as f64 / n as f64;
    // The bound is above the estimate: search logit in (logit(max(p_hat, tiny)), +40).
    let mut lo = logit(p_hat.max(1e-300));
    let mut hi = 40.0f64;
    if !upper_below(x, n, expit(hi), confidence) {
        return 1.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if upper_below(x, n, expit(mid), confidence) {
            hi = mid;
        } else {
            lo = mid;
        }
        if hi - lo < 1e-13 {
            break;
        }
    }
    expit(hi)
}

/// The always-valid lower bound: the largest t with `lower_above(x, n, t, c)` (0 when there is
/// none). For explanations.
pub fn lower_bound(x: u64, n: u64, confidence: f64) -> f64 {
    let x = x.min(n);
    if n == 0 || x as f64 <= KAPPA || log_threshold(confidence) == f64::INFINITY {
        return 0.0;
    }
    let p_hat = x as f64 / n as f64;
    let mut hi = logit(p_hat.min(1.0 - 1e-16));
    let mut lo = -700.0f64;
    if !lower_above(x, n, expit(lo), confidence) {
        return 0.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if lower_above(x, n, expit(mid), confidence) {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo < 1e-13 {
            break;
        }
    }
    expit(lo)
}

fn logit(p: f64) -> f64 {
    p.ln() - (-p).ln_1p()
}

fn expit(l: f64) -> f64 {
    1.0 / (1.0 + (-l).exp())
}

/// The most events with which `n` observations pass `rate < t` (None: no count passes).
pub fn max_events_to_pass(n: u64, t: f64, confidence: f64) -> Option<u64> {
    if !upper_below(0, n, t, confidence) {
        return None;
    }
    // Evidence is decreasing in x: binary search the last passing count.
    let (mut lo, mut hi) = (0u64, n);
    if upper_below(hi, n, t, confidence) {
        return Some(hi);
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if upper_below(mid, n, t, confidence) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(lo)
}

/// The fewest events with which `n` observations prove `rate > t` (None: not even n events).
pub fn min_events_to_fail(n: u64, t: f64, confidence: f64) -> Option<u64> {
    if !lower_above(n, n, t, confidence) {
        return None;
    }
    let (mut lo, mut hi) = (0u64, n);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if lower_above(mid, n, t, confidence) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(hi)
}

/// Largest sample size the planners consider.
const MAX_PLAN_N: u64 = 1_000_000_000_000;

/// The first n ≥ 1 with `floor(rate·n) ≥ j` (rate > 0), or `u64::MAX` beyond the range.
fn run_start(rate: f64, j: u64) -> u64 {
    if j == 0 {
        return 1;
    }
    let est = (j as f64 / rate).ceil();
    if est.is_nan() || est > 4.0 * MAX_PLAN_N as f64 {
        return u64::MAX;
    }
    let mut n = (est as u64).max(1);
    while n > 1 && ((rate * (n - 1) as f64).floor() as u64) >= j {
        n -= 1;
    }
    while ((rate * n as f64).floor() as u64) < j {
        n += 1;
    }
    n
}

/// The first j ≥ `from` from which `good` holds for every run checked: exponential search,
/// binary search back, then a verification window of `max(64, min(4√j, 4096))` runs; a
/// failure there restarts the search past it. None when nothing up to `limit` is good.
fn first_good_run(from: u64, limit: u64, good: impl Fn(u64) -> bool) -> Option<u64> {
    let mut start = from;
    loop {
        let mut bad: Option<u64> = None;
        let mut cand = start;
        let mut step = 1u64;
        while !good(cand) {
            bad = Some(cand);
            if cand >= limit {
                return None;
            }
            cand = cand.saturating_add(step).min(limit);
            step = step.saturating_mul(2);
        }
        let j = match bad {
            None => cand,
            Some(mut lo) => {
                let mut hi = cand;
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    if good(mid) {
                        hi = mid;
                    } else {
                        lo = mid;
                    }
                }
                hi
            }
        };
        let window = 64u64.max((4.0 * (j as f64).sqrt()).min(4096.0) as u64);
        match (j + 1..=j.saturating_add(window).min(limit)).find(|&k| !good(k)) {
            None => return Some(j),
            Some(b) => start = b + 1,
        }
    }
}

/// Sample-size planning for "rate below t" on the confidence sequence: the smallest n such that,
/// if events keep occurring at `rate` (x = ⌊rate·n⌋), `upper_below(x, n, t, c)` holds at n and
/// at every larger n checked. The search runs over the runs of constant x, as
/// [`super::stats::min_n_upper_below`] does: within a run the evidence grows with n, so a run
/// passes as a whole when it passes at its first n. None when `rate >= t`, for invalid input,
/// or beyond 10^12.
pub fn min_n_upper_below(rate: f64, t: f64, confidence: f64) -> Option<u64> {
    if !(rate.is_finite() && t.is_finite()) || rate < 0.0 || rate >= t {
        return None;
    }
    let pred = |n: u64| upper_below((rate * n as f64).floor() as u64, n, t, confidence);
    let first_true = |mut lo: u64, mut hi: u64| {
        // pred(lo) false, pred(hi) true.
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if pred(mid) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        hi
    };
    if rate == 0.0 {
        if !pred(MAX_PLAN_N) {
            return None;
        }
        if pred(1) {
            return Some(1);
        }
        let mut hi = 2u64;
        while !pred(hi) {
            hi = (hi * 2).min(MAX_PLAN_N);
        }
        return Some(first_true(hi / 2, hi));
    }
    let limit = (rate * MAX_PLAN_N as f64).floor() as u64;
    let good = |j: u64| {
        let s = run_start(rate, j);
        s > MAX_PLAN_N || pred(s)
    };
    let big_j = first_good_run(0, limit, good)?;
    if big_j == 0 {
        return Some(1);
    }
    let (start_prev, start) = (run_start(rate, big_j - 1), run_start(rate, big_j));
    let end_prev = start - 1;
    let answer = if end_prev > start_prev && pred(end_prev) && !pred(start_prev) {
        first_true(start_prev, end_prev)
    } else if pred(start_prev) {
        start_prev
    } else {
        start
    };
    (answer <= MAX_PLAN_N).then_some(answer)
}

/// Sample-size planning for "rate above t" (the early fail): the smallest n from which
/// `lower_above(⌊rate·n⌋, n, t, c)` holds at every n checked (within a run of constant x the
/// evidence falls as n grows, so a run passes when it passes at its last n). None when
/// `rate <= t` or `rate > 1`.
pub fn min_n_lower_above(rate: f64, t: f64, confidence: f64) -> Option<u64> {
    if !(rate.is_finite() && t.is_finite()) || rate <= t || rate > 1.0 || t < 0.0 {
        return None;
    }
    let pred = |n: u64| lower_above((rate * n as f64).floor() as u64, n, t, confidence);
    let limit = (rate * MAX_PLAN_N as f64).floor() as u64;
    let run_end = |j: u64| run_start(rate, j + 1).saturating_sub(1).min(MAX_PLAN_N);
    let big_j = first_good_run(1, limit, |j| pred(run_end(j)))?;
    let answer = run_start(rate, big_j);
    (answer <= MAX_PLAN_N).then_some(answer)
}

/// `ln P(Bin(m, p) = k)` for k = 0..=kmax, by the ratio recurrence.
fn binom_log_pmf(m: u64, p: f64, kmax: u64) -> Vec<f64> {
    let kmax = kmax.min(m);
    let mut out = Vec::with_capacity(kmax as usize + 1);
    let (lp, lq) = (p.ln(), (-p).ln_1p());
    let mut cur = m as f64 * lq;
    out.push(cur);
    for k in 0..kmax {
        cur += ((m - k) as f64).ln() - ((k + 1) as f64).ln() + lp - lq;
        out.push(cur);
    }
    out
}

/// The exact probability that a gate "rate < t" judged with [`upper_below`] at every
/// observation has passed by observation `n`, when every observation is an independent event
/// with probability `rate`. Looking at every observation is the most permissive schedule, so
/// this also bounds the pass probability of any sparser one (every interval, an operator's
/// arbitrary promote) from above.
///
/// The pass region at sample size m is `x ≤ k(m)`, with k non-decreasing in m, and the event
/// count only grows, so the first pass can only happen at the sample sizes `m_j` where k first
/// reaches j; the function propagates the distribution of the count between those checkpoints
/// (binomial convolutions, counts above k(n) dropped: they can never pass by n). Cost
/// O(k(n)³): fine for the few hundred events a gate decides on.
pub fn pass_probability(rate: f64, t: f64, confidence: f64, n: u64) -> f64 {
    if !rate.is_finite() || !(0.0..=1.0).contains(&rate) || n == 0 {
        return 0.0;
    }
    let Some(kn) = max_events_to_pass(n, t, confidence) else {
        return 0.0;
    };
    // First m with k(m) ≥ j, for j = 0..=kn.
    let first_m = |j: u64| -> u64 {
        let (mut lo, mut hi) = (j, n);
        if upper_below(j, lo.max(1), t, confidence) {
            return lo.max(1);
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if upper_below(j, mid, t, confidence) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        hi
    };
    if rate == 0.0 {
        return 1.0;
    }
    let width = kn as usize + 1;
    let mut dist = vec![0.0f64; width];
    dist[0] = 1.0;
    let mut at = 0u64;
    let mut passed = 0.0f64;
    for j in 0..=kn {
        let m = first_m(j);
        if m > n {
            break;
        }
        // Propagate from `at` to m.
        let gap = m - at;
        if gap > 0 {
            let pmf: Vec<f64> = if rate >= 1.0 {
                let mut v = vec![0.0; width];
                if (gap as usize) < width {
                    v[gap as usize] = 1.0;
                }
                v
            } else {
                binom_log_pmf(gap, rate, kn)
                    .into_iter()
                    .map(f64::exp)
                    .collect()
            };
            let mut next = vec![0.0f64; width];
            for (x, &mass) in dist.iter().enumerate() {
                if mass == 0.0 {
                    continue;
                }
                for (k, &pk) in pmf.iter().enumerate() {
                    if x + k >= width {
                        break;
                    }
                    next[x + k] += mass * pk;
                }
            }
            dist = next;
            at = m;
        }
        // Pass: count ≤ j at m.
        for v in dist.iter_mut().take(j as usize + 1) {
            passed += *v;
            *v = 0.0;
        }
    }
    passed.min(1.0)
}

#[cfg(test)]
// Measurement-only tests print their figures.
#[allow(clippy::print_stdout, clippy::disallowed_methods)]
mod tests {
    use super::*;
    use crate::evidence::stats::{cp_lower, cp_upper};
    use proptest::prelude::*;

    /// Reference values of ln M computed with mpmath (40 digits) by quadrature of the mixture
    /// over the log odds ratio (independently of the closed form).
    #[test]
    fn evidence_against_reference() {
        let below: &[(u64, u64, f64, f64)] = &[
            (0, 3786, 0.001, 2.995_117_533_089_104),
            (0, 3785, 0.001, 2.994_242_526_158_83),
            (1, 6654, 0.001, 2.995_337_593_253_069),
            (5, 14397, 0.001, 2.993_560_715_110_029),
            (3, 1000, 0.01, 2.466_357_658_822_374),
            (40, 100_000, 0.001, 21.288_453_349_574_28),
            (2, 50, 0.3, 9.852_770_921_716_288),
        ];
        for &(x, n, t, want) in below {
            let got = log_evidence_below(x, n, t);
            assert!(
                (got - want).abs() < 1e-9,
                "below {x} {n} {t}: {got} vs {want}"
            );
        }
        let above: &[(u64, u64, f64, f64)] = &[
            (4, 100, 0.01, 1.518_521_943_957_533),
            (16, 1000, 0.01, 0.111_954_890_072_135_05),
            (30, 1000, 0.01, 11.157_966_536_760_896),
            (60, 100, 0.4, 6.346_357_798_827_154),
            (3, 10, 0.05, 2.171_954_789_140_924),
        ];
        for &(x, n, t, want) in above {
            let got = log_evidence_above(x, n, t);
            assert!(
                (got - want).abs() < 1e-9,
                "above {x} {n} {t}: {got} vs {want}"
            );
        }
    }

    /// The always-valid equivalents of the field notes' fixed-sample numbers.
    #[test]
    fn numbers_worth_knowing_always_valid() {
        let c = 0.95;
        let first = |x: u64, t: f64| {
            (x + 1..10_000_000)
                .find(|&n| upper_below(x, n, t, c))
                .unwrap()
        };
        let mut rows = Vec::new();
        for &(x, fixed) in &[(0u64, 2995u64), (1, 4742), (2, 6294), (5, 10511)] {
            let n = first(x, 0.001);
            rows.push((x, n, fixed));
            println!(
                "error_rate < 0.1%: {x} errors: {n} requests (fixed-sample {fixed}, x{:.2})",
                n as f64 / fixed as f64
            );
            // From n on the bound stays below t (no event added).
            assert!((n..n + 5000).all(|m| upper_below(x, m, 0.001, c)));
            assert!(n as f64 / (fixed as f64) < 1.45 && n > fixed);
        }
        assert_eq!(rows[0].1, 3787);
        assert_eq!(rows[1].1, 6655);
        for &(x, fixed) in &[(0u64, 299u64), (1, 473), (2, 628)] {
            let n = first(x, 0.01);
            println!("success_rate > 99%: {x} failures: {n} requests (fixed {fixed})");
            assert!(n > fixed && (n as f64) < 1.5 * fixed as f64);
        }
        // Early fail, error rate > 1%.
        for &(n, fixed) in &[(100u64, 4u64), (500, 10), (1000, 16)] {
            let x = min_events_to_fail(n, 0.01, c).unwrap();
            println!("error_rate > 1% proven: {x} of {n} (fixed {fixed})");
            assert!(x >= fixed && x <= 2 * fixed + 2);
            assert!(lower_above(x, n, 0.01, c) && !lower_above(x - 1, n, 0.01, c));
        }
    }

    #[test]
    fn bounds_and_edges() {
        let c = 0.95;
        assert!(!upper_below(0, 0, 0.5, c));
        assert!(upper_below(0, 0, 1.5, c));
        assert!(!upper_below(0, 10, 0.0, c));
        assert!(!lower_above(0, 10, 0.5, c));
        assert!(lower_above(0, 10, -0.1, c));
        assert!(!lower_above(10, 10, 1.0, c));
        assert_eq!(upper_bound(0, 0, c), 1.0);
        assert_eq!(lower_bound(0, 10, c), 0.0);
        assert_eq!(upper_bound(5, 5, c), 1.0);
        // The bound solves its equation and is wider than Clopper–Pearson.
        for &(x, n) in &[
            (0u64, 5000u64),
            (3, 10_000),
            (50, 1000),
            (500, 1000),
            (990, 1000),
        ] {
            let u = upper_bound(x, n, c);
            assert!(
                (log_evidence_below(x, n, u) - 20f64.ln()).abs() < 1e-6,
                "{x} {n} {u}"
            );
            assert!(u > cp_upper(x, n, c));
            if x > 0 {
                let l = lower_bound(x, n, c);
                assert!(
                    (log_evidence_above(x, n, l) - 20f64.ln()).abs() < 1e-6,
                    "{x} {n} {l}"
                );
                assert!(l < cp_lower(x, n, c) && l < x as f64 / n as f64);
            }
        }
        // Large n keeps its precision.
        let (x, n) = (1_000_000u64, 1_000_000_000u64);
        let u = upper_bound(x, n, c);
        assert!(u > 0.001 && u < 0.001 * 1.01, "{u}");
    }

    /// Exact validity: at a true rate equal to the threshold, the probability of ever passing
    /// (looking at every single observation) stays below alpha at every horizon.
    #[test]
    fn validity_at_every_n() {
        for &(t, n) in &[
            (0.001, 50_000u64),
            (0.001, 500_000),
            (0.01, 100_000),
            (0.05, 20_000),
            (0.3, 2_000),
        ] {
            let p = pass_probability(t, t, 0.95, n);
            println!("rate = t = {t}: P(pass by {n}) = {p:.4}");
            assert!(p <= 0.05, "{t} {n}: {p}");
        }
        // Power: half the threshold passes surely by a modest n.
        let p = pass_probability(0.0005, 0.001, 0.95, 60_000);
        assert!(p > 0.95, "{p}");
        // Zero rate: passes at the zero-event sample size.
        assert_eq!(pass_probability(0.0, 0.001, 0.95, 3786), 0.0);
        assert_eq!(pass_probability(0.0, 0.001, 0.95, 3787), 1.0);
    }

    #[test]
    fn pass_probability_matches_simulation() {
        // xorshift; simulate the every-observation look schedule.
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        let (rate, t, n) = (0.01, 0.02, 3000u64);
        let kmax: Vec<Option<u64>> = (0..=n).map(|m| max_events_to_pass(m, t, 0.95)).collect();
        let runs = 4000;
        let mut passed = 0;
        for _ in 0..runs {
            let mut x = 0u64;
            for m in 1..=n {
                x += u64::from(next() < rate);
                if kmax[m as usize].is_some_and(|k| x <= k) {
                    passed += 1;
                    break;
                }
            }
        }
        let sim = passed as f64 / runs as f64;
        let exact = pass_probability(rate, t, 0.95, n);
        println!("simulated {sim:.4}, exact {exact:.4}");
        assert!((sim - exact).abs() < 4.0 * (exact * (1.0 - exact) / runs as f64).sqrt() + 0.005);
    }

    #[test]
    fn planning() {
        let n = min_n_upper_below(0.0, 0.001, 0.95).unwrap();
        assert_eq!(n, 3787);
        let n = min_n_upper_below(0.0005, 0.001, 0.95).unwrap();
        println!(
            "min_n_upper_below(0.05%, 0.1%) = {n} (fixed-sample: {:?})",
            crate::evidence::stats::min_n_upper_below(0.0005, 0.001, 0.95)
        );
        for m in n..n + 40_000 {
            assert!(
                upper_below((0.0005 * m as f64).floor() as u64, m, 0.001, 0.95),
                "{m}"
            );
        }
        assert!(!upper_below(
            (0.0005 * (n - 1) as f64).floor() as u64,
            n - 1,
            0.001,
            0.95
        ));
        let n = min_n_lower_above(0.03, 0.01, 0.95).unwrap();
        println!(
            "min_n_lower_above(3%, 1%) = {n} (fixed-sample: {:?})",
            crate::evidence::stats::min_n_lower_above(0.03, 0.01, 0.95)
        );
        for m in n..n + 20_000 {
            assert!(
                lower_above((0.03 * m as f64).floor() as u64, m, 0.01, 0.95),
                "{m}"
            );
        }
        assert_eq!(min_n_upper_below(0.001, 0.001, 0.95), None);
        assert_eq!(min_n_lower_above(0.01, 0.01, 0.95), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn monotone_in_x_n_and_t(n in 2u64..20_000, xf in 0.0f64..1.0, t in 0.0005f64..0.9) {
            let x = ((n as f64) * xf * xf) as u64;
            let e = log_evidence_below(x, n, t);
            // Far from any decision the steps are tiny and the evaluation noise (~1e-12 of
            // the ln Γ terms) dominates: compare with a relative tolerance.
            let tol = if e.is_finite() { 1e-9 * e.abs().max(1.0) * (n as f64).ln().max(1.0) } else { 0.0 };
            // More events: less evidence that the rate is low; more non-events: more.
            prop_assert!(log_evidence_below(x + 1, n + 1, t) <= e + tol);
            prop_assert!(log_evidence_below(x, n + 1, t) >= e - tol);
            prop_assert!(log_evidence_below(x, n, t * 1.01) >= e - tol);
            let e = log_evidence_above(x, n, t);
            let tol = if e.is_finite() { 1e-9 * e.abs().max(1.0) * (n as f64).ln().max(1.0) } else { 0.0 };
            prop_assert!(log_evidence_above(x + 1, n + 1, t) >= e - tol);
            prop_assert!(log_evidence_above(x, n + 1, t) <= e + tol);
            prop_assert!(log_evidence_above(x, n, t * 1.01) <= e + tol);
        }

        #[test]
        fn decisions_agree_with_bounds(n in 1u64..5000, xf in 0.0f64..1.0, t in 0.0f64..1.0) {
            let x = ((n as f64) * xf * xf) as u64;
            let u = upper_bound(x, n, 0.95);
            prop_assume!((u - t).abs() > 1e-9 * u.max(1e-12) + 1e-12);
            prop_assert_eq!(upper_below(x, n, t, 0.95), u < t);
            prop_assert!(u >= cp_upper(x, n, 0.95) - 1e-12);
            let l = lower_bound(x, n, 0.95);
            prop_assume!((l - t).abs() > 1e-9);
            prop_assert_eq!(lower_above(x, n, t, 0.95), l > t);
            prop_assert!(l <= cp_lower(x, n, 0.95) + 1e-12);
        }
    }
}
