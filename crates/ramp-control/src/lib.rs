//! ramp's controllers and the server around them.
//!
//! A [`controller`] runs one rollout: it feeds the pure state machine (`ramp_core::rollout`)
//! with windows from an [`ports::EvidenceSource`], signals and commands, journals each step to
//! the [`ramp_store::Store`] before carrying it out, applies shares through a
//! [`ports::TrafficSplit`], hands notices to the [`outbox`], and publishes its status. Time
//! comes from a [`clock::Clock`]. The [`registry`] runs many rollouts on one store and one pool
//! of proxy workers and is the control plane the API calls; [`server::run`] is `ramp serve`.
//! Nothing here decides: every decision, including what to do when the journal cannot be
//! written, is the core's.
#![forbid(unsafe_code)]

pub mod allow;
pub mod clock;
pub mod controller;
pub mod log;
pub mod outbox;
pub mod ports;
pub mod registry;
pub mod reports;
pub mod scrub;
pub mod server;
pub mod status;
pub mod watched;

pub use clock::{Clock, ScaledClock};
pub use log::{Log, LogEntry};
pub use registry::{Defaults, Registry, Resumed, ResumedAt};
pub use server::{Lifecycle, Listeners, PlanFile, ServerConfig, ServerError, Services};
