//! The real `ramp` binary, as a user runs it.

use ramp_harness as common;

use common::fresh_dir;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn ramp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ramp"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run ramp")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const PLAN: &str = "examples/payments-backend.toml";

fn simulate_json(scenario: &str, extra: &[&str]) -> Value {
    let path = format!("examples/scenarios/{scenario}.toml");
    let mut args = vec!["simulate", PLAN, "--scenario", &path, "--json"];
    args.extend_from_slice(extra);
    let o = ramp(&args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    serde_json::from_slice(&o.stdout).expect("one JSON object")
}

/// Golden outcomes: what someone who read the seed plan expects of each scenario.
/// Exact values live in `examples/scenarios/expected.json`; `RAMP_BLESS=1` rewrites it.
#[test]
fn every_shipped_scenario_has_its_golden_outcome() {
    let scenarios = [
        "healthy",
        "error-spike",
        "pci-alerts",
        "latency-regression",
        "low-traffic",
        "security-critical",
    ];
    let mut summary = serde_json::Map::new();
    for s in scenarios {
        let v = simulate_json(s, &[]);
        let keep = serde_json::json!({
            "outcome": v["outcome"],
            "final_phase": v["final_phase"],
            "ended_at": v["ended_at"],
            "blast_radius": v["blast_radius"],
        });
        summary.insert(s.to_string(), keep);
        // The meaning, independent of the exact numbers.
        let outcome = v["outcome"].as_str().unwrap();
        let phase = v["final_phase"].as_str().unwrap();
        let ended = v["ended_at"].as_f64().unwrap();
        let br = &v["blast_radius"];
        match s {
            "healthy" => {
                assert_eq!((outcome, phase), ("completed", "full"));
                assert!((72.0 * 3600.0..=73.0 * 3600.0).contains(&ended), "{ended}");
                assert_eq!(br["requests"], 0);
            }
            "error-spike" => {
                assert_eq!((outcome, phase), ("rolled_back", "expanded"));
                // Spike at 30h; rolled back within 5 minutes of it.
                assert!(
                    (30.0 * 3600.0..=30.0 * 3600.0 + 300.0).contains(&ended),
                    "{ended}"
                );
                let (req, failed) = (
                    br["requests"].as_u64().unwrap(),
                    br["failed_requests"].as_u64().unwrap(),
                );
                assert!(
                    req > 0 && req < 10_000 && failed > 0 && failed < req / 10,
                    "{br}"
                );
                assert!(br["users"].as_u64().unwrap() > 0);
            }
            "pci-alerts" => {
                // The first alert already fails the canary gate `pci_alerts == 0` (and the
                // rollout's): acted on at once, not at the second alert or the phase end.
                assert_eq!((outcome, phase), ("rolled_back", "canary"));
                assert_eq!(ended, 10.0 * 3600.0);
            }
            "latency-regression" => {
                // The latency gate fails: proven failing before the phase ends (always-valid
                // early fail, its bound widened because the slow requests cluster after 6h),
                // at the latest at the phase end.
                assert_eq!((outcome, phase), ("rolled_back", "canary"));
                assert!(
                    (6.0 * 3600.0..=24.0 * 3600.0 + 60.0).contains(&ended),
                    "{ended}"
                );
                assert!(br["requests"].as_u64().unwrap() > 0);
            }
            "low-traffic" => {
                assert_eq!((outcome, phase), ("held", "canary"));
                assert!(
                    (36.0 * 3600.0..=36.0 * 3600.0 + 60.0).contains(&ended),
                    "{ended}"
                );
            }
            "security-critical" => {
                assert_eq!((outcome, phase), ("rolled_back", "expanded"));
                assert_eq!(ended, 36.0 * 3600.0);
            }
            _ => unreachable!(),
        }
        // Every gate check carries its verdicts with numbers.
        for e in v["events"].as_array().unwrap() {
            if e["kind"] == "gate_checked" {
                for verdict in e["verdicts"].as_array().unwrap() {
                    assert!(
                        verdict["explanation"].as_str().unwrap().len() > 10,
                        "{verdict}"
                    );
                    assert!(verdict.get("n").is_some() && verdict.get("threshold").is_some());
                }
            }
            assert!(e["at"].is_number() && e["kind"].is_string(), "{e}");
        }
    }
    let path = root().join("examples/scenarios/expected.json");
    let got = serde_json::to_string_pretty(&Value::Object(summary)).unwrap() + "\n";
    if std::env::var_os("RAMP_BLESS").is_some() {
        std::fs::write(&path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .expect("examples/scenarios/expected.json (RAMP_BLESS=1 writes it)");
    assert_eq!(
        got, want,
        "golden outcomes changed; if on purpose, rerun with RAMP_BLESS=1"
    );
}

#[test]
fn simulate_is_deterministic_for_a_seed_and_varies_with_it() {
    let a = simulate_json("error-spike", &["--seed", "11"]);
    let b = simulate_json("error-spike", &["--seed", "11"]);
    let c = simulate_json("error-spike", &["--seed", "12"]);
    assert_eq!(a, b);
    assert_ne!(a["blast_radius"], c["blast_radius"]);
    assert_eq!(
        c["outcome"], "rolled_back",
        "the outcome does not hinge on the seed"
    );
}

#[test]
fn the_human_timeline_tells_the_story() {
    let o = ramp(&[
        "simulate",
        PLAN,
        "--scenario",
        "examples/scenarios/error-spike.toml",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for want in [
        "phase canary started: 5% of users",
        "gate canary: PASS",
        "error_rate < 0.1%",
        "95% upper bound",
        "promoted canary → expanded",
        "scenario: canary: error_rate → 3.00%",
        "trigger error_rate > 1% FIRED",
        "ROLLED BACK (rollback trigger): canary share 20% → 0%",
        "report written: incident review",
        "outcome: rolled back in phase expanded",
        "blast radius (from the first harmful change at 30h00m00s",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
}

#[test]
fn plan_check_prints_the_plan_and_plans_traffic() {
    let o = ramp(&["plan", "check", PLAN, "--rps", "200"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for want in [
        "canary",
        "expanded",
        "full",
        "error_rate > 1%",
        "status every 4h",
        "≥ 3,787 requests",
        "chance to pass by its deadline",
        "sequential: 7 CUSUMs",
        "traffic planning at 200 requests/s",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    // At 1 request/s the canary can never prove "< 0.1%" in 36h: warned.
    let o = ramp(&["plan", "check", PLAN, "--rps", "0.05"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("warning: phase canary: `error_rate < 0.1%` can never pass"),
        "{out}"
    );
}

#[test]
fn a_broken_plan_exits_2_with_positions() {
    let dir = fresh_dir("ramp-cli");
    std::fs::create_dir_all(&dir).unwrap();
    let broken = dir.join("broken.toml");
    let src = std::fs::read_to_string(root().join(PLAN)).unwrap()
        .replace("\"error_rate < 0.1%\",               # Error rate below 0.1%", "\"eror_rate < 0.1%\",")
        .replace("traffic = \"20%\"", "traffic = \"2%\"")
        .replace("duration = \"24h\"\nmax_extension = \"12h\"\nsuccess = [\n  \"error_rate < 0.1%\",               # All", "duration = \"24 hours\"\nmax_extension = \"12h\"\nsuccess = [\n  \"error_rate < 0.1%\",               # All");
    std::fs::write(&broken, src).unwrap();
    let o = ramp(&["plan", "check", broken.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("did you mean `error_rate`?"), "{err}");
    assert!(err.contains("traffic must rise"), "{err}");
    assert!(err.contains("bad unit in duration"), "{err}");
    assert!(err.contains("3 errors in"), "{err}");
    assert!(
        err.lines()
            .filter(|l| l.contains("broken.toml:") && l.contains(": error: "))
            .count()
            == 3,
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_input_exits_2_without_a_panic() {
    let o = ramp(&["plan", "check", "does/not/exist.toml"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = ramp(&["simulate", PLAN, "--scenario", "does/not/exist.toml"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let dir = fresh_dir("ramp-cli-sc");
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "requests_per_second = 10\nusers = 5\n[stable]\nerror_rate = 2\nlatency_ms = { p50 = 1, p95 = 2 }\n[canary]\nlatency_ms = { p50 = 1, p95 = 2 }\n").unwrap();
    let o = ramp(&["simulate", PLAN, "--scenario", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("stable.error_rate must be a fraction"));
    std::fs::write(&bad, "requests_per_second = 10\nusers = 5\nspeed = 3\n").unwrap();
    let o = ramp(&["simulate", PLAN, "--scenario", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("bad.toml:3:1"),
        "{}",
        text(&o)
    );
    let o = ramp(&["simulate"]);
    assert_eq!(o.status.code(), Some(2), "usage errors exit 2");
    std::fs::remove_dir_all(&dir).ok();
}

/// Regression: `ramp simulate ... | head` used to panic ("failed printing to stdout: Broken
/// pipe") when the reader went away; a closed stdout now just drops the rest of the output.
#[test]
fn a_closed_stdout_is_not_a_panic() {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_ramp"))
        .args([
            "simulate",
            PLAN,
            "--scenario",
            "examples/scenarios/healthy.toml",
            "--json",
        ])
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // The pipe's read end is closed now (dropped above).
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

/// `p95_latency not worse than stable` end to end in `ramp simulate`: a canary a third slower
/// than stable (but still inside the 200 ms baseline) fails its gate and is rolled back; one
/// as fast as stable passes.
#[test]
fn latency_not_worse_than_stable_decides_in_simulate() {
    let dir = fresh_dir("ramp-latvs");
    std::fs::create_dir_all(&dir).unwrap();
    let seed = std::fs::read_to_string(root().join(PLAN)).unwrap();
    let plan = seed.replacen(
        "\"p95_latency <= baseline\",         # Response times within baseline",
        "\"p95_latency <= baseline\",\n  \"p95_latency not worse than stable\",",
        1,
    );
    assert_ne!(
        plan, seed,
        "the seed plan's canary criteria changed: update this test"
    );
    let plan_path = dir.join("plan.toml");
    std::fs::write(&plan_path, plan).unwrap();
    let scenario = |canary_p95: u32| {
        format!(
            "seed = 3\nrequests_per_second = 200\nusers = 20000\n[stable]\nerror_rate = 0.0005\nlatency_ms = {{ p50 = 40, p95 = 120 }}\n[canary]\nerror_rate = 0.0005\nlatency_ms = {{ p50 = 40, p95 = {canary_p95} }}\n[feedback]\nper_hour = 12\npositive = 0.97\n"
        )
    };
    let run = |name: &str, canary_p95: u32| {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, scenario(canary_p95)).unwrap();
        let o = ramp(&[
            "simulate",
            plan_path.to_str().unwrap(),
            "--scenario",
            path.to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        serde_json::from_slice::<Value>(&o.stdout).unwrap()
    };
    let slow = run("slow", 160);
    assert_eq!(slow["outcome"], "rolled_back", "{}", slow["reason"]);
    let reason = slow["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("p95_latency not worse than stable"),
        "{reason}"
    );
    let same = run("same", 120);
    assert_eq!(same["outcome"], "completed", "{}", same["reason"]);
    let _ = std::fs::remove_dir_all(&dir);
}
