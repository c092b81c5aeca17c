//! The series the HTML charts draw: canary share from the journal, error rate and p95 latency
//! per variant from the metric windows (bucketed), the plan's thresholds, the decisions.

use crate::Input;
use crate::model::{Charts, Marker, PerVariant, Threshold};
use ramp_core::evidence::VariantStats;
use ramp_core::evidence::sketch::LatencyHistogram;
use ramp_core::plan::{Criterion, Metric, Plan, Test};
use ramp_core::time::{HOUR, MINUTE};
use ramp_wire::v1::EventKind;
use std::collections::BTreeMap;

/// At most this many points per per-variant series.
pub(crate) const MAX_POINTS: u64 = 200;

/// The charts' series for a report.
pub(crate) fn charts(input: &Input<'_>) -> Charts {
    let origin = crate::build::origin(input);
    let span_ms = end(input).saturating_sub(origin).max(MINUTE);
    let bucket_ms = span_ms.div_ceil(MAX_POINTS).max(1);
    let (error_rate, p95_ms) = variant_series(input.windows, origin, bucket_ms);
    Charts {
        span_hours: hours(span_ms),
        origin,
        bucket_ms,
        share: share_steps(input, origin, span_ms),
        error_rate,
        p95_ms,
        error_thresholds: error_thresholds(input.plan),
        p95_thresholds: p95_thresholds(input.plan),
        decisions: decisions(input, origin),
    }
}

fn hours(ms: u64) -> f64 {
    ms as f64 / HOUR as f64
}

/// Where the x axis ends: the rollout's end (or now), or the latest thing seen.
fn end(input: &Input<'_>) -> u64 {
    let last_event = input.events.last().map_or(0, |(_, e)| e.at);
    let last_window = input.windows.last().map_or(0, |(t, _)| *t);
    let stop = match input.state.ended_at {
        Some(t) => t,
        None => input.now,
    };
    stop.max(last_event).max(last_window)
}

/// The canary share as change points (hours, percent), ending at the span's end.
fn share_steps(input: &Input<'_>, origin: u64, span_ms: u64) -> Vec<(f64, f64)> {
    let mut out = vec![(0.0, 0.0)];
    let mut seen = false;
    for (_, e) in input.events {
        let share = match &e.kind {
            EventKind::PhaseStarted { share } => f64::from(*share) / 100.0,
            EventKind::RolledBack { .. } | EventKind::Started => 0.0,
            _ => continue,
        };
        seen = true;
        out.push((hours(e.at.saturating_sub(origin)), share));
    }
    if !seen {
        out = vec![(0.0, input.state.share.percent())];
    }
    let last = out.last().map_or(0.0, |p| p.1);
    out.push((hours(span_ms), last));
    out
}

/// What one bucket of windows adds up to, per variant.
#[derive(Default)]
struct Bucket {
    at: u64,
    stable: Sums,
    canary: Sums,
}

/// One variant's error counts and latencies over a bucket.
#[derive(Default)]
struct Sums {
    errors: u64,
    attempts: u64,
    latency: Option<LatencyHistogram>,
}

impl Sums {
    fn add(&mut self, v: &VariantStats) {
        let (x, n) = v.error_counts();
        self.errors = self.errors.saturating_add(x);
        self.attempts = self.attempts.saturating_add(n);
        if v.latency.count() > 0 {
            self.latency
                .get_or_insert_with(LatencyHistogram::new)
                .merge(&v.latency);
        }
    }

    fn error_rate(&self) -> Option<f64> {
        (self.attempts > 0).then(|| ramp_core::evidence::window::ratio(self.errors, self.attempts))
    }

    fn p95_ms(&self) -> Option<f64> {
        let us = self.latency.as_ref()?.quantile(0.95)?;
        Some(us as f64 / 1000.0)
    }
}

/// Error rate and p95 per variant, one point per non-empty bucket of `bucket_ms`.
fn variant_series(
    windows: &[(u64, ramp_core::evidence::MetricWindow)],
    origin: u64,
    bucket_ms: u64,
) -> (PerVariant, PerVariant) {
    let mut buckets: BTreeMap<u64, Bucket> = BTreeMap::new();
    for (t, w) in windows {
        let since = t.saturating_sub(origin);
        let b = buckets.entry(since / bucket_ms).or_default();
        b.at = b.at.max(since);
        b.stable.add(&w.stable);
        b.canary.add(&w.canary);
    }
    let mut errors = PerVariant::default();
    let mut p95 = PerVariant::default();
    for b in buckets.values() {
        let x = hours(b.at);
        let push = |s: &mut Vec<(f64, f64)>, v: Option<f64>| {
            if let Some(v) = v.filter(|v| v.is_finite()) {
                s.push((x, v));
            }
        };
        push(&mut errors.stable, b.stable.error_rate());
        push(&mut errors.canary, b.canary.error_rate());
        push(&mut p95.stable, b.stable.p95_ms());
        push(&mut p95.canary, b.canary.p95_ms());
    }
    (errors, p95)
}

/// Every criterion and trigger of the plan.
fn all_criteria(plan: &Plan) -> impl Iterator<Item = &Criterion> {
    plan.phases
        .iter()
        .flat_map(|p| p.criteria.iter())
        .chain(plan.rollout_criteria.iter())
        .chain(plan.triggers.iter())
}

/// Compared thresholds of a metric, one line per distinct value; the baseline when none.
fn thresholds(plan: &Plan, metric: Metric) -> Vec<Threshold> {
    let mut out: Vec<Threshold> = Vec::new();
    for c in all_criteria(plan).filter(|c| c.metric == metric) {
        let Test::Compare { threshold, .. } = c.test else {
            continue;
        };
        if !threshold.is_finite() {
            continue;
        }
        match out.iter_mut().find(|t| t.value == threshold) {
            Some(t) => {
                if !t.label.split(", ").any(|l| l == c.text) {
                    t.label.push_str(", ");
                    t.label.push_str(&c.text);
                }
            }
            None => out.push(Threshold {
                label: c.text.clone(),
                value: threshold,
            }),
        }
    }
    if out.is_empty()
        && let Some(v) = plan.baseline.get(metric).filter(|v| v.is_finite())
    {
        out.push(Threshold {
            label: format!("baseline {}", metric.name()),
            value: v,
        });
    }
    out
}

fn error_thresholds(plan: &Plan) -> Vec<Threshold> {
    thresholds(plan, Metric::ErrorRate)
}

fn p95_thresholds(plan: &Plan) -> Vec<Threshold> {
    thresholds(plan, Metric::Latency(950))
}

/// The decisions of the journal, as markers.
fn decisions(input: &Input<'_>, origin: u64) -> Vec<Marker> {
    input
        .events
        .iter()
        .filter_map(|(_, e)| {
            let label = match &e.kind {
                EventKind::Promoted { to, forced, .. } => {
                    format!("promoted → {to}{}", if *forced { " (forced)" } else { "" })
                }
                EventKind::RolledBack { .. } => "rolled back".into(),
                EventKind::Held { .. } => "held".into(),
                EventKind::Completed { .. } => "completed".into(),
                EventKind::Extended { .. } => format!("{} extended", e.phase),
                _ => return None,
            };
            Some(Marker {
                hours: hours(e.at.saturating_sub(origin)),
                label,
            })
        })
        .collect()
}
