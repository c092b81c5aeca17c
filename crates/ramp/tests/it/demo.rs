//! `ramp demo` runs to completion, healthy and failing, in bounded time.
// Tests bound their own waits and measure on the real clock; no decision reads it.
#![allow(clippy::disallowed_methods)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn demo(args: &[&str]) -> String {
    demo_in(&ramp_harness::fresh_dir("demo-reports"), args)
}

/// `ramp demo` writing its reports to `reports`.
fn demo_in(reports: &std::path::Path, args: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ramp"))
        .arg("demo")
        .arg("--reports")
        .arg(reports)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ramp demo");
    let started = Instant::now();
    loop {
        if let Some(_status) = child.try_wait().unwrap() {
            break;
        }
        if started.elapsed() > Duration::from_secs(180) {
            child.kill().ok();
            panic!("ramp demo did not finish within 180 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    text
}

#[test]
fn the_healthy_demo_completes_all_three_phases() {
    let out = demo(&["--plain", "--seconds", "40", "--rps", "5000"]);
    for want in [
        "phase canary started: 5% of users",
        "promoted canary → expanded",
        "promoted expanded → full",
        "rollout completed",
        "outcome: completed in phase full",
        "blast radius: none",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
}

#[test]
fn the_failing_demo_rolls_back_and_reports_the_blast_radius() {
    let dir = ramp_harness::fresh_dir("demo-failing");
    let out = demo_in(
        &dir,
        &[
            "--plain",
            "--seconds",
            "40",
            "--rps",
            "5000",
            "--canary-fails-at",
            "50%",
            "--canary-error-rate",
            "10%",
        ],
    );
    for want in [
        "demo: the canary backend degrades now",
        "trigger error_rate > 1% FIRED",
        "ROLLED BACK (rollback trigger)",
        "outcome: rolled back",
        "blast radius (from the canary's degradation",
        "incident review: ",
        "final report: ",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    // The demo says where its reports are, and they are there.
    let review = std::fs::read_to_string(dir.join("payments-backend-incident-review.md")).unwrap();
    assert!(review.contains("error_rate > 1%"), "{review}");
    assert!(dir.join("payments-backend-final-report.html").exists());
}

#[test]
fn bad_demo_arguments_exit_2() {
    let o = Command::new(env!("CARGO_BIN_EXE_ramp"))
        .args(["demo", "--canary-fails-at", "150%"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let o = Command::new(env!("CARGO_BIN_EXE_ramp"))
        .args(["demo", "--scenario", "meteor"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}
