//! `ramp serve` as a user runs it: the real binary, real sockets, a compressed clock.
// Tests bound their own waits and measure on the real clock; no decision reads it.
#![allow(clippy::disallowed_methods)]

use ramp_harness as common;

use bytes::Bytes;
use common::{fresh_dir, upstream};
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn plan(stable: SocketAddr, canary: SocketAddr) -> String {
    format!(
        r#"name = "serve-test"
[upstreams]
stable = "http://{stable}"
canary = "http://{canary}"
[analysis]
interval = "1m"
[[phase]]
name = "canary"
traffic = "50%"
duration = "48h"
success = ["error_rate < 0.1%"]
[[phase]]
name = "full"
traffic = "100%"
duration = "24h"
[rollback]
triggers = ["error_rate > 1%"]
"#
    )
}

/// Waits for serve to exit, asserts it exited successfully, and returns all it printed.
async fn exits_cleanly(
    mut child: std::process::Child,
    rx: &std::sync::mpsc::Receiver<String>,
    mut output: Vec<String>,
) -> String {
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    while let Ok(line) = rx.try_recv() {
        output.push(line);
    }
    output.join("\n")
}

/// Never leave the server running if an assertion fails (it would hold CI's output open).
struct KillOnDrop(u32);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-9", &self.0.to_string()])
            .status();
    }
}

