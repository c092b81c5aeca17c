//! Time as data. The core never reads a clock: every function that needs "now" takes it as
//! an argument, in milliseconds on whatever timeline the caller uses (Unix time in `ramp
//! serve`, time since start in `ramp simulate`).

use std::fmt;

/// A point in time or a span of time, in milliseconds.
pub type Millis = u64;

/// One second in milliseconds.
pub const SECOND: Millis = 1_000;
/// One minute in milliseconds.
pub const MINUTE: Millis = 60 * SECOND;
/// One hour in milliseconds.
pub const HOUR: Millis = 60 * MINUTE;
/// One day in milliseconds.
pub const DAY: Millis = 24 * HOUR;

/// Why a duration did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing to parse.
    #[error("empty duration (expected something like \"24h\", \"90m\" or \"1h30m\")")]
    Empty,
    /// A number without a unit, or an unknown unit.
    #[error("bad unit in duration {0:?} (expected ms, s, m, h or d, e.g. \"24h\")")]
    BadUnit(String),
    /// Not a number where one was expected.
    #[error("bad number in duration {0:?} (expected e.g. \"24h\", \"90m\", \"1h30m\")")]
    BadNumber(String),
    /// Larger than ramp can represent.
    #[error("duration {0:?} is too long")]
    Overflow(String),
}

/// Parses a duration such as `24h`, `90m`, `1h30m`, `45s`, `250ms`, `2d` or `1.5h`.
pub fn parse_duration(text: &str) -> Result<Millis, DurationError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut total: f64 = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(DurationError::BadNumber(text.to_string()));
        }
        let number: f64 = rest[..num_len]
            .replace('_', "")
            .parse()
            .map_err(|_| DurationError::BadNumber(text.to_string()))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = rest[unit_len..].trim_start();
        let scale = match unit {
            "ms" => 1.0,
            "s" | "sec" => SECOND as f64,
            "m" | "min" => MINUTE as f64,
            "h" | "hr" => HOUR as f64,
            "d" | "day" | "days" => DAY as f64,
            _ => return Err(DurationError::BadUnit(text.to_string())),
        };
        total += number * scale;
    }
    if !total.is_finite() || total > 1e15 {
        return Err(DurationError::Overflow(text.to_string()));
    }
    Ok(total.round() as Millis)
}

/// Formats a span of time the way plans write it: `24h`, `1h30m`, `45s`, `250ms`, `72h`.
/// Spans of a minute or more drop their milliseconds.
pub fn format_duration(ms: Millis) -> String {
    if ms == 0 {
        return "0s".to_string();
    }
    if ms < SECOND {
        return format!("{ms}ms");
    }
    let mut out = String::new();
    let mut rest = ms;
    for (unit, name) in [(HOUR, "h"), (MINUTE, "m"), (SECOND, "s")] {
        let n = rest / unit;
        if n > 0 {
            out.push_str(&format!("{n}{name}"));
            rest -= n * unit;
        }
    }
    // Sub-second remainders only matter for short spans.
    if rest > 0 && ms < MINUTE {
        out.push_str(&format!("{rest}ms"));
    }
    out
}

/// A duration displayed with [`format_duration`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Human(pub Millis);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&format_duration(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plan_durations() {
        let table = [
            ("24h", 24 * HOUR),
            ("90m", 90 * MINUTE),
            ("1h30m", 90 * MINUTE),
            ("1h 30m", 90 * MINUTE),
            ("45s", 45 * SECOND),
            ("250ms", 250),
            ("2d", 2 * DAY),
            ("1.5h", 90 * MINUTE),
            ("0s", 0),
        ];
        for (text, want) in table {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_bad_durations() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert!(matches!(
            parse_duration("24"),
            Err(DurationError::BadUnit(_))
        ));
        assert!(matches!(
            parse_duration("24x"),
            Err(DurationError::BadUnit(_))
        ));
        assert!(matches!(
            parse_duration("h"),
            Err(DurationError::BadNumber(_))
        ));
        assert!(matches!(
            parse_duration("1..2h"),
            Err(DurationError::BadNumber(_))
        ));
        assert!(matches!(
            parse_duration("99999999999d"),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn formats_round_trip() {
        for ms in [
            1,
            999,
            SECOND,
            90 * MINUTE,
            DAY + 2 * HOUR + 5 * SECOND,
            3 * DAY,
        ] {
            assert_eq!(parse_duration(&format_duration(ms)), Ok(ms));
        }
        assert_eq!(format_duration(90 * MINUTE), "1h30m");
        assert_eq!(format_duration(24 * HOUR), "24h");
        assert_eq!(format_duration(3 * DAY), "72h");
        assert_eq!(format_duration(12 * HOUR + 29 * SECOND + 658), "12h29s");
        assert_eq!(format_duration(1_500), "1s500ms");
    }
}
