//! A report as one self-contained HTML page: inline CSS (with a print stylesheet), inline SVG
//! charts, no scripts, fonts or other resources from anywhere.

use crate::Kind;
use crate::format::{self, Table};
use crate::model::Report;
use crate::svg::{self, CANARY, Chart, STABLE, Series};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use ramp_core::report::{ms, pct};

const CSS: &str = r#"
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 1100px; padding: 0 1rem; color: #1a1a1a; line-height: 1.4; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
h3 { font-size: 1rem; margin-top: 1.2rem; }
.meta { color: #555; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; }
dl.facts dt { font-weight: 600; }
dl.facts dd { margin: 0; }
table { border-collapse: collapse; margin: .5rem 0; font-size: .9rem; }
th, td { border: 1px solid #ccc; padding: .25rem .5rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.blank { min-width: 8rem; height: 1.4rem; }
.met, .PASS { color: #1b7f3b; font-weight: 600; }
.not-met, .FAIL { color: #b3261e; font-weight: 600; }
.not-proven, .INCONCLUSIVE { color: #8a6d00; font-weight: 600; }
svg.chart { width: 100%; max-width: 760px; height: auto; display: block; margin: .5rem 0 1rem; border: 1px solid #eee; }
pre.timeline { background: #f7f7f7; padding: .6rem; overflow-x: auto; font-size: .85rem; white-space: pre-wrap; }
.trigger { background: #fdecea; border-left: 4px solid #b3261e; padding: .5rem .8rem; }
@media print {
  body { margin: 0; max-width: none; font-size: 10pt; color: #000; }
  h2 { page-break-after: avoid; break-after: avoid; }
  table, svg.chart, pre.timeline { page-break-inside: avoid; break-inside: avoid; }
  svg.chart { max-width: 100%; border: none; }
  pre.timeline { background: none; white-space: pre-wrap; }
  th { background: #eee !important; -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"#;

/// The report as HTML.
pub(crate) fn render(r: &Report) -> String {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (r.title) }
                style { (PreEscaped(CSS)) }
            }
            body {
                (header(r))
                @if let Some(i) = &r.incident { (incident(r, i)) }
                (current(r))
                @if let Some(s) = &r.success { (success(s)) }
                @if matches!(r.kind, Kind::Final | Kind::Incident) {
                    h2 { "Phases" }
                    (phases(r))
                }
                (charts(r))
                (timeline(r))
            }
        }
    };
    page.into_string()
}

fn cell_class(head: &str, cell: &str) -> Option<String> {
    match head {
        "verdict" | "outcome" => Some(cell.replace(' ', "-")),
        _ => None,
    }
}

/// A table with a header row; verdict cells get a class for their colour.
fn table(t: &Table) -> Markup {
    html! {
        table {
            thead { tr { @for h in &t.head { th { (h) } } } }
            tbody {
                @for row in &t.rows {
                    tr {
                        @for (h, cell) in t.head.iter().zip(row) {
                            @if cell.is_empty() {
                                td.blank {}
                            } @else {
                                td class=[cell_class(h, cell)] { (cell) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn header(r: &Report) -> Markup {
    let stamp = |s: &Option<crate::model::Stamp>| {
        s.as_ref()
            .map_or_else(|| "—".to_string(), |s| s.utc.clone())
    };
    html! {
        header {
            h1 { (r.title) }
            p.meta { "Generated " (r.generated_at_utc) " (controller time)" }
            @if let Some(d) = &r.description { p.description { (d) } }
            dl.facts {
                dt { "Rollout" } dd { (r.rollout) }
                dt { "Status" } dd { (r.status) }
                dt { "Phase" } dd { (r.phase.name) " (" (r.phase.share) " of users on the canary)" }
                dt { "Started" } dd { (stamp(&r.started_at)) }
                dt { "Ended" } dd { (stamp(&r.ended_at)) }
            }
        }
    }
}

fn current(r: &Report) -> Markup {
    html! {
        h2 { "Numbers" }
        (table(&format::numbers_table(r)))
        h2 { "Signals" }
        (table(&format::signals_table(r)))
        h2 { "Gates (" (r.phase.name) ")" }
        @if r.gates.is_empty() {
            p { "No gates are being judged (the rollout has not started)." }
        } @else {
            (table(&format::gates_table(&r.gates)))
        }
    }
}

fn success(s: &crate::model::SuccessMetrics) -> Markup {
    html! {
        h2 { "Success metrics" }
        h3 { "Whole rollout" }
        (table(&format::success_table(&s.overall, false)))
        @for p in &s.per_phase {
            h3 { "Phase " (p.phase) " (" (p.result) ")" }
            @if p.rows.is_empty() {
                p { "No verdicts recorded." }
            } @else {
                (table(&format::success_table(&p.rows, true)))
            }
        }
    }
}

fn phases(r: &Report) -> Markup {
    html! {
        @if r.phases.is_empty() {
            p { "No phase has ended yet." }
        } @else {
            (table(&format::phases_table(r)))
        }
    }
}

fn incident(r: &Report, i: &crate::model::Incident) -> Markup {
    html! {
        h2 { "What triggered it" }
        p.trigger { (i.trigger.as_deref().unwrap_or("The rollout has not stopped: nothing triggered a rollback.")) }
        @if let Some(c) = &i.cause { p { "Cause: " (c) } }
        h2 { "Evidence" }
        @if i.evidence.is_empty() {
            p { "No verdicts." }
        } @else {
            (table(&format::gates_table(&i.evidence)))
        }
        h2 { "Blast radius" }
        @if let Some(t) = format::blast_table(r) { (table(&t)) }
        h2 { "Last known good state" }
        @if i.last_good_phases.is_empty() {
            p { "No phase passed before the incident." }
        } @else {
            ul { @for p in &i.last_good_phases { li { (p) } } }
        }
        p { "Now: " (i.traffic_now) }
        h2 { "Notices sent" }
        @match format::notices_table(r) {
            Some(t) if !t.rows.is_empty() => { (table(&t)) }
            _ => { p { "No notices." } }
        }
        h2 { "Follow-ups" }
        @if let Some(t) = format::follow_ups_table(r) { (table(&t)) }
    }
}

fn pct_axis(v: f64) -> String {
    pct(v)
}

fn share_axis(v: f64) -> String {
    format!("{v:.0}%")
}

fn ms_axis(v: f64) -> String {
    ms(v)
}

/// A chart of one value per variant over time.
fn per_variant<'a>(
    r: &'a Report,
    title: &'a str,
    y_label: &'a str,
    y_fmt: fn(f64) -> String,
    data: &'a crate::model::PerVariant,
    thresholds: &'a [crate::model::Threshold],
) -> Chart<'a> {
    Chart {
        title,
        y_label,
        span_hours: r.charts.span_hours,
        y_max: None,
        y_fmt,
        series: vec![
            Series {
                name: "stable",
                color: STABLE,
                points: &data.stable,
                step: false,
            },
            Series {
                name: "canary",
                color: CANARY,
                points: &data.canary,
                step: false,
            },
        ],
        thresholds,
        markers: &r.charts.decisions,
    }
}

fn charts(r: &Report) -> Markup {
    let c = &r.charts;
    let share = Chart {
        title: "Canary traffic share",
        y_label: "canary share",
        span_hours: c.span_hours,
        y_max: Some(100.0),
        y_fmt: share_axis,
        series: vec![Series {
            name: "canary share",
            color: CANARY,
            points: &c.share,
            step: true,
        }],
        thresholds: &[],
        markers: &c.decisions,
    };
    let errors = per_variant(
        r,
        "Error rate per variant",
        "error rate",
        pct_axis,
        &c.error_rate,
        &c.error_thresholds,
    );
    let p95 = per_variant(
        r,
        "p95 latency per variant",
        "p95 latency",
        ms_axis,
        &c.p95_ms,
        &c.p95_thresholds,
    );
    html! {
        h2 { "Charts" }
        h3 { "Canary traffic share" }
        (svg::chart(&share))
        h3 { "Error rate" }
        (svg::chart(&errors))
        h3 { "p95 latency" }
        (svg::chart(&p95))
    }
}

fn timeline(r: &Report) -> Markup {
    html! {
        h2 { "Timeline (" (r.timeline_scope) ")" }
        @if r.timeline.is_empty() {
            p { "Nothing happened yet." }
        } @else {
            pre.timeline {
                @for e in &r.timeline {
                    @for (i, line) in e.lines.iter().enumerate() {
                        @if i == 0 {
                            (format!("{:>10}  {}\n", e.since_start, line))
                        } @else {
                            (format!("{:>10}    {}\n", "", line))
                        }
                    }
                }
            }
        }
    }
}
