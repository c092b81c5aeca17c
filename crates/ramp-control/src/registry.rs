//! The rollouts one server runs, each with its own proxy listener and controller, all journaled
//! in one store and all proxied on one pool of worker threads. Implements the control plane
//! ([`Rollouts`]) the HTTP API calls.
//!
//! The lock here guards the *set* of rollouts (create, retire, list); it is never held across
//! an await and never on a request path.

use crate::clock::{Clock, ScaledClock, unix_now};
use crate::controller::{self, Msg, Parts};
use crate::log::Log;
use crate::outbox::{ChannelParts, ChannelStats, ChannelWorker};
use crate::ports::{ProxyEvidence, ProxySplit};
use crate::status::{self, Published};
use ramp_api::{ControlError, Recorded, RolloutMetrics, Rollouts};
use ramp_core::cohort::ShareBp;
use ramp_core::evidence::Signal;
use ramp_core::plan::{Plan, parse_plan};
use ramp_core::rollout::{Command, Effect, Input, State, step};
use ramp_core::time::Millis;
use ramp_notify::Notifier;
use ramp_proxy::{AccessLog, Limits, ProxyConfig, ProxyHandle, Workers};
use ramp_store::{Append, NewRollout, Store, StoreError, StoredRollout};
use ramp_wire::v1;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::{Notify, oneshot, watch};

/// How often a served rollout's triggers take the proxy's evidence (real time): a canary that
/// fails every request is back on stable within a batch or two, whatever the analysis
/// interval.
pub const TRIGGER_BATCH: std::time::Duration = std::time::Duration::from_millis(100);

/// Settings every rollout of this server shares.
#[derive(Clone, Debug)]
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
    /// Keep analysis windows in the journal this long (controller time).
    pub window_retention: Millis,
    /// Where rollouts created over the API may listen and proxy to.
    pub allow: crate::allow::Allow,
    /// Every certificate in use (each rollout's proxy adds its own).
    pub certificates: Arc<ramp_proxy::tls::Certificates>,
    /// Where the access log goes when `access_log` is on: this file, or stderr.
    pub access_log_file: Option<ramp_proxy::LogFile>,
    /// Access-log lines dropped by every proxy of the server (the log could not keep up).
    pub access_log_dropped: Arc<std::sync::atomic::AtomicU64>,
    /// How a plan's notification channels are built (their secrets read).
    pub channels: ChannelFactory,
    /// Where the incident reviews and final reports the core asks for are written (Markdown
    /// and HTML); `None`: not written (they are still served by the API).
    pub reports_dir: Option<std::path::PathBuf>,
}

/// Builds one channel, or says why it cannot.
pub type BuildChannel =
    dyn Fn(&ramp_core::plan::Channel) -> Result<Arc<dyn Notifier>, String> + Send + Sync;

/// Builds a plan's channel into its notifier, reading its secrets.
#[derive(Clone)]
pub struct ChannelFactory(pub Arc<BuildChannel>);

impl ChannelFactory {
    /// Channels whose secrets come from `secrets`.
    pub fn with(secrets: Arc<dyn ramp_notify::Secrets>) -> Self {
        ChannelFactory(Arc::new(move |c| {
            ramp_notify::build(c, secrets.as_ref()).map_err(|e| e.to_string())
        }))
    }
}

impl Default for ChannelFactory {
    /// Secrets from the process's environment and files.
    fn default() -> Self {
        ChannelFactory::with(Arc::new(ramp_notify::secret::Process))
    }
}

impl std::fmt::Debug for ChannelFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChannelFactory")
    }
}

/// A channel that could not be built when its rollout resumed (a secret went missing): every
/// attempt fails with the reason, so its notices wait (and show why) until `give_up_after`.
struct Broken {
    name: String,
    why: String,
}

impl Notifier for Broken {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver<'a>(
        &'a self,
        _: ramp_notify::Attempt<'a>,
    ) -> ramp_store::BoxFuture<'a, Result<ramp_notify::Sent, ramp_notify::NotifyError>> {
        let e = ramp_notify::NotifyError::later(format!("channel not available: {}", self.why));
        Box::pin(async move { Err(e) })
    }
}

