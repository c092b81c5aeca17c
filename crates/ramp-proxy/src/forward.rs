//! One request through the proxy: limits, cohort key, routing, forwarding headers, the
//! upstream call, classification, recording and the access log.

use super::recorder::user_hash;
use super::{KeySource, Shared};
use crate::body::{Outcome, Tracked, Upload, UploadState};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::{Body as _, Incoming};
use ramp_core::cohort::Variant;
use ramp_core::evidence::class::Answer;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The body sent to clients: the upstream's, streamed, or a short one the proxy made.
pub(crate) type ProxyBody = Either<Tracked, Full<Bytes>>;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_RAMP_VARIANT: HeaderName = HeaderName::from_static("x-ramp-variant");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Hop-by-hop headers that are always removed (besides those named by `connection`).
static HOP_BY_HOP: [&HeaderName; 9] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
    &header::PROXY_AUTHENTICATE,
    &header::PROXY_AUTHORIZATION,
];

/// Per-connection context.
pub(crate) struct ConnCtx {
    shared: Arc<Shared>,
    /// The client address as text: the `client_ip` cohort key and the forwarding headers.
    client_ip: String,
    /// This hop's `forwarded` element without `host`: `for=IP;proto=http|https` (IPv6
    /// quoted in brackets), made once per connection.
    forwarded_node: String,
    /// The client address as a header value (`x-forwarded-for` when the request has none).
    client_ip_value: HeaderValue,
    /// Whether the client connection is TLS (`x-forwarded-proto: https`).
    tls: bool,
    /// The connection's peer (after any PROXY protocol header).
    peer_ip: IpAddr,
}

impl ConnCtx {
    pub(crate) fn new(shared: Arc<Shared>, info: crate::listen::ConnInfo) -> Self {
        let peer = info.peer;
        // An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d; use the IPv4 form.
        let ip = match peer.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let client_ip = ip.to_string();
        let forwarded_for = match ip {
            IpAddr::V4(_) => client_ip.clone(),
            IpAddr::V6(_) => format!("\"[{client_ip}]\""),
        };
        let forwarded_node = format!(
            "for={forwarded_for};proto={}",
            if info.tls { "https" } else { "http" }
        );
        let client_ip_value =
            HeaderValue::from_str(&client_ip).unwrap_or(HeaderValue::from_static("unknown"));
        ConnCtx {
            shared,
            client_ip,
            forwarded_node,
            client_ip_value,
            tls: info.tls,
            peer_ip: ip,
        }
    }
}

/// A short plain-text response made by the proxy.
fn local_response(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from_static(
        text.as_bytes(),
    ))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Approximate wire size of a request head: request line plus `name: value\r\n` per field.
fn head_bytes(req: &Request<Incoming>) -> usize {
    let target = req.uri().path_and_query().map_or(1, |pq| pq.as_str().len());
    let line = req.method().as_str().len() + 1 + target + " HTTP/1.1\r\n".len();
    req.headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + line
        + 2
}

/// Trims optional whitespace around a cookie token.
fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The value of cookie `name` (first occurrence, surrounding double quotes removed), if set and
/// not empty.
pub(crate) fn find_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    for value in headers.get_all(header::COOKIE) {
        for pair in value.as_bytes().split(|&b| b == b';') {
            let pair = trim_ows(pair);
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            if trim_ows(&pair[..eq]) != name.as_bytes() {
                continue;
            }
            let mut v = trim_ows(&pair[eq + 1..]);
            if let [b'"', inner @ .., b'"'] = v {
                v = inner;
            }
            if !v.is_empty() {
                return Some(v);
            }
        }
    }
    None
}

/// The request's cohort key, if any. `client_ip` is the client's address as text (the peer,
/// or whom a trusted proxy forwarded for).
fn cohort_key<'a>(ctx: &ConnCtx, headers: &'a HeaderMap, client_ip: &'a str) -> Option<&'a [u8]> {
    let found = match &ctx.shared.key {
        KeySource::Header(name) => headers
            .get(name)
            .map(HeaderValue::as_bytes)
            .filter(|v| !v.is_empty()),
        KeySource::Cookie(name) => find_cookie(headers, name),
        KeySource::ClientIp => Some(client_ip.as_bytes()),
    };
    match found {
        Some(key) => Some(key),
        None if ctx.shared.unkeyed_by_ip => Some(client_ip.as_bytes()),
        None => None,
    }
}

