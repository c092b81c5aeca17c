//! The stored shapes of journal rows and snapshots, with their format numbers, and the readers
//! of every earlier format.
//!
//! * **Journal events** are [`ramp_wire::v1::Event`] JSON. Format 1 (ramp before journal
//!   formats had numbers) stored the core's event type, whose words (`explanation`, `reason`)
//!   the wire type still carries; format 2 adds the numbers (`evidence`, `why`, verdict
//!   `detail`). Both parse as the same wire type.
//! * **State snapshots** are the core's [`State`] JSON. Format 1 held prose where format 2 has
//!   data (a stop reason, verdict explanations); [`upgrade_state_1`] rewrites a format-1
//!   snapshot into format 2, keeping the prose as the core's `text` variants.
//! * **Notices** in the outbox are [`ramp_wire::v1::Notice`] JSON (format 2).
//! * **Windows** are the core's `MetricWindow` JSON; fields are only ever added to it, with
//!   defaults, so every stored window still reads.

use super::StoreError;
use ramp_core::rollout::State;
use ramp_wire::v1;
use serde_json::Value;

/// The format journal events are written in.
pub const EVENT_FORMAT: i64 = 2;
/// The format state snapshots are written in.
pub const STATE_FORMAT: i64 = 2;
/// The format outbox notices are written in.
pub(crate) const NOTICE_FORMAT: i64 = 2;

/// An event ready to be written: its time, its kind (for the `kind` column) and its JSON.
pub(crate) struct EncodedEvent {
    pub(crate) at: i64,
    pub(crate) kind: &'static str,
    pub(crate) body: String,
}

/// Serializes an event for the journal.
pub(crate) fn encode_event(event: &v1::Event) -> Result<EncodedEvent, StoreError> {
    let body = serde_json::to_string(event)
        .map_err(|e| StoreError::Encode(format!("journal event: {e}")))?;
    Ok(EncodedEvent {
        at: to_i64(event.at, "event time")?,
        kind: event.kind.name(),
        body,
    })
}

/// Parses a journal row of any format.
pub(crate) fn decode_event(
    rollout: &str,
    seq: u64,
    format: i64,
    body: &str,
) -> Result<v1::Event, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        rollout: rollout.to_string(),
        seq,
        reason,
    };
    match format {
        1 | 2 => serde_json::from_str(body)
            .map_err(|e| corrupt(format!("journal event is not valid: {e}"))),
        other => Err(corrupt(format!(
            "journal event has format {other}, newer than this ramp knows ({EVENT_FORMAT})"
        ))),
    }
}

/// Serializes a state snapshot (in [`STATE_FORMAT`]).
pub(crate) fn encode_state(state: &State) -> Result<String, StoreError> {
    serde_json::to_string(state).map_err(|e| StoreError::Encode(format!("rollout state: {e}")))
}

/// Parses a snapshot row of any format.
pub(crate) fn decode_state(
    rollout: &str,
    seq: u64,
    format: i64,
    state: &str,
) -> Result<State, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        rollout: rollout.to_string(),
        seq,
        reason,
    };
    match format {
        1 => {
            let mut value: Value = serde_json::from_str(state)
                .map_err(|e| corrupt(format!("state snapshot is not valid: {e}")))?;
            upgrade_state_1(&mut value);
            serde_json::from_value(value)
                .map_err(|e| corrupt(format!("state snapshot (format 1) is not valid: {e}")))
        }
        2 => serde_json::from_str(state)
            .map_err(|e| corrupt(format!("state snapshot is not valid: {e}"))),
        other => Err(corrupt(format!(
            "state snapshot has format {other}, newer than this ramp knows ({STATE_FORMAT})"
        ))),
    }
}

