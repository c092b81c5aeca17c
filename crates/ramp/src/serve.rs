//! `ramp serve`: the IO around `ramp_control::server::run` — the tokens file, the plan files,
//! the journal, the API socket, signals (Ctrl-C and SIGTERM drain alike) and what is printed.

use crate::config::{Invalid, Serve};
use crate::render;
use anyhow::Context;
use ramp_api::{ApiConfig, ApiLimits, Role, TokenSource, add_token};
use ramp_control::{Lifecycle, Listeners, Log, PlanFile, ServerConfig, ServerError, Services};
use ramp_notify::LogNotifier;
use ramp_store::SqliteStore;
use std::sync::Arc;

/// Resolves on Ctrl-C or SIGTERM: both drain the same way.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs `ramp serve`.
pub(crate) fn run(cfg: Serve, json_log: bool) -> anyhow::Result<Result<(), Invalid>> {
    let mut plans = Vec::new();
    for path in &cfg.plans {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                return Ok(Err(Invalid(format!(
                    "{}: error: cannot read: {e}",
                    path.display()
                ))));
            }
        };
        let p = match ramp_core::plan::parse_plan(&text, &path.display().to_string()) {
            Ok(p) => p,
            Err(e) => return Ok(Err(Invalid(e.to_string()))),
        };
        if p.upstreams.is_none() {
            return Ok(Err(Invalid(format!(
                "{}: error: ramp serve needs an [upstreams] table with `stable` and `canary` URLs",
                path.display()
            ))));
        }
        plans.push(PlanFile {
            path: path.display().to_string(),
            text,
        });
    }
    let mut tokens = match TokenSource::file(cfg.tokens.clone()) {
        Ok(t) => t,
        Err(e) => return Ok(Err(Invalid(e.to_string()))),
    };
    if tokens.current().is_empty() {
        let token = add_token(&cfg.tokens, "admin", Role::Admin)?;
        // A secret shown once to the person starting the server: with --log-format json it
        // goes to stderr, never into the structured stream that is shipped to log stores.
        let say = |l: &str| {
            if json_log {
                render::err_line(l)
            } else {
                render::line(l)
            }
        };
        say(
            "ramp serve: no API tokens were configured; created an admin token (shown once, keep it):",
        );
        say(&format!("  {token}"));
        say(&format!(
            "  (its hash is in {}; add more with `ramp token add NAME ROLE`)",
            cfg.tokens.display()
        ));
        tokens = match TokenSource::file(cfg.tokens.clone()) {
            Ok(t) => t,
            Err(e) => return Ok(Err(Invalid(e.to_string()))),
        };
    }
    let store = Arc::new(
        SqliteStore::open(&cfg.db)
            .with_context(|| format!("opening the journal {}", cfg.db.display()))?,
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let db = cfg.db.display().to_string();
    let time_scale = cfg.defaults.time_scale;
    rt.block_on(async move {
        let api = tokio::net::TcpListener::bind(cfg.api)
            .await
            .with_context(|| format!("binding the API on {}", cfg.api))?;
        let log: Log = Arc::new(move |rollout: &str, entry, origin| {
            render::log_entry(rollout, entry, origin, json_log)
        });
        let notices = log.clone();
        let notifier = LogNotifier::new(move |entry| {
            notices(&entry.rollout, &ramp_control::LogEntry::Notice(entry), 0)
        });
        let config = ServerConfig {
            defaults: cfg.defaults,
            api: ApiConfig {
                tokens,
                open_metrics: cfg.open_metrics,
                request_log: cfg.api_log,
                limits: ApiLimits {
                    max_connections: cfg.api_max_connections,
                    ..Default::default()
                },
                ..Default::default()
            },
            plans,
            listen: cfg.listen,
            exit_on_end: cfg.exit_on_end,
            workers: cfg.workers,
        };
        let services = Services {
            store,
            notifier: Arc::new(notifier),
            log,
        };
        let report = |event: Lifecycle<'_>| {
            if json_log {
                render::lifecycle_json(&event);
                return;
            }
            match event {
            Lifecycle::Resumed(r) => match &r.outcome {
                Ok(at) => {
                    render::line(&format!("ramp serve: resumed rollout {} from {db}", r.name));
                    if let (Some(before), Some(now)) = (at.moved_from, at.listen) {
                        tracing::warn!(
                            rollout = %r.name,
                            "rollout {} served on {before} before, which is taken now; it serves on {now} instead",
                            r.name
                        );
                    }
                }
                Err(e) => tracing::error!(
                    rollout = %r.name,
                    "rollout {} could not be resumed and is NOT serving: {e}",
                    r.name
                ),
            },
            Lifecycle::Serving { api, rollouts } => {
                for r in rollouts.iter().filter(|r| !r.retired && r.status != ramp_wire::v1::Status::Unavailable) {
                    render::line(&format!(
                        "ramp serve: rollout {} proxy listening on http://{} (time scale ×{time_scale})",
                        r.name, r.listen
                    ));
                }
                render::line(&format!("ramp serve: API on http://{api}"));
            }
            Lifecycle::Stopped(rollouts) => {
                for r in rollouts {
                    render::line(&format!(
                        "ramp serve: stopped; rollout {} is {}",
                        r.name,
                        r.status.name()
                    ));
                }
            }
            }
        };
        let served = ramp_control::server::run(
            config,
            services,
            Listeners { api },
            shutdown_signal(),
            report,
        )
        .await;
        match served {
            Ok(_) => Ok(Ok(())),
            Err(e @ ServerError::PlanConflict { .. }) => Ok(Err(Invalid(e.to_string()))),
            Err(e) => Err(anyhow::anyhow!("{e}")),
        }
    })
}
