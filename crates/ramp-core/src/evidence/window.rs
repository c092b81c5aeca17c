//! What the proxy (or the simulator) measures, per variant, per analysis window; and the
//! signals pushed in from outside. Both merge exactly, so windows from several replicas or
//! several intervals add up to the same evidence.

use super::class::Class;
use super::hll::UserSketch;
use super::sketch::LatencyHistogram;
use crate::plan::{Metric, POSITIVE_FEEDBACK, Severity};
use serde::{Deserialize, Serialize};

/// Outcomes of one variant's requests over some span of time.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VariantStats {
    /// Every request that got an answer or failed.
    pub requests: u64,
    /// 5xx answers, upstream connect failures and upstream timeouts.
    pub errors: u64,
    /// 2xx and 3xx answers.
    pub successes: u64,
    /// 429 answers.
    pub rate_limited: u64,
    /// 401 and 403 answers.
    pub auth_failures: u64,
    /// Other 4xx answers: refused as the client's mistake (see [`super::class`]).
    #[serde(default)]
    pub client_errors: u64,
    /// Requests slower than each of the plan's latency thresholds
    /// ([`crate::plan::Plan::latency_thresholds_us`]), in the same order.
    pub slow: Vec<u64>,
    /// Latency distribution: display quantiles, and exact counts at bucket edges for
    /// `pNN_latency not worse than stable` (threshold gates use `slow`).
    pub latency: LatencyHistogram,
    /// Distinct users.
    pub users: UserSketch,
}

impl VariantStats {
    /// Empty stats with one exceedance counter per latency threshold.
    pub fn new(thresholds: usize) -> Self {
        VariantStats {
            slow: vec![0; thresholds],
            ..Default::default()
        }
    }

    /// Counts one request of this class (without latency or user; see [`super::class`]).
    pub fn count_request(&mut self, class: Class) {
        self.requests += 1;
        match class {
            Class::Error => self.errors += 1,
            Class::Success => self.successes += 1,
            Class::RateLimited => self.rate_limited += 1,
            Class::AuthFailure => self.auth_failures += 1,
            Class::ClientError => self.client_errors += 1,
            Class::Neither => {}
        }
    }

    /// Adds another span's outcomes to this one.
    pub fn merge(&mut self, other: &VariantStats) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.successes += other.successes;
        self.rate_limited += other.rate_limited;
        self.auth_failures += other.auth_failures;
        self.client_errors += other.client_errors;
        if self.slow.len() < other.slow.len() {
            self.slow.resize(other.slow.len(), 0);
        }
        for (a, b) in self.slow.iter_mut().zip(&other.slow) {
            *a += b;
        }
        self.latency.merge(&other.latency);
        self.users.merge(&other.users);
    }

    /// Error rate as a fraction (0 when there were no requests).
    pub fn error_rate(&self) -> f64 {
        ratio(self.errors, self.requests)
    }

    /// Success rate as a fraction.
    pub fn success_rate(&self) -> f64 {
        ratio(self.successes, self.requests)
    }

    /// Rate-limit rate as a fraction.
    pub fn rate_limit_rate(&self) -> f64 {
        ratio(self.rate_limited, self.requests)
    }

    /// Auth-failure rate as a fraction.
    pub fn auth_failure_rate(&self) -> f64 {
        ratio(self.auth_failures, self.requests)
    }

    /// A latency quantile in milliseconds, from the display sketch.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        self.latency.quantile(q).map(|us| us as f64 / 1000.0)
    }

    /// Counts for a proxy-measured rate metric: (events, trials), where an event is the
    /// thing the metric counts (an error, a success, a 429, a 401/403). The events never exceed
    /// the trials: a span cut between a request's count and its class's (see the proxy's
    /// recorder) reads as at most every request having the class, never more.
    pub fn rate_counts(&self, metric: Metric) -> Option<(u64, u64)> {
        let x = match metric {
            Metric::ErrorRate => self.errors,
            Metric::SuccessRate => self.successes,
            Metric::RateLimitRate => self.rate_limited,
            Metric::AuthFailureRate => self.auth_failures,
            _ => return None,
        };
        Some((x.min(self.requests), self.requests))
    }

    /// Requests that were not successes (never more than the requests).
    pub fn non_successes(&self) -> u64 {
        self.requests.saturating_sub(self.successes)
    }
}

/// A fraction that is 0 for an empty denominator and never above 1.
pub fn ratio(x: u64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        x.min(n) as f64 / n as f64
    }
}

/// One analysis window: what each variant saw since the previous window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricWindow {
    /// Users on the current version.
    pub stable: VariantStats,
    /// Users on the new version.
    pub canary: VariantStats,
}

impl MetricWindow {
    /// An empty window for a plan with `thresholds` latency thresholds.
    pub fn new(thresholds: usize) -> Self {
        MetricWindow {
            stable: VariantStats::new(thresholds),
            canary: VariantStats::new(thresholds),
        }
    }
}

/// Something reported from outside the proxy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Signal {
    /// A PCI compliance alert.
    PciAlert {
        /// Free text from the reporter.
        #[serde(default)]
        note: String,
    },
    /// A security alert.
    SecurityAlert {
        /// How severe.
        severity: Severity,
        /// Free text from the reporter.
        #[serde(default)]
        note: String,
    },
    /// A bug report.
    BugReport {
        /// Free text from the reporter.
        #[serde(default)]
        note: String,
    },
    /// User feedback with a score from 0 (unhappy) to 1 (happy).
    Feedback {
        /// The score.
        score: f64,
        /// Free text from the reporter.
        #[serde(default)]
        note: String,
    },
}

