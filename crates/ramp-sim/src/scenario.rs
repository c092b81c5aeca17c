//! Synthetic traffic for `ramp simulate`: a TOML file describing users, request rate, each
//! variant's behaviour, changes over time and signals.

use ramp_core::evidence::Signal;
use ramp_core::plan::Severity;
use ramp_core::time::{Millis, parse_duration};
use serde::Deserialize;
use std::fmt;

/// A scenario file that could not be used.
#[derive(Debug, thiserror::Error)]
pub struct ScenarioError {
    /// File name.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub col: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.col) {
            (Some(l), Some(c)) => write!(f, "{}:{l}:{c}: error: {}", self.file, self.message),
            _ => write!(f, "{}: error: {}", self.file, self.message),
        }
    }
}

/// Latency of a variant as two quantiles (a log-normal distribution is fitted through them).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LatencySpec {
    /// Median, ms.
    pub p50: f64,
    /// 95th percentile, ms.
    pub p95: f64,
}

/// How one variant behaves. Shares are fractions of requests.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VariantSpec {
    /// Share answered 5xx.
    #[serde(default)]
    pub error_rate: f64,
    /// Share answered 429.
    #[serde(default)]
    pub rate_limit_rate: f64,
    /// Share answered 401/403.
    #[serde(default)]
    pub auth_failure_rate: f64,
    /// Share answered another 4xx (neither error nor success).
    #[serde(default)]
    pub client_error_rate: f64,
    /// Latency.
    pub latency_ms: LatencySpec,
    /// True when the upstream is down: every request fails to connect.
    #[serde(default)]
    pub down: bool,
}

/// A partial [`VariantSpec`] for `[[change]]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VariantPatch {
    /// See [`VariantSpec`].
    pub error_rate: Option<f64>,
    /// See [`VariantSpec`].
    pub rate_limit_rate: Option<f64>,
    /// See [`VariantSpec`].
    pub auth_failure_rate: Option<f64>,
    /// See [`VariantSpec`].
    pub client_error_rate: Option<f64>,
    /// See [`VariantSpec`].
    pub latency_ms: Option<LatencyPatch>,
    /// See [`VariantSpec`].
    pub down: Option<bool>,
}

/// A partial latency change.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LatencyPatch {
    /// Median, ms.
    pub p50: Option<f64>,
    /// 95th percentile, ms.
    pub p95: Option<f64>,
}

impl VariantSpec {
    /// Applies a patch.
    pub fn apply(&mut self, p: &VariantPatch) {
        if let Some(v) = p.error_rate {
            self.error_rate = v;
        }
        if let Some(v) = p.rate_limit_rate {
            self.rate_limit_rate = v;
        }
        if let Some(v) = p.auth_failure_rate {
            self.auth_failure_rate = v;
        }
        if let Some(v) = p.client_error_rate {
            self.client_error_rate = v;
        }
        if let Some(l) = p.latency_ms {
            if let Some(v) = l.p50 {
                self.latency_ms.p50 = v;
            }
            if let Some(v) = l.p95 {
                self.latency_ms.p95 = v;
            }
        }
        if let Some(d) = p.down {
            self.down = d;
        }
    }

    /// True when `self` is worse than `other` for users: more errors, 429s or auth failures,
    /// down, or a median or p95 more than 25% slower.
    pub fn worse_than(&self, other: &VariantSpec) -> bool {
        (self.down && !other.down)
            || self.error_rate > other.error_rate
            || self.rate_limit_rate > other.rate_limit_rate
            || self.auth_failure_rate > other.auth_failure_rate
            || self.latency_ms.p50 > other.latency_ms.p50 * 1.25
            || self.latency_ms.p95 > other.latency_ms.p95 * 1.25
    }

    fn validate(&self, what: &str) -> Result<(), String> {
        for (name, v) in [
            ("error_rate", self.error_rate),
            ("rate_limit_rate", self.rate_limit_rate),
            ("auth_failure_rate", self.auth_failure_rate),
            ("client_error_rate", self.client_error_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!(
                    "{what}.{name} must be a fraction in [0, 1], found {v}"
                ));
            }
        }
        let sum = self.error_rate
            + self.rate_limit_rate
            + self.auth_failure_rate
            + self.client_error_rate;
        if sum > 1.0 + 1e-12 {
            return Err(format!(
                "{what}: the shares of errors, 429s, 401/403s and other 4xx add up to more than 1"
            ));
        }
        let l = self.latency_ms;
        if !(l.p50 > 0.0 && l.p95 > l.p50 && l.p95.is_finite()) {
            return Err(format!(
                "{what}.latency_ms needs 0 < p50 < p95, found p50 = {}, p95 = {}",
                l.p50, l.p95
            ));
        }
        Ok(())
    }
}

/// A change to a variant from a point in time.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChangeSpec {
    /// Time since the rollout started, e.g. `"30h"`.
    pub at: String,
    /// Changes to stable.
    pub stable: Option<VariantPatch>,
    /// Changes to the canary.
    pub canary: Option<VariantPatch>,
}

/// A signal at a point in time.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SignalSpec {
    /// Time since the rollout started.
    pub at: String,
    /// pci_alert, security_alert, bug_report or feedback.
    pub kind: String,
    /// For security alerts.
    pub severity: Option<String>,
    /// For feedback, 0..1.
    pub score: Option<f64>,
    /// Free text.
    #[serde(default)]
    pub note: String,
    /// How many identical signals (default 1), spread one minute apart.
    #[serde(default = "one")]
    pub count: u32,
}

fn one() -> u32 {
    1
}

