//! The `ramp` command line.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{Parser, Subcommand};
use ramp::{plancheck, render, scenario, simulate};
use ramp_core::plan::parse_plan;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Progressive delivery with evidence-based gates.
#[derive(Parser)]
#[command(name = "ramp", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Work with plan files.
    Plan {
        #[command(subcommand)]
        command: PlanCommand,
    },
    /// Run a plan against synthetic traffic on a virtual clock.
    Simulate {
        /// The plan file.
        plan: PathBuf,
        /// The scenario file (see examples/scenarios).
        #[arg(long)]
        scenario: PathBuf,
        /// Print one JSON object instead of the timeline.
        #[arg(long)]
        json: bool,
        /// Random seed (default: the scenario's `seed`).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Run the proxy and the controller on real traffic.
    Serve {
        /// The plan file (needs [upstreams]).
        #[arg(long)]
        plan: PathBuf,
        /// Where the proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Run phase durations N times faster (demos, tests); evidence still comes from real requests.
        #[arg(long, default_value_t = 1.0)]
        time_scale: f64,
        /// Log every request (method, masked path, status, variant, latency; never bodies) to stderr.
        #[arg(long)]
        access_log: bool,
        /// Add `x-ramp-variant: stable|canary` to responses.
        #[arg(long)]
        variant_header: bool,
        /// Exit when the rollout completes, rolls back or holds.
        #[arg(long)]
        exit_on_end: bool,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// A live rollout on this machine in about a minute: demo backends, load, the seed plan.
    Demo {
        /// Make the canary start failing at this point of the plan, e.g. 50% (day 2 of 3).
        #[arg(long)]
        canary_fails_at: Option<String>,
        /// Share of requests the failing canary answers with 500.
        #[arg(long, default_value = "5%")]
        canary_error_rate: String,
        /// A named scenario instead: healthy, error-spike, latency-regression.
        #[arg(long)]
        scenario: Option<String>,
        /// Real seconds for the whole plan.
        #[arg(long, default_value_t = 60.0)]
        seconds: f64,
        /// Requests per second from the load generator.
        #[arg(long, default_value_t = 4000.0)]
        rps: f64,
        /// Distinct virtual users.
        #[arg(long, default_value_t = 5000)]
        users: u32,
        /// Print progress lines instead of redrawing a live view.
        #[arg(long)]
        plain: bool,
    },
}

/// Proxy limits, shared by `serve`.
#[derive(clap::Args, Clone, Debug)]
struct LimitArgs {
    /// Largest request head accepted, in bytes (larger: 431).
    #[arg(long, default_value_t = 16 * 1024)]
    max_header_bytes: usize,
    /// Most request headers accepted (more: 431).
    #[arg(long, default_value_t = 100)]
    max_headers: usize,
    /// Time a client has to send its request head (slow clients are cut off).
    #[arg(long, default_value = "10s")]
    header_read_timeout: String,
    /// Time to connect to an upstream (then 502).
    #[arg(long, default_value = "2s")]
    connect_timeout: String,
    /// Time to wait for an upstream's response head (then 504).
    #[arg(long, default_value = "30s")]
    response_timeout: String,
    /// Most concurrent client connections.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// On shutdown, how long in-flight requests may take to finish.
    #[arg(long, default_value = "10s")]
    drain_timeout: String,
    /// Proxy worker threads, each with its own listener and connection pool (0: one per core).
    #[arg(long, default_value_t = 0)]
    workers: usize,
}

#[derive(Subcommand)]
enum PlanCommand {
    /// Validate a plan and print it as a table.
    Check {
        /// The plan file.
        plan: PathBuf,
        /// Total requests per second: show how much traffic and time each gate needs.
        #[arg(long)]
        rps: Option<f64>,
    },
}

/// Bad input: printed as is, exit code 2.
struct Invalid(String);

fn read(path: &Path) -> Result<String, Invalid> {
    std::fs::read_to_string(path)
        .map_err(|e| Invalid(format!("{}: error: cannot read: {e}", path.display())))
}

fn load_plan(path: &Path) -> Result<ramp_core::plan::Plan, Invalid> {
    let src = read(path)?;
    parse_plan(&src, &path.display().to_string()).map_err(|e| Invalid(e.to_string()))
}

fn run(cli: Cli) -> anyhow::Result<Result<(), Invalid>> {
    match cli.command {
        Command::Plan {
            command: PlanCommand::Check { plan, rps },
        } => {
            if let Some(r) = rps
                && !(r > 0.0 && r.is_finite())
            {
                return Ok(Err(Invalid(
                    "error: --rps must be a positive number".into(),
                )));
            }
            let p = match load_plan(&plan) {
                Ok(p) => p,
                Err(e) => return Ok(Err(e)),
            };
            let (text, warnings) = plancheck::render(&p, rps);
            print!("{text}");
            if !warnings.is_empty() {
                println!();
                for w in &warnings {
                    println!("warning: {w}");
                }
            }
            println!("\n{}: ok", plan.display());
            Ok(Ok(()))
        }
        Command::Simulate {
            plan,
            scenario: sc_path,
            json,
            seed,
        } => {
            let p = match load_plan(&plan) {
                Ok(p) => p,
                Err(e) => return Ok(Err(e)),
            };
            let src = match read(&sc_path) {
                Ok(s) => s,
                Err(e) => return Ok(Err(e)),
            };
            let sc = match scenario::parse_scenario(&src, &sc_path.display().to_string()) {
                Ok(s) => s,
                Err(e) => return Ok(Err(Invalid(e.to_string()))),
            };
            let seed = seed.unwrap_or(sc.seed);
            let started = std::time::Instant::now();
            let result = simulate::run(&p, &sc, seed);
            let wall = started.elapsed();
            if json {
                let doc = render::json(&p, &result);
                println!(
                    "{}",
                    serde_json::to_string_pretty(&doc).context("encoding JSON")?
                );
            } else {
                let name = sc_path
                    .file_stem()
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or_default();
                print!("{}", render::timeline(&p, &result, &name));
                println!(
                    "simulated {} of virtual time ({} requests) in {:.0} ms",
                    ramp_core::time::Human(result.ended_at),
                    ramp_core::evidence::gate::count(result.requests),
                    wall.as_secs_f64() * 1000.0
                );
            }
            Ok(Ok(()))
        }
        Command::Serve {
            plan,
            listen,
            time_scale,
            access_log,
            variant_header,
            exit_on_end,
            limits,
        } => serve_cmd(ServeArgs {
            plan: &plan,
            listen,
            time_scale,
            access_log,
            variant_header,
            exit_on_end,
            limits: &limits,
        }),
        Command::Demo {
            canary_fails_at,
            canary_error_rate,
            scenario,
            seconds,
            rps,
            users,
            plain,
        } => demo_cmd(DemoArgs {
            canary_fails_at,
            canary_error_rate,
            scenario,
            seconds,
            rps,
            users,
            plain,
        }),
    }
}

fn percent_arg(name: &str, text: &str) -> Result<f64, Invalid> {
    let t = text.trim();
    let v = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0),
        None => t.parse::<f64>(),
    };
    match v {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        _ => Err(Invalid(format!(
            "error: {name} must be a percentage between 0% and 100%, found {text:?}"
        ))),
    }
}

