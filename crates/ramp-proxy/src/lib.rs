//! The built-in reverse proxy: sends each request to the stable or the canary upstream by the
//! rollout's current share and the request's cohort key, and records what each variant's users
//! experienced.
//!
//! # Request path
//!
//! For every request the proxy finds the cohort key (a header, a cookie or the client address,
//! as the plan's `[cohort]` says), routes it with [`Routing::route`] (`bucket(salt, key) <
//! share`; requests without a key go to stable unless the plan says `unkeyed = "client_ip"`),
//! forwards it to that upstream with the body streaming both ways, and records the outcome
//! into the [`Recorder`]'s per-variant atomic counters. No lock is taken and no store is
//! touched; the share is one atomic, so [`Routing::set_share`] applies to the very next
//! request.
//!
//! # Protocol
//!
//! * Clients: HTTP/1.1 (keep-alive) and HTTP/2 — over cleartext with prior knowledge (h2c),
//!   detected per connection, or over TLS ([`tls`]: TLS 1.2 and 1.3 only, ALPN `h2` and
//!   `http/1.1`, optional client certificates). HTTP/1.1 upgrades (WebSocket) are proxied:
//!   the handshake goes to the routed variant, and on its 101 the two connections become one
//!   tunnel that stays with that variant whatever the share does later; the request counts
//!   once, as a success, at the handshake. (WebSocket over HTTP/2, RFC 8441, is not.)
//! * Upstreams: HTTP/1.1 over pooled keep-alive connections, one pool per variant and worker,
//!   to `http://host:port[/prefix]` or `https://host:port[/prefix]` (verified against the
//!   system's roots or the plan's CA file, SNI, optional client certificate: [`tls`]); the
//!   request's path and query are appended to the prefix. A certificate that does not verify
//!   fails the connection (502, a connect failure of that variant).
//! * Strictness (RFC 9112, RFC 9110): requests with `chunked` applied twice, without `Host`
//!   (HTTP/1.1), with more than one `Host` or an invalid one, with an authority-form target,
//!   or with the cohort header more than once are answered 400 and never forwarded. A request
//!   with both `content-length` and `transfer-encoding` is read as chunked with the length
//!   dropped and its connection closed after the answer (hyper's parser; RFC 9112 6.3). An
//!   upstream response with both loses its `content-length`, so the body is never cut short.
//! * Headers: hop-by-hop headers (`connection` and the headers it names, `keep-alive`,
//!   `proxy-connection`, `te`, `trailer`, `transfer-encoding`, `upgrade`,
//!   `proxy-authenticate`, `proxy-authorization`) are removed both ways. Upstream requests get
//!   `x-forwarded-for` (the client address appended to any existing list), `x-forwarded-proto`
//!   (`https` when the client spoke TLS to the proxy, else `http`), `x-forwarded-host` (the
//!   client's `Host`, replacing any sent by the client) and `forwarded:
//!   for=..;proto=..;host=..` (appended to any existing list). Behind a load balancer,
//!   `trusted_proxies` ([`client_addr`]) names the peers whose `Forwarded` /
//!   `X-Forwarded-For` are believed: the client is then the first untrusted address from the
//!   right (for the `client_ip` cohort key and `unkeyed = "client_ip"`), and their
//!   `X-Forwarded-Proto` is passed on instead of this hop's scheme; from anyone else these
//!   headers are ignored. With `proxy_protocol` every connection must start with a PROXY
//!   protocol v1 or v2 header (from a trusted proxy, when any are named), whose source address
//!   is the connection's client. `Host` becomes the upstream's
//!   own authority, like nginx's default. Responses can carry `x-ramp-variant:
//!   stable|canary` ([`ProxyConfig::variant_header`]).
//!
//! # What is recorded
//!
//! A request is recorded once, when its response **ends**, by the core's table
//! ([`ramp_core::evidence::class`]). Per variant: every forwarded request; errors (5xx
//! answers, upstream connect failures — the client gets 502 —, broken upstream connections —
//! 502 —, upstream timeouts — 504 —, a response body that the upstream resets or lets stall
//! after its head, whatever its status, and requests the variant's bulkhead refused — 503);
//! successes (2xx, 3xx that reached their last byte); rate-limit hits (429); auth failures
//! (401, 403); other statuses count only as requests. Latency runs from the request received
//! to the response head by default (the first byte; the body's own pace is bounded by
//! `upstream_body_timeout`), or to the body's last byte when the plan says `[analysis]
//! latency = "last_byte"`. Distinct users are the cohort keys (XXH3-64) in a HyperLogLog.
//! What the client does is never the upstream's fault: a client that aborts or stalls its
//! upload is answered 400 or 408 and counted as a request only; a client that goes away
//! before the end is recorded (and logged) as status 499 — a request, neither error nor
//! success — with the latency it waited (a 5xx head stays an error). Requests refused before
//! routing (400, 431, unsupported `CONNECT`) are not recorded. Canary health probes that find
//! it down are recorded as failed probes, failed attempts for its error rate (see [`health`]).
//!
//! # Limits ([`Limits`])
//!
//! * Request head larger than `max_header_bytes` or with more than `max_headers` fields → 431
//!   (HTTP/1 through hyper's parser and the proxy's own check; HTTP/2 through
//!   `SETTINGS_MAX_HEADER_LIST_SIZE` and the same check).
//! * `header_read_timeout`: an HTTP/1 request head must arrive completely within it (the clock
//!   starts when the proxy starts waiting for a head, so it is also the keep-alive idle
//!   timeout); a new connection of either protocol must deliver its first request (its TLS
//!   handshake included) within it. Slow clients are disconnected without an answer.
//! * Every other wait is bounded too: `connect_timeout` to an upstream, its TLS handshake
//!   included → 502 (an upstream that stops taking an upload counts against
//!   `response_timeout` → 504); `response_timeout`, from the end of the upload to the response head →
//!   504 (an upload in progress never counts against the upstream); `upstream_body_timeout`
//!   between two pieces of the response body → the response is cut off, an error of that
//!   variant; `client_body_timeout` between two pieces of the request body → 408, not the
//!   upstream's error; `client_write_timeout` for a client that stops reading → the
//!   connection closes; `idle_timeout` without a new request → the connection closes
//!   gracefully (HTTP/2: GOAWAY, and pings at that interval drop peers that stopped
//!   answering).
//! * **Bulkheads**: each variant has at most `variant_max_in_flight` requests toward its
//!   upstream and `variant_max_queued` more waiting (at most `variant_queue_timeout`) for a
//!   slot; beyond that 503, counted as that variant's error. A canary that hangs fills its
//!   own bulkhead and its users get fast 503s; stable users never wait behind it
//!   ([`ProxyHandle::bulkheads`]).
//! * `max_connections` client connections served at once, by one semaphore shared by all
//!   workers: a worker that accepts a connection over the limit holds it, unserved, and accepts
//!   nothing more until a slot frees, so further connections wait in the kernel's listen
//!   backlog (at most one held connection per worker beyond the limit); none is accepted and
//!   then dropped (see [`listen`]).
//! * [`ProxyHandle::shutdown`] stops accepting, lets in-flight requests finish for up to
//!   `drain_timeout` (idle keep-alive connections close at once, HTTP/2 clients get GOAWAY),
//!   then closes what is left.
//!
//! # Threads
//!
//! [`Workers`] is a pool of event-loop threads (one per core by default), each with its own
//! current-thread runtime. Every proxy started on the pool gets one `SO_REUSEPORT` listener and
//! one upstream connection pool *per worker*, so a request never crosses threads; the threads
//! themselves are shared by all the rollouts of a server, so a rollout costs listeners and
//! tasks, not threads.

