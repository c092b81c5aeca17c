//! The SQLite store: one file, a rollback journal (`journal_mode = TRUNCATE`), `synchronous =
//! FULL`, on threads of its own.
//!
//! Writes go to one writer thread that owns the write connection; reads go to a reader thread
//! with a connection of its own. The async methods hand a job to the thread and await its
//! answer, so no runtime worker ever blocks on the disk. `BEGIN IMMEDIATE` plus `busy_timeout`
//! serialize writers across processes opening the same file. With `synchronous = FULL` a commit
//! fsyncs the journal and the database before it returns, so an acknowledged append survives
//! `kill -9` and power loss alike.
//!
//! **No file is ever memory-mapped.** WAL mode keeps its index in a shared-memory mapping of
//! the `-shm` file, and a fault on that mapping (the file made immutable, truncated, on a
//! filesystem that failed) is a `SIGBUS` that ends the process, every proxy with it. A
//! rollback journal and `mmap_size = 0` make every storage fault an error returned by a system
//! call, which the controller contains (issue 11). What it costs: a reader waits while a commit
//! holds the write lock (milliseconds; at most [`READ_TIMEOUT`] on a frozen disk, then an
//! error), and a commit takes a few more fsyncs. Status and `/metrics` never read the store.
//!
//! An in-memory store (tests) has one thread for both, since two connections to `:memory:`
//! would be two databases.

use super::pins::{self, Pins, SharePin};
use super::records::{
    self, EVENT_FORMAT, NOTICE_FORMAT, STATE_FORMAT, decode_event, decode_notice, decode_state,
    encode_event, encode_notice, encode_state, to_i64,
};
use super::{
    Append, BoxFuture, Delivery, DeliveryCounts, DeliveryState, NewRollout, OutboxEntry, Store,
    StoreError, StoredRollout,
};
use ramp_core::evidence::MetricWindow;
use ramp_core::time::Millis;
use ramp_wire::v1;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

/// How long a write waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a read waits for a commit in progress before failing (a journal page answers 503
/// rather than hanging on a frozen disk).
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// The schema, one migration per version (index 0 is version 1). Applied in order, each in its
/// own transaction together with its `schema_migrations` row. Never edit a released entry:
/// append a new one.
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
    // 4: record formats per row (rows before this are format 1), retired rollouts, and the
    // outbox of notices, written in the same transaction as the step that sends them.
    "ALTER TABLE journal ADD COLUMN format INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE snapshots ADD COLUMN format INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE rollouts ADD COLUMN retired_at BIGINT;
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        rollout TEXT NOT NULL REFERENCES rollouts(name),
        seq BIGINT NOT NULL,
        at BIGINT NOT NULL,
        kind TEXT NOT NULL,
        format INTEGER NOT NULL,
        body TEXT NOT NULL,
        delivered_at BIGINT
    );
    CREATE INDEX outbox_undelivered ON outbox (delivered_at, id);
    CREATE INDEX outbox_by_rollout ON outbox (rollout, id);",
    // 5: each notice's delivery to each channel it was routed to (written with the notice),
    // and what a channel keeps per rollout (a Slack thread's root message).
    "CREATE TABLE deliveries (
        notice INTEGER NOT NULL REFERENCES outbox(id),
        rollout TEXT NOT NULL,
        channel TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_attempt_at BIGINT,
        error TEXT,
        PRIMARY KEY (notice, channel)
    );
    CREATE INDEX deliveries_pending ON deliveries (rollout, channel, state, notice);
    CREATE TABLE channel_refs (
        rollout TEXT NOT NULL,
        channel TEXT NOT NULL,
        reference TEXT NOT NULL,
        PRIMARY KEY (rollout, channel)
    );",
];

/// A job on a thread's connection (or the reason there is none); answers whether the
/// connection went stale (it can only read now) and must be opened again.
type Job = Box<dyn FnOnce(Result<&mut Connection, StoreError>) -> bool + Send>;

/// How a thread opens its connection again after losing it.
type Reopen = Box<dyn Fn() -> Result<Connection, StoreError> + Send>;

/// How a reader thread learns that its writer opened the database again.
enum Link {
    None,
    Sets(Arc<AtomicBool>),
    Watches(Arc<AtomicBool>),
}

/// A thread that owns a connection and runs jobs on it, one at a time.
#[derive(Clone)]
struct DbThread {
    jobs: mpsc::Sender<Job>,
}

impl DbThread {
    fn spawn(name: &str, conn: Connection) -> Result<Self, StoreError> {
        Self::spawn_with(name, Ok(conn), None, Link::None)
    }

