//! A report as GitHub-flavoured Markdown: the same sections as the HTML page, without charts.

use crate::Kind;
use crate::format::{self, Table};
use crate::model::{Incident, Report, Stamp, SuccessMetrics};
use std::fmt::Write as _;

/// Free text with Markdown's active characters escaped (so a `<script>` stays text).
fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' | '`' | '*' | '<' | '>' | '[' | ']' | '|' | '#' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            _ => out.push(c),
        }
    }
    out
}

/// A table cell: pipes and line breaks would end the cell or the row.
fn cell(s: &str) -> String {
    if s.is_empty() {
        return " ".into();
    }
    text(s)
}

fn table(out: &mut String, t: &Table) {
    let _ = writeln!(out, "| {} |", t.head.join(" | "));
    let _ = writeln!(
        out,
        "|{}",
        t.head.iter().map(|_| " --- |").collect::<String>()
    );
    for row in &t.rows {
        let cells: Vec<String> = row.iter().map(|c| cell(c)).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out.push('\n');
}

fn heading(out: &mut String, level: usize, title: &str) {
    let _ = writeln!(out, "{} {}\n", "#".repeat(level), text(title));
}

fn para(out: &mut String, s: &str) {
    let _ = writeln!(out, "{}\n", text(s));
}

/// The report as Markdown.
pub(crate) fn render(r: &Report) -> String {
    let mut out = String::new();
    header(&mut out, r);
    if let Some(i) = &r.incident {
        incident(&mut out, r, i);
    }
    current(&mut out, r);
    if let Some(s) = &r.success {
        success(&mut out, s);
    }
    if matches!(r.kind, Kind::Final | Kind::Incident) {
        heading(&mut out, 2, "Phases");
        if r.phases.is_empty() {
            para(&mut out, "No phase has ended yet.");
        } else {
            table(&mut out, &format::phases_table(r));
        }
    }
    heading(&mut out, 2, "Charts");
    para(&mut out, "See the HTML report for charts.");
    timeline(&mut out, r);
    out
}

fn header(out: &mut String, r: &Report) {
    heading(out, 1, &r.title);
    let stamp = |s: &Option<Stamp>| s.as_ref().map_or("—".to_string(), |s| s.utc.clone());
    para(
        out,
        &format!("Generated {} (controller time).", r.generated_at_utc),
    );
    if let Some(d) = &r.description {
        para(out, d);
    }
    let facts = [
        ("Rollout", r.rollout.clone()),
        ("Status", r.status.clone()),
        (
            "Phase",
            format!(
                "{} ({} of users on the canary)",
                r.phase.name, r.phase.share
            ),
        ),
        ("Started", stamp(&r.started_at)),
        ("Ended", stamp(&r.ended_at)),
    ];
    for (k, v) in facts {
        let _ = writeln!(out, "- **{k}:** {}", text(&v));
    }
    out.push('\n');
}

fn current(out: &mut String, r: &Report) {
    heading(out, 2, "Numbers");
    table(out, &format::numbers_table(r));
    heading(out, 2, "Signals");
    table(out, &format::signals_table(r));
    heading(out, 2, &format!("Gates ({})", r.phase.name));
    if r.gates.is_empty() {
        para(
            out,
            "No gates are being judged (the rollout has not started).",
        );
    } else {
        table(out, &format::gates_table(&r.gates));
    }
}

fn success(out: &mut String, s: &SuccessMetrics) {
    heading(out, 2, "Success metrics");
    heading(out, 3, "Whole rollout");
    table(out, &format::success_table(&s.overall, false));
    for p in &s.per_phase {
        heading(out, 3, &format!("Phase {} ({})", p.phase, p.result));
        if p.rows.is_empty() {
            para(out, "No verdicts recorded.");
        } else {
            table(out, &format::success_table(&p.rows, true));
        }
    }
}

fn incident(out: &mut String, r: &Report, i: &Incident) {
    heading(out, 2, "What triggered it");
    para(
        out,
        i.trigger
            .as_deref()
            .unwrap_or("The rollout has not stopped: nothing triggered a rollback."),
    );
    if let Some(c) = &i.cause {
        para(out, &format!("Cause: {c}"));
    }
    heading(out, 2, "Evidence");
    if i.evidence.is_empty() {
        para(out, "No verdicts.");
    } else {
        table(out, &format::gates_table(&i.evidence));
    }
    heading(out, 2, "Blast radius");
    if let Some(t) = format::blast_table(r) {
        table(out, &t);
    }
    heading(out, 2, "Last known good state");
    if i.last_good_phases.is_empty() {
        para(out, "No phase passed before the incident.");
    } else {
        for p in &i.last_good_phases {
            let _ = writeln!(out, "- {}", text(p));
        }
        out.push('\n');
    }
    para(out, &format!("Now: {}", i.traffic_now));
    heading(out, 2, "Notices sent");
    match format::notices_table(r) {
        Some(t) if !t.rows.is_empty() => table(out, &t),
        _ => para(out, "No notices."),
    }
    heading(out, 2, "Follow-ups");
    if let Some(t) = format::follow_ups_table(r) {
        table(out, &t);
    }
}

/// A code fence longer than any run of backticks in `body`.
fn fence(body: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for c in body.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    "`".repeat((longest + 1).max(3))
}

fn timeline(out: &mut String, r: &Report) {
    heading(out, 2, &format!("Timeline ({})", r.timeline_scope));
    if r.timeline.is_empty() {
        para(out, "Nothing happened yet.");
        return;
    }
    let mut body = String::new();
    for e in &r.timeline {
        for (i, line) in e.lines.iter().enumerate() {
            let at = if i == 0 { e.since_start.as_str() } else { "" };
            let indent = if i == 0 { "" } else { "  " };
            let _ = writeln!(body, "{at:>10}  {indent}{line}");
        }
    }
    let f = fence(&body);
    let _ = writeln!(out, "{f}text\n{body}{f}");
}
