//! ramp's decision core.
//!
//! Everything that decides lives here, and nothing here does IO: no sockets, no files, no
//! async runtime and no clock reads. Time comes in as an argument (`now`), evidence comes in
//! as metric windows and signals, and decisions go out as effects for the shell to carry out.
#![forbid(unsafe_code)]

pub mod cohort;
pub mod evidence;
pub mod net;
pub mod plan;
pub mod report;
pub mod rollout;
pub mod time;
