//! Criteria as the plan writes them: `"error_rate < 0.1%"`, `"p95_latency <= baseline"`,
//! `"pci_alerts == 0"`, `"error_rate not worse than stable"`, `"satisfaction >= 90%"`.
//!
//! Grammar (whitespace between tokens is free):
//! ```text
//! criterion := metric op value
//!            | metric "not worse than stable" [ "by" value ]
//! metric    := name [ "[" severity "]" ]        severity: low | medium | high | critical
//! op        := "<" | "<=" | ">" | ">=" | "=="
//! value     := number [ "%" | "ms" | "s" ] | "baseline"
//! ```

use serde::{Deserialize, Serialize};
use std::fmt;

/// How severe a security alert is. Ordered: `Low < Medium < High < Critical`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Informational or low risk.
    Low,
    /// Medium risk.
    Medium,
    /// High risk.
    High,
    /// A critical vulnerability: the seed plan rolls back on one.
    Critical,
}

impl Severity {
    /// All severities, lowest first.
    pub const ALL: [Severity; 4] = [
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    /// The name used in plans and the API.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// Parses a severity name (case-insensitive).
    pub fn parse(text: &str) -> Option<Severity> {
        Severity::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(text.trim()))
    }

    /// Index into per-severity arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What a metric is made of, which decides how evidence about it is weighed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// A share of requests (or of feedback), judged with exact binomial bounds.
    Rate,
    /// A latency quantile, judged as the share of requests slower than the threshold.
    Latency,
    /// A count of signals, judged exactly.
    Count,
    /// Distinct users, counted.
    Users,
}

/// A measurable quantity a criterion can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Share of requests answered 5xx, or that failed to reach the upstream / timed out.
    ErrorRate,
    /// Share of requests answered 2xx or 3xx.
    SuccessRate,
    /// Share of requests answered 429.
    RateLimitRate,
    /// Share of requests answered 401 or 403.
    AuthFailureRate,
    /// A latency quantile, in per-mille (950 = p95).
    Latency(u16),
    /// PCI compliance alerts received.
    PciAlerts,
    /// Security alerts received at or above a severity.
    SecurityAlerts(Severity),
    /// Bug reports received.
    BugReports,
    /// Share of user feedback that is positive (score >= 0.75 on a 0..1 scale).
    Satisfaction,
    /// Distinct users who reached the canary in this phase.
    ActiveUsers,
}

/// Every metric name a plan may use, for error messages and suggestions.
pub const METRIC_NAMES: &[&str] = &[
    "error_rate",
    "success_rate",
    "rate_limit_rate",
    "auth_failure_rate",
    "p50_latency",
    "p90_latency",
    "p95_latency",
    "p99_latency",
    "p999_latency",
    "pci_alerts",
    "security_alerts",
    "bug_reports",
    "satisfaction",
    "active_users",
];

/// Feedback with a score at or above this counts as positive for `satisfaction`.
pub const POSITIVE_FEEDBACK: f64 = 0.75;

impl Metric {
    /// Parses a metric name such as `p95_latency` or `security_alerts[critical]`.
    pub fn parse(name: &str) -> Option<Metric> {
        let name = name.trim();
        if let Some(rest) = name.strip_prefix("security_alerts") {
            let rest = rest.trim();
            if rest.is_empty() {
                return Some(Metric::SecurityAlerts(Severity::Low));
            }
            let inner = rest.strip_prefix('[')?.strip_suffix(']')?;
            return Severity::parse(inner).map(Metric::SecurityAlerts);
        }
        Some(match name {
            "error_rate" => Metric::ErrorRate,
            "success_rate" => Metric::SuccessRate,
            "rate_limit_rate" => Metric::RateLimitRate,
            "auth_failure_rate" => Metric::AuthFailureRate,
            "p50_latency" => Metric::Latency(500),
            "p90_latency" => Metric::Latency(900),
            "p95_latency" => Metric::Latency(950),
            "p99_latency" => Metric::Latency(990),
            "p999_latency" => Metric::Latency(999),
            "pci_alerts" => Metric::PciAlerts,
            "bug_reports" => Metric::BugReports,
            "satisfaction" => Metric::Satisfaction,
            "active_users" => Metric::ActiveUsers,
            _ => return None,
        })
    }

