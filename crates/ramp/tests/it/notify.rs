//! The communication plan end to end: the real binary delivering to real receivers on
//! 127.0.0.1 — a signed webhook that fails its first attempts, a Slack double that checks the
//! Block Kit payloads, the thread and the in-place card, and an SMTP server — across a
//! `kill -9` and a receiver that is down for an hour of plan time.

use crate::control::{cli, kill9, start_with, upstream};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use ramp_harness::fresh_dir;
use serde_json::{Value, json};
use sha2::Sha256;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request a receiver got.
#[derive(Clone, Debug)]
struct Got {
    path: String,
    headers: hyper::HeaderMap,
    body: Value,
    answered: u16,
}

/// What a receiver answers to a request, given everything it got before.
type Answer = Arc<dyn Fn(&[Got], &Got) -> (u16, Value, Option<&'static str>) + Send + Sync>;

/// An HTTP receiver on `addr` (port 0: any): records every request and answers as `answer`
/// says (status, JSON body, an optional `Retry-After`).
async fn receiver(addr: SocketAddr, answer: Answer) -> (SocketAddr, Arc<Mutex<Vec<Got>>>) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let bound = listener.local_addr().unwrap();
    let got: Arc<Mutex<Vec<Got>>> = Arc::default();
    let log = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (log, answer) = (log.clone(), answer.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (log, answer) = (log.clone(), answer.clone());
                    async move {
                        let path = req.uri().path().to_string();
                        let headers = req.headers().clone();
                        let bytes = req.into_body().collect().await.unwrap().to_bytes();
                        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                        let mut g = Got {
                            path,
                            headers,
                            body,
                            answered: 0,
                        };
                        let (status, reply, retry_after) = {
                            let seen = log.lock().unwrap();
                            answer(&seen, &g)
                        };
                        g.answered = status;
                        log.lock().unwrap().push(g);
                        let mut resp = Response::builder()
                            .status(status)
                            .header("content-type", "application/json");
                        if let Some(r) = retry_after {
                            resp = resp.header("retry-after", r);
                        }
                        Ok::<_, std::convert::Infallible>(
                            resp.body(Full::new(Bytes::from(reply.to_string())))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (bound, got)
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A plan whose notices go to the channels in `channels` (TOML), all received by one group.
fn plan(
    dir: &Path,
    stable: SocketAddr,
    canary: SocketAddr,
    notify: &str,
    channels: &str,
) -> std::path::PathBuf {
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
[notify]
{notify}
{channels}
"#
        ),
    )
    .unwrap();
    p
}

/// Waits up to `secs` for `f` to hold over what a receiver got.
async fn wait_for(got: &Mutex<Vec<Got>>, secs: u64, what: &str, f: impl Fn(&[Got]) -> bool) {
    for _ in 0..secs * 20 {
        if f(&got.lock().unwrap()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: got {:#?}", got.lock().unwrap());
}

fn header<'a>(g: &'a Got, name: &str) -> &'a str {
    g.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// What a receiver computes to check a signature.
fn verify(secret: &[u8], g: &Got) -> bool {
    let ts = header(g, "x-ramp-timestamp");
    let body = serde_json::to_vec(&g.body).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(&body);
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    header(g, "x-ramp-signature") == format!("v1={want}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_notices_are_signed_retried_and_delivered_once_with_their_numbers() {
    let dir = fresh_dir("notify-webhook");
    let (stable, canary) = (
        upstream(Arc::new(AtomicBool::new(false))).await,
        upstream(Arc::new(AtomicBool::new(false))).await,
    );
    // The first two attempts fail: a 503, then a 429 asking to wait a second.
    let answer: Answer = Arc::new(|seen, _| match seen.len() {
        0 => (503, json!({}), None),
        1 => (429, json!({}), Some("1")),
        _ => (200, json!({"ok": true}), None),
    });
    let (hook, got) = receiver(any_port(), answer).await;
    std::fs::write(dir.join("hook.secret"), "s3cret-key\n").unwrap();
    let channels = format!(
        r#"[notify.channel.ops-hook]
kind = "webhook"
url = "http://{hook}/ramp?team=ops"
secret = {{ file = "{}" }}
[notify.group.monitoring]
channels = ["ops-hook"]
receives = ["critical", "security", "phase"]
"#,
        dir.join("hook.secret").display()
    );
    let p = plan(&dir, stable, canary, "", &channels);
    let server = start_with(&dir, Some(&p), 1, &[]);
    let token = server.token.clone().unwrap();
    // The phase start, retried twice, arrives once.
    wait_for(&got, 20, "the phase start delivered", |g| {
        g.iter().any(|g| g.answered == 200)
    })
    .await;
    let (code, out) = cli(
        &server,
        &token,
        &[
            "signal",
            "ctl",
            "pci_alert",
            "--note",
            "card 4111 1111 1111 1111 in a log",
        ],
    );
    assert_eq!(code, 0, "{out}");
    wait_for(&got, 20, "the PCI alert delivered", |g| {
        g.iter()
            .any(|g| g.answered == 200 && g.body["notice"]["about"] == "alert")
    })
    .await;
    let got = got.lock().unwrap().clone();
    let first_key = header(&got[0], "idempotency-key").to_string();
    assert!(first_key.starts_with("ramp-ctl-"), "{first_key}");
    assert_eq!(
        got[..3]
            .iter()
            .map(|g| header(g, "idempotency-key"))
            .collect::<Vec<_>>(),
        [first_key.as_str(); 3],
        "the same key on every attempt"
    );
    assert_eq!(
        got[..3].iter().map(|g| g.answered).collect::<Vec<_>>(),
        [503, 429, 200]
    );
    for g in &got {
        assert_eq!(g.path, "/ramp");
        assert!(verify(b"s3cret-key", g), "signature of {g:#?}");
        assert!(!verify(b"another-key", g));
    }
    // The numbers travel with the notice.
    let started = &got[2].body;
    assert_eq!(started["notice"]["about"], "phase_started");
    assert_eq!(started["notice"]["groups"], json!(["monitoring"]));
    assert_eq!(started["notice"]["numbers"]["share"], 5000);
    assert_eq!(
        started["notice"]["numbers"]["verdicts"][0]["criterion"],
        "error_rate < 0.1%"
    );
    assert!(started["text"].as_str().unwrap().contains("gates:"));
    let alert = got
        .iter()
        .find(|g| g.body["notice"]["about"] == "alert")
        .unwrap();
    assert_eq!(alert.body["notice"]["topic"], "security");
    let text = alert.body.to_string();
    assert!(
        !text.contains("4111 1111 1111 1111"),
        "card numbers are masked: {text}"
    );
    // Delivered once each: no key answered 200 twice.
    let mut ok: Vec<&str> = got
        .iter()
        .filter(|g| g.answered == 200)
        .map(|g| header(g, "idempotency-key"))
        .collect();
    let n = ok.len();
    ok.sort_unstable();
    ok.dedup();
    assert_eq!(ok.len(), n);
    // `ramp notices` shows who got what and how it went.
    let (code, out) = cli(&server, &token, &["notices", "ctl"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("to monitoring"), "{out}");
    assert!(
        out.contains("ops-hook         delivered 3 attempts"),
        "{out}"
    );
    let (code, out) = cli(&server, &token, &["notices", "ctl", "--json"]);
    assert_eq!(code, 0, "{out}");
    let page: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(page["notices"][0]["deliveries"][0]["state"], "delivered");
    // The status and /metrics count the channel's deliveries.
    let status = crate::control::status(&server, &token);
    assert_eq!(status["channels"][0]["channel"], "ops-hook");
    assert!(status["channels"][0]["delivered"].as_u64().unwrap() >= 2);
    assert_eq!(status["channels"][0]["retries"], 2);
    let (_, text) = crate::faults::get(&server.api, "/metrics", Some(&token)).await;
    assert!(
        text.contains("ramp_notices_delivered_total{rollout=\"ctl\",channel=\"ops-hook\"}"),
        "{text}"
    );
    assert!(!text.contains("s3cret-key"));
    // Reports from the API: now, as Markdown and HTML; no incident review before a rollback.
    let (code, md) = cli(&server, &token, &["report", "ctl"]);
    assert_eq!(code, 0, "{md}");
    assert!(md.starts_with("# ctl — status report"), "{md}");
    assert!(md.contains("PCI compliance alert"), "{md}");
    let out = dir.join("ctl.html");
    let (code, said) = cli(
        &server,
        &token,
        &[
            "report",
            "ctl",
            "--kind",
            "daily",
            "--format",
            "html",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{said}");
    let html = std::fs::read_to_string(&out).unwrap();
    assert!(
        html.contains("<svg") && html.contains("@media print"),
        "{html}"
    );
    let (code, said) = cli(&server, &token, &["report", "ctl", "--kind", "incident"]);
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("has not rolled back"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_keeps_one_thread_per_rollout_with_its_card_updated_in_place_across_restarts() {
    let dir = fresh_dir("notify-slack");
    let (stable, canary) = (
        upstream(Arc::new(AtomicBool::new(false))).await,
        upstream(Arc::new(AtomicBool::new(false))).await,
    );
    let answer: Answer = Arc::new(|seen, g| {
        assert_eq!(header(g, "authorization"), "Bearer xoxb-test-token");
        let blocks = g.body["blocks"].as_array().cloned().unwrap_or_default();
        let shaped = !blocks.is_empty()
            && blocks.iter().all(|b| b["type"].is_string())
            && g.body["text"].is_string();
        if !shaped {
            return (200, json!({"ok": false, "error": "invalid_blocks"}), None);
        }
        match g.path.as_str() {
            "/api/chat.postMessage" => {
                let replies = seen
                    .iter()
                    .filter(|s| s.path == g.path && s.body["thread_ts"].is_string())
                    .count();
                if g.body["thread_ts"].is_string() && replies == 0 {
                    return (429, json!({"ok": false, "error": "ratelimited"}), Some("1"));
                }
                let n = seen.len();
                (
                    200,
                    json!({"ok": true, "channel": "C0RAMP", "ts": format!("1700000000.{n:06}")}),
                    None,
                )
            }
            "/api/chat.update" => (
                200,
                json!({"ok": true, "channel": "C0RAMP", "ts": g.body["ts"]}),
                None,
            ),
            _ => (404, json!({"ok": false, "error": "unknown_method"}), None),
        }
    });
    let (slack, got) = receiver(any_port(), answer).await;
    std::fs::write(dir.join("slack.token"), "xoxb-test-token").unwrap();
    let channels = format!(
        r##"[notify.channel.rollouts]
kind = "slack"
token = {{ file = "{}" }}
channel = "#payments-rollout"
api = "http://{slack}/api"
[notify.group.backend]
channels = ["rollouts"]
receives = ["critical", "security", "phase"]
"##,
        dir.join("slack.token").display()
    );
    let p = plan(&dir, stable, canary, "", &channels);
    let server = start_with(&dir, Some(&p), 1, &[]);
    let token = server.token.clone().unwrap();
    let delivered_replies = |g: &[Got]| {
        g.iter()
            .filter(|g| g.answered == 200 && g.body["thread_ts"].is_string())
            .count()
    };
    wait_for(&got, 20, "the phase start in the thread", |g| {
        delivered_replies(g) >= 1
    })
    .await;
    wait_for(&got, 5, "the card updated", |g| {
        g.iter().any(|g| g.path == "/api/chat.update")
    })
    .await;
    kill9(server);
    let server = start_with(&dir, Some(&p), 1, &[]);
    let (code, out) = cli(
        &server,
        &token,
        &["signal", "ctl", "security_alert", "--severity", "high"],
    );
    assert_eq!(code, 0, "{out}");
    // (The phase start may come again first: killed between its reply and its mark, it is
    // delivered at least once.)
    let is_alert = |g: &Got| {
        g.answered == 200
            && g.body["thread_ts"].is_string()
            && g.body["text"]
                .as_str()
                .is_some_and(|t| t.contains("high security alert"))
    };
    wait_for(&got, 20, "the alert in the same thread", |g| {
        delivered_replies(g) >= 2 && g.iter().any(is_alert)
    })
    .await;
    wait_for(&got, 5, "the card updated after the alert", |g| {
        let at = g.iter().position(is_alert).unwrap_or(usize::MAX);
        g.iter().skip(at).any(|g| g.path == "/api/chat.update")
    })
    .await;
    let got = got.lock().unwrap().clone();
    let roots: Vec<&Got> = got
        .iter()
        .filter(|g| g.path == "/api/chat.postMessage" && !g.body["thread_ts"].is_string())
        .collect();
    assert_eq!(
        roots.len(),
        1,
        "one thread per rollout, also after a restart: {got:#?}"
    );
    assert_eq!(roots[0].body["channel"], "#payments-rollout");
    assert_eq!(roots[0].body["blocks"][0]["type"], "header");
    let root_ts = "1700000000.000000";
    for reply in got.iter().filter(|g| g.body["thread_ts"].is_string()) {
        assert_eq!(reply.body["thread_ts"], root_ts);
        assert_eq!(reply.body["channel"], "C0RAMP");
    }
    let alert = got.iter().find(|g| is_alert(g)).unwrap();
    assert_eq!(
        alert.body["reply_broadcast"], true,
        "critical notices show in the channel"
    );
    assert!(
        alert.body["text"]
            .as_str()
            .unwrap()
            .contains("high security alert")
    );
    let updates: Vec<&Got> = got
        .iter()
        .filter(|g| g.path == "/api/chat.update")
        .collect();
    assert!(updates.len() >= 2, "the card follows every notice");
    assert!(updates.iter().all(|u| u.body["ts"] == root_ts));
    // The 429 was honoured: the retry came at least a second later.
    drop(server);
}

/// A free port on 127.0.0.1 (bound and released: nothing listens there until the test does).
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_wait_for_a_receiver_down_for_an_hour_and_survive_kill_9_in_order_once() {
    let dir = fresh_dir("notify-down");
    let (stable, canary) = (
        upstream(Arc::new(AtomicBool::new(false))).await,
        upstream(Arc::new(AtomicBool::new(false))).await,
    );
    // Nothing listens there yet: every attempt is refused.
    let hook = free_port();
    let channels = format!(
        r#"[notify.channel.hook]
kind = "webhook"
url = "http://{hook}/"
[notify.group.ops]
channels = ["hook"]
receives = ["critical", "security", "phase", "status", "daily", "final", "incident"]
"#
    );
    // A status update every 10 minutes of plan time; 600× means one a second.
    let p = plan(&dir, stable, canary, "status_every = \"10m\"", &channels);
    let server = start_with(&dir, Some(&p), 600, &[]);
    let token = server.token.clone().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Decided and journaled, not delivered: killed.
    kill9(server);
    let server = start_with(&dir, Some(&p), 600, &[]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (code, out) = cli(&server, &token, &["notices", "ctl"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("pending"), "{out}");
    assert!(
        !out.contains("failed"),
        "an hour is well within give_up_after: {out}"
    );
    // The receiver comes up after about an hour of plan time.
    let answer: Answer = Arc::new(|_, _| (200, json!({}), None));
    let (_, got) = receiver(hook, answer).await;
    let (code, out) = cli(
        &server,
        &token,
        &["notices", "ctl", "--json", "--limit", "1000"],
    );
    assert_eq!(code, 0, "{out}");
    let written: Value = serde_json::from_str(&out).unwrap();
    let written = written["notices"].as_array().unwrap().len();
    assert!(written >= 5, "status updates kept coming: {written}");
    wait_for(&got, 90, "everything written before delivered", |g| {
        g.len() >= written
    })
    .await;
    let got = got.lock().unwrap().clone();
    let ids: Vec<u64> = got
        .iter()
        .map(|g| {
            header(g, "idempotency-key")
                .rsplit('-')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(ids, sorted, "in order, each once");
    assert_eq!(got[0].body["notice"]["about"], "phase_started");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_goes_out_over_smtp_with_text_and_html_parts() {
    let dir = fresh_dir("notify-smtp");
    let (stable, canary) = (
        upstream(Arc::new(AtomicBool::new(false))).await,
        upstream(Arc::new(AtomicBool::new(false))).await,
    );
    let smtp = free_port();
    let maildir = dir.join("mail");
    // Debian's python3, which has python3-aiosmtpd (another python3 on PATH may not).
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let mut sink = std::process::Command::new(python)
        .args([
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            &smtp.to_string(),
            "-c",
            "aiosmtpd.handlers.Mailbox",
        ])
        .arg(&maildir)
        .spawn()
        .expect("python3 -m aiosmtpd (Debian's python3-aiosmtpd; .ci/run installs it)");
    let _guard = Kill(&mut sink);
    for _ in 0..100 {
        if std::net::TcpStream::connect(smtp).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let channels = format!(
        r#"[notify.channel.security-mail]
kind = "email"
smtp = "smtp://{smtp}"
tls = "none"
from = "ramp <ramp@example.com>"
to = ["security@example.com", "oncall@example.com"]
[notify.group.security]
channels = ["security-mail"]
receives = ["critical", "security"]
"#
    );
    let p = plan(&dir, stable, canary, "", &channels);
    let server = start_with(&dir, Some(&p), 1, &[]);
    let token = server.token.clone().unwrap();
    let (code, out) = cli(
        &server,
        &token,
        &["signal", "ctl", "pci_alert", "--note", "PAN in logs"],
    );
    assert_eq!(code, 0, "{out}");
    let mut mail = String::new();
    for _ in 0..200 {
        let new = maildir.join("new");
        if let Some(f) = std::fs::read_dir(&new).ok().and_then(|mut d| d.next()) {
            mail = std::fs::read_to_string(f.unwrap().path()).unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!mail.is_empty(), "no mail arrived");
    assert!(
        mail.contains("Subject: [ramp] CRITICAL ctl: PCI compliance alert"),
        "{mail}"
    );
    assert!(
        mail.contains("To: security@example.com, oncall@example.com"),
        "{mail}"
    );
    assert!(mail.contains("Content-Type: text/plain"), "{mail}");
    assert!(mail.contains("Content-Type: text/html"), "{mail}");
    assert!(mail.contains("Message-ID: <ramp-ctl-"), "{mail}");
    assert!(mail.contains("X-Priority: 1"), "{mail}");
    let (_, out) = cli(&server, &token, &["notices", "ctl"]);
    assert!(out.contains("security-mail    delivered"), "{out}");
    // A second PCI alert fires the trigger: the rollback's incident review and the final
    // report are written beside the journal.
    let (code, out) = cli(
        &server,
        &token,
        &["signal", "ctl", "pci_alert", "--note", "again"],
    );
    assert_eq!(code, 0, "{out}");
    let review = dir.join("ramp.db.reports").join("ctl-incident-review.md");
    for _ in 0..200 {
        if review.exists() && dir.join("ramp.db.reports/ctl-final-report.html").exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = std::fs::read_to_string(&review).expect("the incident review is written");
    assert!(text.contains("pci_alerts >= 2"), "{text}");
    assert!(
        text.contains("security-mail"),
        "the notices sent, with their deliveries: {text}"
    );
    // The phase start is not for the security group: it went to the live log only.
    assert!(
        !out.contains(
            "phase canary started: 50% of users on the new version for 10d\n     security-mail"
        ),
        "{out}"
    );
    drop(server);
}

struct Kill<'a>(&'a mut std::process::Child);

impl Drop for Kill<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_plan_whose_channel_secret_is_missing_is_refused_naming_the_variable_never_a_value() {
    let dir = fresh_dir("notify-secret");
    let p = dir.join("p.toml");
    std::fs::write(
        &p,
        "name = \"s\"\n[upstreams]\nstable = \"http://127.0.0.1:1\"\ncanary = \"http://127.0.0.1:2\"\n[[phase]]\nname = \"a\"\ntraffic = \"5%\"\nduration = \"1h\"\n[notify.channel.pd]\nkind = \"pagerduty\"\nrouting_key = { env = \"RAMP_TEST_UNSET_PD_KEY\" }\n[notify.group.oncall]\nchannels = [\"pd\"]\n",
    )
    .unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ramp"))
        .args(["serve", "--db"])
        .arg(dir.join("r.db"))
        .args(["--api", "127.0.0.1:0", "--listen", "127.0.0.1:0", "--plan"])
        .arg(&p)
        .env_remove("RAMP_TEST_UNSET_PD_KEY")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(
            "notify.channel.pd.routing_key: environment variable RAMP_TEST_UNSET_PD_KEY is not set"
        ),
        "{err}"
    );
    // `plan check` shows who gets what, and warns about the missing variable.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ramp"))
        .args(["plan", "check"])
        .arg(&p)
        .env_remove("RAMP_TEST_UNSET_PD_KEY")
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("channel pd (pagerduty): Events API v2"),
        "{out}"
    );
    assert!(
        out.contains("routing_key from environment variable RAMP_TEST_UNSET_PD_KEY"),
        "{out}"
    );
    assert!(
        out.contains("group oncall gets critical, phase, final, incident via pd"),
        "{out}"
    );
    assert!(
        out.contains("RAMP_TEST_UNSET_PD_KEY is not set here"),
        "{out}"
    );
}

const SEED: &str = include_str!("../../../../examples/payments-backend.toml");
const WITH_AUDIENCE: &str = include_str!("../../../../examples/payments-backend-notify.toml");

#[test]
fn the_communication_example_is_the_seed_plan_plus_its_audience() {
    // Everything but the header comment is the seed plan, then the audience.
    let body = |s: &str| -> String {
        s.lines()
            .skip_while(|l| l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        body(WITH_AUDIENCE).starts_with(&body(SEED)),
        "examples/payments-backend-notify.toml drifted from examples/payments-backend.toml"
    );
}

fn scenario(name: &str) -> ramp_sim::scenario::Scenario {
    let path = format!(
        "{}/../../examples/scenarios/{name}.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let src = std::fs::read_to_string(&path).unwrap();
    ramp_sim::scenario::parse_scenario(&src, &path).unwrap()
}

/// What each group hears in a simulated run of the seed plan with its audience.
fn heard(sc: &str) -> (ramp_sim::Run, Vec<ramp_wire::v1::Notice>) {
    let plan = ramp_core::plan::parse_plan(WITH_AUDIENCE, "notify.toml").unwrap();
    let sc = scenario(sc);
    let run = ramp_sim::run(&plan, &sc, sc.seed);
    let notices = run
        .timeline
        .iter()
        .filter_map(|e| match e {
            ramp_sim::TimelineEntry::Notify { notification, .. } => Some(notification.clone()),
            _ => None,
        })
        .collect();
    (run, notices)
}

#[test]
fn the_seed_plans_healthy_run_sends_17_status_updates_2_daily_summaries_and_1_final_report() {
    let (run, notices) = heard("healthy");
    assert_eq!(run.outcome, "completed");
    let topic = |t: &str| {
        notices
            .iter()
            .filter(|n| n.topic.as_deref() == Some(t))
            .collect::<Vec<_>>()
    };
    assert_eq!(topic("status").len(), 17);
    assert_eq!(topic("daily").len(), 2);
    assert_eq!(topic("final").len(), 1);
    assert!(topic("incident").is_empty());
    // Status updates go to the monitoring group only; daily summaries to support and
    // monitoring; the final report to everyone who asked for it.
    assert!(topic("status").iter().all(|n| n.groups == ["monitoring"]));
    assert!(
        topic("daily")
            .iter()
            .all(|n| n.groups == ["monitoring", "support"])
    );
    assert_eq!(
        topic("final")[0].groups,
        ["monitoring", "security", "support"]
    );
    assert_eq!(
        topic("final")[0].channels,
        ["ops-webhook", "release-slack", "security-mail"]
    );
    // Every notice carries the numbers and the dashboard link.
    for n in &notices {
        assert!(n.numbers.is_some(), "{n:?}");
        assert_eq!(
            n.link.as_deref(),
            Some("https://ramp.payments.example.com/rollouts/payments-backend")
        );
    }
}

#[test]
fn a_failing_run_sends_one_rollback_notice_to_every_group_and_begins_an_incident_review() {
    let (run, notices) = heard("error-spike");
    assert_eq!(run.outcome, "rolled_back");
    let rollbacks: Vec<_> = notices
        .iter()
        .filter(|n| n.about == "rolled_back")
        .collect();
    assert_eq!(rollbacks.len(), 1);
    assert_eq!(
        rollbacks[0].groups,
        [
            "backend",
            "backend-oncall",
            "monitoring",
            "security",
            "support"
        ],
        "critical goes to everyone"
    );
    let numbers = rollbacks[0].numbers.as_ref().unwrap();
    let blast = numbers.blast_radius.as_ref().unwrap();
    assert_eq!(blast.canary_requests, run.state.totals.canary.requests);
    assert!(blast.failed_requests > 0 && blast.exposure_ms > 0);
    let incident: Vec<_> = notices
        .iter()
        .filter(|n| n.topic.as_deref() == Some("incident"))
        .collect();
    assert_eq!(incident.len(), 1);
    assert_eq!(incident[0].groups, ["backend", "monitoring", "security"]);
}

#[test]
fn simulate_writes_the_reports_of_a_rehearsal() {
    let dir = fresh_dir("sim-report");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ramp"))
        .args(["simulate"])
        .arg(format!(
            "{}/../../examples/payments-backend-notify.toml",
            env!("CARGO_MANIFEST_DIR")
        ))
        .arg("--scenario")
        .arg(format!(
            "{}/../../examples/scenarios/error-spike.toml",
            env!("CARGO_MANIFEST_DIR")
        ))
        .arg("--report")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let review = std::fs::read_to_string(dir.join("payments-backend-incident-review.md")).unwrap();
    assert!(review.contains("## Blast radius"), "{review}");
    assert!(review.contains("## Follow-ups"), "{review}");
    let html = std::fs::read_to_string(dir.join("payments-backend-final-report.html")).unwrap();
    assert!(html.contains("<svg"), "charts");
    assert!(
        !html.contains("https://") && !html.contains("<script"),
        "self-contained"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_the_receiver_refuses_is_failed_at_once_and_the_next_one_goes_on() {
    let dir = fresh_dir("notify-refused");
    let (stable, canary) = (
        upstream(Arc::new(AtomicBool::new(false))).await,
        upstream(Arc::new(AtomicBool::new(false))).await,
    );
    // The first notice is refused for good (400); everything after is taken.
    let answer: Answer = Arc::new(|seen, _| {
        if seen.is_empty() {
            (400, json!({"error": "unknown schema"}), None)
        } else {
            (200, json!({}), None)
        }
    });
    let (hook, got) = receiver(any_port(), answer).await;
    let channels = format!(
        "[notify.channel.hook]\nkind = \"webhook\"\nurl = \"http://{hook}/\"\n[notify.group.ops]\nchannels = [\"hook\"]\nreceives = [\"critical\", \"security\", \"phase\"]\n"
    );
    let p = plan(&dir, stable, canary, "", &channels);
    let server = start_with(&dir, Some(&p), 1, &[]);
    let token = server.token.clone().unwrap();
    let (code, out) = cli(&server, &token, &["signal", "ctl", "pci_alert"]);
    assert_eq!(code, 0, "{out}");
    wait_for(&got, 20, "the alert after the refused notice", |g| {
        g.iter().any(|g| g.answered == 200)
    })
    .await;
    assert_eq!(
        got.lock().unwrap().len(),
        2,
        "the refused notice is not retried"
    );
    let (_, out) = cli(&server, &token, &["notices", "ctl"]);
    assert!(
        out.contains("hook             failed    1 attempt")
            && out.contains("HTTP 400: {\"error\":\"unknown schema\"}"),
        "{out}"
    );
    let status = crate::control::status(&server, &token);
    assert_eq!(status["channels"][0]["failed"], 1);
}
