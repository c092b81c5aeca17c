//! `ramp serve` with TLS everywhere, as a payments team would run it: the proxy's listener
//! and the API on TLS, HTTPS upstreams behind a private CA, the CLI with `--ca-file`, the
//! certificate inventory, and a certificate renewed with SIGHUP.
// Tests bound their own waits and measure on the real clock; no decision reads it.
#![allow(clippy::disallowed_methods)]

use crate::control::{Server, start_with};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use ramp_harness::fresh_dir;
use ramp_harness::pki::{Ca, client_config, https_upstream};
use serde_json::Value;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One GET over a fresh TLS connection trusting `ca`: status, body and the server's leaf
/// certificate.
async fn get(
    addr: SocketAddr,
    ca: &Ca,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String, Vec<u8>), String> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(ca, None)));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = Request::get(path).header("host", "127.0.0.1");
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = send
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned(), leaf))
}

fn api_addr(server: &Server) -> SocketAddr {
    server
        .api
        .trim_start_matches("https://")
        .parse()
        .expect("the API address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_tls_on_the_listener_the_api_and_toward_https_upstreams() {
    let dir = fresh_dir("ramp-serve-tls");
    let ca = Ca::new("payments test CA");
    let ca_file = ca.write(&dir, "ca.pem");
    let (proxy_cert, proxy_key) = ca.server(&["127.0.0.1"]).write(&dir, "proxy");
    let (api_cert, api_key) = ca.server(&["127.0.0.1"]).write(&dir, "api");
    let stable = https_upstream("stable", &ca.server(&["127.0.0.1"]), None).await;
    let canary = https_upstream("canary", &ca.server(&["127.0.0.1"]), None).await;
    let plan = format!(
        r#"name = "tls-payments"
[upstreams]
stable = "https://{stable}"
canary = "https://{canary}"
[upstreams.tls]
ca_file = "{ca}"
[proxy.tls]
cert = "{proxy_cert}"
key = "{proxy_key}"
[[phase]]
name = "canary"
traffic = "50%"
duration = "48h"
[rollback]
triggers = ["error_rate > 5%"]
"#,
        ca = ca_file.display(),
        proxy_cert = proxy_cert.display(),
        proxy_key = proxy_key.display(),
    );
    let plan_path = dir.join("plan.toml");
    std::fs::write(&plan_path, plan).unwrap();
    let server = start_with(
        &dir,
        Some(&plan_path),
        1,
        &[
            "--api-tls-cert",
            api_cert.to_str().unwrap(),
            "--api-tls-key",
            api_key.to_str().unwrap(),
            "--variant-header",
            "--access-log-file",
            dir.join("access.log").to_str().unwrap(),
        ],
    );
    assert!(server.api.starts_with("https://"), "{}", server.api);
    let token = server.token.clone().expect("an admin token");
    let api = api_addr(&server);

    // Users through the TLS listener reach both HTTPS upstreams.
    for u in 0..30 {
        let (status, body, _) = get(
            server.proxy,
            &ca,
            "/pay",
            &[("x-user-id", &format!("u{u}"))],
        )
        .await
        .unwrap();
        assert_eq!((status, body.as_str()), (200, "ok"));
    }

    // The access log went to its file, card numbers masked.
    let (status, _, _) = get(
        server.proxy,
        &ca,
        "/pay/4111-1111-1111-1111",
        &[("x-user-id", "u")],
    )
    .await
    .unwrap();
    assert_eq!(status, 200);

    // The CLI over https with --ca-file; without it the system's roots refuse the private CA.
    let cli = |extra: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_ramp"))
            .args(["status", "tls-payments", "--json"])
            .args(extra)
            .env("RAMP_SERVER", &server.api)
            .env("RAMP_TOKEN", &token)
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    let (code, out) = cli(&["--ca-file", ca_file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["tls"], true);
    let (code, out) = cli(&[]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("cannot reach"), "{out}");

    // The inventory: the API's certificate, the proxy's, and the upstreams' CA.
    let auth = format!("Bearer {token}");
    let (status, body, api_leaf) = get(api, &ca, "/v1/certificates", &[("authorization", &auth)])
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let list: Value = serde_json::from_str(&body).unwrap();
    let roles: Vec<String> = list["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{} {}",
                c["owner"].as_str().unwrap(),
                c["role"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        roles,
        [
            "api listener",
            "rollout tls-payments canary upstream CA",
            "rollout tls-payments listener",
            "rollout tls-payments stable upstream CA",
        ],
        "{body}"
    );
    assert!(list["certificates"][0]["days_to_expiry"].as_f64().unwrap() > 365.0);
    let (_, metrics, _) = get(api, &ca, "/metrics", &[("authorization", &auth)])
        .await
        .unwrap();
    assert!(
        metrics.contains("ramp_certificate_days_to_expiry{owner=\"api\",role=\"listener\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("ramp_access_log_dropped_lines_total 0"),
        "{metrics}"
    );
    let log = std::fs::read_to_string(dir.join("access.log")).unwrap();
    assert!(log.contains("GET /pay/************1111 200"), "{log}");
    assert!(!log.contains("4111-1111"), "{log}");

    // The API's certificate is renewed in place and the server told with SIGHUP; new
    // connections get the new one.
    let renewed = ca.server(&["127.0.0.1"]);
    std::fs::write(&api_cert, &renewed.cert).unwrap();
    std::fs::write(&api_key, &renewed.key).unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let started = Instant::now();
    loop {
        let (_, _, leaf) = get(api, &ca, "/healthz", &[]).await.unwrap();
        if leaf != api_leaf {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the renewed certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, body, _) = get(api, &ca, "/v1/certificates", &[("authorization", &auth)])
        .await
        .unwrap();
    let list: Value = serde_json::from_str(&body).unwrap();
    assert!(list["reloads"].as_u64().unwrap() >= 1, "{body}");
    drop(server);
    std::fs::remove_dir_all(&dir).ok();
}
