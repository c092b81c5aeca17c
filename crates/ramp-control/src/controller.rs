//! One rollout's controller: the loop that feeds the pure state machine and carries out what it
//! decides, through the ports it is given.
//!
//! Every trigger batch (100 ms in a server, never longer than the analysis interval) it takes
//! the evidence since the last batch from its [`EvidenceSource`] and steps it as a window, so
//! triggers decide as the evidence arrives while gates keep their analysis interval (the core
//! throttles them); signals and operator commands arrive on a channel and are stepped the
//! moment they arrive. A batch that decides nothing is not journaled on its own: its evidence
//! is written with the next step that is, or with the checkpoint (state and merged window)
//! written once per analysis interval, so a crash loses at most one interval of evidence and
//! never a decision. Each step that decides something is journaled ([`Store::append`], with
//! the window since the last record and the notices it sends) **before** any of its effects is
//! carried out — except a lowered share (a rollback), which the core's rule
//! ([`ramp_core::rollout::when_unrecorded`]) lets go ahead unrecorded: it reaches the split
//! first and is published at once, so no disk (slow, full or frozen) delays a rollback. When a
//! write fails, the same rule says whether the step stands (it lowered the share; its record
//! goes with the next write) or is undone. A share goes to the [`TrafficSplit`], notices to the
//! outbox worker, journal entries and reports to the live log. After every step and every tick
//! the controller publishes the rollout's status, which the API reads without ever waiting for
//! the controller. The controller decides nothing itself.

use crate::clock::Clock;
use crate::log::{Log, LogEntry};
use crate::ports::{EvidenceSource, TrafficSplit};
use crate::status::{self, Published, View};
use ramp_api::{ControlError, Recorded};
use ramp_core::cohort::ShareBp;
use ramp_core::evidence::{MetricWindow, Signal};
use ramp_core::plan::Plan;
use ramp_core::report;
use ramp_core::rollout::{
    Command, Effect, EventKind, Input, State, Unrecorded, step, when_unrecorded,
};
use ramp_core::time::Millis;
use ramp_store::{Append, SharePin, Store};
use ramp_wire::v1;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot, watch};

/// Something for a controller from outside its evidence source.
#[derive(Debug)]
pub enum Msg {
    /// A signal. With a `key`, a signal already counted under that key is journaled as
    /// repeated and not counted again. The reply comes once it is journaled.
    Signal {
        /// The signal.
        signal: Signal,
        /// Its identity at its source.
        key: Option<String>,
        /// Who sent it (journaled with it).
        from: String,
        /// Its journal position and whether it was a repeat, or why it failed.
        reply: oneshot::Sender<Result<Recorded, ControlError>>,
    },
    /// An operator command; the reply is the status right after it.
    Command {
        /// The command.
        command: Command,
        /// The new status, or why not.
        reply: oneshot::Sender<Result<v1::RolloutStatus, ControlError>>,
    },
    /// Stop (after writing whatever is unsaved).
    Stop,
}

/// How often a rollout that waits for its journal (it could not record its restart) tries again.
pub const JOURNAL_RETRY: Duration = Duration::from_secs(1);

/// What a controller needs.
pub struct Parts<E, T, C> {
    /// The rollout's name.
    pub name: String,
    /// Its plan.
    pub plan: Arc<Plan>,
    /// Its state, as last journaled.
    pub state: State,
    /// The journal position of that state.
    pub seq: u64,
    /// Effects decided but not carried out yet (a new rollout's start).
    pub pending: Vec<Effect>,
    /// Step `Input::Restarted` first: the state was restored from the journal.
    pub restarted: bool,
    /// A lowered share carried out after `state` whose step the journal never took (the disk
    /// was full, then the process died): applied before anything else, then journaled as a
    /// rollback.
    pub pin: Option<SharePin>,
    /// Where its proxy listens (for its status).
    pub listen: String,
    /// The journal.
    pub store: Arc<dyn Store>,
    /// Where windows come from.
    pub evidence: E,
    /// How shares are applied.
    pub split: T,
    /// Controller time.
    pub clock: C,
    /// Woken after every step that wrote notices.
    pub outbox: Arc<Notify>,
    /// The live log.
    pub log: Log,
    /// Keep analysis windows in the journal this long (controller time); older ones are pruned.
    pub window_retention: Millis,
    /// Publish the status again this often between windows (real time); `None`: only after
    /// steps and windows.
    pub refresh: Option<Duration>,
    /// Take evidence and step the triggers this often (real time), at most once per analysis
    /// interval; `None`: once per analysis interval.
    pub batch: Option<Duration>,
}

