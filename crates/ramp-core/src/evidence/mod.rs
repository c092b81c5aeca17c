//! Evidence: exact statistics, sketches, metric windows, signals and verdicts.
pub mod gate;
pub mod hll;
pub mod sketch;
pub mod stats;
pub mod window;

pub use gate::{BoundSide, Outcome, Verdict, combine, judge, judge_all};
pub use window::{Evidence, MetricWindow, Signal, SignalCounts, VariantStats};
