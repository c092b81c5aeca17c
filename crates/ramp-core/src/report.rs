//! Prose, rendered from data. Verdicts, trigger evidence, stop reasons, notices and rejections
//! carry numbers, names and enums; this module is the one place that turns them into the
//! sentences people read (the CLI, the live log, the API's `explanation` fields, reports). It
//! is pure: the same data always gives the same text.

use crate::evidence::gate::{Detail, LatencyCase, Outcome, Verdict};
use crate::evidence::window::ratio;
use crate::rollout::{
    About, Notice, PhaseResult, Progress, RejectReason, StopReason, TriggerEvidence,
};
use crate::time::Human;
use std::fmt::Write as _;

/// Formats a fraction as a percentage with sensible precision.
pub fn pct(x: f64) -> String {
    let p = x * 100.0;
    if p == 0.0 {
        "0%".into()
    } else if p.abs() < 0.01 {
        format!("{p:.4}%")
    } else if p.abs() < 1.0 {
        format!("{p:.3}%")
    } else {
        format!("{p:.2}%")
    }
}

/// Formats a count with thousands separators.
pub fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Formats milliseconds.
pub fn ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2}s", v / 1000.0)
    } else if v >= 10.0 {
        format!("{v:.0}ms")
    } else {
        format!("{v:.1}ms")
    }
}

/// A confidence as a percentage: `95%`, `99.9%`.
pub fn confidence(c: f64) -> String {
    let p = c * 100.0;
    if (p - p.round()).abs() < 1e-9 {
        format!("{p:.0}%")
    } else {
        format!("{p}%")
    }
}

/// `95` for 950 per mille, `999` for 999.
pub fn quantile_name(q: u16) -> String {
    if q.is_multiple_of(10) {
        (q / 10).to_string()
    } else {
        q.to_string()
    }
}

/// A verdict as one line: `criterion: OUTCOME — explanation`.
pub fn verdict_line(v: &Verdict) -> String {
    format!("{}: {} — {}", v.criterion, v.outcome.label(), explain(v))
}