mod access_log;
mod body;
mod bulkhead;
pub mod client_addr;
mod forward;
pub mod health;
pub mod listen;
pub mod pan;
mod recorder;
mod routing;
pub mod tls;

pub use access_log::{AccessLog, LogFile};
pub use health::{BackendHealth, HealthSnapshot, HealthState};
pub use pan::mask_pans;
pub use recorder::{Recorder, user_hash};
pub use routing::Routing;

use hyper::Uri;
use hyper::header::HeaderName;
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use ramp_core::cohort::{ShareBp, Variant};
use ramp_core::plan::{Cohort, CohortKey, ListenerTls, Plan, UnkeyedRoute, Upstreams};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

/// Longest wait for the access-log writer to flush at shutdown.
const LOG_FLUSH_LIMIT: Duration = Duration::from_secs(5);

/// Protective limits and timeouts (see the module docs for what each one does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head (request line and header fields), bytes. Default 16 KiB.
    pub max_header_bytes: usize,
    /// Most header fields in a request. Default 100.
    pub max_headers: usize,
    /// Time allowed for a request head to arrive. Default 10 s.
    pub header_read_timeout: Duration,
    /// Time allowed to connect to an upstream. Default 2 s.
    pub connect_timeout: Duration,
    /// Time allowed from the end of the upload to the upstream's response head. Default 30 s.
    pub response_timeout: Duration,
    /// Longest pause between two pieces of an upstream's response body. Default 30 s.
    pub upstream_body_timeout: Duration,
    /// Longest pause between two pieces of a client's request body. Default 30 s.
    pub client_body_timeout: Duration,
    /// Longest a write to a client may stay blocked (a client that stopped reading). Default
    /// 30 s.
    pub client_write_timeout: Duration,
    /// A client connection that starts no request for this long is closed gracefully
    /// (HTTP/2 GOAWAY; HTTP/1 keep-alive idles out at `header_read_timeout`). Default 60 s.
    pub idle_timeout: Duration,
    /// Requests in flight toward one variant's upstream at most. Default 1,024.
    pub variant_max_in_flight: usize,
    /// Requests waiting for one of those slots at most (more: 503). Default 1,024.
    pub variant_max_queued: usize,
    /// Longest wait for a slot (then 503). Default 1 s.
    pub variant_queue_timeout: Duration,
    /// Most client connections open at once. Default 10,000.
    pub max_connections: usize,
    /// How long shutdown waits for in-flight requests. Default 10 s.
    pub drain_timeout: Duration,
}

