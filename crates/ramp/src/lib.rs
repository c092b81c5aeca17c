//! The ramp shell: everything that does IO around the pure core (`ramp-core`).
#![forbid(unsafe_code)]

pub mod plancheck;
pub mod render;
pub mod scenario;
pub mod simulate;
