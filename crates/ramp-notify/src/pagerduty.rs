//! PagerDuty Events API v2: a critical notice triggers (or adds to) one incident per rollout,
//! deduplicated by `ramp-<rollout>`; the rollout completing resolves it (a backend coming back
//! does not: the other may still be down, or a hold may still wait). A rollback's incident stays open: it is for people to close
//! after the incident review. Other notices routed here are accepted and not sent.

use crate::{Attempt, Notifier, NotifyError, Sent};
use ramp_store::BoxFuture;
use ramp_wire::v1::NotifyKind;

/// A PagerDuty channel.
pub struct PagerDuty {
    name: String,
    url: String,
    routing_key: String,
}

impl std::fmt::Debug for PagerDuty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PagerDuty")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl PagerDuty {
    /// Sends events to `url` with `routing_key`.
    pub fn new(name: String, url: String, routing_key: String) -> Self {
        PagerDuty {
            name,
            url,
            routing_key,
        }
    }
}

/// The event for a notice, or `None` when the notice is not for PagerDuty.
pub fn event(attempt: &Attempt<'_>, routing_key: &str) -> Option<serde_json::Value> {
    let e = attempt.entry;
    let n = &e.notice;
    let action = match (n.kind, n.about.as_str()) {
        (NotifyKind::Critical, _) => "trigger",
        (_, "completed") => "resolve",
        _ => return None,
    };
    let mut ev = serde_json::json!({
        "routing_key": routing_key,
        "event_action": action,
        "dedup_key": format!("ramp-{}", e.rollout),
    });
    if action == "trigger" {
        ev["payload"] = serde_json::json!({
            "summary": crate::message::subject(e).chars().take(1000).collect::<String>(),
            "source": format!("ramp/{}", e.rollout),
            "severity": "critical",
            "component": e.rollout,
            "class": n.about,
            "custom_details": {
                "notice": attempt.key(),
                "text": crate::message::text(e),
                "numbers": n.numbers,
            },
        });
        if let Some(link) = &n.link {
            ev["links"] = serde_json::json!([{"href": link, "text": "rollout in ramp"}]);
        }
    }
    Some(ev)
}

impl Notifier for PagerDuty {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver<'a>(&'a self, attempt: Attempt<'a>) -> BoxFuture<'a, Result<Sent, NotifyError>> {
        Box::pin(async move {
            let Some(ev) = event(&attempt, &self.routing_key) else {
                return Ok(Sent::default());
            };
            let body = serde_json::to_vec(&ev).unwrap_or_default();
            let what = format!("pagerduty {}", self.name);
            crate::http::post_json(&what, &self.url, &[], body).await?;
            Ok(Sent::default())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ramp_core::rollout::{About, Notice, NotifyKind as K, StopReason};
    use ramp_store::OutboxEntry;

    fn entry(kind: K, about: About) -> OutboxEntry {
        OutboxEntry {
            id: 3,
            rollout: "pay".into(),
            seq: 1,
            at: 0,
            notice: ramp_wire::v1::Notice::of("pay", &Notice { kind, about }),
            delivered_at: None,
            deliveries: Vec::new(),
        }
    }

    fn action(e: &OutboxEntry) -> Option<String> {
        let a = Attempt {
            entry: e,
            number: 1,
            thread: None,
        };
        event(&a, "rk").map(|ev| {
            assert_eq!(ev["routing_key"], "rk");
            assert_eq!(ev["dedup_key"], "ramp-pay", "one incident per rollout");
            ev["event_action"].as_str().unwrap().to_string()
        })
    }

    #[test]
    fn critical_notices_trigger_completion_resolves_and_the_rest_is_not_paged() {
        let rolled_back = entry(
            K::Critical,
            About::RolledBack {
                reason: StopReason::Operator {
                    by: "ana".into(),
                    note: "n".into(),
                },
                share_before: ramp_core::cohort::ShareBp::new(500).unwrap(),
            },
        );
        assert_eq!(action(&rolled_back).as_deref(), Some("trigger"));
        let done = entry(K::Status, About::Completed { forced: false });
        assert_eq!(action(&done).as_deref(), Some("resolve"));
        let started = entry(
            K::Status,
            About::PhaseStarted {
                phase: "a".into(),
                share: ramp_core::cohort::ShareBp::new(500).unwrap(),
                duration: 1,
            },
        );
        assert_eq!(action(&started), None);
    }
}
