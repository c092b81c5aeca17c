//! Who the client is and what it speaks, through the real proxy on 127.0.0.1: forwarding
//! headers believed only from trusted proxies, the original scheme kept from a trusted TLS
//! terminator, the PROXY protocol (v1 and v2) on the listener, and WebSocket upgrades.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use ramp_core::cohort::{Salt, ShareBp, bucket};
use ramp_core::plan::{Cohort, CohortKey, UnkeyedRoute};
use ramp_harness::bounded;
use ramp_proxy::client_addr::TrustedProxies;
use ramp_proxy::{ProxyConfig, ProxyHandle, start};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SALT: &str = "client-addr-test";

/// An upstream that echoes what it was told about the client.
async fn echo(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let h = |n: &str| {
                        req.headers()
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_owned()
                    };
                    let r = http::Response::builder()
                        .header("x-upstream", name)
                        .header("x-seen-xff", h("x-forwarded-for"))
                        .header("x-seen-proto", h("x-forwarded-proto"))
                        .header("x-seen-forwarded", h("forwarded"))
                        .body(Full::new(Bytes::from_static(b"ok")))
                        .unwrap();
                    async move { Ok::<_, std::convert::Infallible>(r) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// A client address the share routes to the canary while 127.0.0.1 stays on stable, and
/// that share.
fn canary_client() -> (String, u16) {
    let salt = Salt::new(SALT);
    let local = bucket(salt, b"127.0.0.1");
    (1..255)
        .map(|i| format!("203.0.113.{i}"))
        .find(|ip| bucket(salt, ip.as_bytes()) < local)
        .map(|ip| {
            let share = bucket(salt, ip.as_bytes()) + 1;
            (ip, share)
        })
        .expect("some address buckets below 127.0.0.1")
}

async fn proxy(trusted: &[&str], proxy_protocol: bool, share: u16) -> ProxyHandle {
    let (stable, canary) = (echo("stable").await, echo("canary").await);
    let cfg = ProxyConfig {
        cohort: Cohort {
            key: CohortKey::ClientIp,
            salt: SALT.into(),
            formula: 1,
            unkeyed: UnkeyedRoute::Stable,
        },
        owner: "rollout client-addr".into(),
        trusted_proxies: TrustedProxies::parse(trusted).unwrap(),
        proxy_protocol,
        ..ramp_harness::proxy_config(
            &format!("http://{stable}"),
            &format!("http://{canary}"),
            SALT,
        )
    };
    start(
        cfg,
        ShareBp::new(share).unwrap(),
        ramp_harness::proxy_workers(),
    )
    .await
    .unwrap()
}

/// Sends `prefix` (a PROXY header, or nothing) and one GET with `headers`; the response head
/// as lowercase text, or "" when the proxy closed the connection without answering.
async fn get(addr: SocketAddr, prefix: &[u8], headers: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = prefix.to_vec();
    req.extend_from_slice(
        format!("GET /pay HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{headers}\r\n").as_bytes(),
    );
    if s.write_all(&req).await.is_err() {
        return String::new();
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_lowercase()
}

fn header<'a>(head: &'a str, name: &str) -> &'a str {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or("-")
        .trim()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_believed_only_from_trusted_proxies() {
    bounded(async {
        let (client, share) = canary_client();
        let xff = format!("x-forwarded-for: {client}\r\nx-forwarded-proto: https\r\n");

        // The load balancer (127.0.0.1 here) is trusted: the client behind it is routed, and
        // the scheme it saw (https, at a TLS terminator) reaches the backend.
        let trusted = proxy(&["127.0.0.0/8"], false, share).await;
        let head = get(trusted.local_addr, b"", &xff).await;
        assert_eq!(header(&head, "x-ramp-variant"), "canary", "{head}");
        assert_eq!(header(&head, "x-seen-proto"), "https", "{head}");
        assert_eq!(
            header(&head, "x-seen-xff"),
            format!("{client}, 127.0.0.1"),
            "{head}"
        );
        assert!(header(&head, "x-seen-forwarded").ends_with("for=127.0.0.1;proto=http;host=x"));
        // Without forwarding headers the peer is the client.
        let head = get(trusted.local_addr, b"", "").await;
        assert_eq!(header(&head, "x-ramp-variant"), "stable", "{head}");
        trusted.shutdown().await;

        // Anyone else's headers are ignored: a client cannot pick its own cohort or scheme.
        let untrusted = proxy(&["10.0.0.0/8"], false, share).await;
        let head = get(untrusted.local_addr, b"", &xff).await;
        assert_eq!(header(&head, "x-ramp-variant"), "stable", "{head}");
        assert_eq!(header(&head, "x-seen-proto"), "http", "{head}");
        untrusted.shutdown().await;
    })
    .await;
}

/// A PROXY protocol v2 header for a TCP4 connection from `src`.
fn v2(src: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&80u16.to_be_bytes());
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_protocol_gives_the_client_address_behind_a_tcp_load_balancer() {
    bounded(async {
        let (client, share) = canary_client();
        let p = proxy(&[], true, share).await;
        // v1
        let line = format!("PROXY TCP4 {client} 127.0.0.1 5555 80\r\n");
        let head = get(p.local_addr, line.as_bytes(), "").await;
        assert_eq!(header(&head, "x-ramp-variant"), "canary", "{head}");
        assert_eq!(header(&head, "x-seen-xff"), client, "{head}");
        // v2
        let ip: std::net::Ipv4Addr = client.parse().unwrap();
        let head = get(p.local_addr, &v2(ip.octets(), 5555), "").await;
        assert_eq!(header(&head, "x-ramp-variant"), "canary", "{head}");
        assert_eq!(header(&head, "x-seen-xff"), client, "{head}");
        // v1 UNKNOWN (a health check of the balancer): the real peer.
        let head = get(p.local_addr, b"PROXY UNKNOWN\r\n", "").await;
        assert_eq!(header(&head, "x-seen-xff"), "127.0.0.1", "{head}");
        // A connection without a PROXY header, or with a broken one, is closed unanswered.
        assert_eq!(get(p.local_addr, b"", "").await, "");
        assert_eq!(get(p.local_addr, b"PROXY TCP4 1.2.3\r\n", "").await, "");
        p.shutdown().await;

        // With trusted proxies, only they may send PROXY headers.
        let p = proxy(&["10.0.0.0/8"], true, share).await;
        assert_eq!(get(p.local_addr, line.as_bytes(), "").await, "");
        p.shutdown().await;
    })
    .await;
}

/// An upstream that accepts a WebSocket handshake and echoes each (small, masked) text frame
/// back unmasked.
async fn websocket_echo(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
                    let upgraded = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        let Ok(up) = upgraded.await else { return };
                        let mut io = TokioIo::new(up);
                        loop {
                            let mut head = [0u8; 2];
                            if io.read_exact(&mut head).await.is_err() {
                                return;
                            }
                            let len = usize::from(head[1] & 0x7f);
                            let mut mask = [0u8; 4];
                            io.read_exact(&mut mask).await.unwrap();
                            let mut payload = vec![0u8; len];
                            io.read_exact(&mut payload).await.unwrap();
                            for (i, b) in payload.iter_mut().enumerate() {
                                *b ^= mask[i % 4];
                            }
                            let mut frame = vec![head[0], len as u8];
                            frame.extend_from_slice(&payload);
                            io.write_all(&frame).await.unwrap();
                        }
                    });
                    let r = http::Response::builder()
                        .status(101)
                        .header("upgrade", "websocket")
                        .header("connection", "upgrade")
                        .header("sec-websocket-accept", "test")
                        .header("x-upstream", name)
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    async move { Ok::<_, std::convert::Infallible>(r) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_is_proxied_to_the_variant_chosen_at_the_handshake_and_counted_once() {
    bounded(async {
        let (stable, canary) = (websocket_echo("stable").await, websocket_echo("canary").await);
        let cfg = ramp_harness::proxy_config(
            &format!("http://{stable}"),
            &format!("http://{canary}"),
            SALT,
        );
        // Everyone on the canary.
        let p = start(cfg, ShareBp::new(10_000).unwrap(), ramp_harness::proxy_workers())
            .await
            .unwrap();
        let mut s = TcpStream::connect(p.local_addr).await.unwrap();
        s.write_all(
            b"GET /ws HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).to_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert_eq!(header(&head, "upgrade"), "websocket", "{head}");
        assert_eq!(header(&head, "x-upstream"), "canary", "{head}");
        // Frames both ways, several times, on the one tunnel; the share moving to 0 does not
        // move an open WebSocket.
        p.routing.set_share(ShareBp::ZERO);
        for word in [&b"hello"[..], b"payments", b"bye"] {
            let mask = [1u8, 2, 3, 4];
            let mut frame = vec![0x81, 0x80 | word.len() as u8];
            frame.extend_from_slice(&mask);
            frame.extend(word.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
            s.write_all(&frame).await.unwrap();
            let mut echo = vec![0u8; 2 + word.len()];
            s.read_exact(&mut echo).await.unwrap();
            assert_eq!(&echo[2..], word);
        }
        let w = p.recorder.take_window();
        assert_eq!((w.canary.requests, w.canary.successes, w.canary.errors), (1, 1, 0));
        assert_eq!(w.stable.requests, 0);
        p.shutdown().await;
    })
    .await;
}