impl Limits {
    /// What these limits mean for each client connection.
    fn connections(&self) -> listen::ConnLimits {
        listen::ConnLimits {
            protocols: listen::Protocols::Http1AndH2c,
            header_read_timeout: self.header_read_timeout,
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
            write_timeout: Some(self.client_write_timeout),
            drain_timeout: self.drain_timeout,
            idle_timeout: self.idle_timeout,
            // Users who send their request at once are served ahead of connections that say
            // nothing, whoever opened those.
            evict_silent: true,
            proxy_protocol: None,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            header_read_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(30),
            upstream_body_timeout: Duration::from_secs(30),
            client_body_timeout: Duration::from_secs(30),
            client_write_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            variant_max_in_flight: 1_024,
            variant_max_queued: 1_024,
            variant_queue_timeout: Duration::from_secs(1),
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Everything the proxy needs.
#[derive(Debug)]
pub struct ProxyConfig {
    /// Address to listen on (port 0 picks a free port; see [`ProxyHandle::local_addr`]).
    pub listen: SocketAddr,
    /// The two upstreams and their health checks.
    pub upstreams: Upstreams,
    /// Where the cohort key comes from and the bucketing salt.
    pub cohort: Cohort,
    /// The plan's latency thresholds in µs ([`ramp_core::plan::Plan::latency_thresholds_us`]).
    pub latency_thresholds_us: Vec<u64>,
    /// Latency runs to the last byte of the response instead of its head (the plan's
    /// `[analysis] latency = "last_byte"`).
    pub latency_to_last_byte: bool,
    /// Limits and timeouts.
    pub limits: Limits,
    /// Whether responses carry `x-ramp-variant: stable|canary`.
    pub variant_header: bool,
    /// Where to write the access log, if anywhere.
    pub access_log: Option<AccessLog>,
    /// TLS on the listener (the plan's `[proxy.tls]`); `None`: cleartext.
    pub listen_tls: Option<ListenerTls>,
    /// Where the certificates in use are listed (and reloaded from).
    pub certificates: Arc<tls::Certificates>,
    /// Who the certificates belong to in that list (`rollout NAME`).
    pub owner: String,
    /// Peers whose forwarding headers (and PROXY headers) are believed.
    pub trusted_proxies: client_addr::TrustedProxies,
    /// Every connection starts with a PROXY protocol header.
    pub proxy_protocol: bool,
}

impl ProxyConfig {
    /// The configuration a plan asks for: its upstreams, cohort and latency thresholds, with
    /// default limits, no `x-ramp-variant` header and no access log.
    pub fn for_plan(listen: SocketAddr, plan: &Plan) -> Result<Self, ProxyError> {
        Ok(ProxyConfig {
            listen,
            upstreams: plan.upstreams.clone().ok_or(ProxyError::NoUpstreams)?,
            cohort: plan.cohort.clone(),
            latency_thresholds_us: plan.latency_thresholds_us(),
            latency_to_last_byte: plan.analysis.latency == ramp_core::plan::LatencyTo::LastByte,
            limits: Limits::default(),
            variant_header: false,
            access_log: None,
            listen_tls: plan.listen_tls.clone(),
            certificates: tls::Certificates::new(),
            owner: format!("rollout {}", plan.name),
            trusted_proxies: client_addr::TrustedProxies::parse(&plan.trusted_proxies)
                .map_err(ProxyError::TrustedProxy)?,
            proxy_protocol: plan.proxy_protocol,
        })
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The plan has no `[upstreams]`.
    #[error("the plan has no [upstreams] table: the proxy needs stable and canary URLs")]
    NoUpstreams,
    /// An upstream URL is not `http[s]://host[:port][/prefix]`.
    #[error("{which} upstream {url:?}: {reason} (expected http://host:port or https://host:port)")]
    BadUpstream {
        /// `stable` or `canary`.
        which: &'static str,
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The health-check path is not a valid absolute path.
    #[error("health path {0:?} is not a valid absolute path (e.g. \"/health\")")]
    BadHealthPath(String),
    /// The cohort header name is not a valid HTTP header name.
    #[error("cohort header {0:?} is not a valid header name")]
    BadCohortHeader(String),
    /// The cohort cookie name is empty or contains characters cookies cannot name.
    #[error("cohort cookie {0:?} is not a valid cookie name")]
    BadCohortCookie(String),
    /// The plan asks for a bucketing formula this proxy does not implement.
    #[error(
        "bucketing formula version {0} is not supported (this proxy implements version {supported})",
        supported = ramp_core::cohort::FORMULA_VERSION
    )]
    UnsupportedFormula(u32),
    /// A limit is out of range.
    #[error("invalid limit: {0}")]
    BadLimit(&'static str),
    /// A background thread could not be started.
    #[error("cannot start the access-log writer: {0}")]
    AccessLog(std::io::Error),
    /// A worker thread or its event loop could not be started.
    #[error("cannot start a proxy worker: {0}")]
    Runtime(std::io::Error),
    /// The worker pool has shut down.
    #[error("the proxy workers have stopped")]
    WorkersStopped,
    /// A trusted-proxy entry is not a network.
    #[error("trusted_proxies: {0}")]
    TrustedProxy(client_addr::CidrError),
    /// TLS material could not be loaded.
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
}

/// The upstream HTTP client type: HTTP, or HTTPS through rustls.
pub(crate) type UpstreamClient<B> = Client<Bounded, B>;

/// The upstream connector with one deadline over the TCP connect *and* the TLS handshake
/// (`connect_timeout`): an upstream that accepts and then never speaks TLS is a connect
/// failure (502), not a wait for the response timeout.
#[derive(Clone, Debug)]
pub(crate) struct Bounded {
    inner: HttpsConnector<HttpConnector>,
    limit: Duration,
}

/// What the connector yields.
type Connected = <HttpsConnector<HttpConnector> as tower_service::Service<Uri>>::Response;

impl tower_service::Service<Uri> for Bounded {
    type Response = Connected;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Connected, Self::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let limit = self.limit;
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(done) => done,
                Err(_) => {
                    Err("connecting to the upstream (TLS handshake included) timed out".into())
                }
            }
        })
    }
}

