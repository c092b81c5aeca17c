//! What the CLI prints: rollout statuses, journal pages, and `ramp serve`'s decision log.
//! The one module (with `main`) that writes to the terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use ramp_control::{Lifecycle, LogEntry};
use ramp_core::report::{ms, pct};
use ramp_core::time::{Human, Millis};
use ramp_wire::text::{clock, event_lines, utc};
use ramp_wire::v1;
use std::io::Write as _;

/// `println!` that never panics: a closed stdout (`ramp simulate ... | head`, a server whose
/// terminal went away) drops the output instead of aborting the command.
pub(crate) fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// A line on stdout (see [`out`]).
pub(crate) fn line(text: &str) {
    out(&format!("{text}\n"));
}

/// A line on stderr.
pub(crate) fn err_line(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

fn share(bp: u16) -> String {
    ramp_core::cohort::ShareBp::new(bp).map_or_else(|| format!("{bp}bp"), |s| s.to_string())
}

fn health(h: Option<v1::BackendHealth>) -> &'static str {
    match h {
        Some(v1::BackendHealth::Operational) => "operational",
        Some(v1::BackendHealth::Degraded) => "degraded",
        Some(v1::BackendHealth::Down) => "down",
        Some(v1::BackendHealth::Unknown) => "unknown",
        None => "-",
    }
}

fn health_word(h: v1::Health) -> &'static str {
    match h {
        v1::Health::Healthy => "healthy",
        v1::Health::Monitoring => "monitoring",
        v1::Health::Degraded => "degraded",
        v1::Health::Critical => "critical",
    }
}

/// A rollout's status for people.
pub(crate) fn status(s: &v1::RolloutStatus) -> String {
    let mut out = String::new();
    out += &format!(
        "{}  {}{}  health {}  phase {} ({}/{}{})  canary share {}  proxy {}\n",
        s.name,
        s.status.name(),
        if s.retired { " (retired)" } else { "" },
        health_word(s.health),
        s.phase_name,
        Human(s.phase_elapsed),
        Human(s.phase_duration),
        if s.extended { ", extended" } else { "" },
        share(s.share),
        s.listen,
    );
    if let Some(applied) = s.applied_share.filter(|&a| a != s.share) {
        out += &format!(
            "  ! the traffic split has {} in effect, not yet the decided share\n",
            share(applied)
        );
    }
    if let Some(e) = &s.journal_error {
        out += &format!("  ! JOURNAL FAILING: {}\n", e.escape_debug());
    }
    out += &format!(
        "  {:<7} {:>8} {:>11} {:>9} {:>9} {:>9} {:>8}  {}\n",
        "", "req/s", "requests", "errors", "p95", "success", "users", "backend"
    );
    for (name, v) in [("stable", &s.stable), ("canary", &s.canary)] {
        out += &format!(
            "  {:<7} {:>8.0} {:>11} {:>9} {:>9} {:>9} {:>8}  {}\n",
            name,
            v.rps,
            v.requests,
            pct(v.error_rate),
            v.p95_ms.map(ms).unwrap_or("-".into()),
            pct(v.success_rate),
            v.active_users,
            health(v.health),
        );
    }
    for v in &s.verdicts {
        out += &format!(
            "  {:<12} {} — {}\n",
            v.outcome.label(),
            v.criterion,
            v.explanation
        );
    }
    if let Some(r) = &s.reason {
        out += &format!("  reason: {r}\n");
    }
    for c in &s.channels {
        out += &format!(
            "  notices {:<16} {} delivered, {} pending, {} failed, {} retried{}\n",
            c.channel,
            c.delivered,
            c.pending,
            c.failed,
            c.retries,
            c.error
                .as_ref()
                .map(|e| format!("  ! {}", e.escape_debug()))
                .unwrap_or_default()
        );
    }
    out
}

/// A journal page for people: position, UTC time, and the event's lines.
/// A page of notices: one line each (time, urgency, headline), then one line per delivery;
/// `full` adds each notice's whole message.
pub(crate) fn notices(page: &v1::NoticePage, full: bool) -> String {
    let mut out = Vec::new();
    if page.notices.is_empty() {
        out.push(format!("no notices for {}", page.rollout));
    }
    for r in &page.notices {
        let kind = match r.notice.kind {
            v1::NotifyKind::Critical => "CRITICAL",
            v1::NotifyKind::Summary => "report",
            v1::NotifyKind::Status => "status",
        };
        out.push(format!(
            "#{} {} {:<8} {}",
            r.id,
            ramp_wire::text::utc(r.at),
            kind,
            r.notice.headline
        ));
        if !r.notice.groups.is_empty() {
            out.push(format!("     to {}", r.notice.groups.join(", ")));
        }
        for d in &r.deliveries {
            let mut line = format!(
                "     {:<16} {:<9} {} attempt{}",
                d.channel,
                d.state,
                d.attempts,
                if d.attempts == 1 { "" } else { "s" }
            );
            if let Some(at) = d.last_attempt_at {
                line.push_str(&format!(", last {}", ramp_wire::text::utc(at)));
            }
            if let Some(e) = &d.error {
                line.push_str(&format!(": {e}"));
            }
            out.push(line);
        }
        if full {
            let entry = ramp_store::OutboxEntry {
                id: r.id,
                rollout: page.rollout.clone(),
                seq: r.seq,
                at: r.at,
                notice: r.notice.clone(),
                delivered_at: r.logged_at,
                deliveries: Vec::new(),
            };
            for l in ramp_notify::message::text(&entry).lines() {
                out.push(format!("     | {l}"));
            }
        }
    }
    out.join("\n") + "\n"
}

