//! Regressions of the server's edges, each with the real binary: creating a rollout is all or
//! nothing, a settled rollout can be retired, SIGTERM drains like Ctrl-C, an operator command
//! answers with the state after it, a new token works without a restart, and a journal that
//! loads but does not fit its plan makes only that rollout unavailable.

use crate::control::{
    Server, api_post, cli, kill9, other_plan, plan_file, start, status, traffic, upstream,
};
use ramp_harness::fresh_dir;
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

fn rollout_names(s: &Server, token: &str) -> Vec<String> {
    let (code, out) = cli(s, token, &["status", "--json"]);
    assert_eq!(code, 0, "{out}");
    let all: Value = serde_json::from_str(&out).unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect()
}

/// Regression: a plan that `ramp plan check` accepts used to fail only when its proxy started,
/// after the rollout had been journaled (a ghost that broke every later start); a plan without
/// `[upstreams]` was 409; a bad plan could leave a row. Now a refused create leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_a_rollout_is_all_or_nothing() {
    let dir = fresh_dir("ramp-create");
    let stable = upstream(Arc::new(AtomicBool::new(false))).await;
    let canary = upstream(Arc::new(AtomicBool::new(false))).await;
    let plan = plan_file(&dir, stable, canary);
    let s = start(&dir, Some(&plan));
    let token = s.token.clone().unwrap();
    let toml = "application/toml";

    // Every problem at once, with its position.
    let bad = other_plan("bad", stable, canary).replace(
        "duration = \"240h\"",
        "duration = \"240h\"\nsuccess = [\"eror_rate < 1%\"]",
    );
    let (code, v) = api_post(&s.api, &token, "/v1/rollouts", toml, bad).await;
    assert_eq!(code, 400, "{v}");
    assert_eq!(
        (
            v["errors"][0]["line"].clone(),
            v["errors"][0]["col"].clone()
        ),
        (11.into(), 13.into()),
        "{v}"
    );
    assert!(
        v["errors"][0]["help"]
            .as_str()
            .unwrap()
            .contains("error_rate")
    );

    // A header name the proxy could never match is refused by the parser, not the proxy.
    let bad_header = other_plan("hdr", stable, canary)
        .replace("[proxy]", "[cohort]\nkey = \"header:x user\"\n[proxy]");
    let (code, v) = api_post(&s.api, &token, "/v1/rollouts", toml, bad_header).await;
    assert_eq!(code, 400, "{v}");

    // No upstreams: 400, with the reason.
    let no_upstreams =
        "name = \"bare\"\n[[phase]]\nname = \"p\"\ntraffic = \"10%\"\nduration = \"1h\"\n"
            .to_string();
    let (code, v) = api_post(&s.api, &token, "/v1/rollouts", toml, no_upstreams).await;
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("[upstreams]"), "{v}");

    // A listener that cannot be bound (the API's own address): 409, and no ghost.
    let api_addr = s.api.trim_start_matches("http://").to_string();
    let squatter = other_plan("squat", stable, canary).replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{api_addr}\""),
    );
    let (code, v) = api_post(&s.api, &token, "/v1/rollouts", toml, squatter).await;
    assert_eq!(code, 409, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("cannot listen"),
        "{v}"
    );

    // Another rollout's proxy address (the proxies bind with SO_REUSEPORT, which would have
    // let the two split its users): 409 too.
    let thief = other_plan("thief", stable, canary).replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{}\"", s.proxy),
    );
    let (code, v) = api_post(&s.api, &token, "/v1/rollouts", toml, thief).await;
    assert_eq!(code, 409, "{v}");

    assert_eq!(rollout_names(&s, &token), vec!["ctl"]);
    // Nothing was journaled either: a restart knows only `ctl`.
    kill9(s);
    let s = start(&dir, None);
    assert_eq!(rollout_names(&s, &token), vec!["ctl"]);
    let (code, out) = cli(&s, &token, &["events", "squat"]);
    assert_eq!(code, 2, "unknown rollout: {out}");
}

