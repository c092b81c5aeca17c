//! Evidence: statistics, sketches and verdicts.
pub mod hll;
pub mod sketch;
pub mod stats;
