//! `ramp demo`: the whole thing in a minute on a fresh machine.
//!
//! Two demo backends on 127.0.0.1 (stable healthy; canary healthy or degrading), a load
//! generator with thousands of virtual users, and `ramp serve` on the seed plan with a
//! compressed clock, so the three-phase rollout (or a rollback) plays out in about a minute.
//! Everything is real: real sockets, real proxying, real counters; only the clock is fast.

pub mod backend;
pub mod load;

use crate::proxy::{BackendHealth, Limits};
use crate::render;
use crate::serve::{self, Control, LogEntry, ServeConfig, ServeResult, Snapshot};
use ramp_core::evidence::Signal;
use ramp_core::report::{count, ms, pct};
use ramp_core::plan::{Plan, Upstreams, parse_plan};
use ramp_core::rollout::{NotifyKind, Status};
use ramp_core::time::{Human, Millis};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The seed plan, built into the binary so the demo needs no files.
pub const SEED_PLAN: &str = include_str!("../../../../examples/payments-backend.toml");

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
}

/// How the demo ended.
#[derive(Debug)]
pub struct DemoOutcome {
    /// "completed", "rolled_back" or "held".
    pub outcome: &'static str,
    /// The serve result.
    pub result: ServeResult,
}

fn plan_for_demo(stable: std::net::SocketAddr, canary: std::net::SocketAddr) -> Plan {
    let mut plan = parse_plan(SEED_PLAN, "examples/payments-backend.toml")
        .expect("the built-in seed plan is valid (tested)");
    plan.upstreams = Some(Upstreams {
        stable: format!("http://{stable}"),
        canary: format!("http://{canary}"),
        health_path: Some("/health".into()),
        health_interval: 500,
    });
    plan
}

