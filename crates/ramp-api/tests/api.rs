//! The HTTP API over real sockets against a fake control plane: the auth matrix, every
//! bad-input class, Alertmanager payloads in the documented webhook format, the metrics
//! exposition, property tests on arbitrary bodies, and the OpenAPI drift check.
// Tests bound their own waits and measure on the real clock; no decision reads it.
#![allow(clippy::disallowed_methods)]

use proptest::prelude::*;
use ramp_api::{
    ApiConfig, ControlError, JournalHealth, Recorded, Role, RolloutDetail, RolloutMetrics,
    Rollouts, TokenSource, Tokens,
};
use ramp_core::evidence::{Signal, VariantStats};
use ramp_core::plan::{PlanError, PlanErrors, Severity};
use ramp_core::rollout::Command;
use ramp_wire::v1::{
    self, BackendHealth, BoundSide, Event, EventKind, EventPage, JournalEntry, Outcome,
    RolloutStatus, VariantView, Verdict,
};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

// ---------------------------------------------------------------------------------------------
// The fake control plane

/// What the fake was asked to do.
#[derive(Clone, Debug, PartialEq)]
enum Call {
    Command(String, Command),
    Signal(String, Signal),
    Create(String),
    Retire(String),
}

struct FakeRollout {
    status: RolloutStatus,
    events: Vec<JournalEntry>,
    /// Signal keys counted (the real state machine keeps these in its journaled state).
    keys: BTreeSet<String>,
}

/// In-memory rollouts. Special names: `done` refuses every command (409), `down` has a broken
/// store (503), `slow` records signals only once `gate` gives a permit.
struct Fake {
    rollouts: Mutex<BTreeMap<String, FakeRollout>>,
    calls: Mutex<Vec<Call>>,
    gate: Semaphore,
    journal: Mutex<JournalHealth>,
}

const T0: u64 = 1_700_000_000_000;

fn verdict() -> Verdict {
    Verdict {
        criterion: "error_rate < 0.1%".into(),
        outcome: Outcome::Inconclusive,
        observed: Some(0.0005),
        bound: Some(0.002),
        bound_side: Some(BoundSide::Upper),
        events: 1,
        n: 2000,
        threshold: 0.001,
        needed: Some(995),
        explanation: "upper bound 0.2% not yet below 0.1%".into(),
        confidence: Some(0.95),
        detail: Some(v1::VerdictDetail::Rate {
            unit: "requests".into(),
        }),
        scope: Some("rollout".into()),
        clustered: Some(v1::Clustered {
            phi: 3.5,
            windows: 16,
            p_value: 0.001,
        }),
    }
}

fn status(name: &str, state: v1::Status) -> RolloutStatus {
    RolloutStatus {
        name: name.into(),
        started_at: Some(T0),
        listen: "127.0.0.1:8080".into(),
        tls: false,
        now: T0 + 60_000,
        origin: T0,
        status: state,
        health: v1::Health::Monitoring,
        phase: 0,
        phase_name: "canary".into(),
        share: 500,
        applied_share: Some(500),
        phase_elapsed: 60_000,
        phase_duration: 86_400_000,
        extended: false,
        canary: VariantView {
            rps: 10.0,
            requests: 600,
            error_rate: 0.001,
            success_rate: 0.999,
            rate_limit_rate: 0.0005,
            auth_failure_rate: 0.0002,
            p95_ms: Some(120.0),
            active_users: 40,
            health: Some(BackendHealth::Operational),
        },
        stable: VariantView::default(),
        verdicts: vec![verdict()],
        reason: None,
        why: None,
        ended: false,
        ended_at: None,
        retired: false,
        journal_error: None,
        channels: Vec::new(),
    }
}

fn stats(requests: u64, errors: u64, latencies_us: &[(u64, u64)]) -> VariantStats {
    let mut s = VariantStats::new(1);
    s.requests = requests;
    s.errors = errors;
    s.successes = requests - errors - 3;
    s.rate_limited = 2;
    s.auth_failures = 1;
    for &(us, n) in latencies_us {
        s.latency.record_n(us, n);
    }
    s
}

impl Fake {
    fn new(names: &[&str]) -> Arc<Self> {
        let mut rollouts = BTreeMap::new();
        for name in names {
            rollouts.insert(
                name.to_string(),
                FakeRollout {
                    status: status(name, v1::Status::Running),
                    events: (1..=5)
                        .map(|seq| JournalEntry {
                            seq,
                            event: Event {
                                at: T0 + seq,
                                phase: "canary".into(),
                                kind: EventKind::Started,
                            },
                        })
                        .collect(),
                    keys: BTreeSet::new(),
                },
            );
        }
        Arc::new(Fake {
            rollouts: Mutex::new(rollouts),
            calls: Mutex::new(Vec::new()),
            gate: Semaphore::new(0),
            journal: Mutex::new(JournalHealth::default()),
        })
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn signals(&self) -> Vec<(String, Signal)> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Signal(n, s) => Some((n, s)),
                _ => None,
            })
            .collect()
    }
}

fn plan_name(plan: &str) -> Option<String> {
    plan.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == "name").then(|| v.trim().trim_matches('"').to_string())
    })
}

impl Rollouts for Fake {
    fn journal(&self) -> JournalHealth {
        self.journal.lock().unwrap().clone()
    }

    fn list(&self) -> Vec<RolloutStatus> {
        let r = self.rollouts.lock().unwrap();
        r.values().map(|r| r.status.clone()).collect()
    }

    fn status(&self, name: &str) -> Option<RolloutStatus> {
        let r = self.rollouts.lock().unwrap();
        r.get(name).map(|r| r.status.clone())
    }

    async fn events(
        &self,
        name: &str,
        after: u64,
        limit: usize,
    ) -> Result<EventPage, ControlError> {
        if name == "down" {
            return Err(ControlError::Unavailable("disk I/O error".into()));
        }
        let r = self.rollouts.lock().unwrap();
        let rollout = r
            .get(name)
            .ok_or_else(|| ControlError::NotFound(name.into()))?;
        let events: Vec<JournalEntry> = rollout
            .events
            .iter()
            .filter(|e| e.seq > after)
            .take(limit)
            .cloned()
            .collect();
        let last = rollout.events.last().map_or(0, |e| e.seq);
        let next = events.last().map(|e| e.seq).filter(|&s| s < last);
        Ok(EventPage { events, next })
    }

    async fn command(&self, name: &str, command: Command) -> Result<RolloutStatus, ControlError> {
        self.calls
            .lock()
            .unwrap()
            .push(Call::Command(name.into(), command.clone()));
        if name == "down" {
            return Err(ControlError::Unavailable("disk I/O error".into()));
        }
        let mut r = self.rollouts.lock().unwrap();
        let rollout = r
            .get_mut(name)
            .ok_or_else(|| ControlError::NotFound(name.into()))?;
        if name == "done" {
            return Err(ControlError::Conflict(format!(
                "cannot {}: the rollout has completed",
                command.name()
            )));
        }
        rollout.status.status = match command {
            Command::Pause { .. } => v1::Status::Paused,
            Command::Rollback { .. } => v1::Status::RolledBack,
            _ => v1::Status::Running,
        };
        Ok(rollout.status.clone())
    }

    async fn signal(
        &self,
        name: &str,
        signal: Signal,
        key: Option<String>,
        from: String,
    ) -> Result<Recorded, ControlError> {
        if name == "slow" {
            self.gate.acquire().await.unwrap().forget();
        }
        if name == "down" {
            return Err(ControlError::Unavailable("disk I/O error".into()));
        }
        let mut r = self.rollouts.lock().unwrap();
        let rollout = r
            .get_mut(name)
            .ok_or_else(|| ControlError::NotFound(name.into()))?;
        let seq = rollout.events.len() as u64 + 1;
        let duplicate = key
            .as_ref()
            .is_some_and(|k| !rollout.keys.insert(k.clone()));
        rollout.events.push(JournalEntry {
            seq,
            event: Event {
                at: T0 + seq,
                phase: "canary".into(),
                kind: match key {
                    Some(key) if duplicate => EventKind::SignalRepeated {
                        key,
                        from: Some(from),
                    },
                    key => EventKind::SignalReceived {
                        signal: (&signal).into(),
                        from: Some(from),
                        key,
                    },
                },
            },
        });
        if duplicate {
            return Ok(Recorded {
                seq,
                duplicate: true,
            });
        }
        self.calls
            .lock()
            .unwrap()
            .push(Call::Signal(name.into(), signal));
        Ok(Recorded {
            seq,
            duplicate: false,
        })
    }

    async fn create(&self, plan_toml: &str) -> Result<RolloutStatus, ControlError> {
        self.calls
            .lock()
            .unwrap()
            .push(Call::Create(plan_toml.into()));
        if plan_toml.contains("error_rat ") {
            return Err(ControlError::InvalidPlan(PlanErrors {
                file: "<api>".into(),
                errors: vec![PlanError {
                    line: 3,
                    col: 1,
                    message: "unknown metric `error_rat`".into(),
                    help: Some("did you mean `error_rate`?".into()),
                    source_line: "error_rat < 1%".into(),
                }],
            }));
        }
        let Some(name) = plan_name(plan_toml) else {
            return Err(ControlError::InvalidPlan(PlanErrors {
                file: "<api>".into(),
                errors: vec![PlanError {
                    line: 1,
                    col: 1,
                    message: "missing `name`".into(),
                    help: None,
                    source_line: String::new(),
                }],
            }));
        };
        let mut r = self.rollouts.lock().unwrap();
        if r.contains_key(&name) {
            return Err(ControlError::AlreadyExists(name));
        }
        let status = status(&name, v1::Status::Running);
        r.insert(
            name,
            FakeRollout {
                status: status.clone(),
                events: Vec::new(),
                keys: BTreeSet::new(),
            },
        );
        Ok(status)
    }

    async fn retire(&self, name: &str) -> Result<RolloutStatus, ControlError> {
        self.calls.lock().unwrap().push(Call::Retire(name.into()));
        let mut r = self.rollouts.lock().unwrap();
        let rollout = r
            .get_mut(name)
            .ok_or_else(|| ControlError::NotFound(name.into()))?;
        if rollout.status.status != v1::Status::RolledBack {
            return Err(ControlError::Conflict(
                "the rollout has not ended: roll it back or let it complete first".into(),
            ));
        }
        rollout.status.retired = true;
        Ok(rollout.status.clone())
    }

