//! The `ramp` command line.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{Parser, Subcommand};
use ramp::{out, outln};
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
    /// Run rollouts on real traffic: proxy, controller, journal and the HTTP API.
    Serve(ServeArgs),
    /// Show rollouts (all, or one) from a running server.
    Status {
        /// The rollout (default: all).
        name: Option<String>,
        /// Redraw every second until interrupted.
        #[arg(long)]
        watch: bool,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Stop a rollout's phase clock (triggers keep firing).
    Pause(ActionArgs),
    /// Continue a paused rollout.
    Resume(ActionArgs),
    /// Start a phase that waits for approval.
    Approve(ActionArgs),
    /// Promote to the next phase (only on proven gates, unless --force with --reason).
    Promote(ActionArgs),
    /// Send all traffic back to stable (needs --reason).
    Rollback(ActionArgs),
    /// Report a signal: pci_alert, security_alert, bug_report or feedback.
    Signal {
        /// The rollout.
        name: String,
        /// pci_alert, security_alert, bug_report or feedback.
        kind: String,
        /// For security_alert: low, medium, high or critical.
        #[arg(long)]
        severity: Option<String>,
        /// For feedback: a score from 0 to 1.
        #[arg(long)]
        score: Option<f64>,
        /// Free text.
        #[arg(long)]
        note: Option<String>,
        /// The signal's identity at its source: sending the same id again is safe, it is
        /// counted once.
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show a rollout's journal.
    Events {
        /// The rollout.
        name: String,
        /// Start after this journal position.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many entries (1-1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// A live rollout on this machine in about a minute: demo backends, load, the seed plan.
    Demo(DemoArgs),
}

/// How to reach a server's API.
#[derive(clap::Args, Clone, Debug)]
struct ServerArgs {
    /// The server's API address.
    #[arg(long, env = "RAMP_SERVER", default_value = "http://127.0.0.1:7070")]
    server: String,
    /// A bearer token (see `ramp token add`).
    #[arg(long, env = "RAMP_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// An operator action on a rollout.
#[derive(clap::Args, Clone, Debug)]
struct ActionArgs {
    /// The rollout.
    name: String,
    /// Why (journaled; required for rollback and forced promotion).
    #[arg(long)]
    reason: Option<String>,
    /// Promote even though gates are not proven (needs --reason).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    server: ServerArgs,
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
enum TokenCommand {
    /// Create a token with a role (viewer, operator, admin, ingest); prints it once.
    Add {
        /// A name for the token (shown in the journal as who acted).
        name: String,
        /// viewer, operator, admin or ingest.
        role: String,
        /// The journal whose tokens file to use.
        #[arg(long, default_value = "ramp.db")]
        db: PathBuf,
        /// Token hashes file (default: the --db path with `.tokens` appended).
        #[arg(long)]
        tokens: Option<PathBuf>,
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
            out!("{text}");
            if !warnings.is_empty() {
                outln!();
                for w in &warnings {
                    outln!("warning: {w}");
                }
            }
            outln!("\n{}: ok", plan.display());
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
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&doc).context("encoding JSON")?
                );
            } else {
                let name = sc_path
                    .file_stem()
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or_default();
                out!("{}", render::timeline(&p, &result, &name));
                outln!(
                    "simulated {} of virtual time ({} requests) in {:.0} ms",
                    ramp_core::time::Human(result.ended_at),
                    ramp_core::report::count(result.requests),
                    wall.as_secs_f64() * 1000.0
                );
            }
            Ok(Ok(()))
        }
        Command::Serve(a) => serve_cmd(a),
        Command::Status {
            name,
            watch,
            json,
            server,
        } => client_cmd(&server, |c| async move {
            loop {
                let v = c.status(name.as_deref()).await?;
                let text = if json {
                    serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
                } else if let Some(list) = v.as_array() {
                    if list.is_empty() {
                        "no rollouts\n".to_string()
                    } else {
                        list.iter()
                            .map(ramp::client::render_status)
                            .collect::<Vec<_>>()
                            .join("\n")
                    }
                } else {
                    ramp::client::render_status(&v)
                };
                if watch {
                    // Clear the screen and redraw in place.
                    out!("\x1b[H\x1b[2J{text}");
                    use std::io::Write;
                    let _ = std::io::stdout().flush();
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                } else {
                    out!("{text}");
                    return Ok(());
                }
            }
        }),
        Command::Pause(a) => action_cmd("pause", a),
        Command::Resume(a) => action_cmd("resume", a),
        Command::Approve(a) => action_cmd("approve", a),
        Command::Promote(a) => action_cmd("promote", a),
        Command::Rollback(a) => action_cmd("rollback", a),
        Command::Signal {
            name,
            kind,
            severity,
            score,
            note,
            id,
            server,
        } => client_cmd(&server, |c| async move {
            let mut body = serde_json::json!({ "kind": kind });
            if let Some(s) = severity {
                body["severity"] = serde_json::json!(s);
            }
            if let Some(s) = score {
                body["score"] = serde_json::json!(s);
            }
            if let Some(n) = note {
                body["note"] = serde_json::json!(n);
            }
            if let Some(i) = id {
                body["id"] = serde_json::json!(i);
            }
            let v = c.signal(&name, body).await?;
            let seq = v.get("seq").cloned().unwrap_or_default();
            if v.get("duplicate").and_then(serde_json::Value::as_bool) == Some(true) {
                outln!("already counted under this id; the repeat is journaled at position {seq}");
            } else {
                outln!("signal journaled at position {seq}");
            }
            Ok(())
        }),
        Command::Events {
            name,
            after,
            limit,
            json,
            server,
        } => client_cmd(&server, |c| async move {
            let v = c.events(&name, after, limit).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                return Ok(());
            }
            for e in v
                .get("events")
                .and_then(|e| e.as_array())
                .cloned()
                .unwrap_or_default()
            {
                let seq = e.get("seq").and_then(|s| s.as_u64()).unwrap_or(0);
                match serde_json::from_value::<ramp_core::rollout::Event>(e.clone()) {
                    Ok(ev) => {
                        for (i, line) in ramp::render::event_lines(&ev, 0).into_iter().enumerate() {
                            if i == 0 {
                                outln!("{seq:>6}  {}  {line}", ramp::render::utc(ev.at));
                            } else {
                                outln!("{:>6}  {line}", "");
                            }
                        }
                    }
                    Err(_) => outln!("{seq:>6}  {e}"),
                }
            }
            if let Some(next) = v.get("next").and_then(|n| n.as_u64()) {
                outln!("(more: --after {next})");
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
            let Some(role) = parse_role(&role) else {
                return Ok(Err(Invalid(format!(
                    "error: role {role:?}: expected viewer, operator, admin or ingest"
                ))));
            };
            if name.is_empty() || name.chars().any(char::is_whitespace) {
                return Ok(Err(Invalid("error: a token name is one word".into())));
            }
            let path = tokens_path(&db, tokens);
            let token = add_token(&path, &name, role)?;
            outln!("{token}");
            eprintln!(
                "token {name} ({}) added to {}; it is shown only now",
                role.name(),
                path.display()
            );
            Ok(Ok(()))
        }
        Command::Demo(a) => demo_cmd(a),
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

fn print_entry(rollout: &str, entry: &ramp::serve::LogEntry, origin: ramp_core::time::Millis) {
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
                    outln!("{at}  {l}");
                } else {
                    outln!("               {l}");
                }
            }
        }
        LogEntry::Notify(n) => outln!(
            "           notify ({}): {}",
            name(serde_json::to_value(n.kind)),
            ramp_core::report::headline(rollout, n)
        ),
        LogEntry::Report(r) => outln!("           report: {}", name(serde_json::to_value(r))),
        LogEntry::StoreError(e) => {
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "ramp serve: {e}");
        }
    }
}

