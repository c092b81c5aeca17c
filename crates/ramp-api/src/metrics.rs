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

/// Upper bounds (seconds) of the latency histogram's buckets.
pub(crate) const LE_SECONDS: [f64; 11] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The content type of the exposition.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

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

/// A registry with the rollout and journal collectors.
pub(crate) fn registry(source: Source, journal: JournalSource) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(RolloutCollector { source }));
    registry.register_collector(Box::new(JournalCollector { source: journal }));
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

#[cfg(test)]
mod tests {
    use super::*;

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