/// Runs the demo to its end. Prints to stdout.
pub async fn run(opts: DemoOptions) -> anyhow::Result<DemoOutcome> {
    let stable_b = backend::Behaviour::new(0.0005, 30.0, 90.0);
    let canary_b = backend::Behaviour::new(0.0, 33.0, 100.0);
    let stable = backend::start("stable", stable_b.clone()).await?;
    let canary = backend::start("canary", canary_b.clone()).await?;
    let plan = plan_for_demo(stable.addr, canary.addr);
    let planned = plan.planned_duration();
    let time_scale = planned as f64 / (opts.seconds * 1000.0);
    let lines: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let plan_name = plan.name.clone();
    let server = serve::start(
        ServeConfig {
            plan: plan.clone(),
            listen: "127.0.0.1:0".parse().expect("a literal address"),
            time_scale,
            limits: Limits::default(),
            variant_header: true,
            access_log: None,
            exit_on_end: true,
            store: None,
            resume: None,
        },
        move |entry, origin| {
            let mut out = sink.lock().unwrap_or_else(|p| p.into_inner());
            match entry {
                LogEntry::Event(e) => {
                    let at = render::clock(e.at.saturating_sub(origin));
                    for (i, l) in render::event_lines(e, origin).into_iter().enumerate() {
                        out.push(if i == 0 {
                            format!("{at}  {l}")
                        } else {
                            format!("               {l}")
                        });
                    }
                }
                LogEntry::Notify(n) if n.kind == NotifyKind::Critical => {
                    out.push(format!(
                        "           ! critical notification sent: {}",
                        ramp_core::report::headline(&plan_name, n)
                    ));
                }
                LogEntry::Notify(_) => {}
                LogEntry::StoreError(e) => out.push(format!("           ! {e}")),
                LogEntry::Report(r) => out.push(format!(
                    "           ✎ report: {}",
                    serde_json::to_value(r)
                        .ok()
                        .and_then(|v| v.as_str().map(|s| s.replace('_', " ")))
                        .unwrap_or_default()
                )),
            }
        },
    )
    .await?;
    crate::outln!(
        "ramp demo: plan {} ({} phases, {} planned) compressed ×{:.0} into ~{:.0}s of real time",
        plan.name,
        plan.phases.len(),
        Human(planned),
        time_scale,
        opts.seconds
    );
    crate::outln!(
        "  proxy http://{}  stable http://{}  canary http://{}  load {} req/s from {} users",
        server.proxy_addr,
        stable.addr,
        canary.addr,
        opts.rps,
        opts.users
    );
    match opts.canary {
        CanaryBehaviour::Healthy => crate::outln!("  the canary stays healthy\n"),
        CanaryBehaviour::FailsAt { at, error_rate } => crate::outln!(
            "  the canary starts failing {} of requests at {} of the plan ({})\n",
            pct(error_rate),
            pct(at),
            Human((planned as f64 * at) as Millis)
        ),
        CanaryBehaviour::SlowsAt { at, p95_ms } => crate::outln!(
            "  the canary's p95 goes to {p95_ms}ms at {} of the plan ({})\n",
            pct(at),
            Human((planned as f64 * at) as Millis)
        ),
    }

    let load = load::start(load::LoadConfig {
        target: server.proxy_addr,
        requests_per_second: opts.rps,
        users: opts.users,
        concurrency: 512,
        seed: 7,
        path: "/api/payments".into(),
    });
    let control = server.control.clone();
    let mut snapshot = server.snapshot.clone();
    let started = std::time::Instant::now();
    let deadline = Duration::from_secs_f64(opts.seconds * 3.0 + 30.0);
    let mut harmed = false;
    let mut printed = 0usize;
    let mut last_plain = std::time::Instant::now();
    let mut drawn_lines = 0usize;
    let mut feedback_due = 0.0f64;
    let mut rng_state = 0x2545_F491_4F6C_DD1Du64;
    let tick = Duration::from_millis(100);
    let stdout = std::io::stdout();
    loop {
        tokio::time::sleep(tick).await;
        let snap = snapshot.borrow_and_update().clone();
        let virtual_elapsed = snap.now.saturating_sub(snap.origin);
        // Failure injection at the chosen point of the plan.
        let at = match opts.canary {
            CanaryBehaviour::FailsAt { at, .. } | CanaryBehaviour::SlowsAt { at, .. } => Some(at),
            CanaryBehaviour::Healthy => None,
        };
        if let Some(at) = at
            && !harmed
            && virtual_elapsed as f64 >= planned as f64 * at
        {
            harmed = true;
            match opts.canary {
                CanaryBehaviour::FailsAt { error_rate, .. } => canary_b.set_error_rate(error_rate),
                CanaryBehaviour::SlowsAt { p95_ms, .. } => {
                    canary_b.set_latency(p95_ms / 3.0, p95_ms)
                }
                CanaryBehaviour::Healthy => {}
            }
            let _ = control.send(Control::MarkHarm).await;
            lines
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(format!(
                    "{}  ~ demo: the canary backend degrades now",
                    render::clock(virtual_elapsed)
                ));
        }
        // User feedback from canary users: about 12 an hour of plan time, 97% positive.
        if snap.share.bp() > 0 && !snap.ended {
            feedback_due += 12.0 * (tick.as_secs_f64() * time_scale) / 3600.0;
            while feedback_due >= 1.0 {
                feedback_due -= 1.0;
                rng_state ^= rng_state << 13;
                rng_state ^= rng_state >> 7;
                rng_state ^= rng_state << 17;
                let good = rng_state % 100 < 97;
                let _ = control
                    .send(Control::Signal {
                        signal: Signal::Feedback {
                            score: if good { 0.9 } else { 0.3 },
                            note: String::new(),
                        },
                        key: None,
                        reply: None,
                    })
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
                &plan,
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
                last_plain = std::time::Instant::now();
                let _ = writeln!(out, "{}", status_line(&snap, time_scale));
            }
        }
        let _ = out.flush();
        if snap.ended || started.elapsed() > deadline {
            break;
        }
    }
    if started.elapsed() > deadline {
        let _ = control.send(Control::Stop).await;
    }
    let result = server.wait().await;
    let sent = load.stats.sent();
    load.stop().await;
    stable.shutdown().await;
    canary.shutdown().await;
    if !opts.live {
        let all = lines.lock().unwrap_or_else(|p| p.into_inner());
        for l in &all[printed..] {
            crate::outln!("{l}");
        }
    }
    let outcome = match result.state.status {
        Status::Completed => "completed",
        Status::RolledBack => "rolled_back",
        _ => "held",
    };
    crate::outln!();
    let phase = &plan.phases[result.state.phase];
    let ended = result.state.ended_at.unwrap_or(result.state.now);
    crate::outln!(
        "outcome: {} in phase {} after {} of plan time ({:.1}s real); {} requests sent through the proxy",
        outcome.replace('_', " "),
        phase.name,
        Human(ended.saturating_sub(result.origin)),
        started.elapsed().as_secs_f64(),
        count(sent)
    );
    if let Some(r) = &result.state.reason {
        crate::outln!("reason: {}", ramp_core::report::stop_text(r));
    }
    match (&result.blast, result.harm_at) {
        (Some(b), Some(h)) => crate::outln!(
            "blast radius (from the canary's degradation at {} to {}): {} canary requests, {} failed, ≈{} distinct users",
            render::clock(h.saturating_sub(result.origin)).trim(),
            if outcome == "rolled_back" {
                "the rollback"
            } else {
                "the end"
            },
            count(b.requests),
            count(b.errors),
            count(b.users.estimate())
        ),
        _ => crate::outln!("blast radius: none (the canary was never made worse)"),
    }
    Ok(DemoOutcome { outcome, result })
}

fn health_word(h: Option<BackendHealth>) -> String {
    h.and_then(|h| serde_json::to_value(h).ok())
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_else(|| "-".into())
}

/// One line for logs.
fn status_line(s: &Snapshot, scale: f64) -> String {
    format!(
        "{}  · {} phase {} at {} for {}{}; canary {} req/s, errors {}, p95 {}; stable {} req/s, errors {}; health {}",
        render::clock(s.now.saturating_sub(s.origin)),
        s.status,
        s.phase_name,
        s.share,
        Human(s.phase_elapsed),
        if s.extended { " (extended)" } else { "" },
        (s.canary.rps * 1.0).round(),
        pct(s.canary.error_rate),
        s.canary.p95_ms.map(ms).unwrap_or("-".into()),
        (s.stable.rps).round(),
        pct(s.stable.error_rate),
        s.health
    ) + &format!(" (×{scale:.0})")
}

/// The live terminal view.
fn live_view(plan: &Plan, s: &Snapshot, scale: f64, log: &[String]) -> String {
    let mut out = String::new();
    let elapsed = s.now.saturating_sub(s.origin);
    out += &format!(
        "ramp demo — {}   plan time {} (×{:.0})   status {}   health {}\n",
        plan.name,
        Human(elapsed),
        scale,
        s.status,
        s.health
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
        plan.phases.len(),
        s.phase_name,
        "█".repeat(filled),
        "░".repeat(width - filled),
        frac * 100.0,
        Human(s.phase_duration),
        if s.extended { " +extension" } else { "" },
        s.share
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
            ramp_core::report::explain(v)
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