fn duration_arg(name: &str, text: &str) -> Result<std::time::Duration, Invalid> {
    ramp_core::time::parse_duration(text)
        .map(std::time::Duration::from_millis)
        .map_err(|e| Invalid(format!("error: --{name}: {e}")))
}

fn limits(a: &LimitArgs) -> Result<ramp::proxy::Limits, Invalid> {
    Ok(ramp::proxy::Limits {
        max_header_bytes: a.max_header_bytes,
        max_headers: a.max_headers,
        header_read_timeout: duration_arg("header-read-timeout", &a.header_read_timeout)?,
        connect_timeout: duration_arg("connect-timeout", &a.connect_timeout)?,
        response_timeout: duration_arg("response-timeout", &a.response_timeout)?,
        max_connections: a.max_connections,
        drain_timeout: duration_arg("drain-timeout", &a.drain_timeout)?,
        workers: a.workers,
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn print_entry(entry: &ramp::serve::LogEntry, origin: ramp_core::time::Millis) {
    use ramp::serve::LogEntry;
    let name = |v: serde_json::Result<serde_json::Value>| {
        v.ok()
            .and_then(|v| v.as_str().map(|s| s.replace('_', " ")))
            .unwrap_or_default()
    };
    match entry {
        LogEntry::Event(e) => {
            let at = ramp::render::clock(e.at.saturating_sub(origin));
            for (i, l) in ramp::render::event_lines(e, origin).into_iter().enumerate() {
                if i == 0 {
                    println!("{at}  {l}");
                } else {
                    println!("               {l}");
                }
            }
        }
        LogEntry::Notify(n) => println!(
            "           notify ({}): {}",
            name(serde_json::to_value(n.kind)),
            n.headline
        ),
        LogEntry::Report(r) => println!("           report: {}", name(serde_json::to_value(r))),
    }
}

struct ServeArgs<'a> {
    plan: &'a Path,
    listen: std::net::SocketAddr,
    time_scale: f64,
    access_log: bool,
    variant_header: bool,
    exit_on_end: bool,
    limits: &'a LimitArgs,
}

fn serve_cmd(a: ServeArgs) -> anyhow::Result<Result<(), Invalid>> {
    let p = match load_plan(a.plan) {
        Ok(p) => p,
        Err(e) => return Ok(Err(e)),
    };
    if p.upstreams.is_none() {
        return Ok(Err(Invalid(format!(
            "{}: error: ramp serve needs an [upstreams] table with `stable` and `canary` URLs",
            a.plan.display()
        ))));
    }
    let time_scale = a.time_scale;
    if !(time_scale.is_finite() && time_scale > 0.0) {
        return Ok(Err(Invalid(
            "error: --time-scale must be a positive number".into(),
        )));
    }
    let limits = match limits(a.limits) {
        Ok(l) => l,
        Err(e) => return Ok(Err(e)),
    };
    let config = ramp::serve::ServeConfig {
        plan: p,
        listen: a.listen,
        time_scale,
        limits,
        variant_header: a.variant_header,
        access_log: a
            .access_log
            .then(|| ramp::proxy::AccessLog::new(std::io::stderr())),
        exit_on_end: a.exit_on_end,
    };
    let rt = runtime()?;
    rt.block_on(async move {
        let server = ramp::serve::start(config, print_entry)
            .await
            .context("starting ramp serve")?;
        println!(
            "ramp serve: proxy listening on http://{} (time scale ×{time_scale})",
            server.proxy_addr
        );
        let control = server.control.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                let _ = control.send(ramp::serve::Control::Stop).await;
            }
        });
        let result = server.wait().await;
        println!(
            "ramp serve: stopped; rollout {}",
            result.state.status.name()
        );
        Ok(Ok(()))
    })
}

