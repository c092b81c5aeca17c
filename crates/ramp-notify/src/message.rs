//! A notice as people read it: a subject, plain text, HTML and Slack blocks, all carrying the
//! same numbers (phase and share, per-variant error rate, success rate and p95 with their n,
//! every gate's verdict with observed value, bound, threshold and the requests still needed,
//! and for a rollback its blast radius) — the numbers `ramp status` shows.

use ramp_core::report::{count, ms, pct};
use ramp_core::time::Human;
use ramp_store::OutboxEntry;
use ramp_wire::text::utc;
use ramp_wire::v1::{NoticeNumbers, NotifyKind, Outcome, VariantNumbers, Verdict};
use serde_json::{Value, json};

/// A share in basis points as a percentage.
fn share(bp: u16) -> String {
    match ramp_core::cohort::ShareBp::new(bp) {
        Some(s) => s.to_string(),
        None => format!("{bp}bp"),
    }
}

fn urgency(kind: NotifyKind) -> &'static str {
    match kind {
        NotifyKind::Critical => "CRITICAL",
        NotifyKind::Summary => "report",
        NotifyKind::Status => "status",
    }
}

/// `[ramp] CRITICAL payments-backend: …`: one line for an e-mail subject or a page.
pub fn subject(e: &OutboxEntry) -> String {
    let line = format!(
        "[ramp] {} {}: {}",
        urgency(e.notice.kind),
        e.rollout,
        e.notice.headline
    );
    line.chars().filter(|c| !c.is_control()).take(200).collect()
}

fn p95(v: &VariantNumbers) -> String {
    v.p95_ms.map_or_else(|| "-".to_string(), ms)
}

/// The per-variant table: requests, error rate (errors/attempts), success rate, p95, users.
pub fn variant_rows(n: &NoticeNumbers) -> Vec<[String; 6]> {
    let row = |name: &str, v: &VariantNumbers| {
        [
            name.to_string(),
            count(v.requests),
            format!(
                "{} ({}/{})",
                pct(v.error_rate),
                count(v.errors),
                count(v.attempts)
            ),
            format!(
                "{} ({}/{})",
                pct(v.success_rate),
                count(v.successes),
                count(v.requests)
            ),
            p95(v),
            count(v.users),
        ]
    };
    vec![row("stable", &n.stable), row("canary", &n.canary)]
}

/// Column titles of [`variant_rows`].
pub const VARIANT_COLUMNS: [&str; 6] =
    ["", "requests", "error rate", "success rate", "p95", "users"];

/// A verdict as one line: outcome, criterion, and its explanation with the numbers.
pub fn verdict_line(v: &Verdict) -> String {
    let mut s = format!(
        "{:<12} {}: {}",
        v.outcome.label(),
        v.criterion,
        v.explanation
    );
    // The explanation says how much more evidence an inconclusive verdict needs, in the
    // verdict's own unit (requests, feedback); only when it does not is the count added.
    if let (Outcome::Inconclusive, Some(n)) = (v.outcome, v.needed)
        && !v.explanation.contains("more ")
    {
        s.push_str(&format!(" (about {} more samples needed)", count(n)));
    }
    if v.scope.is_some() {
        s.push_str(" [whole rollout]");
    }
    s
}

fn phase_line(n: &NoticeNumbers) -> String {
    format!(
        "{} in phase {} ({} of users), {} of {}",
        n.status.name(),
        n.phase_name,
        share(n.share),
        Human(n.phase_elapsed),
        Human(n.phase_duration)
    )
}