/// `ramp serve` options.
#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Plan files to start (rollouts already in the journal resume by themselves).
    #[arg(long)]
    plan: Vec<PathBuf>,
    /// Where the proxy listens (for a single --plan; otherwise the plan's [proxy] listen).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// The journal (SQLite). Every decision, signal and window is written here first.
    #[arg(long, default_value = "ramp.db")]
    db: PathBuf,
    /// Where the control API listens.
    #[arg(long, default_value = "127.0.0.1:7070")]
    api: std::net::SocketAddr,
    /// Serve /metrics without a token.
    #[arg(long)]
    open_metrics: bool,
    /// Log every API request (masked path, status, latency, token name; never tokens or
    /// bodies) to stderr.
    #[arg(long)]
    api_log: bool,
    /// Most API connections open at once (others wait); each must send its request head
    /// within 10 s and idle connections close after 10 s.
    #[arg(long, default_value_t = 256)]
    api_max_connections: usize,
    /// Token hashes file (default: the --db path with `.tokens` appended).
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// Run phase durations N times faster (demos, tests); evidence still comes from real requests.
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// Log every request (method, masked path, status, variant, latency; never bodies) to stderr.
    #[arg(long)]
    access_log: bool,
    /// Add `x-ramp-variant: stable|canary` to responses.
    #[arg(long)]
    variant_header: bool,
    /// Exit when every rollout has completed, rolled back or is holding.
    #[arg(long)]
    exit_on_end: bool,
    #[command(flatten)]
    limits: LimitArgs,
}