struct DemoArgs {
    canary_fails_at: Option<String>,
    canary_error_rate: String,
    scenario: Option<String>,
    seconds: f64,
    rps: f64,
    users: u32,
    plain: bool,
}

fn demo_cmd(a: DemoArgs) -> anyhow::Result<Result<(), Invalid>> {
    use ramp::demo::CanaryBehaviour;
    use std::io::IsTerminal;
    let error_rate = match percent_arg("--canary-error-rate", &a.canary_error_rate) {
        Ok(r) => r,
        Err(e) => return Ok(Err(e)),
    };
    let canary = match (a.scenario.as_deref(), a.canary_fails_at) {
        (Some(_), Some(_)) => {
            return Ok(Err(Invalid(
                "error: use either --scenario or --canary-fails-at".into(),
            )));
        }
        (None, None) | (Some("healthy"), None) => CanaryBehaviour::Healthy,
        (Some("error-spike"), None) => CanaryBehaviour::FailsAt {
            at: 0.5,
            error_rate,
        },
        (Some("latency-regression"), None) => CanaryBehaviour::SlowsAt {
            at: 0.1,
            p95_ms: 400.0,
        },
        (Some(other), None) => {
            return Ok(Err(Invalid(format!(
                "error: unknown demo scenario {other:?}: use healthy, error-spike or latency-regression"
            ))));
        }
        (None, Some(at)) => match percent_arg("--canary-fails-at", &at) {
            Ok(at) => CanaryBehaviour::FailsAt { at, error_rate },
            Err(e) => return Ok(Err(e)),
        },
    };
    let ok =
        (5.0..=3600.0).contains(&a.seconds) && a.rps > 0.0 && a.rps <= 100_000.0 && a.users > 0;
    if !ok {
        return Ok(Err(Invalid(
            "error: --seconds must be in [5, 3600], --rps in (0, 100000], --users at least 1"
                .into(),
        )));
    }
    let live = !a.plain && std::io::stdout().is_terminal();
    let rt = runtime()?;
    rt.block_on(ramp::demo::run(ramp::demo::DemoOptions {
        canary,
        seconds: a.seconds,
        rps: a.rps,
        users: a.users,
        live,
    }))?;
    Ok(Ok(()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(Invalid(msg))) => {
            eprintln!("{msg}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
