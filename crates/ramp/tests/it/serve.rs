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
    // Never leave the server running if an assertion fails (it would hold CI's output open).
    struct KillOnDrop(u32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .args(["-9", &self.0.to_string()])
                .status();
        }
    }
    let _guard = KillOnDrop(child.id());
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
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    while let Ok(line) = rx.try_recv() {
        output.push(line);
    }
    let text = output.join("\n");
    assert!(text.contains("trigger error_rate > 1% FIRED"), "{text}");
    assert!(text.contains("notify (critical)"), "{text}");
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
