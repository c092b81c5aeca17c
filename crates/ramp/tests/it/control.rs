//! The control plane end to end: the real binary, a real SQLite journal, real sockets, the CLI
//! client; killed with SIGKILL at several points and restarted.

use ramp_harness as common;

use bytes::Bytes;
use common::fresh_dir;
use http_body_util::{BodyExt, Empty, Full};
use hyper::Request;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::time::Duration;

/// An upstream that answers 500 while `fail` is set.
pub(crate) async fn upstream(fail: Arc<AtomicBool>) -> SocketAddr {
    common::upstream(fail, Arc::new(std::sync::atomic::AtomicU64::new(0))).await
}

pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) lines: Receiver<String>,
    pub(crate) proxy: SocketAddr,
    pub(crate) api: String,
    pub(crate) token: Option<String>,
}

/// A server is never left running, whatever the test does (it would hold CI's output open).
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn start(dir: &Path, plan: Option<&Path>) -> Server {
    start_scaled(dir, plan, 3600)
}

/// `ramp serve` with its clock at `scale` times real time.
pub(crate) fn start_scaled(dir: &Path, plan: Option<&Path>, scale: u32) -> Server {
    start_with(dir, plan, scale, &[])
}

/// `ramp serve` with more arguments.
pub(crate) fn start_with(dir: &Path, plan: Option<&Path>, scale: u32, extra: &[&str]) -> Server {
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--db".into(),
        dir.join("ramp.db").display().to_string(),
        "--api".into(),
        "127.0.0.1:0".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--time-scale".into(),
        scale.to_string(),
    ];
    if let Some(p) = plan {
        args.push("--plan".into());
        args.push(p.display().to_string());
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_ramp"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (mut proxy, mut api, mut token) = (None, None, None);
    let mut expect_token = false;
    while proxy.is_none() || api.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("serve starts");
        if expect_token {
            token = Some(line.trim().to_string());
            expect_token = false;
        }
        if line.contains("created an admin token") {
            expect_token = true;
        }
        if let Some(rest) = line
            .split("proxy listening on http://")
            .nth(1)
            .or_else(|| line.split("proxy listening on https://").nth(1))
        {
            proxy = Some(rest.split_whitespace().next().unwrap().parse().unwrap());
        }
        if let Some(rest) = line.split("API on ").nth(1) {
            api = Some(rest.trim().to_string());
        }
    }
    Server {
        child,
        lines: rx,
        proxy: proxy.unwrap(),
        api: api.unwrap(),
        token,
    }
}

