//! The `ramp` command line: clap → validated settings (`config`, no IO) → the command.
//! `anyhow` lives only here and in the commands' glue; exit codes are 0 for success, 1 for a
//! runtime failure, 2 for bad usage or invalid input.
#![forbid(unsafe_code)]
#![allow(clippy::print_stderr)]

mod args;
mod client;
mod config;
mod logging;
mod plancheck;
mod render;
mod serve;

use anyhow::Context;
use args::{ActionArgs, Cli, Command, PlanCommand, ServerArgs, TokenCommand};
use clap::Parser;
use config::Invalid;
use ramp_api::Role;
use ramp_core::plan::parse_plan;
use ramp_wire::v1;
use std::path::Path;
use std::process::ExitCode;

fn read(path: &Path) -> Result<String, Invalid> {
    std::fs::read_to_string(path)
        .map_err(|e| Invalid(format!("{}: error: cannot read: {e}", path.display())))
}

fn load_plan(path: &Path) -> Result<ramp_core::plan::Plan, Invalid> {
    let src = read(path)?;
    parse_plan(&src, &path.display().to_string()).map_err(|e| Invalid(e.to_string()))
}

/// `?` for functions answering `anyhow::Result<Result<(), Invalid>>`.
macro_rules! valid {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(invalid) => return Ok(Err(invalid)),
        }
    };
}

