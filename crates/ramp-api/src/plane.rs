//! The control plane as the API sees it: what the HTTP API (and through it the CLI client and
//! the dashboard) may ask and tell. The server's registry implements it; the API only calls
//! it, so the API never decides anything and can be tested against a fake.

use ramp_core::evidence::{Signal, VariantStats};
use ramp_core::plan::PlanErrors;
use ramp_core::rollout::Command;
use ramp_wire::v1;
use std::future::Future;

/// A signal was journaled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// Its position in the rollout's journal (of the repeat entry for a repeat).
    pub seq: u64,
    /// It had been counted before under the same key and was not counted again.
    pub duplicate: bool,
}

/// How the journal's storage is doing, for `/readyz`, `/metrics` and status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JournalHealth {
    /// Writes that failed since the server started (a full or frozen disk, a second writer).
    pub write_errors: u64,
    /// Reads that failed since the server started.
    pub read_errors: u64,
    /// When a write last succeeded (ms since the Unix epoch), if one has.
    pub last_write_at: Option<u64>,
    /// Set while the latest write failed: since when (ms since the Unix epoch) and why.
    pub failing: Option<(u64, String)>,
}

/// Cumulative per-variant numbers for `/metrics`.
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutMetrics {
    /// The rollout's name.
    pub name: String,
    /// Where it is; `Unavailable` when the server knows it but cannot run it.
    pub status: v1::Status,
    /// Current phase index.
    pub phase: usize,
    /// Canary share in basis points.
    pub share_bp: u16,
    /// Everything the stable variant served since the rollout started.
    pub stable: VariantStats,
    /// Everything the canary served since the rollout started.
    pub canary: VariantStats,
    /// Gauges of the phase, the backends, the gates and triggers, and the signal counts.
    pub detail: RolloutDetail,
}

/// What `/metrics` shows of a rollout besides its traffic counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RolloutDetail {
    /// Time spent in the current phase (ms).
    pub phase_elapsed_ms: u64,
    /// The current phase's planned duration (ms).
    pub phase_duration_ms: u64,
    /// Backend health (stable, canary), where probed.
    pub backends: [Option<v1::BackendHealth>; 2],
    /// The gates judged now: criterion, whether it is the whole rollout's (`[rollout]
    /// success`), outcome.
    pub verdicts: Vec<(String, bool, v1::Outcome)>,
    /// Each rollback trigger: as written, how close it is to firing (0 to 1), whether it fired.
    pub triggers: Vec<(String, f64, bool)>,
    /// Signals taken in since the rollout started.
    pub signals: ramp_core::evidence::SignalCounts,
    /// Each notification channel: how its deliveries went since the server started.
    pub channels: Vec<v1::ChannelView>,
}

/// Why the control plane refused.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No rollout by that name (HTTP 404).
    #[error("no rollout named {0:?}")]
    NotFound(String),
    /// The current state does not allow the action (HTTP 409).
    #[error("{0}")]
    Conflict(String),
    /// A rollout by that name exists (HTTP 409).
    #[error("a rollout named {0:?} already exists")]
    AlreadyExists(String),
    /// The plan is invalid (HTTP 400, with every error and its position).
    #[error("invalid plan")]
    InvalidPlan(PlanErrors),
    /// The request cannot be carried out as given (HTTP 400), e.g. a plan without upstreams.
    #[error("{0}")]
    Invalid(String),
    /// The server's policy does not allow it (HTTP 403), e.g. a rollout created over the API
    /// that would listen beyond loopback.
    #[error("{0}")]
    NotAllowed(String),
    /// Something broke on our side, e.g. the store (HTTP 503).
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// What a server running rollouts can do for the API. Reads of status and metrics come from
/// snapshots the controllers publish and never wait for a controller or the store.
pub trait Rollouts: Send + Sync + 'static {
    /// Every rollout's status (running first is the caller's business: sorted by name).
    fn list(&self) -> Vec<v1::RolloutStatus>;
    /// One rollout's status.
    fn status(&self, name: &str) -> Option<v1::RolloutStatus>;
    /// A page of a rollout's journal.
    fn events(
        &self,
        name: &str,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Result<v1::EventPage, ControlError>> + Send;
    /// Applies an operator command; answers with the status right after it.
    fn command(
        &self,
        name: &str,
        command: Command,
    ) -> impl Future<Output = Result<v1::RolloutStatus, ControlError>> + Send;
    /// Records a signal; resolves only once it is durable. With a `key` (the signal's identity
    /// at its source), a signal already counted under that key is journaled as a repeat and
    /// not counted again, even across restarts. `from` says who sent it (journaled with it).
    fn signal(
        &self,
        name: &str,
        signal: Signal,
        key: Option<String>,
        from: String,
    ) -> impl Future<Output = Result<Recorded, ControlError>> + Send;
    /// Creates and starts a rollout from a plan (TOML text). All or nothing: a plan that is
    /// refused leaves no trace.
    fn create(
        &self,
        plan_toml: &str,
    ) -> impl Future<Output = Result<v1::RolloutStatus, ControlError>> + Send;
    /// Retires a rollout that has ended: its proxy and controller stop, its journal stays
    /// readable. Answers with its final status.
    fn retire(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<v1::RolloutStatus, ControlError>> + Send;
    /// Cumulative numbers for `/metrics`; rollouts that should run but do not (could not be
    /// resumed, or their controller stopped) are listed with status `unavailable`.
    fn metrics(&self) -> Vec<RolloutMetrics>;
    /// A page of a rollout's notices, with how each delivery went.
    fn notices(
        &self,
        name: &str,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Result<v1::NoticePage, ControlError>> + Send {
        let _ = (after, limit);
        let name = name.to_string();
        async move { Err(ControlError::NotFound(name)) }
    }
    /// A report on a rollout, rendered.
    fn report(
        &self,
        name: &str,
        kind: v1::ReportDoc,
        format: v1::ReportFormat,
    ) -> impl Future<Output = Result<String, ControlError>> + Send {
        let _ = (kind, format);
        let name = name.to_string();
        async move { Err(ControlError::NotFound(name)) }
    }
    /// How the journal's storage is doing (a plane without one is always healthy).
    fn journal(&self) -> JournalHealth {
        JournalHealth::default()
    }
}