pub(crate) fn events(page: &v1::EventPage) -> String {
    let mut out = String::new();
    for e in &page.events {
        for (i, l) in event_lines(&e.event, 0).into_iter().enumerate() {
            if i == 0 {
                out += &format!("{:>6}  {}  {l}\n", e.seq, utc(e.event.at));
            } else {
                out += &format!("{:>6}  {l}\n", "");
            }
        }
    }
    if let Some(next) = page.next {
        out += &format!("(more: --after {next})\n");
    }
    out
}

/// One entry of `ramp serve`'s decision log, as text lines or as one JSON object.
pub(crate) fn log_entry(rollout: &str, entry: &LogEntry<'_>, origin: Millis, json: bool) {
    if json {
        let value = match entry {
            LogEntry::Event(e) => serde_json::json!({"rollout": rollout, "event": e}),
            LogEntry::Notice(n) => serde_json::json!({
                "rollout": rollout,
                "notice": n.notice,
                "id": n.id,
                "seq": n.seq,
            }),
            LogEntry::Report(r) => serde_json::json!({"rollout": rollout, "report": r}),
            LogEntry::ReportWritten(r, paths) => serde_json::json!({
                "rollout": rollout,
                "report": r,
                "written": paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            }),
            LogEntry::StoreError(e) => {
                tracing::error!(rollout, "{e}");
                return;
            }
        };
        line(&value.to_string());
        return;
    }
    // Each entry is printed whole, so entries of several rollouts never interleave.
    let text = match entry {
        LogEntry::Event(e) => {
            let at = clock(e.at.saturating_sub(origin));
            let mut text = String::new();
            for (i, l) in event_lines(e, origin).into_iter().enumerate() {
                if i == 0 {
                    text += &format!("[{rollout}] {at}  {l}\n");
                } else {
                    text += &format!("               {l}\n");
                }
            }
            text
        }
        LogEntry::Notice(n) => format!(
            "           notify ({}): {}\n",
            match n.notice.kind {
                v1::NotifyKind::Status => "status",
                v1::NotifyKind::Summary => "summary",
                v1::NotifyKind::Critical => "critical",
            },
            n.notice.headline
        ),
        LogEntry::Report(r) => format!(
            "           report: {}\n",
            match r {
                v1::ReportKind::IncidentReview => "incident review",
                v1::ReportKind::Final => "final",
            }
        ),
        LogEntry::ReportWritten(r, paths) => format!(
            "           report written: {} ({})\n",
            match r {
                v1::ReportKind::IncidentReview => "incident review",
                v1::ReportKind::Final => "final report",
            },
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        LogEntry::StoreError(e) => {
            tracing::error!(rollout, "{e}");
            return;
        }
    };
    out(&text);
}

/// A lifecycle line of `ramp serve` as one JSON object (`--log-format json`).
/// What a TLS reload pass did: reloads on stdout (a line, or a JSON object), failures on
/// stderr.
pub(crate) fn tls_reloaded(reloaded: usize, failed: &[String], sighup: bool, json: bool) {
    if reloaded > 0 || sighup {
        if json {
            line(
                &serde_json::json!({
                    "lifecycle": "tls_reloaded",
                    "reloaded": reloaded,
                    "failed": failed.len(),
                    "sighup": sighup,
                })
                .to_string(),
            );
        } else {
            line(&format!(
                "ramp serve: TLS certificates reloaded ({reloaded} set{}{})",
                if reloaded == 1 { "" } else { "s" },
                if sighup { ", SIGHUP" } else { "" }
            ));
        }
    }
    for e in failed {
        err_line(&format!(
            "ramp serve: TLS reload failed, the previous certificate stays in use: {e}"
        ));
    }
}

pub(crate) fn lifecycle_json(event: &Lifecycle<'_>) {
    let value = match event {
        Lifecycle::Resumed(r) => match &r.outcome {
            Ok(at) => serde_json::json!({
                "lifecycle": "resumed",
                "rollout": r.name,
                "listen": at.listen.map(|a| a.to_string()),
                "moved_from": at.moved_from.map(|a| a.to_string()),
            }),
            Err(e) => serde_json::json!({
                "lifecycle": "not_resumed",
                "rollout": r.name,
                "error": e,
            }),
        },
        Lifecycle::Serving { api, rollouts } => serde_json::json!({
            "lifecycle": "serving",
            "api": format!("http://{api}"),
            "rollouts": rollouts
                .iter()
                .map(|r| serde_json::json!({"rollout": r.name, "listen": r.listen, "status": r.status}))
                .collect::<Vec<_>>(),
        }),
        Lifecycle::Stopped(rollouts) => serde_json::json!({
            "lifecycle": "stopped",
            "rollouts": rollouts
                .iter()
                .map(|r| serde_json::json!({"rollout": r.name, "status": r.status}))
                .collect::<Vec<_>>(),
        }),
    };
    line(&value.to_string());
}