/// How long a stopping server keeps delivering what is pending on its channels.
pub const CHANNEL_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            time_scale: 1.0,
            limits: Limits::default(),
            variant_header: false,
            default_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            access_log: false,
            window_retention: 30 * ramp_core::time::DAY,
            allow: crate::allow::Allow::default(),
            certificates: ramp_proxy::tls::Certificates::new(),
            access_log_file: None,
            access_log_dropped: Arc::default(),
            channels: ChannelFactory::default(),
            reports_dir: None,
        }
    }
}

/// A rollout that runs: its controller, proxy and latest status.
struct Live {
    inbox: tokio::sync::mpsc::Sender<Msg>,
    published: watch::Receiver<Arc<Published>>,
    task: tokio::task::JoinHandle<State>,
    proxy: ProxyHandle,
}

enum Entry {
    Live(Live),
    /// Stopped for good; its journal stays readable.
    Retired(Box<v1::RolloutStatus>),
    /// Known, but not runnable (why in the status).
    Unavailable(Box<v1::RolloutStatus>),
}

/// The rollouts this server runs.
pub struct Registry {
    store: Arc<dyn Store>,
    journal: Arc<crate::watched::JournalWatch>,
    workers: Arc<Workers>,
    defaults: Defaults,
    log: Log,
    outbox: Arc<Notify>,
    /// Told after every round of the live log's deliveries: channel workers look then.
    rounds: watch::Sender<u64>,
    /// Every rollout's channel workers (they outlive a retire: pending notices still go).
    channels: std::sync::Mutex<Vec<(String, ChannelWorker)>>,
    /// Reports being written (a stopping server waits for them).
    report_tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    rollouts: RwLock<BTreeMap<String, Entry>>,
    /// Whether a rollout already listens on `defaults.default_listen`.
    default_taken: AtomicBool,
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
    /// Where its proxy listens (`None` for a retired rollout, which has none).
    pub listen: Option<SocketAddr>,
    /// The address it listened on before, when that one was taken and it had to move.
    pub moved_from: Option<SocketAddr>,
}

/// Whether a TCP listener could bind `addr` right now (the proxy binds it moments later).
fn bindable(addr: SocketAddr) -> bool {
    std::net::TcpListener::bind(addr).is_ok()
}

impl Registry {
    /// An empty registry over a store (watched: its failures show in `/readyz`, `/metrics`
    /// and status; use [`Registry::store`] for anything else that writes to it); its proxies
    /// run on `workers`, and its controllers wake `outbox` after writing notices.
    pub fn new(
        store: Arc<dyn Store>,
        workers: Arc<Workers>,
        defaults: Defaults,
        log: Log,
        outbox: Arc<Notify>,
    ) -> Arc<Self> {
        let (store, journal) = crate::watched::watch(store);
        Arc::new(Registry {
            store,
            journal,
            workers,
            defaults,
            log,
            outbox,
            rounds: watch::channel(0).0,
            channels: std::sync::Mutex::new(Vec::new()),
            report_tasks: Arc::default(),
            rollouts: RwLock::new(BTreeMap::new()),
            default_taken: AtomicBool::new(false),
        })
    }

    /// The store, watched (the outbox worker writes through it too).
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// What the live log's outbox worker tells after each round (see [`Outbox::start_waking`]).
    pub fn rounds(&self) -> watch::Sender<u64> {
        self.rounds.clone()
    }

    /// Builds every channel of `plan`; the first that cannot be built is the error.
    fn build_channels(&self, plan: &Plan) -> Result<Vec<Arc<dyn Notifier>>, String> {
        plan.notify
            .channels
            .iter()
            .map(|c| (self.defaults.channels.0)(c))
            .collect()
    }

