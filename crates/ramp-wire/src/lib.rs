//! ramp's wire format.
//!
//! [`v1`] holds every type that crosses a process boundary as JSON: the control API's answers
//! and request bodies (status, variant view, verdicts, the journal page, signals, errors) and
//! the journal's event records, which are stored in the same shape they are served in. The
//! core's types know nothing of this format: each wire type is built from its core type
//! (`From`), renders its prose once with [`ramp_core::report`], and keeps the numbers beside
//! the prose so that reports and dashboards can use them. The OpenAPI schemas are derived from
//! these very types (no mirrors).
//!
//! Compatibility: fields are only ever added. A field added after the first release is
//! optional (or has a default) so that older journal rows and older clients still parse; a
//! change that cannot be made that way is a new module (`v2`), never an edit of `v1`.
//!
//! [`text`] renders wire types for terminals (the live log, `ramp events`, timelines).
#![forbid(unsafe_code)]

pub mod text;
pub mod v1;