    /// The name as plans write it.
    pub fn name(self) -> String {
        match self {
            Metric::ErrorRate => "error_rate".into(),
            Metric::SuccessRate => "success_rate".into(),
            Metric::RateLimitRate => "rate_limit_rate".into(),
            Metric::AuthFailureRate => "auth_failure_rate".into(),
            Metric::Latency(q) if q % 10 == 0 => format!("p{}_latency", q / 10),
            Metric::Latency(q) => format!("p{q}_latency"),
            Metric::PciAlerts => "pci_alerts".into(),
            Metric::SecurityAlerts(Severity::Low) => "security_alerts".into(),
            Metric::SecurityAlerts(s) => format!("security_alerts[{}]", s.name()),
            Metric::BugReports => "bug_reports".into(),
            Metric::Satisfaction => "satisfaction".into(),
            Metric::ActiveUsers => "active_users".into(),
        }
    }

    /// How the metric is weighed.
    pub fn kind(self) -> MetricKind {
        match self {
            Metric::ErrorRate
            | Metric::SuccessRate
            | Metric::RateLimitRate
            | Metric::AuthFailureRate
            | Metric::Satisfaction => MetricKind::Rate,
            Metric::Latency(_) => MetricKind::Latency,
            Metric::PciAlerts | Metric::SecurityAlerts(_) | Metric::BugReports => MetricKind::Count,
            Metric::ActiveUsers => MetricKind::Users,
        }
    }

    /// True when larger values are better (success rate, satisfaction, active users).
    pub fn higher_is_better(self) -> bool {
        matches!(
            self,
            Metric::SuccessRate | Metric::Satisfaction | Metric::ActiveUsers
        )
    }

    /// True when the proxy measures it per variant (so it can be compared with stable).
    pub fn per_variant(self) -> bool {
        matches!(
            self,
            Metric::ErrorRate
                | Metric::SuccessRate
                | Metric::RateLimitRate
                | Metric::AuthFailureRate
                | Metric::Latency(_)
                | Metric::ActiveUsers
        )
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// A comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// `<`
    #[serde(rename = "<")]
    Lt,
    /// `<=`
    #[serde(rename = "<=")]
    Le,
    /// `>`
    #[serde(rename = ">")]
    Gt,
    /// `>=`
    #[serde(rename = ">=")]
    Ge,
    /// `==`
    #[serde(rename = "==")]
    Eq,
}

impl Op {
    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Eq => "==",
        }
    }

    /// True for `<` and `<=`.
    pub fn is_upper_limit(self) -> bool {
        matches!(self, Op::Lt | Op::Le)
    }

    /// True for `>` and `>=`.
    pub fn is_lower_limit(self) -> bool {
        matches!(self, Op::Gt | Op::Ge)
    }

    /// Applies the comparison to two numbers.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Op::Lt => value < threshold,
            Op::Le => value <= threshold,
            Op::Gt => value > threshold,
            Op::Ge => value >= threshold,
            Op::Eq => value == threshold,
        }
    }
}

/// What a criterion asks of its metric.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Test {
    /// `metric op threshold`. Thresholds are fractions for rates (0.001 = 0.1%),
    /// milliseconds for latencies and plain numbers for counts.
    Compare {
        /// The comparison.
        op: Op,
        /// The threshold in the metric's unit.
        threshold: f64,
        /// True when the plan wrote `baseline` and the value came from `[baseline]`.
        from_baseline: bool,
    },
    /// `metric not worse than stable [by margin]`: canary minus stable (or stable minus canary
    /// for metrics where higher is better) is at most `margin`, measured over the same window.
    NotWorseThanStable {
        /// Allowed difference, as a fraction.
        margin: f64,
    },
    /// `pNN_latency not worse than stable [by 10% | by 20ms]`: the canary's quantile is at most
    /// stable's times `1 + relative`, plus `absolute_ms`, measured over the same window.
    LatencyNotWorseThanStable {
        /// Allowed relative excess (0.1 = 10% slower).
        relative: f64,
        /// Allowed absolute excess in milliseconds.
        absolute_ms: f64,
    },
}

/// Allowed relative excess of `pNN_latency not worse than stable` written without `by`.
pub(crate) const DEFAULT_LATENCY_MARGIN: f64 = 0.10;

/// A parsed criterion, with the text it came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Criterion {
    /// The criterion as the plan wrote it.
    pub text: String,
    /// The metric it is about.
    pub metric: Metric,
    /// What it asks.
    pub test: Test,
}

