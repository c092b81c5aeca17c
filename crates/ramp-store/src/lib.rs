//! Durable state: every rollout's journal, the latest snapshot of its state, its analysis
//! windows and its outbox of notices.
//!
//! Invariant 7, "nothing decided is lost": the controller appends a step's journal events, the
//! state they produced, the analysis window that caused the step and the notices it sends in
//! **one transaction** ([`Store::append`]), which resolves only once that transaction is
//! committed durably. Only then does the controller carry out the step's other effects. After a
//! restart (even `kill -9`, even a power cut) [`Store::load_all`] gives back every rollout with
//! the state of its last acknowledged append, and the outbox still holds every notice that was
//! not delivered.
//!
//! **One writer per rollout.** Every append names the journal position it expects to follow
//! (`expected_seq`); if another writer has appended since, the append fails with
//! [`StoreError::Conflict`] and writes nothing, so two writers can never interleave a
//! rollout's journal.
//!
//! **Records have versions.** Journal events are stored as [`ramp_wire::v1::Event`] JSON and
//! state snapshots as the core's state JSON, each row with its format number; rows of earlier
//! formats are read (and upgraded) forever. See `records`.
//!
//! The trait is async and object-safe, so a PostgreSQL implementation can sit behind it; SQLite
//! is the default backend ([`SqliteStore`]), run on threads of its own so that no runtime
//! worker ever waits for a disk.
#![forbid(unsafe_code)]

mod pins;
mod records;
mod sqlite;

pub use pins::SharePin;
pub use records::{EVENT_FORMAT, STATE_FORMAT};
pub use sqlite::{READ_TIMEOUT, SqliteStore};

use ramp_core::evidence::MetricWindow;
use ramp_core::rollout::State;
use ramp_core::time::Millis;
use ramp_wire::v1;
use std::future::Future;
use std::pin::Pin;

/// A boxed future, so that [`Store`] is object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

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
    /// Another writer appended to the rollout's journal since this writer last did.
    #[error(
        "the journal of {rollout:?} is at seq {actual}, not {expected}: another writer appended to it"
    )]
    Conflict {
        /// The rollout.
        rollout: String,
        /// The position the writer expected to follow.
        expected: u64,
        /// The position the journal is at.
        actual: u64,
    },
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
    /// The store's thread has stopped (the process is shutting down, or it panicked).
    #[error("the store has stopped")]
    Stopped,
}

/// A new rollout: written with its first step (the start) in one transaction, so that a
/// rollout either exists with its journal or not at all.
#[derive(Clone, Debug)]
pub struct NewRollout {
    /// The rollout's unique name.
    pub name: String,
    /// The plan as submitted (TOML).
    pub plan_toml: String,
    /// When it was created (ms since the Unix epoch).
    pub created_at: Millis,
    /// Where its proxy listens.
    pub listen: Option<String>,
    /// Its first step.
    pub step: Append,
}

/// What one step of a rollout writes, in one transaction.
#[derive(Clone, Debug)]
pub struct Append {
    /// Journal entries, oldest first; they get consecutive positions.
    pub events: Vec<v1::Event>,
    /// The state after the step.
    pub state: State,
    /// The analysis window that caused the step, if any.
    pub window: Option<MetricWindow>,
    /// Notices the step sends, for the outbox.
    pub notices: Vec<v1::Notice>,
}

/// One rollout as stored: its plan text and its latest state.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredRollout {
    /// The rollout's unique name.
    pub name: String,
    /// The plan as submitted (TOML); the shell re-parses it on resume.
    pub plan_toml: String,
    /// When it was created.
    pub created_at: Millis,
    /// The state written by the last acknowledged append.
    pub state: State,
    /// The position of the last journal event (0 when the journal is empty).
    pub last_seq: u64,
    /// Where its proxy last listened, if recorded.
    pub listen: Option<String>,
    /// When it was retired, if it was: it is kept for reading and never resumed.
    pub retired_at: Option<Millis>,
    /// A share lowered after `state` was written whose step the journal never took (see
    /// [`Store::pin_share`]): resume at this share, not the journaled one.
    pub pin: Option<SharePin>,
}

/// A notice in the outbox.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxEntry {
    /// Its id, unique in the store, increasing in the order notices were written.
    pub id: u64,
    /// The rollout it is about.
    pub rollout: String,
    /// The journal position of the step that sent it.
    pub seq: u64,
    /// When it was written (controller time).
    pub at: Millis,
    /// The notice.
    pub notice: v1::Notice,
    /// When it was delivered to the live log, if it was.
    pub delivered_at: Option<Millis>,
    /// Its deliveries to the channels it was routed to (filled by [`Store::notices`] only).
    pub deliveries: Vec<Delivery>,
}

/// Where a notice's delivery to one channel stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryState {
    /// Not delivered yet: waiting for its turn or for the next retry.
    Pending,
    /// The receiver took it.
    Delivered,
    /// Given up on: the receiver refused it for good, or kept failing past the plan's
    /// `give_up_after`.
    Failed,
}