    /// Starts delivering `plan`'s notices on `notifiers` (one worker per channel).
    fn start_channels(&self, plan: &Plan, notifiers: Vec<Arc<dyn Notifier>>, now: Millis) {
        let clock: Arc<dyn Clock> = Arc::new(ScaledClock::resumed(self.defaults.time_scale, now));
        let workers: Vec<(String, ChannelWorker)> = notifiers
            .into_iter()
            .map(|notifier| {
                let w = ChannelWorker::start(ChannelParts {
                    store: self.store.clone(),
                    rollout: plan.name.clone(),
                    notifier,
                    clock: clock.clone(),
                    give_up_after: plan.notify.give_up_after,
                    wake: self.rounds.subscribe(),
                });
                (plan.name.clone(), w)
            })
            .collect();
        if let Ok(mut c) = self.channels.lock() {
            c.extend(workers);
        }
    }

    /// The live log, which also writes a report when one is asked for (with a report
    /// directory), once the step that asked is durable, then says where it is.
    fn report_writing_log(&self) -> Log {
        let Some(dir) = self.defaults.reports_dir.clone() else {
            return self.log.clone();
        };
        let (log, store, scale) = (
            self.log.clone(),
            self.store.clone(),
            self.defaults.time_scale,
        );
        let tasks = self.report_tasks.clone();
        Arc::new(
            move |name: &str, entry: &crate::log::LogEntry<'_>, origin: Millis| {
                log(name, entry, origin);
                let crate::log::LogEntry::Report(kind) = *entry else {
                    return;
                };
                let k = match kind {
                    v1::ReportKind::IncidentReview => ramp_report::Kind::Incident,
                    v1::ReportKind::Final => ramp_report::Kind::Final,
                };
                let (log, store, dir, name) =
                    (log.clone(), store.clone(), dir.clone(), name.to_string());
                let task = tokio::spawn(async move {
                    let now = ScaledClock::new(scale).now();
                    match crate::reports::write(store.as_ref(), &dir, &name, k, now).await {
                        Ok(paths) => log(
                            &name,
                            &crate::log::LogEntry::ReportWritten(kind, &paths),
                            origin,
                        ),
                        Err(e) => {
                            let msg = format!("the {} report could not be written: {e}", k.title());
                            tracing::error!(rollout = %name, "{msg}");
                        }
                    }
                });
                if let Ok(mut t) = tasks.lock() {
                    t.retain(|t| !t.is_finished());
                    t.push(task);
                }
            },
        )
    }

    /// How each channel of `rollout` is doing, for status and `/metrics`.
    fn channel_views(&self, rollout: &str) -> Vec<v1::ChannelView> {
        use std::sync::atomic::Ordering::Relaxed;
        self.channel_stats(rollout)
            .into_iter()
            .map(|(channel, s)| v1::ChannelView {
                channel,
                delivered: s.delivered.load(Relaxed),
                failed: s.failed.load(Relaxed),
                retries: s.retries.load(Relaxed),
                pending: s.pending.load(Relaxed),
                error: s.error(),
            })
            .collect()
    }

    /// What each channel of `rollout` has done, for status and `/metrics`.
    pub fn channel_stats(&self, rollout: &str) -> Vec<(String, Arc<ChannelStats>)> {
        self.channels
            .lock()
            .map(|c| {
                c.iter()
                    .filter(|(r, _)| r == rollout)
                    .map(|(_, w)| (w.channel.clone(), w.stats.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn insert(&self, name: String, entry: Entry) {
        if let Ok(mut r) = self.rollouts.write() {
            r.insert(name, entry);
        }
    }

    fn contains(&self, name: &str) -> bool {
        self.rollouts
            .read()
            .map(|r| r.contains_key(name))
            .unwrap_or(false)
    }

    /// Resumes every rollout the store knows: same phase, same elapsed time, same share, same
    /// evidence, and the same proxy address when it is still free. A rollout that cannot be
    /// resumed (unreadable journal, stored plan no longer valid or not fitting its state,
    /// address unavailable) is reported in its place, shows as `unavailable`, and does not keep
    /// the others from serving. Retired rollouts are listed, not resumed. Fails only when the
    /// store itself cannot be read.
    pub async fn resume_all(&self) -> Result<Vec<Resumed>, StoreError> {
        let stored = self.store.load_all().await?;
        // Rollouts that remember their address claim it before any other takes the default.
        let (mut first, mut rest) = (Vec::new(), Vec::new());
        for r in stored {
            match r {
                Ok(r) if r.listen.is_some() => first.push(Ok(r)),
                other => rest.push(other),
            }
        }
        let mut report = Vec::new();
        for r in first.into_iter().chain(rest) {
            let r = match r {
                Ok(r) => r,
                Err(e) => {
                    let name = match &e {
                        StoreError::Corrupt { rollout, .. } => rollout.clone(),
                        _ => "?".into(),
                    };
                    let why = format!("its journal cannot be read: {e}");
                    self.insert(
                        name.clone(),
                        Entry::Unavailable(Box::new(status::unavailable(
                            &name,
                            "",
                            &why,
                            unix_now(),
                        ))),
                    );
                    report.push(Resumed {
                        name,
                        outcome: Err(why),
                    });
                    continue;
                }
            };
            let name = r.name.clone();
            let outcome = self.resume(r).await;
            if let Err(why) = &outcome {
                self.insert(
                    name.clone(),
                    Entry::Unavailable(Box::new(status::unavailable(&name, "", why, unix_now()))),
                );
            }
            report.push(Resumed { name, outcome });
        }
        Ok(report)
    }

    async fn resume(&self, r: StoredRollout) -> Result<ResumedAt, String> {
        let plan = parse_plan(&r.plan_toml, &format!("stored plan of {}", r.name))
            .map_err(|e| format!("its stored plan no longer parses: {e}"))?;
        r.state
            .check(&plan)
            .map_err(|e| format!("its journal does not fit its plan: {e}"))?;
        let remembered = r.listen.as_deref().and_then(|l| l.parse().ok());
        // Notices still pending go out, also for a rollout retired since they were written.
        let notifiers = plan
            .notify
            .channels
            .iter()
            .map(|c| {
                (self.defaults.channels.0)(c).unwrap_or_else(|why| {
                    tracing::error!(rollout = %r.name, channel = %c.name, "channel not available; its notices wait: {why}");
                    Arc::new(Broken {
                        name: c.name.clone(),
                        why,
                    }) as Arc<dyn Notifier>
                })
            })
            .collect();
        self.start_channels(&plan, notifiers, r.state.now);
        if let Some(at) = r.retired_at {
            let plan = Arc::new(plan);
            let listen = r.listen.clone().unwrap_or_default();
            let view = status::View {
                name: &r.name,
                listen: &listen,
                plan: &plan,
                state: &r.state,
                now: at,
                origin: r.state.started_at.unwrap_or(at),
                rates: (0.0, 0.0),
                health: (
                    ramp_core::evidence::BackendHealth::Unknown,
                    ramp_core::evidence::BackendHealth::Unknown,
                ),
                retired: true,
                journal_error: None,
            };
            let status = status::publish(&view).status;
            self.insert(r.name.clone(), Entry::Retired(Box::new(status)));
            return Ok(ResumedAt {
                listen: None,
                moved_from: None,
            });
        }
        let listen = self.listen_for(&plan, None, remembered);
        // A share lowered after the journal's state and never journaled (a pin) is the one the
        // proxy starts at: after a crash, never more canary traffic than last applied.
        let share = r
            .pin
            .as_ref()
            .map_or(r.state.share, |p| p.share.min(r.state.share));
        let proxy = self
            .proxy(&plan, listen, share)
            .await
            .map_err(|e| e.to_string())?;
        let bound = proxy.local_addr;
        if remembered != Some(bound) {
            // Only a hint for the next start: the rollout runs whether or not it is written.
            let _ = self.store.set_listen(&r.name, &bound.to_string()).await;
        }
        self.run(
            Arc::new(plan),
            r.state,
            r.last_seq,
            Vec::new(),
            (true, r.pin),
            proxy,
        );
        Ok(ResumedAt {
            listen: Some(bound),
            moved_from: remembered.filter(|&a| a != bound),
        })
    }

    /// The address a rollout's proxy binds. An address given explicitly (argument, then plan)
    /// wins. Otherwise a resumed rollout serves where it served before, if that address is
    /// still free: its clients know it. Otherwise the server's default address if no other
    /// rollout has it yet, else a free port on the same interface (shown in its status), so
    /// several such rollouts can run, and resume, side by side.
    fn listen_for(
        &self,
        plan: &Plan,
        listen: Option<SocketAddr>,
        remembered: Option<SocketAddr>,
    ) -> SocketAddr {
        let default = self.defaults.default_listen;
        let take_default = || {
            if self.default_taken.swap(true, Ordering::SeqCst) {
                SocketAddr::new(default.ip(), 0)
            } else {
                default
            }
        };
        let remembered = remembered.filter(|r| r.port() != 0);
        match (listen.or(plan.listen), remembered) {
            (Some(a), _) if a.port() != 0 => {
                if a == default {
                    self.default_taken.store(true, Ordering::SeqCst);
                }
                a
            }
            // An explicit port 0 means "any free port": a resumed rollout keeps the one it had.
            (Some(a), Some(r)) if r.ip() == a.ip() && bindable(r) => r,
            (Some(a), _) => a,
            (None, Some(r)) if bindable(r) => {
                if r == default {
                    self.default_taken.store(true, Ordering::SeqCst);
                }
                r
            }
            // Its old address is taken now: a free port beside it, never the default (which
            // may be the very address that is taken).
            (None, Some(r)) if bindable(SocketAddr::new(r.ip(), 0)) => SocketAddr::new(r.ip(), 0),
            (None, Some(_)) => take_default(),
            (None, None) => take_default(),
        }
    }

    async fn proxy(
        &self,
        plan: &Plan,
        listen: SocketAddr,
        share: ShareBp,
    ) -> Result<ProxyHandle, ramp_proxy::ProxyError> {
        let mut config = ProxyConfig::for_plan(listen, plan)?;
        config.limits = self.defaults.limits.clone();
        config.variant_header = self.defaults.variant_header;
        config.certificates = self.defaults.certificates.clone();
        config.access_log = self.defaults.access_log.then(|| {
            match &self.defaults.access_log_file {
                Some(file) => AccessLog::new(file.clone()),
                None => AccessLog::new(std::io::stderr()),
            }
            .counting_drops_in(self.defaults.access_log_dropped.clone())
        });
        ramp_proxy::start(config, share, &self.workers).await
    }

    fn run(
        &self,
        plan: Arc<Plan>,
        state: State,
        seq: u64,
        pending: Vec<Effect>,
        (restarted, pin): (bool, Option<ramp_store::SharePin>),
        proxy: ProxyHandle,
    ) {
        let name = plan.name.clone();
        let clock = ScaledClock::resumed(self.defaults.time_scale, state.now);
        let handle = controller::spawn(Parts {
            name: name.clone(),
            plan,
            state,
            seq,
            pending,
            restarted,
            pin,
            listen: proxy.local_addr.to_string(),
            store: self.store.clone(),
            evidence: ProxyEvidence::new(proxy.recorder.clone(), proxy.health.clone()),
            split: ProxySplit::new(proxy.routing.clone()),
            clock,
            outbox: self.outbox.clone(),
            log: self.report_writing_log(),
            window_retention: self.defaults.window_retention,
            refresh: Some(std::time::Duration::from_secs(1)),
            batch: Some(TRIGGER_BATCH),
        });
        self.insert(
            name,
            Entry::Live(Live {
                inbox: handle.inbox,
                published: handle.published,
                task: handle.task,
                proxy,
            }),
        );
    }

    /// Creates, journals and starts a new rollout, all or nothing: the plan is validated, the
    /// proxy's address bound, and the rollout written together with its start, before anything
    /// runs; a refusal at any point leaves no row and no listener. `listen` overrides the
    /// plan's address.
    pub async fn start_new(
        &self,
        plan_toml: &str,
        file: &str,
        listen: Option<SocketAddr>,
    ) -> Result<v1::RolloutStatus, ControlError> {
        self.start_checked(plan_toml, file, listen, None).await
    }

    /// [`Registry::start_new`], first checking the plan against `allow` (a rollout created
    /// over the API).
    async fn start_checked(
        &self,
        plan_toml: &str,
        file: &str,
        listen: Option<SocketAddr>,
        allow: Option<&crate::allow::Allow>,
    ) -> Result<v1::RolloutStatus, ControlError> {
        let plan = parse_plan(plan_toml, file).map_err(ControlError::InvalidPlan)?;
        if plan.upstreams.is_none() {
            return Err(ControlError::Invalid(
                "the plan has no [upstreams] table: a served rollout needs `stable` and `canary` URLs"
                    .into(),
            ));
        }
        if self.contains(&plan.name) {
            return Err(ControlError::AlreadyExists(plan.name));
        }
        let notifiers = self.build_channels(&plan).map_err(ControlError::Invalid)?;
        let had_default = self.default_taken.load(Ordering::SeqCst);
        let addr = self.listen_for(&plan, listen, None);
        let release = || {
            if !had_default && addr == self.defaults.default_listen {
                self.default_taken.store(false, Ordering::SeqCst);
            }
        };
        if let Some(Err(why)) = allow.map(|a| a.check(&plan, addr)) {
            release();
            return Err(ControlError::NotAllowed(why));
        }
        let proxy = match self.proxy(&plan, addr, ShareBp::ZERO).await {
            Ok(p) => p,
            Err(e) => {
                release();
                return Err(match e {
                    ramp_proxy::ProxyError::Bind { .. } => ControlError::Conflict(e.to_string()),
                    other => ControlError::Invalid(other.to_string()),
                });
            }
        };
        let now = ScaledClock::new(self.defaults.time_scale).now();
        let (state, fx) = step(&plan, State::new(&plan), Input::Start, now);
        let events = fx
            .iter()
            .filter_map(|e| match e {
                Effect::Journal(ev) => Some(v1::Event::from(ev)),
                _ => None,
            })
            .collect();
        let notices: Vec<v1::Notice> = fx
            .iter()
            .filter_map(|e| match e {
                Effect::Notify(n) => Some(v1::Notice::at(&plan, &state, n)),
                _ => None,
            })
            .collect();
        let created = self
            .store
            .create(NewRollout {
                name: plan.name.clone(),
                plan_toml: plan_toml.to_string(),
                created_at: unix_now(),
                listen: Some(proxy.local_addr.to_string()),
                step: Append {
                    events,
                    state: state.clone(),
                    window: None,
                    notices: notices.clone(),
                },
            })
            .await;
        let seq = match created {
            Ok(seq) => seq,
            Err(e) => {
                proxy.shutdown().await;
                release();
                return Err(match e {
                    StoreError::AlreadyExists(n) => ControlError::AlreadyExists(n),
                    other => ControlError::Unavailable(other.to_string()),
                });
            }
        };
        if !notices.is_empty() {
            self.outbox.notify_one();
        }
        self.start_channels(&plan, notifiers, state.now);
        let name = plan.name.clone();
        self.run(Arc::new(plan), state, seq, fx, (false, None), proxy);
        self.status(&name)
            .ok_or_else(|| ControlError::Unavailable("the rollout stopped at once".into()))
    }

    /// The stored plan of a rollout, if the store knows it.
    pub async fn stored_plan(&self, name: &str) -> Option<String> {
        self.store.load(name).await.ok().map(|r| r.plan_toml)
    }

    fn inbox(&self, name: &str) -> Result<tokio::sync::mpsc::Sender<Msg>, ControlError> {
        let r = self
            .rollouts
            .read()
            .map_err(|_| ControlError::Unavailable("the registry is poisoned".into()))?;
        match r.get(name) {
            Some(Entry::Live(l)) => Ok(l.inbox.clone()),
            Some(Entry::Retired(_)) => Err(ControlError::Conflict(format!(
                "rollout {name:?} is retired"
            ))),
            Some(Entry::Unavailable(s)) => Err(ControlError::Unavailable(format!(
                "rollout {name:?} is not running: {}",
                s.reason.clone().unwrap_or_default()
            ))),
            None => Err(ControlError::NotFound(name.to_string())),
        }
    }

    async fn ask<T>(
        &self,
        name: &str,
        msg: impl FnOnce(oneshot::Sender<Result<T, ControlError>>) -> Msg,
    ) -> Result<T, ControlError> {
        let inbox = self.inbox(name)?;
        let (tx, rx) = oneshot::channel();
        let stopped = || ControlError::Unavailable("the rollout's controller has stopped".into());
        inbox.send(msg(tx)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Stops every rollout's controller and proxy (the journal keeps their state).
    pub async fn shutdown(&self) {
        let live: Vec<(String, Live)> = match self.rollouts.write() {
            Ok(mut r) => {
                let names: Vec<String> = r
                    .iter()
                    .filter(|(_, e)| matches!(e, Entry::Live(_)))
                    .map(|(n, _)| n.clone())
                    .collect();
                names
                    .into_iter()
                    .filter_map(|n| match r.remove(&n) {
                        Some(Entry::Live(l)) => Some((n, l)),
                        _ => None,
                    })
                    .collect()
            }
            Err(_) => Vec::new(),
        };
        for (_, l) in &live {
            let _ = l.inbox.send(Msg::Stop).await;
        }
        for (name, l) in live {
            let last = l.published.borrow().status.clone();
            let _ = l.task.await;
            l.proxy.shutdown().await;
            self.insert(name, Entry::Retired(Box::new(last)));
        }
        let writing = self
            .report_tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for t in writing {
            let _ = t.await;
        }
        // The controllers' last notices are written: the channels get a moment to send them.
        self.outbox.notify_one();
        self.rounds.send_modify(|r| *r += 1);
        let workers = self
            .channels
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default();
        let drains = workers
            .into_iter()
            .map(|(_, w)| tokio::spawn(w.shutdown(CHANNEL_DRAIN)));
        for d in drains {
            let _ = d.await;
        }
    }

    /// Whether every rollout has settled (completed, rolled back or holding).
    pub fn all_settled(&self) -> bool {
        let list = self.list();
        !list.is_empty() && list.iter().all(|s| s.ended || s.retired)
    }
}

impl Rollouts for Registry {
    fn list(&self) -> Vec<v1::RolloutStatus> {
        let mut all: Vec<v1::RolloutStatus> = self
            .rollouts
            .read()
            .map(|r| {
                r.values()
                    .map(|e| match e {
                        Entry::Live(l) => l.published.borrow().status.clone(),
                        Entry::Retired(s) | Entry::Unavailable(s) => (**s).clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        for s in &mut all {
            s.channels = self.channel_views(&s.name);
        }
        all
    }

    fn status(&self, name: &str) -> Option<v1::RolloutStatus> {
        let mut status = {
            let r = self.rollouts.read().ok()?;
            match r.get(name)? {
                Entry::Live(l) => l.published.borrow().status.clone(),
                Entry::Retired(s) | Entry::Unavailable(s) => (**s).clone(),
            }
        };
        status.channels = self.channel_views(name);
        Some(status)
    }

    async fn report(
        &self,
        name: &str,
        kind: v1::ReportDoc,
        format: v1::ReportFormat,
    ) -> Result<String, ControlError> {
        use crate::reports::{self, ReportError};
        let now = self
            .status(name)
            .map(|s| s.now)
            .ok_or_else(|| ControlError::NotFound(name.to_string()))?;
        reports::render(
            self.store.as_ref(),
            name,
            reports::kind(kind),
            reports::format(format),
            now,
        )
        .await
        .map_err(|e| match e {
            ReportError::NotFound(n) => ControlError::NotFound(n),
            ReportError::NotYet(why) => ControlError::Conflict(why),
            other => ControlError::Unavailable(other.to_string()),
        })
    }

    async fn notices(
        &self,
        name: &str,
        after: u64,
        limit: usize,
    ) -> Result<v1::NoticePage, ControlError> {
        let entries = self
            .store
            .notices(name, after, limit)
            .await
            .map_err(|e| match e {
                StoreError::NotFound(n) => ControlError::NotFound(n),
                other => ControlError::Unavailable(other.to_string()),
            })?;
        let next = entries.last().map_or(after, |e| e.id);
        let notices = entries
            .into_iter()
            .map(|e| v1::NoticeRecord {
                id: e.id,
                seq: e.seq,
                at: e.at,
                logged_at: e.delivered_at,
                deliveries: e
                    .deliveries
                    .into_iter()
                    .map(|d| v1::DeliveryView {
                        channel: d.channel,
                        state: d.state.as_str().to_string(),
                        attempts: d.attempts,
                        last_attempt_at: d.last_attempt_at,
                        error: d.error,
                    })
                    .collect(),
                notice: e.notice,
            })
            .collect();
        Ok(v1::NoticePage {
            rollout: name.to_string(),
            notices,
            next,
        })
    }

    async fn events(
        &self,
        name: &str,
        after: u64,
        limit: usize,
    ) -> Result<v1::EventPage, ControlError> {
        let page = self
            .store
            .events(name, after, limit.saturating_add(1))
            .await
            .map_err(|e| match e {
                StoreError::NotFound(n) => ControlError::NotFound(n),
                other => ControlError::Unavailable(other.to_string()),
            })?;
        let more = page.len() > limit;
        let events: Vec<v1::JournalEntry> = page
            .into_iter()
            .take(limit)
            .map(|(seq, event)| v1::JournalEntry { seq, event })
            .collect();
        let next = if more {
            events.last().map(|e| e.seq)
        } else {
            None
        };
        Ok(v1::EventPage { events, next })
    }

    async fn command(
        &self,
        name: &str,
        command: Command,
    ) -> Result<v1::RolloutStatus, ControlError> {
        self.ask(name, |reply| Msg::Command { command, reply })
            .await
    }

    async fn signal(
        &self,
        name: &str,
        signal: Signal,
        key: Option<String>,
        from: String,
    ) -> Result<Recorded, ControlError> {
        self.ask(name, |reply| Msg::Signal {
            signal,
            key,
            from,
            reply,
        })
        .await
    }

    async fn create(&self, plan_toml: &str) -> Result<v1::RolloutStatus, ControlError> {
        self.start_checked(plan_toml, "request body", None, Some(&self.defaults.allow))
            .await
    }

    async fn retire(&self, name: &str) -> Result<v1::RolloutStatus, ControlError> {
        let status = self
            .status(name)
            .ok_or_else(|| ControlError::NotFound(name.into()))?;
        if status.retired {
            return Ok(status);
        }
        if !matches!(
            status.status,
            v1::Status::Completed | v1::Status::RolledBack
        ) {
            return Err(ControlError::Conflict(format!(
                "rollout {name:?} has not ended ({}): roll it back or let it complete first",
                status.status.name()
            )));
        }
        // Durable first: a retired rollout must never come back after a restart.
        self.store
            .retire(name, unix_now())
            .await
            .map_err(|e| ControlError::Unavailable(e.to_string()))?;
        let live = match self.rollouts.write() {
            Ok(mut r) => match r.remove(name) {
                Some(Entry::Live(l)) => Some(l),
                Some(other) => {
                    r.insert(name.to_string(), other);
                    None
                }
                None => None,
            },
            Err(_) => None,
        };
        let mut last = status;
        if let Some(l) = live {
            let _ = l.inbox.send(Msg::Stop).await;
            let _ = l.task.await;
            last = l.published.borrow().status.clone();
            l.proxy.shutdown().await;
        }
        last.retired = true;
        self.insert(name.to_string(), Entry::Retired(Box::new(last.clone())));
        Ok(last)
    }

    fn journal(&self) -> ramp_api::JournalHealth {
        self.journal.health()
    }

    fn metrics(&self) -> Vec<RolloutMetrics> {
        self.rollouts
            .read()
            .map(|r| {
                r.iter()
                    .filter_map(|(name, e)| match e {
                        Entry::Live(l) if l.task.is_finished() => Some(unavailable(name)),
                        Entry::Live(l) => {
                            let mut m = l.published.borrow().metrics.clone();
                            m.detail.channels = self.channel_views(name);
                            Some(m)
                        }
                        Entry::Unavailable(_) => Some(unavailable(name)),
                        // Retired rollouts are gone from the fleet: no series at all.
                        Entry::Retired(_) => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn unavailable(name: &str) -> RolloutMetrics {
    RolloutMetrics {
        name: name.to_string(),
        status: v1::Status::Unavailable,
        phase: 0,
        share_bp: 0,
        stable: Default::default(),
        canary: Default::default(),
        detail: Default::default(),
    }
}
