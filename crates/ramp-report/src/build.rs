//! From what the caller knows to a [`Report`].

use crate::format::metric_row;
use crate::model::*;
use crate::{Input, Kind, NoticeRow};
use ramp_core::evidence::gate::Scope;
use ramp_core::evidence::{Evidence, judge_all};
use ramp_core::plan::{Criterion, Plan};
use ramp_core::report::{phase_result, stop_text};
use ramp_core::rollout::{PhaseResult, State, Status, StopReason, current_verdicts};
use ramp_core::time::{DAY, Human};
use ramp_wire::text::{clock, event_lines, utc};
use ramp_wire::v1::{self, BlastRadius, EventKind, VariantNumbers};

/// Builds a report of `kind` from `input`.
pub fn build(kind: Kind, input: &Input<'_>) -> Report {
    let (plan, state) = (input.plan, input.state);
    let (timeline_scope, timeline) = timeline(kind, input);
    Report {
        kind,
        title: format!("{} — {}", plan.name, kind.title()),
        rollout: plan.name.clone(),
        description: plan.description.clone(),
        generated_at: input.now,
        generated_at_utc: utc(input.now),
        status: state.status.name().into(),
        phase: phase_now(plan, state),
        started_at: state.started_at.map(stamp),
        ended_at: state.ended_at.map(stamp),
        current: variants(&state.evidence),
        totals: variants(&state.totals),
        signals: (&state.totals.signals).into(),
        gates: current_verdicts(plan, state)
            .iter()
            .map(metric_row)
            .collect(),
        timeline_scope,
        timeline,
        phases: state.history.iter().map(phase_row).collect(),
        success: (kind == Kind::Final).then(|| success(plan, state)),
        incident: (kind == Kind::Incident).then(|| incident(input)),
        charts: crate::charts::charts(input),
    }
}

fn stamp(at: u64) -> Stamp {
    Stamp { at, utc: utc(at) }
}

fn phase_now(plan: &Plan, state: &State) -> PhaseNow {
    PhaseNow {
        index: state.phase,
        name: plan
            .phases
            .get(state.phase)
            .map(|p| p.name.clone())
            .unwrap_or_default(),
        share_bp: state.share.bp(),
        share: state.share.to_string(),
    }
}

fn variants(e: &Evidence) -> Variants {
    Variants {
        stable: VariantNumbers::of(&e.stable),
        canary: VariantNumbers::of(&e.canary),
    }
}

/// Where times since the start count from.
pub(crate) fn origin(input: &Input<'_>) -> u64 {
    input
        .state
        .started_at
        .or_else(|| input.events.first().map(|(_, e)| e.at))
        .or_else(|| input.windows.first().map(|(t, _)| *t))
        .unwrap_or(input.now)
}

fn timeline(kind: Kind, input: &Input<'_>) -> (String, Vec<TimelineEntry>) {
    let origin = input.state.started_at.unwrap_or(0);
    let since = match kind {
        Kind::Daily => input.now.saturating_sub(DAY),
        _ => 0,
    };
    let scope = match kind {
        Kind::Daily => "the last 24 h",
        _ => "everything",
    };
    let entries = input
        .events
        .iter()
        .filter(|(_, e)| e.at >= since)
        .filter_map(|(seq, e)| {
            let lines = event_lines(e, origin);
            (!lines.is_empty()).then(|| TimelineEntry {
                seq: *seq,
                at: e.at,
                since_start: clock(e.at.saturating_sub(origin)).trim().to_string(),
                kind: e.kind.name().into(),
                lines,
            })
        })
        .collect();
    (scope.into(), entries)
}

fn phase_row(r: &ramp_core::rollout::PhaseRecord) -> PhaseRow {
    let rate = ramp_core::evidence::window::ratio;
    PhaseRow {
        name: r.name.clone(),
        share: r.share.to_string(),
        started_at: r.started_at,
        ended_at: r.ended_at,
        duration: Human(r.ended_at.saturating_sub(r.started_at)).to_string(),
        result: phase_result(r.result).into(),
        canary_errors: r.canary_errors,
        canary_requests: r.canary_requests,
        canary_error_rate: rate(r.canary_errors, r.canary_requests),
        stable_errors: r.stable_errors,
        stable_requests: r.stable_requests,
        stable_error_rate: rate(r.stable_errors, r.stable_requests),
    }
}

/// Every distinct criterion of the plan (phases first, then the rollout's), by text.
fn distinct_criteria(plan: &Plan) -> Vec<Criterion> {
    let mut out: Vec<Criterion> = Vec::new();
    let all = plan.phases.iter().flat_map(|p| p.criteria.iter());
    for c in all.chain(plan.rollout_criteria.iter()) {
        if !out.iter().any(|o| o.text == c.text) {
            out.push(c.clone());
        }
    }
    out
}

