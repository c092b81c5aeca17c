//! The live log: what `ramp serve` prints as decisions happen and `ramp demo` shows in its
//! view. The controller and the outbox hand it wire types; how they look is the caller's
//! business.

use ramp_core::time::Millis;
use ramp_store::OutboxEntry;
use ramp_wire::v1;
use std::sync::Arc;

/// A line for the live log.
#[derive(Clone, Copy, Debug)]
pub enum LogEntry<'a> {
    /// A journal entry, once durable.
    Event(&'a v1::Event),
    /// A notice, as delivered.
    Notice(&'a OutboxEntry),
    /// A report was asked for.
    Report(v1::ReportKind),
    /// A report was written to these files.
    ReportWritten(v1::ReportKind, &'a [std::path::PathBuf]),
    /// The journal could not be written.
    StoreError(&'a str),
}

/// The live log: (rollout name, entry, the rollout's start in controller time).
pub type Log = Arc<dyn Fn(&str, &LogEntry<'_>, Millis) + Send + Sync>;

/// A log that drops everything.
pub fn silent() -> Log {
    Arc::new(|_, _, _| {})
}
