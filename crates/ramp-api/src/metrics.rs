//! `/metrics`: a prometheus-client collector that asks the control plane for current numbers on
//! every scrape (nothing is cached or double counted) and encodes them as OpenMetrics text.

use crate::plane::{JournalHealth, RolloutMetrics};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use ramp_core::evidence::VariantStats;
use ramp_core::evidence::sketch::bucket_upper;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (seconds) of the latency histogram's buckets.
pub(crate) const LE_SECONDS: [f64; 11] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The content type of the OpenMetrics exposition.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the Prometheus text exposition (format 0.0.4).
pub(crate) const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether a scraper's `Accept` header prefers OpenMetrics to the Prometheus text format
/// (by q-value; a tie goes to OpenMetrics, no header to the text format, which every scraper
/// and `curl` reads).
pub(crate) fn wants_openmetrics(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return false };
    let (mut open, mut text) = (0.0f64, 0.0f64);
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
            .find_map(|q| q.parse::<f64>().ok())
            .unwrap_or(1.0)
            .clamp(0.0, 1.0);
        match media.as_str() {
            "application/openmetrics-text" => open = open.max(q),
            "text/plain" | "text/*" => text = text.max(q),
            "*/*" => text = text.max(q),
            _ => {}
        }
    }
    open > 0.0 && open >= text
}

/// The OpenMetrics text `prometheus-client` writes, as Prometheus text format 0.0.4: a
/// counter's `HELP` and `TYPE` name its `_total` series, types 0.0.4 lacks become `gauge` or
/// `untyped`, and `# UNIT` and `# EOF` go (promtool and older scrapers reject them).
pub(crate) fn to_text_format(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, t)| *t == "counter")
        .map(|(name, _)| name)
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        if let Some((prefix, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            let name = if counters.contains(name) {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            let tail = if prefix == "# TYPE " {
                match tail {
                    "info" | "stateset" => "gauge",
                    "unknown" => "untyped",
                    "gaugehistogram" => "histogram",
                    t => t,
                }
            } else {
                tail
            };
            out.push_str(prefix);
            out.push_str(&name);
            out.push(' ');
            out.push_str(tail);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

type Source = Arc<dyn Fn() -> Vec<RolloutMetrics> + Send + Sync>;
type JournalSource = Arc<dyn Fn() -> JournalHealth + Send + Sync>;

/// Exports how the journal's storage is doing.
pub(crate) struct JournalCollector {
    source: JournalSource,
}

impl fmt::Debug for JournalCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JournalCollector").finish_non_exhaustive()
    }
}

impl Collector for JournalCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let h = (self.source)();
        {
            let mut metric = encoder.encode_descriptor(
                "ramp_journal_errors",
                "Journal operations that failed (a full, frozen or failing disk; a second writer).",
                None,
                MetricType::Counter,
            )?;
            for (op, n) in [("write", h.write_errors), ("read", h.read_errors)] {
                let labels: Labels = vec![("op", op.into())];
                metric
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
        }
        if let Some(at) = h.last_write_at {
            encoder
                .encode_descriptor(
                    "ramp_journal_last_write_timestamp_seconds",
                    "When a journal write last succeeded (Unix time).",
                    None,
                    MetricType::Gauge,
                )?
                .encode_gauge(&(at as f64 / 1000.0))?;
        }
        encoder
            .encode_descriptor(
                "ramp_journal_failing",
                "1 while the latest journal write failed (signals and commands are refused, rollbacks still happen).",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&u64::from(h.failing.is_some()))?;
        Ok(())
    }
}

/// Exports the control plane's cumulative numbers at scrape time.
pub(crate) struct RolloutCollector {
    source: Source,
}

impl fmt::Debug for RolloutCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RolloutCollector").finish_non_exhaustive()
    }
}

/// What the Alertmanager webhook did with the alerts it was sent, since the server started.
#[derive(Debug, Default)]
pub(crate) struct AlertCounts {
    pub(crate) accepted: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    /// Ignored: resolved, unlabelled, another category.
    pub(crate) skipped: AtomicU64,
    /// Could not be taken: no such rollout, a rollout that takes no more signals, the store.
    pub(crate) errors: AtomicU64,
}