    fn metrics(&self) -> Vec<RolloutMetrics> {
        let r = self.rollouts.lock().unwrap();
        r.values()
            .map(|r| RolloutMetrics {
                name: r.status.name.clone(),
                status: r.status.status,
                phase: 1,
                share_bp: 2000,
                stable: stats(1000, 2, &[(3_000, 500), (80_000, 490), (300_000, 10)]),
                canary: stats(
                    200,
                    4,
                    &[(3_000, 50), (80_000, 140), (300_000, 9), (15_000_000, 1)],
                ),
                detail: RolloutDetail {
                    phase_elapsed_ms: 90 * 60_000,
                    phase_duration_ms: 24 * 3_600_000,
                    backends: [
                        Some(v1::BackendHealth::Operational),
                        Some(v1::BackendHealth::Down),
                    ],
                    verdicts: vec![
                        ("error_rate < 0.1%".into(), false, v1::Outcome::Inconclusive),
                        ("p95_latency < 300ms".into(), false, v1::Outcome::Pass),
                    ],
                    triggers: vec![("error_rate > 1%".into(), 0.25, false)],
                    signals: ramp_core::evidence::SignalCounts {
                        pci_alerts: 1,
                        security: [0, 2, 0, 0],
                        bug_reports: 3,
                        feedback: 10,
                        feedback_positive: 7,
                    },
                    channels: vec![v1::ChannelView {
                        channel: "ops-hook".into(),
                        delivered: 12,
                        failed: 1,
                        retries: 3,
                        pending: 2,
                        error: None,
                    }],
                },
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Server and client

const VIEWER: &str = "ramp_viewer_token_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const OPERATOR: &str = "ramp_operator_token_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const ADMIN: &str = "ramp_admin_token_ccccccccccccccccccccccccccccccccccccccccccccccccccccccc";
const INGEST: &str = "ramp_ingest_token_ddddddddddddddddddddddddddddddddddddddddddddddddddddddd";
const LIMIT: usize = 16 * 1024;
/// The Alertmanager body limit of the test server (the default is 16 MiB).
const ALERT_LIMIT: usize = 4 << 20;

fn tokens() -> Tokens {
    let mut t = Tokens::new();
    t.add("vera", Role::Viewer, VIEWER);
    t.add("olivia", Role::Operator, OPERATOR);
    // Configured by hash, as a config file would.
    t.add_hashed("ada", Role::Admin, &Tokens::hash(ADMIN).to_uppercase())
        .unwrap();
    t.add("ingrid", Role::Ingest, INGEST);
    t
}

struct Server {
    addr: SocketAddr,
    fake: Arc<Fake>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(open_metrics: bool) -> Server {
        Server::with(Fake::new(&["demo", "done", "down", "slow"]), open_metrics).await
    }

    async fn with(fake: Arc<Fake>, open_metrics: bool) -> Server {
        let config = ApiConfig {
            tokens: TokenSource::fixed(tokens()),
            open_metrics,
            body_limit: LIMIT,
            alert_body_limit: ALERT_LIMIT,
            ..Default::default()
        };
        Server::with_config(fake, config).await
    }

    /// The fake with one rollout `demo`, behind a listener with these limits.
    async fn limited(limits: ramp_api::ApiLimits) -> Server {
        let config = ApiConfig {
            tokens: TokenSource::fixed(tokens()),
            limits,
            ..Default::default()
        };
        Server::with_config(Fake::new(&["demo"]), config).await
    }

    async fn with_config(fake: Arc<Fake>, config: ApiConfig) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(ramp_api::serve(
            listener,
            Arc::clone(&fake),
            config,
            stopped,
        ));
        Server {
            addr,
            fake,
            stop,
            task,
        }
    }

    async fn shutdown(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the server stops on shutdown")
            .unwrap();
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?} {}", self.status, self.text()))
    }

    /// The field names of a 400 "invalid request".
    fn fields(&self) -> BTreeSet<String> {
        assert_eq!(self.status, 400, "{}", self.text());
        let v = self.json();
        assert_eq!(v["error"], "invalid request", "{v}");
        v["fields"]
            .as_array()
            .unwrap_or_else(|| panic!("no fields: {v}"))
            .iter()
            .map(|f| {
                assert!(f["message"].as_str().is_some_and(|m| !m.is_empty()), "{f}");
                f["field"].as_str().unwrap().to_string()
            })
            .collect()
    }
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[derive(Clone)]
struct Req {
    method: &'static str,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Req {
    fn new(method: &'static str, path: &str) -> Req {
        Req {
            method,
            path: path.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }
    fn get(path: &str) -> Req {
        Req::new("GET", path)
    }
    fn post(path: &str) -> Req {
        Req::new("POST", path)
    }
    fn header(mut self, k: &str, v: &str) -> Req {
        self.headers.push((k.into(), v.into()));
        self
    }
    fn token(self, token: &str) -> Req {
        self.header("authorization", &format!("Bearer {token}"))
    }
    fn maybe_token(self, token: Option<&str>) -> Req {
        match token {
            Some(t) => self.token(t),
            None => self,
        }
    }
    fn body(mut self, content_type: &str, body: impl Into<Vec<u8>>) -> Req {
        self.body = body.into();
        self.header("content-type", content_type)
    }
    fn json(self, v: Value) -> Req {
        self.body("application/json", v.to_string())
    }

    async fn send(&self, addr: SocketAddr) -> Resp {
        let resp = raw(addr, self.head().as_bytes(), &self.body).await;
        // No request in this suite may cause a server error; 503 is the fake's broken store.
        assert!(
            resp.status < 500 || resp.status == 503,
            "{} {} -> {}: {}",
            self.method,
            self.path,
            resp.status,
            resp.text()
        );
        if resp.status >= 400 {
            let v = resp.json();
            assert!(v["error"].is_string(), "error bodies are JSON: {v}");
            assert!(
                resp.header("content-type")
                    .unwrap()
                    .starts_with("application/json")
            );
        }
        resp
    }

    fn head(&self) -> String {
        let mut head = format!(
            "{} {} HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-length: {}\r\n",
            self.method,
            self.path,
            self.body.len()
        );
        for (k, v) in &self.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        head
    }
}

/// One HTTP/1.1 exchange on a fresh connection (`connection: close`, read to the end).
async fn raw(addr: SocketAddr, head: &[u8], body: &[u8]) -> Resp {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(head).await.unwrap();
        // The server may answer (413) before taking all of the body; that is fine.
        let _ = stream.write_all(body).await;
        let mut buf = Vec::new();
        let _ = stream.read_to_end(&mut buf).await;
        buf
    };
    let buf = tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .expect("the server answers");
    parse_response(&buf)
}

fn parse_response(buf: &[u8]) -> Resp {
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {:?}", String::from_utf8_lossy(buf)));
    let head = std::str::from_utf8(&buf[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    let mut body = buf[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap().trim(), 16)
                .unwrap();
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
            rest = &rest[eol + 2 + size + 2..];
        }
        body = out;
    } else if let Some((_, len)) = headers.iter().find(|(k, _)| k == "content-length") {
        body.truncate(len.parse().unwrap());
    }
    Resp {
        status,
        headers,
        body,
    }
}

// ---------------------------------------------------------------------------------------------
// The auth matrix

#[derive(Clone, Copy, Debug)]
enum Need {
    Public,
    Read,
    Operate,
    Create,
    Ingest,
}

fn allows(need: Need, role: Role) -> bool {
    match need {
        Need::Public => true,
        Need::Read => matches!(role, Role::Viewer | Role::Operator | Role::Admin),
        Need::Operate => matches!(role, Role::Operator | Role::Admin),
        Need::Create => role == Role::Admin,
        Need::Ingest => matches!(role, Role::Ingest | Role::Admin),
    }
}

fn alertmanager_payload(alerts: Value) -> Value {
    json!({
        "version": "4",
        "groupKey": "{}:{alertname=\"PCIComplianceViolation\"}",
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "ramp",
        "groupLabels": {"alertname": "PCIComplianceViolation"},
        "commonLabels": {"alertname": "PCIComplianceViolation"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example:9093",
        "alerts": alerts,
    })
}

fn firing(labels: Value, annotations: Value, fingerprint: &str) -> Value {
    json!({
        "status": "firing",
        "labels": labels,
        "annotations": annotations,
        "startsAt": "2024-05-01T10:00:00.000Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.example:9090/graph?g0.expr=pci_violations_total+%3E+0",
        "fingerprint": fingerprint,
    })
}

fn matrix_endpoints() -> Vec<(Req, Need, u16)> {
    let plan = "name = \"from-matrix\"\n[[phases]]\nname = \"canary\"\n";
    vec![
        (Req::get("/healthz"), Need::Public, 200),
        (Req::get("/readyz"), Need::Public, 200),
        (Req::get("/v1/openapi.json"), Need::Public, 200),
        (Req::get("/metrics"), Need::Read, 200),
        (Req::get("/v1/rollouts"), Need::Read, 200),
        (Req::get("/v1/rollouts/demo"), Need::Read, 200),
        (
            Req::get("/v1/rollouts/demo/events?after=1&limit=2"),
            Need::Read,
            200,
        ),
        (
            Req::post("/v1/rollouts").body("application/toml", plan),
            Need::Create,
            201,
        ),
        (Req::post("/v1/rollouts/demo/pause"), Need::Operate, 200),
        (Req::post("/v1/rollouts/demo/resume"), Need::Operate, 200),
        (Req::post("/v1/rollouts/demo/approve"), Need::Operate, 200),
        (
            Req::post("/v1/rollouts/demo/promote")
                .json(json!({"force": true, "reason": "load test done"})),
            Need::Operate,
            200,
        ),
        (
            Req::post("/v1/rollouts/demo/rollback").json(json!({"reason": "matrix"})),
            Need::Operate,
            200,
        ),
        (
            Req::post("/v1/rollouts/demo/signals").json(json!({"kind": "bug_report"})),
            Need::Ingest,
            202,
        ),
        (
            Req::post("/v1/alertmanager").json(alertmanager_payload(json!([firing(
                json!({"alertname": "X", "rollout": "demo", "category": "pci"}),
                json!({}),
                "matrix"
            )]))),
            Need::Ingest,
            200,
        ),
    ]
}

#[tokio::test]
async fn auth_matrix_every_endpoint_by_no_token_bad_token_and_each_role() {
    let server = Server::start(false).await;
    let callers: [(&str, Option<&str>, Option<Role>); 6] = [
        ("no token", None, None),
        (
            "bad token",
            Some("ramp_0000000000000000000000000000000000000000000000000000000000000000"),
            None,
        ),
        ("viewer", Some(VIEWER), Some(Role::Viewer)),
        ("operator", Some(OPERATOR), Some(Role::Operator)),
        ("admin", Some(ADMIN), Some(Role::Admin)),
        ("ingest", Some(INGEST), Some(Role::Ingest)),
    ];
    let mut checked = 0;
    for (req, need, ok) in matrix_endpoints() {
        for (who, token, role) in callers {
            let resp = req.clone().maybe_token(token).send(server.addr).await;
            let expected = match (need, role) {
                (Need::Public, _) => ok,
                (_, None) => 401,
                (need, Some(role)) if allows(need, role) => ok,
                _ => 403,
            };
            assert_eq!(
                resp.status,
                expected,
                "{} {} as {who}: {}",
                req.method,
                req.path,
                resp.text()
            );
            if expected == 401 {
                assert!(
                    resp.header("www-authenticate")
                        .unwrap()
                        .starts_with("Bearer"),
                    "401 names the scheme"
                );
            }
            // Tokens are never echoed.
            for t in [VIEWER, OPERATOR, ADMIN, INGEST] {
                assert!(!resp.text().contains(t));
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 15 * 6);
    // The operator's name is journaled as `by`.
    assert!(server.fake.calls().contains(&Call::Command(
        "demo".into(),
        Command::Rollback {
            by: "olivia".into(),
            reason: "matrix".into()
        }
    )));
    server.shutdown().await;
}

#[tokio::test]
async fn open_metrics_needs_no_token_but_a_bad_one_is_still_refused() {
    let server = Server::start(true).await;
    assert_eq!(Req::get("/metrics").send(server.addr).await.status, 200);
    assert_eq!(
        Req::get("/metrics")
            .token(VIEWER)
            .send(server.addr)
            .await
            .status,
        200
    );
    // Everything else still needs a token.
    assert_eq!(Req::get("/v1/rollouts").send(server.addr).await.status, 401);
    server.shutdown().await;
}

#[tokio::test]
async fn authorization_header_forms() {
    let server = Server::start(false).await;
    let get = |v: &str| Req::get("/v1/rollouts").header("authorization", v);
    assert_eq!(
        get(&format!("bearer {VIEWER}"))
            .send(server.addr)
            .await
            .status,
        200
    );
    assert_eq!(
        get(&format!("Bearer   {VIEWER}  "))
            .send(server.addr)
            .await
            .status,
        200
    );
    for bad in [
        "Bearer".to_string(),
        "Bearer ".to_string(),
        format!("Basic {VIEWER}"),
        VIEWER.to_string(),
        format!("Bearer {VIEWER}x"),
    ] {
        let resp = get(&bad).send(server.addr).await;
        assert_eq!(resp.status, 401, "{bad:?}");
        assert!(resp.header("www-authenticate").is_some());
    }
    // Non-ASCII bytes in the header.
    let resp = raw(
        server.addr,
        b"GET /v1/rollouts HTTP/1.1\r\nhost: t\r\nconnection: close\r\nauthorization: Bearer \xff\xfe\r\n\r\n",
        b"",
    )
    .await;
    assert_eq!(resp.status, 401);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Reads

#[tokio::test]
async fn status_list_and_events_pages() {
    let server = Server::start(false).await;
    let list = Req::get("/v1/rollouts")
        .token(VIEWER)
        .send(server.addr)
        .await
        .json();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["demo", "done", "down", "slow"]);
    let one = Req::get("/v1/rollouts/demo")
        .token(OPERATOR)
        .send(server.addr)
        .await
        .json();
    assert_eq!(one["status"], "running");
    assert_eq!(one["share"], 500);
    assert_eq!(one["canary"]["health"], "operational");
    assert_eq!(one["verdicts"][0]["outcome"], "inconclusive");

    let page = Req::get("/v1/rollouts/demo/events?after=1&limit=2")
        .token(VIEWER)
        .send(server.addr)
        .await
        .json();
    let seqs: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [2, 3]);
    assert_eq!(page["next"], 3);
    assert_eq!(page["events"][0]["kind"], "started");
    let all = Req::get("/v1/rollouts/demo/events")
        .token(VIEWER)
        .send(server.addr)
        .await
        .json();
    assert_eq!(all["events"].as_array().unwrap().len(), 5);
    assert_eq!(all["next"], Value::Null);
    // The largest page is accepted.
    let max = Req::get("/v1/rollouts/demo/events?limit=1000")
        .token(VIEWER)
        .send(server.addr)
        .await;
    assert_eq!(max.status, 200);
    // A store that cannot be read is 503, not 404.
    let down = Req::get("/v1/rollouts/down/events")
        .token(VIEWER)
        .send(server.addr)
        .await;
    assert_eq!(down.status, 503, "{}", down.text());
    let missing = Req::get("/v1/rollouts/nope/events")
        .token(VIEWER)
        .send(server.addr)
        .await;
    assert_eq!(missing.status, 404);
    server.shutdown().await;
}

#[tokio::test]
async fn retiring_needs_admin_and_an_ended_rollout() {
    let server = Server::start(false).await;
    for (token, status) in [(VIEWER, 403), (OPERATOR, 403), (INGEST, 403)] {
        let r = Req::new("DELETE", "/v1/rollouts/demo")
            .token(token)
            .send(server.addr)
            .await;
        assert_eq!(r.status, status, "{}", r.text());
    }
    let running = Req::new("DELETE", "/v1/rollouts/demo")
        .token(ADMIN)
        .send(server.addr)
        .await;
    assert_eq!(running.status, 409, "{}", running.text());
    assert!(
        running.json()["error"]
            .as_str()
            .unwrap()
            .contains("not ended")
    );
    let r = Req::post("/v1/rollouts/demo/rollback")
        .token(OPERATOR)
        .json(json!({"reason": "done with it"}))
        .send(server.addr)
        .await;
    assert_eq!(r.status, 200);
    let retired = Req::new("DELETE", "/v1/rollouts/demo")
        .token(ADMIN)
        .send(server.addr)
        .await;
    assert_eq!(retired.status, 200, "{}", retired.text());
    assert_eq!(retired.json()["retired"], true);
    let missing = Req::new("DELETE", "/v1/rollouts/nope")
        .token(ADMIN)
        .send(server.addr)
        .await;
    assert_eq!(missing.status, 404);
    assert!(server.fake.calls().contains(&Call::Retire("demo".into())));
    server.shutdown().await;
}

#[tokio::test]
async fn health_and_readiness_are_plain_text() {
    let server = Server::start(false).await;
    let h = Req::get("/healthz").send(server.addr).await;
    assert_eq!((h.status, h.text().trim()), (200, "ok"));
    let r = Req::get("/readyz").send(server.addr).await;
    assert_eq!(r.status, 200);
    server.shutdown().await;
}

/// Without an `Accept` header asking for OpenMetrics, `/metrics` answers the Prometheus text
/// format 0.0.4: every series' family has its HELP and TYPE under the series' own name (a
/// counter's `_total`), no OpenMetrics-only lines; and promtool accepts it, where installed.
#[tokio::test]
async fn metrics_answer_the_prometheus_text_format_that_promtool_accepts() {
    let server = Server::start(false).await;
    // An alert for no rollout is counted.
    let alert = json!({
        "version": "4", "status": "firing", "receiver": "ramp", "groupKey": "g",
        "alerts": [{"status": "firing", "labels": {"rollout": "nope", "category": "pci"},
                    "annotations": {}, "startsAt": "2026-11-27T01:00:00Z", "fingerprint": "ab"}]
    });
    let r = Req::post("/v1/alertmanager")
        .token(INGEST)
        .json(alert)
        .send(server.addr)
        .await;
    assert_eq!(r.status, 422, "{}", r.text());
    let resp = Req::get("/metrics").token(VIEWER).send(server.addr).await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-type").unwrap(),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = resp.text();
    assert!(
        !text.contains("# EOF") && !text.contains("# UNIT"),
        "{text}"
    );
    let described = |kind: &str| -> BTreeSet<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix(kind))
            .map(|l| l.split(' ').next().unwrap().to_string())
            .collect()
    };
    let (help, types) = (described("# HELP "), described("# TYPE "));
    assert_eq!(help, types);
    for (name, _, _) in samples(&text) {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| types.contains(*f)))
            .unwrap_or(&name);
        assert!(types.contains(family), "{name} has no TYPE/HELP");
    }
    assert!(
        text.contains("# TYPE ramp_requests_total counter"),
        "{text}"
    );
    assert_eq!(
        sample(
            &samples(&text),
            "ramp_alertmanager_alerts_total",
            &[("result", "error")]
        ),
        1.0
    );
    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            // Neither a parse error nor a lint problem (promtool exits 3 for those).
            assert!(out.status.success(), "promtool: {said}\n{text}");
        }
        Err(_) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("promtool not installed: the text format was checked without it");
            }
        }
    }
    server.shutdown().await;
}

