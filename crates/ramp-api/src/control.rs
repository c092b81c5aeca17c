//! The control plane's view of the rollouts a server runs: what the HTTP API (and through it
//! the CLI client) may ask and tell. `serve` implements it; the API only calls it, so the API
//! never decides anything and can be tested against a fake.

use crate::serve::Snapshot;
use ramp_core::evidence::{Signal, VariantStats};
use ramp_core::plan::PlanErrors;
use ramp_core::rollout::{Command, Event};
use serde::Serialize;
use std::future::Future;

/// A rollout's deployment status, as the seed plan's "Deployment Status" shows it.
#[derive(Clone, Debug, Serialize)]
pub struct RolloutStatus {
    /// The rollout's name (the plan's `name`).
    pub name: String,
    /// When it started (controller time, ms since the Unix epoch), if it has.
    pub started_at: Option<u64>,
    /// Where the proxy for this rollout listens.
    pub listen: String,
    /// Everything else: phase, share, health, per-variant metrics, gate verdicts.
    #[serde(flatten)]
    pub snapshot: Snapshot,
}

/// A journal entry with its position.
#[derive(Clone, Debug, Serialize)]
pub struct JournalEntry {
    /// Position in the rollout's journal, from 1.
    pub seq: u64,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

/// A page of the journal.
#[derive(Clone, Debug, Serialize)]
pub struct EventPage {
    /// Entries with `seq > after`, oldest first.
    pub events: Vec<JournalEntry>,
    /// Pass as `after` to get the next page; `None` when this page reached the end.
    pub next: Option<u64>,
}

/// A signal was journaled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Recorded {
    /// Its position in the rollout's journal (of the repeat entry for a repeat).
    pub seq: u64,
    /// It had been counted before under the same key and was not counted again.
    pub duplicate: bool,
}

/// Cumulative per-variant numbers for `/metrics`.
#[derive(Clone, Debug)]
pub struct RolloutMetrics {
    /// The rollout's name.
    pub name: String,
    /// Status name (pending, running, ...).
    pub status: String,
    /// Current phase index.
    pub phase: usize,
    /// Canary share in basis points.
    pub share_bp: u16,
    /// Everything the stable variant served since the rollout started.
    pub stable: VariantStats,
    /// Everything the canary served since the rollout started.
    pub canary: VariantStats,
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
    /// The plan is invalid (HTTP 400, with every error).
    #[error("invalid plan")]
    InvalidPlan(PlanErrors),
    /// Something broke on our side, e.g. the store (HTTP 503).
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// What a server running rollouts can do for the API.
pub trait Rollouts: Send + Sync + 'static {
    /// Every rollout's status.
    fn list(&self) -> Vec<RolloutStatus>;
    /// One rollout's status.
    fn status(&self, name: &str) -> Option<RolloutStatus>;
    /// A page of a rollout's journal (`None`: unknown rollout).
    fn events(&self, name: &str, after: u64, limit: usize) -> Option<EventPage>;
    /// Applies an operator command; answers with the new status.
    fn command(
        &self,
        name: &str,
        command: Command,
    ) -> impl Future<Output = Result<RolloutStatus, ControlError>> + Send;
    /// Records a signal; resolves only once it is durable. With a `key` (the signal's identity
    /// at its source), a signal already counted under that key is journaled as a repeat and
    /// not counted again, even across restarts.
    fn signal(
        &self,
        name: &str,
        signal: Signal,
        key: Option<String>,
    ) -> impl Future<Output = Result<Recorded, ControlError>> + Send;
    /// Creates and starts a rollout from a plan (TOML text).
    fn create(
        &self,
        plan_toml: &str,
    ) -> impl Future<Output = Result<RolloutStatus, ControlError>> + Send;
    /// Cumulative numbers for `/metrics`; rollouts that should run but do not (could not be
    /// resumed, or their controller stopped) are listed with status `unavailable`.
    fn metrics(&self) -> Vec<RolloutMetrics>;
}