/// Feedback arriving at random from canary users while the canary has traffic.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FeedbackSpec {
    /// Average feedback per hour.
    pub per_hour: f64,
    /// Share of it that is positive.
    pub positive: f64,
}

/// The file as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    seed: Option<u64>,
    requests_per_second: f64,
    users: u32,
    description: Option<String>,
    duration: Option<String>,
    stable: VariantSpec,
    canary: VariantSpec,
    #[serde(default)]
    change: Vec<ChangeSpec>,
    #[serde(default)]
    signal: Vec<SignalSpec>,
    feedback: Option<FeedbackSpec>,
}

/// A validated scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Default seed (the command line may override it).
    pub seed: u64,
    /// Total requests per second across both variants.
    pub requests_per_second: f64,
    /// Distinct users; each request comes from one chosen uniformly at random.
    pub users: u32,
    /// Free text.
    pub description: Option<String>,
    /// Longest simulated time (default: the plan's longest possible duration plus an hour).
    pub duration: Option<Millis>,
    /// Stable at the start.
    pub stable: VariantSpec,
    /// Canary at the start.
    pub canary: VariantSpec,
    /// Changes, sorted by time.
    pub changes: Vec<(Millis, ChangeSpec)>,
    /// Signals, sorted by time.
    pub signals: Vec<(Millis, Signal)>,
    /// Random feedback.
    pub feedback: Option<FeedbackSpec>,
}

/// Parses and validates a scenario.
pub fn parse_scenario(src: &str, file: &str) -> Result<Scenario, ScenarioError> {
    let err = |line, col, message: String| ScenarioError {
        file: file.to_string(),
        line,
        col,
        message,
    };
    let raw: ScenarioFile = toml::from_str(src).map_err(|e| {
        let (line, col) = e
            .span()
            .map(|s| line_col(src, s.start))
            .map(|(l, c)| (Some(l), Some(c)))
            .unwrap_or((None, None));
        err(line, col, e.message().trim().to_string())
    })?;
    let plain = |m: String| err(None, None, m);
    if !(raw.requests_per_second > 0.0 && raw.requests_per_second <= 1_000_000.0) {
        return Err(plain("requests_per_second must be in (0, 1000000]".into()));
    }
    if raw.users == 0 || raw.users > 50_000_000 {
        return Err(plain("users must be between 1 and 50,000,000".into()));
    }
    raw.stable.validate("stable").map_err(plain)?;
    raw.canary.validate("canary").map_err(plain)?;
    let at = |s: &str, what: &str| {
        parse_duration(s).map_err(|e| plain(format!("{what}: at = {s:?}: {e}")))
    };
    let mut changes = Vec::new();
    let (mut st, mut ca) = (raw.stable.clone(), raw.canary.clone());
    let mut sorted = raw.change.clone();
    sorted.sort_by_key(|c| parse_duration(&c.at).unwrap_or(0));
    for c in &sorted {
        let t = at(&c.at, "[[change]]")?;
        if let Some(p) = &c.stable {
            st.apply(p);
            st.validate("stable (after a change)").map_err(plain)?;
        }
        if let Some(p) = &c.canary {
            ca.apply(p);
            ca.validate("canary (after a change)").map_err(plain)?;
        }
        changes.push((t, c.clone()));
    }
    let mut signals = Vec::new();
    for s in &raw.signal {
        let t = at(&s.at, "[[signal]]")?;
        let signal = match s.kind.as_str() {
            "pci_alert" => Signal::PciAlert {
                note: s.note.clone(),
            },
            "security_alert" => {
                let sev = s.severity.as_deref().unwrap_or("high");
                let severity = Severity::parse(sev).ok_or_else(|| {
                    plain(format!(
                        "[[signal]] severity {sev:?}: expected low, medium, high or critical"
                    ))
                })?;
                Signal::SecurityAlert {
                    severity,
                    note: s.note.clone(),
                }
            }
            "bug_report" => Signal::BugReport {
                note: s.note.clone(),
            },
            "feedback" => {
                let score = s
                    .score
                    .ok_or_else(|| plain("[[signal]] feedback needs a score in [0, 1]".into()))?;
                if !(0.0..=1.0).contains(&score) {
                    return Err(plain(format!(
                        "[[signal]] feedback score {score} is outside [0, 1]"
                    )));
                }
                Signal::Feedback {
                    score,
                    note: s.note.clone(),
                }
            }
            other => {
                return Err(plain(format!(
                    "[[signal]] kind {other:?}: expected pci_alert, security_alert, bug_report or feedback"
                )));
            }
        };
        if s.count == 0 || s.count > 100_000 {
            return Err(plain(
                "[[signal]] count must be between 1 and 100000".into(),
            ));
        }
        for i in 0..s.count {
            signals.push((t + i as u64 * 60_000, signal.clone()));
        }
    }
    signals.sort_by_key(|(t, _)| *t);
    if let Some(f) = &raw.feedback
        && !(f.per_hour >= 0.0 && f.per_hour <= 1e6 && (0.0..=1.0).contains(&f.positive))
    {
        return Err(plain(
            "[feedback] needs per_hour >= 0 and positive in [0, 1]".into(),
        ));
    }
    let duration = match &raw.duration {
        Some(d) => Some(at(d, "duration")?),
        None => None,
    };
    Ok(Scenario {
        seed: raw.seed.unwrap_or(1),
        requests_per_second: raw.requests_per_second,
        users: raw.users,
        description: raw.description,
        duration,
        stable: raw.stable,
        canary: raw.canary,
        changes,
        signals,
        feedback: raw.feedback,
    })
}

fn line_col(src: &str, at: usize) -> (usize, usize) {
    let at = at.min(src.len());
    let before = &src[..at];
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    (line, src[start..at].chars().count() + 1)
}
