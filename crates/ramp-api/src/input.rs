//! Reading and validating request input. Bodies are read under the size limit and parsed as
//! untyped JSON, then checked field by field so that a 400 names every bad field.

use super::error::{FieldError, Problem, field_error};
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use ramp_core::evidence::Signal;
use ramp_core::plan::Severity;
use ramp_core::rollout::Command;
use serde_json::{Map, Value};

/// Longest accepted note or reason, in characters.
pub(crate) const MAX_TEXT: usize = 4096;

/// Reads the whole body, refusing more than `limit` bytes (413).
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, Problem> {
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    // A body that trickles in must not hold one of the listener's few connection slots.
    let Ok(read) = tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await else {
        return Err(Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} s",
                timeout.as_secs_f64()
            ),
        ));
    };
    match read {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(_) => Err(Problem::field("body", "could not read the request body")),
    }
}

/// The media type of the body, lowercased, without parameters (`None`: no header).
pub(crate) fn media_type(headers: &HeaderMap) -> Option<String> {
    headers.get(header::CONTENT_TYPE).map(|v| {
        let text = String::from_utf8_lossy(v.as_bytes());
        text.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    })
}

fn is_json(media: &str) -> bool {
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

fn unsupported(media: &str, expected: &str) -> Problem {
    Problem::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        format!("unsupported content type {media:?}: expected {expected}"),
    )
}

/// Parses a JSON body. An empty body is `None` (for endpoints whose body is optional). The
/// content type must be JSON when given.
pub(crate) fn json(headers: &HeaderMap, bytes: &[u8]) -> Result<Option<Value>, Problem> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    if let Some(media) = media_type(headers)
        && !is_json(&media)
    {
        return Err(unsupported(&media, "application/json"));
    }
    serde_json::from_slice(bytes)
        .map(Some)
        .map_err(|e| Problem::field("body", format!("invalid JSON: {e}")))
}

/// The plan text of a create request: a TOML body (`application/toml`, `text/plain`, or no
/// content type) or JSON `{"plan": "<toml>"}`.
pub(crate) fn plan_text(headers: &HeaderMap, bytes: &[u8]) -> Result<String, Problem> {
    let media = media_type(headers);
    match media.as_deref() {
        Some(m) if is_json(m) => {
            let value = json(headers, bytes)?
                .ok_or_else(|| Problem::field("plan", "required: the plan as TOML text"))?;
            let object = value.as_object().ok_or_else(|| {
                Problem::field("body", "expected a JSON object {\"plan\": \"..\"}")
            })?;
            let mut errors = unknown_fields(object, &["plan"], "");
            let plan = match object.get("plan") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => {
                    errors.push(field_error("plan", "must be a string (the plan as TOML)"));
                    None
                }
                None => {
                    errors.push(field_error("plan", "required: the plan as TOML text"));
                    None
                }
            };
            match plan {
                Some(plan) if errors.is_empty() => Ok(plan),
                _ => Err(Problem::fields(errors)),
            }
        }
        None | Some("application/toml" | "text/plain" | "text/x-toml" | "application/x-toml") => {
            String::from_utf8(bytes.to_vec())
                .map_err(|_| Problem::field("body", "the plan is not valid UTF-8"))
        }
        Some(other) => Err(unsupported(
            other,
            "application/toml, text/plain or application/json",
        )),
    }
}

fn unknown_fields(object: &Map<String, Value>, known: &[&str], prefix: &str) -> Vec<FieldError> {
    object
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .map(|k| {
            field_error(
                format!("{prefix}{k}"),
                format!("unknown field; expected one of: {}", known.join(", ")),
            )
        })
        .collect()
}

/// An optional text field (`null` counts as absent).
fn text_field(
    object: &Map<String, Value>,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    match object.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.chars().count() > MAX_TEXT => {
            errors.push(field_error(
                field,
                format!("too long: at most {MAX_TEXT} characters"),
            ));
            None
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            errors.push(field_error(field, "must be a string"));
            None
        }
    }
}

/// The signal kinds, as the API names them.
pub(crate) const SIGNAL_KINDS: [&str; 4] =
    ["pci_alert", "security_alert", "bug_report", "feedback"];

/// The longest signal `id` accepted.
pub(crate) const MAX_SIGNAL_ID: usize = 200;