/// Each signal is journaled with its sender: the token's name, and for Alertmanager that it
/// came through the webhook.
#[tokio::test]
async fn a_signal_is_journaled_with_the_name_of_the_token_that_sent_it() {
    let server = Server::start(false).await;
    let r = Req::post("/v1/rollouts/demo/signals")
        .token(INGEST)
        .json(json!({"kind": "bug_report", "note": "receipt late", "id": "zd-1"}))
        .send(server.addr)
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let r = Req::get("/v1/rollouts/demo/events?after=5")
        .token(VIEWER)
        .send(server.addr)
        .await;
    let body = r.json();
    let last = body["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (&last["kind"], &last["from"], &last["key"]),
        (
            &json!("signal_received"),
            &json!("token ingrid"),
            &json!("id zd-1")
        ),
        "{body}"
    );
    server.shutdown().await;
}

/// While the journal cannot be written the server is not ready (503 with since when and why),
/// and `/metrics` says so; it is ready again after the next write that succeeds.
#[tokio::test]
async fn a_failing_journal_makes_the_server_unready_and_shows_in_metrics() {
    let server = Server::start(false).await;
    *server.fake.journal.lock().unwrap() = JournalHealth {
        write_errors: 3,
        read_errors: 1,
        last_write_at: Some(T0),
        failing: Some((T0 + 5_000, "database or disk is full".into())),
    };
    let r = Req::get("/readyz").send(server.addr).await;
    assert_eq!(r.status, 503);
    let body = r.json();
    let why = body["error"].as_str().unwrap();
    assert!(why.contains("journal cannot be written"), "{why}");
    assert!(why.contains("database or disk is full"), "{why}");
    assert!(why.contains(&((T0 + 5_000) / 1000).to_string()), "{why}");
    let text = Req::get("/metrics")
        .token(VIEWER)
        .send(server.addr)
        .await
        .text();
    for line in [
        "ramp_journal_errors_total{op=\"write\"} 3",
        "ramp_journal_errors_total{op=\"read\"} 1",
        "ramp_journal_failing 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    let last: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("ramp_journal_last_write_timestamp_seconds "))
        .expect("the last write's time")
        .parse()
        .unwrap();
    assert_eq!(last, (T0 / 1000) as f64);
    server.fake.journal.lock().unwrap().failing = None;
    assert_eq!(Req::get("/readyz").send(server.addr).await.status, 200);
    let text = Req::get("/metrics")
        .token(VIEWER)
        .send(server.addr)
        .await
        .text();
    assert!(
        text.lines().any(|l| l == "ramp_journal_failing 0"),
        "{text}"
    );
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Creating rollouts

#[tokio::test]
async fn create_from_toml_text_or_json_and_report_every_plan_error() {
    let server = Server::start(false).await;
    let plan = "name = \"checkout\"\n[[phases]]\nname = \"canary\"\n";
    for (i, ct) in ["application/toml", "text/plain; charset=utf-8"]
        .iter()
        .enumerate()
    {
        let p = plan.replace("checkout", &format!("checkout-{i}"));
        let resp = Req::post("/v1/rollouts")
            .token(ADMIN)
            .body(ct, p)
            .send(server.addr)
            .await;
        assert_eq!(resp.status, 201, "{}", resp.text());
        assert_eq!(resp.json()["name"], format!("checkout-{i}"));
    }
    let resp = Req::post("/v1/rollouts")
        .token(ADMIN)
        .json(json!({ "plan": plan }))
        .send(server.addr)
        .await;
    assert_eq!(resp.status, 201);
    // The same name again: 409.
    let again = Req::post("/v1/rollouts")
        .token(ADMIN)
        .json(json!({ "plan": plan }))
        .send(server.addr)
        .await;
    assert_eq!(again.status, 409);
    assert!(again.json()["error"].as_str().unwrap().contains("checkout"));
    // An invalid plan: 400 with each error's position and help.
    let bad = Req::post("/v1/rollouts")
        .token(ADMIN)
        .body(
            "application/toml",
            "name = \"x\"\n[[phases]]\nerror_rat < 1%\n",
        )
        .send(server.addr)
        .await;
    assert_eq!(bad.status, 400);
    let v = bad.json();
    assert_eq!(v["error"], "invalid plan");
    let e = &v["errors"][0];
    assert_eq!((e["line"].as_u64(), e["col"].as_u64()), (Some(3), Some(1)));
    assert!(e["message"].as_str().unwrap().contains("error_rat"));
    assert_eq!(e["help"], "did you mean `error_rate`?");
    // JSON without a plan, or with the wrong type, or extra fields: named.
    let r = Req::post("/v1/rollouts")
        .token(ADMIN)
        .json(json!({}))
        .send(server.addr)
        .await;
    assert_eq!(r.fields(), set(&["plan"]));
    let r = Req::post("/v1/rollouts")
        .token(ADMIN)
        .json(json!({"plan": 5, "nmae": 1}))
        .send(server.addr)
        .await;
    assert_eq!(r.fields(), set(&["plan", "nmae"]));
    let r = Req::post("/v1/rollouts")
        .token(ADMIN)
        .json(json!(["plan"]))
        .send(server.addr)
        .await;
    assert_eq!(r.fields(), set(&["body"]));
    // Not UTF-8.
    let r = Req::post("/v1/rollouts")
        .token(ADMIN)
        .body("application/toml", vec![0xff, 0xfe, b'a'])
        .send(server.addr)
        .await;
    assert_eq!(r.fields(), set(&["body"]));
    // An unsupported content type.
    let r = Req::post("/v1/rollouts")
        .token(ADMIN)
        .body("image/png", "x")
        .send(server.addr)
        .await;
    assert_eq!(r.status, 415);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Actions

#[tokio::test]
async fn actions_build_commands_by_the_token_name_and_validate_their_body() {
    let server = Server::start(false).await;
    let addr = server.addr;
    let post = |action: &str| Req::post(&format!("/v1/rollouts/demo/{action}")).token(OPERATOR);

    let paused = post("pause")
        .json(json!({"reason": "lunch"}))
        .send(addr)
        .await;
    assert_eq!(paused.status, 200);
    assert_eq!(paused.json()["status"], "paused");
    assert_eq!(post("resume").send(addr).await.status, 200);
    assert_eq!(post("approve").json(json!({})).send(addr).await.status, 200);
    assert_eq!(
        post("promote").json(json!(null)).send(addr).await.status,
        200
    );
    let r = post("promote")
        .json(json!({"force": true, "reason": "  gates need a week, CAB approved  "}))
        .send(addr)
        .await;
    assert_eq!(r.status, 200);
    let r = post("rollback")
        .json(json!({"reason": "p95 regression"}))
        .send(addr)
        .await;
    assert_eq!(r.json()["status"], "rolled_back");
    let by = || "olivia".to_string();
    assert_eq!(
        server.fake.calls(),
        vec![
            Call::Command(
                "demo".into(),
                Command::Pause {
                    by: by(),
                    reason: "lunch".into()
                }
            ),
            Call::Command("demo".into(), Command::Resume { by: by() }),
            Call::Command("demo".into(), Command::Approve { by: by() }),
            Call::Command(
                "demo".into(),
                Command::Promote {
                    by: by(),
                    force: false,
                    reason: String::new()
                }
            ),
            Call::Command(
                "demo".into(),
                Command::Promote {
                    by: by(),
                    force: true,
                    reason: "gates need a week, CAB approved".into()
                }
            ),
            Call::Command(
                "demo".into(),
                Command::Rollback {
                    by: by(),
                    reason: "p95 regression".into()
                }
            ),
        ]
    );

    // Bad bodies: 400 naming the fields, and nothing reaches the control plane.
    let before = server.fake.calls().len();
    let cases: Vec<(&str, Req, &[&str])> = vec![
        ("rollback", post("rollback"), &["reason"]),
        (
            "rollback",
            post("rollback").json(json!({"reason": "   "})),
            &["reason"],
        ),
        (
            "rollback",
            post("rollback").json(json!({"reason": 7})),
            &["reason"],
        ),
        (
            "promote",
            post("promote").json(json!({"force": true})),
            &["reason"],
        ),
        (
            "promote",
            post("promote").json(json!({"force": "yes", "reason": "r"})),
            &["force"],
        ),
        (
            "pause",
            post("pause").json(json!({"force": true, "reason": "r"})),
            &["force"],
        ),
        (
            "pause",
            post("pause").json(json!({"reason": "r", "why": "typo"})),
            &["why"],
        ),
        ("pause", post("pause").json(json!(["r"])), &["body"]),
        (
            "pause",
            post("pause").json(json!({"reason": "x".repeat(5000)})),
            &["reason"],
        ),
        (
            "resume",
            post("resume").body("application/json", "{\"reason\": "),
            &["body"],
        ),
        (
            "rollback",
            post("rollback").json(json!({"force": 1, "extra": 2})),
            &["force", "extra", "reason"],
        ),
    ];
    for (action, req, fields) in cases {
        let resp = req.send(addr).await;
        assert_eq!(
            resp.fields(),
            set(fields),
            "{action} {:?}",
            String::from_utf8_lossy(&req.body)
        );
    }
    assert_eq!(server.fake.calls().len(), before);

    // A JSON body with another content type: 415. Unknown rollout: 404. Refused: 409.
    let r = post("pause")
        .body("application/xml", "<reason/>")
        .send(addr)
        .await;
    assert_eq!(r.status, 415);
    let r = Req::post("/v1/rollouts/nope/pause")
        .token(OPERATOR)
        .send(addr)
        .await;
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].as_str().unwrap().contains("nope"));
    let r = Req::post("/v1/rollouts/done/resume")
        .token(OPERATOR)
        .send(addr)
        .await;
    assert_eq!(r.status, 409);
    assert!(r.json()["error"].as_str().unwrap().contains("completed"));
    // A broken store is a 503, not a 500.
    let r = Req::post("/v1/rollouts/down/pause")
        .token(OPERATOR)
        .send(addr)
        .await;
    assert_eq!(r.status, 503);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Signals

#[tokio::test]
async fn signals_are_validated_field_by_field() {
    let server = Server::start(false).await;
    let addr = server.addr;
    let post = || Req::post("/v1/rollouts/demo/signals").token(INGEST);
    let good = [
        (
            json!({"kind": "pci_alert", "note": "PAN in logs"}),
            Signal::PciAlert {
                note: "PAN in logs".into(),
            },
        ),
        (
            json!({"kind": "security_alert", "severity": "critical"}),
            Signal::SecurityAlert {
                severity: Severity::Critical,
                note: String::new(),
            },
        ),
        (
            json!({"kind": "bug_report", "note": null}),
            Signal::BugReport {
                note: String::new(),
            },
        ),
        (
            json!({"kind": "feedback", "score": 0.9}),
            Signal::Feedback {
                score: 0.9,
                note: String::new(),
            },
        ),
        (
            json!({"kind": "feedback", "score": 0}),
            Signal::Feedback {
                score: 0.0,
                note: String::new(),
            },
        ),
        (
            json!({"kind": "feedback", "score": 1}),
            Signal::Feedback {
                score: 1.0,
                note: String::new(),
            },
        ),
    ];
    for (i, (body, signal)) in good.into_iter().enumerate() {
        let resp = post().json(body).send(addr).await;
        assert_eq!(resp.status, 202, "{}", resp.text());
        assert_eq!(
            resp.json(),
            json!({"seq": 6 + i as u64, "duplicate": false})
        );
        assert_eq!(
            server.fake.signals().last().unwrap(),
            &("demo".to_string(), signal)
        );
    }
    let bad: Vec<(Req, &[&str])> = vec![
        (post().json(json!({"kind": "pci"})), &["kind"]),
        (post().json(json!({"kind": 3})), &["kind"]),
        (post().json(json!({"note": "no kind"})), &["kind"]),
        (post(), &["kind"]),
        (
            post().json(json!({"kind": "security_alert"})),
            &["severity"],
        ),
        (
            post().json(json!({"kind": "security_alert", "severity": "apocalyptic"})),
            &["severity"],
        ),
        (
            post().json(json!({"kind": "security_alert", "severity": 4})),
            &["severity"],
        ),
        (post().json(json!({"kind": "feedback"})), &["score"]),
        (
            post().json(json!({"kind": "feedback", "score": 1.5})),
            &["score"],
        ),
        (
            post().json(json!({"kind": "feedback", "score": -0.1})),
            &["score"],
        ),
        (
            post().json(json!({"kind": "feedback", "score": "NaN"})),
            &["score"],
        ),
        (
            post().body(
                "application/json",
                "{\"kind\": \"feedback\", \"score\": NaN}",
            ),
            &["body"],
        ),
        (
            post().body(
                "application/json",
                "{\"kind\": \"feedback\", \"score\": 1e999}",
            ),
            &["body"],
        ),
        (
            post().json(json!({"kind": "bug_report", "note": 5})),
            &["note"],
        ),
        (
            post().json(json!({"kind": "bug_report", "severity": "low"})),
            &["severity"],
        ),
        (
            post().json(json!({"kind": "pci_alert", "colour": "red"})),
            &["colour"],
        ),
        (
            post().json(json!({"kind": "feedback", "score": 2, "note": [], "sevrity": "x"})),
            &["score", "note", "sevrity"],
        ),
        (post().json(json!("pci_alert")), &["body"]),
        (post().body("application/json", "{not json"), &["body"]),
        (
            post().json(json!({"kind": "bug_report", "id": ""})),
            &["id"],
        ),
        (post().json(json!({"kind": "bug_report", "id": 7})), &["id"]),
        (
            post().json(json!({"kind": "bug_report", "id": "x".repeat(201)})),
            &["id"],
        ),
    ];
    let before = server.fake.signals().len();
    for (req, fields) in bad {
        let resp = req.send(addr).await;
        assert_eq!(
            resp.fields(),
            set(fields),
            "{}",
            String::from_utf8_lossy(&req.body)
        );
    }
    assert_eq!(
        server.fake.signals().len(),
        before,
        "nothing invalid is recorded"
    );

    // A sender that retries with the same id is counted once; the repeat is acknowledged.
    let with_id = json!({"kind": "pci_alert", "id": "siem-4711", "note": "PAN in logs"});
    let first = post().json(with_id.clone()).send(addr).await;
    assert_eq!(first.status, 202);
    assert_eq!(first.json()["duplicate"], false);
    let count = server.fake.signals().len();
    let again = post().json(with_id).send(addr).await;
    assert_eq!(again.status, 202);
    assert_eq!(again.json()["duplicate"], true);
    assert_eq!(
        server.fake.signals().len(),
        count,
        "a repeat is not counted"
    );

    let r = post().body("text/plain", "pci_alert").send(addr).await;
    assert_eq!(r.status, 415);
    let r = Req::post("/v1/rollouts/nope/signals")
        .token(INGEST)
        .json(json!({"kind": "bug_report"}))
        .send(addr)
        .await;
    assert_eq!(r.status, 404);
    let r = Req::post("/v1/rollouts/down/signals")
        .token(INGEST)
        .json(json!({"kind": "bug_report"}))
        .send(addr)
        .await;
    assert_eq!(r.status, 503);
    server.shutdown().await;
}

#[tokio::test]
async fn a_signal_is_acknowledged_only_after_the_control_plane_recorded_it() {
    let server = Server::start(false).await;
    let addr = server.addr;
    let pending = tokio::spawn(async move {
        Req::post("/v1/rollouts/slow/signals")
            .token(INGEST)
            .json(json!({"kind": "pci_alert"}))
            .send(addr)
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !pending.is_finished(),
        "answered before the signal was durable"
    );
    assert!(server.fake.signals().is_empty());
    server.fake.gate.add_permits(1);
    let resp = pending.await.unwrap();
    assert_eq!(resp.status, 202);
    assert_eq!(resp.json()["seq"], 6);
    assert_eq!(server.fake.signals().len(), 1);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Alertmanager

/// Sends a webhook; the answer is 200 when every alert was taken, 422 when some were not
/// (listed in `errors`: Alertmanager logs a 4xx and does not retry it).
async fn alertmanager(server: &Server, payload: Value) -> Value {
    let (status, v) = alertmanager_answer(server, payload).await;
    let failed = v["errors"].as_array().is_some_and(|e| !e.is_empty());
    assert_eq!(status, if failed { 422 } else { 200 }, "{v}");
    v
}

async fn alertmanager_answer(server: &Server, payload: Value) -> (u16, Value) {
    let resp = Req::post("/v1/alertmanager")
        .token(INGEST)
        .json(payload)
        .send(server.addr)
        .await;
    (resp.status, resp.json())
}

#[tokio::test]
async fn alertmanager_firing_pci_alert() {
    let server = Server::start(false).await;
    let v = alertmanager(
        &server,
        alertmanager_payload(json!([firing(
            json!({"alertname": "PCIComplianceViolation", "rollout": "demo", "category": "pci", "severity": "critical"}),
            json!({"summary": "Card data written to application logs", "description": "PAN pattern matched"}),
            "a1b2c3d4e5f60718"
        )])),
    )
    .await;
    assert_eq!(
        v,
        json!({"accepted": 1, "skipped": 0, "duplicates": 0, "errors": []})
    );
    assert_eq!(
        server.fake.signals(),
        vec![(
            "demo".into(),
            Signal::PciAlert {
                note: "Card data written to application logs".into()
            }
        )]
    );
    server.shutdown().await;
}

#[tokio::test]
async fn alertmanager_firing_security_alerts_map_severity() {
    let server = Server::start(false).await;
    let cases = [
        (Some("critical"), Severity::Critical),
        (Some("high"), Severity::High),
        (Some("warning"), Severity::Medium),
        (Some("info"), Severity::Low),
        (Some("low"), Severity::Low),
        (None, Severity::High),
    ];
    let alerts: Vec<Value> = cases
        .iter()
        .enumerate()
        .map(|(i, (sev, _))| {
            let mut labels =
                json!({"alertname": "CVEDetected", "rollout": "demo", "category": "security"});
            if let Some(s) = sev {
                labels["severity"] = json!(s);
            }
            let annotations = if i == 1 {
                json!({"description": "described"})
            } else {
                json!({})
            };
            firing(labels, annotations, &format!("fp{i}"))
        })
        .collect();
    let v = alertmanager(&server, alertmanager_payload(json!(alerts))).await;
    assert_eq!(v["accepted"], 6);
    let got: Vec<Signal> = server.fake.signals().into_iter().map(|(_, s)| s).collect();
    let want: Vec<Signal> = cases
        .iter()
        .enumerate()
        .map(|(i, (_, severity))| Signal::SecurityAlert {
            severity: *severity,
            note: if i == 1 {
                "described".into()
            } else {
                "CVEDetected".into()
            },
        })
        .collect();
    assert_eq!(got, want);
    server.shutdown().await;
}

#[tokio::test]
async fn alertmanager_resolved_and_unlabelled_alerts_are_skipped() {
    let server = Server::start(false).await;
    let mut resolved = firing(
        json!({"alertname": "PCI", "rollout": "demo", "category": "pci"}),
        json!({}),
        "r1",
    );
    resolved["status"] = json!("resolved");
    resolved["endsAt"] = json!("2024-05-01T11:00:00.000Z");
    let mut payload = alertmanager_payload(json!([resolved]));
    payload["status"] = json!("resolved");
    let v = alertmanager(&server, payload).await;
    assert_eq!(
        v,
        json!({"accepted": 0, "skipped": 1, "duplicates": 0, "errors": []})
    );
    let v = alertmanager(
        &server,
        alertmanager_payload(json!([
            firing(json!({"alertname": "HighCPU"}), json!({}), "m1"),
            firing(
                json!({"alertname": "X", "rollout": "demo"}),
                json!({}),
                "m2"
            ),
            firing(
                json!({"alertname": "X", "category": "pci"}),
                json!({}),
                "m3"
            ),
            firing(
                json!({"alertname": "X", "rollout": "demo", "category": "latency"}),
                json!({}),
                "m4"
            ),
        ])),
    )
    .await;
    assert_eq!(
        v,
        json!({"accepted": 0, "skipped": 4, "duplicates": 0, "errors": []})
    );
    assert!(server.fake.signals().is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn alertmanager_unknown_rollout_fails_only_its_alert_in_a_mixed_batch() {
    let server = Server::start(false).await;
    let mut resolved = firing(
        json!({"rollout": "demo", "category": "pci"}),
        json!({}),
        "x2",
    );
    resolved["status"] = json!("resolved");
    let batch = json!([
        firing(json!({"alertname": "PCI", "rollout": "demo", "category": "pci"}), json!({"summary": "one"}), "x0"),
        firing(json!({"alertname": "PCI", "rollout": "ghost", "category": "pci"}), json!({}), "x1"),
        resolved,
        firing(json!({"alertname": "Sec", "rollout": "demo", "category": "security", "severity": "high"}), json!({}), "x3"),
        "not an alert",
        {"labels": {"rollout": "demo", "category": "pci"}, "status": 5},
        firing(json!({"alertname": "NoLabels"}), json!({}), "x6"),
    ]);
    let (status, v) = alertmanager_answer(&server, alertmanager_payload(batch.clone())).await;
    assert_eq!(
        status, 422,
        "a misspelt rollout is a 4xx Alertmanager logs: {v}"
    );
    assert_eq!(v["accepted"], 2);
    assert_eq!(v["skipped"], 2);
    let errors = v["errors"].as_array().unwrap();
    let indexes: Vec<u64> = errors
        .iter()
        .map(|e| e["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, [1, 4, 5]);
    assert_eq!(errors[0]["rollout"], "ghost");
    assert!(errors[0]["error"].as_str().unwrap().contains("ghost"));
    assert_eq!(
        server.fake.signals(),
        vec![
            ("demo".into(), Signal::PciAlert { note: "one".into() }),
            (
                "demo".into(),
                Signal::SecurityAlert {
                    severity: Severity::High,
                    note: "Sec".into()
                }
            ),
        ]
    );
    // Alertmanager sends the whole group again on the next notification: nothing is counted
    // twice. A new alert in the group is.
    let mut again = batch.as_array().unwrap().clone();
    again.push(firing(
        json!({"alertname": "PCI", "rollout": "demo", "category": "pci"}),
        json!({}),
        "x7",
    ));
    let v = alertmanager(&server, alertmanager_payload(json!(again))).await;
    assert_eq!(
        (
            v["accepted"].as_u64(),
            v["duplicates"].as_u64(),
            v["skipped"].as_u64()
        ),
        (Some(1), Some(2), Some(4))
    );
    assert_eq!(server.fake.signals().len(), 3);
    // The same alert firing again later (new startsAt) counts again.
    let mut refired = firing(
        json!({"alertname": "PCI", "rollout": "demo", "category": "pci"}),
        json!({}),
        "x0",
    );
    refired["startsAt"] = json!("2024-05-02T10:00:00.000Z");
    let v = alertmanager(&server, alertmanager_payload(json!([refired]))).await;
    assert_eq!(v["accepted"], 1);
    server.shutdown().await;
}

#[tokio::test]
async fn alertmanager_payload_shape_errors_and_store_failures() {
    let server = Server::start(false).await;
    let post = || Req::post("/v1/alertmanager").token(INGEST);
    let r = post().json(json!({"version": "4"})).send(server.addr).await;
    assert_eq!(r.fields(), set(&["alerts"]));
    let r = post()
        .json(json!({"version": "3", "alerts": {}}))
        .send(server.addr)
        .await;
    assert_eq!(r.fields(), set(&["version", "alerts"]));
    let r = post().json(json!([1, 2])).send(server.addr).await;
    assert_eq!(r.fields(), set(&["body"]));
    let r = post().send(server.addr).await;
    assert_eq!(r.fields(), set(&["alerts"]));
    // The store down: 503 so that Alertmanager retries; the retry counts nothing twice.
    let batch = alertmanager_payload(json!([
        firing(
            json!({"rollout": "demo", "category": "pci"}),
            json!({}),
            "s0"
        ),
        firing(
            json!({"rollout": "down", "category": "pci"}),
            json!({}),
            "s1"
        ),
    ]));
    let r = post().json(batch.clone()).send(server.addr).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["accepted"], 1);
    assert_eq!(r.json()["errors"][0]["index"], 1);
    let r = post().json(batch).send(server.addr).await;
    assert_eq!(r.json()["duplicates"], 1);
    assert_eq!(server.fake.signals().len(), 1);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Routing errors, limits, content types

#[tokio::test]
async fn not_found_method_not_allowed_and_bad_queries_are_json() {
    let server = Server::start(false).await;
    let addr = server.addr;
    for path in [
        "/v1/nope",
        "/v2/rollouts",
        "/",
        "/v1/rollouts/demo/pause/now",
    ] {
        let r = Req::get(path).token(ADMIN).send(addr).await;
        assert_eq!(r.status, 404, "{path}");
    }
    for path in ["/v1/rollouts/nope", "/v1/rollouts/nope/events"] {
        let r = Req::get(path).token(VIEWER).send(addr).await;
        assert_eq!(r.status, 404, "{path}");
        assert!(r.json()["error"].as_str().unwrap().contains("nope"));
    }
    for (method, path) in [
        ("DELETE", "/v1/rollouts"),
        ("PUT", "/v1/rollouts/demo"),
        ("GET", "/v1/rollouts/demo/pause"),
        ("GET", "/v1/rollouts/demo/signals"),
        ("POST", "/healthz"),
        ("POST", "/metrics"),
        ("GET", "/v1/alertmanager"),
    ] {
        let r = Req::new(method, path).token(ADMIN).send(addr).await;
        assert_eq!(r.status, 405, "{method} {path}");
        assert!(r.header("allow").is_some(), "405 says what is allowed");
    }
    for (query, fields) in [
        ("limit=0", &["limit"][..]),
        ("limit=1001", &["limit"]),
        ("limit=ten", &["limit"]),
        ("after=-1", &["after"]),
        ("after=x&limit=y", &["after", "limit"]),
    ] {
        let r = Req::get(&format!("/v1/rollouts/demo/events?{query}"))
            .token(VIEWER)
            .send(addr)
            .await;
        assert_eq!(r.fields(), set(fields), "{query}");
    }
    // Percent-encoded names are decoded; invalid UTF-8 in the name is a 400, not a 500.
    let r = Req::get("/v1/rollouts/de%6Do")
        .token(VIEWER)
        .send(addr)
        .await;
    assert_eq!(r.status, 200);
    let r = Req::get("/v1/rollouts/%FF").token(VIEWER).send(addr).await;
    assert_eq!(r.fields(), set(&["name"]));
    server.shutdown().await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let server = Server::start(false).await;
    let addr = server.addr;
    let big_note = "x".repeat(LIMIT + 10);
    let cases = [
        Req::post("/v1/rollouts/demo/signals")
            .token(INGEST)
            .json(json!({"kind": "bug_report", "note": big_note})),
        Req::post("/v1/rollouts/demo/pause")
            .token(OPERATOR)
            .json(json!({"reason": big_note})),
        Req::post("/v1/alertmanager")
            .token(INGEST)
            .json(alertmanager_payload(
                json!([{"status": "x".repeat(ALERT_LIMIT + 10)}]),
            )),
        Req::post("/v1/rollouts")
            .token(ADMIN)
            .body("application/toml", big_note.clone()),
    ];
    for req in cases {
        let r = req.send(addr).await;
        assert_eq!(r.status, 413, "{}", req.path);
    }
    // Declared too large: refused from the headers, before any of the body is read.
    let head = format!(
        "POST /v1/rollouts/demo/signals HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\
         authorization: Bearer {INGEST}\r\ncontent-type: application/json\r\n\
         content-length: 1000000000\r\n\r\n"
    );
    let r = raw(addr, head.as_bytes(), b"").await;
    assert_eq!(r.status, 413);
    // Chunked (no length declared) and over the limit.
    let mut chunked = format!(
        "POST /v1/rollouts/demo/signals HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\
         authorization: Bearer {INGEST}\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..3 {
        chunked.extend_from_slice(format!("{:x}\r\n", LIMIT / 2).as_bytes());
        chunked.extend(std::iter::repeat_n(b' ', LIMIT / 2));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let r = raw(addr, &chunked, b"").await;
    assert_eq!(r.status, 413);
    // Unauthenticated large bodies are refused as 401 without reading them.
    let r = Req::post("/v1/rollouts/demo/signals")
        .json(json!({"note": "y".repeat(LIMIT * 2)}))
        .send(addr)
        .await;
    assert_eq!(r.status, 401);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Metrics

/// `name{labels} value` lines of an exposition.
fn samples(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => {
                    let body = rest.strip_suffix('}').unwrap();
                    let mut labels = BTreeMap::new();
                    let mut rest = body;
                    while !rest.is_empty() {
                        let (k, after) = rest.split_once("=\"").unwrap();
                        // Find the closing quote, skipping escaped characters.
                        let mut end = 0;
                        let bytes = after.as_bytes();
                        while bytes[end] != b'"' {
                            end += if bytes[end] == b'\\' { 2 } else { 1 };
                        }
                        labels.insert(k.to_string(), after[..end].to_string());
                        rest = after[end + 1..].trim_start_matches(',');
                    }
                    (n.to_string(), labels)
                }
                None => (series.to_string(), BTreeMap::new()),
            };
            let value = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("value in {l:?}")),
            };
            (name, labels, value)
        })
        .collect()
}

fn sample(
    all: &[(String, BTreeMap<String, String>, f64)],
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    all.iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .unwrap_or_else(|| panic!("no {name} {labels:?}"))
        .2
}

#[tokio::test]
async fn metrics_exposition_parses_with_counters_histograms_and_gauges() {
    let server = Server::start(false).await;
    let resp = Req::get("/metrics")
        .token(VIEWER)
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send(server.addr)
        .await;
    assert_eq!(resp.status, 200);
    assert!(
        resp.header("content-type")
            .unwrap()
            .contains("openmetrics-text")
    );
    let text = resp.text();
    assert!(text.ends_with("# EOF\n"), "{text}");
    for family in [
        "ramp_requests",
        "ramp_errors",
        "ramp_successes",
        "ramp_rate_limited",
        "ramp_auth_failures",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} counter")),
            "{family}"
        );
    }
    assert!(text.contains("# TYPE ramp_request_duration_seconds histogram"));
    let all = samples(&text);
    let canary = [("rollout", "demo"), ("variant", "canary")];
    let stable = [("rollout", "demo"), ("variant", "stable")];
    assert_eq!(sample(&all, "ramp_requests_total", &canary), 200.0);
    assert_eq!(sample(&all, "ramp_requests_total", &stable), 1000.0);
    assert_eq!(sample(&all, "ramp_errors_total", &canary), 4.0);
    assert_eq!(sample(&all, "ramp_successes_total", &stable), 995.0);
    assert_eq!(sample(&all, "ramp_rate_limited_total", &canary), 2.0);
    assert_eq!(sample(&all, "ramp_auth_failures_total", &canary), 1.0);
    // Buckets: cumulative, in le order, +Inf equal to the count.
    let buckets: Vec<(f64, f64)> = all
        .iter()
        .filter(|(n, l, _)| {
            n == "ramp_request_duration_seconds_bucket"
                && l.get("rollout").map(String::as_str) == Some("demo")
                && l.get("variant").map(String::as_str) == Some("canary")
        })
        .map(|(_, l, v)| {
            let le = match l["le"].as_str() {
                "+Inf" => f64::INFINITY,
                s => s.parse().unwrap(),
            };
            (le, *v)
        })
        .collect();
    let les: Vec<f64> = buckets.iter().map(|b| b.0).collect();
    assert_eq!(
        les,
        [
            0.005,
            0.01,
            0.025,
            0.05,
            0.1,
            0.2,
            0.5,
            1.0,
            2.5,
            5.0,
            10.0,
            f64::INFINITY
        ]
    );
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    let count = sample(&all, "ramp_request_duration_seconds_count", &canary);
    assert_eq!(count, 200.0);
    assert_eq!(buckets.last().unwrap().1, count);
    assert_eq!(buckets[0].1, 50.0); // 3 ms
    assert_eq!(buckets[4].1, 190.0); // 80 ms (≤ 100 ms)
    assert_eq!(buckets[6].1, 199.0); // 300 ms (≤ 500 ms)
    assert_eq!(buckets[10].1, 199.0); // the 15 s request is only under +Inf
    let sum = sample(&all, "ramp_request_duration_seconds_sum", &canary);
    let exact = 50.0 * 0.003 + 140.0 * 0.08 + 9.0 * 0.3 + 15.0;
    assert!(sum >= exact && sum <= exact * 1.01, "{sum} vs {exact}");
    // Gauges.
    assert_eq!(
        sample(&all, "ramp_rollout_share_ratio", &[("rollout", "demo")]),
        0.2
    );
    assert_eq!(
        sample(&all, "ramp_rollout_phase", &[("rollout", "demo")]),
        1.0
    );
    assert_eq!(
        sample(
            &all,
            "ramp_rollout_status",
            &[("rollout", "demo"), ("status", "running")]
        ),
        1.0
    );
    // Phase time, backends, gates, triggers, signals.
    let demo = [("rollout", "demo")];
    assert_eq!(sample(&all, "ramp_phase_elapsed_seconds", &demo), 5400.0);
    assert_eq!(sample(&all, "ramp_phase_duration_seconds", &demo), 86400.0);
    assert_eq!(
        sample(
            &all,
            "ramp_backend_health",
            &[
                ("rollout", "demo"),
                ("variant", "canary"),
                ("state", "down")
            ]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &all,
            "ramp_gate_verdict",
            &[
                ("rollout", "demo"),
                ("criterion", "error_rate < 0.1%"),
                ("scope", "phase"),
                ("outcome", "inconclusive")
            ]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &all,
            "ramp_trigger_progress_ratio",
            &[("rollout", "demo"), ("trigger", "error_rate > 1%")]
        ),
        0.25
    );
    assert_eq!(
        sample(
            &all,
            "ramp_signals_total",
            &[
                ("rollout", "demo"),
                ("kind", "security_alert"),
                ("severity", "medium")
            ]
        ),
        2.0
    );
    assert_eq!(
        sample(
            &all,
            "ramp_signals_total",
            &[("rollout", "demo"), ("kind", "pci_alert")]
        ),
        1.0
    );
    assert_eq!(sample(&all, "ramp_feedback_positive_total", &demo), 7.0);
    assert_eq!(
        sample(
            &all,
            "ramp_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    // Current values on each scrape.
    Req::post("/v1/rollouts/demo/pause")
        .token(OPERATOR)
        .send(server.addr)
        .await;
    let again = samples(
        &Req::get("/metrics")
            .token(VIEWER)
            .send(server.addr)
            .await
            .text(),
    );
    assert_eq!(
        sample(
            &again,
            "ramp_rollout_status",
            &[("rollout", "demo"), ("status", "paused")]
        ),
        1.0
    );
    assert_eq!(sample(&again, "ramp_requests_total", &canary), 200.0);
    server.shutdown().await;
}

#[tokio::test]
async fn metrics_label_values_are_escaped() {
    let server = Server::with(Fake::new(&["we\"ird\\name"]), true).await;
    let text = Req::get("/metrics").send(server.addr).await.text();
    assert!(text.contains("rollout=\"we\\\"ird\\\\name\""), "{text}");
    assert!(!samples(&text).is_empty());
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Arbitrary input: never a 5xx, never a panic

fn arb_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("kind".to_string()),
        Just("note".to_string()),
        Just("severity".to_string()),
        Just("score".to_string()),
        Just("reason".to_string()),
        Just("force".to_string()),
        Just("version".to_string()),
        Just("status".to_string()),
        Just("alerts".to_string()),
        Just("labels".to_string()),
        Just("annotations".to_string()),
        Just("rollout".to_string()),
        Just("category".to_string()),
        Just("fingerprint".to_string()),
        Just("startsAt".to_string()),
        ".{0,12}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        (0.0f64..=1.0).prop_map(|f| json!(f)),
        prop_oneof![
            Just("pci_alert"),
            Just("security_alert"),
            Just("bug_report"),
            Just("feedback"),
            Just("critical"),
            Just("warning"),
            Just("firing"),
            Just("resolved"),
            Just("pci"),
            Just("security"),
            Just("demo"),
            Just("ghost"),
            Just("4"),
        ]
        .prop_map(|s| json!(s)),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[derive(Clone, Debug)]
enum Body {
    Json(Value),
    Bytes(Vec<u8>),
}

fn arb_body() -> impl Strategy<Value = Body> {
    prop_oneof![
        4 => arb_json().prop_map(Body::Json),
        // Alertmanager-shaped payloads with arbitrary alerts.
        2 => prop::collection::vec(arb_json(), 0..5)
            .prop_map(|alerts| Body::Json(alertmanager_payload(json!(alerts)))),
        1 => prop::collection::vec(any::<u8>(), 0..256).prop_map(Body::Bytes),
    ]
}

#[test]
fn arbitrary_bodies_never_cause_a_server_error() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(Server::start(false));
    let addr = server.addr;
    let endpoints: [(&str, &str); 7] = [
        ("/v1/rollouts/demo/signals", INGEST),
        ("/v1/rollouts/nope/signals", INGEST),
        ("/v1/rollouts/demo/promote", OPERATOR),
        ("/v1/rollouts/demo/rollback", OPERATOR),
        ("/v1/rollouts/demo/pause", ADMIN),
        ("/v1/alertmanager", INGEST),
        ("/v1/rollouts", ADMIN),
    ];
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(
            &(arb_body(), 0..endpoints.len(), any::<bool>()),
            |(body, e, json_ct)| {
                let (path, token) = endpoints[e];
                let (ct, bytes) = match &body {
                    Body::Json(v) => ("application/json", v.to_string().into_bytes()),
                    Body::Bytes(b) => (
                        if json_ct {
                            "application/json"
                        } else {
                            "application/octet-stream"
                        },
                        b.clone(),
                    ),
                };
                let resp = rt.block_on(Req::post(path).token(token).body(ct, bytes).send(addr));
                prop_assert!(
                    [200, 201, 202, 400, 404, 409, 413, 415, 422].contains(&resp.status),
                    "{path} -> {} {}",
                    resp.status,
                    resp.text()
                );
                Ok(())
            },
        )
        .unwrap();
    // Still serving after all of it.
    let r = rt.block_on(Req::get("/healthz").send(addr));
    assert_eq!(r.status, 200);
    rt.block_on(server.shutdown());
}

// ---------------------------------------------------------------------------------------------
// OpenAPI

fn committed_openapi_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

#[test]
fn committed_openapi_document_matches_the_code() {
    let generated = ramp_api::openapi().to_pretty_json().unwrap() + "\n";
    let path = committed_openapi_path();
    if std::env::var_os("RAMP_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json differs from the code; run `RAMP_BLESS=1 cargo test -p ramp-api --test api` \
         and commit the result"
    );
}

#[tokio::test]
async fn served_openapi_document_is_the_generated_one() {
    let server = Server::start(false).await;
    let r = Req::get("/v1/openapi.json").send(server.addr).await;
    let served = r.json();
    let generated: Value = serde_json::from_str(&ramp_api::openapi().to_json().unwrap()).unwrap();
    assert_eq!(served, generated);
    // Every route the router serves is documented, with its methods.
    let paths = served["paths"].as_object().unwrap();
    for (method, path) in [
        ("get", "/v1/rollouts"),
        ("post", "/v1/rollouts"),
        ("get", "/v1/rollouts/{name}"),
        ("get", "/v1/rollouts/{name}/events"),
        ("get", "/v1/rollouts/{name}/notices"),
        ("get", "/v1/rollouts/{name}/report"),
        ("delete", "/v1/rollouts/{name}"),
        ("post", "/v1/rollouts/{name}/pause"),
        ("post", "/v1/rollouts/{name}/resume"),
        ("post", "/v1/rollouts/{name}/approve"),
        ("post", "/v1/rollouts/{name}/promote"),
        ("post", "/v1/rollouts/{name}/rollback"),
        ("post", "/v1/rollouts/{name}/signals"),
        ("post", "/v1/alertmanager"),
        ("get", "/v1/certificates"),
        ("get", "/metrics"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/v1/openapi.json"),
    ] {
        assert!(
            paths[path][method].is_object(),
            "{method} {path} undocumented"
        );
    }
    assert_eq!(paths.len(), 17);
    server.shutdown().await;
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

/// The property names a schema documents for `value`: its own, those of every `allOf` part
/// (references resolved), and of the `oneOf` variant whose tag matches the value's.
fn documented(doc: &Value, schema: &Value, value: &Value) -> BTreeSet<String> {
    let resolve = |s: &Value| -> Value {
        match s["$ref"].as_str() {
            Some(r) => doc["components"]["schemas"][r.rsplit('/').next().unwrap()].clone(),
            None => s.clone(),
        }
    };
    let schema = resolve(schema);
    let mut names: BTreeSet<String> = schema["properties"]
        .as_object()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    if let Some(parts) = schema["allOf"].as_array() {
        for part in parts {
            names.extend(documented(doc, part, value));
        }
    }
    if let Some(variants) = schema["oneOf"].as_array() {
        let chosen = variants.iter().map(resolve).find(|v| {
            v["properties"].as_object().is_some_and(|p| {
                p.iter().any(|(tag, t)| {
                    t["enum"]
                        .as_array()
                        .is_some_and(|e| e.len() == 1 && e[0] == value[tag])
                })
            })
        });
        names.extend(documented(
            doc,
            &chosen.expect("a variant for the value"),
            value,
        ));
    }
    names
}

#[test]
fn documented_schemas_have_the_fields_the_real_types_serialise() {
    let doc = serde_json::to_value(ramp_api::openapi()).unwrap();
    let schema = |name: &str, value: &Value| -> BTreeSet<String> {
        documented(&doc, &doc["components"]["schemas"][name], value)
    };
    let mut status = status("demo", v1::Status::Running);
    status.why = Some(v1::StopReason::Operator {
        by: "ana".into(),
        note: "n".into(),
    });
    status.reason = Some("rolled back by ana: n".into());
    status.channels = vec![v1::ChannelView {
        channel: "ops-hook".into(),
        delivered: 1,
        failed: 0,
        retries: 2,
        pending: 0,
        error: Some("webhook ops-hook: HTTP 503".into()),
    }];
    let status = serde_json::to_value(status).unwrap();
    assert_eq!(
        schema("ChannelView", &status["channels"][0]),
        keys(&status["channels"][0])
    );
    assert_eq!(schema("RolloutStatus", &status), keys(&status));
    assert_eq!(
        schema("VariantView", &status["canary"]),
        keys(&status["canary"])
    );
    assert_eq!(
        schema("Verdict", &status["verdicts"][0]),
        keys(&status["verdicts"][0])
    );
    let completed = EventKind::Completed {
        forced: true,
        by: Some("ana".into()),
        reason: Some("vendor deadline".into()),
    };
    let fired = EventKind::TriggerFired {
        trigger: "error_rate > 1%".into(),
        explanation: "x".into(),
        evidence: None,
    };
    for kind in [completed, fired, EventKind::Started] {
        let page = serde_json::to_value(EventPage {
            events: vec![JournalEntry {
                seq: 1,
                event: Event {
                    at: 1,
                    phase: "p".into(),
                    kind,
                },
            }],
            next: None,
        })
        .unwrap();
        assert_eq!(schema("EventPage", &page), keys(&page));
        let entry = &page["events"][0];
        assert_eq!(schema("JournalEntry", entry), keys(entry), "{entry}");
    }
    // Enumerations: the real names are documented.
    let enum_values = |name: &str| -> Vec<String> {
        doc["components"]["schemas"][name]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{name} is not an enum"))
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    for s in [
        ramp_core::rollout::Status::Pending,
        ramp_core::rollout::Status::Running,
        ramp_core::rollout::Status::AwaitingApproval,
        ramp_core::rollout::Status::Holding,
        ramp_core::rollout::Status::Paused,
        ramp_core::rollout::Status::RolledBack,
        ramp_core::rollout::Status::Completed,
    ] {
        assert!(
            enum_values("Status").contains(&s.name().to_string()),
            "{}",
            s.name()
        );
    }
    for h in [
        BackendHealth::Operational,
        BackendHealth::Degraded,
        BackendHealth::Down,
        BackendHealth::Unknown,
    ] {
        let name = serde_json::to_value(h).unwrap();
        assert!(enum_values("BackendHealth").contains(&name.as_str().unwrap().to_string()));
    }
    for s in Severity::ALL {
        assert!(enum_values("Severity").contains(&s.name().to_string()));
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens

#[test]
fn tokens_hash_check_and_generate() {
    assert_eq!(
        Tokens::hash("abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let t = tokens();
    assert_eq!(t.check(VIEWER), Some(("vera".into(), Role::Viewer)));
    assert_eq!(t.check(ADMIN), Some(("ada".into(), Role::Admin)));
    assert_eq!(t.check(&VIEWER[..VIEWER.len() - 1]), None);
    assert_eq!(t.check(""), None);
    assert!(!t.is_empty());
    assert!(Tokens::new().is_empty());
    assert_eq!(Tokens::new().check(VIEWER), None);
    // Never printed: neither the tokens nor their hashes.
    let debug = format!("{t:?}");
    assert!(
        !debug.contains(VIEWER) && !debug.contains(&Tokens::hash(VIEWER)),
        "{debug}"
    );
    assert!(debug.contains("vera"));

    let a = Tokens::generate();
    let b = Tokens::generate();
    assert_ne!(a, b);
    for g in [&a, &b] {
        assert_eq!(g.len(), 5 + 64);
        assert!(g.starts_with("ramp_"));
        assert!(
            g[5..]
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
            "{g}"
        );
    }
    let mut t = Tokens::new();
    t.add_hashed("gen", Role::Ingest, &Tokens::hash(&a))
        .unwrap();
    assert_eq!(t.check(&a), Some(("gen".into(), Role::Ingest)));
    assert!(t.add_hashed("short", Role::Admin, "abc").is_err());
    assert!(
        t.add_hashed("nothex", Role::Admin, &"g".repeat(64))
            .is_err()
    );
    assert_eq!(t.len(), 1);
    assert_eq!("Operator".parse::<Role>(), Ok(Role::Operator));
    assert!("root".parse::<Role>().is_err());
    assert_eq!(serde_json::to_value(Role::Ingest).unwrap(), "ingest");
}

#[test]
fn checking_a_token_looks_at_every_entry_whatever_matches() {
    // A first-entry match costs as much as no match at all: the comparison never stops early.
    let mut t = Tokens::new();
    let first = Tokens::generate();
    t.add("first", Role::Viewer, &first);
    for i in 0..2000 {
        t.add(&format!("t{i}"), Role::Viewer, &Tokens::generate());
    }
    let last = Tokens::generate();
    t.add("last", Role::Viewer, &last);
    assert_eq!(t.check(&first).unwrap().0, "first");
    assert_eq!(t.check(&last).unwrap().0, "last");
    let median = |token: &str| {
        let mut times: Vec<Duration> = (0..51)
            .map(|_| {
                let start = std::time::Instant::now();
                std::hint::black_box(t.check(std::hint::black_box(token)));
                start.elapsed()
            })
            .collect();
        times.sort();
        times[25]
    };
    let unknown = "ramp_unknown";
    let (m_first, m_none) = (median(&first), median(unknown));
    // An early exit would make the first-entry match about 2000 times faster.
    assert!(
        m_first * 5 > m_none,
        "first-entry match {m_first:?} vs no match {m_none:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The listener's limits

/// A client that sends half a request head and stalls is cut off; so is one that connects and
/// says nothing.
#[tokio::test]
async fn slow_and_silent_clients_are_cut_off() {
    let server = Server::limited(ramp_api::ApiLimits {
        header_read_timeout: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    for conn in [&mut slow, &mut silent] {
        let mut buf = Vec::new();
        // The server closes (possibly after a 408): the read ends well before this bound.
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "the connection was not closed");
    }
    server.shutdown().await;
}

/// Over the connection cap, a new client waits until a slot frees; it is never refused. (The
/// holder has sent a request: a connection that never did would be closed to make room.)
#[tokio::test]
async fn the_connection_cap_holds_new_clients_until_a_slot_frees() {
    let server = Server::limited(ramp_api::ApiLimits {
        max_connections: 1,
        header_read_timeout: Duration::from_secs(30),
        ..Default::default()
    })
    .await;
    let mut holder = TcpStream::connect(server.addr).await.unwrap();
    holder
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 512];
    let n = holder.read(&mut answer).await.unwrap();
    assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 200"));
    let mut waiting = TcpStream::connect(server.addr).await.unwrap();
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let early =
        tokio::time::timeout(Duration::from_millis(300), waiting.read_to_end(&mut buf)).await;
    assert!(
        early.is_err(),
        "answered while over the cap: {:?}",
        String::from_utf8_lossy(&buf)
    );
    drop(holder);
    tokio::time::timeout(Duration::from_secs(10), waiting.read_to_end(&mut buf))
        .await
        .expect("answered once the slot freed")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    server.shutdown().await;
}

/// A body that trickles in is cut off with 408 instead of holding a connection slot.
#[tokio::test]
async fn a_body_that_never_finishes_gets_408() {
    let server = Server::limited(ramp_api::ApiLimits {
        body_read_timeout: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /v1/rollouts/demo/signals HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {INGEST}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"kind\":"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
        .await
        .expect("answered before the test's bound")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(server.fake.signals().is_empty());
    server.shutdown().await;
}

/// A client that sends requests but never reads the answers loses its connection once a write
/// has been blocked for the write timeout, so it cannot hold a slot for ever (found in review).
#[tokio::test]
async fn a_client_that_never_reads_is_cut_off() {
    let server = Server::limited(ramp_api::ApiLimits {
        max_connections: 1,
        write_timeout: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let hog = socket.connect(server.addr).await.unwrap();
    let (_hog_read, mut hog_write) = hog.into_split();
    // Pipelined requests, never reading: the server's writes fill the buffers and block.
    let writer = tokio::spawn(async move {
        let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".repeat(64);
        while hog_write.write_all(&request).await.is_ok() {}
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut next = TcpStream::connect(server.addr).await.unwrap();
    next.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), next.read_to_end(&mut buf))
        .await
        .expect("the hog was cut off and the next client answered")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
    writer.abort();
    server.shutdown().await;
}

/// Regression (issue 11): 300 idle unauthenticated connections delayed every call by seconds
/// (they held every slot until their head deadline). A connection that has sent nothing is
/// closed to make room for one that talks: a control call is answered at once, long before
/// the idle ones' deadline.
#[tokio::test]
async fn silent_connections_make_room_for_a_client_that_talks() {
    let server = Server::limited(ramp_api::ApiLimits {
        max_connections: 8,
        header_read_timeout: Duration::from_secs(60),
        ..Default::default()
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(server.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..5 {
        let answered = tokio::time::timeout(
            Duration::from_secs(30),
            Req::get("/v1/rollouts").token(VIEWER).send(server.addr),
        )
        .await
        .expect("answered well before the silent connections' 60 s deadline");
        assert_eq!(answered.status, 200);
    }
    drop(idle);
    server.shutdown().await;
}

/// Regression (issue 11): a webhook over 1 MiB (an alert storm) was refused with 413 and the
/// whole batch, PCI alert included, was lost (Alertmanager does not retry a 4xx).
#[tokio::test]
async fn an_alert_storm_over_a_mebibyte_is_taken_whole() {
    let server = Server::start(false).await;
    let filler = "x".repeat(2_000);
    let mut alerts: Vec<Value> = (0..1_000)
        .map(|i| {
            firing(
                json!({"alertname": "Noise", "instance": format!("i{i}")}),
                json!({"description": filler}),
                &format!("n{i}"),
            )
        })
        .collect();
    alerts.push(firing(
        json!({"alertname": "PCI", "rollout": "demo", "category": "pci"}),
        json!({"summary": "PAN in a log"}),
        "pci",
    ));
    let payload = alertmanager_payload(json!(alerts));
    assert!(payload.to_string().len() > 2 << 20, "over 2 MiB");
    let v = alertmanager(&server, payload).await;
    assert_eq!(v["accepted"], 1, "{v}");
    assert_eq!(v["skipped"], 1_000);
}
