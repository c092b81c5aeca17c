//! The plan format, driven through the public parser: the shipped seed plan, and broken
//! plans that must report every problem with its position.

use ramp_core::cohort::ShareBp;
use ramp_core::plan::{Metric, Op, Severity, StopAction, Test, parse_plan};
use ramp_core::time::{DAY, HOUR, MINUTE};

const SEED: &str = include_str!("../../../../examples/payments-backend.toml");

#[test]
fn the_seed_plan_says_what_the_seed_says() {
    let plan = parse_plan(SEED, "payments-backend.toml").expect("the example plan is valid");
    assert_eq!(plan.name, "payments-backend");
    let phases: Vec<(&str, u16, u64)> = plan
        .phases
        .iter()
        .map(|p| (p.name.as_str(), p.share.bp(), p.duration))
        .collect();
    assert_eq!(
        phases,
        vec![
            ("canary", 500, DAY),
            ("expanded", 2000, DAY),
            ("full", 10_000, DAY)
        ]
    );
    assert_eq!(plan.baseline.get(Metric::ErrorRate), Some(0.001));
    assert_eq!(plan.baseline.get(Metric::Latency(950)), Some(200.0));
    assert_eq!(plan.baseline.get(Metric::SuccessRate), Some(0.99));
    assert_eq!(plan.analysis.confidence, 0.95);
    assert_eq!(plan.analysis.interval, MINUTE);
    // Triggers: error rate > 1%, multiple PCI alerts, any critical security alert.
    let t = &plan.triggers;
    assert_eq!(t.len(), 3);
    assert_eq!(t[0].metric, Metric::ErrorRate);
    assert_eq!(
        t[0].test,
        Test::Compare {
            op: Op::Gt,
            threshold: 0.01,
            from_baseline: false
        }
    );
    assert_eq!(t[1].metric, Metric::PciAlerts);
    assert_eq!(
        t[1].test,
        Test::Compare {
            op: Op::Ge,
            threshold: 2.0,
            from_baseline: false
        }
    );
    assert_eq!(t[2].metric, Metric::SecurityAlerts(Severity::Critical));
    // "Response times within baseline" resolves to the baseline p95.
    let canary = &plan.phases[0];
    let p95 = canary
        .criteria
        .iter()
        .find(|c| c.metric == Metric::Latency(950))
        .unwrap();
    assert_eq!(
        p95.test,
        Test::Compare {
            op: Op::Le,
            threshold: 200.0,
            from_baseline: true
        }
    );
    assert_eq!(canary.on_inconclusive, StopAction::Hold);
    assert_eq!(canary.on_failure, StopAction::Rollback);
    assert_eq!(canary.max_extension, 12 * HOUR);
    // Communication plan.
    assert_eq!(plan.notify.status_every, Some(4 * HOUR));
    assert_eq!(plan.notify.summary_every, Some(DAY));
    assert!(plan.notify.final_report && plan.notify.critical_immediately);
    assert_eq!(plan.latency_thresholds_us(), vec![200_000]);
    assert_eq!(plan.phases[2].share, ShareBp::FULL);
}

/// Finds the error at a line and returns its rendered text.
fn error_at(errors: &ramp_core::plan::PlanErrors, line: usize) -> String {
    errors
        .errors
        .iter()
        .find(|e| e.line == line)
        .map(|e| format!("{}:{}: {} {:?}", e.line, e.col, e.message, e.help))
        .unwrap_or_else(|| panic!("no error on line {line}; errors: {errors}"))
}

#[test]
fn a_broken_plan_gets_every_error_at_once_with_positions() {
    let src = r#"name = "broken"
[analysis]
confidence = 1.5
intervall = "1m"

[[phase]]
name = "canary"
traffic = "20%"
duration = "24 hours"
success = ["eror_rate < 0.1%", "p95_latency <= 200", "pci_alerts == 0"]

[[phase]]
name = "expanded"
traffic = "5%"
duration = "24h"
success = ["error_rate < 0.1%", "p95_latency <= baseline"]

[rollback]
triggers = ["error_rate < 1%", "security_alerts[urgent] >= 1"]
"#;
    let err = parse_plan(src, "broken.toml").unwrap_err();
    let text = err.to_string();
    assert!(err.errors.len() >= 8, "{text}");
    assert!(error_at(&err, 3).contains("confidence"), "{text}");
    let typo = error_at(&err, 4);
    assert!(
        typo.contains("unknown key `intervall`") && typo.contains("did you mean `interval`"),
        "{typo}"
    );
    assert!(error_at(&err, 9).contains("bad unit"), "{text}");
    // The misspelt metric is pointed at inside the string, with the near miss suggested.
    let metric = err
        .errors
        .iter()
        .find(|e| e.message.contains("eror_rate"))
        .unwrap();
    assert_eq!((metric.line, metric.col), (10, 13));
    assert_eq!(metric.help.as_deref(), Some("did you mean `error_rate`?"));
    assert!(text.contains("p95_latency needs a unit"), "{text}");
    assert!(error_at(&err, 14).contains("traffic must rise"), "{text}");
    assert!(error_at(&err, 16).contains("[baseline]"), "{text}");
    let trig = error_at(&err, 19);
    assert!(trig.contains("fires on bad news"), "{trig}");
    assert!(
        text.contains("severities are low, medium, high and critical"),
        "{text}"
    );
    assert!(text.starts_with("broken.toml:"), "{text}");
}

