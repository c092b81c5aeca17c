//! ramp-control's integration tests, in one binary (one link instead of one per file).

mod controller;
mod journal_failure;
