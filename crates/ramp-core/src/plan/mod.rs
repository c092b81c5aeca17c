//! The rollout plan: what to roll out, in which phases, judged by which criteria, rolled back on
//! which triggers, and who hears about it when. Parsed from TOML by [`parse_plan`], which
//! reports every problem at once with its line and column.

mod criterion;
mod notify;
mod parse;

pub use criterion::{
    Criterion, METRIC_NAMES, Metric, MetricKind, Op, POSITIVE_FEEDBACK, RawCriterion, RawValue,
    Severity, SyntaxError, Test, Unit, parse_raw,
};
pub use notify::{
    Channel, ChannelKind, DEFAULT_GIVE_UP_AFTER, Group, LOG_CHANNEL, Route, Secret, SmtpTls, Topic,
};
pub use parse::{PlanError, PlanErrors, parse_plan};

use crate::cohort::ShareBp;
use crate::time::Millis;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A validated rollout plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The rollout's name (also the default cohort salt).
    pub name: String,
    /// Free text shown in reports.
    pub description: Option<String>,
    /// How users are assigned to the canary.
    pub cohort: Cohort,
    /// Where stable and canary traffic go (needed by `ramp serve`, not by `ramp simulate`).
    pub upstreams: Option<Upstreams>,
    /// Where this rollout's proxy listens (`[proxy] listen`); `None`: the server decides.
    pub listen: Option<std::net::SocketAddr>,
    /// TLS on the proxy listener (`[proxy.tls]`); `None`: cleartext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_tls: Option<ListenerTls>,
    /// Networks whose `Forwarded` / `X-Forwarded-For` / `X-Forwarded-Proto` the proxy
    /// believes (`[proxy] trusted_proxies`, each checked as a [`crate::net::Cidr`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
    /// Every connection to the proxy starts with a PROXY protocol (v1 or v2) header
    /// (`[proxy] proxy_protocol`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub proxy_protocol: bool,
    /// How evidence is weighed.
    pub analysis: Analysis,
    /// Reference values that criteria can name as `baseline`.
    pub baseline: Baseline,
    /// The phases, in order, with rising traffic.
    pub phases: Vec<Phase>,
    /// Rollback triggers, checked continuously in every phase.
    pub triggers: Vec<Criterion>,
    /// Success criteria over the whole rollout (`[rollout] success`): judged on the evidence
    /// of every phase together, failing the rollout as soon as they are proven violated, and
    /// required, with the last phase's gates, for completion.
    #[serde(default)]
    pub rollout_criteria: Vec<Criterion>,
    /// The communication plan.
    pub notify: Notify,
}

/// Where the cohort key comes from and how it is hashed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cohort {
    /// Where the proxy finds the user's key.
    pub key: CohortKey,
    /// The bucketing salt (defaults to the plan name).
    pub salt: String,
    /// The bucketing formula version (see `docs/bucketing.md`).
    pub formula: u32,
    /// Where requests without any key go.
    pub unkeyed: UnkeyedRoute,
}

/// Where the proxy finds the cohort key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "from", content = "name", rename_all = "snake_case")]
pub enum CohortKey {
    /// A request header, e.g. `x-user-id`.
    Header(String),
    /// A cookie.
    Cookie(String),
    /// The client address.
    ClientIp,
}

/// Where requests with no cohort key go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnkeyedRoute {
    /// Always to stable (default): unidentified traffic is never experimented on.
    Stable,
    /// Bucketed by client address.
    ClientIp,
}

/// Upstream addresses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstreams {
    /// The current version.
    pub stable: String,
    /// The new version.
    pub canary: String,
    /// Path probed on both upstreams by active health checks (`None`: no health checks).
    pub health_path: Option<String>,
    /// How often the health checks run (real time, also under `--time-scale`).
    pub health_interval: Millis,
    /// TLS toward the stable upstream (`[upstreams.tls]` merged with `[upstreams.tls.stable]`).
    #[serde(default, skip_serializing_if = "UpstreamTls::is_unset")]
    pub stable_tls: UpstreamTls,
    /// TLS toward the canary upstream (`[upstreams.tls]` merged with `[upstreams.tls.canary]`).
    #[serde(default, skip_serializing_if = "UpstreamTls::is_unset")]
    pub canary_tls: UpstreamTls,
}

/// How the proxy verifies an `https://` upstream and authenticates to it. File paths are
/// read by the server (relative ones from its working directory).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamTls {
    /// CA certificates (PEM) the upstream's certificate must chain to; unset: the system's
    /// roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// A client certificate (PEM) presented to the upstream (mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    /// The client certificate's private key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
    /// The name verified in the upstream's certificate and sent as SNI, instead of the URL's
    /// host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

impl UpstreamTls {
    /// Whether nothing is set (the defaults: system roots, no client certificate).
    pub fn is_unset(&self) -> bool {
        *self == UpstreamTls::default()
    }
}

/// TLS on the rollout's proxy listener (`[proxy.tls]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerTls {
    /// The certificate chain (PEM), leaf first.
    pub cert: String,
    /// Its private key (PEM).
    pub key: String,
    /// CA certificates (PEM) client certificates must chain to; unset: none asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<String>,
    /// With `client_ca`: whether every client must present a certificate (default) or may.
    #[serde(default = "yes")]
    pub client_cert_required: bool,
}

fn yes() -> bool {
    true
}