/// Removes hop-by-hop headers: the fixed list and every header `connection` names. One pass
/// over the names finds which are there (most messages carry none, or only `connection`), so
/// a message without them costs no lookups.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut connection = false;
    let mut others = false;
    for name in headers.keys() {
        if name == header::CONNECTION {
            connection = true;
        } else if HOP_BY_HOP.contains(&name) {
            others = true;
        }
    }
    if connection {
        let mut named: Vec<HeaderName> = Vec::new();
        for value in headers.get_all(header::CONNECTION) {
            let Ok(v) = value.to_str() else { continue };
            for token in v.split(',') {
                let token = token.trim();
                // `keep-alive` and `close` name no header worth a lookup.
                if token.is_empty()
                    || token.eq_ignore_ascii_case("keep-alive")
                    || token.eq_ignore_ascii_case("close")
                {
                    continue;
                }
                if let Ok(n) = HeaderName::from_bytes(token.as_bytes()) {
                    named.push(n);
                }
            }
        }
        for name in named {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    if others {
        for name in HOP_BY_HOP {
            headers.remove(name);
        }
    }
}

/// Whether a `forwarded` parameter value can go unquoted (an RFC 7230 token).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Appends `value` as a `forwarded` parameter value: as is when it is a token, else quoted.
fn push_forwarded_value(out: &mut String, value: &str) {
    if is_token(value) {
        out.push_str(value);
    } else {
        out.push('"');
        for c in value.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
}

/// Joins every value of `name` with `", "` (values that are not visible ASCII are skipped).
fn joined(headers: &HeaderMap, name: &HeaderName, separator: &str) -> String {
    let mut out = String::new();
    for value in headers.get_all(name) {
        if let Ok(v) = value.to_str() {
            let v = v.trim();
            if v.is_empty() {
                continue;
            }
            if !out.is_empty() {
                out.push_str(separator);
            }
            out.push_str(v);
        }
    }
    out
}

fn header_value(s: String) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(Bytes::from(s)).ok()
}

/// Rewrites request headers for the upstream (see the module docs of `proxy`). `host` is the
/// client's `Host` (or HTTP/2 `:authority`); `trusted_proto` the scheme a trusted proxy said
/// the client used.
fn forwarding_headers(
    ctx: &ConnCtx,
    headers: &mut HeaderMap,
    host: Option<HeaderValue>,
    h2: bool,
    trusted_proto: Option<crate::client_addr::Proto>,
) {
    strip_hop_by_hop(headers);
    headers.remove(header::HOST);
    if h2 && headers.get_all(header::COOKIE).iter().nth(1).is_some() {
        // HTTP/2 may split cookies over several fields; HTTP/1.1 wants one (RFC 9113 8.2.3).
        if let Some(v) = header_value(joined(headers, &header::COOKIE, "; ")) {
            headers.insert(header::COOKIE, v);
        }
    }

    // Without a list from the client (the usual case) the value is the one made per
    // connection: no formatting, no allocation.
    let xff = if headers.contains_key(&X_FORWARDED_FOR) {
        let mut xff = joined(headers, &X_FORWARDED_FOR, ", ");
        if !xff.is_empty() {
            xff.push_str(", ");
        }
        xff.push_str(&ctx.client_ip);
        header_value(xff).unwrap_or_else(|| ctx.client_ip_value.clone())
    } else {
        ctx.client_ip_value.clone()
    };
    headers.insert(X_FORWARDED_FOR.clone(), xff);
    // This hop's scheme is in `forwarded`; `x-forwarded-proto` carries the client's original
    // scheme, which a trusted proxy in front may know better (a TLS terminator).
    let proto = if ctx.tls { "https" } else { "http" };
    let original = trusted_proto.map_or(proto, crate::client_addr::Proto::as_str);
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(original),
    );

    let mut forwarded = if headers.contains_key(header::FORWARDED) {
        let mut f = joined(headers, &header::FORWARDED, ", ");
        if !f.is_empty() {
            f.push_str(", ");
        }
        f
    } else {
        String::with_capacity(
            ctx.forwarded_node.len() + 8 + host.as_ref().map_or(0, |h| h.len() + 2),
        )
    };
    forwarded.push_str(&ctx.forwarded_node);
    if host.is_none() {
        headers.remove(&X_FORWARDED_HOST);
    }
    if let Some(host) = host {
        if let Ok(text) = host.to_str() {
            forwarded.push_str(";host=");
            push_forwarded_value(&mut forwarded, text);
        }
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    if let Some(v) = header_value(forwarded) {
        headers.insert(header::FORWARDED, v);
    }
}

/// A routed request that has no outcome yet. Until the response head it is recorded on drop
/// (hyper drops the request's future when the client goes away first) as status 499 — a
/// request, neither error nor success — with the latency until then; after the head its
/// [`Outcome`] moves into the response body, which records it when it ends.
struct Pending {
    outcome: Option<Outcome>,
    received: Instant,
}

impl Pending {
    fn take(&mut self) -> Outcome {
        let mut o = self.outcome.take().expect("taken once");
        o.latency = self.received.elapsed();
        o
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.outcome.is_some() {
            self.take().finish(Answer::ClientClosed);
        }
    }
}

/// Why a request is refused before it is routed (RFC 9112 and RFC 9110 framing and `Host`
/// rules; what nginx refuses too). Never forwarded.
fn malformed(req: &Request<Incoming>, key: &KeySource) -> Option<&'static str> {
    let h = req.headers();
    let te = h.get_all(header::TRANSFER_ENCODING);
    if te.iter().next().is_some() {
        if h.contains_key(header::CONTENT_LENGTH) {
            return Some("both content-length and transfer-encoding\n");
        }
        let chunked = te
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .filter(|t| trim_ows(t).eq_ignore_ascii_case(b"chunked"))
            .count();
        if chunked > 1 {
            return Some("chunked applied twice\n");
        }
    }
    let mut hosts = h.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Some("more than one host header\n");
    }
    match host {
        Some(v) if !valid_host(v.as_bytes()) => return Some("invalid host header\n"),
        None if req.version() == Version::HTTP_11 => return Some("no host header\n"),
        _ => {}
    }
    // The authority form (`host:port`) is for CONNECT only; it has no path to forward.
    if req.uri().path_and_query().is_none() && req.uri().authority().is_some() {
        return Some("bad request target\n");
    }
    if let KeySource::Header(name) = key
        && h.get_all(name).iter().nth(1).is_some()
    {
        // The first would route while the backend sees both: refuse rather than guess.
        return Some("the cohort header appears more than once\n");
    }
    None
}