impl Criterion {
    /// The latency threshold in microseconds, when this criterion needs an exceedance counter.
    pub fn latency_threshold_us(&self) -> Option<u64> {
        match (self.metric, &self.test) {
            (Metric::Latency(_), Test::Compare { threshold, .. }) => {
                Some((threshold * 1000.0).round() as u64)
            }
            _ => None,
        }
    }
}

impl fmt::Display for Criterion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A threshold value as written, before it is checked against its metric.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RawValue {
    /// A number with an optional unit.
    Number {
        /// The number.
        value: f64,
        /// The unit written after it.
        unit: Unit,
    },
    /// The word `baseline`.
    Baseline,
}

/// A unit written after a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// No unit.
    None,
    /// `%`
    Percent,
    /// `ms`
    Millis,
    /// `s`
    Seconds,
}

/// The syntactic parts of a criterion, before validation against the plan.
#[derive(Clone, Debug, PartialEq)]
pub struct RawCriterion {
    /// The metric name as written, and its byte offset in the text.
    pub metric: (String, usize),
    /// The comparison, or `None` for `not worse than stable`.
    pub op: Option<Op>,
    /// The value (threshold or margin) and its byte offset, if one was written.
    pub value: Option<(RawValue, usize)>,
}

/// A syntax error inside a criterion string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    /// Byte offset into the criterion text.
    pub offset: usize,
    /// What was wrong.
    pub message: String,
}

/// Splits a criterion into metric, operator and value. Checks only syntax.
pub fn parse_raw(text: &str) -> Result<RawCriterion, SyntaxError> {
    let bytes = text.as_bytes();
    let mut i = skip_ws(bytes, 0);
    let metric_start = i;
    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
        i += 1;
    }
    if i < bytes.len() && bytes[i] == b'[' {
        match text[i..].find(']') {
            Some(close) => i += close + 1,
            None => {
                return Err(SyntaxError {
                    offset: i,
                    message: "missing `]` after the severity".into(),
                });
            }
        }
    }
    if i == metric_start {
        return Err(SyntaxError {
            offset: metric_start,
            message: "expected a metric name such as `error_rate` or `p95_latency`".into(),
        });
    }
    let metric = (text[metric_start..i].to_string(), metric_start);
    i = skip_ws(bytes, i);
    let rest = &text[i..];
    const NWTS: &str = "not worse than stable";
    if rest.starts_with("not ") || rest.starts_with("not\t") {
        let normalized: String = rest.split_whitespace().collect::<Vec<_>>().join(" ");
        if !normalized.starts_with(NWTS) {
            return Err(SyntaxError {
                offset: i,
                message: "expected `not worse than stable`".into(),
            });
        }
        // Advance past the four words.
        let mut j = i;
        for _ in 0..4 {
            j = skip_ws(bytes, j);
            while j < bytes.len() && !bytes[j].is_ascii_whitespace() {
                j += 1;
            }
        }
        j = skip_ws(bytes, j);
        if j == bytes.len() {
            return Ok(RawCriterion {
                metric,
                op: None,
                value: None,
            });
        }
        if !text[j..].starts_with("by") {
            return Err(SyntaxError {
                offset: j,
                message: "expected the end, or `by` and a margin such as `by 0.1%`".into(),
            });
        }
        let k = skip_ws(bytes, j + 2);
        let (value, end) = parse_value(text, k)?;
        expect_end(bytes, end)?;
        return Ok(RawCriterion {
            metric,
            op: None,
            value: Some((value, k)),
        });
    }
    let (op, len) = if rest.starts_with("<=") {
        (Op::Le, 2)
    } else if rest.starts_with(">=") {
        (Op::Ge, 2)
    } else if rest.starts_with("==") {
        (Op::Eq, 2)
    } else if rest.starts_with('<') {
        (Op::Lt, 1)
    } else if rest.starts_with('>') {
        (Op::Gt, 1)
    } else if rest.starts_with('=') {
        return Err(SyntaxError {
            offset: i,
            message: "expected `==` (a single `=` is not a comparison)".into(),
        });
    } else {
        return Err(SyntaxError {
            offset: i,
            message: "expected a comparison (<, <=, >, >=, ==) or `not worse than stable`".into(),
        });
    };
    let k = skip_ws(bytes, i + len);
    let (value, end) = parse_value(text, k)?;
    expect_end(bytes, end)?;
    Ok(RawCriterion {
        metric,
        op: Some(op),
        value: Some((value, k)),
    })
}

