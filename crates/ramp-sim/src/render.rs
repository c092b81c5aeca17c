//! Human and JSON output for `ramp simulate`.

use crate::simulate::{Run, TimelineEntry, secs};
use ramp_core::report::{count, ms, pct};
use ramp_core::plan::Plan;
use ramp_core::rollout::{About, Cause, Event, EventKind, NotifyKind};
use ramp_core::time::{Human, Millis};
use serde_json::{Value, json};
use std::fmt::Write;

/// A Unix time in milliseconds as `YYYY-MM-DD HH:MM:SSZ` (UTC; days-to-civil conversion from
/// Howard Hinnant's published algorithm).
pub fn utc(ms: Millis) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Time since start as `HHHhMMmSSs`.
pub fn clock(at: Millis) -> String {
    let s = at / 1000;
    format!("{:>3}h{:02}m{:02}s", s / 3600, (s / 60) % 60, s % 60)
}

/// The human timeline.
pub fn timeline(plan: &Plan, run: &Run, scenario_name: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ramp simulate: plan {} ({} phases, {} planned) against scenario {} (seed {})\n",
        plan.name,
        plan.phases.len(),
        Human(plan.planned_duration()),
        scenario_name,
        run.seed
    );
    let mut scheduled = (0u32, 0u32);
    for entry in &run.timeline {
        let at = clock(entry.at());
        match entry {
            TimelineEntry::Change { description, .. } => {
                let _ = writeln!(out, "{at}  ~ scenario: {description}");
            }
            TimelineEntry::Notify { notification, .. } => match (&notification.about, notification.kind) {
                (_, NotifyKind::Critical) => {
                    let _ = writeln!(
                        out,
                        "{at}  ! notify (critical): {}",
                        ramp_core::report::headline(&plan.name, notification)
                    );
                }
                (About::StatusUpdate(_), _) => scheduled.0 += 1,
                (About::Summary(_), _) => scheduled.1 += 1,
                _ => {}
            },
            TimelineEntry::Report { report, .. } => {
                let _ = writeln!(
                    out,
                    "{at}  ✎ report written: {}",
                    serde_json::to_value(report)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default()
                        .replace('_', " ")
                );
            }
            TimelineEntry::Journal(e) => {
                for (i, line) in event_lines(e, 0).iter().enumerate() {
                    if i == 0 {
                        let _ = writeln!(out, "{at}  {line}");
                    } else {
                        let _ = writeln!(out, "               {line}");
                    }
                }
            }
        }
    }
    let feedback = run.state.totals.signals.feedback;
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "outcome: {} in phase {} after {}",
        run.outcome.replace('_', " "),
        final_phase(plan, run),
        Human(run.ended_at)
    );
    let c = &run.canary_total;
    let s = &run.stable_total;
    let _ = writeln!(
        out,
        "traffic: {} requests simulated; canary {} (errors {}, p95 {}), stable {} (errors {}, p95 {}); {} feedback",
        count(run.requests),
        count(c.requests),
        pct(c.error_rate()),
        c.quantile_ms(0.95).map(ms).unwrap_or("-".into()),
        count(s.requests),
        pct(s.error_rate()),
        s.quantile_ms(0.95).map(ms).unwrap_or("-".into()),
        count(feedback),
    );
    let b = run.blast_radius;
    match run.harm_started_at {
        Some(h) => {
            let _ = writeln!(
                out,
                "blast radius (from the first harmful change at {} to {}): {} canary requests, {} failed, {} distinct users",
                clock(h).trim(),
                if run.outcome == "rolled_back" {
                    "the rollback"
                } else {
                    "the end of the run"
                },
                count(b.requests),
                count(b.failed_requests),
                count(b.users)
            );
        }
        None => {
            let _ = writeln!(
                out,
                "blast radius: none (nothing harmful happened to the canary)"
            );
        }
    }
    let _ = writeln!(
        out,
        "notifications: {} scheduled status updates, {} summaries",
        scheduled.0, scheduled.1
    );
    out
}

fn final_phase(plan: &Plan, run: &Run) -> String {
    plan.phases
        .get(run.state.phase)
        .map(|p| p.name.clone())
        .unwrap_or_default()
}

/// The JSON document.
pub fn json(plan: &Plan, run: &Run) -> Value {
    let events: Vec<Value> = run
        .timeline
        .iter()
        .map(|e| {
            let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
            if let Some(obj) = v.as_object_mut() {
                obj.insert("at".into(), json!(secs(e.at())));
            }
            v
        })
        .collect();
    json!({
        "plan": plan.name,
        "seed": run.seed,
        "outcome": run.outcome,
        "final_phase": final_phase(plan, run),
        "ended_at": secs(run.ended_at),
        "share": run.state.share,
        "reason": run.state.reason,
        "harm_started_at": run.harm_started_at.map(secs),
        "blast_radius": run.blast_radius,
        "requests": run.requests,
        "canary": variant_json(&run.canary_total),
        "stable": variant_json(&run.stable_total),
        "phases": run.state.history,
        "events": events,
    })
}