/// Rewrites a format-1 state snapshot into format 2:
///
/// * `reason` (text) becomes `{"why": "text", "text": ...}`;
/// * each verdict's `explanation` (in `verdicts` and in every `history` record) becomes the
///   detail `{"kind": "text", "text": ...}`, with confidence 0.95 (format 1 did not record it;
///   a text detail is rendered as written, so the number is never shown);
/// * `phase_recorded` is set when the rollout awaits approval (format 1 had recorded the
///   phase then), and `forced` when it completed through a forced promotion.
pub(crate) fn upgrade_state_1(state: &mut Value) {
    let Some(obj) = state.as_object_mut() else {
        return;
    };
    if let Some(Value::String(text)) = obj.get("reason").cloned() {
        obj.insert(
            "reason".into(),
            serde_json::json!({"why": "text", "text": text}),
        );
    }
    let upgrade_verdicts = |list: Option<&mut Value>| {
        if let Some(Value::Array(verdicts)) = list {
            for v in verdicts {
                if let Some(v) = v.as_object_mut() {
                    let text = v
                        .remove("explanation")
                        .and_then(|t| t.as_str().map(String::from))
                        .unwrap_or_default();
                    v.insert(
                        "detail".into(),
                        serde_json::json!({"kind": "text", "text": text}),
                    );
                    v.entry("confidence").or_insert(serde_json::json!(0.95));
                }
            }
        }
    };
    upgrade_verdicts(obj.get_mut("verdicts"));
    let mut last_result = None;
    if let Some(Value::Array(history)) = obj.get_mut("history") {
        for h in history.iter_mut() {
            upgrade_verdicts(h.get_mut("verdicts"));
        }
        last_result = history
            .last()
            .and_then(|h| h.get("result"))
            .and_then(Value::as_str)
            .map(String::from);
    }
    let status = obj.get("status").and_then(Value::as_str).map(String::from);
    obj.entry("phase_recorded")
        .or_insert(Value::Bool(status.as_deref() == Some("awaiting_approval")));
    obj.entry("forced").or_insert(Value::Bool(
        status.as_deref() == Some("completed") && last_result.as_deref() == Some("forced"),
    ));
}

/// Serializes a notice for the outbox.
pub(crate) fn encode_notice(notice: &v1::Notice) -> Result<String, StoreError> {
    serde_json::to_string(notice).map_err(|e| StoreError::Encode(format!("notice: {e}")))
}

/// Parses an outbox row.
pub(crate) fn decode_notice(
    rollout: &str,
    id: u64,
    format: i64,
    body: &str,
) -> Result<v1::Notice, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        rollout: rollout.to_string(),
        seq: id,
        reason,
    };
    match format {
        2 => serde_json::from_str(body).map_err(|e| corrupt(format!("notice {id}: {e}"))),
        other => Err(corrupt(format!("notice {id} has unknown format {other}"))),
    }
}

/// Databases store signed 64-bit integers; ramp's times and seqs are `u64`.
pub(crate) fn to_i64(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Encode(format!("{what} {v} is beyond 2^63 - 1")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ramp_core::plan::parse_plan;

    const SEED: &str = include_str!("../../../examples/payments-backend.toml");

    #[test]
    fn the_kind_column_is_the_serde_tag() {
        let e = v1::Event {
            at: 5,
            phase: "canary".into(),
            kind: v1::EventKind::PhaseStarted { share: 500 },
        };
        let enc = encode_event(&e).unwrap();
        assert_eq!(enc.kind, "phase_started");
        assert_eq!(enc.at, 5);
        assert!(
            enc.body.contains(r#""kind":"phase_started""#),
            "{}",
            enc.body
        );
        assert_eq!(decode_event("r", 1, 2, &enc.body).unwrap(), e);
    }

    #[test]
    fn out_of_range_numbers_are_refused_not_wrapped() {
        let e = v1::Event {
            at: u64::MAX,
            phase: String::new(),
            kind: v1::EventKind::Started,
        };
        assert!(matches!(encode_event(&e), Err(StoreError::Encode(_))));
    }

    #[test]
    fn bad_rows_are_corrupt_not_a_panic() {
        match decode_state("r", 7, 2, "{not json") {
            Err(StoreError::Corrupt { rollout, seq, .. }) => {
                assert_eq!((rollout.as_str(), seq), ("r", 7))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode_event("r", 3, 2, r#"{"at":1,"phase":"x","kind":"no_such_kind"}"#),
            Err(StoreError::Corrupt { seq: 3, .. })
        ));
        assert!(matches!(
            decode_event("r", 3, 9, r#"{"at":1,"phase":"x","kind":"started"}"#),
            Err(StoreError::Corrupt { reason, .. }) if reason.contains("newer")
        ));
        assert!(matches!(
            decode_state("r", 1, 3, "{}"),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_format_2_state_round_trips() {
        let state = State::new(&parse_plan(SEED, "seed").unwrap());
        let text = encode_state(&state).unwrap();
        assert_eq!(decode_state("r", 0, STATE_FORMAT, &text).unwrap(), state);
    }
}