/// The notice as plain text (e-mail, webhook `text`, the CLI).
pub fn text(e: &OutboxEntry) -> String {
    let n = &e.notice;
    let mut out = vec![format!("{} — {}", urgency(n.kind), n.headline)];
    out.push(format!(
        "rollout {} · {} · notice {}",
        e.rollout,
        utc(e.at),
        crate::idempotency_key(e)
    ));
    if !n.groups.is_empty() {
        out.push(format!("to: {}", n.groups.join(", ")));
    }
    if let Some(nums) = &n.numbers {
        out.push(String::new());
        out.push(phase_line(nums));
        let rows = variant_rows(nums);
        let widths: Vec<usize> = (0..6)
            .map(|i| {
                rows.iter()
                    .map(|r| r[i].chars().count())
                    .chain([VARIANT_COLUMNS[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let fmt_row = |cells: Vec<String>| {
            cells
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        };
        out.push(fmt_row(
            VARIANT_COLUMNS.iter().map(|s| s.to_string()).collect(),
        ));
        for r in rows {
            out.push(fmt_row(r.to_vec()));
        }
        if !nums.verdicts.is_empty() {
            out.push(String::new());
            out.push("gates:".to_string());
            for v in &nums.verdicts {
                out.push(format!("  {}", verdict_line(v)));
            }
        }
        if let Some(b) = &nums.blast_radius {
            out.push(String::new());
            out.push(format!(
                "blast radius: {} canary requests, {} failed, about {} users, {} exposure at up to {} of users",
                count(b.canary_requests),
                count(b.failed_requests),
                count(b.users),
                Human(b.exposure_ms),
                share(b.share_before)
            ));
        }
        let s = &nums.signals;
        out.push(format!(
            "since the start: canary {} requests at {} errors; {} PCI alerts, {} security alerts (critical {}, high {}), {} feedback ({} positive)",
            count(nums.canary_total.requests),
            pct(nums.canary_total.error_rate),
            s.pci_alerts,
            s.security_alerts.iter().sum::<u64>(),
            s.security_alerts[3],
            s.security_alerts[2],
            s.feedback,
            s.feedback_positive
        ));
    }
    if let Some(link) = &n.link {
        out.push(String::new());
        out.push(format!("dashboard: {link}"));
    }
    out.join("\n")
}

/// Escapes text for HTML.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The notice as a small self-contained HTML document (e-mail).
pub fn html(e: &OutboxEntry) -> String {
    let n = &e.notice;
    let colour = match n.kind {
        NotifyKind::Critical => "#b00020",
        _ => "#1f4e79",
    };
    let mut h = String::new();
    h.push_str("<!doctype html><html><head><meta charset=\"utf-8\"></head><body style=\"font-family:sans-serif;font-size:14px\">");
    h.push_str(&format!(
        "<h2 style=\"color:{colour};margin:0 0 4px\">{}</h2><p style=\"color:#555;margin:0 0 12px\">rollout <b>{}</b> · {} · notice {}</p>",
        escape(&n.headline),
        escape(&e.rollout),
        escape(&utc(e.at)),
        escape(&crate::idempotency_key(e))
    ));
    if let Some(nums) = &n.numbers {
        h.push_str(&format!("<p>{}</p>", escape(&phase_line(nums))));
        h.push_str("<table style=\"border-collapse:collapse\"><tr>");
        for c in VARIANT_COLUMNS {
            h.push_str(&format!(
                "<th style=\"text-align:left;padding:2px 10px;border-bottom:1px solid #999\">{}</th>",
                escape(c)
            ));
        }
        h.push_str("</tr>");
        for r in variant_rows(nums) {
            h.push_str("<tr>");
            for c in r {
                h.push_str(&format!(
                    "<td style=\"padding:2px 10px\">{}</td>",
                    escape(&c)
                ));
            }
            h.push_str("</tr>");
        }
        h.push_str("</table>");
        if !nums.verdicts.is_empty() {
            h.push_str("<h3>Gates</h3><ul>");
            for v in &nums.verdicts {
                let c = match v.outcome {
                    Outcome::Pass => "#1b5e20",
                    Outcome::Fail => "#b00020",
                    Outcome::Inconclusive => "#8a6d00",
                };
                h.push_str(&format!(
                    "<li><b style=\"color:{c}\">{}</b> <code>{}</code>: {}</li>",
                    escape(v.outcome.label()),
                    escape(&v.criterion),
                    escape(
                        verdict_line(v)
                            .split_once(": ")
                            .map_or("", |(_, rest)| rest)
                    )
                ));
            }
            h.push_str("</ul>");
        }
    }
    let plain = text(e);
    let tail: Vec<&str> = plain
        .lines()
        .filter(|l| l.starts_with("blast radius:") || l.starts_with("since the start:"))
        .collect();
    for l in tail {
        h.push_str(&format!("<p>{}</p>", escape(l)));
    }
    if let Some(link) = &n.link {
        h.push_str(&format!(
            "<p><a href=\"{}\">Open the rollout in ramp</a></p>",
            escape(link)
        ));
    }
    h.push_str("</body></html>");
    h
}

/// Slack `mrkdwn` needs `&`, `<` and `>` escaped.
fn mrkdwn(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The notice as Slack Block Kit blocks.
pub fn slack_blocks(e: &OutboxEntry) -> Value {
    let n = &e.notice;
    let icon = match n.kind {
        NotifyKind::Critical => ":rotating_light:",
        NotifyKind::Summary => ":page_facing_up:",
        NotifyKind::Status => ":large_blue_circle:",
    };
    let mut blocks = vec![json!({
        "type": "section",
        "text": {"type": "mrkdwn", "text": format!("{icon} *{}*", mrkdwn(&n.headline))}
    })];
    if let Some(nums) = &n.numbers {
        let fields: Vec<Value> = variant_rows(nums)
            .into_iter()
            .map(|r| {
                json!({"type": "mrkdwn", "text": format!(
                    "*{}*  {} req\nerrors {}\nsuccess {}\np95 {}", r[0], r[1], r[2], r[3], r[4]
                )})
            })
            .collect();
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": mrkdwn(&phase_line(nums))},
            "fields": fields
        }));
        if !nums.verdicts.is_empty() {
            let lines: Vec<String> = nums
                .verdicts
                .iter()
                .map(|v| format!("• {}", mrkdwn(&verdict_line(v))))
                .collect();
            let mut text = lines.join("\n");
            if text.chars().count() > 2900 {
                text = text.chars().take(2900).collect::<String>() + "…";
            }
            blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": text}}));
        }
    }
    let plain = text(e);
    let extra: Vec<String> = plain
        .lines()
        .filter(|l| l.starts_with("blast radius:"))
        .map(mrkdwn)
        .collect();
    if !extra.is_empty() {
        blocks
            .push(json!({"type": "section", "text": {"type": "mrkdwn", "text": extra.join("\n")}}));
    }
    let mut context = format!(
        "rollout `{}` · {} · {}",
        mrkdwn(&e.rollout),
        utc(e.at),
        crate::idempotency_key(e)
    );
    if let Some(link) = &n.link {
        context.push_str(&format!(" · <{}|dashboard>", link.replace('|', "%7C")));
    }
    blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]}));
    Value::Array(blocks)
}

