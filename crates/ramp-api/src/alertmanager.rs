//! The Prometheus Alertmanager webhook receiver: maps firing alerts labelled with a `rollout`
//! and a `category` (`pci` or `security`) to signals.
//!
//! Alertmanager sends every alert of a group again on each notification (a new alert joining
//! the group, `repeat_interval`), so the same firing alert arrives many times. Each one is
//! counted once: an alert is identified by its fingerprint (or its labels) and `startsAt`, the
//! identity goes to the rollout as the signal's key, and the rollout's state machine skips a key
//! it has counted before. The keys are part of the journaled state, so a repeat after a restart
//! is still recognised. An alert that resolves and fires again has a new `startsAt` and counts
//! again.

use super::error::{Problem, field_error};
use super::input::MAX_TEXT;
use crate::plane::{ControlError, Rollouts};
use ramp_core::evidence::Signal;
use ramp_core::plan::Severity;
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The answer to a webhook call.
#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
pub(crate) struct AlertmanagerResult {
    /// Set (with status 503) when the store was unavailable for some alert: retry the call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Alerts recorded as signals.
    pub accepted: u64,
    /// Alerts ignored: resolved, without `rollout`/`category` labels, another category, or
    /// already recorded (duplicates are counted here too).
    pub skipped: u64,
    /// Of the skipped alerts, those already recorded by an earlier call.
    pub duplicates: u64,
    /// Alerts that could not be recorded.
    pub errors: Vec<AlertError>,
}

/// An alert that could not be recorded.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct AlertError {
    /// Position in `alerts`.
    pub index: usize,
    /// The `rollout` label, when there was one.
    pub rollout: Option<String>,
    /// Why.
    pub error: String,
}

/// What to do with one alert.
#[derive(Debug, PartialEq)]
pub(crate) enum Item {
    /// Nothing: resolved, or not for ramp.
    Skip,
    /// Malformed alert.
    Error(AlertErrorItem),
    /// Record this signal.
    Signal {
        rollout: String,
        signal: Signal,
        identity: String,
    },
}

#[derive(Debug, PartialEq)]
pub(crate) struct AlertErrorItem {
    rollout: Option<String>,
    error: String,
}

/// Checks the payload's shape and maps each alert. A payload that is not a version 4 webhook
/// body is a 400; a malformed alert inside one only fails that alert.
pub(crate) fn parse(body: Option<Value>) -> Result<Vec<Item>, Problem> {
    let Some(value) = body else {
        return Err(Problem::field(
            "alerts",
            "required: the webhook's list of alerts",
        ));
    };
    let Some(object) = value.as_object() else {
        return Err(Problem::field(
            "body",
            "expected an Alertmanager webhook payload (a JSON object)",
        ));
    };
    let mut errors = Vec::new();
    match object.get("version") {
        None | Some(Value::Null) => {}
        Some(Value::String(v)) if v == "4" => {}
        Some(_) => errors.push(field_error(
            "version",
            "unsupported webhook version: expected \"4\"",
        )),
    }
    let alerts = match object.get("alerts") {
        Some(Value::Array(a)) => Some(a),
        Some(_) => {
            errors.push(field_error("alerts", "must be an array of alerts"));
            None
        }
        None => {
            errors.push(field_error(
                "alerts",
                "required: the webhook's list of alerts",
            ));
            None
        }
    };
    match alerts {
        Some(alerts) if errors.is_empty() => Ok(alerts.iter().map(alert).collect()),
        _ => Err(Problem::fields(errors)),
    }
}

fn string_map(value: Option<&Value>) -> Option<&Map<String, Value>> {
    value.and_then(Value::as_object)
}

fn label<'a>(map: Option<&'a Map<String, Value>>, key: &str) -> Option<&'a str> {
    map?.get(key)?
        .as_str()
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn alert(value: &Value) -> Item {
    let Some(alert) = value.as_object() else {
        return Item::Error(AlertErrorItem {
            rollout: None,
            error: "an alert must be a JSON object".into(),
        });
    };
    let labels = string_map(alert.get("labels"));
    let rollout = label(labels, "rollout").map(str::to_string);
    let fail = |error: String| {
        Item::Error(AlertErrorItem {
            rollout: rollout.clone(),
            error,
        })
    };
    // A mistyped label must not make a PCI alert vanish as "unlabelled": say so.
    match alert.get("labels") {
        None | Some(Value::Null | Value::Object(_)) => {}
        Some(_) => return fail("labels: must be an object of strings".into()),
    }
    for key in ["rollout", "category", "severity"] {
        if let Some(v) = labels.and_then(|m| m.get(key))
            && !v.is_string()
        {
            let found = match v {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                Value::Array(_) => "an array",
                Value::Object(_) => "an object",
                Value::String(_) => "a string",
            };
            return fail(format!("labels.{key}: must be a string, found {found}"));
        }
    }
    let status = match alert.get("status") {
        Some(Value::String(s)) => s.as_str(),
        // Alertmanager always sends each alert's status; the payload's is only a summary.
        None | Some(Value::Null) => return fail("status: required (firing or resolved)".into()),
        Some(_) => return fail("status: must be a string (firing or resolved)".into()),
    };
    if status != "firing" {
        return Item::Skip;
    }
    let (Some(rollout_name), Some(category)) = (rollout.clone(), label(labels, "category")) else {
        return Item::Skip;
    };
    let annotations = string_map(alert.get("annotations"));
    let note: String = label(annotations, "summary")
        .or_else(|| label(annotations, "description"))
        .or_else(|| label(labels, "alertname"))
        .unwrap_or("")
        .chars()
        .take(MAX_TEXT)
        .collect();
    let signal = if category.eq_ignore_ascii_case("pci") {
        Signal::PciAlert { note }
    } else if category.eq_ignore_ascii_case("security") {
        Signal::SecurityAlert {
            severity: severity(label(labels, "severity")),
            note,
        }
    } else {
        return Item::Skip;
    };
    let starts_at = alert.get("startsAt").and_then(Value::as_str).unwrap_or("");
    let who = match alert.get("fingerprint").and_then(Value::as_str) {
        Some(f) if !f.is_empty() && f.len() <= 64 => format!("fingerprint {f}"),
        _ => {
            // Without a (sane) fingerprint, the label set (sorted) identifies the alert; its
            // digest keeps the key short, since the key is journaled with every repeat.
            let sorted: BTreeMap<&String, &Value> = labels.into_iter().flatten().collect();
            let text = serde_json::to_string(&sorted).unwrap_or_default();
            let digest = Sha256::digest(text.as_bytes());
            let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
            format!("labels {hex}")
        }
    };
    let starts_at: String = starts_at.chars().take(64).collect();
    Item::Signal {
        identity: format!("alertmanager {who} {starts_at}"),
        rollout: rollout_name,
        signal,
    }
}

