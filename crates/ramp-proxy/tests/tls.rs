//! TLS both ways through the real proxy on 127.0.0.1: a TLS listener (HTTP/1.1 and h2 over
//! ALPN, client certificates), HTTPS upstreams verified against a private CA (a wrong CA is a
//! connect failure of that variant), mTLS toward an upstream, old protocol versions refused,
//! and certificates reloaded without dropping open connections.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ramp_core::cohort::ShareBp;
use ramp_core::plan::{ListenerTls, UpstreamTls};
use ramp_harness::pki::{Ca, Leaf, client_config, https_upstream};
use ramp_proxy::{Limits, ProxyConfig, ProxyError, ProxyHandle, Workers, start};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn workers() -> &'static Workers {
    ramp_harness::proxy_workers()
}

use ramp_harness::bounded;

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// The files of one test: a CA for servers, one for clients, and the proxy's listener.
struct Pki {
    dir: PathBuf,
    server_ca: Ca,
    client_ca: Ca,
    server_ca_file: PathBuf,
    client_ca_file: PathBuf,
    listener: (PathBuf, PathBuf),
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = ramp_harness::fresh_dir(name);
        let server_ca = Ca::new("ramp test server CA");
        let client_ca = Ca::new("ramp test client CA");
        let server_ca_file = server_ca.write(&dir, "server-ca.pem");
        let client_ca_file = client_ca.write(&dir, "client-ca.pem");
        let listener = server_ca
            .server(&["127.0.0.1", "localhost"])
            .write(&dir, "listener");
        Pki {
            dir,
            server_ca,
            client_ca,
            server_ca_file,
            client_ca_file,
            listener,
        }
    }

    fn listener_tls(&self, client_ca: bool) -> ListenerTls {
        ListenerTls {
            cert: path(&self.listener.0),
            key: path(&self.listener.1),
            client_ca: client_ca.then(|| path(&self.client_ca_file)),
            client_cert_required: true,
        }
    }

    fn upstream_tls(&self) -> UpstreamTls {
        UpstreamTls {
            ca_file: Some(path(&self.server_ca_file)),
            ..Default::default()
        }
    }
}

fn config(stable: String, canary: String) -> ProxyConfig {
    ProxyConfig {
        limits: Limits {
            response_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(2),
            ..Limits::default()
        },
        owner: "rollout tls-test".into(),
        ..ramp_harness::proxy_config(&stable, &canary, "tls-test")
    }
}

/// A TLS client connection to the proxy, speaking whatever ALPN chose.
struct TlsClient {
    send: Sender,
    alpn: Option<Vec<u8>>,
    peer_cert: Vec<u8>,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

async fn tls_connect(
    addr: SocketAddr,
    ca: &Ca,
    client: Option<&Leaf>,
    alpn: &[&[u8]],
) -> std::io::Result<TlsClient> {
    let mut config = client_config(ca, client);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(name, tcp).await?;
    let (_, session) = tls.get_ref();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let peer_cert = session.peer_certificates().unwrap()[0].to_vec();
    let send = if alpn.as_deref() == Some(b"h2") {
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Sender::H2(send)
    } else {
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Sender::H1(send)
    };
    Ok(TlsClient {
        send,
        alpn,
        peer_cert,
    })
}

impl TlsClient {
    /// GET as user `user`: status and the headers the tests look at.
    async fn get(&mut self, user: &str) -> Result<(StatusCode, http::HeaderMap), String> {
        let req = Request::get("https://127.0.0.1/pay")
            .header("x-user-id", user)
            .body(Empty::new())
            .unwrap();
        let response = match &mut self.send {
            Sender::H1(s) => {
                let mut req = req;
                req.headers_mut()
                    .insert("host", http::HeaderValue::from_static("127.0.0.1"));
                *req.uri_mut() = "/pay".parse().unwrap();
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await.map_err(|e| e.to_string())?
            }
            Sender::H2(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await.map_err(|e| e.to_string())?
            }
        };
        let (parts, body) = response.into_parts();
        let _ = body.collect().await;
        Ok((parts.status, parts.headers))
    }
}

async fn proxy(cfg: ProxyConfig, share_bp: u16) -> ProxyHandle {
    start(cfg, ShareBp::new(share_bp).unwrap(), workers())
        .await
        .unwrap()
}

fn header<'a>(h: &'a http::HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("-")
}

