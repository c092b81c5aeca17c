//! `pNN_latency not worse than stable`: parsing, and verdicts on known latency distributions.

use ramp_core::evidence::{Evidence, Outcome, judge};
use ramp_core::plan::{Plan, Test, parse_plan};
use ramp_core::report::explain;

fn plan_with(criterion: &str) -> Plan {
    let text = format!(
        "name = \"x\"\n[[phase]]\nname = \"canary\"\ntraffic = \"5%\"\nduration = \"24h\"\nsuccess = [\"{criterion}\"]\n[[phase]]\nname = \"full\"\ntraffic = \"100%\"\nduration = \"1h\"\n"
    );
    parse_plan(&text, "test.toml").unwrap_or_else(|e| panic!("{e}"))
}

/// The inverse CDF of 50 ms + an exponential with mean 40 ms, scaled by `slower`, in µs.
/// p95 = (50 + 40 ln 20) ms ≈ 169.8 ms at `slower = 1`.
fn latency_us(u: f64, slower: f64) -> u64 {
    ((50.0 + 40.0 * -(1.0 - u).ln()) * slower * 1000.0) as u64
}

/// `n` requests spread evenly over the distribution (a noiseless sample).
fn even(n: u64, slower: f64) -> Vec<u64> {
    (0..n)
        .map(|i| latency_us((i as f64 + 0.5) / n as f64, slower))
        .collect()
}

fn evidence(stable: &[u64], canary: &[u64]) -> Evidence {
    let mut ev = Evidence::new(0);
    for &us in stable {
        ev.stable.latency.record(us);
        ev.stable.requests += 1;
        ev.stable.successes += 1;
    }
    for &us in canary {
        ev.canary.latency.record(us);
        ev.canary.requests += 1;
        ev.canary.successes += 1;
    }
    ev
}

fn verdict(criterion: &str, ev: &Evidence) -> ramp_core::evidence::Verdict {
    let plan = plan_with(criterion);
    judge(&plan, &plan.phases[0].criteria[0], ev)
}

#[test]
fn parses_relative_absolute_and_default_margins() {
    for (text, relative, absolute_ms) in [
        ("p95_latency not worse than stable", 0.10, 0.0),
        ("p95_latency not worse than stable by 5%", 0.05, 0.0),
        ("p99_latency not worse than stable by 20ms", 0.0, 20.0),
        ("p50_latency not worse than stable by 0.5s", 0.0, 500.0),
    ] {
        let plan = plan_with(text);
        assert_eq!(
            plan.phases[0].criteria[0].test,
            Test::LatencyNotWorseThanStable {
                relative,
                absolute_ms
            },
            "{text}"
        );
    }
    // Bad margins, and the places where the comparison makes no sense, are plan errors.
    let bad = |criterion: &str, full: bool| {
        let traffic = if full { "100%" } else { "5%" };
        let text = format!(
            "name = \"x\"\n[[phase]]\nname = \"a\"\ntraffic = \"{traffic}\"\nduration = \"1h\"\nsuccess = [\"{criterion}\"]\n"
        );
        parse_plan(&text, "bad.toml").unwrap_err().to_string()
    };
    assert!(bad("p95_latency not worse than stable by 3", false).contains("by 10%"));
    let negative = bad("p95_latency not worse than stable by -5%", false);
    assert!(negative.contains("bad.toml:6:"), "{negative}");
    assert!(bad("p95_latency not worse than stable", true).contains("100%"));
    assert!(bad("pci_alerts not worse than stable", false).contains("latency quantiles"));
}

#[test]
fn the_same_distribution_passes_once_there_is_enough_evidence() {
    let v = verdict(
        "p95_latency not worse than stable",
        &evidence(&even(40_000, 1.0), &even(4_000, 1.0)),
    );
    assert_eq!(v.outcome, Outcome::Pass, "{}", explain(&v));
    assert!(explain(&v).contains("stable p95 ≥"), "{}", explain(&v));
    assert!(v.bound.unwrap() <= 0.05);
}