/// A parsed upstream base URL.
#[derive(Clone, Debug)]
pub(crate) struct Upstream {
    scheme: Scheme,
    authority: Authority,
    /// Path prefix without a trailing slash (often empty).
    prefix: String,
}

impl Upstream {
    fn parse(which: &'static str, url: &str) -> Result<Self, ProxyError> {
        let bad = |reason: &str| ProxyError::BadUpstream {
            which,
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") => Scheme::HTTPS,
            Some(other) => return Err(bad(&format!("scheme {other:?} is not supported"))),
            None => return Err(bad("no scheme")),
        };
        let authority = uri.authority().cloned().ok_or_else(|| bad("no host"))?;
        if authority.host().is_empty() {
            return Err(bad("no host"));
        }
        if authority.as_str().contains('@') {
            return Err(bad("user info is not supported"));
        }
        if uri.query().is_some() {
            return Err(bad("a query is not allowed"));
        }
        let prefix = uri.path().trim_end_matches('/').to_owned();
        Ok(Upstream {
            scheme,
            authority,
            prefix,
        })
    }

    /// Whether this upstream is reached over TLS.
    pub(crate) fn is_https(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }

    /// The upstream URI for a request's path and query.
    fn uri(&self, path_and_query: Option<&PathAndQuery>) -> Result<Uri, hyper::http::Error> {
        let builder = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone());
        if self.prefix.is_empty() {
            match path_and_query {
                Some(pq) => builder.path_and_query(pq.clone()),
                None => builder.path_and_query("/"),
            }
            .build()
        } else {
            let pq = path_and_query.map_or("/", PathAndQuery::as_str);
            builder
                .path_and_query(format!("{}{}", self.prefix, pq))
                .build()
        }
    }

    /// The upstream URI for a path (health checks).
    pub(crate) fn uri_for(&self, path: &str) -> Option<Uri> {
        let pq: PathAndQuery = path.parse().ok()?;
        self.uri(Some(&pq)).ok()
    }
}

