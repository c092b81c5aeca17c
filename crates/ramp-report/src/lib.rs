//! ramp's documents (placeholder, being written).
#![forbid(unsafe_code)]