/// Exports the server's own numbers: build info and the webhook's alert counts.
#[derive(Debug)]
struct ServerCollector {
    alerts: Arc<AlertCounts>,
    access_log_dropped: Arc<AtomicU64>,
}

impl Collector for ServerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        {
            let mut metric = encoder.encode_descriptor(
                "ramp_build_info",
                "1, labelled with the version of ramp serving.",
                None,
                MetricType::Gauge,
            )?;
            let labels: Labels = vec![("version", env!("CARGO_PKG_VERSION").into())];
            metric.encode_family(&labels)?.encode_gauge(&1u64)?;
        }
        encoder
            .encode_descriptor(
                "ramp_access_log_dropped_lines",
                "Access-log lines dropped because the log could not keep up (requests never wait for it).",
                None,
                MetricType::Counter,
            )?
            .encode_counter::<NoLabelSet, _, u64>(
                &self.access_log_dropped.load(Ordering::Relaxed),
                None,
            )?;
        let mut metric = encoder.encode_descriptor(
            "ramp_alertmanager_alerts",
            "Alerts the Alertmanager webhook was sent, by what became of them (accepted, duplicate, skipped, error).",
            None,
            MetricType::Counter,
        )?;
        let a = &self.alerts;
        for (result, n) in [
            ("accepted", &a.accepted),
            ("duplicate", &a.duplicates),
            ("skipped", &a.skipped),
            ("error", &a.errors),
        ] {
            let labels: Labels = vec![("result", result.into())];
            metric
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&n.load(Ordering::Relaxed), None)?;
        }
        Ok(())
    }
}

/// Exports the certificates in use: days to expiry, and reloads.
#[derive(Debug)]
struct CertificateCollector {
    certificates: Arc<ramp_proxy::tls::Certificates>,
}

impl Collector for CertificateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let list = self.certificates.list();
        if !list.is_empty() {
            let mut metric = encoder.encode_descriptor(
                "ramp_certificate_days_to_expiry",
                "Days until each certificate in use expires (negative once it has), by owner, role, file and serial.",
                None,
                MetricType::Gauge,
            )?;
            for c in &list {
                let labels: Labels = vec![
                    ("owner", escape(&c.owner)),
                    ("role", escape(&c.role)),
                    ("path", escape(&c.path)),
                    ("serial", escape(&c.serial)),
                ];
                metric
                    .encode_family(&labels)?
                    .encode_gauge(&ramp_proxy::tls::days_to_expiry(c))?;
            }
        }
        let failures = self.certificates.handshake_failures();
        if !failures.is_empty() {
            let mut metric = encoder.encode_descriptor(
                "ramp_tls_handshake_failures",
                "TLS handshakes that failed or timed out, by listener owner (old protocol versions, unknown CAs, missing client certificates, plain HTTP to a TLS port).",
                None,
                MetricType::Counter,
            )?;
            for (owner, n) in failures {
                let labels: Labels = vec![("owner", escape(&owner))];
                metric
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
        }
        for (name, help, n) in [
            (
                "ramp_certificate_reloads",
                "Sets of TLS material replaced since start (a file changed, or SIGHUP).",
                self.certificates.reloads(),
            ),
            (
                "ramp_certificate_reload_failures",
                "TLS reloads that failed since start (the old material stayed in use).",
                self.certificates.reload_failures(),
            ),
        ] {
            encoder
                .encode_descriptor(name, help, None, MetricType::Counter)?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
        Ok(())
    }
}

/// A registry with the rollout, journal, server and certificate collectors.
pub(crate) fn registry(
    source: Source,
    journal: JournalSource,
    alerts: Arc<AlertCounts>,
    certificates: Arc<ramp_proxy::tls::Certificates>,
    access_log_dropped: Arc<AtomicU64>,
) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(RolloutCollector { source }));
    registry.register_collector(Box::new(JournalCollector { source: journal }));
    registry.register_collector(Box::new(ServerCollector {
        alerts,
        access_log_dropped,
    }));
    registry.register_collector(Box::new(CertificateCollector { certificates }));
    registry
}

