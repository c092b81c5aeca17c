//! `ramp demo`: the whole thing in a minute on a fresh machine.
pub mod backend;
pub mod load;
