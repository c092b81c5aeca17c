//! `ramp demo`: the whole thing in a minute on a fresh machine.
//!
//! Two demo backends on 127.0.0.1 (stable healthy; canary healthy or degrading), a load
//! generator with thousands of virtual users, and `ramp serve` on the seed plan with a
//! compressed clock, so the three-phase rollout (or a rollback) plays out in about a minute.
//! Everything is real: real sockets, real proxying, real counters; only the clock is fast.

#![forbid(unsafe_code)]
// The demo is a terminal program: its live view and log lines are its output.
#![allow(clippy::print_stdout)]

pub mod backend;
pub mod load;

use ramp_control::{Defaults, Log, LogEntry, Registry};
use ramp_core::evidence::{Signal, VariantStats};
use ramp_core::report::{count, ms, pct};
use ramp_core::time::{Human, Millis};
use ramp_notify::LogNotifier;
use ramp_proxy::{Limits, Workers};
use ramp_store::{SqliteStore, Store};
use ramp_wire::text::{clock, event_lines};
use ramp_wire::v1::{self, BackendHealth, NotifyKind, RolloutStatus};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The seed plan, built into the binary so the demo needs no files.
pub const SEED_PLAN: &str = include_str!("../../../examples/payments-backend.toml");

/// What the canary does during the demo.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CanaryBehaviour {
    /// Healthy all the way: the rollout completes.
    Healthy,
    /// From `at` (a fraction of the planned duration) the canary fails `error_rate` of requests.
    FailsAt {
        /// Fraction of the plan's duration, e.g. 0.5 = day 2 of 3.
        at: f64,
        /// Share of requests that fail from then on.
        error_rate: f64,
    },
    /// From `at` the canary's p95 goes to `p95_ms` (a failed gate at the end of the phase).
    SlowsAt {
        /// Fraction of the plan's duration.
        at: f64,
        /// The new p95 in ms.
        p95_ms: f64,
    },
}

/// Demo settings.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// What the canary does.
    pub canary: CanaryBehaviour,
    /// Real seconds the plan's planned duration is compressed into.
    pub seconds: f64,
    /// Total requests per second from the load generator.
    pub rps: f64,
    /// Distinct virtual users.
    pub users: u32,
    /// Redraw a live view in place (a terminal) or print plain progress lines (logs, CI).
    pub live: bool,
    /// Where the final report and the incident review are written.
    pub reports: std::path::PathBuf,
    /// Notices also go to this webhook (signed when `RAMP_WEBHOOK_SECRET` is set).
    pub webhook: Option<String>,
    /// Notices also go by e-mail through this SMTP server (`host:port`, no TLS: a local relay).
    pub smtp: Option<String>,
    /// The e-mail's recipients.
    pub mail_to: Vec<String>,
}

