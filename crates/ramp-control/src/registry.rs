//! The rollouts one server runs, each with its own proxy listener and controller, all journaled
//! in one store. Implements the control plane ([`Rollouts`]) the HTTP API calls.
//!
//! The lock here guards the *set* of rollouts (create, list); it is never on a request path.

use crate::control::{
    ControlError, EventPage, JournalEntry, Recorded, RolloutMetrics, RolloutStatus, Rollouts,
};
use crate::proxy::Limits;
use crate::serve::{self, Control, LogEntry, ServeConfig, Server, Snapshot};
use crate::store::{Store, StoreError};
use ramp_core::evidence::Signal;
use ramp_core::plan::{Plan, parse_plan};
use ramp_core::rollout::{Command, State};
use ramp_core::time::Millis;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use tokio::sync::{mpsc, oneshot, watch};

/// Settings every rollout of this server shares.
#[derive(Clone)]
pub struct Defaults {
    /// Controller time runs this many times faster than real time.
    pub time_scale: f64,
    /// Proxy limits.
    pub limits: Limits,
    /// Add `x-ramp-variant` to responses.
    pub variant_header: bool,
    /// Where a plan without `[proxy] listen` gets its listener.
    pub default_listen: SocketAddr,
    /// Write an access log (masked paths, never bodies) to stderr.
    pub access_log: bool,
}

/// The live log callback shared by all rollouts: (rollout name, entry, rollout start).
pub type Log = Arc<dyn Fn(&str, &LogEntry, Millis) + Send + Sync>;

struct Entry {
    control: mpsc::Sender<Control>,
    snapshot: watch::Receiver<Snapshot>,
    listen: SocketAddr,
    started_at: Option<Millis>,
}

/// The rollouts this server runs.
pub struct Registry {
    store: Arc<dyn Store>,
    defaults: Defaults,
    log: Log,
    rollouts: RwLock<BTreeMap<String, Entry>>,
    servers: std::sync::Mutex<Vec<Server>>,
    /// Whether a rollout already listens on `defaults.default_listen`.
    default_taken: std::sync::atomic::AtomicBool,
    /// Stored rollouts that could not be resumed, with the reason.
    failed: std::sync::Mutex<Vec<(String, String)>>,
}

/// What became of one stored rollout on restart.
#[derive(Clone, Debug)]
pub struct Resumed {
    /// The rollout.
    pub name: String,
    /// Where it serves now, or why it could not be resumed.
    pub outcome: Result<ResumedAt, String>,
}

/// A resumed rollout's proxy address.
#[derive(Clone, Copy, Debug)]
pub struct ResumedAt {
    /// Where its proxy listens.
    pub listen: SocketAddr,
    /// The address it listened on before, when that one was taken and it had to move.
    pub moved_from: Option<SocketAddr>,
}

/// Whether a TCP listener could bind `addr` right now (the proxy binds it moments later).
fn bindable(addr: SocketAddr) -> bool {
    std::net::TcpListener::bind(addr).is_ok()
}