/// The one-line explanation of a verdict, with its numbers.
pub fn explain(v: &Verdict) -> String {
    let cl = confidence(v.confidence);
    let side = match v.bound_side {
        Some(crate::evidence::BoundSide::Lower) => "lower",
        _ => "upper",
    };
    let bound = v.bound.unwrap_or(0.0);
    let span = if v.scope.is_phase() {
        "in this phase"
    } else {
        "over the whole rollout"
    };
    let (mut text, unit) = match &v.detail {
        Detail::Rate { unit } => {
            let text = if v.n == 0 {
                format!("no {} yet; {cl} {side} bound {}", unit.noun(), pct(bound))
            } else {
                format!(
                    "observed {} ({} of {} {}), {cl} {side} bound {} vs {}",
                    pct(ratio(v.events, v.n)),
                    count(v.events),
                    count(v.n),
                    unit.noun(),
                    pct(bound),
                    pct(v.threshold)
                )
            };
            (text, unit.noun())
        }
        Detail::Latency {
            quantile,
            threshold_ms,
            estimate_ms,
        } => {
            let text = if v.n == 0 {
                "no requests yet".to_string()
            } else {
                let shown = estimate_ms
                    .map(|e| format!("; p{} ≈ {}", quantile_name(*quantile), ms(e)))
                    .unwrap_or_default();
                format!(
                    "{} of {} requests slower than {} ({}), {cl} {side} bound {} vs {}{shown}",
                    count(v.events),
                    count(v.n),
                    ms(*threshold_ms),
                    pct(ratio(v.events, v.n)),
                    pct(bound),
                    pct(v.threshold)
                )
            };
            (text, "requests")
        }
        Detail::Count { op } => (
            format!(
                "{} received {} (exact count), limit {} {}",
                count(v.events),
                span,
                op.symbol(),
                v.threshold
            ),
            "",
        ),
        Detail::Users { op } => (
            format!(
                "≈{} distinct users reached the canary {span} ({} bound {} with the sketch's error), need {} {}",
                count(v.events),
                side,
                count(bound as u64),
                op.symbol(),
                v.threshold
            ),
            "users",
        ),
        Detail::VsStable {
            what,
            canary_events,
            canary_n,
            stable_events,
            stable_n,
            upper,
        } => {
            let text = if *canary_n == 0 || *stable_n == 0 {
                "needs requests on both variants in the same window".to_string()
            } else {
                format!(
                    "{what} canary {} ({} of {}) vs stable {} ({} of {}): difference {}, {cl} upper bound {} vs margin {}",
                    pct(ratio(*canary_events, *canary_n)),
                    count(*canary_events),
                    count(*canary_n),
                    pct(ratio(*stable_events, *stable_n)),
                    count(*stable_events),
                    count(*stable_n),
                    pct(v.observed.unwrap_or(0.0)),
                    pct(*upper),
                    pct(v.threshold)
                )
            };
            (text, "canary requests")
        }
        Detail::LatencyVsStable {
            quantile,
            canary_ms,
            stable_ms,
            stable_n,
            stable_bound_ms,
            limit_ms,
            relative,
            absolute_ms,
            case,
        } => {
            let name = format!("p{}", quantile_name(*quantile));
            let shown = |m: &Option<f64>| m.map_or_else(|| "-".to_string(), ms);
            let margin = match (*relative > 0.0, *absolute_ms > 0.0) {
                (true, true) => format!("+{} +{}", pct(*relative), ms(*absolute_ms)),
                (false, true) => format!("+{}", ms(*absolute_ms)),
                _ => format!("+{}", pct(*relative)),
            };
            let text = match case {
                LatencyCase::NoData => {
                    "needs requests on both variants in the same window".to_string()
                }
                LatencyCase::Slower => format!(
                    "{name} canary ≈{} vs stable ≈{}: stable {name} ≤ {} ({cl}), and {} of {} canary requests ({}) slower than {} ({margin}), lower bound {} > {}",
                    shown(canary_ms),
                    shown(stable_ms),
                    ms(*stable_bound_ms),
                    count(v.events),
                    count(v.n),
                    pct(ratio(v.events, v.n)),
                    ms(*limit_ms),
                    pct(bound),
                    pct(v.threshold)
                ),
                LatencyCase::NoStableBound => format!(
                    "{name} canary ≈{} vs stable ≈{}: not enough stable requests ({}) to bound stable's {name} from below",
                    shown(canary_ms),
                    shown(stable_ms),
                    count(*stable_n)
                ),
                LatencyCase::Compared => format!(
                    "{name} canary ≈{} vs stable ≈{}: stable {name} ≥ {} ({cl}); {} of {} canary requests ({}) slower than {} ({margin}), upper bound {} vs {}",
                    shown(canary_ms),
                    shown(stable_ms),
                    ms(*stable_bound_ms),
                    count(v.events),
                    count(v.n),
                    pct(ratio(v.events, v.n)),
                    ms(*limit_ms),
                    pct(bound),
                    pct(v.threshold)
                ),
            };
            (text, "canary requests")
        }
        Detail::Text { text } => return text.clone(),
    };
    if !v.scope.is_phase() && !matches!(v.detail, Detail::Count { .. } | Detail::Users { .. }) {
        text.push_str(" (over the whole rollout)");
    }
    if let Some(c) = &v.clustered {
        let _ = write!(
            text,
            "; failures cluster in time (spread {:.1}× binomial in blocks of {} intervals, p = {:.1e}): bounds count {} independent requests",
            c.phi,
            c.windows,
            c.p_value,
            count((v.n as f64 / c.phi).floor() as u64)
        );
    }
    if v.outcome == Outcome::Inconclusive {
        match v.needed {
            Some(k) => {
                let _ = write!(
                    text,
                    "; needs ≈{} more {unit} at the current rate",
                    count(k)
                );
            }
            None => text.push_str("; cannot pass at the current rate"),
        }
    }
    text
}