/// How the demo ended.
#[derive(Debug)]
pub struct DemoOutcome {
    /// "completed", "rolled_back" or "held".
    pub outcome: &'static str,
    /// The rollout's last status.
    pub status: RolloutStatus,
    /// Canary outcomes from the moment the canary was made worse to the rollback (or the end).
    pub blast: Option<VariantStats>,
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A demo backend could not start.
    #[error("starting a demo backend: {0}")]
    Backend(#[from] std::io::Error),
    /// The built-in plan did not parse (a bug: it is tested).
    #[error("the built-in plan: {0}")]
    Plan(#[from] ramp_core::plan::PlanErrors),
    /// The in-memory journal could not be opened.
    #[error("the demo's journal: {0}")]
    Store(#[from] ramp_store::StoreError),
    /// The proxy workers could not start.
    #[error(transparent)]
    Proxy(#[from] ramp_proxy::ProxyError),
    /// The rollout could not be started.
    #[error("starting the demo rollout: {0}")]
    Start(#[from] ramp_api::ControlError),
    /// The proxy's address did not parse (a bug).
    #[error("the proxy's address: {0}")]
    Address(#[from] std::net::AddrParseError),
}

/// The seed plan with the demo backends as its upstreams, probed every half second.
fn plan_for_demo(
    stable: std::net::SocketAddr,
    canary: std::net::SocketAddr,
    opts: &DemoOptions,
) -> String {
    let mut plan = seed_plan_at(stable, canary);
    let mut channels = Vec::new();
    if let Some(url) = &opts.webhook {
        channels.push("webhook");
        plan.push_str(&format!(
            "\n[notify.channel.webhook]\nkind = \"webhook\"\nurl = {url:?}\n"
        ));
        if std::env::var_os("RAMP_WEBHOOK_SECRET").is_some() {
            plan.push_str("secret = { env = \"RAMP_WEBHOOK_SECRET\" }\n");
        }
    }
    if let Some(smtp) = &opts.smtp {
        channels.push("email");
        let to = if opts.mail_to.is_empty() {
            vec!["release-managers@example.com".to_string()]
        } else {
            opts.mail_to.clone()
        };
        plan.push_str(&format!(
            "\n[notify.channel.email]\nkind = \"email\"\nsmtp = \"smtp://{smtp}\"\ntls = \"none\"\nfrom = \"ramp demo <ramp-demo@example.com>\"\nto = {to:?}\n"
        ));
    }
    if !channels.is_empty() {
        plan.push_str(&format!(
            "\n[notify.group.release-managers]\nchannels = {channels:?}\nreceives = [\"critical\", \"security\", \"phase\", \"status\", \"daily\", \"final\", \"incident\"]\n"
        ));
    }
    plan
}

fn seed_plan_at(stable: std::net::SocketAddr, canary: std::net::SocketAddr) -> String {
    SEED_PLAN
        .replace(
            "stable = \"http://127.0.0.1:8081\"",
            &format!("stable = \"http://{stable}\""),
        )
        .replace(
            "canary = \"http://127.0.0.1:8082\"",
            &format!("canary = \"http://{canary}\""),
        )
        .replace("health_interval = \"5s\"", "health_interval = \"500ms\"")
}

/// A line buffer the log writes into and the view reads from.
type Lines = Arc<Mutex<Vec<String>>>;

fn push(lines: &Lines, line: String) {
    lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
}

/// Runs the demo to its end. Prints to stdout.
pub async fn run(opts: DemoOptions) -> Result<DemoOutcome, DemoError> {
    let stable_b = backend::Behaviour::new(0.0005, 30.0, 90.0);
    let canary_b = backend::Behaviour::new(0.0, 33.0, 100.0);
    let stable = backend::start("stable", stable_b.clone()).await?;
    let canary = backend::start("canary", canary_b.clone()).await?;
    let plan_toml = plan_for_demo(stable.addr, canary.addr, &opts);
    let plan = ramp_core::plan::parse_plan(&plan_toml, "examples/payments-backend.toml")?;
    let planned = plan.planned_duration();
    let time_scale = planned as f64 / (opts.seconds * 1000.0);

    let lines: Lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let log: Log = Arc::new(
        move |_rollout: &str, entry: &LogEntry<'_>, origin: Millis| match entry {
            LogEntry::Event(e) => {
                let at = clock(e.at.saturating_sub(origin));
                for (i, l) in event_lines(e, origin).into_iter().enumerate() {
                    push(
                        &sink,
                        if i == 0 {
                            format!("{at}  {l}")
                        } else {
                            format!("               {l}")
                        },
                    );
                }
            }
            LogEntry::Notice(_) | LogEntry::ReportWritten(..) => {}
            LogEntry::StoreError(e) => push(&sink, format!("           ! {e}")),
            LogEntry::Report(r) => push(
                &sink,
                format!(
                    "           ✎ report: {}",
                    match r {
                        v1::ReportKind::IncidentReview => "incident review",
                        v1::ReportKind::Final => "final",
                    }
                ),
            ),
        },
    );
    let sink = lines.clone();
    let notifier = LogNotifier::new(move |entry| {
        if entry.notice.kind == NotifyKind::Critical {
            push(
                &sink,
                format!(
                    "           ! critical notification sent: {}",
                    entry.notice.headline
                ),
            );
        }
    });
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory()?);
    let wake = Arc::new(tokio::sync::Notify::new());
    let registry = Registry::new(
        store.clone(),
        Arc::new(Workers::new(0)?),
        Defaults {
            time_scale,
            limits: Limits::default(),
            variant_header: true,
            default_listen: "127.0.0.1:0".parse().expect("a literal address"),
            ..Defaults::default()
        },
        log,
        wake.clone(),
    );
    let outbox = ramp_control::outbox::Outbox::start_waking(
        registry.store(),
        Arc::new(notifier),
        wake,
        registry.rounds(),
    );
    use ramp_api::Rollouts as _;
    let started = registry
        .start_new(&plan_toml, "examples/payments-backend.toml", None)
        .await?;
    let name = started.name.clone();
    let proxy_addr: std::net::SocketAddr = started.listen.parse()?;
    println!(
        "ramp demo: plan {} ({} phases, {} planned) compressed ×{:.0} into ~{:.0}s of real time",
        plan.name,
        plan.phases.len(),
        Human(planned),
        time_scale,
        opts.seconds
    );
    println!(
        "  proxy http://{}  stable http://{}  canary http://{}  load {} req/s from {} users",
        proxy_addr, stable.addr, canary.addr, opts.rps, opts.users
    );
    match opts.canary {
        CanaryBehaviour::Healthy => println!("  the canary stays healthy\n"),
        CanaryBehaviour::FailsAt { at, error_rate } => println!(
            "  the canary starts failing {} of requests at {} of the plan ({})\n",
            pct(error_rate),
            pct(at),
            Human((planned as f64 * at) as Millis)
        ),
        CanaryBehaviour::SlowsAt { at, p95_ms } => println!(
            "  the canary's p95 goes to {p95_ms}ms at {} of the plan ({})\n",
            pct(at),
            Human((planned as f64 * at) as Millis)
        ),
    }

    let load = load::start(load::LoadConfig {
        target: proxy_addr,
        requests_per_second: opts.rps,
        users: opts.users,
        concurrency: 512,
        seed: 7,
        path: "/api/payments".into(),
    });
    // The demo's pacing and redraws are measured on the real clock; no decision uses them.
    #[allow(clippy::disallowed_methods)]
    let begun = std::time::Instant::now();
    let deadline = Duration::from_secs_f64(opts.seconds * 3.0 + 30.0);
    let mut harm_at: Option<Millis> = None;
    let mut printed = 0usize;
    let mut last_plain = begun;
    let mut drawn_lines = 0usize;
    let mut feedback_due = 0.0f64;
    let mut rng_state = 0x2545_F491_4F6C_DD1Du64;
    let tick = Duration::from_millis(100);
    let stdout = std::io::stdout();
    let mut snap = started;
    loop {
        tokio::time::sleep(tick).await;
        if let Some(s) = registry.status(&name) {
            snap = s;
        }
        let virtual_elapsed = snap.now.saturating_sub(snap.origin);
        // Failure injection at the chosen point of the plan.
        let at = match opts.canary {
            CanaryBehaviour::FailsAt { at, .. } | CanaryBehaviour::SlowsAt { at, .. } => Some(at),
            CanaryBehaviour::Healthy => None,
        };
        if let Some(at) = at
            && harm_at.is_none()
            && virtual_elapsed as f64 >= planned as f64 * at
        {
            harm_at = Some(snap.now);
            match opts.canary {
                CanaryBehaviour::FailsAt { error_rate, .. } => canary_b.set_error_rate(error_rate),
                CanaryBehaviour::SlowsAt { p95_ms, .. } => {
                    canary_b.set_latency(p95_ms / 3.0, p95_ms)
                }
                CanaryBehaviour::Healthy => {}
            }
            push(
                &lines,
                format!(
                    "{}  ~ demo: the canary backend degrades now",
                    clock(virtual_elapsed)
                ),
            );
        }
        // User feedback from canary users: about 12 an hour of plan time, 97% positive.
        if snap.share > 0 && !snap.ended {
            feedback_due += 12.0 * (tick.as_secs_f64() * time_scale) / 3600.0;
            while feedback_due >= 1.0 {
                feedback_due -= 1.0;
                rng_state ^= rng_state << 13;
                rng_state ^= rng_state >> 7;
                rng_state ^= rng_state << 17;
                let good = rng_state % 100 < 97;
                let signal = Signal::Feedback {
                    score: if good { 0.9 } else { 0.3 },
                    note: String::new(),
                };
                let _ = registry
                    .signal(&name, signal, None, "demo users".into())
                    .await;
            }
        }
        let new_lines: Vec<String> = {
            let all = lines.lock().unwrap_or_else(|p| p.into_inner());
            all[printed..].to_vec()
        };
        printed += new_lines.len();
        let mut out = stdout.lock();
        if opts.live {
            let view = live_view(
                &plan.name,
                plan.phases.len(),
                &snap,
                time_scale,
                &lines.lock().unwrap_or_else(|p| p.into_inner()),
            );
            if drawn_lines > 0 {
                let _ = write!(out, "\x1b[{drawn_lines}A\x1b[J");
            }
            drawn_lines = view.lines().count();
            let _ = write!(out, "{view}");
        } else {
            for l in &new_lines {
                let _ = writeln!(out, "{l}");
            }
            if last_plain.elapsed() >= Duration::from_secs(5) {
                #[allow(clippy::disallowed_methods)]
                let now = std::time::Instant::now();
                last_plain = now;
                let _ = writeln!(out, "{}", status_line(&snap, time_scale));
            }
        }
        let _ = out.flush();
        if snap.ended || begun.elapsed() > deadline {
            break;
        }
    }
    registry.shutdown().await;
    outbox.shutdown().await;
    if let Some(s) = registry.status(&name) {
        snap = s;
    }
    let sent = load.stats.sent();
    load.stop().await;
    stable.shutdown().await;
    canary.shutdown().await;
    if !opts.live {
        let all = lines.lock().unwrap_or_else(|p| p.into_inner());
        for l in &all[printed..] {
            println!("{l}");
        }
    }
    let outcome = match snap.status {
        v1::Status::Completed => "completed",
        v1::Status::RolledBack => "rolled_back",
        _ => "held",
    };
    println!();
    let ended = snap.ended_at.unwrap_or(snap.now);
    println!(
        "outcome: {} in phase {} after {} of plan time ({:.1}s real); {} requests sent through the proxy",
        outcome.replace('_', " "),
        snap.phase_name,
        Human(ended.saturating_sub(snap.started_at.unwrap_or(snap.origin))),
        begun.elapsed().as_secs_f64(),
        count(sent)
    );
    if let Some(r) = &snap.reason {
        println!("reason: {r}");
    }
    // The blast radius, from the journal's windows: every canary request from the moment the
    // canary was made worse to the rollback (or the end).
    let blast = match harm_at {
        Some(h) => {
            let mut b = VariantStats::default();
            let mut after = h;
            loop {
                let page = store.windows(&name, after, 1_000).await.unwrap_or_default();
                let Some(&(last, _)) = page.last() else { break };
                for (at, w) in &page {
                    if snap
                        .ended_at
                        .is_none_or(|end| *at <= end + plan.analysis.interval)
                    {
                        b.merge(&w.canary);
                    }
                }
                after = last;
            }
            println!(
                "blast radius (from the canary's degradation at {} to {}): {} canary requests, {} failed, ≈{} distinct users",
                clock(h.saturating_sub(snap.started_at.unwrap_or(snap.origin))).trim(),
                if outcome == "rolled_back" {
                    "the rollback"
                } else {
                    "the end"
                },
                count(b.requests),
                count(b.errors),
                count(b.users.estimate())
            );
            Some(b)
        }
        None => {
            println!("blast radius: none (the canary was never made worse)");
            None
        }
    };
    // A rollout that holds has not ended: its report is a status report, not a final one.
    let kinds = match outcome {
        "rolled_back" => vec![ramp_report::Kind::Incident, ramp_report::Kind::Final],
        "completed" => vec![ramp_report::Kind::Final],
        _ => vec![ramp_report::Kind::Status],
    };
    for k in kinds {
        match ramp_control::reports::write(store.as_ref(), &opts.reports, &name, k, snap.now).await
        {
            Ok(paths) => println!(
                "{}: {}",
                k.title(),
                paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Err(e) => println!("{}: not written: {e}", k.title()),
        }
    }
    if let Ok(counts) = store.delivery_counts(&name).await {
        for (channel, c) in counts {
            println!(
                "notices on {channel}: {} delivered, {} failed, {} pending (ramp notices shows why)",
                c.delivered, c.failed, c.pending
            );
        }
    }
    Ok(DemoOutcome {
        outcome,
        status: snap,
        blast,
    })
}

fn health_word(h: Option<BackendHealth>) -> &'static str {
    match h {
        Some(BackendHealth::Operational) => "operational",
        Some(BackendHealth::Degraded) => "degraded",
        Some(BackendHealth::Down) => "down",
        Some(BackendHealth::Unknown) => "unknown",
        None => "-",
    }
}

/// One line for logs.
fn status_line(s: &RolloutStatus, scale: f64) -> String {
    format!(
        "{}  · {} phase {} at {} for {}{}; canary {} req/s, errors {}, p95 {}; stable {} req/s, errors {}; health {}",
        clock(s.now.saturating_sub(s.started_at.unwrap_or(s.origin))),
        s.status.name(),
        s.phase_name,
        share(s.share),
        Human(s.phase_elapsed),
        if s.extended { " (extended)" } else { "" },
        (s.canary.rps * 1.0).round(),
        pct(s.canary.error_rate),
        s.canary.p95_ms.map(ms).unwrap_or("-".into()),
        (s.stable.rps).round(),
        pct(s.stable.error_rate),
        health_name(s.health)
    ) + &format!(" (×{scale:.0})")
}

/// The live terminal view.
fn live_view(plan: &str, phases: usize, s: &RolloutStatus, scale: f64, log: &[String]) -> String {
    let mut out = String::new();
    let elapsed = s.now.saturating_sub(s.started_at.unwrap_or(s.origin));
    out += &format!(
        "ramp demo — {}   plan time {} (×{:.0})   status {}   health {}\n",
        plan,
        Human(elapsed),
        scale,
        s.status.name(),
        health_name(s.health)
    );
    let frac = if s.phase_duration == 0 {
        0.0
    } else {
        (s.phase_elapsed as f64 / s.phase_duration as f64).min(1.0)
    };
    let width = 30;
    let filled = (frac * width as f64).round() as usize;
    out += &format!(
        "phase {}/{} {:<9} [{}{}] {:>3.0}% of {}{}   canary share {}\n\n",
        s.phase + 1,
        phases,
        s.phase_name,
        "█".repeat(filled),
        "░".repeat(width - filled),
        frac * 100.0,
        Human(s.phase_duration),
        if s.extended { " +extension" } else { "" },
        share(s.share)
    );
    out += &format!(
        "{:<8} {:>8} {:>11} {:>9} {:>9} {:>9} {:>8}  {}\n",
        "", "req/s", "requests", "errors", "p95", "success", "users", "backend"
    );
    for (name, v) in [("stable", &s.stable), ("canary", &s.canary)] {
        out += &format!(
            "{:<8} {:>8.0} {:>11} {:>9} {:>9} {:>9} {:>8}  {}\n",
            name,
            v.rps,
            count(v.requests),
            pct(v.error_rate),
            v.p95_ms.map(ms).unwrap_or("-".into()),
            pct(v.success_rate),
            count(v.active_users),
            health_word(v.health)
        );
    }
    out += "\ngates of this phase (judged now):\n";
    for v in &s.verdicts {
        let mut e = format!(
            "  {:<12} {} — {}",
            v.outcome.label(),
            v.criterion,
            v.explanation
        );
        if e.chars().count() > 160 {
            e = e.chars().take(157).collect::<String>() + "...";
        }
        out += &e;
        out += "\n";
    }
    out += "\nrecent decisions:\n";
    let start = log.len().saturating_sub(8);
    for l in &log[start..] {
        let mut l = l.clone();
        if l.chars().count() > 160 {
            l = l.chars().take(157).collect::<String>() + "...";
        }
        out += &format!("  {l}\n");
    }
    out
}

fn health_name(h: v1::Health) -> &'static str {
    match h {
        v1::Health::Healthy => "healthy",
        v1::Health::Monitoring => "monitoring",
        v1::Health::Degraded => "degraded",
        v1::Health::Critical => "critical",
    }
}

fn share(bp: u16) -> String {
    ramp_core::cohort::ShareBp::new(bp).map_or_else(|| format!("{bp}bp"), |s| s.to_string())
}