/// Why a rollout could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The stored or given plan does not parse.
    #[error("{0}")]
    Plan(ramp_core::plan::PlanErrors),
    /// Serving failed (bind, store...).
    #[error(transparent)]
    Serve(#[from] serve::ServeError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Registry {
    /// An empty registry over a store.
    pub fn new(store: Arc<dyn Store>, defaults: Defaults, log: Log) -> Arc<Self> {
        Arc::new(Registry {
            store,
            defaults,
            log,
            rollouts: RwLock::new(BTreeMap::new()),
            servers: std::sync::Mutex::new(Vec::new()),
            default_taken: std::sync::atomic::AtomicBool::new(false),
            failed: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Resumes every rollout the store knows: same phase, same elapsed time, same share, same
    /// evidence, and the same proxy address when it is still free. A rollout that cannot be
    /// resumed (unreadable journal, stored plan no longer valid, address unavailable) is
    /// reported in its place and does not keep the others from serving. Fails only when the
    /// store itself cannot be read.
    pub async fn resume_all(&self) -> Result<Vec<Resumed>, StartError> {
        let stored = tokio::task::block_in_place(|| self.store.load_all())?;
        // Rollouts that remember their address claim it before any other takes the default.
        let (mut first, mut rest) = (Vec::new(), Vec::new());
        for r in stored {
            match r {
                Ok(r) if r.listen.is_some() => first.push(r),
                Ok(r) => rest.push(Ok(r)),
                Err(e) => rest.push(Err(e)),
            }
        }
        let mut report = Vec::new();
        for r in first.into_iter().map(Ok).chain(rest) {
            let r = match r {
                Ok(r) => r,
                Err(e) => {
                    let name = match &e {
                        StoreError::Corrupt { rollout, .. } => rollout.clone(),
                        _ => "?".into(),
                    };
                    report.push(Resumed {
                        name,
                        outcome: Err(format!("its journal cannot be read: {e}")),
                    });
                    continue;
                }
            };
            let outcome = match parse_plan(&r.plan_toml, &format!("stored plan of {}", r.name)) {
                Err(e) => Err(format!("its stored plan no longer parses: {e}")),
                Ok(plan) => {
                    let remembered = r.listen.as_deref().and_then(|l| l.parse().ok());
                    match self.launch(plan, Some(r.state), None, remembered).await {
                        Ok(listen) => Ok(ResumedAt {
                            listen,
                            moved_from: remembered.filter(|&a| a != listen),
                        }),
                        Err(e) => Err(e.to_string()),
                    }
                }
            };
            report.push(Resumed {
                name: r.name,
                outcome,
            });
        }
        if let Ok(mut failed) = self.failed.lock() {
            *failed = report
                .iter()
                .filter_map(|r| {
                    r.outcome
                        .as_ref()
                        .err()
                        .map(|e| (r.name.clone(), e.clone()))
                })
                .collect();
        }
        Ok(report)
    }

    /// Whether a rollout exists, and with which plan text.
    pub fn stored_plan(&self, name: &str) -> Option<String> {
        tokio::task::block_in_place(|| self.store.load(name).ok().map(|r| r.plan_toml))
    }

    /// Creates, journals and starts a new rollout. `listen` overrides the plan's address.
    pub async fn start_new(
        &self,
        plan_toml: &str,
        file: &str,
        listen: Option<SocketAddr>,
        now: Millis,
    ) -> Result<RolloutStatus, ControlError> {
        let plan = parse_plan(plan_toml, file).map_err(ControlError::InvalidPlan)?;
        if plan.upstreams.is_none() {
            return Err(ControlError::Conflict(
                "the plan has no [upstreams] table: a served rollout needs `stable` and `canary` URLs".into(),
            ));
        }
        if self
            .rollouts
            .read()
            .map(|r| r.contains_key(&plan.name))
            .unwrap_or(false)
        {
            return Err(ControlError::AlreadyExists(plan.name));
        }
        let state = State::new(&plan);
        tokio::task::block_in_place(|| self.store.create(&plan.name, plan_toml, now, &state))
            .map_err(|e| match e {
                StoreError::AlreadyExists(n) => ControlError::AlreadyExists(n),
                other => ControlError::Unavailable(other.to_string()),
            })?;
        let name = plan.name.clone();
        self.launch(plan, None, listen, None)
            .await
            .map_err(|e| ControlError::Unavailable(e.to_string()))?;
        self.status(&name)
            .ok_or_else(|| ControlError::Unavailable("the rollout stopped at once".into()))
    }

    /// Starts a rollout's proxy and controller; answers with the address the proxy listens on.
    async fn launch(
        &self,
        plan: Plan,
        resume: Option<State>,
        listen: Option<SocketAddr>,
        remembered: Option<SocketAddr>,
    ) -> Result<SocketAddr, StartError> {
        let name = plan.name.clone();
        let default = self.defaults.default_listen;
        // An address given explicitly (argument, then plan) wins. Otherwise a resumed rollout
        // serves where it served before, if that address is still free: its clients know it.
        // Otherwise the server's default address if no other rollout has it yet, else a free
        // port on the same interface (shown in its status), so several such rollouts can run,
        // and resume, side by side.
        let take_default = || {
            if self
                .default_taken
                .swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                SocketAddr::new(default.ip(), 0)
            } else {
                default
            }
        };
        let remembered = remembered.filter(|r| r.port() != 0);
        let listen = match (listen.or(plan.listen), remembered) {
            (Some(a), _) if a.port() != 0 => {
                if a == default {
                    self.default_taken
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                }
                a
            }
            // An explicit port 0 means "any free port": a resumed rollout keeps the one it had.
            (Some(a), Some(r)) if r.ip() == a.ip() && bindable(r) => r,
            (Some(a), _) => a,
            (None, Some(r)) if bindable(r) => {
                if r == default {
                    self.default_taken
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                }
                r
            }
            // Its old address is taken now: a free port beside it, never the default (which
            // may be the very address that is taken).
            // (If even that interface is gone, the default rules below.)
            (None, Some(r)) if bindable(SocketAddr::new(r.ip(), 0)) => SocketAddr::new(r.ip(), 0),
            (None, Some(_)) => take_default(),
            (None, None) => take_default(),
        };
        let log = self.log.clone();
        let log_name = name.clone();
        let server = serve::start(
            ServeConfig {
                plan,
                listen,
                time_scale: self.defaults.time_scale,
                limits: self.defaults.limits.clone(),
                variant_header: self.defaults.variant_header,
                access_log: self
                    .defaults
                    .access_log
                    .then(|| crate::proxy::AccessLog::new(std::io::stderr())),
                exit_on_end: false,
                store: Some(self.store.clone()),
                resume,
            },
            move |entry, origin| log(&log_name, entry, origin),
        )
        .await?;
        let bound = server.proxy_addr;
        if remembered != Some(bound) {
            // Only a hint for the next start: the rollout runs whether or not it is written.
            let _ =
                tokio::task::block_in_place(|| self.store.set_listen(&name, &bound.to_string()));
        }
        let snapshot = server.snapshot.clone();
        let started_at = Some(snapshot.borrow().origin);
        let entry = Entry {
            control: server.control.clone(),
            snapshot,
            listen: bound,
            started_at,
        };
        if let Ok(mut r) = self.rollouts.write() {
            r.insert(name, entry);
        }
        if let Ok(mut s) = self.servers.lock() {
            s.push(server);
        }
        Ok(bound)
    }

    fn entry_status(name: &str, e: &Entry) -> RolloutStatus {
        RolloutStatus {
            name: name.to_string(),
            started_at: e.started_at,
            listen: e.listen.to_string(),
            snapshot: e.snapshot.borrow().clone(),
        }
    }

    fn control(&self, name: &str) -> Result<mpsc::Sender<Control>, ControlError> {
        self.rollouts
            .read()
            .ok()
            .and_then(|r| r.get(name).map(|e| e.control.clone()))
            .ok_or_else(|| ControlError::NotFound(name.to_string()))
    }

    /// Stops every rollout's proxy and controller (the journal keeps their state).
    pub async fn shutdown(&self) {
        let servers: Vec<Server> = self
            .servers
            .lock()
            .map(|mut s| s.drain(..).collect())
            .unwrap_or_default();
        for s in &servers {
            let _ = s.control.send(Control::Stop).await;
        }
        for s in servers {
            let _ = s.wait().await;
        }
    }

    /// Waits until a snapshot newer than the command has been published, so the answer shows
    /// the new state.
    async fn settled(&self, name: &str) -> Option<RolloutStatus> {
        let mut rx = self.rollouts.read().ok()?.get(name)?.snapshot.clone();
        rx.mark_unchanged();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), rx.changed()).await;
        self.status(name)
    }
}