/// A running controller's handles.
pub struct Handle {
    /// Send signals, commands and `Stop` here.
    pub inbox: mpsc::Sender<Msg>,
    /// The latest status.
    pub published: watch::Receiver<Arc<Published>>,
    /// The controller's task; resolves to its final state once stopped.
    pub task: tokio::task::JoinHandle<State>,
}

/// How a step's journal write went.
enum Commit {
    /// Durable at this journal position; its effects were carried out.
    Durable(u64),
    /// Not journaled, but carried out (it lowers the share); written with the next append.
    ActedUnsaved(String),
    /// Not journaled, and undone.
    Reverted(String),
    /// Decided nothing and not due for a checkpoint: kept in memory, written with the next
    /// record.
    InMemory,
}

/// What is still to be written after failed appends.
#[derive(Default)]
struct Unsaved {
    /// Steps carried out without a durable record: their entries, window and notices.
    events: Vec<v1::Event>,
    window: Option<MetricWindow>,
    notices: Vec<v1::Notice>,
    /// A window whose step was undone, to be fed again with the next one.
    carry: Option<MetricWindow>,
}

impl Unsaved {
    fn is_empty(&self) -> bool {
        self.events.is_empty() && self.window.is_none() && self.notices.is_empty()
    }
}

/// The reason of the rollback among `fx`, as words (for a pin).
fn rollback_reason(fx: &[Effect]) -> String {
    fx.iter()
        .find_map(|e| match e {
            Effect::Journal(ev) => match &ev.kind {
                EventKind::RolledBack { reason, .. } => Some(report::stop_text(reason)),
                _ => None,
            },
            _ => None,
        })
        .unwrap_or_else(|| "the share was lowered".into())
}

fn merge(a: Option<MetricWindow>, b: Option<MetricWindow>) -> Option<MetricWindow> {
    match (a, b) {
        (Some(mut a), Some(b)) => {
            a.stable.merge(&b.stable);
            a.canary.merge(&b.canary);
            Some(a)
        }
        (a, b) => a.or(b),
    }
}

struct Controller<E, T, C> {
    name: String,
    plan: Arc<Plan>,
    state: State,
    seq: u64,
    listen: String,
    origin: Millis,
    store: Arc<dyn Store>,
    evidence: E,
    split: T,
    clock: C,
    outbox: Arc<Notify>,
    log: Log,
    publish: watch::Sender<Arc<Published>>,
    unsaved: Unsaved,
    /// Request rates for displays: an exponential moving average over about a second.
    rates: (f64, f64),
    window_retention: Millis,
    last_prune: Millis,
    refresh: Option<Duration>,
    batch: Option<Duration>,
    /// Evidence stepped into the state but not journaled yet (batches that decided nothing).
    pending: Option<MetricWindow>,
    /// When the journal last took a record (controller time).
    last_record: Millis,
    /// Why the latest journal write failed, until one succeeds (shown in the status).
    journal_error: Option<String>,
}

/// Starts a controller on the current runtime.
pub fn spawn<E, T, C>(parts: Parts<E, T, C>) -> Handle
where
    E: EvidenceSource,
    T: TrafficSplit,
    C: Clock,
{
    let now = parts.clock.now();
    let origin = parts.state.started_at.unwrap_or(now);
    let view = View {
        name: &parts.name,
        listen: &parts.listen,
        plan: &parts.plan,
        state: &parts.state,
        now,
        origin,
        rates: (0.0, 0.0),
        health: parts.evidence.health(),
        retired: false,
        journal_error: None,
    };
    let (publish, published) = watch::channel(Arc::new(status::publish(&view)));
    let (inbox, rx) = mpsc::channel(1024);
    let controller = Controller {
        name: parts.name,
        plan: parts.plan,
        state: parts.state,
        seq: parts.seq,
        listen: parts.listen,
        origin,
        store: parts.store,
        evidence: parts.evidence,
        split: parts.split,
        clock: parts.clock,
        outbox: parts.outbox,
        log: parts.log,
        publish,
        unsaved: Unsaved::default(),
        rates: (0.0, 0.0),
        window_retention: parts.window_retention,
        last_prune: now,
        refresh: parts.refresh,
        batch: parts.batch,
        pending: None,
        last_record: now,
        journal_error: None,
    };
    let task = tokio::spawn(controller.run(rx, parts.pending, parts.restarted, parts.pin));
    Handle {
        inbox,
        published,
        task,
    }
}