/// Validates a signal body, naming every bad field. Answers with the signal and its optional
/// `id` (the sender's identity for it: a repeat with the same id is not counted twice).
pub(crate) fn signal(body: Option<Value>) -> Result<(Signal, Option<String>), Vec<FieldError>> {
    let Some(value) = body else {
        return Err(vec![field_error(
            "kind",
            format!("required: one of {}", SIGNAL_KINDS.join(", ")),
        )]);
    };
    let Some(object) = value.as_object() else {
        return Err(vec![field_error("body", "expected a JSON object")]);
    };
    let mut errors = Vec::new();
    let kind = match object.get("kind") {
        Some(Value::String(k)) if SIGNAL_KINDS.contains(&k.as_str()) => Some(k.as_str()),
        Some(Value::String(k)) => {
            errors.push(field_error(
                "kind",
                format!(
                    "unknown kind {k:?}: expected one of {}",
                    SIGNAL_KINDS.join(", ")
                ),
            ));
            None
        }
        Some(_) => {
            errors.push(field_error(
                "kind",
                format!("must be a string, one of {}", SIGNAL_KINDS.join(", ")),
            ));
            None
        }
        None => {
            errors.push(field_error(
                "kind",
                format!("required: one of {}", SIGNAL_KINDS.join(", ")),
            ));
            None
        }
    };
    let note = text_field(object, "note", &mut errors).unwrap_or_default();
    let id = match text_field(object, "id", &mut errors) {
        Some(id) if id.is_empty() || id.chars().count() > MAX_SIGNAL_ID => {
            errors.push(field_error(
                "id",
                format!("must be 1 to {MAX_SIGNAL_ID} characters"),
            ));
            None
        }
        id => id,
    };
    let severity = match object.get("severity") {
        None => None,
        Some(Value::String(s)) => match Severity::parse(s) {
            Some(sev) => Some(sev),
            None => {
                errors.push(field_error(
                    "severity",
                    format!("unknown severity {s:?}: expected low, medium, high or critical"),
                ));
                None
            }
        },
        Some(_) => {
            errors.push(field_error(
                "severity",
                "must be a string: low, medium, high or critical",
            ));
            None
        }
    };
    let score = match object.get("score") {
        None => None,
        Some(Value::Number(n)) => match n.as_f64() {
            Some(x) if x.is_finite() && (0.0..=1.0).contains(&x) => Some(x),
            _ => {
                errors.push(field_error("score", "must be a number from 0 to 1"));
                None
            }
        },
        Some(_) => {
            errors.push(field_error("score", "must be a number from 0 to 1"));
            None
        }
    };
    let Some(kind) = kind else {
        errors.extend(unknown_fields(
            object,
            &["kind", "id", "note", "severity", "score"],
            "",
        ));
        return Err(errors);
    };
    let allowed: &[&str] = match kind {
        "security_alert" => &["kind", "id", "severity", "note"],
        "feedback" => &["kind", "id", "score", "note"],
        _ => &["kind", "id", "note"],
    };
    errors.extend(unknown_fields(object, allowed, ""));
    if kind == "security_alert" && !object.contains_key("severity") {
        errors.push(field_error(
            "severity",
            "required for security_alert: low, medium, high or critical",
        ));
    }
    if kind == "feedback" && !object.contains_key("score") {
        errors.push(field_error(
            "score",
            "required for feedback: a number from 0 to 1",
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let signal = match kind {
        "pci_alert" => Signal::PciAlert { note },
        "bug_report" => Signal::BugReport { note },
        "security_alert" => Signal::SecurityAlert {
            severity: severity.unwrap_or(Severity::High),
            note,
        },
        _ => Signal::Feedback {
            score: score.unwrap_or_default(),
            note,
        },
    };
    Ok((signal, id))
}

/// The operator actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Pause,
    Resume,
    Approve,
    Promote,
    Rollback,
}

impl Action {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Approve => "approve",
            Action::Promote => "promote",
            Action::Rollback => "rollback",
        }
    }
}

/// Validates an action body (optional: `{"reason": .., "force": ..}`) into a command by `by`.
pub(crate) fn command(
    action: Action,
    body: Option<Value>,
    by: &str,
) -> Result<Command, Vec<FieldError>> {
    let empty = Map::new();
    let object = match &body {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(o)) => o,
        Some(_) => {
            return Err(vec![field_error(
                "body",
                "expected a JSON object {\"reason\": .., \"force\": ..} or no body",
            )]);
        }
    };
    let mut errors = unknown_fields(object, &["reason", "force"], "");
    let reason = text_field(object, "reason", &mut errors)
        .map(|r| r.trim().to_string())
        .unwrap_or_default();
    let force = match object.get("force") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            errors.push(field_error("force", "must be true or false"));
            false
        }
    };
    if force && action != Action::Promote {
        errors.push(field_error(
            "force",
            format!("only promote can be forced, not {}", action.name()),
        ));
    }
    // A reason of the wrong type is already reported; only a missing or blank one is here.
    let reason_missing = match object.get("reason") {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.trim().is_empty(),
        Some(_) => false,
    };
    if reason_missing && action == Action::Rollback {
        errors.push(field_error("reason", "required: why roll back"));
    }
    if reason_missing && action == Action::Promote && force {
        errors.push(field_error(
            "reason",
            "required with force: why skip the gates",
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let by = by.to_string();
    Ok(match action {
        Action::Pause => Command::Pause { by, reason },
        Action::Resume => Command::Resume { by },
        Action::Approve => Command::Approve { by },
        Action::Promote => Command::Promote { by, force, reason },
        Action::Rollback => Command::Rollback { by, reason },
    })
}

/// Default and largest page size of the events endpoint.
pub(crate) const DEFAULT_LIMIT: usize = 100;
/// Largest page size of the events endpoint.
pub(crate) const MAX_LIMIT: usize = 1000;

/// `after` and `limit` from the events query.
pub(crate) fn page(pairs: &[(String, String)]) -> Result<(u64, usize), Problem> {
    let mut errors = Vec::new();
    let mut after = 0;
    let mut limit = DEFAULT_LIMIT;
    for (key, value) in pairs {
        match key.as_str() {
            // Journal positions are int64 in the journal and the document.
            "after" => match value.trim().parse::<u64>() {
                Ok(n) if i64::try_from(n).is_ok() => after = n,
                _ => errors.push(field_error(
                    "after",
                    "must be a whole number from 0 to 9223372036854775807 (a journal position, 0 for the start)",
                )),
            },
            "limit" => match value.trim().parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => limit = n,
                _ => errors.push(field_error(
                    "limit",
                    format!("must be a whole number from 1 to {MAX_LIMIT}"),
                )),
            },
            _ => {}
        }
    }
    if errors.is_empty() {
        Ok((after, limit))
    } else {
        Err(Problem::fields(errors))
    }
}