/// Where the cohort key comes from, prepared for the request path.
#[derive(Clone, Debug)]
pub(crate) enum KeySource {
    Header(HeaderName),
    Cookie(String),
    ClientIp,
}

/// Everything a request needs, shared by all connections.
pub(crate) struct Shared {
    pub(crate) routing: Arc<Routing>,
    pub(crate) recorder: Arc<Recorder>,
    pub(crate) stable_client: UpstreamClient<body::Upload>,
    pub(crate) canary_client: UpstreamClient<body::Upload>,
    pub(crate) stable_bulkhead: Arc<bulkhead::Bulkhead>,
    pub(crate) canary_bulkhead: Arc<bulkhead::Bulkhead>,
    pub(crate) stable: Upstream,
    pub(crate) canary: Upstream,
    pub(crate) key: KeySource,
    pub(crate) unkeyed_by_ip: bool,
    pub(crate) latency_to_last_byte: bool,
    /// Peers whose forwarding headers are believed (empty: nobody's).
    pub(crate) trusted: client_addr::TrustedProxies,
    pub(crate) limits: Limits,
    pub(crate) variant_header: bool,
    pub(crate) log: Option<access_log::LogSender>,
}

impl Shared {
    pub(crate) fn upstream(&self, variant: Variant) -> &Upstream {
        match variant {
            Variant::Stable => &self.stable,
            Variant::Canary => &self.canary,
        }
    }

    pub(crate) fn client(&self, variant: Variant) -> &UpstreamClient<body::Upload> {
        match variant {
            Variant::Stable => &self.stable_client,
            Variant::Canary => &self.canary_client,
        }
    }

    pub(crate) fn bulkhead(&self, variant: Variant) -> &bulkhead::Bulkhead {
        match variant {
            Variant::Stable => &self.stable_bulkhead,
            Variant::Canary => &self.canary_bulkhead,
        }
    }
}

/// A running proxy.
pub struct ProxyHandle {
    /// The address actually bound.
    pub local_addr: SocketAddr,
    /// The traffic split; [`Routing::set_share`] applies to the next request.
    pub routing: Arc<Routing>,
    /// Per-variant outcomes; the controller calls [`Recorder::take_window`] every analysis
    /// interval.
    pub recorder: Arc<Recorder>,
    /// The upstreams' health from the active checks.
    pub health: Arc<HealthState>,
    stop: watch::Sender<bool>,
    accept_loops: Vec<JoinHandle<()>>,
    health_tasks: Vec<JoinHandle<()>>,
    log: Option<access_log::LogCloser>,
    log_dropped: Arc<AtomicU64>,
    held: Box<Held>,
}

/// What a proxy holds besides its tasks.
struct Held {
    bulkheads: [Arc<bulkhead::Bulkhead>; 2],
    /// The TLS material in use: listed in the inventory and reloaded while the proxy runs.
    _tls: [Option<Arc<dyn std::any::Any + Send + Sync>>; 3],
}

impl std::fmt::Debug for ProxyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyHandle")
            .field("local_addr", &self.local_addr)
            .field("share", &self.routing.share())
            .finish_non_exhaustive()
    }
}

impl ProxyHandle {
    /// Requests in flight toward each variant's upstream now, and requests its bulkhead
    /// refused (503) since start: `[(stable in flight, refused), (canary in flight, refused)]`.
    pub fn bulkheads(&self) -> [(usize, u64); 2] {
        let [s, c] = &self.held.bulkheads;
        [(s.in_flight(), s.rejected()), (c.in_flight(), c.rejected())]
    }