/// The numbers behind a fired trigger, as one line.
pub fn trigger_text(e: &TriggerEvidence) -> String {
    match e {
        TriggerEvidence::Sequential {
            p0,
            p1,
            boundary,
            statistic,
            events,
            observations,
            lower_bound,
            confidence: c,
            window,
            alternatives,
            watched,
        } => {
            let test = match alternatives {
                Some(k) => format!(
                    "sequential test (a bank of {k} CUSUMs above {}; the one for {} crossed: {:.2} ≥ {:.2} nats)",
                    pct(*p0),
                    pct(*p1),
                    statistic,
                    boundary
                ),
                None => format!(
                    "sequential test (CUSUM, H0 rate {} vs H1 {}) crossed its boundary {:.1}",
                    pct(*p0),
                    pct(*p1),
                    boundary
                ),
            };
            let mut text = format!(
                "{test}: {} bad of the last {} canary observations ({}), {}% lower bound {}",
                count(*events),
                count(*observations),
                pct(ratio(*events, *observations)),
                (c * 100.0).round(),
                pct(*lower_bound),
            );
            if let Some((wx, wn)) = window {
                let what = if alternatives.is_some() {
                    "batch"
                } else {
                    "window"
                };
                let _ = write!(
                    text,
                    "; this {what} {} of {} ({})",
                    count(*wx),
                    count(*wn),
                    pct(ratio(*wx, *wn))
                );
            }
            if let Some(w) = watched {
                let _ = write!(text, "; {} watched in all", count(*w));
            }
            text
        }
        TriggerEvidence::Count {
            count: k,
            op,
            threshold,
            latest,
        } => format!(
            "{} counted since the rollout started (exact count), trigger at {} {}; latest: {}",
            count(*k),
            op.symbol(),
            threshold,
            latest.describe()
        ),
        TriggerEvidence::Text { text } => text.clone(),
    }
}

/// Why a rollout stopped (rolled back or holds), as one line.
pub fn stop_text(r: &StopReason) -> String {
    let lines = |vs: &[Verdict]| vs.iter().map(verdict_line).collect::<Vec<_>>().join("; ");
    match r {
        StopReason::Trigger { trigger, evidence } => {
            format!("trigger {trigger:?} fired: {}", trigger_text(evidence))
        }
        StopReason::GateFailed { phase, verdicts } => {
            format!("gate failed in phase {phase}: {}", lines(verdicts))
        }
        StopReason::NotEnoughEvidence {
            phase,
            elapsed,
            extension,
            verdicts,
        } => format!(
            "not enough evidence after {} in phase {phase} (extension of {} used up): {}",
            Human(*elapsed),
            Human(*extension),
            lines(verdicts)
        ),
        StopReason::Operator { by, note } if note.trim().is_empty() => {
            format!("rolled back by {by}")
        }
        StopReason::Operator { by, note } => format!("rolled back by {by}: {note}"),
        StopReason::Text { text } => text.clone(),
    }
}

/// A notice's headline for rollout `rollout`.
pub fn headline(rollout: &str, n: &Notice) -> String {
    match &n.about {
        About::PhaseStarted {
            phase,
            share,
            duration,
        } => format!(
            "phase {phase} started: {share} of users on the new version for {}",
            Human(*duration)
        ),
        About::Extended { phase, by } => format!(
            "phase {phase} extended by up to {}: gates inconclusive, collecting more evidence",
            Human(*by)
        ),
        About::AwaitingApproval {
            passed,
            next,
            share,
        } => format!("phase {passed} passed; phase {next} ({share}) waits for approval"),
        About::Completed { forced: false } => {
            format!("rollout {rollout} completed: all phases passed")
        }
        About::Completed { forced: true } => {
            format!("rollout {rollout} completed by a forced promotion: not every gate was proven")
        }
        About::Held { reason } => format!(
            "rollout {rollout} is holding and needs a decision: {}",
            stop_text(reason)
        ),
        About::RolledBack { reason, .. } => format!(
            "rollout {rollout} ROLLED BACK, all traffic on stable: {}",
            stop_text(reason)
        ),
        About::StatusUpdate(p) => progress_line(p),
        About::Summary(p) => format!("summary: {}", progress_line(p)),
        About::Alert { signal } => {
            format!("{} received during rollout {rollout}", signal.describe())
        }
        About::BackendDown { variant } => format!(
            "the {} backend of {rollout} is DOWN: its health checks get no answer",
            variant.as_str()
        ),
        About::BackendRecovered { variant } => format!(
            "the {} backend of {rollout} answers its health checks again",
            variant.as_str()
        ),
        About::ForcedPromotion {
            from,
            to,
            by,
            reason,
        } => match to {
            Some(to) => format!(
                "{by} forced phase {to} of {rollout} past unproven gates of {from}: {reason}"
            ),
            None => format!(
                "{by} forced rollout {rollout} to completion past unproven gates of {from}: {reason}"
            ),
        },
        About::Report {
            report: crate::rollout::ReportKind::Final,
        } => format!("final report of rollout {rollout} is ready"),
        About::Report {
            report: crate::rollout::ReportKind::IncidentReview,
        } => format!(
            "incident review of rollout {rollout} begun: the rollback's evidence, timeline and blast radius"
        ),
    }
}