/// Regression (issue 11): a plan posted over the API could listen on every interface and
/// proxy to any host. By default it listens on loopback only; `--allow-listen` widens that and
/// `--allow-upstream` limits where it may proxy; a refusal is 403 and leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_created_over_the_api_listen_and_proxy_only_where_allowed() {
    let dir = fresh_dir("ramp-allow");
    let stable = upstream(Arc::new(AtomicBool::new(false))).await;
    let canary = upstream(Arc::new(AtomicBool::new(false))).await;
    let plan = plan_file(&dir, stable, canary);
    let toml = "application/toml";
    let s = start(&dir, Some(&plan));
    let token = s.token.clone().unwrap();
    let everywhere = other_plan("wide", stable, canary).replace("127.0.0.1:0", "0.0.0.0:0");
    let (code, v) = api_post(&s.api, &token, "/v1/rollouts", toml, everywhere.clone()).await;
    assert_eq!(code, 403, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("--allow-listen"),
        "{v}"
    );
    assert_eq!(rollout_names(&s, &token), vec!["ctl"]);
    let (code, v) = api_post(
        &s.api,
        &token,
        "/v1/rollouts",
        toml,
        other_plan("lo", stable, canary),
    )
    .await;
    assert_eq!(code, 201, "loopback is fine: {v}");
    kill9(s);
    // A fresh journal (the tokens file stays).
    for f in ["ramp.db", "ramp.db-pins", "ramp.db-journal"] {
        let _ = std::fs::remove_file(dir.join(f));
    }

    // Widened listeners, narrowed upstreams: the test's upstreams by address and port only.
    let allowed = format!("{stable},{canary}");
    let s = crate::control::start_with(
        &dir,
        Some(&plan),
        3600,
        &["--allow-listen", "0.0.0.0", "--allow-upstream", &allowed],
    );
    let (code, v) = api_post(&s.api, &token, "/v1/rollouts", toml, everywhere).await;
    assert_eq!(code, 201, "{v}");
    let metadata = other_plan("meta", stable, canary)
        .replace(&format!("http://{canary}"), "http://169.254.169.254");
    let (code, v) = api_post(&s.api, &token, "/v1/rollouts", toml, metadata).await;
    assert_eq!(code, 403, "{v}");
    let why = v["error"].as_str().unwrap();
    assert!(
        why.contains("upstreams.canary") && why.contains("--allow-upstream"),
        "{why}"
    );
    assert_eq!(rollout_names(&s, &token), vec!["ctl", "wide"]);
    kill9(s);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `DELETE /v1/rollouts/{name}` (`ramp retire`): only an ended rollout; its proxy stops, its
