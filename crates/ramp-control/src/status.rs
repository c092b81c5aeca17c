//! The one place a rollout's status is assembled: from its plan and state, for the API, the
//! CLI and the dashboard.

use ramp_api::{RolloutDetail, RolloutMetrics};
use ramp_core::evidence::BackendHealth;
use ramp_core::plan::Plan;
use ramp_core::report;
use ramp_core::rollout::{State, current_verdicts};
use ramp_core::time::Millis;
use ramp_wire::v1;

/// What a controller publishes after every step: the status and the cumulative numbers.
#[derive(Clone, Debug)]
pub struct Published {
    /// The rollout's status.
    pub status: v1::RolloutStatus,
    /// Its numbers since it started, for `/metrics`.
    pub metrics: RolloutMetrics,
}

/// Everything a status is made of.
pub(crate) struct View<'a> {
    pub(crate) name: &'a str,
    pub(crate) listen: &'a str,
    pub(crate) plan: &'a Plan,
    pub(crate) state: &'a State,
    pub(crate) now: Millis,
    pub(crate) origin: Millis,
    /// Requests per second (stable, canary).
    pub(crate) rates: (f64, f64),
    /// Backend health (stable, canary).
    pub(crate) health: (BackendHealth, BackendHealth),
    pub(crate) retired: bool,
    /// Why the latest journal write failed, while it is the latest.
    pub(crate) journal_error: Option<&'a str>,
}

/// The status and numbers of a view.
pub(crate) fn publish(v: &View<'_>) -> Published {
    let s = v.state;
    let phase = &v.plan.phases[s.phase.min(v.plan.phases.len() - 1)];
    let verdicts = current_verdicts(v.plan, s);
    let status = v1::RolloutStatus {
        name: v.name.to_string(),
        started_at: s.started_at,
        listen: v.listen.to_string(),
        tls: v.plan.listen_tls.is_some(),
        now: v.now,
        origin: v.origin,
        status: s.status.into(),
        health: match (v1::Health::from(s.health()), v.journal_error) {
            // A journal that cannot be written needs a person, whatever the evidence says.
            (v1::Health::Healthy | v1::Health::Monitoring, Some(_)) => v1::Health::Degraded,
            (h, _) => h,
        },
        phase: s.phase as u64,
        phase_name: phase.name.clone(),
        share: s.share.bp(),
        applied_share: s.applied.map(|a| a.bp()),
        phase_elapsed: s.phase_elapsed,
        phase_duration: phase.duration,
        extended: s.extended_at.is_some(),
        canary: v1::VariantView::of(&s.evidence.canary, v.rates.1, Some(v.health.1)),
        stable: v1::VariantView::of(&s.evidence.stable, v.rates.0, Some(v.health.0)),
        verdicts: verdicts.iter().map(v1::Verdict::from).collect(),
        reason: s.reason.as_ref().map(report::stop_text),
        why: s.reason.as_ref().and_then(v1::StopReason::of),
        ended: s.status.is_settled(),
        ended_at: s.ended_at,
        retired: v.retired,
        journal_error: v.journal_error.map(str::to_string),
        channels: Vec::new(),
    };
    let metrics = RolloutMetrics {
        name: v.name.to_string(),
        status: status.status,
        phase: s.phase,
        share_bp: s.share.bp(),
        stable: s.totals.stable.clone(),
        canary: s.totals.canary.clone(),
        detail: RolloutDetail {
            phase_elapsed_ms: status.phase_elapsed,
            phase_duration_ms: status.phase_duration,
            backends: [status.stable.health, status.canary.health],
            verdicts: status
                .verdicts
                .iter()
                .map(|v| (v.criterion.clone(), v.scope.is_some(), v.outcome))
                .collect(),
            triggers: s
                .triggers
                .iter()
                .zip(s.trigger_progress(v.plan))
                .map(|(t, progress)| (t.trigger.clone(), progress, t.fired))
                .collect(),
            signals: s.totals.signals.clone(),
            channels: Vec::new(),
        },
    };
    Published { status, metrics }
}

/// The status of a rollout the server knows but cannot run (its journal cannot be read, or its
/// state does not fit its plan): everything it can say is the reason.
pub(crate) fn unavailable(
    name: &str,
    listen: &str,
    reason: &str,
    now: Millis,
) -> v1::RolloutStatus {
    v1::RolloutStatus {
        name: name.to_string(),
        started_at: None,
        listen: listen.to_string(),
        tls: false,
        now,
        origin: now,
        status: v1::Status::Unavailable,
        health: v1::Health::Critical,
        phase: 0,
        phase_name: String::new(),
        share: 0,
        applied_share: None,
        phase_elapsed: 0,
        phase_duration: 0,
        extended: false,
        canary: v1::VariantView::default(),
        stable: v1::VariantView::default(),
        verdicts: Vec::new(),
        reason: Some(reason.to_string()),
        why: None,
        ended: false,
        ended_at: None,
        retired: false,
        journal_error: None,
        channels: Vec::new(),
    }
}
