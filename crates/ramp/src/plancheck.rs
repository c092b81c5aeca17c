//! `ramp plan check`: the plan as a readable table, and with `--rps` how much traffic and time
//! each gate needs before it could pass, the chance that it passes by its deadline, and how
//! fast each trigger catches a canary above its threshold: all from the formulas the core
//! decides with (always-valid bounds, the calibrated detector bank).

use ramp_core::evidence::{confseq, stats};
use ramp_core::plan::{
    ChannelKind, Criterion, Metric, MetricKind, Op, Plan, Secret, SmtpTls, Test, Topic,
};
use ramp_core::report::{count, ms, pct};
use ramp_core::rollout::{Stream, detector_for, trigger_stream};
use ramp_core::time::{Human, Millis};
use std::fmt::Write;

/// What one gate needs.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Need {
    /// Samples needed in the best case (no bad events at all).
    pub(crate) best: Option<u64>,
    /// Samples needed when the truth sits halfway between perfect and the threshold.
    pub(crate) typical: Option<u64>,
    /// What the samples are.
    pub(crate) unit: &'static str,
}

/// Samples a criterion needs before it could pass; `None` for exact counts.
pub(crate) fn need(plan: &Plan, c: &Criterion) -> Option<Need> {
    let conf = plan.analysis.confidence;
    match (&c.test, c.metric.kind()) {
        (Test::Compare { op, threshold, .. }, MetricKind::Rate | MetricKind::Latency) => {
            let (t, upper, unit) = match c.metric {
                Metric::Latency(q) => (1.0 - q as f64 / 1000.0, true, "requests"),
                Metric::Satisfaction => (*threshold, op.is_upper_limit(), "feedback"),
                _ => (*threshold, op.is_upper_limit(), "requests"),
            };
            let (best, typical) = if upper {
                (
                    confseq::min_n_upper_below(0.0, t, conf),
                    confseq::min_n_upper_below(t / 2.0, t, conf),
                )
            } else {
                (
                    confseq::min_n_lower_above(1.0, t, conf),
                    confseq::min_n_lower_above((1.0 + t) / 2.0, t, conf),
                )
            };
            Some(Need {
                best,
                typical,
                unit,
            })
        }
        (Test::NotWorseThanStable { margin }, _) => {
            // Both variants perfect: the canary's upper bound (at the Bonferroni-split
            // confidence) must drop to the margin.
            let split = 1.0 - (1.0 - conf) / 2.0;
            let best = confseq::min_n_upper_below(0.0, *margin, split);
            let typical = confseq::min_n_upper_below(margin / 2.0, *margin, split);
            Some(Need {
                best,
                typical,
                unit: "canary requests",
            })
        }
        (Test::LatencyNotWorseThanStable { .. }, _) => {
            // The fewest canary requests with which the share above stable's quantile (plus the
            // margin) can be bounded below the tail at all: none of them above it. How many it
            // takes in practice depends on the two latency distributions.
            let Metric::Latency(q) = c.metric else {
                return None;
            };
            let split = 1.0 - (1.0 - conf) / 2.0;
            Some(Need {
                best: confseq::min_n_upper_below(0.0, 1.0 - f64::from(q) / 1000.0, split),
                typical: None,
                unit: "canary requests",
            })
        }
        (Test::Compare { op, threshold, .. }, MetricKind::Users) => Some(Need {
            best: Some(
                ((*threshold + f64::from(u8::from(*op == Op::Gt)))
                    / (1.0 - ramp_core::evidence::gate::USERS_RELATIVE_ERROR))
                    .ceil() as u64,
            ),
            typical: None,
            unit: "users",
        }),
        _ => None,
    }
}

/// Above this many events the exact first-passage computation of
/// [`confseq::pass_probability`] (cubic in the events) is replaced by the chance of passing at
/// the deadline alone, a lower bound.
const EXACT_PASS_EVENTS: u64 = 400;

/// The chance that a gate "bad share below `t`" passes within `n` samples when the true share
/// is `rate`, and whether it is exact (else a lower bound: passing at the deadline itself).
pub(crate) fn pass_chance(rate: f64, t: f64, conf: f64, n: u64) -> Option<(f64, bool)> {
    let k = confseq::max_events_to_pass(n, t, conf)?;
    if k <= EXACT_PASS_EVENTS {
        Some((confseq::pass_probability(rate, t, conf, n), true))
    } else {
        Some((stats::binom_cdf(k, n, rate), false))
    }
}