/// Whether a `Host` value is `host[:port]`: a registered name, an IPv4 address or a
/// bracketed IPv6 address, with an optional numeric port (RFC 9110 7.2, RFC 3986 3.2.2).
fn valid_host(v: &[u8]) -> bool {
    if v.is_empty() {
        return false;
    }
    let (host, port) = if v[0] == b'[' {
        let Some(end) = v.iter().position(|&b| b == b']') else {
            return false;
        };
        let inside = &v[1..end];
        if inside.is_empty()
            || !inside
                .iter()
                .all(|b| b.is_ascii_hexdigit() || b":.".contains(b))
        {
            return false;
        }
        match &v[end + 1..] {
            [] => (&v[..0], None),
            [b':', port @ ..] => (&v[..0], Some(port)),
            _ => return false,
        }
    } else {
        match v.iter().rposition(|&b| b == b':') {
            Some(i) => (&v[..i], Some(&v[i + 1..])),
            None => (v, None),
        }
    };
    let host_ok = v[0] == b'[' || {
        !host.is_empty()
            && host
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b))
    };
    let port_ok = port.is_none_or(|p| p.len() <= 5 && p.iter().all(u8::is_ascii_digit));
    host_ok && port_ok
}

/// Handles one client request. Never fails: upstream trouble becomes a 502, 503 or 504.
pub(crate) async fn handle(
    ctx: &ConnCtx,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    // Measures the request's latency: evidence, read on the monotonic clock.
    #[allow(clippy::disallowed_methods)]
    let received = Instant::now();
    let shared = &ctx.shared;
    // Only kept when there is a log to write.
    let log_target = shared.log.as_ref().map(|_| {
        (
            req.method().clone(),
            req.uri()
                .path_and_query()
                .map_or_else(|| req.uri().to_string(), |pq| pq.as_str().to_owned()),
        )
    });
    let refuse = |status: StatusCode, text: &'static str| {
        if let (Some(log), Some((method, target))) = (&shared.log, &log_target) {
            log.log(method, target, status.as_u16(), "-", received.elapsed());
        }
        Ok(local_response(status, text))
    };

    if req.headers().len() > shared.limits.max_headers
        || head_bytes(&req) > shared.limits.max_header_bytes
    {
        return refuse(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request header fields too large\n",
        );
    }
    if req.method() == Method::CONNECT {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not supported\n");
    }
    if let Some(why) = malformed(&req, &shared.key) {
        return refuse(StatusCode::BAD_REQUEST, why);
    }

    // Who the client is: the peer, or whom a trusted proxy says it forwards for.
    let resolved = (!shared.trusted.is_empty())
        .then(|| crate::client_addr::client_ip(ctx.peer_ip, req.headers(), &shared.trusted));
    let vouched_ip = resolved.filter(|r| r.vouched).map(|r| r.ip.to_string());
    let client_ip = vouched_ip.as_deref().unwrap_or(&ctx.client_ip);

    // Route.
    let (variant, user) = match cohort_key(ctx, req.headers(), client_ip) {
        Some(key) => (shared.routing.route(key), Some(user_hash(key))),
        None => (Variant::Stable, None),
    };

    // Build the upstream request.
    // An HTTP/1.1 upgrade (WebSocket): the handshake goes to the routed variant with its
    // `upgrade` and `connection: upgrade`; on 101 both sides become one tunnel, sticky to that
    // variant, counted once (at the handshake).
    let upgrade = upgrade_request(&req).map(|protocol| (protocol, hyper::upgrade::on(&mut req)));
    let (mut parts, body) = req.into_parts();
    let Ok(uri) = shared.upstream(variant).uri(parts.uri.path_and_query()) else {
        return refuse(StatusCode::BAD_REQUEST, "bad request target\n");
    };
    let h2 = parts.version == Version::HTTP_2;
    let host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    forwarding_headers(
        ctx,
        &mut parts.headers,
        host,
        h2,
        resolved.and_then(|r| r.proto),
    );
    if let Some((protocol, _)) = &upgrade {
        parts.headers.insert(header::UPGRADE, protocol.clone());
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let limits = &shared.limits;
    let upload = (!body.is_end_stream()).then(|| Arc::new(UploadState::default()));
    let upstream_request = Request::from_parts(
        parts,
        Upload::new(body, upload.clone(), limits.client_body_timeout),
    );

    let mut pending = Pending {
        outcome: Some(Outcome {
            shared: shared.clone(),
            variant,
            user,
            latency: Duration::ZERO,
            received,
            to_last_byte: shared.latency_to_last_byte,
            log_target,
            permit: None,
        }),
        received,
    };
    // The variant's bulkhead: a slot, or a short wait in its queue, or 503 for this variant.
    let Some(permit) = shared.bulkhead(variant).enter().await else {
        pending.take().finish(Answer::Overloaded);
        return Ok(with_variant(
            shared,
            variant,
            local_response(StatusCode::SERVICE_UNAVAILABLE, "upstream overloaded\n"),
        ));
    };
    if let Some(o) = pending.outcome.as_mut() {
        o.permit = Some(permit);
    }

    let result = response_within(
        shared.client(variant).request(upstream_request),
        upload.as_deref(),
        limits.response_timeout,
    )
    .await;
    let (answer, response) = match result {
        Ok(Ok(mut response)) => {
            let status = response.status().as_u16();
            if let Some((_, client_side)) = upgrade
                && response.status() == StatusCode::SWITCHING_PROTOCOLS
            {
                return Ok(with_variant(
                    shared,
                    variant,
                    tunnel(response, client_side, pending.take()),
                ));
            }
            let headers = response.headers_mut();
            // A length beside chunked framing would cut the body short on the way out.
            if headers.contains_key(header::TRANSFER_ENCODING) {
                headers.remove(header::CONTENT_LENGTH);
            }
            strip_hop_by_hop(headers);
            let outcome = pending.take();
            let response = response.map(|body| {
                Either::Left(Tracked::new(
                    body,
                    status,
                    outcome,
                    limits.upstream_body_timeout,
                ))
            });
            return Ok(with_variant(shared, variant, response));
        }
        Ok(Err(e)) if e.is_connect() => (
            Answer::ConnectFailed,
            local_response(StatusCode::BAD_GATEWAY, "upstream unreachable\n"),
        ),
        Ok(Err(_)) if upload.as_ref().is_some_and(|u| u.stalled()) => (
            Answer::ClientFailed,
            local_response(StatusCode::REQUEST_TIMEOUT, "request body timed out\n"),
        ),
        Ok(Err(e)) if client_body_failed(&e) => (
            Answer::ClientFailed,
            local_response(StatusCode::BAD_REQUEST, "request body failed\n"),
        ),
        Ok(Err(_)) => (
            Answer::UpstreamFailed,
            local_response(StatusCode::BAD_GATEWAY, "upstream failed\n"),
        ),
        Err(()) => (
            Answer::TimedOut,
            local_response(StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n"),
        ),
    };
    pending.take().finish(answer);
    Ok(with_variant(shared, variant, response))
}

/// The protocol a request asks to upgrade to, when it is an HTTP/1.1 upgrade request
/// (`upgrade` named by `connection`).
fn upgrade_request(req: &Request<Incoming>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let protocol = req.headers().get(header::UPGRADE)?;
    // Only WebSocket: another protocol (`h2c`) would become a tunnel whose requests are never
    // routed or recorded.
    let websocket = protocol
        .as_bytes()
        .split(|&b| b == b',')
        .any(|p| trim_ows(p).eq_ignore_ascii_case(b"websocket"));
    if !websocket {
        return None;
    }
    let asks = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| trim_ows(t).eq_ignore_ascii_case(b"upgrade"));
    asks.then(|| protocol.clone())
}