/// A one-line status: phase, share, elapsed, canary error rate.
pub fn progress_line(p: &Progress) -> String {
    format!(
        "{} in phase {} ({} of users), {} of {}; canary error rate {} over {} requests",
        p.status.name(),
        p.phase,
        p.share,
        Human(p.elapsed),
        Human(p.duration),
        pct(ratio(p.canary_errors, p.canary_requests)),
        count(p.canary_requests)
    )
}

/// Why a command was refused.
pub fn rejection_text(r: &RejectReason) -> String {
    match r {
        RejectReason::Ended { status } => format!("the rollout has ended ({})", status.name()),
        RejectReason::NotWhile { action, status } => {
            format!("cannot {action} while {}", status.name())
        }
        RejectReason::NotPaused { status } => {
            format!("cannot resume while {} (not paused)", status.name())
        }
        RejectReason::NothingAwaitsApproval { status } => format!(
            "nothing waits for approval (the rollout is {})",
            status.name()
        ),
        RejectReason::Unproven { verdicts } => format!(
            "gates are not proven ({}); promoting anyway needs force and a reason",
            verdicts
                .iter()
                .map(verdict_line)
                .collect::<Vec<_>>()
                .join("; ")
        ),
        RejectReason::ForceNeedsReason => "a forced promotion needs a reason".to_string(),
    }
}

