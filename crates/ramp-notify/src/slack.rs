//! Slack, through an incoming webhook or a bot token.
//!
//! With a bot token each rollout gets **one thread**: its root message is a status card
//! (status, phase and share, canary and stable error rate and p95, gates) that is updated in
//! place with every notice, and every notice is a reply in the thread (a critical one is also
//! shown in the channel). The root's reference (`<channel id>/<ts>`) is kept in the store, so
//! the thread survives restarts. Slack's HTTP 429 `Retry-After` is honoured.

use crate::{Attempt, Notifier, NotifyError, Retry, Sent};
use ramp_store::BoxFuture;
use ramp_wire::v1::NotifyKind;
use serde_json::{Value, json};

/// How the channel reaches Slack.
pub enum Mode {
    /// An incoming webhook's URL (the credential).
    Webhook(String),
    /// A bot token, the channel to post to, and the Web API's base URL.
    Bot {
        /// `xoxb-…`.
        token: String,
        /// Channel name or id.
        channel: String,
        /// `https://slack.com/api`.
        api: String,
    },
}

/// A Slack channel.
pub struct Slack {
    name: String,
    mode: Mode,
}

impl std::fmt::Debug for Slack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.mode {
            Mode::Webhook(_) => "webhook",
            Mode::Bot { .. } => "bot",
        };
        f.debug_struct("Slack")
            .field("name", &self.name)
            .field("mode", &mode)
            .finish_non_exhaustive()
    }
}

impl Slack {
    /// A channel reaching Slack through `mode`.
    pub fn new(name: String, mode: Mode) -> Self {
        Slack { name, mode }
    }

    /// Calls a Web API method; Slack answers 200 with `ok: false` for most errors.
    async fn call(&self, method: &str, body: Value) -> Result<Value, NotifyError> {
        let Mode::Bot { token, api, .. } = &self.mode else {
            return Err(NotifyError::never("not a bot channel"));
        };
        let what = format!("slack {} {method}", self.name);
        let answer = crate::http::post_json(
            &what,
            &format!("{api}/{method}"),
            &[("authorization", format!("Bearer {token}"))],
            serde_json::to_vec(&body).unwrap_or_default(),
        )
        .await?;
        let v: Value = serde_json::from_slice(&answer.body)
            .map_err(|_| NotifyError::later(format!("{what}: HTTP {}: not JSON", answer.status)))?;
        if v.get("ok").and_then(Value::as_bool) == Some(true) {
            return Ok(v);
        }
        let error = v
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("unknown error")
            .to_string();
        let retry = match error.as_str() {
            "ratelimited"
            | "internal_error"
            | "fatal_error"
            | "service_unavailable"
            | "request_timeout" => Retry::Later,
            _ => Retry::Never,
        };
        Err(NotifyError {
            error: format!("{what}: {error}"),
            retry,
            thread: None,
        })
    }

    async fn bot(&self, attempt: Attempt<'_>, channel: &str) -> Result<Sent, NotifyError> {
        let e = attempt.entry;
        let card = crate::message::slack_card(e);
        let fallback = crate::message::subject(e);
        let (root, new) = match attempt.thread.and_then(|t| t.split_once('/')) {
            Some((c, ts)) => ((c.to_string(), ts.to_string()), false),
            None => {
                let v = self
                    .call(
                        "chat.postMessage",
                        json!({"channel": channel, "text": format!("ramp rollout {}", e.rollout), "blocks": card}),
                    )
                    .await?;
                let c = v.get("channel").and_then(Value::as_str).unwrap_or(channel);
                let Some(ts) = v.get("ts").and_then(Value::as_str) else {
                    return Err(NotifyError::later(format!(
                        "slack {}: chat.postMessage answered without a ts",
                        self.name
                    )));
                };
                ((c.to_string(), ts.to_string()), true)
            }
        };
        let reference = format!("{}/{}", root.0, root.1);
        let reply = self
            .call(
                "chat.postMessage",
                json!({
                    "channel": root.0,
                    "thread_ts": root.1,
                    "reply_broadcast": e.notice.kind == NotifyKind::Critical,
                    "text": fallback,
                    "blocks": crate::message::slack_blocks(e),
                    "metadata": {"event_type": "ramp_notice", "event_payload": {"id": attempt.key()}},
                }),
            )
            .await;
        if let Err(mut err) = reply {
            err.thread = new.then(|| reference.clone());
            return Err(err);
        }
        // The card is a view: a failed update is fixed by the next notice's, and retrying
        // would post the reply twice.
        if let Err(err) = self
            .call(
                "chat.update",
                json!({"channel": root.0, "ts": root.1, "text": format!("ramp rollout {}", e.rollout), "blocks": card}),
            )
            .await
        {
            tracing::warn!(channel = %self.name, error = %err, "the rollout's Slack status card was not updated");
        }
        Ok(Sent {
            thread: new.then_some(reference),
        })
    }
}

impl Notifier for Slack {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver<'a>(&'a self, attempt: Attempt<'a>) -> BoxFuture<'a, Result<Sent, NotifyError>> {
        Box::pin(async move {
            match &self.mode {
                Mode::Webhook(url) => {
                    let e = attempt.entry;
                    let body = json!({
                        "text": crate::message::subject(e),
                        "blocks": crate::message::slack_blocks(e),
                    });
                    let what = format!("slack {}", self.name);
                    crate::http::post_json(
                        &what,
                        url,
                        &[],
                        serde_json::to_vec(&body).unwrap_or_default(),
                    )
                    .await?;
                    Ok(Sent::default())
                }
                Mode::Bot { channel, .. } => self.bot(attempt, channel).await,
            }
        })
    }
}
