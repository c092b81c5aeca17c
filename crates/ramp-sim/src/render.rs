//! Human and JSON output for `ramp simulate`.

use crate::{Run, TimelineEntry, secs};
use ramp_core::plan::Plan;
use ramp_core::report::{count, ms, pct};
use ramp_core::time::Human;
use ramp_wire::text::{clock, event_lines};
use ramp_wire::v1::{self, NotifyKind};
use serde_json::{Value, json};
use std::fmt::Write;

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
            TimelineEntry::Notify { notification, .. } => {
                match (notification.about.as_str(), notification.kind) {
                    (_, NotifyKind::Critical) => {
                        let _ =
                            writeln!(out, "{at}  ! notify (critical): {}", notification.headline);
                    }
                    ("status_update", _) => scheduled.0 += 1,
                    ("summary", _) => scheduled.1 += 1,
                    _ => {}
                }
            }
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
                match run.harm_ended_at {
                    Some(e) => format!("the canary's recovery at {}", clock(e).trim()),
                    None if run.outcome == "rolled_back" => "the rollback".to_string(),
                    None => "the end of the run".to_string(),
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
        "reason": run.state.reason.as_ref().map(ramp_core::report::stop_text),
        "why": run.state.reason.as_ref().and_then(v1::StopReason::of),
        "harm_started_at": run.harm_started_at.map(secs),
        "harm_ended_at": run.harm_ended_at.map(secs),
        "blast_radius": run.blast_radius,
        "requests": run.requests,
        "canary": variant_json(&run.canary_total),
        "stable": variant_json(&run.stable_total),
        "phases": run.state.history.iter().map(phase_json).collect::<Vec<_>>(),
        "events": events,
    })
}

fn phase_json(p: &ramp_core::rollout::PhaseRecord) -> Value {
    json!({
        "name": p.name,
        "share": p.share,
        "started_at": p.started_at,
        "ended_at": p.ended_at,
        "result": p.result.name(),
        "verdicts": p.verdicts.iter().map(v1::Verdict::from).collect::<Vec<_>>(),
        "canary_requests": p.canary_requests,
        "canary_errors": p.canary_errors,
        "stable_requests": p.stable_requests,
        "stable_errors": p.stable_errors,
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