    /// Access-log lines dropped because the writer could not keep up.
    pub fn access_log_dropped(&self) -> u64 {
        self.log_dropped.load(Ordering::Relaxed)
    }

    /// Stops accepting connections, lets in-flight requests finish (up to the drain timeout;
    /// whatever is still open then is closed), stops the health checks and flushes the access
    /// log. Dropping the handle without calling this also stops the proxy, without waiting.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.accept_loops {
            let _ = task.await;
        }
        for task in self.health_tasks {
            let _ = task.await;
        }
        if let Some(log) = self.log {
            log.close(LOG_FLUSH_LIMIT).await;
        }
    }
}

fn validate(config: &ProxyConfig) -> Result<(KeySource, Upstream, Upstream), ProxyError> {
    let limits = &config.limits;
    if limits.max_connections == 0 {
        return Err(ProxyError::BadLimit("max_connections must be at least 1"));
    }
    if limits.max_connections > Semaphore::MAX_PERMITS {
        return Err(ProxyError::BadLimit("max_connections is too large"));
    }
    if limits.variant_max_in_flight == 0 || limits.variant_max_in_flight > Semaphore::MAX_PERMITS {
        return Err(ProxyError::BadLimit(
            "variant_max_in_flight must be between 1 and 2^61",
        ));
    }
    if limits.max_headers == 0 {
        return Err(ProxyError::BadLimit("max_headers must be at least 1"));
    }
    if limits.max_header_bytes == 0 {
        return Err(ProxyError::BadLimit("max_header_bytes must be at least 1"));
    }
    if config.cohort.formula != ramp_core::cohort::FORMULA_VERSION {
        return Err(ProxyError::UnsupportedFormula(config.cohort.formula));
    }
    let key = match &config.cohort.key {
        CohortKey::Header(name) => KeySource::Header(
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ProxyError::BadCohortHeader(name.clone()))?,
        ),
        CohortKey::Cookie(name) => {
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
            if !valid {
                return Err(ProxyError::BadCohortCookie(name.clone()));
            }
            KeySource::Cookie(name.clone())
        }
        CohortKey::ClientIp => KeySource::ClientIp,
    };
    let stable = Upstream::parse("stable", &config.upstreams.stable)?;
    let canary = Upstream::parse("canary", &config.upstreams.canary)?;
    if let Some(path) = &config.upstreams.health_path
        && (!path.starts_with('/') || stable.uri_for(path).is_none())
    {
        return Err(ProxyError::BadHealthPath(path.clone()));
    }
    Ok((key, stable, canary))
}

/// Fails with `AddrInUse` if a socket listens on `addr` (with or without SO_REUSEPORT).
fn probe_free(addr: SocketAddr) -> std::io::Result<()> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // A connection of an earlier process in TIME_WAIT does not make the address taken.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())
}

/// A listening socket with SO_REUSEADDR and SO_REUSEPORT, so each worker can have its own.
fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// The connector for one upstream: TCP, then TLS when the upstream is `https://`, verified by
/// `tls`; both within `connect_timeout`.
pub(crate) fn connector(
    upstream: &Upstream,
    tls: Option<&tls::UpstreamTls>,
    connect_timeout: Duration,
) -> Bounded {
    Bounded {
        inner: tls_connector(upstream, tls, connect_timeout),
        limit: connect_timeout,
    }
}

fn tls_connector(
    upstream: &Upstream,
    tls: Option<&tls::UpstreamTls>,
    connect_timeout: Duration,
) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.enforce_http(false);
    match (upstream.is_https(), tls) {
        (true, Some(tls)) => {
            let builder = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls.client_config())
                .https_only();
            let builder = match tls.server_name() {
                Some(name) => builder.with_server_name_resolver(
                    hyper_rustls::FixedServerNameResolver::new(name.clone()),
                ),
                None => builder,
            };
            builder.enable_http1().wrap_connector(http)
        }
        // A cleartext upstream: the TLS configuration is never used (only `http://` URIs are
        // sent through this connector, and `https_or_http` would refuse nothing else).
        _ => hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(
                rustls::ClientConfig::builder_with_provider(tls::provider())
                    .with_safe_default_protocol_versions()
                    .map(|b| {
                        b.with_root_certificates(rustls::RootCertStore::empty())
                            .with_no_client_auth()
                    })
                    .unwrap_or_else(|_| unreachable_config()),
            )
            .https_or_http()
            .enable_http1()
            .wrap_connector(http),
    }
}