impl DeliveryState {
    /// `pending`, `delivered` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(DeliveryState::Pending),
            "delivered" => Some(DeliveryState::Delivered),
            "failed" => Some(DeliveryState::Failed),
            _ => None,
        }
    }
}

/// One notice's delivery to one channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The channel.
    pub channel: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts made.
    pub attempts: u32,
    /// When the latest attempt was made (ms since the Unix epoch).
    pub last_attempt_at: Option<Millis>,
    /// Why the latest attempt failed, if it did.
    pub error: Option<String>,
}

/// A channel's deliveries of one rollout, counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeliveryCounts {
    /// Waiting.
    pub pending: u64,
    /// Done.
    pub delivered: u64,
    /// Given up.
    pub failed: u64,
}

/// A durable journal of rollouts. Writes resolve only once durable.
pub trait Store: Send + Sync + 'static {
    /// Creates a rollout with its plan, its first step and its listen address, all in one
    /// transaction; `AlreadyExists` if the name is taken (and nothing is written). Resolves to
    /// the position of the last event written.
    fn create(&self, rollout: NewRollout) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Appends one step: its journal entries (with consecutive positions after
    /// `expected_seq`), the resulting state, the window and the notices, in one transaction.
    /// `Conflict` (nothing written) when the journal is not at `expected_seq`, `NotFound` for
    /// an unknown rollout. Resolves to the position of the last event (`expected_seq` when
    /// there were none).
    fn append(
        &self,
        rollout: &str,
        expected_seq: u64,
        step: Append,
    ) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Every rollout with its latest state, for resuming after a restart (ordered by name).
    /// A rollout that cannot be read is an `Err` in its place, so one corrupt rollout does not
    /// keep the others from resuming; the outer error means the store itself failed.
    fn load_all(&self)
    -> BoxFuture<'_, Result<Vec<Result<StoredRollout, StoreError>>, StoreError>>;

    /// One rollout with its latest state; `NotFound` for an unknown name.
    fn load(&self, rollout: &str) -> BoxFuture<'_, Result<StoredRollout, StoreError>>;

    /// Journal page: events with position > `after`, oldest first, at most `limit`.
    /// `NotFound` for an unknown rollout; an empty page past the end.
    fn events(
        &self,
        rollout: &str,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<(u64, v1::Event)>, StoreError>>;

    /// Recorded windows with time `> after`, oldest first, at most `limit`.
    fn windows(
        &self,
        rollout: &str,
        after: Millis,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<(Millis, MetricWindow)>, StoreError>>;

    /// Deletes a rollout's windows recorded before `before` (retention); resolves to how many.
    /// The state snapshot keeps the evidence they added up to, so no decision depends on them.
    fn prune_windows(
        &self,
        rollout: &str,
        before: Millis,
    ) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Records, durably and without needing free space, that `rollout`'s share was lowered
    /// (a rollback carried out) while its journal was at `pin.after_seq` and could not take the
    /// step: [`Store::load_all`] hands the pin back until the journal moves past that position,
    /// so a crash before the journal recovers never resumes at a higher share. Called after a
    /// failed append, before anything else is written.
    fn pin_share(&self, rollout: &str, pin: SharePin) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Records the address a rollout's proxy listens on, so a restart can serve on the same
    /// one. `NotFound` for an unknown rollout.
    fn set_listen(&self, rollout: &str, listen: &str) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Marks a rollout retired at `at`: it is never resumed again; its journal stays.
    fn retire(&self, rollout: &str, at: Millis) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Notices not delivered yet, oldest first, at most `limit`.
    fn undelivered(&self, limit: usize) -> BoxFuture<'_, Result<Vec<OutboxEntry>, StoreError>>;

    /// Marks notices delivered at `at`.
    fn delivered(&self, ids: Vec<u64>, at: Millis) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The notices of `rollout` still pending on `channel`, oldest first, at most `limit`, each
    /// with the attempts made so far.
    fn pending(
        &self,
        rollout: &str,
        channel: &str,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<(OutboxEntry, u32)>, StoreError>>;

    /// Records an attempt to deliver notice `id` on `channel`: its new state, the attempts made,
    /// when, and the error if it failed.
    fn attempted(
        &self,
        id: u64,
        channel: &str,
        state: DeliveryState,
        attempts: u32,
        at: Millis,
        error: Option<String>,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Deliveries of `rollout` by channel and state.
    fn delivery_counts(
        &self,
        rollout: &str,
    ) -> BoxFuture<'_, Result<Vec<(String, DeliveryCounts)>, StoreError>>;

    /// What a channel keeps per rollout across restarts (a Slack thread's root message).
    fn channel_ref(
        &self,
        rollout: &str,
        channel: &str,
    ) -> BoxFuture<'_, Result<Option<String>, StoreError>>;

    /// Stores [`Store::channel_ref`].
    fn set_channel_ref(
        &self,
        rollout: &str,
        channel: &str,
        reference: &str,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// A rollout's notices, oldest first, with id > `after`, at most `limit`, with their
    /// deliveries.
    fn notices(
        &self,
        rollout: &str,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<OutboxEntry>, StoreError>>;
}