impl Rollouts for Registry {
    fn list(&self) -> Vec<RolloutStatus> {
        self.rollouts
            .read()
            .map(|r| r.iter().map(|(n, e)| Self::entry_status(n, e)).collect())
            .unwrap_or_default()
    }

    fn status(&self, name: &str) -> Option<RolloutStatus> {
        self.rollouts
            .read()
            .ok()
            .and_then(|r| r.get(name).map(|e| Self::entry_status(name, e)))
    }

    fn events(&self, name: &str, after: u64, limit: usize) -> Option<EventPage> {
        let page =
            tokio::task::block_in_place(|| self.store.events(name, after, limit + 1)).ok()?;
        let more = page.len() > limit;
        let events: Vec<JournalEntry> = page
            .into_iter()
            .take(limit)
            .map(|(seq, event)| JournalEntry { seq, event })
            .collect();
        let next = if more {
            events.last().map(|e| e.seq)
        } else {
            None
        };
        Some(EventPage { events, next })
    }

    async fn command(&self, name: &str, command: Command) -> Result<RolloutStatus, ControlError> {
        let control = self.control(name)?;
        let (tx, rx) = oneshot::channel();
        control
            .send(Control::Command(command, tx))
            .await
            .map_err(|_| {
                ControlError::Unavailable("the rollout's controller has stopped".into())
            })?;
        match rx.await {
            Ok(Ok(())) => self
                .settled(name)
                .await
                .ok_or_else(|| ControlError::NotFound(name.to_string())),
            Ok(Err(serve::CommandError::Rejected(rejection))) => {
                Err(ControlError::Conflict(ramp_core::report::rejection_text(
                    &rejection.reason,
                )))
            }
            Ok(Err(serve::CommandError::Unavailable(e))) => Err(ControlError::Unavailable(e)),
            Err(_) => Err(ControlError::Unavailable(
                "the rollout's controller has stopped".into(),
            )),
        }
    }