fn variant_json(v: &ramp_core::evidence::VariantStats) -> Value {
    json!({
        "requests": v.requests,
        "errors": v.errors,
        "error_rate": v.error_rate(),
        "success_rate": v.success_rate(),
        "rate_limit_rate": v.rate_limit_rate(),
        "auth_failure_rate": v.auth_failure_rate(),
        "p50_latency_ms": v.quantile_ms(0.5),
        "p95_latency_ms": v.quantile_ms(0.95),
        "p99_latency_ms": v.quantile_ms(0.99),
        "active_users": v.users.estimate(),
    })
}

/// A journal entry as human lines (the first is the headline; the rest are details).
/// Feedback signals give no line (they are counted, not narrated).
/// `origin` is the rollout's start, so absolute times print as time since start.
pub fn event_lines(e: &Event, origin: Millis) -> Vec<String> {
    let phase = &e.phase;
    match &e.kind {
        EventKind::Started => vec!["▶ rollout started".into()],
        EventKind::PhaseStarted { share } => {
            vec![format!(
                "▶ phase {phase} started: {share} of users on the canary"
            )]
        }
        EventKind::GateChecked { outcome, verdicts } => {
            let mut lines = vec![format!("◆ gate {phase}: {}", outcome.label())];
            for v in verdicts {
                lines.push(format!(
                    "{:<12} {} — {}",
                    v.outcome.label(),
                    v.criterion,
                    ramp_core::report::explain(v)
                ));
            }
            lines
        }
        EventKind::Extended { until } => vec![format!(
            "… phase {phase} extended until {} to collect evidence",
            clock(until.saturating_sub(origin)).trim()
        )],
        EventKind::Promoted {
            from,
            to,
            forced,
            by,
            reason,
        } => {
            let how = match (forced, by) {
                (true, Some(b)) => {
                    format!(" (FORCED by {b}: {})", reason.clone().unwrap_or_default())
                }
                (false, Some(b)) => format!(" (by {b})"),
                _ => String::new(),
            };
            vec![format!("↑ promoted {from} → {to}{how}")]
        }
        EventKind::AwaitingApproval { next } => vec![format!("? phase {next} waits for approval")],
        EventKind::Approved { by } => vec![format!("✓ approved by {by}")],
        EventKind::Paused { by, reason } => vec![format!("‖ paused by {by}: {reason}")],
        EventKind::Resumed { by } => vec![format!("▶ resumed by {by}")],
        EventKind::SignalReceived { signal } => {
            if signal.kind() == "feedback" {
                Vec::new()
            } else {
                vec![format!("⚑ signal: {}", signal.describe())]
            }
        }
        EventKind::SignalRepeated { key } => {
            vec![format!("⚑ repeated signal not counted again ({key})")]
        }
        EventKind::TriggerFired { trigger, evidence } => vec![format!(
            "✖ trigger {trigger} FIRED — {}",
            ramp_core::report::trigger_text(evidence)
        )],
        EventKind::RolledBack {
            cause,
            share_before,
            ..
        } => {
            let why = match cause {
                Cause::Trigger => "rollback trigger",
                Cause::GateFailed => "failed gate",
                Cause::Deadline => "gates inconclusive past the deadline",
                Cause::Operator => "operator",
            };
            vec![format!(
                "↓ ROLLED BACK ({why}): canary share {share_before} → 0%, all users on stable"
            )]
        }
        EventKind::Held { reason } => vec![format!(
            "■ HOLDING at the current share, waiting for a person: {}",
            ramp_core::report::stop_text(reason)
        )],
        EventKind::Completed { forced: false, .. } => vec!["✓ rollout completed".into()],
        EventKind::Completed { by, reason, .. } => vec![format!(
            "✓ rollout completed (FORCED by {}: {})",
            by.as_deref().unwrap_or("an operator"),
            reason.as_deref().unwrap_or_default()
        )],
        EventKind::Restarted { downtime } => vec![format!(
            "↻ controller restarted from its journal (down for {}, not counted as phase time)",
            Human(*downtime)
        )],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(utc(1_708_423_200_000), "2024-02-20 10:00:00Z");
        assert_eq!(utc(1_795_739_037_639), "2026-11-27 00:23:57Z");
    }
}