/// Answers the client's upgrade with the upstream's 101 and joins the two upgraded
/// connections; the request is recorded now, as the 101 it is.
fn tunnel(
    mut upstream: Response<Incoming>,
    client_side: hyper::upgrade::OnUpgrade,
    outcome: Outcome,
) -> Response<ProxyBody> {
    let upstream_side = hyper::upgrade::on(&mut upstream);
    let (parts, _) = upstream.into_parts();
    outcome.finish(Answer::Status(101));
    tokio::spawn(async move {
        let (Ok(client), Ok(upstream)) = (client_side.await, upstream_side.await) else {
            return;
        };
        let mut client = hyper_util::rt::TokioIo::new(client);
        let mut upstream = hyper_util::rt::TokioIo::new(upstream);
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    });
    // `upgrade` and `connection` stay: they are the answer to the client's handshake.
    Response::from_parts(parts, Either::Right(Full::new(Bytes::new())))
}

fn with_variant(
    shared: &Shared,
    variant: Variant,
    mut response: Response<ProxyBody>,
) -> Response<ProxyBody> {
    if shared.variant_header {
        response.headers_mut().insert(
            X_RAMP_VARIANT.clone(),
            HeaderValue::from_static(variant.as_str()),
        );
    }
    response
}

/// Waits for the upstream's response head for at most `timeout` after the upload ended. An
/// upload that is moving never counts against the upstream (it has its own idle timeout); one
/// that nobody takes for `timeout` (a TLS handshake that stalls, an upstream that stopped
/// reading) does: the upstream timed out.
// A request's own timeout, not a decision: measured on the runtime's monotonic clock.
#[allow(clippy::disallowed_methods)]
async fn response_within<F: std::future::Future>(
    call: F,
    upload: Option<&UploadState>,
    timeout: Duration,
) -> Result<F::Output, ()> {
    let mut call = std::pin::pin!(call);
    let Some(upload) = upload else {
        return tokio::time::timeout(timeout, call).await.map_err(|_| ());
    };
    let mut deadline = tokio::time::Instant::now() + timeout;
    let mut read = upload.read();
    loop {
        match tokio::time::timeout_at(deadline, &mut call).await {
            Ok(out) => return Ok(out),
            Err(_) => match upload.ended() {
                Some(ended) if ended.elapsed() >= timeout => return Err(()),
                Some(ended) => deadline = tokio::time::Instant::from_std(ended + timeout),
                // Still uploading, and the upstream took more of it: the clock restarts.
                None if upload.read() != read => {
                    read = upload.read();
                    deadline = tokio::time::Instant::now() + timeout;
                }
                // Nothing of the upload taken for a whole timeout.
                None if !upload.stalled() => return Err(()),
                None => deadline = tokio::time::Instant::now() + timeout,
            },
        }
    }
}

