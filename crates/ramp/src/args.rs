//! The command line, as clap reads it. Nothing here is validated beyond its type: `config`
//! turns these into validated settings.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Progressive delivery with evidence-based gates.
#[derive(Parser)]
#[command(name = "ramp", version, about, long_about = None)]
pub(crate) struct Cli {
    /// How diagnostics (warnings, errors) are written to stderr: text or json. With json,
    /// `ramp serve` also writes its decision log to stdout as one JSON object per line.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    pub(crate) log_format: String,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
        /// Also write the reports of the simulated run to this directory (the final report,
        /// and the incident review after a rollback, as Markdown and HTML): a rehearsal of the
        /// communication plan.
        #[arg(long, value_name = "DIR")]
        report: Option<PathBuf>,
    },
    /// Run rollouts on real traffic: proxy, controller, journal and the HTTP API.
    Serve(Box<ServeArgs>),
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
    /// Retire a rollout that has ended: its proxy and controller stop, its journal stays.
    Retire {
        /// The rollout.
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
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
    /// Show what a rollout's notices said, to whom, when, and how each delivery went.
    Notices {
        /// The rollout.
        name: String,
        /// Start after this notice id.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many notices (1-1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Show each notice's full message (its numbers and gates), not one line.
        #[arg(long)]
        full: bool,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Write a report on a rollout: where it stands, the last day, the final report (success
    /// metrics against their targets) or the incident review of a rollback.
    Report {
        /// The rollout.
        name: String,
        /// status, daily, final or incident.
        #[arg(long, default_value = "status", value_parser = ["status", "daily", "final", "incident"])]
        kind: String,
        /// md, html (self-contained, with charts) or json.
        #[arg(long, default_value = "md", value_parser = ["md", "html", "json"])]
        format: String,
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
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
pub(crate) struct ServerArgs {
    /// The server's API address.
    #[arg(long, env = "RAMP_SERVER", default_value = "http://127.0.0.1:7070")]
    pub(crate) server: String,
    /// A bearer token (see `ramp token add`). Prefer --token-file: a token on the command
    /// line is visible to every user of the machine in the process list.
    #[arg(
        long,
        env = "RAMP_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub(crate) token: Option<String>,
    /// A file holding the bearer token (its first line; the file should be 0600).
    #[arg(long, env = "RAMP_TOKEN_FILE")]
    pub(crate) token_file: Option<PathBuf>,
    /// For an https:// server: CA certificates (PEM) its certificate must chain to (default:
    /// the system's roots).
    #[arg(long, env = "RAMP_CA_FILE")]
    pub(crate) ca_file: Option<PathBuf>,
}

/// An operator action on a rollout.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct ActionArgs {
    /// The rollout.
    pub(crate) name: String,
    /// Why (journaled; required for rollback and forced promotion).
    #[arg(long)]
    pub(crate) reason: Option<String>,
    /// Promote even though gates are not proven (needs --reason).
    #[arg(long)]
    pub(crate) force: bool,
    #[command(flatten)]
    pub(crate) server: ServerArgs,
}

/// Proxy limits, shared by `serve`.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct LimitArgs {
    /// Largest request head accepted, in bytes (larger: 431).
    #[arg(long, default_value_t = 16 * 1024)]
    pub(crate) max_header_bytes: usize,
    /// Most request headers accepted (more: 431).
    #[arg(long, default_value_t = 100)]
    pub(crate) max_headers: usize,
    /// Time a client has to send its request head (slow clients are cut off).
    #[arg(long, default_value = "10s")]
    pub(crate) header_read_timeout: String,
    /// Time to connect to an upstream (then 502).
    #[arg(long, default_value = "2s")]
    pub(crate) connect_timeout: String,
    /// Time to wait for an upstream's response head after the upload ended (then 504).
    #[arg(long, default_value = "30s")]
    pub(crate) response_timeout: String,
    /// Longest pause inside an upstream's response body (then the response is cut off and
    /// counts as that upstream's error).
    #[arg(long, default_value = "30s")]
    pub(crate) upstream_body_timeout: String,
    /// Longest pause inside a client's request body (then 408; not the upstream's error).
    #[arg(long, default_value = "30s")]
    pub(crate) client_body_timeout: String,
    /// Longest a write to a client may stay blocked (a client that stopped reading).
    #[arg(long, default_value = "30s")]
    pub(crate) client_write_timeout: String,
    /// Close a client connection that starts no request for this long (HTTP/2: GOAWAY, open
    /// streams finish; idle HTTP/1 connections close at --header-read-timeout already).
    #[arg(long, default_value = "60s")]
    pub(crate) idle_timeout: String,
    /// Requests in flight toward one variant's upstream at most (its bulkhead).
    #[arg(long, default_value_t = 1_024)]
    pub(crate) variant_max_in_flight: usize,
    /// Requests waiting for a slot of that bulkhead at most (more: 503 for that variant).
    #[arg(long, default_value_t = 1_024)]
    pub(crate) variant_max_queued: usize,
    /// Longest a request waits for a slot of its variant's bulkhead (then 503).
    #[arg(long, default_value = "1s")]
    pub(crate) variant_queue_timeout: String,
    /// Most concurrent client connections.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) max_connections: usize,
    /// On shutdown, how long in-flight requests may take to finish.
    #[arg(long, default_value = "10s")]
    pub(crate) drain_timeout: String,
    /// Proxy worker threads, shared by every rollout's proxy (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub(crate) workers: usize,
}

#[derive(Subcommand)]
pub(crate) enum TokenCommand {
    /// Create a token with a role (viewer, operator, admin, ingest); prints it once. A running
    /// server accepts it at once.
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
    /// List the tokens' names and roles (never the tokens or their hashes).
    List {
        /// The journal whose tokens file to use.
        #[arg(long, default_value = "ramp.db")]
        db: PathBuf,
        /// Token hashes file (default: the --db path with `.tokens` appended).
        #[arg(long)]
        tokens: Option<PathBuf>,
    },
    /// Revoke a token by name; a running server refuses it from its next request.
    Revoke {
        /// The token's name.
        name: String,
        /// The journal whose tokens file to use.
        #[arg(long, default_value = "ramp.db")]
        db: PathBuf,
        /// Token hashes file (default: the --db path with `.tokens` appended).
        #[arg(long)]
        tokens: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub(crate) enum PlanCommand {
    /// Validate a plan and print it as a table.
    Check {
        /// The plan file.
        plan: PathBuf,
        /// Total requests per second: show how much traffic and time each gate needs.
        #[arg(long)]
        rps: Option<f64>,
    },
}

/// `ramp serve` options.
#[derive(clap::Args, Debug)]
pub(crate) struct ServeArgs {
    /// Plan files to start (rollouts already in the journal resume by themselves).
    #[arg(long)]
    pub(crate) plan: Vec<PathBuf>,
    /// Where the proxy listens (for a single --plan; otherwise the plan's [proxy] listen).
    #[arg(long)]
    pub(crate) listen: Option<std::net::SocketAddr>,
    /// The journal (SQLite). Every decision, signal and window is written here first.
    #[arg(long, default_value = "ramp.db")]
    pub(crate) db: PathBuf,
    /// Where incident reviews and final reports are written when a rollout rolls back or
    /// completes (Markdown and HTML). Default: the --db path with `.reports` appended.
    #[arg(long, value_name = "DIR")]
    pub(crate) reports: Option<PathBuf>,
    /// Where the control API listens.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub(crate) api: std::net::SocketAddr,
    /// Serve the API over TLS with this certificate chain (PEM; needs --api-tls-key).
    /// Reloaded when the file changes or on SIGHUP.
    #[arg(long, requires = "api_tls_key")]
    pub(crate) api_tls_cert: Option<PathBuf>,
    /// The API certificate's private key (PEM).
    #[arg(long, requires = "api_tls_cert")]
    pub(crate) api_tls_key: Option<PathBuf>,
    /// Require API clients to present a certificate that chains to these CAs (PEM).
    #[arg(long, requires = "api_tls_cert")]
    pub(crate) api_client_ca: Option<PathBuf>,
    /// Serve /metrics without a token.
    #[arg(long)]
    pub(crate) open_metrics: bool,
    /// Addresses a rollout created over the API may listen on besides loopback (ADDRESS or
    /// ADDRESS/PREFIX, repeatable or comma-separated; `0.0.0.0` allows every interface).
    #[arg(long, value_delimiter = ',')]
    pub(crate) allow_listen: Vec<String>,
    /// Upstreams a rollout created over the API may proxy to (HOST, *.DOMAIN, ADDRESS/PREFIX,
    /// each optionally :PORT; repeatable or comma-separated). Without it, any.
    #[arg(long, value_delimiter = ',')]
    pub(crate) allow_upstream: Vec<String>,
    /// Log every API request (masked path, status, latency, token name; never tokens or
    /// bodies) to stderr.
    #[arg(long)]
    pub(crate) api_log: bool,
    /// Most API connections open at once (others wait); each must send its request head
    /// within 10 s and idle connections close after 10 s.
    #[arg(long, default_value_t = 256)]
    pub(crate) api_max_connections: usize,
    /// Token hashes file (default: the --db path with `.tokens` appended). Re-read when it
    /// changes.
    #[arg(long)]
    pub(crate) tokens: Option<PathBuf>,
    /// Run phase durations N times faster (demos, tests); evidence still comes from real requests.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) time_scale: f64,
    /// Log every request (method, masked path, status, variant, latency; never bodies) to stderr.
    #[arg(long)]
    pub(crate) access_log: bool,
    /// Write the access log to this file instead (created 0600, rotated by size; implies
    /// --access-log). Requests never wait for it: lines it cannot take in time are dropped and
    /// counted in /metrics (ramp_access_log_dropped_lines).
    #[arg(long)]
    pub(crate) access_log_file: Option<PathBuf>,
    /// Rotate the access-log file when it would grow past this many MiB.
    #[arg(long, default_value_t = 100)]
    pub(crate) access_log_max_mib: u64,
    /// Rotated access-log files kept (FILE.1 … FILE.N).
    #[arg(long, default_value_t = 5)]
    pub(crate) access_log_keep: u32,
    /// Add `x-ramp-variant: stable|canary` to responses.
    #[arg(long)]
    pub(crate) variant_header: bool,
    /// Exit when every rollout has completed, rolled back or is holding.
    #[arg(long)]
    pub(crate) exit_on_end: bool,
    /// Keep analysis windows in the journal this long (plan time); the rollout's evidence is
    /// kept in its state either way.
    #[arg(long, default_value = "30d")]
    pub(crate) window_retention: String,
    #[command(flatten)]
    pub(crate) limits: LimitArgs,
}

/// `ramp demo` options.
#[derive(clap::Args, Debug)]
pub(crate) struct DemoArgs {
    /// Make the canary start failing at this point of the plan, e.g. 50% (day 2 of 3).
    #[arg(long)]
    pub(crate) canary_fails_at: Option<String>,
    /// Share of requests the failing canary answers with 500.
    #[arg(long, default_value = "5%")]
    pub(crate) canary_error_rate: String,
    /// A named scenario instead: healthy, error-spike, latency-regression.
    #[arg(long)]
    pub(crate) scenario: Option<String>,
    /// Real seconds for the whole plan.
    #[arg(long, default_value_t = 60.0)]
    pub(crate) seconds: f64,
    /// Requests per second from the load generator.
    #[arg(long, default_value_t = 4000.0)]
    pub(crate) rps: f64,
    /// Distinct virtual users.
    #[arg(long, default_value_t = 5000)]
    pub(crate) users: u32,
    /// Print progress lines instead of redrawing a live view.
    #[arg(long)]
    pub(crate) plain: bool,
    /// Where the final report and the incident review are written (Markdown and HTML).
    #[arg(long, default_value = "ramp-demo-reports")]
    pub(crate) reports: std::path::PathBuf,
    /// Also send every notice to this webhook (signed when RAMP_WEBHOOK_SECRET is set).
    #[arg(long, value_name = "URL")]
    pub(crate) webhook: Option<String>,
    /// Also e-mail every notice through this SMTP server (HOST:PORT, no TLS: a local relay
    /// such as `python3 -m aiosmtpd -n -l 127.0.0.1:2525`).
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) smtp: Option<String>,
    /// The e-mail's recipients (repeat for more).
    #[arg(long, value_name = "ADDRESS")]
    pub(crate) mail_to: Vec<String>,
}