#[tokio::test]
async fn tls_both_ways_over_http1_and_h2_to_upstreams_with_a_private_ca() {
    bounded(async {
        let pki = Pki::new("tls-both-ways");
        let stable_leaf = pki.server_ca.server(&["127.0.0.1"]);
        let canary_leaf = pki.server_ca.server(&["127.0.0.1"]);
        let stable = https_upstream("stable", &stable_leaf, None).await;
        let canary = https_upstream("canary", &canary_leaf, None).await;
        let mut cfg = config(format!("https://{stable}"), format!("https://{canary}"));
        cfg.upstreams.stable_tls = pki.upstream_tls();
        cfg.upstreams.canary_tls = pki.upstream_tls();
        cfg.listen_tls = Some(pki.listener_tls(false));
        let inventory = cfg.certificates.clone();
        // Half the users on the canary.
        let p = proxy(cfg, 5_000).await;

        for alpn in [&b"http/1.1"[..], &b"h2"[..]] {
            let mut c = tls_connect(p.local_addr, &pki.server_ca, None, &[alpn])
                .await
                .unwrap();
            assert_eq!(c.alpn.as_deref(), Some(alpn));
            let mut seen = std::collections::BTreeSet::new();
            for u in 0..40 {
                let (status, h) = c.get(&format!("user-{u}")).await.unwrap();
                assert_eq!(status, StatusCode::OK);
                assert_eq!(header(&h, "x-upstream"), header(&h, "x-ramp-variant"));
                // The upstream learns that the client spoke TLS to the proxy.
                assert_eq!(header(&h, "x-seen-proto"), "https");
                seen.insert(header(&h, "x-upstream").to_owned());
            }
            assert_eq!(
                seen.len(),
                2,
                "both upstreams answered over HTTPS: {seen:?}"
            );
        }
        let w = p.recorder.take_window();
        assert_eq!(w.stable.errors + w.canary.errors, 0);
        assert_eq!(w.stable.requests + w.canary.requests, 80);

        // The inventory: the listener's certificate and the CA file of each upstream.
        let list = inventory.list();
        let roles: Vec<&str> = list.iter().map(|c| c.role.as_str()).collect();
        assert_eq!(
            roles,
            ["canary upstream CA", "listener", "stable upstream CA"],
            "{list:#?}"
        );
        let listener = &list[1];
        assert_eq!(listener.owner, "rollout tls-test");
        assert!(listener.subject.contains("127.0.0.1"), "{listener:?}");
        assert!(
            listener.issuer.contains("ramp test server CA"),
            "{listener:?}"
        );
        assert_eq!(listener.sha256.len(), 64);
        assert!(ramp_proxy::tls::days_to_expiry(listener) > 365.0);
        p.shutdown().await;
        // A proxy that stops takes its certificates out of the inventory.
        assert!(inventory.list().is_empty());
    })
    .await;
}

/// A TLS 1.1 (or 1.0) ClientHello without `supported_versions`, offering old CBC suites.
fn old_client_hello(version: [u8; 2]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&version);
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    let suites: [u8; 6] = [0xc0, 0x13, 0x00, 0x2f, 0x00, 0x35];
    body.extend_from_slice(&(suites.len() as u16).to_be_bytes());
    body.extend_from_slice(&suites);
    body.extend_from_slice(&[1, 0]); // compression: null
    let mut hs = vec![1u8]; // client_hello
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

