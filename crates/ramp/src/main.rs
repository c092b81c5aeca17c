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
    }
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
