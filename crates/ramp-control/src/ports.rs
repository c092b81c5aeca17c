//! The controller's ports: where evidence comes from and how a traffic share is applied, each
//! with the built-in implementation on ramp's own proxy beside it. (The store is
//! [`ramp_store::Store`], notices leave through [`ramp_notify::Notifier`], time is
//! [`crate::Clock`].) A new source of evidence (Prometheus, several replicas) or a new router (a
//! Gateway API route, an Envoy decision service) is a new implementation of one of these, not
//! an edit of the controller.

use ramp_core::cohort::ShareBp;
use ramp_core::evidence::{BackendHealth, MetricWindow};
use ramp_proxy::{HealthState, Recorder, Routing};
use std::future::Future;
use std::sync::Arc;

/// Why evidence could not be taken.
#[derive(Debug, thiserror::Error)]
#[error("evidence unavailable: {0}")]
pub struct EvidenceError(pub String);

/// Why a share could not be applied.
#[derive(Debug, thiserror::Error)]
#[error("the traffic split did not apply the share: {0}")]
pub struct SplitError(pub String);

/// Where analysis windows come from.
pub trait EvidenceSource: Send + 'static {
    /// What each variant's users experienced since the previous call.
    fn take(&mut self) -> impl Future<Output = Result<MetricWindow, EvidenceError>> + Send;
    /// The backends' health as last probed: (stable, canary).
    fn health(&self) -> (BackendHealth, BackendHealth);
}

/// How a share is applied. The controller decides the share (the core's `State::share`); the
/// split reports what is in effect, so the status shows *desired* and *applied* side by side,
/// and a split that lags or fails is retried rather than assumed.
pub trait TrafficSplit: Send + 'static {
    /// Routes `share` of users to the canary; resolves once it is in effect.
    fn apply(&mut self, share: ShareBp) -> impl Future<Output = Result<(), SplitError>> + Send;
    /// The share in effect now, as far as the split knows.
    fn applied(&self) -> Option<ShareBp>;
}

/// Evidence from ramp's own proxy: its lock-free recorder and its health checks.
#[derive(Clone, Debug)]
pub struct ProxyEvidence {
    recorder: Arc<Recorder>,
    health: Arc<HealthState>,
}

impl ProxyEvidence {
    /// Evidence from this recorder and these health checks.
    pub fn new(recorder: Arc<Recorder>, health: Arc<HealthState>) -> Self {
        ProxyEvidence { recorder, health }
    }
}

impl EvidenceSource for ProxyEvidence {
    async fn take(&mut self) -> Result<MetricWindow, EvidenceError> {
        Ok(self.recorder.take_window())
    }

    fn health(&self) -> (BackendHealth, BackendHealth) {
        (self.health.stable(), self.health.canary())
    }
}

/// The split of ramp's own proxy: one atomic, applied to the very next request.
#[derive(Clone, Debug)]
pub struct ProxySplit {
    routing: Arc<Routing>,
}

impl ProxySplit {
    /// The split of this routing table.
    pub fn new(routing: Arc<Routing>) -> Self {
        ProxySplit { routing }
    }
}

impl TrafficSplit for ProxySplit {
    async fn apply(&mut self, share: ShareBp) -> Result<(), SplitError> {
        self.routing.set_share(share);
        Ok(())
    }

    fn applied(&self) -> Option<ShareBp> {
        Some(self.routing.share())
    }
}