#[tokio::test]
async fn tls_1_0_and_1_1_are_refused_and_a_wrong_client_ca_fails_the_handshake() {
    bounded(async {
        let pki = Pki::new("tls-old-versions");
        let up = ramp_harness::upstream(Default::default(), Default::default()).await;
        let mut cfg = config(format!("http://{up}"), format!("http://{up}"));
        cfg.listen_tls = Some(pki.listener_tls(false));
        let inventory = cfg.certificates.clone();
        let p = proxy(cfg, 0).await;
        for version in [[3, 1], [3, 2]] {
            let mut tcp = TcpStream::connect(p.local_addr).await.unwrap();
            tcp.write_all(&old_client_hello(version)).await.unwrap();
            let mut answer = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
            // An alert record (21), fatal (2): handshake_failure (40) or protocol_version
            // (70); never a ServerHello (22).
            assert_eq!(answer.first(), Some(&21), "TLS {version:?} got {answer:?}");
            assert_eq!(answer.get(5), Some(&2), "TLS {version:?} got {answer:?}");
            assert!(
                matches!(answer.get(6), Some(40 | 70)),
                "TLS {version:?} got {answer:?}"
            );
        }
        // A client that does not trust the proxy's CA cannot finish the handshake.
        let other = Ca::new("someone else");
        assert!(
            tls_connect(p.local_addr, &other, None, &[b"http/1.1"])
                .await
                .is_err()
        );
        // Cleartext HTTP to a TLS listener gets no HTTP answer.
        let mut tcp = TcpStream::connect(p.local_addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
        assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");
        // Each refused handshake was counted for this listener: two old versions, the
        // stranger's CA, the cleartext request.
        // (The stranger's alert may still be on its way to the server.)
        let expected = [("rollout tls-test".to_owned(), 4)];
        for _ in 0..100 {
            if inventory.handshake_failures() == expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(inventory.handshake_failures(), expected);
        // A working client still gets through.
        let mut ok = tls_connect(p.local_addr, &pki.server_ca, None, &[b"http/1.1"])
            .await
            .unwrap();
        assert_eq!(ok.get("u").await.unwrap().0, StatusCode::OK);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn an_upstream_certificate_that_does_not_verify_is_a_connect_failure_of_that_variant() {
    bounded(async {
        let pki = Pki::new("tls-wrong-ca");
        let rogue = Ca::new("not the CA ramp trusts");
        let stable = https_upstream("stable", &pki.server_ca.server(&["127.0.0.1"]), None).await;
        let canary = https_upstream("canary", &rogue.server(&["127.0.0.1"]), None).await;
        let expired = https_upstream(
            "expired",
            &pki.server_ca.expired_server(&["127.0.0.1"]),
            None,
        )
        .await;
        let mut cfg = config(format!("https://{stable}"), format!("https://{canary}"));
        cfg.upstreams.stable_tls = pki.upstream_tls();
        cfg.upstreams.canary_tls = pki.upstream_tls();
        // Everyone on the canary.
        let p = proxy(cfg, 10_000).await;
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build_http::<Empty<Bytes>>();
        for u in 0..5 {
            let req = Request::get(format!("http://{}/pay", p.local_addr))
                .header("x-user-id", format!("u{u}"))
                .body(Empty::new())
                .unwrap();
            let r = client.request(req).await.unwrap();
            assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        }
        let w = p.recorder.take_window();
        assert_eq!((w.canary.requests, w.canary.errors), (5, 5));
        assert_eq!(w.stable.requests, 0);
        p.shutdown().await;

        // An expired upstream certificate from the right CA is refused too.
        let mut cfg = config(format!("https://{stable}"), format!("https://{expired}"));
        cfg.upstreams.canary_tls = pki.upstream_tls();
        cfg.upstreams.stable_tls = pki.upstream_tls();
        let p = proxy(cfg, 10_000).await;
        let req = Request::get(format!("http://{}/pay", p.local_addr))
            .header("x-user-id", "u")
            .body(Empty::new())
            .unwrap();
        assert_eq!(
            client.request(req).await.unwrap().status(),
            StatusCode::BAD_GATEWAY
        );
        // And the name must match: `server_name` pins another name than the certificate's.
        p.shutdown().await;
        let mut cfg = config(format!("https://{stable}"), format!("https://{stable}"));
        cfg.upstreams.stable_tls = UpstreamTls {
            server_name: Some("payments.example".into()),
            ..pki.upstream_tls()
        };
        cfg.upstreams.canary_tls = pki.upstream_tls();
        let p = proxy(cfg, 0).await;
        let req = Request::get(format!("http://{}/pay", p.local_addr))
            .body(Empty::new())
            .unwrap();
        assert_eq!(
            client.request(req).await.unwrap().status(),
            StatusCode::BAD_GATEWAY
        );
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn mtls_toward_the_upstream_and_client_certificates_on_the_listener() {
    bounded(async {
        let pki = Pki::new("tls-mtls");
        // The upstream only talks to clients with a certificate from the client CA.
        let leaf = pki.server_ca.server(&["127.0.0.1"]);
        let strict = https_upstream("strict", &leaf, Some(&pki.client_ca)).await;
        let (cc, ck) = pki
            .client_ca
            .client("ramp proxy")
            .write(&pki.dir, "ramp-client");
        let mut cfg = config(format!("https://{strict}"), format!("https://{strict}"));
        cfg.upstreams.stable_tls = UpstreamTls {
            client_cert: Some(path(&cc)),
            client_key: Some(path(&ck)),
            ..pki.upstream_tls()
        };
        // The canary is configured without a client certificate: refused by the upstream.
        cfg.upstreams.canary_tls = pki.upstream_tls();
        // And the proxy's own listener requires client certificates.
        cfg.listen_tls = Some(pki.listener_tls(true));
        let inventory = cfg.certificates.clone();
        let p = proxy(cfg, 0).await;

        let user = pki.client_ca.client("a payments client");
        let mut c = tls_connect(p.local_addr, &pki.server_ca, Some(&user), &[b"http/1.1"])
            .await
            .unwrap();
        let (status, h) = c.get("u1").await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(header(&h, "x-client-cert"), "yes");

        // Without a client certificate the proxy refuses the connection (TLS 1.3 reports it
        // at the first read).
        let refused = match tls_connect(p.local_addr, &pki.server_ca, None, &[b"http/1.1"]).await {
            Err(_) => true,
            Ok(mut c) => c.get("u2").await.is_err(),
        };
        assert!(refused, "a client without a certificate was served");
        // A certificate from another CA is refused too.
        let stranger = Ca::new("stranger").client("x");
        let refused = match tls_connect(
            p.local_addr,
            &pki.server_ca,
            Some(&stranger),
            &[b"http/1.1"],
        )
        .await
        {
            Err(_) => true,
            Ok(mut c) => c.get("u3").await.is_err(),
        };
        assert!(refused, "a client with a stranger's certificate was served");
        p.routing.set_share(ShareBp::new(10_000).unwrap());
        let (status, _) = c.get("u4").await.unwrap();
        assert_eq!(
            status,
            StatusCode::BAD_GATEWAY,
            "the canary has no client certificate"
        );
        let roles: Vec<String> = inventory.list().into_iter().map(|c| c.role).collect();
        assert!(
            roles.contains(&"stable client certificate".to_owned()),
            "{roles:?}"
        );
        assert!(
            roles.contains(&"listener client CA".to_owned()),
            "{roles:?}"
        );
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn certificates_reload_when_their_files_change_without_dropping_connections() {
    bounded(async {
        let pki = Pki::new("tls-reload");
        let up = ramp_harness::upstream(Default::default(), Default::default()).await;
        let mut cfg = config(format!("http://{up}"), format!("http://{up}"));
        cfg.listen_tls = Some(pki.listener_tls(false));
        let inventory = cfg.certificates.clone();
        let p = proxy(cfg, 0).await;
        let mut old = tls_connect(p.local_addr, &pki.server_ca, None, &[b"h2"])
            .await
            .unwrap();
        assert_eq!(old.get("u").await.unwrap().0, StatusCode::OK);
        let before = inventory.list()[0].sha256.clone();
        assert_eq!(
            inventory.reload_changed().reloaded,
            0,
            "nothing changed yet"
        );

        // A renewed certificate from another CA is written over the files.
        let new_ca = Ca::new("ramp test renewed CA");
        let renewed = new_ca.server(&["127.0.0.1"]);
        std::fs::write(&pki.listener.0, &renewed.cert).unwrap();
        std::fs::write(&pki.listener.1, &renewed.key).unwrap();
        let report = inventory.reload_changed();
        assert_eq!((report.reloaded, report.failed.len()), (1, 0), "{report:?}");
        assert_ne!(inventory.list()[0].sha256, before);
        assert!(inventory.list()[0].issuer.contains("renewed"));

        // The open connection keeps working; new ones get the new certificate.
        assert_eq!(old.get("u").await.unwrap().0, StatusCode::OK);
        let fresh = tls_connect(p.local_addr, &new_ca, None, &[b"http/1.1"])
            .await
            .unwrap();
        assert_ne!(fresh.peer_cert, old.peer_cert);
        assert!(
            tls_connect(p.local_addr, &pki.server_ca, None, &[b"http/1.1"])
                .await
                .is_err()
        );

        // A broken file (a key that does not match) leaves the working certificate in use.
        let other = new_ca.server(&["127.0.0.1"]);
        std::fs::write(&pki.listener.1, &other.key).unwrap();
        let report = inventory.reload_changed();
        assert_eq!((report.reloaded, report.failed.len()), (0, 1), "{report:?}");
        assert_eq!(inventory.reload_failures(), 1);
        // Reported once: the next check finds nothing new.
        let report = inventory.reload_changed();
        assert_eq!((report.reloaded, report.failed.len()), (0, 0), "{report:?}");
        let mut still = tls_connect(p.local_addr, &new_ca, None, &[b"http/1.1"])
            .await
            .unwrap();
        assert_eq!(still.get("u").await.unwrap().0, StatusCode::OK);
        // SIGHUP's path reloads everything, even unchanged files, once they are right again.
        std::fs::write(&pki.listener.1, &renewed.key).unwrap();
        assert_eq!(inventory.reload_all().reloaded, 1);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn bad_tls_material_stops_the_proxy_from_starting_with_a_clear_error() {
    bounded(async {
        let pki = Pki::new("tls-bad-material");
        let up = ramp_harness::upstream(Default::default(), Default::default()).await;
        let expired = pki
            .server_ca
            .expired_server(&["127.0.0.1"])
            .write(&pki.dir, "expired");
        let other = pki
            .server_ca
            .server(&["127.0.0.1"])
            .write(&pki.dir, "other");
        let files = |cert: &Path, key: &Path| ListenerTls {
            cert: path(cert),
            key: path(key),
            client_ca: None,
            client_cert_required: true,
        };
        let cases = [
            (files(&expired.0, &expired.1), "expired"),
            (files(&pki.listener.0, &other.1), "key"),
            (files(&pki.dir.join("missing.pem"), &other.1), "missing.pem"),
            // A key is not a certificate.
            (files(&other.1, &other.1), "no PEM certificate"),
        ];
        for (tls, says) in cases {
            let mut cfg = config(format!("http://{up}"), format!("http://{up}"));
            cfg.listen_tls = Some(tls);
            let inventory = cfg.certificates.clone();
            match start(cfg, ShareBp::ZERO, workers()).await {
                Err(ProxyError::Tls(e)) => {
                    assert!(e.to_string().contains(says), "{says}: {e}");
                }
                Err(e) => panic!("{says}: {e}"),
                Ok(_) => panic!("{says}: started"),
            }
            assert!(inventory.list().is_empty());
        }
    })
    .await;
}

/// Regression: an upstream that accepts TCP and never speaks TLS held the request for the
/// whole response timeout (504); its handshake is inside the connect timeout now (502).
#[tokio::test]
async fn an_upstream_that_never_completes_its_tls_handshake_is_a_connect_failure() {
    bounded(async {
        let pki = Pki::new("tls-silent-upstream");
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                held.push(s);
            }
        });
        let mut cfg = config(format!("https://{addr}"), format!("https://{addr}"));
        cfg.upstreams.stable_tls = pki.upstream_tls();
        cfg.upstreams.canary_tls = pki.upstream_tls();
        cfg.limits.connect_timeout = Duration::from_millis(300);
        cfg.limits.response_timeout = Duration::from_secs(30);
        let p = proxy(cfg, 0).await;
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build_http::<Empty<Bytes>>();
        let req = Request::get(format!("http://{}/pay", p.local_addr))
            .body(Empty::new())
            .unwrap();
        let r = tokio::time::timeout(Duration::from_secs(20), client.request(req))
            .await
            .expect("the connect timeout did not cover the handshake")
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        let w = p.recorder.take_window();
        assert_eq!((w.stable.requests, w.stable.errors), (1, 1));
        p.shutdown().await;
    })
    .await;
}