/// For a rate or latency gate: its bad-event share limit, and the bad share halfway to it
/// (the "typical" truth `plan check` states chances at).
fn bad_share(c: &Criterion) -> Option<(f64, f64)> {
    let Test::Compare { op, threshold, .. } = &c.test else {
        return None;
    };
    let t = match c.metric {
        Metric::Latency(q) => 1.0 - f64::from(q) / 1000.0,
        Metric::ErrorRate | Metric::RateLimitRate | Metric::AuthFailureRate
            if op.is_upper_limit() =>
        {
            *threshold
        }
        Metric::SuccessRate | Metric::Satisfaction if !op.is_upper_limit() => 1.0 - threshold,
        _ => return None,
    };
    Some((t, t / 2.0))
}

fn time_for(samples: u64, per_second: f64) -> Millis {
    if per_second <= 0.0 {
        return Millis::MAX;
    }
    ((samples as f64 / per_second) * 1000.0).ceil() as Millis
}

fn human_time(ms: Millis) -> String {
    if ms == Millis::MAX {
        "never".into()
    } else {
        Human(ms.max(1000)).to_string()
    }
}

/// Renders the plan, with traffic planning when `rps` is given. Returns the text and the
/// warnings.
pub(crate) fn render(plan: &Plan, rps: Option<f64>) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut warnings = Vec::new();
    let conf = plan.analysis.confidence;
    let _ = writeln!(
        out,
        "plan {}: {} phases, {} planned, at most {} with every extension",
        plan.name,
        plan.phases.len(),
        Human(plan.planned_duration()),
        Human(plan.max_duration())
    );
    if let Some(d) = &plan.description {
        let _ = writeln!(out, "  {d}");
    }
    let key = match &plan.cohort.key {
        ramp_core::plan::CohortKey::Header(h) => format!("header {h}"),
        ramp_core::plan::CohortKey::Cookie(c) => format!("cookie {c}"),
        ramp_core::plan::CohortKey::ClientIp => "client address".into(),
    };
    let _ = writeln!(
        out,
        "cohort: sticky by {key}, salt {:?}, bucketing {}; requests without a key go to {}",
        plan.cohort.salt,
        ramp_core::cohort::FORMULA_NAME,
        match plan.cohort.unkeyed {
            ramp_core::plan::UnkeyedRoute::Stable => "stable",
            ramp_core::plan::UnkeyedRoute::ClientIp => "a bucket by client address",
        }
    );
    let _ = writeln!(
        out,
        "analysis: one-sided {:.0}% always-valid bounds (they hold at every look); windows every {}; not-worse-than-stable margin {}",
        conf * 100.0,
        Human(plan.analysis.interval),
        pct(plan.analysis.stable_margin)
    );
    if !plan.baseline.values.is_empty() {
        let parts: Vec<String> = plan
            .baseline
            .values
            .iter()
            .map(|(k, v)| {
                if k.ends_with("_latency") {
                    format!("{k} {}", ms(*v))
                } else {
                    format!("{k} {}", pct(*v))
                }
            })
            .collect();
        let _ = writeln!(out, "baseline: {}", parts.join(", "));
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<10} {:>7} {:>8} {:>8} {:<13} {:<10} success criteria",
        "PHASE", "TRAFFIC", "DURATION", "EXTEND", "INCONCLUSIVE", "ON FAIL"
    );
    for p in &plan.phases {
        let first = p
            .criteria
            .first()
            .map(|c| c.text.clone())
            .unwrap_or_else(|| "(none: passes when its time is up)".into());
        let _ = writeln!(
            out,
            "{:<10} {:>7} {:>8} {:>8} {:<13} {:<10} {}{}",
            p.name,
            p.share.to_string(),
            Human(p.duration).to_string(),
            format!("+{}", Human(p.max_extension)),
            p.on_inconclusive.name(),
            p.on_failure.name(),
            first,
            if p.approval {
                "   [needs approval to start]"
            } else {
                ""
            }
        );
        for c in p.criteria.iter().skip(1) {
            let _ = writeln!(out, "{:<62}{}", "", c.text);
        }
    }
    let _ = writeln!(out);
    if plan.triggers.is_empty() {
        let _ = writeln!(out, "rollback triggers: none");
        warnings.push(
            "the plan has no rollback triggers: only failed gates and operators can roll back"
                .into(),
        );
    } else {
        let _ = writeln!(
            out,
            "rollback triggers (checked as the evidence arrives, every 100 ms in `ramp serve`, and at once on signals):"
        );
        for t in &plan.triggers {
            let how = match detector_for(plan, t) {
                Some(d) => {
                    let (lo, hi) = (
                        d.members.first().map_or(0.0, |m| m.p1),
                        d.members.last().map_or(0.0, |m| m.p1),
                    );
                    format!(
                        "sequential: {} CUSUMs for rates {}–{} above {}; false alarm ≤ {:.1}% over {} canary observations, ≤ {:.0}% ever",
                        d.members.len(),
                        pct(lo),
                        pct(hi),
                        pct(d.p0),
                        d.false_alarm_bound(d.horizon) * 100.0,
                        count(d.horizon),
                        (1.0 - conf) * 100.0,
                    )
                }
                None => "exact count since the rollout started".into(),
            };
            let _ = writeln!(out, "  {:<34} {how}", t.text);
        }
    }
    if !plan.rollout_criteria.is_empty() {
        let _ = writeln!(
            out,
            "over the whole rollout (judged on every phase's evidence; a failure acts at once, a pass is required to complete):"
        );
        for c in &plan.rollout_criteria {
            let _ = writeln!(out, "  {}", c.text);
        }
    }
    let n = &plan.notify;
    let mut parts = Vec::new();
    if let Some(e) = n.status_every {
        parts.push(format!("status every {}", Human(e)));
    }
    if let Some(e) = n.summary_every {
        parts.push(format!("summary every {}", Human(e)));
    }
    if n.critical_immediately {
        parts.push("critical events immediately".into());
    }
    if n.final_report {
        parts.push("final report".into());
    }
    let _ = writeln!(
        out,
        "notifications: {}",
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    );
    for c in &n.channels {
        let (kind, to) = match &c.kind {
            ChannelKind::Webhook { url, secret } => (
                "webhook",
                format!(
                    "{}{}",
                    url.split('?').next().unwrap_or(url),
                    if secret.is_some() { " (signed)" } else { "" }
                ),
            ),
            ChannelKind::Slack { token, channel, .. } => match (token, channel) {
                (Some(_), Some(ch)) => ("slack", format!("bot in {ch}, one thread per rollout")),
                _ => ("slack", "incoming webhook".to_string()),
            },
            ChannelKind::Email {
                host,
                port,
                tls,
                to,
                ..
            } => (
                "email",
                format!(
                    "{} via {host}:{port} ({})",
                    to.join(", "),
                    match tls {
                        SmtpTls::Starttls => "STARTTLS",
                        SmtpTls::Tls => "TLS",
                        SmtpTls::None => "no TLS",
                    }
                ),
            ),
            ChannelKind::Pagerduty { .. } => ("pagerduty", "Events API v2".to_string()),
        };
        let _ = writeln!(out, "  channel {} ({kind}): {to}", c.name);
        for (key, secret) in c.kind.secrets() {
            let _ = writeln!(out, "    {key} from {secret}");
            if let Secret::Env(v) = secret
                && std::env::var_os(v).is_none()
            {
                warnings.push(format!(
                    "notify.channel.{}.{key}: environment variable {v} is not set here; `ramp serve` refuses the plan until it is",
                    c.name
                ));
            }
        }
    }
    for g in &n.groups {
        let topics: Vec<&str> = g.receives.iter().map(|t| t.name()).collect();
        let _ = writeln!(
            out,
            "  group {} gets {} via {}",
            g.name,
            topics.join(", "),
            g.channels.join(", ")
        );
    }
    if !n.groups.is_empty() {
        for t in Topic::ALL {
            let r = n.route(t);
            if r.groups.is_empty() {
                let _ = writeln!(out, "  {}: live log only (no group receives it)", t.name());
            }
        }
    }
    let unused: Vec<&str> = n
        .channels
        .iter()
        .filter(|c| !n.groups.iter().any(|g| g.channels.contains(&c.name)))
        .map(|c| c.name.as_str())
        .collect();
    if !unused.is_empty() {
        warnings.push(format!(
            "notification channel(s) {} reach no group: add them to a [notify.group.*]",
            unused.join(", ")
        ));
    }
    if !n.channels.is_empty() && n.route(Topic::Critical).groups.is_empty() {
        warnings.push("no group receives `critical` notices: nobody outside the live log hears about a rollback".into());
    }
    if plan.phases.last().map(|p| p.share.bp()) != Some(10_000) {
        warnings.push("the last phase sends less than 100% of users to the canary: `completed` will leave the rest on stable".into());
    }

    if let Some(rps) = rps {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "traffic planning at {rps} requests/s in total (canary gets its share of users' requests):"
        );
        for p in &plan.phases {
            let canary_rps = rps * p.share.percent() / 100.0;
            let _ = writeln!(
                out,
                "  phase {} ({}, ≈{:.2} canary requests/s, {} canary requests in {}):",
                p.name,
                p.share,
                canary_rps,
                count((canary_rps * p.duration as f64 / 1000.0) as u64),
                Human(p.duration)
            );
            for c in &p.criteria {
                let Some(need) = need(plan, c) else {
                    let _ = writeln!(out, "    {:<34} exact count, no minimum sample", c.text);
                    continue;
                };
                let rate = match need.unit {
                    "requests" | "canary requests" => Some(canary_rps),
                    _ => None,
                };
                let best = match (need.best, rate) {
                    (Some(b), Some(r)) => format!(
                        "≥ {} {} ({})",
                        count(b),
                        need.unit,
                        human_time(time_for(b, r))
                    ),
                    (Some(b), None) => format!("≥ {} {}", count(b), need.unit),
                    (None, _) => "cannot be proven".into(),
                };
                let typical = match (need.typical, rate) {
                    (Some(b), Some(r)) => format!(
                        "; ≈ {} ({}) if the truth is halfway to the threshold",
                        count(b),
                        human_time(time_for(b, r))
                    ),
                    (Some(b), None) => {
                        format!("; ≈ {} if the truth is halfway to the threshold", count(b))
                    }
                    (None, _) => String::new(),
                };
                let _ = writeln!(out, "    {:<34} {best}{typical}", c.text);
                // The chance of passing by the deadline (duration and extension) at a stated
                // truth: halfway to the threshold.
                let chance = match (bad_share(c), rate) {
                    (Some((t, half)), Some(r)) => {
                        let deadline =
                            ((r * (p.duration + p.max_extension) as f64) / 1000.0) as u64;
                        let text = match pass_chance(half, t, conf, deadline) {
                            Some((pr, _)) if pr >= 0.9995 => "> 99.9%".to_string(),
                            Some((pr, true)) => format!("{:.1}%", pr * 100.0),
                            Some((pr, false)) => format!("≥ {:.1}%", pr * 100.0),
                            None => "0% (it cannot pass in that many)".into(),
                        };
                        let _ = writeln!(
                            out,
                            "    {:<34} chance to pass by its deadline ({} canary requests): {text} if the truth is halfway to the threshold",
                            "",
                            count(deadline),
                        );
                        format!("; its chance to pass by then is {text}")
                    }
                    _ => String::new(),
                };
                if let (Some(b), Some(r)) = (need.best, rate) {
                    let t = time_for(b, r);
                    if t > p.duration + p.max_extension {
                        warnings.push(format!(
                            "phase {}: `{}` can never pass at {rps} requests/s: even with no bad events it needs {} canary requests ({}), longer than the phase and its extension ({})",
                            p.name, c.text, count(b), human_time(t), Human(p.duration + p.max_extension)
                        ));
                    } else if let Some(ty) = need.typical {
                        let tt = time_for(ty, r);
                        if tt > p.duration + p.max_extension {
                            warnings.push(format!(
                                "phase {}: `{}` needs {} to pass if the true value is halfway to its threshold, longer than the phase and its extension ({}){chance}",
                                p.name, c.text, human_time(tt), Human(p.duration + p.max_extension)
                            ));
                        }
                    }
                } else if need.unit == "feedback"
                    && let Some(b) = need.best
                {
                    warnings.push(format!(
                        "phase {}: `{}` needs at least {} pieces of feedback before it can pass",
                        p.name,
                        c.text,
                        count(b)
                    ));
                }
            }
        }
        let planned = plan.planned_canary_requests(rps);
        let first = plan
            .phases
            .first()
            .map(|p| rps * p.share.percent() / 100.0)
            .unwrap_or(rps);
        let _ = writeln!(
            out,
            "  rollback triggers (expected canary observations to detect, and time at phase {}'s ≈{:.2} canary requests/s; false alarms over the planned {} canary requests):",
            plan.phases.first().map(|p| p.name.as_str()).unwrap_or(""),
            first,
            count(planned)
        );
        for t in &plan.triggers {
            let Some(d) = detector_for(plan, t) else {
                continue;
            };
            let per_sec = match trigger_stream(plan, t) {
                Some((Stream::NegativeFeedback, _)) => None,
                _ => Some(first),
            };
            let delays: Vec<String> = [1.5, 2.0, 5.0, 10.0]
                .iter()
                .filter(|&&m| d.p0 * m < 1.0)
                .map(|&m| {
                    let obs = d.expected_delay(d.p0 * m);
                    let when = match per_sec {
                        _ if !obs.is_finite() => String::new(),
                        Some(r) => format!(" {}", human_time(time_for(obs.ceil() as u64, r))),
                        None => String::new(),
                    };
                    let obs = if obs.is_finite() {
                        count(obs.ceil() as u64)
                    } else {
                        "never".into()
                    };
                    format!("{m}× {obs}{when}")
                })
                .collect();
            let _ = writeln!(
                out,
                "    {:<34} {}; false alarm ≤ {:.2}% over the planned traffic",
                t.text,
                delays.join(", "),
                d.false_alarm_bound(planned.max(1)) * 100.0
            );
        }
        if plan.analysis.expected_rps.is_none() && planned > plan.analysis.trigger_horizon {
            warnings.push(format!(
                "the triggers are calibrated to {} canary observations but the plan can send {} at {rps} requests/s: set `analysis.expected_rps = {rps}` so the budget is spent over the traffic the plan will see (beyond its horizon a detector stays calibrated, with higher boundaries)",
                count(plan.analysis.trigger_horizon),
                count(planned)
            ));
        }
    }
    (out, warnings)
}
