//! Numbers as the documents write them, and the tables both text formats share.

use crate::model::{MetricRow, Report};
use ramp_core::evidence::gate::{Detail, Outcome};
use ramp_core::evidence::{BoundSide, Verdict};
use ramp_core::report::{count, ms, pct, quantile_name};
use ramp_wire::v1::VariantNumbers;

/// A table: a header and rows of cells, all text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Table {
    pub(crate) head: Vec<&'static str>,
    pub(crate) rows: Vec<Vec<String>>,
}

/// The verdict as the success table says it.
pub(crate) fn verdict_word(o: Outcome) -> &'static str {
    match o {
        Outcome::Pass => "met",
        Outcome::Fail => "not met",
        Outcome::Inconclusive => "not proven",
    }
}

/// The comparison a criterion's text makes (`<`, `>=`, ...), if it makes one.
fn op_of(criterion: &str) -> &'static str {
    ramp_core::plan::parse_raw(criterion)
        .ok()
        .and_then(|r| r.op)
        .map_or("", |op| op.symbol())
}

fn side(b: Option<BoundSide>) -> &'static str {
    match b {
        Some(BoundSide::Lower) => "≥",
        _ => "≤",
    }
}

fn bound_pct(v: &Verdict) -> String {
    v.bound.map_or_else(
        || "—".into(),
        |b| format!("{} {}", side(v.bound_side), pct(b)),
    )
}

fn opt_ms(m: Option<f64>) -> String {
    m.map_or_else(|| "—".into(), ms)
}

/// A criterion's verdict as a row of the success metrics (and gates) tables.
pub(crate) fn metric_row(v: &Verdict) -> MetricRow {
    let op = op_of(&v.criterion);
    let (target, measured, bound) = match &v.detail {
        Detail::Rate { .. } => (
            format!("{op} {}", pct(v.threshold)),
            measured_rate(v),
            bound_pct(v),
        ),
        Detail::Latency {
            quantile,
            threshold_ms,
            estimate_ms,
        } => (
            format!(
                "p{} {op} {} (≤ {} slower)",
                quantile_name(*quantile),
                ms(*threshold_ms),
                pct(v.threshold)
            ),
            match (v.n, estimate_ms) {
                (0, _) => "no requests yet".into(),
                (_, e) => format!("{} ({} slower)", opt_ms(*e), pct(v.observed.unwrap_or(0.0))),
            },
            format!("{} slower", bound_pct(v)),
        ),
        Detail::Count { op } => (
            format!("{} {}", op.symbol(), v.threshold),
            count(v.events),
            "exact count".into(),
        ),
        Detail::Users { op } => (
            format!("{} {}", op.symbol(), v.threshold),
            format!("≈{}", count(v.events)),
            v.bound.map_or_else(
                || "—".into(),
                |b| format!("{} {}", side(v.bound_side), count(b.max(0.0) as u64)),
            ),
        ),
        Detail::VsStable {
            canary_n, stable_n, ..
        } => (
            format!("≤ stable + {}", pct(v.threshold)),
            if *canary_n == 0 || *stable_n == 0 {
                "no data on both variants yet".into()
            } else {
                format!("{} difference", pct(v.observed.unwrap_or(0.0)))
            },
            bound_pct(v),
        ),
        Detail::LatencyVsStable {
            quantile,
            canary_ms,
            stable_ms,
            limit_ms,
            ..
        } => (
            format!(
                "p{} ≤ {} (stable + margin)",
                quantile_name(*quantile),
                ms(*limit_ms)
            ),
            format!(
                "canary {} vs stable {}",
                opt_ms(*canary_ms),
                opt_ms(*stable_ms)
            ),
            format!("{} slower", bound_pct(v)),
        ),
        Detail::Text { text } => ("—".into(), text.clone(), "—".into()),
    };
    MetricRow {
        metric: v.criterion.clone(),
        target,
        measured,
        bound,
        n: v.n,
        needed: v.needed.map(count).unwrap_or_default(),
        verdict: verdict_word(v.outcome).into(),
        detail: ramp_wire::v1::Verdict::from(v),
    }
}

fn measured_rate(v: &Verdict) -> String {
    if v.n == 0 {
        return "no data yet".into();
    }
    format!(
        "{} ({} of {})",
        pct(v.observed.unwrap_or(0.0)),
        count(v.events),
        count(v.n)
    )
}

/// A rate with its counts: `0.100% (1 of 1,000)`.
pub(crate) fn rate_of(x: u64, n: u64) -> String {
    if n == 0 {
        return "— (0 requests)".into();
    }
    format!(
        "{} ({} of {})",
        pct(ramp_core::evidence::window::ratio(x, n)),
        count(x),
        count(n)
    )
}

fn variant_row(span: &str, name: &str, v: &VariantNumbers) -> Vec<String> {
    vec![
        span.into(),
        name.into(),
        count(v.requests),
        rate_of(v.errors, v.attempts),
        if v.requests == 0 {
            "—".into()
        } else {
            pct(v.success_rate)
        },
        opt_ms(v.p95_ms),
        format!("≈{}", count(v.users)),
    ]
}

