//! The SQLite store: one file, WAL mode, `synchronous = FULL`.
//!
//! One `rusqlite::Connection` behind a `std::sync::Mutex`: writes are serialized in-process,
//! and `BEGIN IMMEDIATE` plus `busy_timeout` serialize them against other processes opening the
//! same file. With WAL and `synchronous = FULL` a commit fsyncs the write-ahead log before it
//! returns, so an acknowledged append survives `kill -9` and power loss alike.

use super::{
    Store, StoreError, StoredRollout, decode_event, decode_state, encode_event, encode_state,
    to_i64,
};
use ramp_core::evidence::MetricWindow;
use ramp_core::rollout::{Event, State};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a write waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The schema, one migration per version (index 0 is version 1). Applied in order, each in its
/// own transaction together with its `schema_migrations` row. Never edit a released entry:
/// append a new one. Plain, portable SQL (the PostgreSQL store will use the same statements).
const MIGRATIONS: &[&str] = &[
    // 1: rollouts, their journal, and the latest state of each.
    "CREATE TABLE rollouts (
        name TEXT PRIMARY KEY,
        plan_toml TEXT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE journal (
        rollout TEXT NOT NULL REFERENCES rollouts(name),
        seq BIGINT NOT NULL,
        at BIGINT NOT NULL,
        kind TEXT NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (rollout, seq)
    );
    CREATE TABLE snapshots (
        rollout TEXT PRIMARY KEY REFERENCES rollouts(name),
        seq BIGINT NOT NULL,
        state TEXT NOT NULL,
        updated_at BIGINT NOT NULL
    );",
    // 2: every analysis window's per-variant aggregates, as they arrived.
    "CREATE TABLE windows (
        rollout TEXT NOT NULL REFERENCES rollouts(name),
        at BIGINT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX windows_by_rollout ON windows (rollout, at);",
    // 3: the address each rollout's proxy last listened on, so a restart serves on the same one.
    "ALTER TABLE rollouts ADD COLUMN listen TEXT;",
];

