//! How a notice leaves ramp.
//!
//! The controller never sends anything itself: a step's notices are written to the store's
//! outbox in the same transaction as the step, with one delivery per channel the plan routes
//! them to, and the outbox workers hand each one to a [`Notifier`], marking it delivered only
//! when the notifier says it went out. A notifier is one way out: the live log
//! ([`LogNotifier`]), a signed JSON webhook ([`webhook`]), Slack ([`slack`]), e-mail
//! ([`email`]) and PagerDuty ([`pagerduty`]); [`build`] makes the one a plan's channel names.
#![forbid(unsafe_code)]

pub mod email;
mod http;
pub mod message;
pub mod pagerduty;
pub mod secret;
pub mod slack;
pub mod webhook;

use ramp_core::plan::{Channel, ChannelKind};
use ramp_store::{BoxFuture, OutboxEntry};
use std::sync::Arc;
use std::time::Duration;

pub use secret::{SecretError, Secrets};

/// What to do after a failed delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Try again after the worker's backoff.
    Later,
    /// Try again no sooner than this (the receiver said so: HTTP 429 `Retry-After`).
    After(Duration),
    /// Do not try again: the receiver refused the notice itself (a 4xx that is not a 408/429,
    /// an SMTP permanent error). The delivery is marked failed at once.
    Never,
}

/// Why a notice could not be delivered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct NotifyError {
    /// What went wrong, without any secret in it.
    pub error: String,
    /// Whether and when to try again.
    pub retry: Retry,
    /// A reference the channel made on its way (a Slack thread posted before the reply
    /// failed): kept, so a retry does not make another.
    pub thread: Option<String>,
}

impl NotifyError {
    /// A failure worth retrying after the backoff.
    pub fn later(error: impl Into<String>) -> Self {
        NotifyError {
            error: error.into(),
            retry: Retry::Later,
            thread: None,
        }
    }

    /// A refusal that retrying cannot fix.
    pub fn never(error: impl Into<String>) -> Self {
        NotifyError {
            error: error.into(),
            retry: Retry::Never,
            thread: None,
        }
    }
}

/// One attempt to deliver one notice.
#[derive(Clone, Copy, Debug)]
pub struct Attempt<'a> {
    /// The notice.
    pub entry: &'a OutboxEntry,
    /// Which attempt this is, from 1.
    pub number: u32,
    /// What the channel keeps for this rollout (a Slack thread), if it made one before.
    pub thread: Option<&'a str>,
}

impl Attempt<'_> {
    /// The notice's idempotency key: the same on every attempt and after a restart, so a
    /// receiver can drop a repeat whose first delivery's acknowledgement was lost.
    pub fn key(&self) -> String {
        idempotency_key(self.entry)
    }
}

/// The idempotency key of a notice: `ramp-<rollout>-<outbox id>`.
pub fn idempotency_key(entry: &OutboxEntry) -> String {
    format!("ramp-{}-{}", entry.rollout, entry.id)
}

/// A delivery that went out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    /// What the channel keeps for this rollout from now on (a Slack thread it started).
    pub thread: Option<String>,
}

/// One way a notice leaves.
pub trait Notifier: Send + Sync + 'static {
    /// A short name for logs and status (`log`, the plan's channel name, ...).
    fn name(&self) -> &str;

    /// Delivers one notice; resolves once it is out (or failed).
    fn deliver<'a>(&'a self, attempt: Attempt<'a>) -> BoxFuture<'a, Result<Sent, NotifyError>>;
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

    fn deliver<'a>(&'a self, attempt: Attempt<'a>) -> BoxFuture<'a, Result<Sent, NotifyError>> {
        (self.write)(attempt.entry);
        Box::pin(async { Ok(Sent::default()) })
    }
}

/// Why a channel could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A secret it needs is missing.
    #[error("notify.channel.{channel}.{key}: {error}")]
    Secret {
        /// The channel.
        channel: String,
        /// The key that names the secret.
        key: &'static str,
        /// Why it could not be read.
        error: SecretError,
    },
    /// The channel's settings do not work (an SMTP host lettre refuses, ...).
    #[error("notify.channel.{channel}: {error}")]
    Invalid {
        /// The channel.
        channel: String,
        /// Why.
        error: String,
    },
}

/// Builds the notifier of a plan's channel, reading its secrets from `secrets`. Every secret
/// is read now: a channel that cannot be built is refused before the rollout starts.
pub fn build(channel: &Channel, secrets: &dyn Secrets) -> Result<Arc<dyn Notifier>, BuildError> {
    let read = |key: &'static str, s: &ramp_core::plan::Secret| {
        secrets.read(s).map_err(|error| BuildError::Secret {
            channel: channel.name.clone(),
            key,
            error,
        })
    };
    let name = channel.name.clone();
    Ok(match &channel.kind {
        ChannelKind::Webhook { url, secret } => {
            let key = match secret {
                Some(s) => Some(read("secret", s)?),
                None => None,
            };
            Arc::new(webhook::Webhook::new(name, url.clone(), key))
        }
        ChannelKind::Slack {
            webhook_url,
            token,
            channel: to,
            api,
        } => {
            let mode = match (webhook_url, token, to) {
                (Some(w), _, _) => slack::Mode::Webhook(read("webhook_url", w)?),
                (None, Some(t), Some(c)) => slack::Mode::Bot {
                    token: read("token", t)?,
                    channel: c.clone(),
                    api: api.clone(),
                },
                _ => {
                    return Err(BuildError::Invalid {
                        channel: name,
                        error: "needs webhook_url, or token and channel".into(),
                    });
                }
            };
            Arc::new(slack::Slack::new(name, mode))
        }
        ChannelKind::Email {
            host,
            port,
            tls,
            from,
            to,
            username,
            password,
        } => {
            let credentials = match (username, password) {
                (Some(u), Some(p)) => Some((u.clone(), read("password", p)?)),
                _ => None,
            };
            let mail = email::Email::new(
                name.clone(),
                email::Settings {
                    host: host.clone(),
                    port: *port,
                    tls: *tls,
                    from: from.clone(),
                    to: to.clone(),
                    credentials,
                },
            )
            .map_err(|error| BuildError::Invalid {
                channel: name,
                error,
            })?;
            Arc::new(mail)
        }
        ChannelKind::Pagerduty { routing_key, url } => Arc::new(pagerduty::PagerDuty::new(
            name,
            url.clone(),
            read("routing_key", routing_key)?,
        )),
    })
}