#[test]
fn structural_errors_are_reported() {
    let table: &[(&str, &str)] = &[
        ("", "no `name`"),
        ("name = \"x\"", "no phases"),
        (
            "name = \"x\"\n[[phase]]\nname = \"a\"\ntraffic = \"0%\"\nduration = \"1h\"",
            "(0%, 100%]",
        ),
        (
            "name = \"x\"\n[[phase]]\nname = \"a\"\ntraffic = \"150%\"\nduration = \"1h\"",
            "(0%, 100%]",
        ),
        (
            "name = \"x\"\n[[phase]]\nname = \"a\"\ntraffic = \"5%\"",
            "no `duration`",
        ),
        (
            "name = \"x\"\n[[phase]]\nname = \"a\"\ntraffic = \"5%\"\nduration = \"1h\"\n[[phase]]\nname = \"a\"\ntraffic = \"50%\"\nduration = \"1h\"",
            "two phases are named",
        ),
        (
            "name = \"x\"\n[[phase]]\nname = \"a\"\ntraffic = \"100%\"\nduration = \"1h\"\nsuccess = [\"error_rate not worse than stable\"]",
            "no stable traffic",
        ),
        (
            "name = \"x\"\n[[phase]]\nname = \"a\"\ntraffic = \"5%\"\nduration = \"1h\"\nsuccess = [\"error_rate < 0%\"]",
            "strictly between",
        ),
        (
            "name = \"x\"\n[[phase]]\nname = \"a\"\ntraffic = \"5%\"\nduration = \"1h\"\nsuccess = [\"pci_alerts >= 1\"]",
            "uses ==, <, <=",
        ),
        (
            "name = \"x\"\n[[phase]]\nname = \"a\"\ntraffic = \"5%\"\nduration = \"1h\"\nsuccess = [\"error_rate < 1\"]",
            "percentage",
        ),
        (
            "name = \"x\"\n[[phase]]\nname = \"a\"\ntraffic = \"5%\"\nduration = \"1h\"\non_inconclusive = \"wait\"",
            "\"hold\" or \"rollback\"",
        ),
        (
            "name = \"x\"\n[cohort]\nkey = \"query:id\"\n[[phase]]\nname = \"a\"\ntraffic = \"5%\"\nduration = \"1h\"",
            "not a key source",
        ),
        (
            "name = \"x\"\n[upstreams]\nstable = \"127.0.0.1:80\"\ncanary = \"http://127.0.0.1:81\"\n[[phase]]\nname = \"a\"\ntraffic = \"5%\"\nduration = \"1h\"",
            "http:// or https:// URL",
        ),
        ("name = \"x\" [", "invalid TOML"),
        (
            "name = \"x\"\n[rollback]\ntriggers = [\"active_users > 3\"]\n[[phase]]\nname = \"a\"\ntraffic = \"5%\"\nduration = \"1h\"",
            "cannot be a rollback trigger",
        ),
    ];
    for (src, want) in table {
        let err = parse_plan(src, "t.toml").unwrap_err().to_string();
        assert!(
            err.contains(want),
            "plan {src:?}\nwanted {want:?} in:\n{err}"
        );
    }
}

#[test]
fn errors_never_panic_on_odd_input() {
    for src in [
        "\u{feff}name = 1",
        "[[phase]]\n[[phase]]",
        "phase = 3",
        "phase = [1, 2]",
        "name = \"é\"\n[[phase]]\nsuccess = [\"é < 1%\"]",
        "[baseline]\nerror_rate = \"x%\"",
        "[notify]\nstatus_every = \"1s\"",
    ] {
        let _ = parse_plan(src, "odd.toml");
    }
}

