//! The optional access log: one line per request, written off the request path.
//!
//! A line is
//!
//! ```text
//! 2024-05-01T12:00:00.123Z GET /pay/************1111?x=1 200 canary 1.234ms
//! ```
//!
//! (UTC time the response head was returned, method, path and query with card-number-like
//! digit runs masked by [`super::pan::mask_pans`], status, variant — `-` for requests the proxy
//! refused before routing — and latency from request received to response head). Bodies,
//! headers and client addresses are never logged.
//!
//! The request path formats the line and hands it to a bounded queue without blocking or
//! locking; a dedicated thread writes the queue to the configured [`Write`]r (stderr, or a
//! [`LogFile`] that rotates by size and may be shared by every proxy of a server). When the
//! queue is full (the writer cannot keep up) lines are dropped — a request never waits for
//! the log — and counted ([`super::ProxyHandle::access_log_dropped`], and a counter several
//! proxies can share: [`AccessLog::counting_drops_in`], exported by the API's `/metrics` as
//! `ramp_access_log_dropped_lines`).

use std::fmt::Write as _;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Lines queued for the writer thread before new ones are dropped.
pub(crate) const DEFAULT_QUEUE: usize = 8_192;

/// Where access-log lines go. Each line ends with `\n`; the writer is flushed whenever the
/// queue runs empty and at shutdown.
pub struct AccessLog {
    writer: Box<dyn Write + Send>,
    queue: usize,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl AccessLog {
    /// An access log written to `writer` (a file, stdout, a test buffer, ...).
    pub fn new(writer: impl Write + Send + 'static) -> Self {
        AccessLog {
            writer: Box::new(writer),
            queue: DEFAULT_QUEUE,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Counts dropped lines in `dropped` (shared, e.g., by every proxy of a server).
    pub fn counting_drops_in(mut self, dropped: Arc<AtomicU64>) -> Self {
        self.dropped = dropped;
        self
    }

    /// Sets how many lines may wait for the writer before lines are dropped (at least 1).
    pub fn with_queue(mut self, lines: usize) -> Self {
        self.queue = lines.max(1);
        self
    }
}

enum Message {
    Line(String),
    Close,
}

/// The request path's end of the access log.
#[derive(Clone)]
pub(crate) struct LogSender {
    tx: SyncSender<Message>,
    dropped: Arc<AtomicU64>,
}

/// The shutdown end: closes the queue and waits for the writer thread.
pub(crate) struct LogCloser {
    tx: SyncSender<Message>,
    done: tokio::sync::oneshot::Receiver<()>,
}

/// Starts the writer thread.
pub(crate) fn start(log: AccessLog) -> std::io::Result<(LogSender, LogCloser, Arc<AtomicU64>)> {
    let (tx, rx) = std::sync::mpsc::sync_channel(log.queue);
    let (done_tx, done) = tokio::sync::oneshot::channel();
    let writer = log.writer;
    let dropped = log.dropped;
    std::thread::Builder::new()
        .name("ramp-access-log".into())
        .spawn(move || {
            write_lines(writer, rx);
            let _ = done_tx.send(());
        })?;
    Ok((
        LogSender {
            tx: tx.clone(),
            dropped: dropped.clone(),
        },
        LogCloser { tx, done },
        dropped,
    ))
}

/// An access-log file that rotates by size: when a line would take it past `max_bytes`, it
/// becomes `PATH.1` (`PATH.1` becomes `PATH.2`, … up to `PATH.KEEP`, the oldest is removed)
/// and a new `PATH` is started. Clones share the file, so every proxy of a server can write
/// to one; each line is written whole under a lock (only the log's writer threads take it,
/// never a request). The file is created 0600: paths can carry customer data.
#[derive(Clone, Debug)]
pub struct LogFile {
    inner: Arc<std::sync::Mutex<RotatingFile>>,
}

#[derive(Debug)]
struct RotatingFile {
    path: std::path::PathBuf,
    max_bytes: u64,
    keep: u32,
    file: Option<std::fs::File>,
    written: u64,
}

fn open_append(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let file = o.open(path)?;
    // The mode above applies only to a new file: an existing one is narrowed too.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

impl LogFile {
    /// Opens (appends to) `path`; rotates past `max_bytes` (at least 4 KiB), keeping `keep`
    /// old files (at least 1).
    pub fn open(
        path: impl Into<std::path::PathBuf>,
        max_bytes: u64,
        keep: u32,
    ) -> std::io::Result<Self> {
        let path = path.into();
        let file = open_append(&path)?;
        let written = file.metadata().map_or(0, |m| m.len());
        Ok(LogFile {
            inner: Arc::new(std::sync::Mutex::new(RotatingFile {
                path,
                max_bytes: max_bytes.max(4096),
                keep: keep.max(1),
                file: Some(file),
                written,
            })),
        })
    }
}

impl RotatingFile {
    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        let name = |n: u32| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{n}"));
            std::path::PathBuf::from(p)
        };
        let _ = std::fs::remove_file(name(self.keep));
        for n in (1..self.keep).rev() {
            let _ = std::fs::rename(name(n), name(n + 1));
        }
        std::fs::rename(&self.path, name(1))?;
        self.file = Some(open_append(&self.path)?);
        self.written = 0;
        Ok(())
    }
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut f = self
            .inner
            .lock()
            .map_err(|_| std::io::Error::other("access log lock poisoned"))?;
        if f.written > 0 && f.written + buf.len() as u64 > f.max_bytes {
            // A failed rotation keeps writing to the current file.
            let _ = f.rotate();
        }
        if f.file.is_none() {
            let reopened = open_append(&f.path)?;
            f.file = Some(reopened);
        }
        let Some(file) = f.file.as_mut() else {
            return Err(std::io::Error::other("access log file unavailable"));
        };
        file.write_all(buf)?;
        f.written += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.inner.lock() {
            Ok(mut f) => f.file.as_mut().map_or(Ok(()), Write::flush),
            Err(_) => Ok(()),
        }
    }
}

fn write_lines(mut writer: Box<dyn Write + Send>, rx: Receiver<Message>) {
    // Block for the next line, then write whatever else is already queued before flushing.
    while let Ok(mut message) = rx.recv() {
        loop {
            match message {
                Message::Line(line) => {
                    // A failing writer loses lines; the proxy keeps serving.
                    let _ = writer.write_all(line.as_bytes());
                }
                Message::Close => {
                    let _ = writer.flush();
                    return;
                }
            }
            match rx.try_recv() {
                Ok(m) => message = m,
                Err(_) => break,
            }
        }
        let _ = writer.flush();
    }
    let _ = writer.flush();
}

impl LogSender {
    /// Queues one line; never blocks.
    pub(crate) fn log(
        &self,
        method: &http::Method,
        path_and_query: &str,
        status: u16,
        variant: &str,
        latency: Duration,
    ) {
        let masked = super::pan::mask_pans(path_and_query);
        let mut line = String::with_capacity(64 + masked.len());
        // The log line's own timestamp: a record of when, not an input to any decision.
        #[allow(clippy::disallowed_methods)]
        let now = SystemTime::now();
        push_timestamp(&mut line, now);
        let micros = latency.as_micros();
        let _ = writeln!(
            line,
            " {method} {masked} {status} {variant} {}.{:03}ms",
            micros / 1000,
            micros % 1000
        );
        match self.tx.try_send(Message::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl LogCloser {
    /// Writes what is queued, flushes and stops the writer thread (waits at most `limit`).
    pub(crate) async fn close(self, limit: Duration) {
        // Blocks only while the queue is full, which the writer thread is draining.
        let tx = self.tx;
        let sent = tokio::task::spawn_blocking(move || tx.send(Message::Close)).await;
        if matches!(sent, Ok(Ok(()))) {
            let _ = tokio::time::timeout(limit, self.done).await;
        }
    }
}

/// Appends `t` as RFC 3339 UTC with milliseconds, e.g. `2024-05-01T12:00:00.123Z`.
fn push_timestamp(out: &mut String, t: SystemTime) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    );
}

/// (year, month, day) of a day count since 1970-01-01 (proleptic Gregorian; Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_file_rotates_by_size_and_keeps_so_many() {
        let dir = std::env::temp_dir().join(format!("ramp-log-rotate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let mut log = LogFile::open(&path, 4096, 2).unwrap();
        let line = format!("{}\n", "x".repeat(99));
        for _ in 0..200 {
            log.write_all(line.as_bytes()).unwrap();
        }
        log.flush().unwrap();
        let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let rotated = |n: u32| dir.join(format!("access.log.{n}"));
        assert!(size(&path) <= 4096 && size(&path) > 0);
        assert!(size(&rotated(1)) >= 4000 && size(&rotated(1)) <= 4096);
        assert!(size(&rotated(2)) >= 4000);
        assert!(!rotated(3).exists(), "only two old files are kept");
        // Whole lines only, in every file.
        for p in [path.clone(), rotated(1), rotated(2)] {
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(text.lines().all(|l| l.len() == 99), "{p:?}");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn timestamps() {
        let mut s = String::new();
        push_timestamp(&mut s, UNIX_EPOCH);
        assert_eq!(s, "1970-01-01T00:00:00.000Z");
        s.clear();
        // 2024-02-29T23:59:59.250Z
        push_timestamp(
            &mut s,
            UNIX_EPOCH + Duration::from_millis(1_709_251_199_250),
        );
        assert_eq!(s, "2024-02-29T23:59:59.250Z");
        s.clear();
        push_timestamp(&mut s, UNIX_EPOCH + Duration::from_secs(951_782_400));
        assert_eq!(s, "2000-02-29T00:00:00.000Z");
    }
}
