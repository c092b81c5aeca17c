//! The bodies on the request path, and where a request's outcome is decided.
//!
//! * [`Upload`]: the client's request body on its way to the upstream. It must keep moving
//!   (`client_body_timeout` between frames) and says when it has ended, so that the upstream's
//!   response time is counted from the end of the upload, never during it.
//! * [`Tracked`]: the upstream's response body on its way to the client. The request is
//!   recorded when it *ends*: at the last frame as the status the upstream sent; when the body
//!   breaks or stalls (`upstream_body_timeout` between frames) as [`Answer::Truncated`] — an
//!   error of that variant; when the client goes away first, as the client's doing (neither
//!   success nor error, unless the status already was a 5xx).

use crate::Shared;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use ramp_core::cohort::Variant;
use ramp_core::evidence::class::Answer;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;

/// The error type of the proxy's bodies.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body that stalled past its timeout.
#[derive(Debug)]
pub(crate) struct Stalled(&'static str);

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Stalled {}

/// An idle timer: how long a body may stay `Pending` — counted from the first `Pending` after
/// progress, so time the *other* side took to ask for the next piece (a client reading
/// slowly, an upstream not reading yet) never counts. Allocated on first use (a body that is
/// never `Pending` costs no timer).
#[derive(Default)]
pub(crate) struct Idle {
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl Idle {
    /// Polls the timer while the body is `Pending`: `true` when it has fired.
    // A request's own timeout, not a decision: measured on the runtime's monotonic clock.
    #[allow(clippy::disallowed_methods)]
    fn fired(&mut self, limit: Duration, cx: &mut Context<'_>) -> bool {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if !self.armed {
            sleep.as_mut().reset(tokio::time::Instant::now() + limit);
            self.armed = true;
        }
        sleep.as_mut().poll(cx).is_ready()
    }

    /// The body moved: the next `Pending` starts a fresh wait.
    fn progressed(&mut self) {
        self.armed = false;
    }
}

/// What an upload tells the request: when it ended, and whether it stalled.
#[derive(Debug, Default)]
pub(crate) struct UploadState {
    ended: OnceLock<Instant>,
    stalled: AtomicBool,
    /// Pieces of the body read so far (the upstream is taking it).
    read: std::sync::atomic::AtomicU64,
}

impl UploadState {
    /// When the upload ended, if it has.
    pub(crate) fn ended(&self) -> Option<Instant> {
        self.ended.get().copied()
    }

    /// Pieces of the body the upstream has taken so far.
    pub(crate) fn read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// Whether the client stopped sending its body.
    pub(crate) fn stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed)
    }

    fn end(&self) {
        // Measures how long the upstream takes after the upload: evidence, monotonic clock.
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let _ = self.ended.set(now);
    }
}

/// The client's request body toward the upstream.
pub(crate) struct Upload {
    inner: Incoming,
    state: Option<Arc<UploadState>>,
    idle: Idle,
    limit: Duration,
}

impl Upload {
    /// `state` is `None` for a request without a body.
    pub(crate) fn new(inner: Incoming, state: Option<Arc<UploadState>>, limit: Duration) -> Self {
        Upload {
            inner,
            state,
            idle: Idle::default(),
            limit,
        }
    }
}

impl Body for Upload {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.idle.progressed();
                if let Some(s) = &this.state {
                    s.read.fetch_add(1, Ordering::Relaxed);
                }
                if this.inner.is_end_stream()
                    && let Some(s) = &this.state
                {
                    s.end();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                if let Some(s) = &this.state {
                    s.end();
                }
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.idle.fired(this.limit, cx) {
                    if let Some(s) = &this.state {
                        s.stalled.store(true, Ordering::Relaxed);
                    }
                    return Poll::Ready(Some(Err(Box::new(Stalled(
                        "the client stopped sending its request body",
                    )))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How a request is recorded once its response ends.
pub(crate) struct Outcome {
    pub(crate) shared: Arc<Shared>,
    pub(crate) variant: Variant,
    pub(crate) user: Option<u64>,
    /// Request received to response head (or, with `to_last_byte`, to the body's end).
    pub(crate) latency: Duration,
    /// When the request was received.
    pub(crate) received: Instant,
    /// The plan measures latency to the last byte of the response.
    pub(crate) to_last_byte: bool,
    pub(crate) log_target: Option<(http::Method, String)>,
    /// The variant's bulkhead slot, held until the response ends.
    pub(crate) permit: Option<OwnedSemaphorePermit>,
}

impl Outcome {
    /// Records `answer` (and logs it).
    pub(crate) fn finish(self, answer: Answer) {
        let latency_us = u64::try_from(self.latency.as_micros()).unwrap_or(u64::MAX);
        let shared = &*self.shared;
        shared
            .recorder
            .record(self.variant, answer, latency_us, self.user);
        if let (Some(log), Some((method, target))) = (&shared.log, &self.log_target) {
            log.log(
                method,
                target,
                answer.status(),
                self.variant.as_str(),
                self.latency,
            );
        }
        drop(self.permit);
    }
}

/// The upstream's response body toward the client, recorded when it ends.
pub(crate) struct Tracked {
    inner: Incoming,
    status: u16,
    outcome: Option<Outcome>,
    idle: Idle,
    limit: Duration,
}

impl Tracked {
    pub(crate) fn new(inner: Incoming, status: u16, outcome: Outcome, limit: Duration) -> Self {
        Tracked {
            inner,
            status,
            outcome: Some(outcome),
            idle: Idle::default(),
            limit,
        }
    }

    fn finish(&mut self, answer: Answer) {
        if let Some(mut o) = self.outcome.take() {
            if o.to_last_byte {
                o.latency = o.received.elapsed();
            }
            o.finish(answer);
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if polled.is_pending() {
            if this.idle.fired(this.limit, cx) {
                this.finish(Answer::Truncated(this.status));
                return Poll::Ready(Some(Err(Box::new(Stalled(
                    "the upstream stopped sending its response body",
                )))));
            }
            return Poll::Pending;
        }
        match ready!(polled) {
            Some(Ok(frame)) => {
                this.idle.progressed();
                if this.inner.is_end_stream() {
                    this.finish(Answer::Status(this.status));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                this.finish(Answer::Truncated(this.status));
                Poll::Ready(Some(Err(e.into())))
            }
            None => {
                this.finish(Answer::Status(this.status));
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.outcome.is_some() {
            // Dropped before its end: either there was nothing to send (`is_end_stream`), or
            // the client went away mid-body, which is not the upstream's doing (a 5xx stays an
            // error whatever the client did).
            let answer = if self.inner.is_end_stream() || self.status >= 500 {
                Answer::Status(self.status)
            } else {
                Answer::ClientClosed
            };
            self.finish(answer);
        }
    }
}