fn run(cli: Cli) -> anyhow::Result<Result<(), Invalid>> {
    let json_log = cli.log_format == "json";
    logging::init(json_log);
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
            let p = valid!(load_plan(&plan));
            let (text, warnings) = plancheck::render(&p, rps);
            render::out(&text);
            if !warnings.is_empty() {
                render::line("");
                for w in &warnings {
                    render::line(&format!("warning: {w}"));
                }
            }
            render::line(&format!("\n{}: ok", plan.display()));
            Ok(Ok(()))
        }
        Command::Simulate {
            plan,
            scenario: sc_path,
            json,
            seed,
            report,
        } => {
            let p = valid!(load_plan(&plan));
            let src = valid!(read(&sc_path));
            let sc = valid!(
                ramp_sim::scenario::parse_scenario(&src, &sc_path.display().to_string())
                    .map_err(|e| Invalid(e.to_string()))
            );
            let seed = seed.unwrap_or(sc.seed);
            // Wall time of the run, reported to the user; the run's own time is virtual.
            #[allow(clippy::disallowed_methods)]
            let started = std::time::Instant::now();
            let result = if report.is_some() {
                ramp_sim::run_for_reports(&p, &sc, seed)
            } else {
                ramp_sim::run(&p, &sc, seed)
            };
            let wall = started.elapsed();
            if let Some(dir) = &report {
                for path in simulated_reports(&p, &result, dir).context("writing the reports")? {
                    render::err_line(&format!("report written: {}", path.display()));
                }
            }
            if json {
                let doc = ramp_sim::render::json(&p, &result);
                render::line(&serde_json::to_string_pretty(&doc).context("encoding JSON")?);
            } else {
                let name = sc_path
                    .file_stem()
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or_default();
                render::out(&ramp_sim::render::timeline(&p, &result, &name));
                render::line(&format!(
                    "simulated {} of virtual time ({} requests) in {:.0} ms",
                    ramp_core::time::Human(result.ended_at),
                    ramp_core::report::count(result.requests),
                    wall.as_secs_f64() * 1000.0
                ));
            }
            Ok(Ok(()))
        }
        Command::Serve(a) => {
            let cfg = valid!(config::serve(*a));
            serve::run(cfg, json_log)
        }
        Command::Status {
            name,
            watch,
            json,
            server,
        } => client_cmd(&server, |c| async move {
            loop {
                let text = match &name {
                    Some(n) => {
                        let (raw, s) = c.status(n).await?;
                        if json {
                            pretty(&raw)
                        } else {
                            render::status(&s)
                        }
                    }
                    None => {
                        let (raw, list) = c.list().await?;
                        if json {
                            pretty(&raw)
                        } else if list.is_empty() {
                            "no rollouts\n".to_string()
                        } else {
                            list.iter()
                                .map(render::status)
                                .collect::<Vec<_>>()
                                .join("\n")
                        }
                    }
                };
                if watch {
                    // Clear the screen and redraw in place.
                    render::out(&format!("\x1b[H\x1b[2J{text}"));
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                } else {
                    render::out(&text);
                    return Ok(());
                }
            }
        }),
        Command::Pause(a) => action_cmd("pause", a),
        Command::Resume(a) => action_cmd("resume", a),
        Command::Approve(a) => action_cmd("approve", a),
        Command::Promote(a) => action_cmd("promote", a),
        Command::Rollback(a) => action_cmd("rollback", a),
        Command::Retire { name, server } => client_cmd(&server, |c| async move {
            let s = c.retire(&name).await?;
            render::out(&render::status(&s));
            Ok(())
        }),
        Command::Signal {
            name,
            kind,
            severity,
            score,
            note,
            id,
            server,
        } => {
            let signal = match kind.as_str() {
                "pci_alert" => v1::SignalRequest::PciAlert { note, id },
                "bug_report" => v1::SignalRequest::BugReport { note, id },
                "security_alert" => {
                    let severity = match severity.as_deref().map(str::trim) {
                        Some("low") => v1::Severity::Low,
                        Some("medium") => v1::Severity::Medium,
                        Some("high") => v1::Severity::High,
                        Some("critical") => v1::Severity::Critical,
                        _ => {
                            return Ok(Err(Invalid(
                                "error: security_alert needs --severity low, medium, high or critical"
                                    .into(),
                            )));
                        }
                    };
                    v1::SignalRequest::SecurityAlert { severity, note, id }
                }
                "feedback" => {
                    let Some(score) = score else {
                        return Ok(Err(Invalid(
                            "error: feedback needs --score between 0 and 1".into(),
                        )));
                    };
                    v1::SignalRequest::Feedback { score, note, id }
                }
                other => {
                    return Ok(Err(Invalid(format!(
                        "error: unknown signal kind {other:?}: use pci_alert, security_alert, bug_report or feedback"
                    ))));
                }
            };
            client_cmd(&server, |c| async move {
                let accepted = c.signal(&name, &signal).await?;
                if accepted.duplicate {
                    render::line(&format!(
                        "already counted under this id; the repeat is journaled at position {}",
                        accepted.seq
                    ));
                } else {
                    render::line(&format!("signal journaled at position {}", accepted.seq));
                }
                Ok(())
            })
        }
        Command::Events {
            name,
            after,
            limit,
            json,
            server,
        } => client_cmd(&server, |c| async move {
            let (raw, page) = c.events(&name, after, limit).await?;
            if json {
                render::out(&pretty(&raw));
            } else {
                render::out(&render::events(&page));
            }
            Ok(())
        }),
        Command::Notices {
            name,
            after,
            limit,
            full,
            json,
            server,
        } => client_cmd(&server, |c| async move {
            let (raw, page) = c.notices(&name, after, limit).await?;
            if json {
                render::out(&pretty(&raw));
            } else {
                render::out(&render::notices(&page, full));
            }
            Ok(())
        }),
        Command::Report {
            name,
            kind,
            format,
            out,
            server,
        } => client_cmd(&server, |c| async move {
            let body = c.report(&name, &kind, &format).await?;
            match out {
                Some(path) => {
                    std::fs::write(&path, &body).map_err(|e| {
                        client::ClientError::Answer(path.display().to_string(), e.to_string())
                    })?;
                    render::line(&format!("{kind} report written to {}", path.display()));
                }
                None => render::out(&String::from_utf8_lossy(&body)),
            }
            Ok(())
        }),
        Command::Token {
            command:
                TokenCommand::Add {
                    name,
                    role,
                    db,
                    tokens,
                },
        } => {
            let Ok(role) = role.trim().parse::<Role>() else {
                return Ok(Err(Invalid(format!(
                    "error: role {role:?}: expected viewer, operator, admin or ingest"
                ))));
            };
            valid!(config::token_name(&name));
            let path = config::tokens_path(&db, tokens);
            let token = match ramp_api::add_token(&path, &name, role) {
                Ok(t) => t,
                // A name taken, a line of the file that cannot be read: the user's to fix.
                Err(e @ ramp_api::TokensFileError::Line { .. }) => {
                    return Ok(Err(Invalid(e.to_string())));
                }
                Err(e) => return Err(e.into()),
            };
            render::line(&token);
            render::err_line(&format!(
                "token {name} ({}) added to {}; it is shown only now",
                role.name(),
                path.display()
            ));
            Ok(Ok(()))
        }
        Command::Token {
            command: TokenCommand::List { db, tokens },
        } => {
            let path = config::tokens_path(&db, tokens);
            let entries = ramp_api::list_tokens(&path)?;
            if entries.is_empty() {
                render::err_line(&format!("no tokens in {}", path.display()));
            }
            for e in entries {
                render::line(&format!("{:<24} {}", e.name, e.role.name()));
            }
            Ok(Ok(()))
        }
        Command::Token {
            command: TokenCommand::Revoke { name, db, tokens },
        } => {
            let path = config::tokens_path(&db, tokens);
            match ramp_api::revoke_token(&path, &name)? {
                0 => Ok(Err(Invalid(format!(
                    "error: no token named {name:?} in {}",
                    path.display()
                )))),
                _ => {
                    render::err_line(&format!(
                        "token {name} revoked in {}; a running server refuses it from now on",
                        path.display()
                    ));
                    Ok(Ok(()))
                }
            }
        }
        Command::Demo(a) => {
            use std::io::IsTerminal;
            let mut opts = valid!(config::demo(a));
            opts.live = opts.live && std::io::stdout().is_terminal();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(ramp_demo::run(opts))?;
            Ok(Ok(()))
        }
    }
}