/// What `ramp plan check` accepts must never fail later (when the proxy starts, after the
/// rollout was journaled): header and cookie names and upstream URLs are checked here, with
/// their positions.
#[test]
fn cohort_names_and_upstream_urls_are_checked_at_parse_time() {
    let bad = [
        (
            "key = \"header:x-user-id\"",
            "key = \"header:x user\"",
            "not a valid HTTP header name",
        ),
        (
            "key = \"header:x-user-id\"",
            "key = \"cookie:uid;x\"",
            "not a valid cookie name",
        ),
        (
            "stable = \"http://127.0.0.1:8081\"",
            "stable = \"http://user@127.0.0.1:8081\"",
            "user info",
        ),
        (
            "stable = \"http://127.0.0.1:8081\"",
            "stable = \"http://127.0.0.1:99999\"",
            "port",
        ),
        (
            "stable = \"http://127.0.0.1:8081\"",
            "stable = \"http://127.0.0.1:8081/x?y=1\"",
            "query",
        ),
        (
            "canary = \"http://127.0.0.1:8082\"",
            "canary = \"ftp://pay.example.com\"",
            "scheme \"ftp\"",
        ),
        (
            "canary = \"http://127.0.0.1:8082\"",
            "canary = \"http://exa mple.com\"",
            "not a host name",
        ),
        (
            "canary = \"http://127.0.0.1:8082\"",
            "canary = \"http://:8082\"",
            "no host",
        ),
    ];
    for (from, to, says) in bad {
        let src = SEED.replace(from, to);
        assert_ne!(src, SEED, "{from}");
        let err = parse_plan(&src, "p.toml").unwrap_err().to_string();
        assert!(err.contains(says), "{to}: {err}");
        let line = SEED.lines().position(|l| l.starts_with(from)).unwrap() + 1;
        assert!(err.contains(&format!("p.toml:{line}:")), "{to}: {err}");
    }
    for good in [
        "http://127.0.0.1:8081",
        "http://[::1]:8081",
        "http://payments.internal",
        "http://payments.internal:8080/api/v2/",
        "https://payments.example.com",
        "https://[::1]:8443/v2",
    ] {
        let src = SEED.replace("http://127.0.0.1:8081", good);
        assert!(parse_plan(&src, "p.toml").is_ok(), "{good}");
    }
}