fn tokens_path(db: &Path, tokens: Option<PathBuf>) -> PathBuf {
    tokens.unwrap_or_else(|| {
        let mut p = db.as_os_str().to_owned();
        p.push(".tokens");
        PathBuf::from(p)
    })
}

fn parse_role(text: &str) -> Option<ramp::api::Role> {
    ramp::api::Role::ALL
        .into_iter()
        .find(|r| r.name() == text.trim())
}

/// Reads `name role sha256` lines. Missing file: no tokens.
fn read_tokens(path: &Path) -> Result<ramp::api::Tokens, Invalid> {
    let mut tokens = ramp::api::Tokens::new();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(tokens),
        Err(e) => {
            return Err(Invalid(format!(
                "{}: error: cannot read: {e}",
                path.display()
            )));
        }
    };
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        let bad = |what: &str| Invalid(format!("{}:{}:1: error: {what}", path.display(), i + 1));
        let [name, role, hash] = parts[..] else {
            return Err(bad("expected `NAME ROLE SHA256`"));
        };
        let role = parse_role(role)
            .ok_or_else(|| bad("role must be viewer, operator, admin or ingest"))?;
        tokens
            .add_hashed(name, role, hash)
            .map_err(|e| bad(&e.to_string()))?;
    }
    Ok(tokens)
}

/// Appends a new token's hash to the file (created 0600) and returns the token.
fn add_token(path: &Path, name: &str, role: ramp::api::Role) -> anyhow::Result<String> {
    use std::io::Write;
    let token = ramp::api::Tokens::generate();
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(
        f,
        "{name} {} {}",
        role.name(),
        ramp::api::Tokens::hash(&token)
    )?;
    f.sync_all()?;
    Ok(token)
}