/// A [`Store`] in a SQLite file (or in memory, for tests and `simulate`).
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path` in WAL mode and brings its schema
    /// up to date. `StoreError::Migration` if the file was written by a newer ramp.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Open(format!(
                "{}: SQLite would not switch to WAL mode (journal_mode is {mode:?}); \
                 is the file on a filesystem without shared-memory support?",
                path.display()
            )));
        }
        Self::init(conn, &path.display().to_string())
    }

    /// A private in-memory database (no durability), with the same schema.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?, ":memory:")
    }

    fn init(mut conn: Connection, what: &str) -> Result<Self, StoreError> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn, what)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    /// The schema version of the database (the highest applied migration).
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        current_version(&self.lock())
    }

    /// The schema version this binary brings databases to.
    pub fn latest_schema_version() -> u32 {
        MIGRATIONS.len() as u32
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a transaction open (rusqlite rolls back
        // on drop), so the connection is still consistent: carry on rather than panic.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn current_version(conn: &Connection) -> Result<u32, StoreError> {
    let v: Option<i64> = conn.query_row("SELECT MAX(version) FROM schema_migrations", [], |r| {
        r.get(0)
    })?;
    let v = v.unwrap_or(0);
    u32::try_from(v)
        .map_err(|_| StoreError::Migration(format!("schema_migrations holds version {v}")))
}

/// Applies the migrations this database lacks, one transaction each. Taking the write lock
/// (`BEGIN IMMEDIATE`) before reading the version makes concurrent openers apply each
/// migration once.
fn migrate(conn: &mut Connection, what: &str) -> Result<(), StoreError> {
    let known = MIGRATIONS.len() as u32;
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version INTEGER PRIMARY KEY,
                applied_at BIGINT NOT NULL
            )",
            [],
        )?;
        let current = current_version(&tx)?;
        if current > known {
            return Err(StoreError::Migration(format!(
                "{what} has schema version {current}, but this ramp knows versions up to \
                 {known}: it was written by a newer ramp; upgrade ramp to open it \
                 (the database was left unchanged)"
            )));
        }
        if current == known {
            tx.commit()?;
            return Ok(());
        }
        let next = current + 1;
        tx.execute_batch(MIGRATIONS[current as usize])
            .map_err(|e| StoreError::Migration(format!("{what}: migration {next} failed: {e}")))?;
        let applied_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
            params![next, applied_at],
        )?;
        tx.commit()?;
    }
}

/// Reads a stored seq, which is never negative in a healthy database.
fn seq_from(rollout: &str, v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt {
        rollout: rollout.to_string(),
        seq: 0,
        reason: format!("negative seq {v}"),
    })
}

/// One row of the rollout + snapshot join, before parsing.
struct Row {
    name: String,
    plan_toml: String,
    created_at: i64,
    snapshot_seq: Option<i64>,
    state: Option<String>,
    journal_max: Option<i64>,
    listen: Option<String>,
}

const SELECT_ROLLOUT: &str = "SELECT r.name, r.plan_toml, r.created_at, s.seq, s.state,
        (SELECT MAX(j.seq) FROM journal j WHERE j.rollout = r.name), r.listen
    FROM rollouts r LEFT JOIN snapshots s ON s.rollout = r.name";

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        name: r.get(0)?,
        plan_toml: r.get(1)?,
        created_at: r.get(2)?,
        snapshot_seq: r.get(3)?,
        state: r.get(4)?,
        journal_max: r.get(5)?,
        listen: r.get(6)?,
    })
}

impl Row {
    /// Parses the row and checks that the snapshot is the one written with the last event.
    fn parse(self) -> Result<StoredRollout, StoreError> {
        let corrupt = |seq, reason: String| StoreError::Corrupt {
            rollout: self.name.clone(),
            seq,
            reason,
        };
        let journal_max = seq_from(&self.name, self.journal_max.unwrap_or(0))?;
        let (Some(seq), Some(state)) = (self.snapshot_seq, &self.state) else {
            return Err(corrupt(
                journal_max,
                "the rollout has no state snapshot".into(),
            ));
        };
        let last_seq = seq_from(&self.name, seq)?;
        if last_seq != journal_max {
            return Err(corrupt(
                last_seq,
                format!(
                    "the state snapshot is at seq {last_seq} but the journal ends at {journal_max}"
                ),
            ));
        }
        let created_at = u64::try_from(self.created_at)
            .map_err(|_| corrupt(last_seq, format!("negative created_at {}", self.created_at)))?;
        let state = decode_state(&self.name, last_seq, state)?;
        Ok(StoredRollout {
            name: self.name,
            plan_toml: self.plan_toml,
            created_at,
            state,
            last_seq,
            listen: self.listen,
        })
    }
}

fn exists(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM rollouts WHERE name = ?1")?
        .query_row([name], |_| Ok(()))
        .optional()?
        .is_some())
}

impl SqliteStore {
    /// One transaction: the window (if any), the journal entries, the new state.
    fn append_inner(
        &self,
        name: &str,
        window: Option<(i64, String)>,
        events: &[Event],
        state: &State,
    ) -> Result<u64, StoreError> {
        // Serialize before taking the lock: other writers wait only for SQLite.
        let encoded = events
            .iter()
            .map(encode_event)
            .collect::<Result<Vec<_>, _>>()?;
        let updated_at = to_i64(state.now, "state time")?;
        let state = encode_state(state)?;
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let last: Option<i64> = tx
            .prepare_cached("SELECT seq FROM snapshots WHERE rollout = ?1")?
            .query_row([name], |r| r.get(0))
            .optional()?;
        let Some(mut seq) = last else {
            return Err(if exists(&tx, name)? {
                StoreError::Corrupt {
                    rollout: name.to_string(),
                    seq: 0,
                    reason: "the rollout has no state snapshot".into(),
                }
            } else {
                StoreError::NotFound(name.to_string())
            });
        };
        if let Some((at, body)) = &window {
            tx.prepare_cached("INSERT INTO windows (rollout, at, body) VALUES (?1, ?2, ?3)")?
                .execute(params![name, at, body])?;
        }
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO journal (rollout, seq, at, kind, body) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for e in &encoded {
                seq += 1;
                insert.execute(params![name, seq, e.at, e.kind, e.body])?;
            }
        }
        tx.prepare_cached(
            "UPDATE snapshots SET seq = ?2, state = ?3, updated_at = ?4 WHERE rollout = ?1",
        )?
        .execute(params![name, seq, state, updated_at])?;
        tx.commit()?;
        seq_from(name, seq)
    }
}

impl Store for SqliteStore {
    fn create(
        &self,
        name: &str,
        plan_toml: &str,
        created_at: u64,
        state: &State,
    ) -> Result<(), StoreError> {
        let created_at = to_i64(created_at, "created_at")?;
        let updated_at = to_i64(state.now, "state time")?;
        let state = encode_state(state)?;
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if exists(&tx, name)? {
            return Err(StoreError::AlreadyExists(name.to_string()));
        }
        tx.execute(
            "INSERT INTO rollouts (name, plan_toml, created_at) VALUES (?1, ?2, ?3)",
            params![name, plan_toml, created_at],
        )?;
        tx.execute(
            "INSERT INTO snapshots (rollout, seq, state, updated_at) VALUES (?1, 0, ?2, ?3)",
            params![name, state, updated_at],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn append(&self, name: &str, events: &[Event], state: &State) -> Result<u64, StoreError> {
        self.append_inner(name, None, events, state)
    }

    fn append_window(
        &self,
        name: &str,
        window: &MetricWindow,
        events: &[Event],
        state: &State,
    ) -> Result<u64, StoreError> {
        let body = serde_json::to_string(window).map_err(|e| StoreError::Encode(e.to_string()))?;
        let at = to_i64(state.now, "window time")?;
        self.append_inner(name, Some((at, body)), events, state)
    }

    fn windows(
        &self,
        name: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, MetricWindow)>, StoreError> {
        let conn = self.lock();
        if !exists(&conn, name)? {
            return Err(StoreError::NotFound(name.to_string()));
        }
        let after = to_i64(after, "window time")?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = conn
            .prepare_cached(
                "SELECT at, body FROM windows WHERE rollout = ?1 AND at > ?2 ORDER BY at LIMIT ?3",
            )?
            .query_map(params![name, after, limit], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        drop(conn);
        rows.into_iter()
            .map(|(at, body)| {
                let w = serde_json::from_str(&body).map_err(|e| StoreError::Corrupt {
                    rollout: name.to_string(),
                    seq: 0,
                    reason: format!("window at {at}: {e}"),
                })?;
                Ok((u64::try_from(at).unwrap_or(0), w))
            })
            .collect()
    }

    fn set_listen(&self, name: &str, listen: &str) -> Result<(), StoreError> {
        let changed = self.lock().execute(
            "UPDATE rollouts SET listen = ?2 WHERE name = ?1",
            params![name, listen],
        )?;
        if changed == 0 {
            return Err(StoreError::NotFound(name.to_string()));
        }
        Ok(())
    }

    fn load_all(&self) -> Result<Vec<Result<StoredRollout, StoreError>>, StoreError> {
        let mut conn = self.lock();
        // One read transaction: a consistent view even if another process writes meanwhile.
        let tx = conn.transaction()?;
        // Rows by rowid (names as bytes, so that even a damaged name is listed), then each
        // rollout on its own, so that a row that cannot be read (bad UTF-8, a wrong type, no
        // name) fails only that rollout.
        let rows: Vec<(i64, Option<Vec<u8>>)> = tx
            .prepare("SELECT rowid, CAST(name AS BLOB) FROM rollouts ORDER BY name")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(rows.len());
        {
            let mut one = tx.prepare(&format!("{SELECT_ROLLOUT} WHERE r.rowid = ?1"))?;
            for (rowid, raw) in rows {
                let name = raw.map_or_else(
                    || format!("(unnamed row {rowid})"),
                    |raw| String::from_utf8_lossy(&raw).into_owned(),
                );
                let row = one
                    .query_row([rowid], read_row)
                    .map_err(|e| StoreError::Corrupt {
                        rollout: name.clone(),
                        seq: 0,
                        reason: format!("the rollout's row cannot be read: {e}"),
                    });
                out.push(row.and_then(Row::parse));
            }
        }
        tx.commit()?;
        Ok(out)
    }

    fn load(&self, name: &str) -> Result<StoredRollout, StoreError> {
        let conn = self.lock();
        let row = conn
            .prepare_cached(&format!("{SELECT_ROLLOUT} WHERE r.name = ?1"))?
            .query_row([name], read_row)
            .optional()?;
        drop(conn);
        row.ok_or_else(|| StoreError::NotFound(name.to_string()))?
            .parse()
    }

    fn events(
        &self,
        name: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Event)>, StoreError> {
        // Past the representable range there is nothing to return.
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        if !exists(&tx, name)? {
            return Err(StoreError::NotFound(name.to_string()));
        }
        let rows = tx
            .prepare_cached(
                "SELECT seq, body FROM journal WHERE rollout = ?1 AND seq > ?2
                 ORDER BY seq LIMIT ?3",
            )?
            .query_map(params![name, after, limit], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        tx.commit()?;
        drop(conn);
        rows.into_iter()
            .map(|(seq, body)| {
                let seq = seq_from(name, seq)?;
                Ok((seq, decode_event(name, seq, &body)?))
            })
            .collect()
    }

    fn names(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.lock();
        let names = conn
            .prepare_cached("SELECT name FROM rollouts ORDER BY name")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ramp_core::plan::parse_plan;
    use ramp_core::rollout::EventKind;

    const SEED: &str = include_str!("../../../../examples/payments-backend.toml");

    fn state() -> State {
        State::new(&parse_plan(SEED, "seed").unwrap())
    }

    fn event(at: u64) -> Event {
        Event {
            at,
            phase: "canary".into(),
            kind: EventKind::Started,
        }
    }

    fn count(s: &SqliteStore, table: &str) -> i64 {
        s.lock()
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn pragmas_give_durable_commits() {
        let dir = std::env::temp_dir().join(format!("ramp-store-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pragmas.db");
        let _ = std::fs::remove_file(&path);
        let s = SqliteStore::open(&path).unwrap();
        let conn = s.lock();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        let sync: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        let fk: i64 = conn
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            (mode.as_str(), sync, fk),
            ("wal", 2, 1),
            "WAL, FULL, foreign keys"
        );
        drop(conn);
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn in_memory_has_the_latest_schema() {
        let s = SqliteStore::in_memory().unwrap();
        assert_eq!(
            s.schema_version().unwrap(),
            SqliteStore::latest_schema_version()
        );
        assert_eq!(count(&s, "schema_migrations"), MIGRATIONS.len() as i64);
        // Migrating again applies nothing.
        migrate(&mut s.lock(), "test").unwrap();
        assert_eq!(count(&s, "schema_migrations"), MIGRATIONS.len() as i64);
    }

    #[test]
    fn corrupt_rows_name_the_rollout_and_seq() {
        let s = SqliteStore::in_memory().unwrap();
        s.create("r", SEED, 1, &state()).unwrap();
        s.append("r", &[event(1), event(2), event(3)], &state())
            .unwrap();
        s.lock()
            .execute("UPDATE journal SET body = '{\"at\":' WHERE seq = 2", [])
            .unwrap();
        match s.events("r", 0, 10) {
            Err(StoreError::Corrupt { rollout, seq, .. }) => {
                assert_eq!((rollout.as_str(), seq), ("r", 2))
            }
            other => panic!("{other:?}"),
        }
        // The rows before the bad one are still readable.
        assert_eq!(s.events("r", 0, 1).unwrap().len(), 1);
        assert_eq!(s.events("r", 2, 10).unwrap().len(), 1);

        s.lock()
            .execute(
                "UPDATE snapshots SET state = 'null' WHERE rollout = 'r'",
                [],
            )
            .unwrap();
        assert!(matches!(
            s.load("r"),
            Err(StoreError::Corrupt { seq: 3, .. })
        ));
        assert!(matches!(
            s.load_all().unwrap().as_slice(),
            [Err(StoreError::Corrupt { seq: 3, .. })]
        ));
    }

    #[test]
    fn a_snapshot_that_lags_the_journal_is_corrupt() {
        let s = SqliteStore::in_memory().unwrap();
        s.create("r", SEED, 1, &state()).unwrap();
        s.append("r", &[event(1), event(2)], &state()).unwrap();
        s.lock()
            .execute("UPDATE snapshots SET seq = 1", [])
            .unwrap();
        match s.load("r") {
            Err(StoreError::Corrupt { reason, .. }) => {
                assert!(reason.contains("journal ends at 2"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        s.lock().execute("DELETE FROM snapshots", []).unwrap();
        assert!(matches!(s.load("r"), Err(StoreError::Corrupt { .. })));
        assert!(matches!(
            s.append("r", &[], &state()),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_failed_append_writes_nothing() {
        let s = SqliteStore::in_memory().unwrap();
        s.create("r", SEED, 1, &state()).unwrap();
        // The second event's time cannot be stored: neither event, nor the state, is written.
        let mut later = state();
        later.now = 99;
        let err = s.append("r", &[event(1), event(u64::MAX)], &later);
        assert!(matches!(err, Err(StoreError::Encode(_))), "{err:?}");
        assert_eq!(count(&s, "journal"), 0);
        assert_eq!(s.load("r").unwrap().state, state());
        // A constraint failure inside the transaction rolls it back too.
        s.lock()
            .execute(
                "INSERT INTO journal (rollout, seq, at, kind, body) VALUES ('r', 2, 0, 'x', '{}')",
                [],
            )
            .unwrap();
        assert!(matches!(
            s.append("r", &[event(1), event(2)], &later),
            Err(StoreError::Sqlite(_))
        ));
        assert_eq!(count(&s, "journal"), 1);
        let err = s
            .load_all()
            .unwrap()
            .pop()
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(err.contains("journal ends at 2"), "{err}");
    }

    #[test]
    fn foreign_keys_reject_orphan_journal_rows() {
        let s = SqliteStore::in_memory().unwrap();
        let r = s.lock().execute(
            "INSERT INTO journal (rollout, seq, at, kind, body) VALUES ('ghost', 1, 0, 'x', '{}')",
            [],
        );
        assert!(r.is_err());
    }
}