    async fn signal(
        &self,
        name: &str,
        signal: Signal,
        key: Option<String>,
    ) -> Result<Recorded, ControlError> {
        let control = self.control(name)?;
        let (tx, rx) = oneshot::channel();
        control
            .send(Control::Signal {
                signal,
                key,
                reply: Some(tx),
            })
            .await
            .map_err(|_| {
                ControlError::Unavailable("the rollout's controller has stopped".into())
            })?;
        match rx.await {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(e)) => Err(ControlError::Unavailable(e)),
            Err(_) => Err(ControlError::Unavailable(
                "the rollout's controller has stopped".into(),
            )),
        }
    }

    async fn create(&self, plan_toml: &str) -> Result<RolloutStatus, ControlError> {
        let now = crate::clock::Clock::scaled(1.0).now();
        self.start_new(plan_toml, "request body", None, now).await
    }

    fn metrics(&self) -> Vec<RolloutMetrics> {
        let entries: Vec<(String, mpsc::Sender<Control>, Snapshot)> = self
            .rollouts
            .read()
            .map(|r| {
                r.iter()
                    .map(|(n, e)| (n.clone(), e.control.clone(), e.snapshot.borrow().clone()))
                    .collect()
            })
            .unwrap_or_default();
        let mut out = Vec::new();
        let unavailable = |name: String| RolloutMetrics {
            name,
            status: "unavailable".into(),
            phase: 0,
            share_bp: 0,
            stable: ramp_core::evidence::VariantStats::default(),
            canary: ramp_core::evidence::VariantStats::default(),
        };
        for (name, control, snap) in entries {
            let (tx, rx) = oneshot::channel();
            if control.try_send(Control::Totals(tx)).is_err() {
                if control.is_closed() {
                    out.push(unavailable(name));
                }
                continue;
            }
            let Ok((stable, canary)) = tokio::task::block_in_place(|| rx.blocking_recv()) else {
                out.push(unavailable(name));
                continue;
            };
            out.push(RolloutMetrics {
                name,
                status: snap.status.clone(),
                phase: snap.phase,
                share_bp: snap.share.bp(),
                stable,
                canary,
            });
        }
        // Stored rollouts that could not be resumed: their proxy is not serving (share 0).
        let failed = self.failed.lock().map(|f| f.clone()).unwrap_or_default();
        out.extend(failed.into_iter().map(|(name, _)| unavailable(name)));
        out
    }
}