/// Per-variant numbers of the current phase and of the whole rollout.
pub(crate) fn numbers_table(r: &Report) -> Table {
    let phase = format!("phase {}", r.phase.name);
    Table {
        head: vec![
            "span",
            "variant",
            "requests",
            "error rate",
            "success rate",
            "p95",
            "users",
        ],
        rows: vec![
            variant_row(&phase, "stable", &r.current.stable),
            variant_row(&phase, "canary", &r.current.canary),
            variant_row("whole rollout", "stable", &r.totals.stable),
            variant_row("whole rollout", "canary", &r.totals.canary),
        ],
    }
}

/// Signals counted since the start.
pub(crate) fn signals_table(r: &Report) -> Table {
    let s = &r.signals;
    let [low, medium, high, critical] = s.security_alerts;
    let row = |what: &str, n: u64| vec![what.to_string(), count(n)];
    Table {
        head: vec!["signal", "count"],
        rows: vec![
            row("PCI compliance alerts", s.pci_alerts),
            row("security alerts (low)", low),
            row("security alerts (medium)", medium),
            row("security alerts (high)", high),
            row("security alerts (critical)", critical),
            row("bug reports", s.bug_reports),
            row("feedback", s.feedback),
            row("feedback, positive", s.feedback_positive),
        ],
    }
}

/// Gate verdicts with their explanations.
pub(crate) fn gates_table(rows: &[MetricRow]) -> Table {
    Table {
        head: vec![
            "criterion",
            "outcome",
            "target",
            "measured",
            "confidence bound",
            "n",
            "needed",
            "explanation",
        ],
        rows: rows
            .iter()
            .map(|m| {
                vec![
                    scoped(m),
                    m.detail.outcome.label().into(),
                    m.target.clone(),
                    m.measured.clone(),
                    m.bound.clone(),
                    count(m.n),
                    m.needed.clone(),
                    m.detail.explanation.clone(),
                ]
            })
            .collect(),
    }
}

/// A criterion with `(whole rollout)` when it was judged on the whole rollout's evidence
/// beside a phase's own criteria.
fn scoped(m: &MetricRow) -> String {
    match m.detail.scope {
        Some(_) => format!("{} (whole rollout)", m.metric),
        None => m.metric.clone(),
    }
}

/// The success metrics table; `mark_scope` marks the rollout's criteria among a phase's.
pub(crate) fn success_table(rows: &[MetricRow], mark_scope: bool) -> Table {
    Table {
        head: vec![
            "metric",
            "target",
            "measured",
            "confidence bound",
            "n",
            "verdict",
        ],
        rows: rows
            .iter()
            .map(|m| {
                vec![
                    if mark_scope {
                        scoped(m)
                    } else {
                        m.metric.clone()
                    },
                    m.target.clone(),
                    m.measured.clone(),
                    m.bound.clone(),
                    count(m.n),
                    m.verdict.clone(),
                ]
            })
            .collect(),
    }
}

/// The phases that ended.
pub(crate) fn phases_table(r: &Report) -> Table {
    Table {
        head: vec![
            "phase",
            "share",
            "duration",
            "result",
            "canary error rate",
            "stable error rate",
        ],
        rows: r
            .phases
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.share.clone(),
                    p.duration.clone(),
                    p.result.clone(),
                    rate_of(p.canary_errors, p.canary_requests),
                    rate_of(p.stable_errors, p.stable_requests),
                ]
            })
            .collect(),
    }
}

/// The incident's blast radius.
pub(crate) fn blast_table(r: &Report) -> Option<Table> {
    let i = r.incident.as_ref()?;
    let b = &i.blast_radius;
    let row = |what: &str, v: String| vec![what.to_string(), v];
    Some(Table {
        head: vec!["measure", "value"],
        rows: vec![
            row("canary requests", count(b.canary_requests)),
            row(
                "failed requests",
                rate_of(b.failed_requests, b.canary_requests),
            ),
            row("distinct users (estimate)", format!("≈{}", count(b.users))),
            row("exposure time", i.exposure.clone()),
            row("share before the rollback", i.share_before.clone()),
        ],
    })
}

/// The notices sent.
pub(crate) fn notices_table(r: &Report) -> Option<Table> {
    let i = r.incident.as_ref()?;
    Some(Table {
        head: vec!["time", "kind", "headline", "groups", "deliveries"],
        rows: i
            .notices
            .iter()
            .map(|n| {
                vec![
                    n.at_utc.clone(),
                    n.kind.clone(),
                    n.headline.clone(),
                    n.groups.join(", "),
                    n.deliveries
                        .iter()
                        .map(|d| {
                            let err = d.error.as_deref().map(|e| format!(": {e}"));
                            format!(
                                "{} {} ({} attempt{}){}",
                                d.channel,
                                d.state,
                                d.attempts,
                                if d.attempts == 1 { "" } else { "s" },
                                err.unwrap_or_default()
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; "),
                ]
            })
            .collect(),
    })
}

/// The follow-ups, for the team to fill in.
pub(crate) fn follow_ups_table(r: &Report) -> Option<Table> {
    let i = r.incident.as_ref()?;
    Some(Table {
        head: vec!["owner", "action", "due"],
        rows: i
            .follow_ups
            .iter()
            .map(|f| vec![f.owner.clone(), f.action.clone(), f.due.clone()])
            .collect(),
    })
}
