//! The one place ramp reads a clock for decisions. Everything else gets controller time from a
//! [`Clock`], as `Millis`.
//!
//! [`ScaledClock`] maps elapsed time on tokio's clock to controller time:
//! `origin + elapsed × scale`. With scale 1 that is Unix time; with `--time-scale 1440` a day
//! of the plan passes in a minute while evidence still comes from real requests. Because it
//! reads *tokio's* clock, tests that pause tokio's time (`time::pause`, `advance`) drive the real
//! controller loop through days of plan time in milliseconds.

use ramp_core::time::Millis;
use std::time::Duration;

/// Controller time.
pub trait Clock: Send + Sync + 'static {
    /// Controller time now.
    fn now(&self) -> Millis;
    /// The real time a span of controller time takes.
    fn real(&self, span: Millis) -> Duration;
}

/// Real or compressed time (see the module docs).
#[derive(Clone, Copy, Debug)]
pub struct ScaledClock {
    origin: tokio::time::Instant,
    origin_ms: Millis,
    scale: f64,
}

/// The Unix time now, in milliseconds (the only wall-clock read in ramp's decisions).
#[allow(clippy::disallowed_methods)]
pub fn unix_now() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

impl ScaledClock {
    /// A clock running `scale` times faster than real time, starting at the Unix time now.
    pub fn new(scale: f64) -> ScaledClock {
        ScaledClock::starting_at(unix_now(), scale)
    }

    /// A clock running `scale` times faster than real time, reading `origin_ms` now.
    #[allow(clippy::disallowed_methods)]
    pub fn starting_at(origin_ms: Millis, scale: f64) -> ScaledClock {
        ScaledClock {
            origin: tokio::time::Instant::now(),
            origin_ms,
            scale: if scale.is_finite() && scale > 0.0 {
                scale
            } else {
                1.0
            },
        }
    }

    /// A clock that continues from `resume_at` when that is later than the Unix time now (a
    /// compressed clock restarted from its journal), otherwise from the Unix time.
    pub fn resumed(scale: f64, resume_at: Millis) -> ScaledClock {
        ScaledClock::starting_at(unix_now().max(resume_at), scale)
    }

    /// How fast controller time runs.
    pub fn scale(&self) -> f64 {
        self.scale
    }
}

impl Clock for ScaledClock {
    fn now(&self) -> Millis {
        self.origin_ms + (self.origin.elapsed().as_secs_f64() * 1000.0 * self.scale) as Millis
    }

    fn real(&self, span: Millis) -> Duration {
        Duration::from_secs_f64(span as f64 / 1000.0 / self.scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn controller_time_follows_tokio_time_scaled() {
        let c = ScaledClock::starting_at(1_000, 60.0);
        assert_eq!(c.now(), 1_000);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(c.now(), 61_000, "a second is a minute at ×60");
        assert_eq!(c.real(60_000), Duration::from_secs(1));
        let resumed = ScaledClock::resumed(1.0, u64::MAX / 4);
        assert_eq!(
            resumed.now(),
            u64::MAX / 4,
            "a journal from the future wins"
        );
        assert_eq!(ScaledClock::new(-3.0).scale(), 1.0);
    }
}