/// The server's JSON, pretty-printed (as it was sent: nothing this client does not know is
/// dropped).
fn pretty(raw: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(raw)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .map(|s| s + "\n")
        .unwrap_or_else(|_| String::from_utf8_lossy(raw).into_owned())
}

/// Runs a client command; API errors become exit codes (2 for our mistakes, 1 otherwise).
fn client_cmd<F, Fut>(server: &ServerArgs, f: F) -> anyhow::Result<Result<(), Invalid>>
where
    F: FnOnce(client::Client) -> Fut,
    Fut: std::future::Future<Output = Result<(), client::ClientError>>,
{
    let token = match (&server.token, &server.token_file) {
        (_, Some(path)) => match std::fs::read_to_string(path) {
            Ok(text) => match text.lines().next().map(str::trim).filter(|t| !t.is_empty()) {
                Some(t) => Some(t.to_string()),
                None => {
                    return Ok(Err(Invalid(format!(
                        "error: {}: the token file is empty",
                        path.display()
                    ))));
                }
            },
            Err(e) => {
                return Ok(Err(Invalid(format!(
                    "error: {}: cannot read the token file: {e}",
                    path.display()
                ))));
            }
        },
        (token, None) => token.clone(),
    };
    let client = match client::Client::new(&server.server, token, server.ca_file.as_deref()) {
        Ok(c) => c,
        Err(e) => return Ok(Err(Invalid(format!("error: {e}")))),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match rt.block_on(f(client)) {
        Ok(()) => Ok(Ok(())),
        Err(e) if e.exit_code() == 2 => Ok(Err(Invalid(format!("error: {e}")))),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}

fn action_cmd(action: &'static str, a: ActionArgs) -> anyhow::Result<Result<(), Invalid>> {
    client_cmd(&a.server, |c| async move {
        let s = c
            .action(&a.name, action, a.reason.as_deref(), a.force)
            .await?;
        render::out(&render::status(&s));
        Ok(())
    })
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

/// The reports of a simulated run, as `ramp serve` writes them: the final report, and the
/// incident review after a rollback.
fn simulated_reports(
    plan: &ramp_core::plan::Plan,
    run: &ramp_sim::Run,
    dir: &std::path::Path,
) -> anyhow::Result<Vec<std::path::PathBuf>> {
    use ramp_sim::TimelineEntry;
    let events: Vec<(u64, ramp_wire::v1::Event)> = run
        .timeline
        .iter()
        .filter_map(|e| match e {
            TimelineEntry::Journal(ev) => Some(ev.clone()),
            _ => None,
        })
        .enumerate()
        .map(|(i, ev)| (i as u64 + 1, ev))
        .collect();
    let notices: Vec<ramp_report::NoticeRow> = run
        .timeline
        .iter()
        .filter_map(|e| match e {
            TimelineEntry::Notify {
                at, notification, ..
            } => Some((*at, notification)),
            _ => None,
        })
        .enumerate()
        .map(|(i, (at, n))| ramp_report::NoticeRow {
            id: i as u64 + 1,
            at,
            kind: format!("{:?}", n.kind).to_lowercase(),
            about: n.about.clone(),
            headline: n.headline.clone(),
            groups: n.groups.clone(),
            deliveries: n
                .channels
                .iter()
                .map(|c| (c.clone(), "simulated".to_string(), 0, None))
                .collect(),
        })
        .collect();
    let input = ramp_report::Input {
        plan,
        state: &run.state,
        events: &events,
        windows: &run.windows,
        notices: &notices,
        now: run.ended_at,
    };
    let mut kinds = vec![ramp_report::Kind::Final];
    if run.outcome == "rolled_back" {
        kinds.insert(0, ramp_report::Kind::Incident);
    }
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    let mut written = Vec::new();
    for k in kinds {
        let doc = ramp_report::build(k, &input);
        let paths = ramp_control::reports::files(dir, &plan.name, k);
        for (path, f) in paths
            .iter()
            .zip([ramp_report::Format::Md, ramp_report::Format::Html])
        {
            std::fs::write(path, ramp_report::render(&doc, f))
                .with_context(|| path.display().to_string())?;
            written.push(path.clone());
        }
    }
    Ok(written)
}
