//! The ramp shell: everything that does IO around the pure core (`ramp-core`).
#![forbid(unsafe_code)]

pub mod api;
pub mod client;
pub mod clock;
pub mod control;
pub mod demo;
pub mod plancheck;
pub mod proxy;
pub mod registry;
pub mod render;
pub mod scenario;
pub mod serve;
pub mod simulate;
pub mod store;
