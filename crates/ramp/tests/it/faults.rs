//! Storage faults against the real binary: a journal that cannot be written (the database file
//! made immutable with `chattr +i`, which even root cannot write) while `ramp serve` restarts.
//! Skipped where chattr cannot set the flag (not root, a filesystem without it).

use crate::control::{cli, kill9, plan_file, start, status, traffic};
use ramp_harness as common;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// `chattr +i` on a file, undone on drop.
struct Immutable(PathBuf);

impl Immutable {
    fn set(path: &Path) -> Option<Immutable> {
        Command::new("chattr")
            .arg("+i")
            .arg(path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            .then(|| Immutable(path.to_path_buf()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

/// GET `path` (with `token`, if any): the status and the body.
pub(crate) async fn get(api: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let mut req = Request::get(format!("{api}{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = client
        .request(req.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let code = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (code, String::from_utf8_lossy(&body).into_owned())
}

/// A restart onto a journal that cannot be written serves every user from stable (the restart
/// cannot be recorded, so nothing may be decided), says why in status, `/readyz` and
/// `/metrics`, refuses signals, and resumes by itself at the journaled share once the disk
/// takes writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_onto_an_unwritable_journal_serves_stable_until_it_can_write() {
    let dir = common::fresh_dir("ramp-faults");
    std::fs::create_dir_all(&dir).unwrap();
    let stable_hits = Arc::new(AtomicU64::new(0));
    let canary_hits = Arc::new(AtomicU64::new(0));
    let stable = common::upstream(Arc::new(AtomicBool::new(false)), stable_hits.clone()).await;
    let canary = common::upstream(Arc::new(AtomicBool::new(false)), canary_hits.clone()).await;
    let plan = plan_file(&dir, stable, canary);

    let s = start(&dir, Some(&plan));
    let token = s
        .token
        .clone()
        .expect("the first start prints an admin token");
    traffic(s.proxy, 200).await;
    assert!(
        canary_hits.load(Ordering::Relaxed) > 0,
        "the canary takes 50%"
    );
    assert_eq!(status(&s, &token)["share"], 5000);
    kill9(s);

    let db = dir.join("ramp.db");
    let Some(frozen) = Immutable::set(&db) else {
        let _ = std::fs::remove_dir_all(&dir);
        return;
    };
    let s = start(&dir, None);
    // The controller tries to journal its restart, fails, and sends everyone to stable.
    let mut st = status(&s, &token);
    for _ in 0..100 {
        if st["journal_error"].is_string() && st["applied_share"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        st = status(&s, &token);
    }
    assert!(st["journal_error"].is_string(), "{st}");
    assert_eq!(st["applied_share"], 0, "{st}");
    assert_eq!(st["health"], "degraded", "{st}");
    let (code, ready) = get(&s.api, "/readyz", None).await;
    assert_eq!(code, 503, "{ready}");
    assert!(ready.contains("journal cannot be written"), "{ready}");
    let (code, metrics) = get(&s.api, "/metrics", Some(&token)).await;
    assert_eq!(code, 200, "{metrics}");
    assert!(
        metrics.lines().any(|l| l == "ramp_journal_failing 1"),
        "{metrics}"
    );
    let canary_before = canary_hits.load(Ordering::Relaxed);
    let stable_before = stable_hits.load(Ordering::Relaxed);
    traffic(s.proxy, 200).await;
    assert_eq!(
        canary_hits.load(Ordering::Relaxed),
        canary_before,
        "no user reaches the canary while nothing can be recorded"
    );
    assert_eq!(stable_hits.load(Ordering::Relaxed), stable_before + 200);
    let (code, out) = cli(&s, &token, &["signal", "ctl", "pci_alert", "--note", "x"]);
    assert_ne!(
        code, 0,
        "a signal that cannot be journaled is refused: {out}"
    );
    assert!(out.contains("journal"), "{out}");

    // The disk takes writes again: the rollout resumes at its journaled share by itself.
    drop(frozen);
    let mut st = status(&s, &token);
    for _ in 0..100 {
        if st["journal_error"].is_null() && st["applied_share"] == 5000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        st = status(&s, &token);
    }
    assert!(st["journal_error"].is_null(), "{st}");
    assert_eq!(st["applied_share"], 5000, "{st}");
    assert_eq!(st["status"], "running", "{st}");
    let (code, ready) = get(&s.api, "/readyz", None).await;
    assert_eq!(code, 200, "{ready}");
    let (_, metrics) = get(&s.api, "/metrics", Some(&token)).await;
    assert!(
        metrics.lines().any(|l| l == "ramp_journal_failing 0"),
        "{metrics}"
    );
    traffic(s.proxy, 200).await;
    assert!(
        canary_hits.load(Ordering::Relaxed) > canary_before,
        "the canary serves again"
    );
    let (code, out) = cli(&s, &token, &["events", "ctl", "--json"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("\"restarted\""),
        "the restart is journaled: {out}"
    );
    kill9(s);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Regression (issue 11): `/metrics` counters stepped once per analysis interval. In real time
/// (an interval of a minute and more) the requests just served show within a couple of
/// seconds, long before the first window closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::disallowed_methods)] // measures real time against the plan's interval
async fn metrics_counters_move_live_between_analysis_windows() {
    let dir = common::fresh_dir("ramp-live-metrics");
    std::fs::create_dir_all(&dir).unwrap();
    let stable = common::upstream(Arc::new(AtomicBool::new(false)), Arc::default()).await;
    let canary = common::upstream(Arc::new(AtomicBool::new(false)), Arc::default()).await;
    let plan = plan_file(&dir, stable, canary);
    let s = crate::control::start_scaled(&dir, Some(&plan), 1);
    let token = s.token.clone().unwrap();
    let started = std::time::Instant::now();
    traffic(s.proxy, 300).await;
    let served = |metrics: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with("ramp_requests_total{rollout=\"ctl\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    let mut seen = 0;
    for _ in 0..60 {
        let (_, metrics) = get(&s.api, "/metrics", Some(&token)).await;
        seen = served(&metrics);
        if seen == 300 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, 300, "every request served shows in /metrics");
    let st = status(&s, &token);
    let interval_ms = 60_000;
    assert!(
        (started.elapsed().as_millis() as u64) < interval_ms,
        "well inside the first analysis window: {st}"
    );
    kill9(s);
    let _ = std::fs::remove_dir_all(&dir);
}