/// ring supports the safe default versions; this is never reached.
fn unreachable_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// The upstream client for proxied requests: pooled keep-alive HTTP/1.1 connections.
fn upstream_client(
    upstream: &Upstream,
    tls: Option<&tls::UpstreamTls>,
    limits: &Limits,
) -> UpstreamClient<body::Upload> {
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector(upstream, tls, limits.connect_timeout))
}

/// Loads the TLS material a proxy needs: its listener's and its `https://` upstreams'.
#[allow(clippy::type_complexity)]
fn load_tls(
    config: &ProxyConfig,
    stable: &Upstream,
    canary: &Upstream,
) -> Result<
    (
        Option<Arc<tls::ServerTls>>,
        Option<Arc<tls::UpstreamTls>>,
        Option<Arc<tls::UpstreamTls>>,
    ),
    ProxyError,
> {
    let listener = match &config.listen_tls {
        Some(t) => Some(tls::ServerTls::load(
            tls::ListenerTlsFiles {
                cert: t.cert.clone().into(),
                key: t.key.clone().into(),
                client_ca: t.client_ca.clone().map(Into::into),
                client_auth: if t.client_cert_required {
                    tls::ClientAuth::Required
                } else {
                    tls::ClientAuth::Optional
                },
            },
            tls::Alpn::H2AndHttp1,
            &config.owner,
            &config.certificates,
        )?),
        None => None,
    };
    let upstream_tls = |which: &'static str,
                        upstream: &Upstream,
                        t: &ramp_core::plan::UpstreamTls|
     -> Result<Option<Arc<tls::UpstreamTls>>, ProxyError> {
        if !upstream.is_https() {
            return Ok(None);
        }
        Ok(Some(tls::UpstreamTls::load(
            tls::UpstreamTlsFiles {
                ca_file: t.ca_file.clone().map(Into::into),
                client_cert: t.client_cert.clone().map(Into::into),
                client_key: t.client_key.clone().map(Into::into),
                server_name: t.server_name.clone(),
            },
            which,
            &config.owner,
            &config.certificates,
        )?))
    };
    let s = upstream_tls("stable", stable, &config.upstreams.stable_tls)?;
    let c = upstream_tls("canary", canary, &config.upstreams.canary_tls)?;
    Ok((listener, s, c))
}

/// The event-loop threads every proxy of a server runs on (see the module docs). Dropping the
/// pool stops its threads once the proxies on it have shut down.
#[derive(Debug)]
pub struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    /// Dropping one of these ends its worker's event loop.
    park: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// `n` threads (0: one per core), each running a current-thread runtime.
    pub fn new(n: usize) -> Result<Self, ProxyError> {
        let n = match n {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mut pool = Workers {
            handles: Vec::with_capacity(n),
            park: Vec::with_capacity(n),
            threads: Vec::with_capacity(n),
        };
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(ProxyError::Runtime)?;
            let (park, parked) = tokio::sync::oneshot::channel::<()>();
            let handle = rt.handle().clone();
            let thread = std::thread::Builder::new()
                .name(format!("ramp-proxy-{i}"))
                .spawn(move || {
                    rt.block_on(async move {
                        let _ = parked.await;
                    });
                })
                .map_err(ProxyError::Runtime)?;
            pool.handles.push(handle);
            pool.park.push(park);
            pool.threads.push(thread);
        }
        Ok(pool)
    }

    /// How many event-loop threads the pool has.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Always false: a pool has at least one thread.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.park.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Binds the listen address (one `SO_REUSEPORT` listener per worker) and starts the proxy: its