fn success(plan: &Plan, state: &State) -> SuccessMetrics {
    let overall = judge_all(plan, &distinct_criteria(plan), &state.totals)
        .into_iter()
        .map(|mut v| {
            v.scope = Scope::Rollout;
            metric_row(&v)
        })
        .collect();
    let per_phase = state
        .history
        .iter()
        .map(|r| PhaseMetrics {
            phase: r.name.clone(),
            result: phase_result(r.result).into(),
            rows: r.verdicts.iter().map(metric_row).collect(),
        })
        .collect();
    SuccessMetrics { overall, per_phase }
}

fn stop_verdicts(r: &StopReason) -> &[ramp_core::evidence::Verdict] {
    match r {
        StopReason::GateFailed { verdicts, .. }
        | StopReason::NotEnoughEvidence { verdicts, .. } => verdicts,
        _ => &[],
    }
}

fn cause_name(r: &StopReason) -> &'static str {
    match r.cause() {
        ramp_core::rollout::Cause::Trigger => "trigger",
        ramp_core::rollout::Cause::GateFailed => "gate_failed",
        ramp_core::rollout::Cause::Deadline => "deadline",
        ramp_core::rollout::Cause::Operator => "operator",
    }
}

/// The share just before the rollback: the journal's `rolled_back` event, else the last
/// phase's share, else the current one.
fn share_before(input: &Input<'_>) -> u16 {
    let journaled = input.events.iter().rev().find_map(|(_, e)| match &e.kind {
        EventKind::RolledBack { share_before, .. } => Some(*share_before),
        _ => None,
    });
    journaled
        .or_else(|| input.state.history.last().map(|r| r.share.bp()))
        .unwrap_or(input.state.share.bp())
}

fn share_text(bp: u16) -> String {
    ramp_core::cohort::ShareBp::new(bp).map_or_else(|| format!("{bp}bp"), |s| s.to_string())
}

fn blast_radius(input: &Input<'_>) -> BlastRadius {
    let s = input.state;
    let canary = VariantNumbers::of(&s.totals.canary);
    let end = s.ended_at.unwrap_or(input.now);
    BlastRadius {
        canary_requests: canary.requests,
        failed_requests: canary.errors,
        users: canary.users,
        exposure_ms: s.started_at.map_or(0, |t| end.saturating_sub(t)),
        share_before: share_before(input),
    }
}

fn last_good_phases(state: &State) -> Vec<String> {
    state
        .history
        .iter()
        .filter(|r| r.result != PhaseResult::RolledBack)
        .map(|r| {
            format!(
                "{} ({}): {} at {}",
                r.name,
                r.share,
                phase_result(r.result),
                utc(r.ended_at)
            )
        })
        .collect()
}

fn traffic_now(state: &State) -> String {
    match state.status {
        Status::RolledBack => "all traffic on stable (canary share 0%)".into(),
        Status::Pending => "all traffic on stable (the rollout has not started)".into(),
        Status::Completed => "all traffic on the new version".into(),
        _ => format!("{} of users on the canary", state.share),
    }
}

fn notice_view(n: &NoticeRow) -> NoticeView {
    NoticeView {
        id: n.id,
        at: n.at,
        at_utc: utc(n.at),
        kind: n.kind.clone(),
        about: n.about.clone(),
        headline: n.headline.clone(),
        groups: n.groups.clone(),
        deliveries: n
            .deliveries
            .iter()
            .map(|(channel, state, attempts, error)| Delivery {
                channel: channel.clone(),
                state: state.clone(),
                attempts: *attempts,
                error: error.clone(),
            })
            .collect(),
    }
}

fn incident(input: &Input<'_>) -> Incident {
    let (plan, state) = (input.plan, input.state);
    let reason = state.reason.as_ref();
    let stopped = reason.map(stop_verdicts).unwrap_or_default();
    let evidence = if stopped.is_empty() {
        current_verdicts(plan, state)
    } else {
        stopped.to_vec()
    };
    let blast_radius = blast_radius(input);
    Incident {
        trigger: reason.map(stop_text),
        cause: reason.map(|r| cause_name(r).to_string()),
        why: reason.and_then(v1::StopReason::of),
        evidence: evidence.iter().map(metric_row).collect(),
        exposure: Human(blast_radius.exposure_ms).to_string(),
        share_before: share_text(blast_radius.share_before),
        blast_radius,
        last_good_phases: last_good_phases(state),
        traffic_now: traffic_now(state),
        notices: input.notices.iter().map(notice_view).collect(),
        follow_ups: vec![FollowUp::default(); 3],
    }
}