#[test]
fn too_few_requests_are_inconclusive_with_what_is_needed() {
    let v = verdict(
        "p95_latency not worse than stable",
        &evidence(&even(4_000, 1.0), &even(150, 1.0)),
    );
    assert_eq!(v.outcome, Outcome::Inconclusive, "{}", explain(&v));
    assert!(v.needed.is_some_and(|n| n > 0), "{v:?}");
    assert!(
        explain(&v).contains("more canary requests"),
        "{}",
        explain(&v)
    );
    // No stable traffic at all: nothing to compare with.
    let v = verdict(
        "p95_latency not worse than stable",
        &evidence(&[], &even(10_000, 1.0)),
    );
    assert_eq!(v.outcome, Outcome::Inconclusive);
    assert!(explain(&v).contains("both variants"), "{}", explain(&v));
}

#[test]
fn a_canary_half_again_as_slow_fails_and_says_why() {
    let v = verdict(
        "p95_latency not worse than stable",
        &evidence(&even(40_000, 1.0), &even(2_000, 1.5)),
    );
    assert_eq!(v.outcome, Outcome::Fail, "{}", explain(&v));
    assert!(v.bound.unwrap() > 0.05);
    assert!(explain(&v).contains("lower bound"), "{}", explain(&v));
}

#[test]
fn the_margin_decides_a_modest_slowdown() {
    // Canary 5% slower: within a 10% margin, outside none.
    let ev = evidence(&even(400_000, 1.0), &even(80_000, 1.05));
    let v = verdict("p95_latency not worse than stable by 10%", &ev);
    assert_eq!(v.outcome, Outcome::Pass, "{}", explain(&v));
    let v = verdict("p95_latency not worse than stable by 0%", &ev);
    assert_eq!(v.outcome, Outcome::Fail, "{}", explain(&v));
    // An absolute margin: 5% of ≈170 ms is ≈8.5 ms.
    let v = verdict("p95_latency not worse than stable by 20ms", &ev);
    assert_eq!(v.outcome, Outcome::Pass, "{}", explain(&v));
    let v = verdict("p95_latency not worse than stable by 1ms", &ev);
    assert_eq!(v.outcome, Outcome::Fail, "{}", explain(&v));
}

/// Random samples from one distribution: the comparison must not call a healthy canary worse
/// more often than its confidence allows (5%; the Bonferroni split makes it rarer still).
#[test]
fn identical_variants_rarely_fail() {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut uniform = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let plan = plan_with("p95_latency not worse than stable by 0%");
    let mut fails = 0;
    let trials = 200;
    for _ in 0..trials {
        let stable: Vec<u64> = (0..4_000).map(|_| latency_us(uniform(), 1.0)).collect();
        let canary: Vec<u64> = (0..1_000).map(|_| latency_us(uniform(), 1.0)).collect();
        let v = judge(
            &plan,
            &plan.phases[0].criteria[0],
            &evidence(&stable, &canary),
        );
        if v.outcome == Outcome::Fail {
            fails += 1;
        }
    }
    assert!(
        fails <= trials * 5 / 100,
        "{fails} of {trials} healthy canaries failed"
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// A sample of `n` latencies from a shifted exponential scaled by `slower`, from a seed.
    fn sample(n: usize, slower: f64, seed: u64) -> Vec<u64> {
        let mut state = seed | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                latency_us(((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64, slower)
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Speeding the canary up never turns a pass into anything else, and slowing it down
        /// never turns a fail into anything else.
        #[test]
        fn verdicts_are_monotone_in_canary_speed(
            seed in any::<u64>(),
            slower in 0.7f64..1.6,
            ns in 200usize..6_000,
            nc in 50usize..3_000,
        ) {
            let stable = sample(ns, 1.0, seed);
            let canary = sample(nc, slower, seed.rotate_left(17));
            let judge_at = |factor: f64| {
                let scaled: Vec<u64> = canary.iter().map(|&us| (us as f64 * factor) as u64).collect();
                verdict("p95_latency not worse than stable", &evidence(&stable, &scaled)).outcome
            };
            let here = judge_at(1.0);
            if here == Outcome::Pass {
                prop_assert_eq!(judge_at(0.9), Outcome::Pass);
            }
            if here == Outcome::Fail {
                prop_assert_eq!(judge_at(1.1), Outcome::Fail);
            }
        }
    }
}