fn serve_cmd(a: ServeArgs) -> anyhow::Result<Result<(), Invalid>> {
    let mut plans = Vec::new();
    for path in &a.plan {
        let src = match read(path) {
            Ok(s) => s,
            Err(e) => return Ok(Err(e)),
        };
        let p = match parse_plan(&src, &path.display().to_string()) {
            Ok(p) => p,
            Err(e) => return Ok(Err(Invalid(e.to_string()))),
        };
        if p.upstreams.is_none() {
            return Ok(Err(Invalid(format!(
                "{}: error: ramp serve needs an [upstreams] table with `stable` and `canary` URLs",
                path.display()
            ))));
        }
        plans.push((path.clone(), src, p));
    }
    if a.listen.is_some() && plans.len() > 1 {
        return Ok(Err(Invalid(
            "error: --listen applies to a single --plan; give each plan a [proxy] listen".into(),
        )));
    }
    let time_scale = a.time_scale;
    if !(time_scale.is_finite() && time_scale > 0.0) {
        return Ok(Err(Invalid(
            "error: --time-scale must be a positive number".into(),
        )));
    }
    let limits = match limits(&a.limits) {
        Ok(l) => l,
        Err(e) => return Ok(Err(e)),
    };
    let tokens_file = tokens_path(&a.db, a.tokens.clone());
    let mut tokens = match read_tokens(&tokens_file) {
        Ok(t) => t,
        Err(e) => return Ok(Err(e)),
    };
    if tokens.is_empty() {
        let token = add_token(&tokens_file, "admin", ramp::api::Role::Admin)?;
        outln!(
            "ramp serve: no API tokens were configured; created an admin token (shown once, keep it):"
        );
        outln!("  {token}");
        outln!(
            "  (its hash is in {}; add more with `ramp token add NAME ROLE`)",
            tokens_file.display()
        );
        tokens = match read_tokens(&tokens_file) {
            Ok(t) => t,
            Err(e) => return Ok(Err(e)),
        };
    }
    let store: std::sync::Arc<dyn ramp::store::Store> = std::sync::Arc::new(
        ramp::store::SqliteStore::open(&a.db)
            .with_context(|| format!("opening the journal {}", a.db.display()))?,
    );
    let defaults = ramp::registry::Defaults {
        time_scale,
        limits,
        variant_header: a.variant_header,
        default_listen: a
            .listen
            .unwrap_or_else(|| "127.0.0.1:8080".parse().expect("literal")),
        access_log: a.access_log,
    };
    let log: ramp::registry::Log = std::sync::Arc::new(|name: &str, entry, origin| {
        if let ramp::serve::LogEntry::Event(_) = entry {
            use std::io::Write as _;
            let _ = write!(std::io::stdout(), "[{name}] ");
        }
        print_entry(name, entry, origin);
    });
    let rt = runtime()?;
    rt.block_on(async move {
        let registry = ramp::registry::Registry::new(store, defaults, log);
        let resumed = registry.resume_all().await.context("resuming rollouts from the journal")?;
        for r in &resumed {
            match &r.outcome {
                Ok(at) => {
                    outln!("ramp serve: resumed rollout {} from {}", r.name, a.db.display());
                    if let Some(before) = at.moved_from {
                        eprintln!(
                            "ramp serve: warning: rollout {} served on {before} before, which is taken now; it serves on {} instead",
                            r.name, at.listen
                        );
                    }
                }
                Err(e) => eprintln!(
                    "ramp serve: error: rollout {} could not be resumed and is NOT serving: {e}",
                    r.name
                ),
            }
        }
        for (path, src, p) in &plans {
            match registry.stored_plan(&p.name) {
                Some(stored) if &stored == src => {}
                Some(_) => {
                    return Ok(Err(Invalid(format!(
                        "{}: error: a rollout named {:?} is already in {} with a different plan; give the new one another name",
                        path.display(),
                        p.name,
                        a.db.display()
                    ))));
                }
                None => {
                    let now = ramp::clock::Clock::scaled(1.0).now();
                    if let Err(e) = registry
                        .start_new(src, &path.display().to_string(), a.listen, now)
                        .await
                    {
                        return Err(anyhow::anyhow!("starting {}: {e}", p.name));
                    }
                }
            }
        }
        use ramp::control::Rollouts;
        for r in registry.list() {
            outln!(
                "ramp serve: rollout {} proxy listening on http://{} (time scale ×{time_scale})",
                r.name, r.listen
            );
        }
        let listener = tokio::net::TcpListener::bind(a.api)
            .await
            .with_context(|| format!("binding the API on {}", a.api))?;
        outln!("ramp serve: API on http://{}", listener.local_addr()?);
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let api = tokio::spawn(ramp::api::serve(
            listener,
            registry.clone(),
            ramp::api::ApiConfig {
                tokens,
                open_metrics: a.open_metrics,
                request_log: a.api_log,
                limits: ramp::api::ApiLimits {
                    max_connections: a.api_max_connections.max(1),
                    ..Default::default()
                },
                ..Default::default()
            },
            async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            },
        ));
        let exit_on_end = a.exit_on_end;
        let watcher = registry.clone();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    let all = watcher.list();
                    if exit_on_end && !all.is_empty() && all.iter().all(|r| r.snapshot.ended) {
                        break;
                    }
                }
            } => {}
        }
        let _ = stop_tx.send(true);
        registry.shutdown().await;
        let _ = api.await;
        for r in registry.list() {
            outln!("ramp serve: stopped; rollout {} is {}", r.name, r.snapshot.status);
        }
        Ok(Ok(()))
    })
}

/// `ramp demo` options.
#[derive(clap::Args, Debug)]
struct DemoArgs {
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

/// Runs a client command; API errors become exit codes (2 for our mistakes, 1 otherwise).
fn client_cmd<F, Fut>(server: &ServerArgs, f: F) -> anyhow::Result<Result<(), Invalid>>
where
    F: FnOnce(ramp::client::Client) -> Fut,
    Fut: std::future::Future<Output = Result<(), ramp::client::ClientError>>,
{
    let client = match ramp::client::Client::new(&server.server, server.token.clone()) {
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
        out!("{}", ramp::client::render_status(&s));
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
