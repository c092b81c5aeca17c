//! The one place ramp reads a clock. Everything else gets time from here, as `Millis`.
//!
//! A `Clock` maps real elapsed time to controller time: `origin + elapsed × scale`. With
//! `--time-scale 1` that is Unix time; with `--time-scale 1440` a day of the plan passes in a
//! minute while evidence still comes from real requests.

use ramp_core::time::Millis;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Real or compressed time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: Instant,
    origin_ms: Millis,
    scale: f64,
}

impl Clock {
    /// A clock running `scale` times faster than real time, starting at the current Unix time.
    pub fn scaled(scale: f64) -> Clock {
        let origin_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as Millis)
            .unwrap_or(0);
        Clock {
            origin: Instant::now(),
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
    pub fn resumed(scale: f64, resume_at: Millis) -> Clock {
        let mut c = Clock::scaled(scale);
        c.origin_ms = c.origin_ms.max(resume_at);
        c
    }

    /// Controller time now.
    pub fn now(&self) -> Millis {
        self.origin_ms + (self.origin.elapsed().as_secs_f64() * 1000.0 * self.scale) as Millis
    }

    /// Controller time when the clock started.
    pub fn origin(&self) -> Millis {
        self.origin_ms
    }

    /// How fast controller time runs.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Real time that a span of controller time takes.
    pub fn real(&self, controller: Millis) -> Duration {
        Duration::from_secs_f64(controller as f64 / 1000.0 / self.scale)
    }

    /// Real time elapsed since the clock started.
    pub fn real_elapsed(&self) -> Duration {
        self.origin.elapsed()
    }
}
