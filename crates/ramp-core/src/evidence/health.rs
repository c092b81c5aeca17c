//! The health of an upstream as active probes found it (the seed's "backend health").

use serde::{Deserialize, Serialize};

/// The health of one upstream as the last probe found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendHealth {
    /// Answered 2xx/3xx within 1 s.
    Operational,
    /// Answered, but with another status or slower than 1 s.
    Degraded,
    /// Did not answer: connect failure or timeout.
    Down,
    /// Not probed (yet).
    Unknown,
}

impl BackendHealth {
    /// The serde name.
    pub const fn as_str(self) -> &'static str {
        match self {
            BackendHealth::Operational => "operational",
            BackendHealth::Degraded => "degraded",
            BackendHealth::Down => "down",
            BackendHealth::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for BackendHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
