//! `ramp serve` as a function: `run(config, services, listeners, shutdown)`, in the style of
//! tokio's mini-redis `server::run`. The caller does the IO that needs a terminal or a file
//! (opening the store, binding the API, printing); this resumes every stored rollout, starts
//! the configured plans, serves the API, and on `shutdown` stops the API, drains the proxies,
//! writes what is unsaved and delivers what is still in the outbox.

use crate::log::Log;
use crate::outbox::Outbox;
use crate::registry::{Defaults, Registry, Resumed};
use ramp_api::{ApiConfig, ControlError, Rollouts};
use ramp_notify::Notifier;
use ramp_proxy::Workers;
use ramp_store::{Store, StoreError};
use ramp_wire::v1;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// A plan file to start.
#[derive(Clone, Debug)]
pub struct PlanFile {
    /// Where it came from (for messages).
    pub path: String,
    /// Its text.
    pub text: String,
}

/// What the server runs (validated; building it did no IO).
#[derive(Debug)]
pub struct ServerConfig {
    /// Settings every rollout shares.
    pub defaults: Defaults,
    /// The API.
    pub api: ApiConfig,
    /// Plans to start (rollouts already in the journal resume by themselves).
    pub plans: Vec<PlanFile>,
    /// The proxy address of a single plan, overriding its `[proxy] listen`.
    pub listen: Option<SocketAddr>,
    /// Stop once every rollout has settled.
    pub exit_on_end: bool,
    /// Proxy worker threads (0: one per core).
    pub workers: usize,
}

/// What the server is given to work with.
pub struct Services {
    /// The journal.
    pub store: Arc<dyn Store>,
    /// How notices leave.
    pub notifier: Arc<dyn Notifier>,
    /// The live log.
    pub log: Log,
}

/// The sockets the server serves on.
pub struct Listeners {
    /// The control API.
    pub api: TcpListener,
}

/// What happens while the server starts and stops, for the caller to report.
#[derive(Debug)]
pub enum Lifecycle<'a> {
    /// A stored rollout was resumed (or could not be).
    Resumed(&'a Resumed),
    /// Every rollout is up; the API serves on this address.
    Serving {
        /// The API's address.
        api: SocketAddr,
        /// Every rollout's status.
        rollouts: &'a [v1::RolloutStatus],
    },
    /// Stopped; the rollouts' last status.
    Stopped(&'a [v1::RolloutStatus]),
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store could not be read.
    #[error("reading the journal: {0}")]
    Store(#[from] StoreError),
    /// A plan names a rollout the journal holds with another plan.
    #[error(
        "{path}: error: a rollout named {name:?} is already in the journal with a different plan; give the new one another name"
    )]
    PlanConflict {
        /// The plan file.
        path: String,
        /// The rollout.
        name: String,
    },
    /// A plan could not be started.
    #[error("starting {path}: {error}")]
    Start {
        /// The plan file.
        path: String,
        /// Why.
        error: ControlError,
    },
    /// The proxy workers could not be started.
    #[error(transparent)]
    Proxy(#[from] ramp_proxy::ProxyError),
}

/// Runs the server until `shutdown` resolves (or, with `exit_on_end`, every rollout settled).
pub async fn run(
    config: ServerConfig,
    services: Services,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
    mut report: impl FnMut(Lifecycle<'_>),
) -> Result<Arc<Registry>, ServerError> {
    let workers = Arc::new(Workers::new(config.workers)?);
    let wake = Arc::new(tokio::sync::Notify::new());
    let registry = Registry::new(
        services.store,
        workers,
        config.defaults,
        services.log,
        wake.clone(),
    );
    // Through the registry's store, so that the outbox's writes are watched too.
    let outbox = Outbox::start_waking(registry.store(), services.notifier, wake, registry.rounds());
    for r in registry.resume_all().await? {
        report(Lifecycle::Resumed(&r));
    }
    for plan in &config.plans {
        let name = ramp_core::plan::parse_plan(&plan.text, &plan.path)
            .map(|p| p.name)
            .map_err(|e| ServerError::Start {
                path: plan.path.clone(),
                error: ControlError::InvalidPlan(e),
            })?;
        match registry.stored_plan(&name).await {
            Some(stored) if stored == plan.text => {}
            Some(_) => {
                registry.shutdown().await;
                outbox.shutdown().await;
                return Err(ServerError::PlanConflict {
                    path: plan.path.clone(),
                    name,
                });
            }
            None => {
                if let Err(error) = registry
                    .start_new(&plan.text, &plan.path, config.listen)
                    .await
                {
                    registry.shutdown().await;
                    outbox.shutdown().await;
                    return Err(ServerError::Start {
                        path: plan.path.clone(),
                        error,
                    });
                }
            }
        }
    }
    let api_addr = listeners
        .api
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    report(Lifecycle::Serving {
        api: api_addr,
        rollouts: &registry.list(),
    });
    let (stop_api, api_stopped) = tokio::sync::watch::channel(false);
    let api = tokio::spawn(ramp_api::serve(
        listeners.api,
        registry.clone(),
        config.api,
        api_stopped,
    ));
    let exit_on_end = config.exit_on_end;
    let watcher = registry.clone();
    tokio::select! {
        _ = shutdown => {}
        _ = async move {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if exit_on_end && watcher.all_settled() {
                    break;
                }
            }
        } => {}
    }
    let _ = stop_api.send(true);
    registry.shutdown().await;
    let _ = api.await;
    outbox.shutdown().await;
    report(Lifecycle::Stopped(&registry.list()));
    Ok(registry)
}