/// Maps Alertmanager's severity label: ramp's four levels, plus `warning` → medium and
/// `info` → low; anything else (or none) counts as high.
pub(crate) fn severity(label: Option<&str>) -> Severity {
    match label.map(str::to_ascii_lowercase).as_deref() {
        Some("warning" | "warn") => Severity::Medium,
        Some("info" | "informational" | "none") => Severity::Low,
        Some(other) => Severity::parse(other).unwrap_or(Severity::High),
        None => Severity::High,
    }
}

/// Records each mapped alert. Returns the answer and whether the store was unavailable for any
/// of them (then the caller answers 503 so that Alertmanager retries; the alerts recorded this
/// time are recognised as duplicates on the retry).
pub(crate) async fn deliver<R: Rollouts>(
    rollouts: &R,
    items: Vec<Item>,
    from: &str,
) -> (AlertmanagerResult, bool) {
    let mut result = AlertmanagerResult::default();
    let mut unavailable = false;
    for (index, item) in items.into_iter().enumerate() {
        match item {
            Item::Skip => result.skipped += 1,
            Item::Error(e) => result.errors.push(AlertError {
                index,
                rollout: e.rollout,
                error: e.error,
            }),
            Item::Signal {
                rollout,
                signal,
                identity,
            } => match rollouts
                .signal(&rollout, signal, Some(identity), from.to_string())
                .await
            {
                Ok(r) if r.duplicate => {
                    result.skipped += 1;
                    result.duplicates += 1;
                }
                Ok(_) => result.accepted += 1,
                Err(e) => {
                    unavailable |= matches!(e, ControlError::Unavailable(_));
                    result.errors.push(AlertError {
                        index,
                        rollout: Some(rollout),
                        error: e.to_string(),
                    });
                }
            },
        }
    }
    if unavailable {
        result.error = Some("some alerts could not be stored; retry".into());
    }
    (result, unavailable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn severity_mapping() {
        assert_eq!(severity(Some("critical")), Severity::Critical);
        assert_eq!(severity(Some("CRITICAL")), Severity::Critical);
        assert_eq!(severity(Some("warning")), Severity::Medium);
        assert_eq!(severity(Some("info")), Severity::Low);
        assert_eq!(severity(Some("low")), Severity::Low);
        assert_eq!(severity(None), Severity::High);
        assert_eq!(severity(Some("page")), Severity::High);
    }

    /// Regression (issue 11, found by schemathesis): a PCI alert whose `rollout` label was a
    /// number, or whose labels were not an object, was skipped as unlabelled and vanished.
    #[test]
    fn mistyped_labels_are_errors_not_skips() {
        let items = parse(Some(json!({"alerts": [
            {"status": "firing", "labels": {"rollout": 5, "category": "pci"}},
            {"status": "firing", "labels": {"rollout": "r", "category": ["pci"]}},
            {"status": "resolved", "labels": ["rollout", "r"]},
            {"labels": {"rollout": "r", "category": "pci"}},
            {"status": "firing", "labels": {"rollout": "r", "category": "pci", "other": 7}},
        ]})))
        .unwrap();
        let errors: Vec<String> = items
            .iter()
            .filter_map(|i| match i {
                Item::Error(e) => Some(e.error.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            errors,
            vec![
                "labels.rollout: must be a string, found a number",
                "labels.category: must be a string, found an array",
                "labels: must be an object of strings",
                "status: required (firing or resolved)",
            ]
        );
        assert!(
            matches!(items[4], Item::Signal { .. }),
            "other labels may be anything"
        );
    }

    #[test]
    fn identity_without_fingerprint_uses_labels() {
        let items = parse(Some(json!({"alerts": [
            {"status": "firing", "labels": {"rollout": "r", "category": "pci", "b": "1", "a": "2"}},
        ]})))
        .unwrap();
        let Item::Signal { identity, .. } = &items[0] else {
            panic!("{items:?}")
        };
        assert!(identity.starts_with("alertmanager labels "), "{identity}");
        // The same labels in another order are the same alert; other labels are not.
        let again = parse(Some(json!({"alerts": [
            {"status": "firing", "labels": {"a": "2", "b": "1", "category": "pci", "rollout": "r"}},
            {"status": "firing", "labels": {"a": "3", "b": "1", "category": "pci", "rollout": "r"}},
        ]})))
        .unwrap();
        let ids: Vec<&String> = again
            .iter()
            .filter_map(|i| match i {
                Item::Signal { identity, .. } => Some(identity),
                _ => None,
            })
            .collect();
        assert_eq!(ids[0], identity);
        assert_ne!(ids[1], identity);
    }
}