impl Signal {
    /// The signal's kind as the API and scenarios name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Signal::PciAlert { .. } => "pci_alert",
            Signal::SecurityAlert { .. } => "security_alert",
            Signal::BugReport { .. } => "bug_report",
            Signal::Feedback { .. } => "feedback",
        }
    }

    /// A one-line description.
    pub fn describe(&self) -> String {
        let with_note = |s: String, note: &str| {
            if note.is_empty() {
                s
            } else {
                format!("{s}: {note}")
            }
        };
        match self {
            Signal::PciAlert { note } => with_note("PCI compliance alert".into(), note),
            Signal::SecurityAlert { severity, note } => {
                with_note(format!("{} security alert", severity.name()), note)
            }
            Signal::BugReport { note } => with_note("bug report".into(), note),
            Signal::Feedback { score, note } => with_note(format!("feedback {score:.2}"), note),
        }
    }
}

/// Signals counted exactly.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalCounts {
    /// PCI compliance alerts.
    pub pci_alerts: u64,
    /// Security alerts by severity (low, medium, high, critical).
    pub security: [u64; 4],
    /// Bug reports.
    pub bug_reports: u64,
    /// Feedback received.
    pub feedback: u64,
    /// Feedback that was positive (score >= [`POSITIVE_FEEDBACK`]).
    pub feedback_positive: u64,
}

impl SignalCounts {
    /// Counts one signal.
    pub fn add(&mut self, signal: &Signal) {
        match signal {
            Signal::PciAlert { .. } => self.pci_alerts += 1,
            Signal::SecurityAlert { severity, .. } => self.security[severity.index()] += 1,
            Signal::BugReport { .. } => self.bug_reports += 1,
            Signal::Feedback { score, .. } => {
                self.feedback += 1;
                if *score >= POSITIVE_FEEDBACK {
                    self.feedback_positive += 1;
                }
            }
        }
    }

    /// Security alerts at or above a severity.
    pub fn security_at_least(&self, min: Severity) -> u64 {
        self.security[min.index()..].iter().sum()
    }

    /// The exact count for a count metric.
    pub fn count(&self, metric: Metric) -> Option<u64> {
        match metric {
            Metric::PciAlerts => Some(self.pci_alerts),
            Metric::SecurityAlerts(s) => Some(self.security_at_least(s)),
            Metric::BugReports => Some(self.bug_reports),
            _ => None,
        }
    }
}

/// Everything known about the current phase: merged windows and the phase's signals.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// Merged stable windows.
    pub stable: VariantStats,
    /// Merged canary windows.
    pub canary: VariantStats,
    /// Signals received during the phase.
    pub signals: SignalCounts,
}

impl Evidence {
    /// Empty evidence for a plan with `thresholds` latency thresholds.
    pub fn new(thresholds: usize) -> Self {
        Evidence {
            stable: VariantStats::new(thresholds),
            canary: VariantStats::new(thresholds),
            signals: SignalCounts::default(),
        }
    }

    /// Adds a metric window.
    pub fn add_window(&mut self, w: &MetricWindow) {
        self.stable.merge(&w.stable);
        self.canary.merge(&w.canary);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_windows_adds_counts() {
        let mut a = VariantStats::new(2);
        a.requests = 10;
        a.errors = 1;
        a.slow = vec![3, 1];
        a.latency.record(1000);
        a.users.insert_hash(1);
        let mut b = a.clone();
        b.users.insert_hash(2);
        a.merge(&b);
        assert_eq!(a.requests, 20);
        assert_eq!(a.errors, 2);
        assert_eq!(a.slow, vec![6, 2]);
        assert_eq!(a.latency.count(), 2);
        assert_eq!(a.users.estimate(), 2);
        assert!((a.error_rate() - 0.1).abs() < 1e-12);
    }

    #[test]
    fn counts_signals_by_kind_and_severity() {
        let mut c = SignalCounts::default();
        c.add(&Signal::PciAlert {
            note: String::new(),
        });
        c.add(&Signal::SecurityAlert {
            severity: Severity::High,
            note: String::new(),
        });
        c.add(&Signal::SecurityAlert {
            severity: Severity::Critical,
            note: String::new(),
        });
        c.add(&Signal::Feedback {
            score: 0.9,
            note: String::new(),
        });
        c.add(&Signal::Feedback {
            score: 0.2,
            note: String::new(),
        });
        assert_eq!(c.count(Metric::PciAlerts), Some(1));
        assert_eq!(c.count(Metric::SecurityAlerts(Severity::Low)), Some(2));
        assert_eq!(c.count(Metric::SecurityAlerts(Severity::Critical)), Some(1));
        assert_eq!((c.feedback, c.feedback_positive), (2, 1));
    }

    #[test]
    fn signals_round_trip_as_json() {
        let s = Signal::SecurityAlert {
            severity: Severity::Critical,
            note: "CVE".into(),
        };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(
            json,
            r#"{"kind":"security_alert","severity":"critical","note":"CVE"}"#
        );
        let back: Signal = serde_json::from_str(r#"{"kind":"pci_alert"}"#).unwrap();
        assert_eq!(
            back,
            Signal::PciAlert {
                note: String::new()
            }
        );
    }
}
