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
//! locking; a dedicated thread writes the queue to the configured [`Write`]r. When the queue is
//! full (the writer cannot keep up) lines are dropped and counted
//! ([`super::ProxyHandle::access_log_dropped`]).

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
        }
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
    std::thread::Builder::new()
        .name("ramp-access-log".into())
        .spawn(move || {
            write_lines(writer, rx);
            let _ = done_tx.send(());
        })?;
    let dropped = Arc::new(AtomicU64::new(0));
    Ok((
        LogSender {
            tx: tx.clone(),
            dropped: dropped.clone(),
        },
        LogCloser { tx, done },
        dropped,
    ))
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