/// Encodes the registry (OpenMetrics text, ending in `# EOF`).
pub(crate) fn encode(registry: &Registry) -> Result<String, fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// Label values are written as given by prometheus-client: escape them here.
fn escape(value: &str) -> String {
    let mut s = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

type Labels = Vec<(&'static str, String)>;

fn variants(m: &RolloutMetrics) -> [(Labels, &VariantStats); 2] {
    let rollout = escape(&m.name);
    [
        (
            vec![("rollout", rollout.clone()), ("variant", "stable".into())],
            &m.stable,
        ),
        (
            vec![("rollout", rollout), ("variant", "canary".into())],
            &m.canary,
        ),
    ]
}

/// The latency histogram as (upper bound, count in this bucket) pairs, the last one `+Inf`
/// (`f64::MAX` for the encoder, which makes the counts cumulative), and its sum in seconds.
///
/// A sketch bucket is placed under the first `le` at or above its upper edge, so the exported
/// histogram never understates latency; the sum uses upper edges too (over by at most 1/128).
pub(crate) fn histogram(stats: &VariantStats) -> (Vec<(f64, u64)>, f64, u64) {
    let mut buckets: Vec<(f64, u64)> = LE_SECONDS.iter().map(|&le| (le, 0)).collect();
    buckets.push((f64::MAX, 0));
    let mut sum = 0.0;
    let mut count = 0u64;
    for (i, &n) in stats.latency.counts().iter().enumerate() {
        if n == 0 {
            continue;
        }
        let upper_us = bucket_upper(i);
        let seconds = upper_us as f64 / 1e6;
        sum += seconds * n as f64;
        count += n;
        let slot = LE_SECONDS
            .iter()
            .position(|&le| upper_us as f64 <= le * 1e6)
            .unwrap_or(LE_SECONDS.len());
        buckets[slot].1 += n;
    }
    (buckets, sum, count)
}

impl Collector for RolloutCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let all = (self.source)();
        // A rollout that is not running has no numbers to export (zeros would read as counter
        // resets); it appears only in `ramp_rollout_status`.
        let live: Vec<&RolloutMetrics> = all
            .iter()
            .filter(|m| m.status != ramp_wire::v1::Status::Unavailable)
            .collect();
        type Get = fn(&VariantStats) -> u64;
        let counters: [(&str, &str, Get); 5] = [
            (
                "ramp_requests",
                "Requests answered or failed, per rollout and variant.",
                |s| s.requests,
            ),
            (
                "ramp_errors",
                "5xx answers, connect failures and timeouts.",
                |s| s.errors,
            ),
            ("ramp_successes", "2xx and 3xx answers.", |s| s.successes),
            ("ramp_rate_limited", "429 answers.", |s| s.rate_limited),
            ("ramp_auth_failures", "401 and 403 answers.", |s| {
                s.auth_failures
            }),
        ];
        for (name, help, get) in counters {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for m in &live {
                for (labels, stats) in variants(m) {
                    metric
                        .encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&get(stats), None)?;
                }
            }
        }
        {
            let mut metric = encoder.encode_descriptor(
                "ramp_request_duration_seconds",
                "Request latency per rollout and variant (from the latency sketch; upper edges).",
                None,
                MetricType::Histogram,
            )?;
            for m in &live {
                for (labels, stats) in variants(m) {
                    let (buckets, sum, count) = histogram(stats);
                    metric
                        .encode_family(&labels)?
                        .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
                }
            }
        }
        {
            let mut metric = encoder.encode_descriptor(
                "ramp_rollout_share_ratio",
                "Share of users on the canary (0 to 1).",
                None,
                MetricType::Gauge,
            )?;
            for m in &live {
                let labels: Labels = vec![("rollout", escape(&m.name))];
                metric
                    .encode_family(&labels)?
                    .encode_gauge(&(f64::from(m.share_bp) / 10_000.0))?;
            }
        }
        {
            let mut metric = encoder.encode_descriptor(
                "ramp_rollout_phase",
                "Index of the current phase (from 0).",
                None,
                MetricType::Gauge,
            )?;
            for m in &live {
                let labels: Labels = vec![("rollout", escape(&m.name))];
                metric
                    .encode_family(&labels)?
                    .encode_gauge(&(m.phase as u64))?;
            }
        }
        {
            type Phase = fn(&RolloutMetrics) -> u64;
            let gauges: [(&str, &str, Phase); 2] = [
                (
                    "ramp_phase_elapsed_seconds",
                    "Time spent in the current phase (paused time excluded).",
                    |m| m.detail.phase_elapsed_ms,
                ),
                (
                    "ramp_phase_duration_seconds",
                    "The current phase's planned duration.",
                    |m| m.detail.phase_duration_ms,
                ),
            ];
            for (name, help, get) in gauges {
                let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                for m in &live {
                    let labels: Labels = vec![("rollout", escape(&m.name))];
                    metric
                        .encode_family(&labels)?
                        .encode_gauge(&(get(m) as f64 / 1000.0))?;
                }
            }
        }
        {
            let mut metric = encoder.encode_descriptor(
                "ramp_backend_health",
                "1 for each backend's health-check result (operational, degraded, down, unknown).",
                None,
                MetricType::Gauge,
            )?;
            for m in &live {
                for (variant, health) in ["stable", "canary"].into_iter().zip(m.detail.backends) {
                    let Some(health) = health else { continue };
                    let labels: Labels = vec![
                        ("rollout", escape(&m.name)),
                        ("variant", variant.into()),
                        ("state", backend_state(health).into()),
                    ];
                    metric.encode_family(&labels)?.encode_gauge(&1u64)?;
                }
            }
        }
        {
            let mut metric = encoder.encode_descriptor(
                "ramp_gate_verdict",
                "1 for each gate's verdict now (pass, fail, inconclusive); scope is phase or rollout.",
                None,
                MetricType::Gauge,
            )?;
            for m in &live {
                for (criterion, whole, outcome) in &m.detail.verdicts {
                    let labels: Labels = vec![
                        ("rollout", escape(&m.name)),
                        ("criterion", escape(criterion)),
                        ("scope", if *whole { "rollout" } else { "phase" }.into()),
                        ("outcome", outcome_name(*outcome).into()),
                    ];
                    metric.encode_family(&labels)?.encode_gauge(&1u64)?;
                }
            }
        }
        {
            let mut metric = encoder.encode_descriptor(
                "ramp_trigger_progress_ratio",
                "How close each rollback trigger is to firing: its detector's statistic over its boundary (1 = fired).",
                None,
                MetricType::Gauge,
            )?;
            for m in &live {
                for (trigger, progress, fired) in &m.detail.triggers {
                    let labels: Labels =
                        vec![("rollout", escape(&m.name)), ("trigger", escape(trigger))];
                    let value = if *fired { 1.0 } else { *progress };
                    metric.encode_family(&labels)?.encode_gauge(&value)?;
                }
            }
        }
        {
            let mut metric = encoder.encode_descriptor(
                "ramp_signals",
                "Signals taken in since the rollout started, by kind (security alerts by severity).",
                None,
                MetricType::Counter,
            )?;
            for m in &live {
                let c = &m.detail.signals;
                let mut series: Vec<(&str, Option<&str>, u64)> = vec![
                    ("pci_alert", None, c.pci_alerts),
                    ("bug_report", None, c.bug_reports),
                    ("feedback", None, c.feedback),
                ];
                for (severity, n) in ["low", "medium", "high", "critical"]
                    .into_iter()
                    .zip(c.security)
                {
                    series.push(("security_alert", Some(severity), n));
                }
                for (kind, severity, n) in series {
                    let mut labels: Labels =
                        vec![("rollout", escape(&m.name)), ("kind", kind.into())];
                    if let Some(severity) = severity {
                        labels.push(("severity", severity.into()));
                    }
                    metric
                        .encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
                }
            }
        }
        {
            let mut metric = encoder.encode_descriptor(
                "ramp_feedback_positive",
                "Feedback with a score of at least 0.75, since the rollout started.",
                None,
                MetricType::Counter,
            )?;
            for m in &live {
                let labels: Labels = vec![("rollout", escape(&m.name))];
                metric
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(
                        &m.detail.signals.feedback_positive,
                        None,
                    )?;
            }
        }
        {
            type Count = fn(&ramp_wire::v1::ChannelView) -> u64;
            let counters: [(&str, &str, Count); 3] = [
                (
                    "ramp_notices_delivered",
                    "Notices a channel delivered, since the server started.",
                    |c| c.delivered,
                ),
                (
                    "ramp_notices_failed",
                    "Notices a channel gave up on (refused, or past give_up_after), since the server started.",
                    |c| c.failed,
                ),
                (
                    "ramp_notice_retries",
                    "Failed delivery attempts that were retried, since the server started.",
                    |c| c.retries,
                ),
            ];
            for (name, help, get) in counters {
                let mut metric =
                    encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                for m in &all {
                    for c in &m.detail.channels {
                        let labels: Labels = vec![
                            ("rollout", escape(&m.name)),
                            ("channel", escape(&c.channel)),
                        ];
                        metric
                            .encode_family(&labels)?
                            .encode_counter::<NoLabelSet, _, u64>(&get(c), None)?;
                    }
                }
            }
            let mut metric = encoder.encode_descriptor(
                "ramp_notices_pending",
                "Notices waiting for delivery on a channel, as last counted.",
                None,
                MetricType::Gauge,
            )?;
            for m in &all {
                for c in &m.detail.channels {
                    let labels: Labels = vec![
                        ("rollout", escape(&m.name)),
                        ("channel", escape(&c.channel)),
                    ];
                    metric.encode_family(&labels)?.encode_gauge(&c.pending)?;
                }
            }
        }
        {
            let mut metric = encoder.encode_descriptor(
                "ramp_rollout_status",
                "1 for the rollout's current status.",
                None,
                MetricType::Gauge,
            )?;
            for m in &all {
                let labels: Labels = vec![
                    ("rollout", escape(&m.name)),
                    ("status", escape(m.status.name())),
                ];
                metric.encode_family(&labels)?.encode_gauge(&1u64)?;
            }
        }
        Ok(())
    }
}