    /// A thread whose connection may be missing (the database could not be opened for
    /// writing): each job first tries `reopen`, and fails with its error until it succeeds. A
    /// connection that turns out read-only is dropped and opened again by the next job, so a
    /// store recovers when its disk does, without a restart.
    ///
    /// `link` ties a reader to its writer: the writer [`Link::Sets`] the flag when it opens
    /// the database again, and a reader that [`Link::Watches`] it reopens before its next job
    /// (a reader on a snapshot, taken while the database could not be written, moves back to
    /// the database itself).
    fn spawn_with(
        name: &str,
        conn: Result<Connection, StoreError>,
        reopen: Option<Reopen>,
        link: Link,
    ) -> Result<Self, StoreError> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let mut conn = conn;
                for job in queue {
                    if let Link::Watches(flag) = &link
                        && let Some(reopen) = &reopen
                        && flag.load(Ordering::SeqCst)
                        && let Ok(fresh) = reopen()
                    {
                        flag.store(false, Ordering::SeqCst);
                        conn = Ok(fresh);
                    }
                    if conn.is_err()
                        && let Some(reopen) = &reopen
                    {
                        conn = reopen();
                        if conn.is_ok()
                            && let Link::Sets(flag) = &link
                        {
                            flag.store(true, Ordering::SeqCst);
                        }
                    }
                    let target = match &mut conn {
                        Ok(c) => Ok(c),
                        Err(StoreError::Open(why)) => Err(StoreError::Open(why.clone())),
                        Err(e) => Err(StoreError::Open(e.to_string())),
                    };
                    // A job that panics must not take the store down with it: rusqlite rolls
                    // back an open transaction on drop, so the connection stays consistent.
                    let stale =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(target)))
                            .unwrap_or(false);
                    if stale && reopen.is_some() {
                        conn = Err(StoreError::Open(
                            "the database was opened read-only; opening it again".into(),
                        ));
                    }
                }
            })
            .map_err(|e| StoreError::Open(format!("cannot start the store thread: {e}")))?;
        Ok(DbThread { jobs })
    }

    /// Runs `f` on the thread's connection; resolves to its result.
    fn run<T, F>(&self, f: F) -> BoxFuture<'static, Result<T, StoreError>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.run_even_without(|conn| conn.and_then(f))
    }

    /// Runs `f` in the thread's turn, with its connection or the reason it has none (a job
    /// that must work while the database cannot be written).
    fn run_even_without<T, F>(&self, f: F) -> BoxFuture<'static, Result<T, StoreError>>
    where
        T: Send + 'static,
        F: FnOnce(Result<&mut Connection, StoreError>) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self
            .jobs
            .send(Box::new(move |conn| {
                let r = f(conn);
                let stale = matches!(&r, Err(StoreError::Sqlite(e))
                    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ReadOnly));
                let _ = tx.send(r);
                stale
            }))
            .is_ok();
        Box::pin(async move {
            if !sent {
                return Err(StoreError::Stopped);
            }
            rx.await.unwrap_or(Err(StoreError::Stopped))
        })
    }
}

