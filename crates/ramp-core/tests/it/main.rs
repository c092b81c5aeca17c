//! ramp-core's integration tests, in one binary (one link instead of one per file).

mod decision_quality;
mod latency_vs_stable;
mod plan_files;
mod rollout;
