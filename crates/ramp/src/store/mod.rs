//! Durable state: the journal of every rollout and the latest snapshot of its state.
//!
//! Invariant 7, "nothing decided is lost": the shell appends a step's journal events together
//! with the state they produced in **one transaction**, and [`Store::append`] returns only once
//! that transaction is committed durably. Only then does the shell carry out the step's other
//! effects (set the share, notify, write reports). After a restart (even `kill -9`, even a power
//! cut) [`Store::load_all`] gives back every rollout with the state of its last acknowledged
//! append: the same phase, elapsed time, traffic share and evidence.
//!
//! The trait is narrow and synchronous so that a PostgreSQL implementation can sit behind it
//! later; callers run it on a blocking thread (`tokio::task::spawn_blocking`) or a dedicated
//! writer thread. Rows are plain (`TEXT`, `BIGINT`); states and events are stored as their
//! serde JSON, so the store never needs to know their shape beyond the event's `kind`.
//!
//! SQLite is the default backend: [`SqliteStore`].

mod sqlite;

pub use sqlite::SqliteStore;

use ramp_core::rollout::{Event, State};
use serde::Deserialize;
use std::borrow::Cow;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error (IO, locking, constraint, ...).
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored row cannot be read back (unparseable JSON, impossible numbers). Never a panic.
    #[error("corrupt store row for rollout {rollout:?} at seq {seq}: {reason}")]
    Corrupt {
        /// The rollout the row belongs to.
        rollout: String,
        /// The journal seq of the row (for a snapshot: the seq it was taken at).
        seq: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// No rollout of this name.
    #[error("no rollout named {0:?}")]
    NotFound(String),
    /// A rollout of this name exists already.
    #[error("a rollout named {0:?} already exists")]
    AlreadyExists(String),
    /// The schema cannot be brought to the version this binary needs (e.g. it is newer).
    #[error("schema migration: {0}")]
    Migration(String),
    /// A value the store cannot represent (a number beyond the signed 64-bit range, or a
    /// state that does not serialize). Nothing was written.
    #[error("cannot store value: {0}")]
    Encode(String),
    /// The database cannot be opened with the guarantees the store needs (e.g. WAL mode).
    #[error("cannot open store: {0}")]
    Open(String),
}

/// One rollout as stored: its plan text and its latest state.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredRollout {
    /// The rollout's unique name.
    pub name: String,
    /// The plan as submitted (TOML); the shell re-parses it on resume.
    pub plan_toml: String,
    /// When it was created (milliseconds, as given to [`Store::create`]).
    pub created_at: u64,
    /// The state written by the last acknowledged append (or by `create`).
    pub state: State,
    /// The seq of the last journal event (0 when the journal is empty).
    pub last_seq: u64,
    /// Where its proxy last listened (set by [`Store::set_listen`]), if recorded.
    pub listen: Option<String>,
}

/// A durable journal of rollouts. Every method is synchronous and, for writes, returns only
/// after the data is durable.
pub trait Store: Send + Sync {
    /// Creates a rollout with its plan text and initial state; `AlreadyExists` if the name is
    /// taken.
    fn create(
        &self,
        name: &str,
        plan_toml: &str,
        created_at: u64,
        state: &State,
    ) -> Result<(), StoreError>;

    /// Appends journal events AND the resulting state in ONE transaction, durably (committed
    /// before it returns). Returns the seq of the last event appended (events get consecutive
    /// seq numbers per rollout, from 1). With no events it only replaces the state snapshot
    /// (used after each analysis window, so evidence survives a crash) and returns the current
    /// last seq. `NotFound` for an unknown rollout.
    fn append(&self, name: &str, events: &[Event], state: &State) -> Result<u64, StoreError>;

    /// Like [`Store::append`], and records the analysis window (per-variant counts,
    /// exceedance counts, serialized sketches) that produced the step, in the same
    /// transaction.
    fn append_window(
        &self,
        name: &str,
        window: &ramp_core::evidence::MetricWindow,
        events: &[Event],
        state: &State,
    ) -> Result<u64, StoreError>;

    /// Recorded windows with time `> after`, oldest first, at most `limit`.
    fn windows(
        &self,
        name: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, ramp_core::evidence::MetricWindow)>, StoreError>;

    /// Every rollout with its latest state, for resuming after a restart (ordered by name).
    /// A rollout that cannot be read is an `Err` in its place, so one corrupt rollout does not
    /// keep the others from resuming; the outer error means the store itself failed.
    fn load_all(&self) -> Result<Vec<Result<StoredRollout, StoreError>>, StoreError>;

