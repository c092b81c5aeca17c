//! Text that comes from outside (signal notes, operator reasons) made safe before it is
//! journaled: card-number-like digit runs masked with the access log's normaliser (PCI DSS
//! 3.5.1: the journal is append-only, so a PAN written there could never be removed), and
//! control characters (ESC, CR, LF, NUL, BEL, ...) written as visible escapes, so a note can
//! neither forge a log line nor drive a terminal that shows `ramp events`.

use ramp_core::evidence::Signal;
use ramp_core::rollout::Command;
use std::fmt::Write;

/// `text` with PANs masked and control characters escaped (`\u{1b}`); tabs are kept.
pub fn text(text: &str) -> String {
    let masked = ramp_proxy::mask_pans(text);
    if !masked.chars().any(|c| c.is_control() && c != '\t') {
        return masked.into_owned();
    }
    let mut out = String::with_capacity(masked.len() + 8);
    for c in masked.chars() {
        if c.is_control() && c != '\t' {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// The signal with its note scrubbed.
pub fn signal(signal: Signal) -> Signal {
    match signal {
        Signal::PciAlert { note } => Signal::PciAlert { note: text(&note) },
        Signal::SecurityAlert { severity, note } => Signal::SecurityAlert {
            severity,
            note: text(&note),
        },
        Signal::BugReport { note } => Signal::BugReport { note: text(&note) },
        Signal::Feedback { score, note } => Signal::Feedback {
            score,
            note: text(&note),
        },
    }
}

/// The command with its reason (and who sent it) scrubbed.
pub fn command(command: Command) -> Command {
    match command {
        Command::Pause { by, reason } => Command::Pause {
            by: text(&by),
            reason: text(&reason),
        },
        Command::Resume { by } => Command::Resume { by: text(&by) },
        Command::Approve { by } => Command::Approve { by: text(&by) },
        Command::Promote { by, force, reason } => Command::Promote {
            by: text(&by),
            force,
            reason: text(&reason),
        },
        Command::Rollback { by, reason } => Command::Rollback {
            by: text(&by),
            reason: text(&reason),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_numbers_and_control_characters_never_reach_the_journal() {
        assert_eq!(
            text("card 4111 1111 1111 1111 in a debug log"),
            "card ************1111 in a debug log"
        );
        assert_eq!(
            text("ok\n2026-12-02 ROLLED BACK by admin\u{1b}[2J\u{7}\0"),
            "ok\\u{a}2026-12-02 ROLLED BACK by admin\\u{1b}[2J\\u{7}\\u{0}"
        );
        assert_eq!(text("tab\tkept, ünïcode kept"), "tab\tkept, ünïcode kept");
        assert_eq!(text("order 123456789012"), "order 123456789012");
        let s = signal(Signal::PciAlert {
            note: "PAN 5500-0000-0000-0004\r\n".into(),
        });
        assert_eq!(
            s,
            Signal::PciAlert {
                note: "PAN ************0004\\u{d}\\u{a}".into()
            }
        );
        let c = command(Command::Rollback {
            by: "ana".into(),
            reason: "customer 4111111111111111 double-charged".into(),
        });
        assert_eq!(
            c,
            Command::Rollback {
                by: "ana".into(),
                reason: "customer ************1111 double-charged".into()
            }
        );
    }
}