/// Whether an upstream call failed because the client's own request body failed (the client
/// went away mid-upload or sent a malformed body), rather than because of the upstream.
fn client_body_failed(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = source {
        if err
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_user)
        {
            return true;
        }
        source = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; uid=; b=2"));
        h.append(
            header::COOKIE,
            HeaderValue::from_static("xuid=9;  uid = \"u-7\" ; c=3"),
        );
        assert_eq!(find_cookie(&h, "uid"), Some(&b"u-7"[..]));
        assert_eq!(find_cookie(&h, "a"), Some(&b"1"[..]));
        assert_eq!(find_cookie(&h, "c"), Some(&b"3"[..]));
        assert_eq!(find_cookie(&h, "d"), None);
        assert_eq!(find_cookie(&HeaderMap::new(), "uid"), None);
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic x"),
        );
        h.insert(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Basic"),
        );
        h.insert(header::TRAILER, HeaderValue::from_static("x-checksum"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn forwarded_values() {
        let mut s = String::new();
        push_forwarded_value(&mut s, "example.com");
        s.push(' ');
        push_forwarded_value(&mut s, "example.com:8080");
        s.push(' ');
        push_forwarded_value(&mut s, "a\"b");
        assert_eq!(s, r#"example.com "example.com:8080" "a\"b""#);
    }
}