fn backend_state(h: ramp_wire::v1::BackendHealth) -> &'static str {
    use ramp_wire::v1::BackendHealth as B;
    match h {
        B::Operational => "operational",
        B::Degraded => "degraded",
        B::Down => "down",
        B::Unknown => "unknown",
    }
}

fn outcome_name(o: ramp_wire::v1::Outcome) -> &'static str {
    use ramp_wire::v1::Outcome as O;
    match o {
        O::Pass => "pass",
        O::Fail => "fail",
        O::Inconclusive => "inconclusive",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers_choose_the_format() {
        for (accept, open) in [
            (None, false),
            (Some("*/*"), false),
            (Some("text/plain"), false),
            (Some("application/openmetrics-text"), true),
            // What Prometheus 2.x sends.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                ),
                true,
            ),
            (
                Some("text/plain;version=0.0.4;q=1, application/openmetrics-text;q=0.5"),
                false,
            ),
            (Some("application/openmetrics-text;q=0"), false),
            (Some("application/json"), false),
        ] {
            assert_eq!(wants_openmetrics(accept), open, "{accept:?}");
        }
    }

    #[test]
    fn the_text_format_names_counter_series_and_drops_openmetrics_only_lines() {
        let om = "# HELP ramp_requests Requests.\n# TYPE ramp_requests counter\nramp_requests_total{a=\"b\"} 3\n# HELP ramp_up Up.\n# TYPE ramp_up gauge\n# UNIT ramp_up seconds\nramp_up 1\n# TYPE ramp_x info\nramp_x_info 1\n# EOF\n";
        assert_eq!(
            to_text_format(om),
            "# HELP ramp_requests_total Requests.\n# TYPE ramp_requests_total counter\nramp_requests_total{a=\"b\"} 3\n# HELP ramp_up Up.\n# TYPE ramp_up gauge\nramp_up 1\n# TYPE ramp_x gauge\nramp_x_info 1\n"
        );
    }

    #[test]
    fn histogram_places_sketch_buckets_under_their_upper_edge() {
        let mut s = VariantStats::new(0);
        s.latency.record(3_000); // 3 ms
        s.latency.record(150_000); // 150 ms
        s.latency.record(20_000_000); // 20 s
        let (buckets, sum, count) = histogram(&s);
        assert_eq!(count, 3);
        assert_eq!(buckets[0], (0.005, 1));
        assert_eq!(buckets[5], (0.2, 1));
        assert_eq!(buckets[11], (f64::MAX, 1));
        assert!((20.153..20.153 * 1.01).contains(&sum), "{sum}");
    }
}