/// `[proxy.tls]` and `[upstreams.tls]` (with per-upstream overrides), and the mistakes in them
/// reported with their positions.
#[test]
fn tls_settings_for_the_listener_and_the_upstreams() {
    let https = SEED
        .replace("http://127.0.0.1:8081", "https://pay.example.com")
        .replace("http://127.0.0.1:8082", "https://pay-v2.example.com");
    let with = |extra: &str| format!("{https}\n{extra}");
    let plan = parse_plan(
        &with(
            "[proxy]\nlisten = \"127.0.0.1:8443\"\n[proxy.tls]\ncert = \"/etc/ramp/proxy.pem\"\nkey = \"/etc/ramp/proxy.key\"\nclient_ca = \"/etc/ramp/clients.pem\"\nclient_cert_required = false\n\
             [upstreams.tls]\nca_file = \"/etc/ramp/ca.pem\"\n[upstreams.tls.canary]\nclient_cert = \"c.pem\"\nclient_key = \"c.key\"\nserver_name = \"pay-v2.internal\"\n",
        ),
        "p.toml",
    )
    .unwrap();
    let tls = plan.listen_tls.unwrap();
    assert_eq!(tls.cert, "/etc/ramp/proxy.pem");
    assert_eq!(tls.client_ca.as_deref(), Some("/etc/ramp/clients.pem"));
    assert!(!tls.client_cert_required);
    let u = plan.upstreams.unwrap();
    assert_eq!(u.stable_tls.ca_file.as_deref(), Some("/etc/ramp/ca.pem"));
    assert_eq!(u.stable_tls.client_cert, None);
    assert_eq!(u.canary_tls.ca_file.as_deref(), Some("/etc/ramp/ca.pem"));
    assert_eq!(u.canary_tls.client_cert.as_deref(), Some("c.pem"));
    assert_eq!(u.canary_tls.server_name.as_deref(), Some("pay-v2.internal"));
    // Plain https upstreams need no TLS table (the system's roots).
    assert!(parse_plan(&https, "p.toml").is_ok());

    for (extra, says) in [
        ("[proxy.tls]\ncert = \"a.pem\"\n", "needs `key`"),
        (
            "[proxy.tls]\ncert = \"a.pem\"\nkey = \"\"\n",
            "proxy.tls.key is empty",
        ),
        (
            "[proxy.tls]\ncert = \"a\"\nkey = \"b\"\nclient = \"c\"\n",
            "unknown key `client`",
        ),
        ("[upstreams.tls]\nca = \"x\"\n", "unknown key `ca`"),
        (
            "[upstreams.tls]\nclient_cert = \"c.pem\"\n",
            "only one of client_cert and client_key",
        ),
        ("[upstreams.tls.stable]\nca_file = 3\n", "must be a string"),
        (
            "[upstreams.tls]\nserver_name = \"pay ments\"\n",
            "not a DNS name",
        ),
        (
            "[proxy.tls]\ncert = \"a\"\nkey = \"b\"\nclient_cert_required = true\n",
            "needs proxy.tls.client_ca",
        ),
    ] {
        let err = parse_plan(&with(extra), "p.toml").unwrap_err().to_string();
        assert!(err.contains(says), "{extra}: {err}");
    }
    // Trusted proxies and the PROXY protocol.
    let plan = parse_plan(
        &with("[proxy]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\nproxy_protocol = true\n"),
        "p.toml",
    )
    .unwrap();
    assert_eq!(plan.trusted_proxies, ["10.0.0.0/8", "::1/128"]);
    assert!(plan.proxy_protocol);
    for (extra, says) in [
        (
            "[proxy]\ntrusted_proxies = [\"10.0.0.1/8\"]\n",
            "10.0.0.0/8",
        ),
        (
            "[proxy]\ntrusted_proxies = [\"10.0.0.0/33\"]\n",
            "prefix longer than 32",
        ),
        (
            "[proxy]\ntrusted_proxies = \"10.0.0.0/8\"\n",
            "must be a list",
        ),
        ("[proxy]\nproxy_protocol = \"yes\"\n", "true or false"),
        (
            "[proxy]\nproxy_protocol = true\n",
            "needs proxy.trusted_proxies",
        ),
    ] {
        let err = parse_plan(&with(extra), "p.toml").unwrap_err().to_string();
        assert!(err.contains(says), "{extra}: {err}");
    }
    // Where latency ends.
    let plan = parse_plan(&with("[analysis]\nlatency = \"last_byte\"\n"), "p.toml");
    assert!(
        plan.is_err(),
        "[analysis] is already in the seed: a second table is an error"
    );
    let seed_last = https.replace("[analysis]\n", "[analysis]\nlatency = \"last_byte\"\n");
    let plan = parse_plan(&seed_last, "p.toml").unwrap();
    assert_eq!(plan.analysis.latency, ramp_core::plan::LatencyTo::LastByte);
    assert_eq!(
        parse_plan(&https, "p.toml").unwrap().analysis.latency,
        ramp_core::plan::LatencyTo::FirstByte
    );
    let err = parse_plan(
        &https.replace("[analysis]\n", "[analysis]\nlatency = \"tail\"\n"),
        "p.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("\"first_byte\" or \"last_byte\""), "{err}");
    // TLS settings for an http:// upstream are a mistake, not silently ignored.
    let err = parse_plan(
        &format!("{SEED}\n[upstreams.tls]\nca_file = \"x.pem\"\n"),
        "p.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("which is http://"), "{err}");
}

/// Regression (issue 11): `.` and `..` were accepted as rollout names (they name files and URL
/// paths), and control characters could ride in phase names into every log line.
#[test]
fn names_are_strict_slugs_and_phase_names_have_no_control_characters() {
    let plan = |name: &str, phase: &str| {
        format!(
            "name = {name:?}\n[[phase]]\nname = {phase:?}\ntraffic = \"5%\"\nduration = \"1h\"\n"
        )
    };
    for bad in [".", "..", ".hidden", "-x", "a b", "x?y=1", "a/b", "", "é"] {
        let e = parse_plan(&plan(bad, "canary"), "p.toml").unwrap_err();
        assert!(e.to_string().contains("name must be 1-64"), "{bad:?}: {e}");
    }
    for good in ["payments-backend", "a", "v2.1_rc-3", "9lives"] {
        assert!(
            parse_plan(&plan(good, "canary"), "p.toml").is_ok(),
            "{good:?}"
        );
    }
    let src = plan("ok", "canary").replace("\"canary\"", "\"canary\\u001b[2J\"");
    let e = parse_plan(&src, "p.toml").unwrap_err();
    assert!(e.to_string().contains("control characters"), "{e}");
}
