//! Evidence: exact statistics, sketches, metric windows, signals and verdicts.
pub mod class;
pub mod confseq;
pub mod dispersion;
pub mod gate;
pub mod health;
pub mod hll;
pub mod sequential;
pub mod sketch;
pub mod stats;
pub mod window;

pub use class::{Answer, Class, classify};
pub use gate::{BoundSide, Outcome, Verdict, combine, judge, judge_all};
pub use health::BackendHealth;
pub use window::{Evidence, MetricWindow, Signal, SignalCounts, VariantStats};