/// journal stays readable, and a restart does not bring it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_that_has_ended_can_be_retired() {
    let dir = fresh_dir("ramp-retire");
    let stable = upstream(Arc::new(AtomicBool::new(false))).await;
    let canary = upstream(Arc::new(AtomicBool::new(false))).await;
    let plan = plan_file(&dir, stable, canary);
    let s = start(&dir, Some(&plan));
    let token = s.token.clone().unwrap();
    let (code, out) = cli(&s, &token, &["retire", "ctl"]);
    assert_eq!(code, 1, "a running rollout is not retired: {out}");
    assert!(out.contains("has not ended"), "{out}");
    let (code, out) = cli(&s, &token, &["rollback", "ctl", "--reason", "done"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("rolled_back"),
        "the answer is the state after it: {out}"
    );
    let (code, out) = cli(&s, &token, &["retire", "ctl"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("(retired)"), "{out}");
    // Its proxy no longer listens; its journal still reads.
    assert!(tokio::net::TcpStream::connect(s.proxy).await.is_err());
    let (code, out) = cli(&s, &token, &["events", "ctl"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ROLLED BACK"), "{out}");
    kill9(s);
    let s = start_without_rollouts(&dir);
    let st = status(&s, &token);
    assert_eq!(
        (st["retired"].clone(), st["status"].clone()),
        (Value::Bool(true), "rolled_back".into())
    );
}

/// A restart whose only rollout is retired prints no proxy line: wait for the API line only.
fn start_without_rollouts(dir: &std::path::Path) -> Server {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ramp"))
        .args([
            "serve",
            "--db",
            &dir.join("ramp.db").display().to_string(),
            "--api",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let api = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("serve starts");
        if let Some(rest) = line.split("API on ").nth(1) {
            break rest.trim().to_string();
        }
    };
    Server {
        child,
        lines: rx,
        proxy: "127.0.0.1:1".parse().unwrap(),
        api,
        token: None,
    }
}

/// SIGTERM drains exactly like Ctrl-C: the server stops cleanly (exit 0), says what each
/// rollout's state is, and the journal holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_like_ctrl_c() {
    let dir = fresh_dir("ramp-sigterm");
    let stable = upstream(Arc::new(AtomicBool::new(false))).await;
    let canary = upstream(Arc::new(AtomicBool::new(false))).await;
    let plan = plan_file(&dir, stable, canary);
    let mut s = start(&dir, Some(&plan));
    let token = s.token.clone().unwrap();
    traffic(s.proxy, 50).await;
    let (code, out) = cli(&s, &token, &["pause", "ctl", "--reason", "before the term"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("paused"),
        "the answer is the state after it: {out}"
    );
    let pid = s.child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0), "a clean stop");
    let said: Vec<String> = s.lines.try_iter().collect();
    assert!(
        said.iter()
            .any(|l| l.contains("stopped; rollout ctl is paused")),
        "{said:?}"
    );
    drop(s);
    let s = start(&dir, None);
    assert_eq!(status_of(&s, &token), "paused");
}

fn status_of(s: &Server, token: &str) -> String {
    status(s, token)["status"].as_str().unwrap().to_string()
}

/// `ramp token add` takes effect without a restart: the server re-reads the tokens file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_added_while_serving_works_at_once() {
    let dir = fresh_dir("ramp-token-live");
    let stable = upstream(Arc::new(AtomicBool::new(false))).await;
    let canary = upstream(Arc::new(AtomicBool::new(false))).await;
    let plan = plan_file(&dir, stable, canary);
    let s = start(&dir, Some(&plan));
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ramp"))
        .args(["token", "add", "vera", "viewer", "--db"])
        .arg(dir.join("ramp.db"))
        .output()
        .unwrap();
    assert!(o.status.success());
    let viewer = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert_eq!(status_of(&s, &viewer), "running");
    // A viewer may read, not act.
    let (code, out) = cli(&s, &viewer, &["pause", "ctl", "--reason", "x"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("403"), "{out}");
    // A name the file would read as a comment is refused at once.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ramp"))
        .args(["token", "add", "#bob", "viewer", "--db"])
        .arg(dir.join("ramp.db"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

/// Regression: a snapshot that loads but does not fit its plan (here, a phase index past the
/// plan's phases) panicked the resume; now only that rollout is unavailable, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_that_does_not_fit_its_plan_makes_only_that_rollout_unavailable() {
    let dir = fresh_dir("ramp-misfit");
    let stable = upstream(Arc::new(AtomicBool::new(false))).await;
    let canary = upstream(Arc::new(AtomicBool::new(false))).await;
    let plan = plan_file(&dir, stable, canary);
    let s = start(&dir, Some(&plan));
    let token = s.token.clone().unwrap();
    let (code, v) = api_post(
        &s.api,
        &token,
        "/v1/rollouts",
        "application/toml",
        other_plan("misfit", stable, canary),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    kill9(s);
    {
        let conn = rusqlite::Connection::open(dir.join("ramp.db")).unwrap();
        let state: String = conn
            .query_row(
                "SELECT state FROM snapshots WHERE rollout = 'misfit'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let mut state: Value = serde_json::from_str(&state).unwrap();
        state["phase"] = 9.into();
        conn.execute(
            "UPDATE snapshots SET state = ?1 WHERE rollout = 'misfit'",
            [state.to_string()],
        )
        .unwrap();
    }
    let s = start(&dir, None);
    assert_eq!(status_of(&s, &token), "running", "ctl resumed");
    let (code, out) = cli(&s, &token, &["status", "misfit", "--json"]);
    assert_eq!(code, 0, "{out}");
    let misfit: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(misfit["status"], "unavailable");
    assert!(
        misfit["reason"].as_str().unwrap().contains("phase index 9"),
        "{misfit}"
    );
    let (code, out) = cli(&s, &token, &["pause", "misfit", "--reason", "x"]);
    assert_eq!(code, 1, "not running, so not commandable: {out}");
}

/// `--log-format json`: every line on stdout is one JSON object — lifecycle, decisions with
/// their numbers, notices — and the one-time admin token goes to stderr, not into that stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_log_is_one_object_per_line() {
    let dir = fresh_dir("ramp-json-log");
    let stable = upstream(Arc::new(AtomicBool::new(false))).await;
    let canary = upstream(Arc::new(AtomicBool::new(false))).await;
    let plan = plan_file(&dir, stable, canary);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ramp"))
        .args([
            "--log-format",
            "json",
            "serve",
            "--api",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--db")
        .arg(dir.join("ramp.db"))
        .arg("--plan")
        .arg(&plan)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let mut seen = Vec::new();
    while !seen.iter().any(|v: &Value| v["lifecycle"] == "serving")
        || !seen.iter().any(|v: &Value| v["notice"].is_object())
        || !seen
            .iter()
            .any(|v: &Value| v["event"]["kind"] == "phase_started")
    {
        let line = lines.next().expect("a line").unwrap();
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        seen.push(v);
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let kinds: Vec<&str> = seen
        .iter()
        .filter_map(|v| v["event"]["kind"].as_str())
        .collect();
    assert_eq!(kinds[..2], ["started", "phase_started"], "{seen:?}");
    let notice = seen.iter().find(|v| v["notice"].is_object()).unwrap();
    assert!(
        notice["notice"]["headline"]
            .as_str()
            .unwrap()
            .starts_with("phase canary started"),
        "{notice}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("created an admin token"),
        "the token banner is on stderr"
    );
    assert!(
        seen.iter().all(|v| !v.to_string().contains("ramp_")),
        "no token in the stream"
    );
}