/// What happens when a phase's deadline passes with its gates still inconclusive, or when a
/// gate fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopAction {
    /// Keep the current traffic share and wait for a person.
    Hold,
    /// Send all traffic back to stable.
    Rollback,
}

impl StopAction {
    /// The name used in plans.
    pub fn name(self) -> &'static str {
        match self {
            StopAction::Hold => "hold",
            StopAction::Rollback => "rollback",
        }
    }
}

/// How evidence is weighed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    /// Confidence for every bound (0.95 = one-sided 95%).
    pub confidence: f64,
    /// How often metric windows are analysed and triggers checked.
    pub interval: Millis,
    /// Horizon (in canary observations) over which the sequential triggers keep their
    /// false-alarm rate below `1 - confidence`; beyond it they stay calibrated, with
    /// boundaries that rise as traffic doubles. Derived from `expected_rps` when the plan
    /// gives it.
    pub trigger_horizon: u64,
    /// Total requests per second the plan expects (stable and canary together), if it says:
    /// sizes the triggers' horizon to the plan's planned canary traffic.
    #[serde(default)]
    pub expected_rps: Option<f64>,
    /// Default allowed difference for `not worse than stable`.
    pub stable_margin: f64,
    /// Where the proxy stops a request's latency clock (`[analysis] latency`).
    #[serde(default, skip_serializing_if = "LatencyTo::is_first_byte")]
    pub latency: LatencyTo,
}

/// Where a request's latency ends, for every latency criterion of the plan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatencyTo {
    /// The response head (time to first byte; the default, like most proxies' upstream
    /// response time). A body's own pace is bounded by the body timeout, and a body that
    /// breaks is an error either way.
    #[default]
    FirstByte,
    /// The last byte of the response body: slow bodies count against the latency criteria
    /// (what the user waited for a full answer).
    LastByte,
}

impl LatencyTo {
    /// Whether this is the default.
    pub fn is_first_byte(&self) -> bool {
        *self == LatencyTo::FirstByte
    }
}

/// Reference values from the plan's `[baseline]` table, keyed by metric name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// Values: fractions for rates, milliseconds for latencies.
    pub values: BTreeMap<String, f64>,
}

impl Baseline {
    /// The baseline for a metric, if the plan gives one.
    pub fn get(&self, metric: Metric) -> Option<f64> {
        self.values.get(&metric.name()).copied()
    }
}

/// One phase of the rollout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    /// Its name (`canary`, `expanded`, `full`).
    pub name: String,
    /// Share of users sent to the canary.
    pub share: ShareBp,
    /// How long the phase runs before its gates are judged.
    pub duration: Millis,
    /// Whether a person must approve before this phase starts.
    pub approval: bool,
    /// The success criteria, judged at the end of the phase.
    pub criteria: Vec<Criterion>,
    /// How long the phase may be extended while its gates are inconclusive.
    pub max_extension: Millis,
    /// What to do when the extension runs out with gates still inconclusive.
    pub on_inconclusive: StopAction,
    /// What to do when a gate fails.
    pub on_failure: StopAction,
}

/// The communication plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notify {
    /// Interval of scheduled status updates (`None`: off).
    pub status_every: Option<Millis>,
    /// Interval of summary reports (`None`: off). `daily_summary = true` means 24h.
    pub summary_every: Option<Millis>,
    /// Whether a final report is written when the rollout ends.
    pub final_report: bool,
    /// Whether critical events are notified at once.
    pub critical_immediately: bool,
    /// The channels notices leave by (`[notify.channel.NAME]`), in name order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<Channel>,
    /// The stakeholder groups (`[notify.group.NAME]`), in name order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<Group>,
    /// The base URL of ramp's dashboard and reports, for links in notices (`link`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// How long a notice is retried before it is marked failed (`give_up_after`).
    #[serde(default = "default_give_up_after")]
    pub give_up_after: Millis,
}

fn default_give_up_after() -> Millis {
    DEFAULT_GIVE_UP_AFTER
}

impl Plan {
    /// Every latency threshold (µs) some criterion or trigger needs an exceedance counter for,
    /// sorted and without duplicates. Metric windows carry one counter per entry, in this order.
    pub fn latency_thresholds_us(&self) -> Vec<u64> {
        let mut out: Vec<u64> = self
            .phases
            .iter()
            .flat_map(|p| p.criteria.iter())
            .chain(self.triggers.iter())
            .filter_map(Criterion::latency_threshold_us)
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Index of a latency threshold in [`Plan::latency_thresholds_us`].
    pub fn threshold_index(&self, micros: u64) -> Option<usize> {
        self.latency_thresholds_us().binary_search(&micros).ok()
    }

    /// Total planned duration (without extensions).
    pub fn planned_duration(&self) -> Millis {
        self.phases.iter().map(|p| p.duration).sum()
    }

    /// Longest possible duration: every phase extended to its limit.
    pub fn max_duration(&self) -> Millis {
        self.phases
            .iter()
            .map(|p| p.duration + p.max_extension)
            .sum()
    }

    /// Canary requests the plan can see at `rps` requests per second in total: every phase's
    /// share of its longest run (duration and extension). The triggers' planned horizon.
    pub fn planned_canary_requests(&self, rps: f64) -> u64 {
        self.phases
            .iter()
            .map(|p| {
                f64::from(p.share.bp()) / 10_000.0 * rps * (p.duration + p.max_extension) as f64
                    / 1000.0
            })
            .sum::<f64>()
            .round() as u64
    }
}
