//! What the proxy (or the simulator) measures, per variant, per analysis window; and the
//! signals pushed in from outside. Both merge exactly, so windows from several replicas or
//! several intervals add up to the same evidence.

use super::class::Class;
use super::dispersion::{Assessment, DEFAULT_LEVEL, Dispersion};
use super::hll::UserSketch;
use super::sketch::LatencyHistogram;
use crate::plan::{Metric, POSITIVE_FEEDBACK, Severity};
use crate::time::Millis;
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
    /// Active health probes that found the variant down. They are evidence of its error rate
    /// (and success rate) only — a failed attempt each, so a canary that is down fails its
    /// error-rate triggers even without user traffic — and never requests: they carry no
    /// latency, no user and no status, so they do not dilute latency, rate-limit or
    /// auth-failure rates.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failed_probes: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
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
        self.failed_probes += other.failed_probes;
        if self.slow.len() < other.slow.len() {
            self.slow.resize(other.slow.len(), 0);
        }
        for (a, b) in self.slow.iter_mut().zip(&other.slow) {
            *a += b;
        }
        self.latency.merge(&other.latency);
        self.users.merge(&other.users);
    }

    /// Error rate as a fraction (0 when there were no requests), failed probes counted as
    /// failed attempts.
    pub fn error_rate(&self) -> f64 {
        let (x, n) = self.error_counts();
        ratio(x, n)
    }

    /// The error rate's counts: `(errors, attempts)`, failed health probes included in both.
    pub fn error_counts(&self) -> (u64, u64) {
        let n = self.requests.saturating_add(self.failed_probes);
        (
            self.errors
                .min(self.requests)
                .saturating_add(self.failed_probes),
            n,
        )
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
            Metric::ErrorRate => return Some(self.error_counts()),
            Metric::SuccessRate => return Some(self.judged()),
            Metric::RateLimitRate => self.rate_limited,
            Metric::AuthFailureRate => self.auth_failures,
            _ => return None,
        };
        Some((x.min(self.requests), self.requests))
    }

    /// The success rate's counts: `(successes, judged)`, where judged requests are those the
    /// variant is answerable for: successes, errors, 429s and 401/403s. Client mistakes (other
    /// 4xx) and requests the client gave up on are not the backend's doing (see
    /// [`super::class`]) and count for neither side.
    pub fn judged(&self) -> (u64, u64) {
        // A window cut between a request's count and its class's can hold a class alone: the
        // judged requests never exceed the requests.
        let judged = self
            .successes
            .saturating_add(self.errors)
            .saturating_add(self.rate_limited)
            .saturating_add(self.auth_failures)
            .min(self.requests);
        // A failed probe is a failed attempt the variant is answerable for.
        (
            self.successes.min(judged),
            judged.saturating_add(self.failed_probes),
        )
    }

    /// Judged requests that were not successes (the success-rate trigger's events).
    pub fn non_successes(&self) -> u64 {
        let (s, n) = self.judged();
        n - s
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
    /// The canary's rate counts per analysis interval, to see errors that cluster in time.
    #[serde(default)]
    pub clustering: Clustering,
}

/// Which canary rate a [`Clustering`] stream follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateStream {
    /// Errors per request.
    Errors,
    /// Failures per judged request (the success rate's complement).
    Failures,
    /// 429s per request.
    RateLimited,
    /// 401/403s per request.
    AuthFailures,
    /// Requests slower than the plan's latency threshold at this index.
    Slow(usize),
}

impl RateStream {
    fn index(self) -> usize {
        match self {
            RateStream::Errors => 0,
            RateStream::Failures => 1,
            RateStream::RateLimited => 2,
            RateStream::AuthFailures => 3,
            RateStream::Slow(i) => 4 + i,
        }
    }

    /// The stream a rate metric is judged on.
    pub fn of(metric: Metric) -> Option<Self> {
        Some(match metric {
            Metric::ErrorRate => RateStream::Errors,
            Metric::SuccessRate => RateStream::Failures,
            Metric::RateLimitRate => RateStream::RateLimited,
            Metric::AuthFailureRate => RateStream::AuthFailures,
            _ => return None,
        })
    }
}

/// The canary's counts of every rate stream in analysis-interval blocks, summarised by
/// [`Dispersion`] at several block lengths: how far the spread of the phase total is from the
/// binomial one when errors come in incidents. Fed by [`Evidence::add_window_at`]; windows of
/// any length (the shell's 100 ms trigger batches, or whole intervals) fill one block per
/// analysis interval.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Clustering {
    /// When the open block started.
    pub open_since: Option<Millis>,
    /// The open block's `(events, trials)` per stream.
    pub open: Vec<(u64, u64)>,
    /// One summary per stream (errors, failures, 429s, 401/403s, then one per latency
    /// threshold).
    pub streams: Vec<Dispersion>,
}

impl Clustering {
    /// Starts the first block at `at` (the phase's or the rollout's start).
    pub fn start(&mut self, at: Millis) {
        self.open_since = Some(at);
    }

    fn counts(v: &VariantStats) -> Vec<(u64, u64)> {
        let (s, f) = v.judged();
        let mut out = vec![
            v.error_counts(),
            (f.saturating_sub(s), f),
            (v.rate_limited.min(v.requests), v.requests),
            (v.auth_failures.min(v.requests), v.requests),
        ];
        out.extend(v.slow.iter().map(|&x| (x.min(v.requests), v.requests)));
        out
    }

    /// Adds a window of canary counts seen at `now`; closes the open block once it spans
    /// `interval`.
    pub fn add(&mut self, canary: &VariantStats, now: Millis, interval: Millis) {
        let counts = Self::counts(canary);
        if self.open.len() != counts.len() {
            self.open = vec![(0, 0); counts.len()];
            self.streams = vec![Dispersion::new(); counts.len()];
        }
        for (o, c) in self.open.iter_mut().zip(&counts) {
            o.0 += c.0;
            o.1 += c.1;
        }
        let since = *self.open_since.get_or_insert(now.saturating_sub(interval));
        if now >= since.saturating_add(interval.max(1)) {
            for (d, o) in self.streams.iter_mut().zip(&mut self.open) {
                d.add_window(o.0, o.1);
                *o = (0, 0);
            }
            self.open_since = Some(now);
        }
    }

    /// The dispersion test of one stream at [`DEFAULT_LEVEL`] (φ = 1 when it finds nothing or
    /// the stream has no summary yet).
    pub fn assess(&self, stream: RateStream) -> Assessment {
        match self.streams.get(stream.index()) {
            Some(d) => d.assess(DEFAULT_LEVEL),
            None => Dispersion::new().assess(DEFAULT_LEVEL),
        }
    }
}

impl Evidence {
    /// Empty evidence for a plan with `thresholds` latency thresholds.
    pub fn new(thresholds: usize) -> Self {
        Evidence {
            stable: VariantStats::new(thresholds),
            canary: VariantStats::new(thresholds),
            signals: SignalCounts::default(),
            clustering: Clustering::default(),
        }
    }

    /// Adds a metric window (without time: no clustering summary).
    pub fn add_window(&mut self, w: &MetricWindow) {
        self.stable.merge(&w.stable);
        self.canary.merge(&w.canary);
    }

    /// Adds a metric window seen at `now`, and its canary counts to the clustering summary in
    /// blocks of `interval`.
    pub fn add_window_at(&mut self, w: &MetricWindow, now: Millis, interval: Millis) {
        self.add_window(w);
        self.clustering.add(&w.canary, now, interval);
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