/// Reads serve's stdout on a thread, line by line, until it prints the proxy's address.
fn read_output(
    stdout: std::process::ChildStdout,
) -> (std::sync::mpsc::Receiver<String>, Vec<String>, SocketAddr) {
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut output = Vec::new();
    let proxy: SocketAddr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("serve prints its address");
        output.push(line.clone());
        if let Some(rest) = line.split("proxy listening on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    (rx, output, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_starts_failing_is_rolled_back_within_seconds() {
    let stable_fail = Arc::new(AtomicBool::new(false));
    let canary_fail = Arc::new(AtomicBool::new(false));
    let stable_hits = Arc::new(AtomicU64::new(0));
    let canary_hits = Arc::new(AtomicU64::new(0));
    let stable = upstream(stable_fail, stable_hits.clone()).await;
    let canary = upstream(canary_fail.clone(), canary_hits.clone()).await;
    let dir = fresh_dir("ramp-serve");
    std::fs::create_dir_all(&dir).unwrap();
    let plan_path = dir.join("plan.toml");
    std::fs::write(&plan_path, plan(stable, canary)).unwrap();

    // 48h phase at ×3600: 48 s of real time, far longer than this test may run.
    let mut child = Command::new(env!("CARGO_BIN_EXE_ramp"))
        .args([
            "serve",
            "--plan",
            plan_path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--time-scale",
            "3600",
            "--exit-on-end",
            "--variant-header",
            "--db",
            dir.join("ramp.db").to_str().unwrap(),
            "--api",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _guard = KillOnDrop(child.id());
    let (rx, mut output, proxy) = read_output(stdout);

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let send = |user: u32| {
        let client = client.clone();
        async move {
            let req = Request::get(format!("http://{proxy}/pay"))
                .header("x-user-id", format!("user-{user}"))
                .body(Empty::new())
                .unwrap();
            match client.request(req).await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let variant = resp
                        .headers()
                        .get("x-ramp-variant")
                        .map(|v| v.to_str().unwrap().to_string());
                    let _ = resp.into_body().collect().await;
                    Some((status, variant))
                }
                Err(_) => None,
            }
        }
    };
    // Healthy traffic for a moment: both variants serve.
    for i in 0..400 {
        send(i % 200).await;
    }
    assert!(
        canary_hits.load(Ordering::Relaxed) > 50,
        "the canary gets its share"
    );
    // Now the canary fails every request.
    canary_fail.store(true, Ordering::Relaxed);
    let failed_at = Instant::now();
    let mut rolled_back = None;
    let mut i = 0u32;
    while failed_at.elapsed() < Duration::from_secs(20) {
        send(i % 200).await;
        i += 1;
        while let Ok(line) = rx.try_recv() {
            if line.contains("ROLLED BACK") && rolled_back.is_none() {
                rolled_back = Some(failed_at.elapsed());
            }
            output.push(line);
        }
        if rolled_back.is_some() {
            break;
        }
    }
    let took =
        rolled_back.unwrap_or_else(|| panic!("no rollback within 20 s:\n{}", output.join("\n")));
    assert!(took < Duration::from_secs(10), "rolled back after {took:?}");
    let text = exits_cleanly(child, &rx, output).await;
    // Whichever proves the failure first rolls back: the trigger, or the gate's early check
    // (a bound over 0.1% already proves `error_rate < 0.1%` violated). Both are right.
    assert!(
        text.contains("trigger error_rate > 1% FIRED")
            || text.contains("ROLLED BACK (failed gate)"),
        "{text}"
    );
    assert!(text.contains("notify (critical)"), "{text}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The seed plan as written (1-minute analysis interval) on the real clock: the canary starts
/// answering every request with a 500 and is back on stable long before the first window,
/// because triggers decide on 100 ms evidence batches. Prints what it measured (the figures in
/// docs/decisions.md); asserts only what no slow machine can break: well before the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_plan_rolls_a_failing_canary_back_in_real_time_long_before_its_first_window() {
    let canary_fail = Arc::new(AtomicBool::new(false));
    let canary_hits = Arc::new(AtomicU64::new(0));
    let stable = upstream(
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    )
    .await;
    let canary = upstream(canary_fail.clone(), canary_hits.clone()).await;
    let dir = fresh_dir("ramp-serve-live");
    std::fs::create_dir_all(&dir).unwrap();
    let plan_path = dir.join("plan.toml");
    let seed = include_str!("../../../../examples/payments-backend.toml");
    let plan: String = seed
        .lines()
        .filter(|l| !l.starts_with("health_"))
        .map(|l| {
            if l.starts_with("stable = ") {
                format!("stable = \"http://{stable}\"")
            } else if l.starts_with("canary = ") {
                format!("canary = \"http://{canary}\"")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(plan.contains("interval = \"1m\""));
    std::fs::write(&plan_path, plan).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ramp"))
        .args([
            "serve",
            "--plan",
            plan_path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--variant-header",
            "--db",
            dir.join("ramp.db").to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _guard = KillOnDrop(child.id());
    let (rx, mut output, proxy) = read_output(stdout);

    // Four clients, each a keep-alive connection sending requests of 2,000 users in turn.
    let stop = Arc::new(AtomicBool::new(false));
    let fault: Arc<std::sync::OnceLock<Instant>> = Arc::default();
    // Canary requests that failed after the fault, and the last time one did.
    let failed = Arc::new(AtomicU64::new(0));
    let last_failure_us = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for c in 0..4u32 {
        let (stop, fault, failed, last) = (
            stop.clone(),
            fault.clone(),
            failed.clone(),
            last_failure_us.clone(),
        );
        clients.push(tokio::spawn(async move {
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<Empty<Bytes>>();
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                let req = Request::get(format!("http://{proxy}/pay"))
                    .header("x-user-id", format!("user-{}", i % 2000))
                    .body(Empty::new())
                    .unwrap();
                i += 4;
                let Ok(resp) = client.request(req).await else {
                    continue;
                };
                let canary =
                    resp.headers().get("x-ramp-variant").map(|v| v.as_bytes()) == Some(b"canary");
                let status = resp.status().as_u16();
                let _ = resp.into_body().collect().await;
                if canary && status == 500 {
                    failed.fetch_add(1, Ordering::Relaxed);
                    if let Some(t0) = fault.get() {
                        last.fetch_max(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let started = Instant::now();
    while canary_hits.load(Ordering::Relaxed) < 200 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the canary gets its 5%"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hits_before = canary_hits.load(Ordering::Relaxed);
    let healthy_for = started.elapsed();
    canary_fail.store(true, Ordering::Relaxed);
    fault.set(Instant::now()).unwrap();
    let t0 = *fault.get().unwrap();
    let mut rolled_back = None;
    while t0.elapsed() < Duration::from_secs(30) && rolled_back.is_none() {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => {
                if line.contains("ROLLED BACK") {
                    rolled_back = Some(t0.elapsed());
                }
                output.push(line);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(e) => panic!("serve stopped: {e}\n{}", output.join("\n")),
        }
    }
    // Keep sending for a moment: nothing more may reach the canary.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hits_after_rollback = canary_hits.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let took =
        rolled_back.unwrap_or_else(|| panic!("no rollback within 30 s:\n{}", output.join("\n")));
    let failed = failed.load(Ordering::Relaxed);
    let last_failure = Duration::from_micros(last_failure_us.load(Ordering::Relaxed));
    // The figures for docs/decisions.md (`cargo test -p ramp --test it serve::the_seed -- --nocapture`).
    #[allow(clippy::print_stdout)]
    {
        println!(
            "seed plan, interval 1m, real time: healthy for {healthy_for:.1?} ({hits_before} canary \
         requests), then 100% errors: rolled back {took:.0?} after the fault (last failed \
         request answered {last_failure:.0?} after it), {failed} failed canary requests"
        );
    }
    assert!(
        took < Duration::from_secs(20),
        "rolled back after {took:?}: that is the window, not the batch"
    );
    assert_eq!(
        canary_hits.load(Ordering::Relaxed),
        hits_after_rollback,
        "no request reached the canary after the rollback"
    );
    // Stable kept serving everyone after the rollback; SIGTERM drains and exits cleanly.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let text = exits_cleanly(child, &rx, output).await;
    assert!(text.contains("trigger error_rate > 1% FIRED"), "{text}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn serve_without_upstreams_is_bad_input() {
    let dir = fresh_dir("ramp-serve-bad");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("plan.toml");
    std::fs::write(
        &p,
        "name = \"x\"\n[[phase]]\nname = \"a\"\ntraffic = \"5%\"\nduration = \"1h\"\n",
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_ramp"))
        .args([
            "serve",
            "--plan",
            p.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("[upstreams]"));
    std::fs::remove_dir_all(&dir).ok();
}