/// accept loops on `workers`, its health checks on the current runtime.
pub async fn start(
    config: ProxyConfig,
    initial_share: ShareBp,
    workers: &Workers,
) -> Result<ProxyHandle, ProxyError> {
    let (key, stable, canary) = validate(&config)?;
    let (listener_tls, stable_tls, canary_tls) = load_tls(&config, &stable, &canary)?;
    let bind_err = |source| ProxyError::Bind {
        addr: config.listen,
        source,
    };
    // SO_REUSEPORT lets any socket of this user with the option join the address, another
    // rollout's proxy (of this server or another) included, and the two would split its
    // traffic. So first check that nothing listens there: a socket without the option cannot
    // bind an address another socket listens on.
    if config.listen.port() != 0 {
        probe_free(config.listen).map_err(bind_err)?;
    }
    // One listener per worker on the same address: the kernel spreads connections over them.
    let first = bind_reuseport(config.listen).map_err(bind_err)?;
    let local_addr = first.local_addr().map_err(bind_err)?;
    let mut listeners = vec![first];
    for _ in 1..workers.len() {
        listeners.push(bind_reuseport(local_addr).map_err(bind_err)?);
    }

    let routing = Arc::new(Routing::new(&config.cohort.salt, initial_share));
    let recorder = Arc::new(Recorder::new(&config.latency_thresholds_us));
    let health = Arc::new(HealthState::new());
    let (log, log_closer, log_dropped) = match config.access_log {
        Some(log) => {
            let (sender, closer, dropped) =
                access_log::start(log).map_err(ProxyError::AccessLog)?;
            (Some(sender), Some(closer), dropped)
        }
        None => (None, None, Arc::new(AtomicU64::new(0))),
    };
    let (stop, stop_rx) = watch::channel(false);

    let mut health_tasks = Vec::new();
    if let Some(path) = &config.upstreams.health_path {
        let interval = Duration::from_millis(config.upstreams.health_interval);
        for (variant, upstream, tls) in [
            (Variant::Stable, &stable, &stable_tls),
            (Variant::Canary, &canary, &canary_tls),
        ] {
            health_tasks.push(tokio::spawn(health::run(
                variant,
                (upstream.clone(), tls.clone()),
                path.clone(),
                interval,
                health.clone(),
                recorder.clone(),
                stop_rx.clone(),
            )));
        }
    }

    let slots = Arc::new(Semaphore::new(config.limits.max_connections));
    let bulkhead = || {
        Arc::new(bulkhead::Bulkhead::new(
            config.limits.variant_max_in_flight,
            config.limits.variant_max_queued,
            config.limits.variant_queue_timeout,
        ))
    };
    let (stable_bulkhead, canary_bulkhead) = (bulkhead(), bulkhead());
    let mut accept_loops = Vec::with_capacity(workers.len());
    for (std_listener, handle) in listeners.into_iter().zip(&workers.handles) {
        let shared = Arc::new(Shared {
            routing: routing.clone(),
            recorder: recorder.clone(),
            stable_client: upstream_client(&stable, stable_tls.as_deref(), &config.limits),
            canary_client: upstream_client(&canary, canary_tls.as_deref(), &config.limits),
            stable_bulkhead: stable_bulkhead.clone(),
            canary_bulkhead: canary_bulkhead.clone(),
            stable: stable.clone(),
            canary: canary.clone(),
            key: key.clone(),
            unkeyed_by_ip: config.cohort.unkeyed == UnkeyedRoute::ClientIp,
            trusted: config.trusted_proxies.clone(),
            latency_to_last_byte: config.latency_to_last_byte,
            limits: config.limits.clone(),
            variant_header: config.variant_header,
            log: log.clone(),
        });
        let listener = {
            let _context = handle.enter();
            TcpListener::from_std(std_listener).map_err(bind_err)?
        };
        let mut limits = config.limits.connections();
        if config.proxy_protocol {
            limits.proxy_protocol = Some(Arc::new(config.trusted_proxies.clone()));
        }
        let slots = slots.clone();
        let stop_rx = stop_rx.clone();
        let tls = listener_tls.clone();
        let task = handle.spawn(async move {
            let make = move |info: listen::ConnInfo| {
                let ctx = Arc::new(forward::ConnCtx::new(shared.clone(), info));
                hyper::service::service_fn(move |req| {
                    let ctx = ctx.clone();
                    async move { forward::handle(&ctx, req).await }
                })
            };
            listen::serve(listener, slots, limits, tls, make, stop_rx).await;
        });
        accept_loops.push(task);
    }

    Ok(ProxyHandle {
        local_addr,
        routing,
        recorder,
        health,
        stop,
        accept_loops,
        health_tasks,
        log: log_closer,
        log_dropped,
        held: Box::new(Held {
            bulkheads: [stable_bulkhead, canary_bulkhead],
            _tls: [
                listener_tls.map(|t| t as Arc<dyn std::any::Any + Send + Sync>),
                stable_tls.map(|t| t as Arc<dyn std::any::Any + Send + Sync>),
                canary_tls.map(|t| t as Arc<dyn std::any::Any + Send + Sync>),
            ],
        }),
    })
}