impl<E: EvidenceSource, T: TrafficSplit, C: Clock> Controller<E, T, C> {
    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Msg>,
        pending: Vec<Effect>,
        restarted: bool,
        pin: Option<SharePin>,
    ) -> State {
        self.carry_out(pending).await;
        if restarted {
            // The share the journal holds is routed again (the proxy starts at it), unless a
            // lower one was carried out after it and never journaled; the restart itself is a
            // step like any other.
            let pin = pin.filter(|p| p.share < self.state.share);
            let share = pin.as_ref().map_or(self.state.share, |p| p.share);
            self.apply_share(share).await;
            if !self.record_restart(&mut inbox, share).await {
                // Stopped before the journal took the restart: nothing to write.
                self.publish();
                return self.state;
            }
            if let Some(p) = pin {
                // The restart moved the journal past the pin: pin again after it, so that a
                // crash before the rollback below is journaled still resumes at the pin.
                let again = SharePin {
                    after_seq: self.seq,
                    ..p.clone()
                };
                if let Err(e) = self.store.pin_share(&self.name, again).await {
                    tracing::error!(rollout = %self.name, error = %e, "cannot pin the lowered share again");
                }
                let reason = format!(
                    "recovered after a restart: the share was lowered to {} before ramp \
                     stopped, and the journal could not take it then ({})",
                    p.share, p.reason
                );
                tracing::warn!(rollout = %self.name, "{reason}");
                let rollback = Command::Rollback {
                    by: "ramp".into(),
                    reason,
                };
                self.step(Input::Command(crate::scrub::command(rollback)), None)
                    .await;
            }
        }
        self.publish();
        let interval = self
            .clock
            .real(self.plan.analysis.interval)
            .max(Duration::from_millis(5));
        let period = self
            .batch
            .map_or(interval, |b| b.min(interval))
            .max(Duration::from_millis(5));
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let alpha = period.as_secs_f64().min(1.0);
        // Between windows the status is published again every `refresh` (a second in a
        // server), so that its clock, phase time and backend health are never an analysis
        // interval old.
        let mut refresh = self.refresh.map(|every| {
            let mut r = tokio::time::interval(every);
            r.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            r
        });
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    // A batch that decided nothing is shown with the next refresh.
                    if !self.on_batch(period, alpha).await {
                        continue;
                    }
                }
                _ = async {
                    match refresh.as_mut() {
                        Some(r) => {
                            r.tick().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                } => {}
                msg = inbox.recv() => match msg {
                    Some(Msg::Signal {
                        signal,
                        key,
                        from,
                        reply,
                    }) => {
                        let answer = self.on_signal(signal, key, from).await;
                        let _ = reply.send(answer);
                    }
                    Some(Msg::Command { command, reply }) => {
                        let answer = self.on_command(command).await;
                        let _ = reply.send(answer);
                    }
                    Some(Msg::Stop) | None => break,
                },
            }
            self.publish();
        }
        self.flush().await;
        self.publish();
        self.state
    }

    /// Journals the restart; while the journal cannot take it, the rollout waits on stable
    /// (share 0 applied, nothing decided, signals and commands refused, evidence dropped: the
    /// wait is downtime) and tries again every [`JOURNAL_RETRY`], so it resumes by itself when
    /// the store recovers, at `share`. `false` if told to stop meanwhile.
    async fn record_restart(&mut self, inbox: &mut mpsc::Receiver<Msg>, share: ShareBp) -> bool {
        let mut waiting = false;
        loop {
            let (commit, _) = self.step(Input::Restarted, None).await;
            let why = match commit {
                Commit::Durable(_) | Commit::InMemory => {
                    if waiting {
                        tracing::warn!(rollout = %self.name, share = %share, "the journal took the restart: resuming");
                        self.apply_share(share).await;
                    }
                    return true;
                }
                Commit::ActedUnsaved(e) | Commit::Reverted(e) => e,
            };
            if !waiting {
                waiting = true;
                // A settled rollout (completed, rolled back, holding) decides nothing more: it
                // keeps the share it settled at. One that runs must decide nothing unrecorded,
                // so its users wait on stable.
                if self.state.status.is_settled() {
                    tracing::error!(rollout = %self.name, "the journal cannot take the restart; the rollout has settled and keeps its share: {why}");
                } else {
                    tracing::error!(rollout = %self.name, "cannot resume until the journal can be written; all traffic goes to stable meanwhile: {why}");
                    self.apply_share(ShareBp::ZERO).await;
                }
            }
            self.publish();
            let refusal = || {
                ControlError::Unavailable(format!(
                    "the rollout waits for its journal (all traffic on stable): {why}"
                ))
            };
            let wait = tokio::time::sleep(JOURNAL_RETRY);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = &mut wait => break,
                    msg = inbox.recv() => match msg {
                        Some(Msg::Signal { reply, .. }) => {
                            let _ = reply.send(Err(refusal()));
                        }
                        Some(Msg::Command { reply, .. }) => {
                            let _ = reply.send(Err(refusal()));
                        }
                        Some(Msg::Stop) | None => return false,
                    },
                }
            }
            let _ = self.evidence.take().await;
        }
    }

    fn publish(&self) {
        let view = View {
            name: &self.name,
            listen: &self.listen,
            plan: &self.plan,
            state: &self.state,
            now: self.clock.now(),
            origin: self.origin,
            rates: self.rates,
            health: self.evidence.health(),
            retired: false,
            journal_error: self.journal_error.as_deref(),
        };
        let _ = self.publish.send(Arc::new(status::publish(&view)));
    }

    fn status(&self) -> v1::RolloutStatus {
        self.publish();
        self.publish.borrow().status.clone()
    }

    /// Takes a batch of evidence and steps it; returns whether the status changed enough to
    /// publish (a decision, or a checkpoint).
    async fn on_batch(&mut self, period: Duration, alpha: f64) -> bool {
        let window = match self.evidence.take().await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(rollout = %self.name, error = %e, "no evidence this batch");
                return false;
            }
        };
        // A backend that went down (or came back) is the core's to announce.
        let (stable, canary) = self.evidence.health();
        if (stable, canary) != self.state.backends {
            self.step_batch(Input::Health { stable, canary }, None, false)
                .await;
        }
        let secs = period.as_secs_f64();
        self.rates.0 += alpha * (window.stable.requests as f64 / secs - self.rates.0);
        self.rates.1 += alpha * (window.canary.requests as f64 / secs - self.rates.1);
        // A window whose step could not be journaled is fed again with this one.
        let window = merge(self.unsaved.carry.take(), Some(window)).unwrap_or_default();
        let due = self.clock.now() >= self.last_record + self.plan.analysis.interval;
        let (commit, _) = self
            .step_batch(Input::Window(window.clone()), Some(window), due)
            .await;
        self.prune_windows().await;
        // A share the split has not applied yet (it lagged or failed) is applied again.
        if self.split.applied() != Some(self.state.share) {
            let share = self.state.share;
            self.apply_share(share).await;
        }
        !matches!(commit, Commit::InMemory)
    }

    async fn on_signal(
        &mut self,
        signal: Signal,
        key: Option<String>,
        from: String,
    ) -> Result<Recorded, ControlError> {
        let signal = crate::scrub::signal(signal);
        // The key is matched as sent (masking could make two keys one) and journaled scrubbed.
        let input = Input::SignalFrom {
            from: crate::scrub::text(&from),
            shown_key: key.as_ref().map(|k| crate::scrub::text(k)),
            key,
            signal,
        };
        let (commit, fx) = self.step(input, None).await;
        let duplicate = fx.iter().any(|e| {
            matches!(e, Effect::Journal(ev) if matches!(ev.kind, EventKind::SignalRepeated { .. }))
        });
        match commit {
            Commit::Durable(seq) => Ok(Recorded { seq, duplicate }),
            Commit::ActedUnsaved(e) | Commit::Reverted(e) => Err(ControlError::Unavailable(e)),
            // Not reached: signals are always recorded.
            Commit::InMemory => Ok(Recorded {
                seq: self.seq,
                duplicate,
            }),
        }
    }

    async fn on_command(&mut self, command: Command) -> Result<v1::RolloutStatus, ControlError> {
        let command = crate::scrub::command(command);
        let (commit, fx) = self.step(Input::Command(command), None).await;
        let rejected = fx.iter().find_map(|e| match e {
            Effect::Rejected(r) => Some(report::rejection_text(&r.reason)),
            _ => None,
        });
        match (commit, rejected) {
            (Commit::Reverted(e), _) => Err(ControlError::Unavailable(e)),
            (_, Some(reason)) => Err(ControlError::Conflict(reason)),
            _ => Ok(self.status()),
        }
    }

    /// Steps the core, journals the step, and carries out its effects or undoes it (see the
    /// module docs). `window` is recorded with the step.
    async fn step(&mut self, input: Input, window: Option<MetricWindow>) -> (Commit, Vec<Effect>) {
        self.step_batch(input, window, true).await
    }

    /// [`Controller::step`], except that a step that decides nothing (no journal entry, no
    /// notice) is kept in memory unless `record` says a checkpoint is due.
    async fn step_batch(
        &mut self,
        input: Input,
        window: Option<MetricWindow>,
        record: bool,
    ) -> (Commit, Vec<Effect>) {
        let now = self.clock.now();
        let before = self.state.clone();
        let (mut next, fx) = step(&self.plan, before.clone(), input, now);
        // Rollback wins over the disk: a step the core lets go ahead unrecorded (it lowers the
        // share) reaches the split *before* the journal write, which may be slow, failing or
        // hung on a frozen filesystem; the write follows with the share as applied.
        let early = matches!(when_unrecorded(&before, &fx), Unrecorded::CarryOut);
        let fx_rest: Vec<Effect> = if early {
            self.state = next;
            for e in &fx {
                if let Effect::SetShare { share } = e {
                    self.apply_share(*share).await;
                }
            }
            next = self.state.clone();
            self.publish();
            fx.iter()
                .filter(|e| !matches!(e, Effect::SetShare { .. }))
                .cloned()
                .collect()
        } else {
            fx.clone()
        };
        let decides = fx.iter().any(|e| {
            matches!(
                e,
                Effect::Journal(_) | Effect::Notify(_) | Effect::SetShare { .. }
            )
        });
        if !record && !decides && self.unsaved.is_empty() {
            self.state = next;
            self.pending = merge(self.pending.take(), window);
            self.carry_out(fx.clone()).await;
            return (Commit::InMemory, fx);
        }
        // Entries of earlier steps that were carried out unrecorded go first.
        let mut events = self.unsaved.events.clone();
        let mut notices = self.unsaved.notices.clone();
        for e in &fx {
            match e {
                Effect::Journal(ev) => events.push(v1::Event::from(ev)),
                Effect::Notify(n) => notices.push(v1::Notice::at(&self.plan, &next, n)),
                _ => {}
            }
        }
        let recorded = merge(
            merge(self.unsaved.window.clone(), self.pending.clone()),
            window.clone(),
        );
        let append = Append {
            events: events.clone(),
            state: next.clone(),
            window: recorded.clone(),
            notices: notices.clone(),
        };
        match self.store.append(&self.name, self.seq, append).await {
            Ok(seq) => {
                self.seq = seq;
                self.journal_error = None;
                self.state = next;
                self.pending = None;
                self.last_record = now;
                self.unsaved.events.clear();
                self.unsaved.notices.clear();
                self.unsaved.window = None;
                if !notices.is_empty() {
                    self.outbox.notify_one();
                }
                self.carry_out(fx_rest.clone()).await;
                (Commit::Durable(seq), fx)
            }
            Err(e) => match when_unrecorded(&before, &fx) {
                Unrecorded::CarryOut => {
                    // Before anything else is written: the lowered share, in the store's
                    // reserved space, so that a crash now never resumes at the higher one.
                    let pin = SharePin {
                        after_seq: self.seq,
                        share: next.share,
                        at: now,
                        reason: rollback_reason(&fx),
                    };
                    let pinned = match self.store.pin_share(&self.name, pin).await {
                        Ok(()) => {
                            "; the lowered share is pinned, so a restart keeps it".to_string()
                        }
                        Err(p) => format!("; pinning the lowered share failed too: {p}"),
                    };
                    let msg = format!(
                        "journal write failed; the rollback was carried out anyway and will be journaled with the next write{pinned}: {e}"
                    );
                    self.store_error(&msg);
                    self.unsaved.events = events;
                    self.unsaved.notices = notices;
                    self.unsaved.window = recorded;
                    self.pending = None;
                    self.state = next;
                    self.carry_out(fx_rest.clone()).await;
                    (Commit::ActedUnsaved(msg), fx)
                }
                Unrecorded::Undo => {
                    let msg = format!("journal write failed, not carried out (retry): {e}");
                    self.store_error(&msg);
                    // As if the input had not arrived; its window is fed again with the next.
                    self.unsaved.carry = merge(self.unsaved.carry.take(), window);
                    self.state = before;
                    (Commit::Reverted(msg), fx)
                }
            },
        }
    }

    fn store_error(&mut self, msg: &str) {
        self.journal_error = Some(msg.to_string());
        tracing::error!(rollout = %self.name, "{msg}");
        (self.log)(&self.name, &LogEntry::StoreError(msg), self.origin);
    }

    /// Carries out effects in order. Journal entries are logged before the share changes they
    /// describe; the share change reaches the split before any notice leaves.
    async fn carry_out(&mut self, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Journal(ev) => {
                    let event = v1::Event::from(&ev);
                    (self.log)(&self.name, &LogEntry::Event(&event), self.origin);
                }
                Effect::SetShare { share } => self.apply_share(share).await,
                Effect::Report { report } => {
                    (self.log)(&self.name, &LogEntry::Report(report.into()), self.origin);
                }
                Effect::Notify(_) | Effect::Rejected(_) => {}
            }
        }
    }

    async fn apply_share(&mut self, share: ramp_core::cohort::ShareBp) {
        match self.split.apply(share).await {
            Ok(()) => {
                let applied = self.split.applied().unwrap_or(share);
                let now = self.clock.now();
                let (state, _) = step(
                    &self.plan,
                    self.state.clone(),
                    Input::ShareApplied(applied),
                    now,
                );
                self.state = state;
            }
            Err(e) => {
                tracing::error!(rollout = %self.name, share = %share, error = %e, "share not applied; retrying");
            }
        }
    }

    /// Deletes windows older than the retention, at most once an hour of controller time.
    async fn prune_windows(&mut self) {
        let now = self.clock.now();
        if now < self.last_prune + ramp_core::time::HOUR {
            return;
        }
        self.last_prune = now;
        let before = now.saturating_sub(self.window_retention);
        if let Err(e) = self.store.prune_windows(&self.name, before).await {
            tracing::warn!(rollout = %self.name, error = %e, "could not prune old windows");
        }
    }

    /// On stop: writes entries left unsaved by failed appends, and the state as it is now (the
    /// share the split applied, the evidence of the last partial window are only in memory
    /// otherwise), retrying for a few seconds; says so loudly if they still cannot be written.
    async fn flush(&mut self) {
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=6 {
            let append = Append {
                events: self.unsaved.events.clone(),
                state: self.state.clone(),
                window: merge(self.unsaved.window.clone(), self.pending.clone()),
                notices: self.unsaved.notices.clone(),
            };
            match self.store.append(&self.name, self.seq, append).await {
                Ok(seq) => {
                    self.seq = seq;
                    self.journal_error = None;
                    self.pending = None;
                    let notices = !self.unsaved.notices.is_empty();
                    self.unsaved = Unsaved::default();
                    if notices {
                        self.outbox.notify_one();
                    }
                    return;
                }
                Err(e) if attempt == 6 && self.unsaved.is_empty() => {
                    tracing::warn!(rollout = %self.name, error = %e, "the last state could not be written before stopping; the journal holds the one before");
                }
                Err(e) if attempt == 6 => {
                    let msg = format!(
                        "LOST: {} journal entries (the latest state: {}, share {}) could not be written before stopping: {e}. The journal still holds the state before them; check the rollout before restarting.",
                        self.unsaved.events.len(),
                        self.state.status.name(),
                        self.state.share
                    );
                    self.store_error(&msg);
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    }
}