    /// Records the address a rollout's proxy listens on, so a restart can serve on the same
    /// one. `NotFound` for an unknown rollout.
    fn set_listen(&self, name: &str, listen: &str) -> Result<(), StoreError>;

    /// One rollout with its latest state; `NotFound` for an unknown name.
    fn load(&self, name: &str) -> Result<StoredRollout, StoreError>;

    /// Journal page: events with seq > `after`, oldest first, at most `limit`. `NotFound` for an
    /// unknown rollout; an empty page past the end.
    fn events(&self, name: &str, after: u64, limit: usize)
    -> Result<Vec<(u64, Event)>, StoreError>;

    /// The names of all rollouts, sorted.
    fn names(&self) -> Result<Vec<String>, StoreError>;
}

/// An event ready to be written: its time, its kind (for the `kind` column) and its JSON.
/// Shared by every backend so they store the same bytes.
pub(crate) struct EncodedEvent {
    pub at: i64,
    pub kind: String,
    pub body: String,
}

/// Serializes an event for the journal.
pub(crate) fn encode_event(event: &Event) -> Result<EncodedEvent, StoreError> {
    #[derive(Deserialize)]
    struct KindOnly<'a> {
        #[serde(borrow)]
        kind: Cow<'a, str>,
    }
    let body = serde_json::to_string(event)
        .map_err(|e| StoreError::Encode(format!("journal event: {e}")))?;
    // The kind as serde names it (`phase_started`, `rolled_back`, ...), so the column always
    // matches the body.
    let kind = serde_json::from_str::<KindOnly>(&body)
        .map_err(|e| StoreError::Encode(format!("journal event without a kind: {e}")))?
        .kind
        .into_owned();
    Ok(EncodedEvent {
        at: to_i64(event.at, "event time")?,
        kind,
        body,
    })
}

/// Serializes a state snapshot.
pub(crate) fn encode_state(state: &State) -> Result<String, StoreError> {
    serde_json::to_string(state).map_err(|e| StoreError::Encode(format!("rollout state: {e}")))
}

/// Parses a journal row.
pub(crate) fn decode_event(rollout: &str, seq: u64, body: &str) -> Result<Event, StoreError> {
    serde_json::from_str(body).map_err(|e| StoreError::Corrupt {
        rollout: rollout.to_string(),
        seq,
        reason: format!("journal event is not valid: {e}"),
    })
}

/// Parses a snapshot row.
pub(crate) fn decode_state(rollout: &str, seq: u64, state: &str) -> Result<State, StoreError> {
    serde_json::from_str(state).map_err(|e| StoreError::Corrupt {
        rollout: rollout.to_string(),
        seq,
        reason: format!("state snapshot is not valid: {e}"),
    })
}

/// Databases store signed 64-bit integers; ramp's times and seqs are `u64`.
pub(crate) fn to_i64(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Encode(format!("{what} {v} is beyond 2^63 - 1")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ramp_core::cohort::ShareBp;
    use ramp_core::rollout::EventKind;

    #[test]
    fn the_kind_column_is_the_serde_tag() {
        let e = Event {
            at: 5,
            phase: "canary".into(),
            kind: EventKind::PhaseStarted {
                share: ShareBp::new(500).unwrap(),
            },
        };
        let enc = encode_event(&e).unwrap();
        assert_eq!(enc.kind, "phase_started");
        assert_eq!(enc.at, 5);
        assert_eq!(decode_event("r", 1, &enc.body).unwrap(), e);
        let done = Event {
            at: 6,
            phase: "full".into(),
            kind: EventKind::Completed,
        };
        assert_eq!(encode_event(&done).unwrap().kind, "completed");
    }

    #[test]
    fn out_of_range_numbers_are_refused_not_wrapped() {
        let e = Event {
            at: u64::MAX,
            phase: String::new(),
            kind: EventKind::Started,
        };
        assert!(matches!(encode_event(&e), Err(StoreError::Encode(_))));
    }

    #[test]
    fn bad_json_is_corrupt_not_a_panic() {
        match decode_state("r", 7, "{not json") {
            Err(StoreError::Corrupt { rollout, seq, .. }) => {
                assert_eq!((rollout.as_str(), seq), ("r", 7))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode_event("r", 3, r#"{"at":1,"phase":"x","kind":"no_such_kind"}"#),
            Err(StoreError::Corrupt { seq: 3, .. })
        ));
    }
}