fn skip_ws(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && bytes[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

fn expect_end(bytes: &[u8], i: usize) -> Result<(), SyntaxError> {
    let j = skip_ws(bytes, i);
    if j < bytes.len() {
        return Err(SyntaxError {
            offset: j,
            message: "unexpected text after the value".into(),
        });
    }
    Ok(())
}

fn parse_value(text: &str, start: usize) -> Result<(RawValue, usize), SyntaxError> {
    let bytes = text.as_bytes();
    if text[start..].starts_with("baseline") {
        return Ok((RawValue::Baseline, start + "baseline".len()));
    }
    let mut i = start;
    while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.' || bytes[i] == b'_') {
        i += 1;
    }
    if i == start {
        return Err(SyntaxError {
            offset: start,
            message: "expected a number (e.g. `0.1%`, `200ms`, `0`) or `baseline`".into(),
        });
    }
    let value: f64 = text[start..i]
        .replace('_', "")
        .parse()
        .map_err(|_| SyntaxError {
            offset: start,
            message: format!("`{}` is not a number", &text[start..i]),
        })?;
    let j = skip_ws(bytes, i);
    let rest = &text[j..];
    let (unit, end) = if rest.starts_with('%') {
        (Unit::Percent, j + 1)
    } else if rest.starts_with("ms") {
        (Unit::Millis, j + 2)
    } else if rest.starts_with('s') && !rest[1..].starts_with(|c: char| c.is_alphanumeric()) {
        (Unit::Seconds, j + 1)
    } else {
        (Unit::None, i)
    };
    Ok((RawValue::Number { value, unit }, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_round_trip() {
        for name in METRIC_NAMES {
            let m = Metric::parse(name).unwrap();
            assert_eq!(&m.name(), name);
        }
        assert_eq!(
            Metric::parse("security_alerts[critical]"),
            Some(Metric::SecurityAlerts(Severity::Critical))
        );
        assert_eq!(
            Metric::SecurityAlerts(Severity::High).name(),
            "security_alerts[high]"
        );
        assert_eq!(Metric::parse("security_alerts[urgent]"), None);
        assert_eq!(Metric::parse("eror_rate"), None);
    }

    #[test]
    fn parses_seed_criteria() {
        let c = parse_raw("error_rate < 0.1%").unwrap();
        assert_eq!(c.metric.0, "error_rate");
        assert_eq!(c.op, Some(Op::Lt));
        assert_eq!(
            c.value.unwrap().0,
            RawValue::Number {
                value: 0.1,
                unit: Unit::Percent
            }
        );
        let c = parse_raw("p95_latency <= baseline").unwrap();
        assert_eq!(c.value.unwrap().0, RawValue::Baseline);
        let c = parse_raw("  pci_alerts==0 ").unwrap();
        assert_eq!(c.op, Some(Op::Eq));
        let c = parse_raw("error_rate not worse than stable").unwrap();
        assert_eq!(c.op, None);
        assert_eq!(c.value, None);
        let c = parse_raw("error_rate not  worse than stable by 0.05%").unwrap();
        assert_eq!(
            c.value.unwrap().0,
            RawValue::Number {
                value: 0.05,
                unit: Unit::Percent
            }
        );
        let c = parse_raw("security_alerts[critical] >= 1").unwrap();
        assert_eq!(c.metric.0, "security_alerts[critical]");
        let c = parse_raw("p99_latency > 1s").unwrap();
        assert_eq!(
            c.value.unwrap().0,
            RawValue::Number {
                value: 1.0,
                unit: Unit::Seconds
            }
        );
        let c = parse_raw("p99_latency > 250 ms").unwrap();
        assert_eq!(
            c.value.unwrap().0,
            RawValue::Number {
                value: 250.0,
                unit: Unit::Millis
            }
        );
    }

    #[test]
    fn syntax_errors_point_at_the_problem() {
        let table = [
            ("error_rate 0.1%", 11),
            ("error_rate = 0.1%", 11),
            ("error_rate < ", 13),
            ("error_rate < 0.1% please", 18),
            ("< 0.1%", 0),
            ("error_rate not better than stable", 11),
            ("error_rate not worse than stable with 1%", 33),
            ("security_alerts[critical >= 1", 15),
        ];
        for (text, offset) in table {
            let err = parse_raw(text).unwrap_err();
            assert_eq!(err.offset, offset, "{text}: {}", err.message);
        }
    }
}