/// The status card a Slack thread's root message shows, updated in place with every notice.
pub fn slack_card(e: &OutboxEntry) -> Value {
    let n = &e.notice;
    let mut blocks = vec![json!({
        "type": "header",
        "text": {"type": "plain_text", "text": format!("ramp rollout {}", e.rollout).chars().take(150).collect::<String>()}
    })];
    if let Some(nums) = &n.numbers {
        let mut gates = [0u32; 3];
        for v in &nums.verdicts {
            gates[match v.outcome {
                Outcome::Pass => 0,
                Outcome::Inconclusive => 1,
                Outcome::Fail => 2,
            }] += 1;
        }
        blocks.push(json!({
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": format!("*Status*\n{}", nums.status.name())},
                {"type": "mrkdwn", "text": format!("*Phase*\n{} ({})", mrkdwn(&nums.phase_name), share(nums.share))},
                {"type": "mrkdwn", "text": format!("*Canary*\n{} errors · p95 {}", pct(nums.canary.error_rate), p95(&nums.canary))},
                {"type": "mrkdwn", "text": format!("*Stable*\n{} errors · p95 {}", pct(nums.stable.error_rate), p95(&nums.stable))},
                {"type": "mrkdwn", "text": format!("*Gates*\n{} pass · {} inconclusive · {} fail", gates[0], gates[1], gates[2])},
                {"type": "mrkdwn", "text": format!("*Latest*\n{}", mrkdwn(&n.headline).chars().take(200).collect::<String>())},
            ]
        }));
    }
    blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("updated {}", utc(e.at))}]}));
    Value::Array(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ramp_core::plan::parse_plan;
    use ramp_core::rollout::{Effect, Input, State, step};

    fn entry() -> OutboxEntry {
        let plan = parse_plan(
            "name = \"payments\"\n[[phase]]\nname = \"canary\"\ntraffic = \"5%\"\nduration = \"24h\"\nsuccess = [\"error_rate < 0.1%\"]\n",
            "p.toml",
        )
        .unwrap();
        let (state, fx) = step(&plan, State::new(&plan), Input::Start, 1_000);
        let n = fx
            .iter()
            .find_map(|e| match e {
                Effect::Notify(n) => Some(n.clone()),
                _ => None,
            })
            .unwrap();
        OutboxEntry {
            id: 7,
            rollout: plan.name.clone(),
            seq: 2,
            at: 1_000,
            notice: ramp_wire::v1::Notice::at(&plan, &state, &n),
            delivered_at: None,
            deliveries: Vec::new(),
        }
    }

    #[test]
    fn every_rendering_carries_the_numbers_and_the_key() {
        let e = entry();
        let t = text(&e);
        for want in [
            "phase canary",
            "stable",
            "canary",
            "error rate",
            "gates:",
            "error_rate < 0.1%",
            "ramp-payments-7",
        ] {
            assert!(t.contains(want), "{want:?} in {t}");
        }
        let h = html(&e);
        assert!(h.contains("<table") && h.contains("<b>payments</b>"), "{h}");
        assert!(
            h.contains("<code>error_rate &lt; 0.1%</code>"),
            "escaped: {h}"
        );
        assert_eq!(
            escape("<b>\"x\" & 'y'</b>"),
            "&lt;b&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/b&gt;"
        );
        let blocks = slack_blocks(&e);
        let blocks = blocks.as_array().unwrap();
        assert!(blocks.iter().all(|b| b["type"].is_string()));
        assert!(
            blocks
                .iter()
                .any(|b| b["fields"].as_array().is_some_and(|f| f.len() == 2))
        );
        let card = slack_card(&e);
        assert_eq!(card[0]["type"], "header");
        assert!(subject(&e).starts_with("[ramp] status payments: phase canary started"));
    }
}