/// A [`Store`] in a SQLite file (or in memory, for tests).
pub struct SqliteStore {
    writer: DbThread,
    reader: DbThread,
    /// Lowered shares the journal has not taken yet (see `pins`).
    pins: Arc<Mutex<Pins>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path` and brings its schema up to
    /// date. A database left in WAL mode by an earlier ramp is checkpointed and switched to a
    /// rollback journal (its `-wal` and `-shm` files go away). `StoreError::Migration` if the
    /// file was written by a newer ramp.
    ///
    /// A database that exists but cannot be written (a read-only or immutable file, a
    /// read-only mount) still opens, if its schema is current: reads work, every write fails
    /// with the reason, and each write tries to open it for writing again, so the store
    /// recovers without a restart once the disk does.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let writer = match open_writer(path) {
            // A newer ramp's file, or nothing to read: nothing to serve from.
            Err(e @ StoreError::Migration(_)) => return Err(e),
            Err(e) if !path.exists() => return Err(e),
            w => w,
        };
        let mut snapshot = false;
        let reader = match open_reader(path) {
            // A writer killed mid-commit left a hot journal, which only a writer may roll back:
            // while the database cannot be written, read a rolled-back private copy instead
            // (the last committed state, which is all there is until it can be written).
            Err(e) if writer.is_err() && needs_rollback(&e) => {
                snapshot = true;
                open_snapshot(path)?
            }
            r => r?,
        };
        if writer.is_err() {
            let version = current_version(&reader)?;
            if version != Self::latest_schema_version() {
                return Err(StoreError::Migration(format!(
                    "{} has schema version {version} and cannot be written to bring it to {}: {}",
                    path.display(),
                    Self::latest_schema_version(),
                    writer
                        .as_ref()
                        .err()
                        .map(ToString::to_string)
                        .unwrap_or_default()
                )));
            }
        }
        let pins = Pins::open(path)?;
        let again = path.to_path_buf();
        let reread = path.to_path_buf();
        let recovered = Arc::new(AtomicBool::new(false));
        Ok(SqliteStore {
            writer: DbThread::spawn_with(
                "ramp-store-writer",
                writer,
                Some(Box::new(move || open_writer(&again))),
                if snapshot {
                    Link::Sets(recovered.clone())
                } else {
                    Link::None
                },
            )?,
            reader: if snapshot {
                DbThread::spawn_with(
                    "ramp-store-reader",
                    Ok(reader),
                    Some(Box::new(move || open_reader(&reread))),
                    Link::Watches(recovered),
                )?
            } else {
                DbThread::spawn("ramp-store-reader", reader)?
            },
            pins: Arc::new(Mutex::new(pins)),
        })
    }

    /// Whether the database can be written right now (it was opened, or opened again, for
    /// writing).
    pub async fn writable(&self) -> bool {
        self.writer.run(|_| Ok(())).await.is_ok()
    }

    /// A private in-memory database (no durability), with the same schema.
    pub fn in_memory() -> Result<Self, StoreError> {
        let mut conn = Connection::open_in_memory()?;
        configure(&conn)?;
        migrate(&mut conn, ":memory:")?;
        let thread = DbThread::spawn("ramp-store", conn)?;
        Ok(SqliteStore {
            writer: thread.clone(),
            reader: thread,
            pins: Arc::new(Mutex::new(Pins::in_memory())),
        })
    }

    /// The schema version of the database (the highest applied migration).
    pub async fn schema_version(&self) -> Result<u32, StoreError> {
        self.reader.run(|c| current_version(c)).await
    }

    /// The schema version this binary brings databases to.
    pub fn latest_schema_version() -> u32 {
        MIGRATIONS.len() as u32
    }

    /// Runs `f` on the write connection (for tests that inspect or damage the database).
    pub async fn with_connection<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.writer.run(f).await
    }
}

/// A read-only connection to the database (never mapped).
fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let reader = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    reader.busy_timeout(READ_TIMEOUT)?;
    reader.pragma_update(None, "mmap_size", 0)?;
    // Opening is lazy: read once, so that a database that cannot be read fails here.
    current_version(&reader)?;
    Ok(reader)
}

/// Whether opening failed because a hot journal must be rolled back first, which a read-only
/// connection cannot do (`SQLITE_READONLY_ROLLBACK`).
fn needs_rollback(e: &StoreError) -> bool {
    matches!(e, StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) if f.extended_code == 776)
}

/// A private copy of the database and its hot journal, rolled back, as a read connection: the
/// last committed state of a database that cannot be written. The copies are unlinked as soon
/// as the connection holds them (they carry the journal's notes), so nothing is left behind.
fn open_snapshot(path: &Path) -> Result<Connection, StoreError> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let fail = |what: &str, e: std::io::Error| {
        StoreError::Open(format!(
            "{}: cannot take a snapshot to read ({what}): {e}",
            path.display()
        ))
    };
    let dir = std::env::temp_dir().join(format!(
        "ramp-snapshot-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(&dir)
        .map_err(|e| fail("a private directory", e))?;
    let copy = dir.join("ramp.db");
    let result = (|| {
        let mut journal = path.as_os_str().to_owned();
        journal.push("-journal");
        std::fs::copy(path, &copy).map_err(|e| fail("the database", e))?;
        std::fs::copy(PathBuf::from(journal), dir.join("ramp.db-journal"))
            .map_err(|e| fail("its journal", e))?;
        let conn = Connection::open(&copy)?;
        conn.pragma_update(None, "mmap_size", 0)?;
        conn.busy_timeout(READ_TIMEOUT)?;
        // The first read rolls the copy back.
        current_version(&conn)?;
        Ok(conn)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The write connection: permissions narrowed, a rollback journal, durable commits, the schema
/// brought up to date. Fails if the file cannot be written (SQLite would silently open it
/// read-only).
fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    restrict(path)?;
    let mut conn = Connection::open(path)?;
    if conn.is_readonly(rusqlite::MAIN_DB)? {
        return Err(StoreError::Open(format!(
            "{}: the database can only be read (a read-only or immutable file, or a read-only \
             filesystem)",
            path.display()
        )));
    }
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "TRUNCATE", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("truncate") {
        return Err(StoreError::Open(format!(
            "{}: SQLite would not leave {mode:?} journal mode for a rollback journal; is \
             another process holding it open in WAL mode?",
            path.display()
        )));
    }
    configure(&conn)?;
    migrate(&mut conn, &path.display().to_string())?;
    Ok(conn)
}

fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // Never map the file: a fault on a mapping is a signal, not an error (see the module docs).
    conn.pragma_update(None, "mmap_size", 0)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
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
        // The migration's own time is not a decision: it only records when the schema changed.
        #[allow(clippy::disallowed_methods)]
        let applied_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
            params![next, applied_at],
        )?;
        tx.commit()?;
    }
}

/// Reads a stored number that is never negative in a healthy database.
fn unsigned(rollout: &str, what: &str, v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt {
        rollout: rollout.to_string(),
        seq: 0,
        reason: format!("negative {what} {v}"),
    })
}

/// One row of the rollout + snapshot join, before parsing.
struct Row {
    name: String,
    plan_toml: String,
    created_at: i64,
    snapshot_seq: Option<i64>,
    state: Option<String>,
    state_format: Option<i64>,
    journal_max: Option<i64>,
    listen: Option<String>,
    retired_at: Option<i64>,
}

const SELECT_ROLLOUT: &str = "SELECT r.name, r.plan_toml, r.created_at, s.seq, s.state, s.format,
        (SELECT MAX(j.seq) FROM journal j WHERE j.rollout = r.name), r.listen, r.retired_at
    FROM rollouts r LEFT JOIN snapshots s ON s.rollout = r.name";

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        name: r.get(0)?,
        plan_toml: r.get(1)?,
        created_at: r.get(2)?,
        snapshot_seq: r.get(3)?,
        state: r.get(4)?,
        state_format: r.get(5)?,
        journal_max: r.get(6)?,
        listen: r.get(7)?,
        retired_at: r.get(8)?,
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
        let journal_max = unsigned(&self.name, "seq", self.journal_max.unwrap_or(0))?;
        let (Some(seq), Some(state)) = (self.snapshot_seq, &self.state) else {
            return Err(corrupt(
                journal_max,
                "the rollout has no state snapshot".into(),
            ));
        };
        let last_seq = unsigned(&self.name, "seq", seq)?;
        if last_seq != journal_max {
            return Err(corrupt(
                last_seq,
                format!(
                    "the state snapshot is at seq {last_seq} but the journal ends at {journal_max}"
                ),
            ));
        }
        let created_at = unsigned(&self.name, "created_at", self.created_at)?;
        let retired_at = match self.retired_at {
            Some(v) => Some(unsigned(&self.name, "retired_at", v)?),
            None => None,
        };
        let state = decode_state(&self.name, last_seq, self.state_format.unwrap_or(1), state)?;
        Ok(StoredRollout {
            name: self.name,
            plan_toml: self.plan_toml,
            created_at,
            state,
            last_seq,
            listen: self.listen,
            retired_at,
            pin: None,
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

/// A step, serialized before it reaches the writer thread (the writer only writes).
struct EncodedStep {
    events: Vec<records::EncodedEvent>,
    state: String,
    updated_at: i64,
    window: Option<(i64, String)>,
    notices: Vec<(&'static str, String, Vec<String>)>,
}

fn encode_step(step: &Append) -> Result<EncodedStep, StoreError> {
    let events = step
        .events
        .iter()
        .map(encode_event)
        .collect::<Result<Vec<_>, _>>()?;
    let window = match &step.window {
        Some(w) => Some((
            to_i64(step.state.now, "window time")?,
            serde_json::to_string(w).map_err(|e| StoreError::Encode(e.to_string()))?,
        )),
        None => None,
    };
    let notices = step
        .notices
        .iter()
        .map(|n| Ok((notice_kind(n), encode_notice(n)?, n.channels.clone())))
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(EncodedStep {
        events,
        state: encode_state(&step.state)?,
        updated_at: to_i64(step.state.now, "state time")?,
        window,
        notices,
    })
}

fn notice_kind(n: &v1::Notice) -> &'static str {
    match n.kind {
        v1::NotifyKind::Status => "status",
        v1::NotifyKind::Summary => "summary",
        v1::NotifyKind::Critical => "critical",
    }
}

/// Writes a step inside `tx`, after journal position `seq`; returns the new last position.
fn write_step(
    tx: &rusqlite::Transaction<'_>,
    name: &str,
    mut seq: i64,
    step: &EncodedStep,
) -> Result<i64, StoreError> {
    if let Some((at, body)) = &step.window {
        tx.prepare_cached("INSERT INTO windows (rollout, at, body) VALUES (?1, ?2, ?3)")?
            .execute(params![name, at, body])?;
    }
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO journal (rollout, seq, at, kind, body, format)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for e in &step.events {
            seq += 1;
            insert.execute(params![name, seq, e.at, e.kind, e.body, EVENT_FORMAT])?;
        }
    }
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO outbox (rollout, seq, at, kind, format, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut route = tx.prepare_cached(
            "INSERT OR IGNORE INTO deliveries (notice, rollout, channel, state)
             VALUES (?1, ?2, ?3, 'pending')",
        )?;
        for (kind, body, channels) in &step.notices {
            insert.execute(params![
                name,
                seq,
                step.updated_at,
                kind,
                NOTICE_FORMAT,
                body
            ])?;
            let id = tx.last_insert_rowid();
            for channel in channels {
                route.execute(params![id, name, channel])?;
            }
        }
    }
    let changed = tx
        .prepare_cached(
            "UPDATE snapshots SET seq = ?2, state = ?3, updated_at = ?4, format = ?5
             WHERE rollout = ?1",
        )?
        .execute(params![
            name,
            seq,
            step.state,
            step.updated_at,
            STATE_FORMAT
        ])?;
    if changed == 0 {
        tx.execute(
            "INSERT INTO snapshots (rollout, seq, state, updated_at, format)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![name, seq, step.state, step.updated_at, STATE_FORMAT],
        )?;
    }
    Ok(seq)
}

/// An outbox row before parsing: id, rollout, seq, at, format, body, delivered_at.
type RawNotice = (i64, String, i64, i64, i64, String, Option<i64>);

fn outbox_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawNotice> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

fn parse_outbox(rows: Vec<RawNotice>) -> Result<Vec<OutboxEntry>, StoreError> {
    rows.into_iter()
        .map(|(id, rollout, seq, at, format, body, delivered)| {
            let id = unsigned(&rollout, "outbox id", id)?;
            Ok(OutboxEntry {
                notice: decode_notice(&rollout, id, format, &body)?,
                id,
                seq: unsigned(&rollout, "seq", seq)?,
                at: unsigned(&rollout, "time", at)?,
                delivered_at: match delivered {
                    Some(d) => Some(unsigned(&rollout, "time", d)?),
                    None => None,
                },
                deliveries: Vec::new(),
                rollout,
            })
        })
        .collect()
}

const OUTBOX_COLUMNS: &str = "id, rollout, seq, at, format, body, delivered_at";

impl Store for SqliteStore {
    fn create(&self, rollout: NewRollout) -> BoxFuture<'_, Result<u64, StoreError>> {
        let encoded = encode_step(&rollout.step)
            .and_then(|s| Ok((s, to_i64(rollout.created_at, "created_at")?)));
        Box::pin(async move {
            let (step, created_at) = encoded?;
            self.writer
                .run(move |conn| {
                    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    if exists(&tx, &rollout.name)? {
                        return Err(StoreError::AlreadyExists(rollout.name));
                    }
                    tx.execute(
                        "INSERT INTO rollouts (name, plan_toml, created_at, listen)
                         VALUES (?1, ?2, ?3, ?4)",
                        params![rollout.name, rollout.plan_toml, created_at, rollout.listen],
                    )?;
                    let seq = write_step(&tx, &rollout.name, 0, &step)?;
                    tx.commit()?;
                    unsigned(&rollout.name, "seq", seq)
                })
                .await
        })
    }

    fn append(
        &self,
        rollout: &str,
        expected_seq: u64,
        step: Append,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        // Serialize here: the writer thread only writes.
        let encoded =
            encode_step(&step).and_then(|s| Ok((s, to_i64(expected_seq, "expected seq")?)));
        let name = rollout.to_string();
        Box::pin(async move {
            let (step, expected) = encoded?;
            self.writer
                .run(move |conn| {
                    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let last: Option<i64> = tx
                        .prepare_cached("SELECT seq FROM snapshots WHERE rollout = ?1")?
                        .query_row([&name], |r| r.get(0))
                        .optional()?;
                    let Some(last) = last else {
                        return Err(if exists(&tx, &name)? {
                            StoreError::Corrupt {
                                rollout: name,
                                seq: 0,
                                reason: "the rollout has no state snapshot".into(),
                            }
                        } else {
                            StoreError::NotFound(name)
                        });
                    };
                    if last != expected {
                        return Err(StoreError::Conflict {
                            expected: expected_seq,
                            actual: unsigned(&name, "seq", last)?,
                            rollout: name,
                        });
                    }
                    let seq = write_step(&tx, &name, last, &step)?;
                    tx.commit()?;
                    unsigned(&name, "seq", seq)
                })
                .await
        })
    }

    fn load_all(
        &self,
    ) -> BoxFuture<'_, Result<Vec<Result<StoredRollout, StoreError>>, StoreError>> {
        let pins = self.pins.clone();
        self.reader.run(move |conn| {
            // One read transaction: a consistent view even if another process writes meanwhile.
            let tx = conn.transaction()?;
            // Rows by rowid (names as bytes, so that even a damaged name is listed), then each
            // rollout on its own, so that a row that cannot be read (bad UTF-8, a wrong type,
            // no name) fails only that rollout.
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
                    out.push(row.and_then(Row::parse).map(|r| with_pin(&pins, r)));
                }
            }
            tx.commit()?;
            Ok(out)
        })
    }

    fn load(&self, rollout: &str) -> BoxFuture<'_, Result<StoredRollout, StoreError>> {
        let name = rollout.to_string();
        let pins = self.pins.clone();
        self.reader.run(move |conn| {
            let row = conn
                .prepare_cached(&format!("{SELECT_ROLLOUT} WHERE r.name = ?1"))?
                .query_row([&name], read_row)
                .optional()?;
            Ok(with_pin(
                &pins,
                row.ok_or(StoreError::NotFound(name))?.parse()?,
            ))
        })
    }

    fn events(
        &self,
        rollout: &str,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<(u64, v1::Event)>, StoreError>> {
        let name = rollout.to_string();
        self.reader.run(move |conn| {
            // Past the representable range there is nothing to return.
            let after = i64::try_from(after).unwrap_or(i64::MAX);
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let tx = conn.transaction()?;
            if !exists(&tx, &name)? {
                return Err(StoreError::NotFound(name));
            }
            let rows = tx
                .prepare_cached(
                    "SELECT seq, format, body FROM journal WHERE rollout = ?1 AND seq > ?2
                     ORDER BY seq LIMIT ?3",
                )?
                .query_map(params![name, after, limit], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            tx.commit()?;
            rows.into_iter()
                .map(|(seq, format, body)| {
                    let seq = unsigned(&name, "seq", seq)?;
                    Ok((seq, decode_event(&name, seq, format, &body)?))
                })
                .collect()
        })
    }

    fn windows(
        &self,
        rollout: &str,
        after: Millis,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<(Millis, MetricWindow)>, StoreError>> {
        let name = rollout.to_string();
        self.reader.run(move |conn| {
            if !exists(conn, &name)? {
                return Err(StoreError::NotFound(name));
            }
            let after = to_i64(after, "window time")?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = conn
                .prepare_cached(
                    "SELECT at, body FROM windows WHERE rollout = ?1 AND at > ?2
                     ORDER BY at LIMIT ?3",
                )?
                .query_map(params![name, after, limit], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(at, body)| {
                    let w = serde_json::from_str(&body).map_err(|e| StoreError::Corrupt {
                        rollout: name.clone(),
                        seq: 0,
                        reason: format!("window at {at}: {e}"),
                    })?;
                    Ok((unsigned(&name, "window time", at)?, w))
                })
                .collect()
        })
    }

    fn prune_windows(
        &self,
        rollout: &str,
        before: Millis,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        let name = rollout.to_string();
        self.writer.run(move |conn| {
            let before = i64::try_from(before).unwrap_or(i64::MAX);
            let n = conn.execute(
                "DELETE FROM windows WHERE rollout = ?1 AND at < ?2",
                params![name, before],
            )?;
            Ok(n as u64)
        })
    }

    fn pin_share(&self, rollout: &str, pin: SharePin) -> BoxFuture<'_, Result<(), StoreError>> {
        let name = rollout.to_string();
        let pins = self.pins.clone();
        // On the writer thread (so it is ordered with appends), but with or without its
        // connection: a pin must land when the database cannot be written at all.
        self.writer.run_even_without(move |conn| {
            // Which pins the journal has moved past (a read: it needs no free space). If even
            // that fails, every pin is kept.
            let positions: std::collections::HashMap<String, i64> = conn
                .ok()
                .and_then(|conn| {
                    conn.prepare_cached("SELECT rollout, seq FROM snapshots")
                        .and_then(|mut q| {
                            q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                                .collect::<Result<_, _>>()
                        })
                        .ok()
                })
                .unwrap_or_default();
            Pins::pin(&pins, &name, pin, |other, p| {
                positions
                    .get(other)
                    .is_some_and(|&seq| seq > 0 && seq as u64 > p.after_seq)
            })
        })
    }

    fn set_listen(&self, rollout: &str, listen: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let (name, listen) = (rollout.to_string(), listen.to_string());
        self.writer.run(move |conn| {
            let changed = conn.execute(
                "UPDATE rollouts SET listen = ?2 WHERE name = ?1",
                params![name, listen],
            )?;
            if changed == 0 {
                return Err(StoreError::NotFound(name));
            }
            Ok(())
        })
    }

    fn retire(&self, rollout: &str, at: Millis) -> BoxFuture<'_, Result<(), StoreError>> {
        let name = rollout.to_string();
        self.writer.run(move |conn| {
            let at = to_i64(at, "retired_at")?;
            let changed = conn.execute(
                "UPDATE rollouts SET retired_at = ?2 WHERE name = ?1 AND retired_at IS NULL",
                params![name, at],
            )?;
            if changed == 0 && !exists(conn, &name)? {
                return Err(StoreError::NotFound(name));
            }
            Ok(())
        })
    }

    fn undelivered(&self, limit: usize) -> BoxFuture<'_, Result<Vec<OutboxEntry>, StoreError>> {
        self.reader.run(move |conn| {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = conn
                .prepare_cached(&format!(
                    "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE delivered_at IS NULL
                     ORDER BY id LIMIT ?1"
                ))?
                .query_map([limit], outbox_row)?
                .collect::<Result<Vec<_>, _>>()?;
            parse_outbox(rows)
        })
    }

    fn delivered(&self, ids: Vec<u64>, at: Millis) -> BoxFuture<'_, Result<(), StoreError>> {
        self.writer.run(move |conn| {
            let at = to_i64(at, "delivered_at")?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut mark = tx.prepare_cached(
                    "UPDATE outbox SET delivered_at = ?2 WHERE id = ?1 AND delivered_at IS NULL",
                )?;
                for id in ids {
                    mark.execute(params![to_i64(id, "outbox id")?, at])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn pending(
        &self,
        rollout: &str,
        channel: &str,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<(OutboxEntry, u32)>, StoreError>> {
        let (name, channel) = (rollout.to_string(), channel.to_string());
        self.reader.run(move |conn| {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let mut attempts = Vec::new();
            let rows = conn
                .prepare_cached(
                    "SELECT o.id, o.rollout, o.seq, o.at, o.format, o.body, o.delivered_at,
                            d.attempts
                     FROM deliveries d JOIN outbox o ON o.id = d.notice
                     WHERE d.rollout = ?1 AND d.channel = ?2 AND d.state = 'pending'
                     ORDER BY d.notice LIMIT ?3",
                )?
                .query_map(params![name, channel, limit], |r| {
                    Ok((outbox_row(r)?, r.get::<_, i64>(7)?))
                })?
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .map(|(row, n)| {
                    attempts.push(u32::try_from(n).unwrap_or(u32::MAX));
                    row
                })
                .collect();
            Ok(parse_outbox(rows)?.into_iter().zip(attempts).collect())
        })
    }

    fn attempted(
        &self,
        id: u64,
        channel: &str,
        state: DeliveryState,
        attempts: u32,
        at: Millis,
        error: Option<String>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let channel = channel.to_string();
        self.writer.run(move |conn| {
            // A delivery that is done stays done: a late retry never turns it back.
            conn.prepare_cached(
                "UPDATE deliveries SET state = ?3, attempts = ?4, last_attempt_at = ?5, error = ?6
                 WHERE notice = ?1 AND channel = ?2 AND state = 'pending'",
            )?
            .execute(params![
                to_i64(id, "outbox id")?,
                channel,
                state.as_str(),
                i64::from(attempts),
                to_i64(at, "attempt time")?,
                error
            ])?;
            Ok(())
        })
    }

    fn delivery_counts(
        &self,
        rollout: &str,
    ) -> BoxFuture<'_, Result<Vec<(String, DeliveryCounts)>, StoreError>> {
        let name = rollout.to_string();
        self.reader.run(move |conn| {
            let rows = conn
                .prepare_cached(
                    "SELECT channel, state, COUNT(*) FROM deliveries WHERE rollout = ?1
                     GROUP BY channel, state ORDER BY channel",
                )?
                .query_map([name], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let mut out: Vec<(String, DeliveryCounts)> = Vec::new();
            for (channel, state, n) in rows {
                if out.last().is_none_or(|(c, _)| *c != channel) {
                    out.push((channel, DeliveryCounts::default()));
                }
                let Some((_, counts)) = out.last_mut() else {
                    continue;
                };
                let n = u64::try_from(n).unwrap_or(0);
                match DeliveryState::parse(&state) {
                    Some(DeliveryState::Pending) => counts.pending += n,
                    Some(DeliveryState::Delivered) => counts.delivered += n,
                    Some(DeliveryState::Failed) => counts.failed += n,
                    None => {}
                }
            }
            Ok(out)
        })
    }

    fn channel_ref(
        &self,
        rollout: &str,
        channel: &str,
    ) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        let (name, channel) = (rollout.to_string(), channel.to_string());
        self.reader.run(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT reference FROM channel_refs WHERE rollout = ?1 AND channel = ?2",
                )?
                .query_row(params![name, channel], |r| r.get(0))
                .optional()?)
        })
    }

    fn set_channel_ref(
        &self,
        rollout: &str,
        channel: &str,
        reference: &str,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let (name, channel, reference) = (
            rollout.to_string(),
            channel.to_string(),
            reference.to_string(),
        );
        self.writer.run(move |conn| {
            conn.prepare_cached(
                "INSERT INTO channel_refs (rollout, channel, reference) VALUES (?1, ?2, ?3)
                 ON CONFLICT (rollout, channel) DO UPDATE SET reference = excluded.reference",
            )?
            .execute(params![name, channel, reference])?;
            Ok(())
        })
    }

    fn notices(
        &self,
        rollout: &str,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<OutboxEntry>, StoreError>> {
        let name = rollout.to_string();
        self.reader.run(move |conn| {
            if !exists(conn, &name)? {
                return Err(StoreError::NotFound(name));
            }
            let after = i64::try_from(after).unwrap_or(i64::MAX);
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = conn
                .prepare_cached(&format!(
                    "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE rollout = ?1 AND id > ?2
                     ORDER BY id LIMIT ?3"
                ))?
                .query_map(params![name, after, limit], outbox_row)?
                .collect::<Result<Vec<_>, _>>()?;
            let mut entries = parse_outbox(rows)?;
            let mut deliveries = conn.prepare_cached(
                "SELECT channel, state, attempts, last_attempt_at, error FROM deliveries
                 WHERE notice = ?1 ORDER BY rowid",
            )?;
            for e in &mut entries {
                let rows = deliveries
                    .query_map([to_i64(e.id, "outbox id")?], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, Option<i64>>(3)?,
                            r.get::<_, Option<String>>(4)?,
                        ))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                for (channel, state, attempts, at, error) in rows {
                    let state =
                        DeliveryState::parse(&state).ok_or_else(|| StoreError::Corrupt {
                            rollout: e.rollout.clone(),
                            seq: e.seq,
                            reason: format!("notice {}: delivery state {state:?}", e.id),
                        })?;
                    e.deliveries.push(Delivery {
                        channel,
                        state,
                        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                        last_attempt_at: at.and_then(|a| u64::try_from(a).ok()),
                        error,
                    });
                }
            }
            Ok(entries)
        })
    }
}

/// `r` with its standing pin, if any (never for a retired rollout: it is not resumed).
fn with_pin(pins: &Mutex<Pins>, mut r: StoredRollout) -> StoredRollout {
    if r.retired_at.is_none() {
        r.pin = pins::lock(pins).standing(&r.name, r.last_seq);
    }
    r
}

/// The journal holds signal notes and operator reasons (PCI data, even masked, is nobody
/// else's business): the database is created readable by its owner only (0600), and an
/// existing one is narrowed to that. SQLite gives its `-journal` file the database file's
/// permissions.
#[cfg(unix)]
fn restrict(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| StoreError::Open(format!("{}: {e}", path.display())))?;
    let meta = file
        .metadata()
        .map_err(|e| StoreError::Open(format!("{}: {e}", path.display())))?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| StoreError::Open(format!("{}: {e}", path.display())))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn restrict(_path: &Path) -> Result<(), StoreError> {
    Ok(())
}