pub(crate) fn cli(server: &Server, token: &str, args: &[&str]) -> (i32, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_ramp"))
        .args(args)
        .env("RAMP_SERVER", &server.api)
        .env("RAMP_TOKEN", token)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

pub(crate) fn status(server: &Server, token: &str) -> Value {
    let (code, out) = cli(server, token, &["status", "ctl", "--json"]);
    assert_eq!(code, 0, "{out}");
    serde_json::from_str(&out).unwrap()
}

pub(crate) async fn traffic(proxy: SocketAddr, n: u32) {
    common::traffic(proxy, n, 300).await;
}

/// POSTs `body` to the API; answers with the status and the JSON body (Null if none).
pub(crate) async fn api_post(
    api: &str,
    token: &str,
    path: &str,
    content_type: &str,
    body: String,
) -> (u16, Value) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let req = Request::post(format!("{api}{path}"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
    )
}

pub(crate) fn kill9(mut s: Server) {
    s.child.kill().unwrap(); // SIGKILL
    s.child.wait().unwrap();
    // What the killed server printed last, for a failing test's output.
    #[allow(clippy::print_stdout)]
    while let Ok(line) = s.lines.try_recv() {
        println!("server: {line}");
    }
}

pub(crate) fn plan_file(dir: &Path, stable: SocketAddr, canary: SocketAddr) -> PathBuf {
    let p = dir.join("ctl.toml");
    std::fs::write(
        &p,
        format!(
            r#"name = "ctl"
[upstreams]
stable = "http://{stable}"
canary = "http://{canary}"
[[phase]]
name = "canary"
traffic = "50%"
duration = "240h"
success = ["error_rate < 0.1%"]
[[phase]]
name = "full"
traffic = "100%"
duration = "240h"
[rollback]
triggers = ["error_rate > 1%", "pci_alerts >= 2"]
"#
        ),
    )
    .unwrap();
    p
}

/// A second rollout's plan (10% canary, its own free port), for `POST /v1/rollouts`.
pub(crate) fn other_plan(name: &str, stable: SocketAddr, canary: SocketAddr) -> String {
    format!(
        "name = \"{name}\"\n[proxy]\nlisten = \"127.0.0.1:0\"\n[upstreams]\nstable = \"http://{stable}\"\ncanary = \"http://{canary}\"\n[[phase]]\nname = \"canary\"\ntraffic = \"10%\"\nduration = \"240h\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_several_points_resumes_the_same_rollout() {
    let dir = fresh_dir("ramp-ctl");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let canary_fail = Arc::new(AtomicBool::new(false));
    let stable = upstream(Arc::new(AtomicBool::new(false))).await;
    let canary = upstream(canary_fail.clone()).await;
    let plan = plan_file(&dir, stable, canary);

    // Run 1: start, take traffic, accept a signal, then SIGKILL.
    let s = start(&dir, Some(&plan));
    let token = s
        .token
        .clone()
        .expect("the first start prints an admin token");
    traffic(s.proxy, 600).await;
    let (code, out) = cli(
        &s,
        &token,
        &["signal", "ctl", "pci_alert", "--note", "first"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("journaled at position"), "{out}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = status(&s, &token);
    assert_eq!(before["status"], "running");
    assert_eq!(before["share"], 5000);
    let requests_before = before["canary"]["requests"].as_u64().unwrap();
    assert!(requests_before > 100, "{before}");
    let elapsed_before = before["phase_elapsed"].as_u64().unwrap();
    let proxy_before = s.proxy;
    kill9(s);
    // Every analysis window's aggregates were journaled, and they add up to the evidence.
    {
        use ramp_store::Store;
        let store = ramp_store::SqliteStore::open(&dir.join("ramp.db")).unwrap();
        let windows = store.windows("ctl", 0, 1_000_000).await.unwrap();
        assert!(windows.len() > 10, "{} windows", windows.len());
        let canary: u64 = windows.iter().map(|(_, w)| w.canary.requests).sum();
        let stored = store.load("ctl").await.unwrap();
        assert_eq!(canary, stored.state.evidence.canary.requests);
        assert!(canary >= requests_before);
    }

    // Down for a while (several hours of plan time at ×3600): downtime is not phase time.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Run 2: no --plan; the rollout resumes from the journal.
    let s = start(&dir, None);
    assert!(
        s.token.is_none(),
        "the token survives restarts (only its hash is stored)"
    );
    assert_eq!(
        s.proxy, proxy_before,
        "the proxy serves on the address its clients know (it was a free port, remembered)"
    );
    let after = status(&s, &token);
    assert_eq!(after["status"], "running");
    assert_eq!(after["phase_name"], "canary");
    assert_eq!(
        after["share"], 5000,
        "the proxy routes by the journaled share"
    );
    let elapsed_after = after["phase_elapsed"].as_u64().unwrap();
    assert!(
        elapsed_after >= elapsed_before,
        "{elapsed_before} -> {elapsed_after}\nbefore: {before}\nafter: {after}"
    );
    assert!(
        elapsed_after < elapsed_before + 2 * 3_600_000,
        "3 s of downtime (3h at ×3600) did not count: {elapsed_before} -> {elapsed_after}"
    );
    assert!(
        after["canary"]["requests"].as_u64().unwrap() >= requests_before,
        "evidence kept"
    );
    // The signal accepted before the kill is in the journal, and so is the restart (journaled
    // by the resumed controller's first step, which may come just after the API answers).
    let mut kinds: Vec<String> = Vec::new();
    for _ in 0..100 {
        let (code, out) = cli(&s, &token, &["events", "ctl", "--json"]);
        assert_eq!(code, 0, "{out}");
        let events: Value = serde_json::from_str(&out).unwrap();
        kinds = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_string())
            .collect();
        if kinds.iter().any(|k| k == "restarted") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(kinds.iter().any(|k| k == "signal_received"), "{kinds:?}");
    assert!(kinds.iter().any(|k| k == "restarted"), "{kinds:?}");
    // Counting survives too: a second PCI alert now is "multiple PCI alerts".
    let (code, out) = cli(
        &s,
        &token,
        &["signal", "ctl", "pci_alert", "--note", "second"],
    );
    assert_eq!(code, 0, "{out}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rolled = status(&s, &token);
    assert_eq!(rolled["status"], "rolled_back", "{rolled}");
    assert_eq!(rolled["share"], 0);
    kill9(s);

    // Run 3: a rolled-back rollout stays rolled back, all traffic on stable.
    let s = start(&dir, None);
    let last = status(&s, &token);
    assert_eq!(last["status"], "rolled_back");
    assert_eq!(last["share"], 0);
    canary_fail.store(true, Ordering::Relaxed);
    traffic(s.proxy, 100).await;
    let (code, out) = cli(&s, &token, &["rollback", "ctl", "--reason", "again"]);
    assert_eq!(
        code, 1,
        "a rollback of a rolled-back rollout is a conflict: {out}"
    );
    let (code, out) = cli(&s, "ramp_not_a_token", &["status", "ctl"]);
    assert_eq!(code, 2, "a bad token is our mistake: {out}");
    kill9(s);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn token_add_prints_a_token_once_and_stores_only_its_hash() {
    let dir = fresh_dir("ramp-tok");
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("x.db");
    let o = Command::new(env!("CARGO_BIN_EXE_ramp"))
        .args([
            "token",
            "add",
            "alertmanager",
            "ingest",
            "--db",
            db.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success());
    let token = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(token.starts_with("ramp_") && token.len() > 40, "{token}");
    let file = std::fs::read_to_string(dir.join("x.db.tokens")).unwrap();
    assert!(file.contains("alertmanager ingest "), "{file}");
    assert!(!file.contains(&token), "the token itself is never stored");
    let o = Command::new(env!("CARGO_BIN_EXE_ramp"))
        .args([
            "token",
            "add",
            "x",
            "superuser",
            "--db",
            db.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `ramp token list` shows names and roles only; `ramp token revoke` takes effect on a running
/// server at its next request; `--token-file` keeps a token off the command line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_listed_revoked_on_a_running_server_and_read_from_a_file() {
    let dir = fresh_dir("ramp-tok-life");
    std::fs::create_dir_all(&dir).unwrap();
    let stable = upstream(Arc::new(AtomicBool::new(false))).await;
    let canary = upstream(Arc::new(AtomicBool::new(false))).await;
    let plan = plan_file(&dir, stable, canary);
    let s = start(&dir, Some(&plan));
    let admin = s.token.clone().unwrap();
    let db = dir.join("ramp.db");
    let ramp = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_ramp"))
            .args(args)
            .env("RAMP_SERVER", &s.api)
            .env_remove("RAMP_TOKEN")
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, bob, _) = ramp(&[
        "token",
        "add",
        "bob",
        "viewer",
        "--db",
        db.to_str().unwrap(),
    ]);
    assert_eq!(code, 0);
    let bob = bob.trim().to_string();
    let (code, _, err) = ramp(&["token", "add", "bob", "admin", "--db", db.to_str().unwrap()]);
    assert_eq!(code, 2, "one name, one token: {err}");
    let file = dir.join("bob.token");
    std::fs::write(&file, format!("{bob}\n")).unwrap();
    let file_arg = file.to_str().unwrap();
    let (code, out, err) = ramp(&["status", "ctl", "--token-file", file_arg]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ctl"), "{out}");
    let (code, out, _) = ramp(&["token", "list", "--db", db.to_str().unwrap()]);
    assert_eq!(code, 0);
    let listed: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        listed,
        vec![vec!["admin", "admin"], vec!["bob", "viewer"]],
        "{out}"
    );
    assert!(
        !out.contains(&bob) && !out.contains(&admin),
        "no token is ever listed"
    );
    let (code, _, err) = ramp(&["token", "revoke", "bob", "--db", db.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = ramp(&["status", "ctl", "--token-file", file_arg]);
    assert_eq!(code, 2, "a revoked token is refused at once: {out}{err}");
    assert!(err.contains("unknown token"), "{err}");
    let (code, _, err) = ramp(&["token", "revoke", "bob", "--db", db.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no token named"), "{err}");
    // The admin token still works; a token file that is missing is a clear error.
    let (code, _, _) = ramp(&["status", "ctl", "--token", &admin]);
    assert_eq!(code, 0);
    let (code, _, err) = ramp(&["status", "ctl", "--token-file", "/nonexistent/token"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read the token file"), "{err}");
    kill9(s);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_runs_several_rollouts_created_over_the_api() {
    let dir = fresh_dir("ramp-multi");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let stable = upstream(Arc::new(AtomicBool::new(false))).await;
    let canary = upstream(Arc::new(AtomicBool::new(false))).await;
    let plan = plan_file(&dir, stable, canary);
    let s = start(&dir, Some(&plan));
    let token = s.token.clone().unwrap();
    // A second rollout, with its own upstreams and listener, created by POST /v1/rollouts.
    let other_stable = upstream(Arc::new(AtomicBool::new(false))).await;
    let other_canary = upstream(Arc::new(AtomicBool::new(false))).await;
    let body = other_plan("search", other_stable, other_canary);
    let post = |body: String, token: String| {
        let api = s.api.clone();
        async move { api_post(&api, &token, "/v1/rollouts", "application/toml", body).await }
    };
    let (code, created) = post(body.clone(), token.clone()).await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["name"], "search");
    assert_eq!(created["share"], 1000);
    // The same name again is a conflict; a broken plan is a 400 with positions.
    let (code, _) = post(body, token.clone()).await;
    assert_eq!(code, 409);
    let (code, err) = post(
        "name = \"x\"\n[[phase]]\nname = \"a\"\ntraffic = \"5%\"\nduration = \"24 hours\"\n".into(),
        token.clone(),
    )
    .await;
    assert_eq!(code, 400, "{err}");
    assert_eq!(err["errors"][0]["line"], 5, "{err}");
    let (code, out) = cli(&s, &token, &["status", "--json"]);
    assert_eq!(code, 0, "{out}");
    let all: Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["ctl", "search"]);
    let listens: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["listen"].as_str().unwrap())
        .collect();
    assert_ne!(listens[0], listens[1], "each rollout has its own listener");
    kill9(s);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An Alertmanager alert delivered before a SIGKILL and re-delivered after the restart (as
/// Alertmanager does on every group notification) is counted once: with `pci_alerts >= 2` as a
/// trigger, a double count would roll back a healthy canary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_re_delivered_after_a_restart_is_counted_once() {
    let dir = fresh_dir("ramp-am");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let stable = upstream(Arc::new(AtomicBool::new(false))).await;
    let canary = upstream(Arc::new(AtomicBool::new(false))).await;
    let plan = plan_file(&dir, stable, canary);
    let payload = |fingerprint: &str, starts_at: &str| {
        serde_json::json!({
            "version": "4",
            "groupKey": "{}:{rollout=\"ctl\"}",
            "truncatedAlerts": 0,
            "status": "firing",
            "receiver": "ramp",
            "groupLabels": {"rollout": "ctl"},
            "commonLabels": {"rollout": "ctl", "category": "pci"},
            "commonAnnotations": {},
            "externalURL": "http://alertmanager.example:9093",
            "alerts": [{
                "status": "firing",
                "labels": {"alertname": "PanInLogs", "rollout": "ctl", "category": "pci"},
                "annotations": {"summary": "card number in a log line"},
                "startsAt": starts_at,
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus.example:9090/graph",
                "fingerprint": fingerprint
            }]
        })
        .to_string()
    };
    let deliver = |s: &Server, token: &str, body: String| {
        let api = s.api.clone();
        let token = token.to_string();
        async move { api_post(&api, &token, "/v1/alertmanager", "application/json", body).await }
    };

    let s = start(&dir, Some(&plan));
    let token = s.token.clone().unwrap();
    let (code, v) = deliver(&s, &token, payload("c0ffee", "2026-11-27T01:00:00Z")).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["accepted"], 1, "{v}");
    // The group is notified again at once (another alert joined, say): a duplicate.
    let (code, v) = deliver(&s, &token, payload("c0ffee", "2026-11-27T01:00:00Z")).await;
    assert_eq!(
        (code, &v["accepted"], &v["duplicates"]),
        (200, &0.into(), &1.into()),
        "{v}"
    );
    kill9(s);

    let s = start(&dir, None);
    let (code, v) = deliver(&s, &token, payload("c0ffee", "2026-11-27T01:00:00Z")).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        (&v["accepted"], &v["duplicates"]),
        (&0.into(), &1.into()),
        "the repeat after a restart is recognised: {v}"
    );
    let st = status(&s, &token);
    assert_eq!(
        st["status"], "running",
        "one PCI alert is not 'multiple': {st}"
    );
    let (code, out) = cli(&s, &token, &["events", "ctl", "--json"]);
    assert_eq!(code, 0, "{out}");
    let events: Value = serde_json::from_str(&out).unwrap();
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "signal_received").count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "signal_repeated").count(),
        2,
        "{kinds:?}"
    );
    // The same alert resolved and firing again (a new startsAt) is a new alert: the second PCI
    // alert rolls back.
    let (code, v) = deliver(&s, &token, payload("c0ffee", "2026-11-27T05:00:00Z")).await;
    assert_eq!((code, &v["accepted"]), (200, &1.into()), "{v}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(status(&s, &token)["status"], "rolled_back");
    // The journal says who sent each count and under which key: the same fingerprint, two
    // starts — one alert that resolved and fired again.
    let (code, out) = cli(&s, &token, &["events", "ctl", "--json"]);
    assert_eq!(code, 0, "{out}");
    let events: Value = serde_json::from_str(&out).unwrap();
    let received: Vec<(&str, &str)> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "signal_received")
        .map(|e| (e["from"].as_str().unwrap(), e["key"].as_str().unwrap()))
        .collect();
    assert_eq!(
        received,
        vec![
            (
                "alertmanager via token admin",
                "alertmanager fingerprint c0ffee 2026-11-27T01:00:00Z"
            ),
            (
                "alertmanager via token admin",
                "alertmanager fingerprint c0ffee 2026-11-27T05:00:00Z"
            ),
        ],
        "{out}"
    );
    let (code, text) = cli(&s, &token, &["events", "ctl"]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("(from alertmanager via token admin)"),
        "{text}"
    );
    kill9(s);
    let _ = std::fs::remove_dir_all(&dir);
}

/// One rollout whose journal cannot be read does not keep the others from resuming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_rollout_does_not_stop_the_others_from_resuming() {
    let dir = fresh_dir("ramp-corrupt");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let stable = upstream(Arc::new(AtomicBool::new(false))).await;
    let canary = upstream(Arc::new(AtomicBool::new(false))).await;
    let plan = plan_file(&dir, stable, canary);
    let s = start(&dir, Some(&plan));
    let token = s.token.clone().unwrap();
    let body = other_plan("broken", stable, canary);
    let (code, v) = api_post(&s.api, &token, "/v1/rollouts", "application/toml", body).await;
    assert_eq!(code, 201, "{v}");
    kill9(s);
    {
        let conn = rusqlite::Connection::open(dir.join("ramp.db")).unwrap();
        conn.execute(
            "UPDATE snapshots SET state = '{\"garbage\": true}' WHERE rollout = 'broken'",
            [],
        )
        .unwrap();
    }
    let s = start(&dir, None);
    let st = status(&s, &token);
    assert_eq!(st["status"], "running", "ctl resumed: {st}");
    traffic(s.proxy, 20).await;
    let (code, out) = cli(&s, &token, &["status", "--json"]);
    assert_eq!(code, 0, "{out}");
    let all: Value = serde_json::from_str(&out).unwrap();
    let listed: Vec<(&str, &str)> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap(), r["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        listed,
        vec![("broken", "unavailable"), ("ctl", "running")],
        "the broken rollout is not served, and says so"
    );
    let broken = &all[0];
    assert!(
        broken["reason"].as_str().unwrap().contains("journal"),
        "with the reason: {broken}"
    );
    // The server stays ready (the healthy rollout's proxy must stay in rotation), and the
    // metrics name the broken rollout as unavailable, for alerting.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let resp = client
        .get(format!("{}/readyz", s.api).parse().unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let req = Request::get(format!("{}/metrics", s.api))
        .header("authorization", format!("Bearer {token}"))
        .body(Empty::new())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains(r#"ramp_rollout_status{rollout="broken",status="unavailable"} 1"#),
        "{body}"
    );
    assert!(
        body.contains(r#"ramp_rollout_status{rollout="ctl",status="running"} 1"#),
        "{body}"
    );
    assert!(
        !body.contains(r#"ramp_requests_total{rollout="broken""#),
        "no zeroed counters for a rollout that is not running: {body}"
    );
    kill9(s);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A resumed rollout serves where it served before, also when its plan asked for "any free
/// port" (`listen = "127.0.0.1:0"`); when that address has been taken meanwhile it moves to a
/// free port and still resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_rollouts_keep_their_port_or_move_when_it_is_taken() {
    let dir = fresh_dir("ramp-ports");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let stable = upstream(Arc::new(AtomicBool::new(false))).await;
    let canary = upstream(Arc::new(AtomicBool::new(false))).await;
    let plan = plan_file(&dir, stable, canary);
    let s = start(&dir, Some(&plan));
    let token = s.token.clone().unwrap();
    let body = other_plan("search", stable, canary);
    let (code, created) = api_post(&s.api, &token, "/v1/rollouts", "application/toml", body).await;
    assert_eq!(code, 201, "{created}");
    let search_before = created["listen"].as_str().unwrap().to_string();
    let ctl_before = s.proxy;
    kill9(s);

    // Someone else takes ctl's old port while ramp is down.
    let squatter = std::net::TcpListener::bind(ctl_before).unwrap();
    let s = start(&dir, None);
    let (code, out) = cli(&s, &token, &["status", "--json"]);
    assert_eq!(code, 0, "{out}");
    let all: Value = serde_json::from_str(&out).unwrap();
    let listen = |name: &str| {
        all.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .map(|r| {
                (
                    r["listen"].as_str().unwrap().to_string(),
                    r["status"].clone(),
                )
            })
            .unwrap_or_else(|| panic!("{name} not resumed: {all}"))
    };
    let (search_after, search_status) = listen("search");
    assert_eq!(
        search_after, search_before,
        "an explicit :0 keeps the port it got"
    );
    assert_eq!(search_status, "running");
    let (ctl_after, ctl_status) = listen("ctl");
    assert_ne!(
        ctl_after,
        ctl_before.to_string(),
        "moved off the taken port"
    );
    assert_eq!(ctl_status, "running");
    drop(squatter);
    kill9(s);
    let _ = std::fs::remove_dir_all(&dir);
}
