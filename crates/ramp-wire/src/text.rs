//! Wire types as terminal text: the live log of `ramp serve` and `ramp demo`, `ramp events`,
//! and `ramp simulate`'s timeline all print events through [`event_lines`].

use crate::v1::{Cause, Event, EventKind};
use ramp_core::time::{Human, Millis};

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

/// A share in basis points as a percentage (`5%`, `12.5%`).
fn share(bp: u16) -> String {
    match ramp_core::cohort::ShareBp::new(bp) {
        Some(s) => s.to_string(),
        None => format!("{bp}bp"),
    }
}

/// A journal entry as human lines (the first is the headline; the rest are details).
/// Feedback signals give no line (they are counted, not narrated).
/// `origin` is the rollout's start, so absolute times print as time since start.
pub fn event_lines(e: &Event, origin: Millis) -> Vec<String> {
    let phase = &e.phase;
    match &e.kind {
        EventKind::Started => vec!["▶ rollout started".into()],
        EventKind::PhaseStarted { share: s } => {
            vec![format!(
                "▶ phase {phase} started: {} of users on the canary",
                share(*s)
            )]
        }
        EventKind::GateChecked { outcome, verdicts } => {
            let mut lines = vec![format!("◆ gate {phase}: {}", outcome.label())];
            for v in verdicts {
                lines.push(format!(
                    "{:<12} {} — {}",
                    v.outcome.label(),
                    v.criterion,
                    v.explanation
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
        EventKind::SignalReceived { signal, from, .. } => {
            if signal.kind() == "feedback" {
                Vec::new()
            } else if let Some(from) = from {
                vec![format!("⚑ signal: {} (from {from})", signal.describe())]
            } else {
                vec![format!("⚑ signal: {}", signal.describe())]
            }
        }
        EventKind::SignalRepeated { key, .. } => {
            vec![format!("⚑ repeated signal not counted again ({key})")]
        }
        EventKind::TriggerFired {
            trigger,
            explanation,
            ..
        } => vec![format!("✖ trigger {trigger} FIRED — {explanation}")],
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
                "↓ ROLLED BACK ({why}): canary share {} → 0%, all users on stable",
                share(*share_before)
            )]
        }
        EventKind::Held { reason, .. } => vec![format!(
            "■ HOLDING at the current share, waiting for a person: {reason}"
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

    #[test]
    fn shares_read_as_percentages() {
        assert_eq!(share(500), "5%");
        assert_eq!(share(10_000), "100%");
    }
}