/// How a phase ended, as a word.
pub fn phase_result(r: PhaseResult) -> &'static str {
    r.name()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::{Evidence, judge};
    use crate::plan::parse_plan;

    const SEED: &str = include_str!("../../../examples/payments-backend.toml");

    /// The texts are the ones ramp journaled before verdicts carried fields (taken from a real
    /// run's journal): rendering from the fields must say exactly the same. The bounds and
    /// sizes are those of that run (fixed-sample bounds then; always-valid ones now, see
    /// `explanations_carry_the_always_valid_numbers`), set on the verdicts.
    #[test]
    fn explanations_read_as_they_always_did() {
        let plan = parse_plan(SEED, "seed").unwrap();
        let mut ev = Evidence::new(plan.latency_thresholds_us().len());
        ev.canary.requests = 7;
        ev.canary.successes = 7;
        for _ in 0..7 {
            ev.canary.latency.record(1_500);
        }
        let canary = &plan.phases[0];
        let then = |text: &str, bound: Option<f64>, needed: Option<u64>| {
            let c = canary.criteria.iter().find(|c| c.text == text).unwrap();
            let mut v = judge(&plan, c, &ev);
            if bound.is_some() {
                v.bound = bound;
            }
            v.needed = needed;
            explain(&v)
        };
        let line = |text: &str| {
            let (bound, needed) = match text {
                "error_rate < 0.1%" => (Some(0.348_152_225_663_437_5), Some(2_988)),
                "p95_latency <= baseline" => (Some(0.348_152_225_663_437_5), Some(52)),
                _ => (None, None),
            };
            then(text, bound, needed)
        };
        assert_eq!(
            line("error_rate < 0.1%"),
            "observed 0% (0 of 7 requests), 95% upper bound 34.82% vs 0.100%; needs ≈2,988 more requests at the current rate"
        );
        assert_eq!(
            line("pci_alerts == 0"),
            "0 received in this phase (exact count), limit == 0"
        );
        assert_eq!(
            line("p95_latency <= baseline"),
            "0 of 7 requests slower than 200ms (0%), 95% upper bound 34.82% vs 5.00%; p95 ≈ 1.5ms; needs ≈52 more requests at the current rate"
        );
        let expanded = &plan.phases[1];
        let c = expanded
            .criteria
            .iter()
            .find(|c| c.text == "satisfaction > 90%")
            .unwrap();
        let mut v = judge(&plan, c, &Evidence::new(1));
        v.needed = Some(29);
        assert_eq!(
            verdict_line(&v),
            "satisfaction > 90%: INCONCLUSIVE — no feedback yet; 95% lower bound 0%; needs ≈29 more feedback at the current rate"
        );
    }

    /// The same evidence with today's always-valid bounds: wider than the fixed-sample ones
    /// (the price of being allowed to look at any time), and the sizes to match.
    #[test]
    fn explanations_carry_the_always_valid_numbers() {
        let plan = parse_plan(SEED, "seed").unwrap();
        let mut ev = Evidence::new(plan.latency_thresholds_us().len());
        ev.canary.requests = 7;
        ev.canary.successes = 7;
        let canary = &plan.phases[0];
        let c = canary
            .criteria
            .iter()
            .find(|c| c.text == "error_rate < 0.1%")
            .unwrap();
        assert_eq!(
            explain(&judge(&plan, c, &ev)),
            "observed 0% (0 of 7 requests), 95% upper bound 42.66% vs 0.100%; needs ≈3,780 more requests at the current rate"
        );
    }

    #[test]
    fn trigger_evidence_reads_as_it_always_did() {
        let e = TriggerEvidence::Sequential {
            p0: 0.01,
            p1: 0.03,
            boundary: 19.1138,
            statistic: 21.97,
            events: 20,
            observations: 20,
            lower_bound: crate::evidence::stats::cp_lower(20, 20, 0.95),
            confidence: 0.95,
            window: Some((3, 3)),
            alternatives: None,
            watched: None,
        };
        assert_eq!(
            trigger_text(&e),
            "sequential test (CUSUM, H0 rate 1.00% vs H1 3.00%) crossed its boundary 19.1: 20 bad of the last 20 canary observations (100.00%), 95% lower bound 86.09%; this window 3 of 3 (100.00%)"
        );
        let e = TriggerEvidence::Sequential {
            p0: 0.01,
            p1: 0.2326,
            boundary: 7.84,
            statistic: 8.12,
            events: 9,
            observations: 31,
            lower_bound: crate::evidence::stats::cp_lower(9, 31, 0.95),
            confidence: 0.95,
            window: Some((9, 31)),
            alternatives: Some(7),
            watched: Some(4_120),
        };
        assert_eq!(
            trigger_text(&e),
            "sequential test (a bank of 7 CUSUMs above 1.00%; the one for 23.26% crossed: 8.12 ≥ 7.84 nats): 9 bad of the last 31 canary observations (29.03%), 95% lower bound 16.06%; this batch 9 of 31 (29.03%); 4,120 watched in all"
        );
        let c = TriggerEvidence::Count {
            count: 2,
            op: crate::plan::Op::Ge,
            threshold: 2.0,
            latest: crate::evidence::Signal::PciAlert {
                note: "card number in logs".into(),
            },
        };
        assert_eq!(
            trigger_text(&c),
            "2 counted since the rollout started (exact count), trigger at >= 2; latest: PCI compliance alert: card number in logs"
        );
        let reason = StopReason::Trigger {
            trigger: "pci_alerts >= 2".into(),
            evidence: c,
        };
        assert!(stop_text(&reason).starts_with("trigger \"pci_alerts >= 2\" fired: 2 counted"));
        assert_eq!(
            stop_text(&StopReason::Operator {
                by: "admin".into(),
                note: "customer reports of double charges".into()
            }),
            "rolled back by admin: customer reports of double charges"
        );
    }

    #[test]
    fn formats() {
        assert_eq!(pct(0.001), "0.100%");
        assert_eq!(pct(0.0), "0%");
        assert_eq!(pct(0.00005), "0.0050%");
        assert_eq!(pct(0.25), "25.00%");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(12), "12");
        assert_eq!(ms(1.5), "1.5ms");
        assert_eq!(ms(250.0), "250ms");
        assert_eq!(ms(2500.0), "2.50s");
        assert_eq!(confidence(0.95), "95%");
        assert_eq!(confidence(0.999), "99.9%");
        assert_eq!(quantile_name(950), "95");
        assert_eq!(quantile_name(999), "999");
    }
}
