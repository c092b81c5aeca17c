//! ramp's integration tests, in one binary (one link instead of one per file).

mod architecture;
mod cli;
mod control;
mod demo;
mod faults;
mod fixes;
mod notify;
mod serve;
mod tls;
