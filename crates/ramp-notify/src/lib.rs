//! How a notice leaves ramp.
//!
//! The controller never sends anything itself: a step's notices are written to the store's
//! outbox in the same transaction as the step, and the outbox worker hands each one to a
//! [`Notifier`], marking it delivered only when the notifier says it went out. A notifier is
//! one way out (today: the live log, [`LogNotifier`]); e-mail, webhooks and chat are further
//! implementations of the same port.
#![forbid(unsafe_code)]

use ramp_store::{BoxFuture, OutboxEntry};

/// Why a notice could not be delivered (the outbox keeps it and tries again).
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The receiver refused or could not be reached; try again later.
    #[error("delivery failed: {0}")]
    Failed(String),
}

/// One way a notice leaves.
pub trait Notifier: Send + Sync + 'static {
    /// A short name for logs and status (`log`, `webhook`, ...).
    fn name(&self) -> &str;

    /// Delivers one notice; resolves once it is out (or failed).
    fn deliver<'a>(&'a self, entry: &'a OutboxEntry) -> BoxFuture<'a, Result<(), NotifyError>>;
}

/// Delivers notices to the live log: `ramp serve`'s decision log, `ramp demo`'s view.
pub struct LogNotifier {
    write: Box<dyn Fn(&OutboxEntry) + Send + Sync>,
}

impl LogNotifier {
    /// A notifier that hands every notice to `write`.
    pub fn new(write: impl Fn(&OutboxEntry) + Send + Sync + 'static) -> Self {
        LogNotifier {
            write: Box::new(write),
        }
    }
}

impl std::fmt::Debug for LogNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogNotifier").finish_non_exhaustive()
    }
}

impl Notifier for LogNotifier {
    fn name(&self) -> &str {
        "log"
    }

    fn deliver<'a>(&'a self, entry: &'a OutboxEntry) -> BoxFuture<'a, Result<(), NotifyError>> {
        (self.write)(entry);
        Box::pin(async { Ok(()) })
    }
}
