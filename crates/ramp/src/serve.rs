//! `ramp serve`: the IO around `ramp_control::server::run` — the tokens file, the plan files,
//! the journal, the API socket, signals (Ctrl-C and SIGTERM drain alike) and what is printed.

use crate::config::{Invalid, Serve};
use crate::render;
use anyhow::Context;
use ramp_api::ControlError;
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

/// How often certificate files are checked for changes.
const CERTIFICATE_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// Reloads TLS material whose files changed (checked every two seconds) and all of it on
/// SIGHUP; says what was reloaded and what failed (the old material stays in use then).
async fn reload_certificates(certificates: Arc<ramp_proxy::tls::Certificates>, json_log: bool) {
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(CERTIFICATE_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        let forced = match hup.as_mut() {
            Some(h) => tokio::select! {
                _ = h.recv() => true,
                _ = tick.tick() => false,
            },
            None => {
                tick.tick().await;
                false
            }
        };
        #[cfg(not(unix))]
        let forced = {
            tick.tick().await;
            false
        };
        let c = certificates.clone();
        let report = tokio::task::spawn_blocking(move || {
            if forced {
                c.reload_all()
            } else {
                c.reload_changed()
            }
        })
        .await
        .unwrap_or_default();
        let failed: Vec<String> = report.failed.iter().map(ToString::to_string).collect();
        render::tls_reloaded(report.reloaded, &failed, forced, json_log);
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
    let mut cfg = cfg;
    if let Some((path, max, keep)) = &cfg.access_log_file {
        match ramp_proxy::LogFile::open(path, *max, *keep) {
            Ok(f) => cfg.defaults.access_log_file = Some(f),
            Err(e) => {
                return Ok(Err(Invalid(format!(
                    "error: --access-log-file {}: {e}",
                    path.display()
                ))));
            }
        }
    }
    let access_log_dropped = cfg.defaults.access_log_dropped.clone();
    let certificates = cfg.defaults.certificates.clone();
    let api_scheme = if cfg.api_tls.is_some() {
        "https"
    } else {
        "http"
    };
    let api_tls = match &cfg.api_tls {
        Some(files) => match ramp_proxy::tls::ServerTls::load(
            files.clone(),
            ramp_proxy::tls::Alpn::Http1,
            "api",
            &certificates,
        ) {
            Ok(t) => Some(t),
            Err(e) => return Ok(Err(Invalid(format!("error: --api-tls-cert: {e}")))),
        },
        None => None,
    };
    rt.block_on(async move {
        tokio::spawn(reload_certificates(certificates.clone(), json_log));
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
                tls: api_tls,
                certificates,
                access_log_dropped,
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
                        "ramp serve: rollout {} proxy listening on {}://{} (time scale ×{time_scale})",
                        r.name,
                        if r.tls { "https" } else { "http" },
                        r.listen
                    ));
                }
                render::line(&format!("ramp serve: API on {api_scheme}://{api}"));
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
            // A plan the server cannot take as written (a missing channel secret, no
            // upstreams): the user's to fix, exit 2.
            Err(
                e @ ServerError::Start {
                    error: ControlError::Invalid(_) | ControlError::InvalidPlan(_),
                    ..
                },
            ) => Ok(Err(Invalid(format!("error: {e}")))),
            Err(e) => Err(anyhow::anyhow!("{e}")),
        }
    })
}
