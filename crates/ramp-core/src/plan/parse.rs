//! TOML → [`Plan`], collecting every error with its line and column.

use super::criterion::{MetricKind, parse_raw};
use super::*;
use crate::cohort::{FORMULA_VERSION, ShareBp};
use crate::time::{DAY, HOUR, MINUTE, SECOND, parse_duration};
use std::fmt;
use std::ops::Range;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One problem in a plan file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub col: usize,
    /// What is wrong and what was expected.
    pub message: String,
    /// A suggestion, e.g. "did you mean `error_rate`?".
    pub help: Option<String>,
    /// The source line, for display.
    pub source_line: String,
}

/// Every problem found in a plan file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct PlanErrors {
    /// The file name used in messages.
    pub file: String,
    /// The problems, in file order.
    pub errors: Vec<PlanError>,
}

impl fmt::Display for PlanErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            writeln!(
                f,
                "{}:{}:{}: error: {}",
                self.file, e.line, e.col, e.message
            )?;
            let gutter = e.line.to_string().len();
            writeln!(f, "{:gutter$} |", "")?;
            writeln!(f, "{} | {}", e.line, e.source_line)?;
            let pad: String = e
                .source_line
                .chars()
                .take(e.col.saturating_sub(1))
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            write!(f, "{:gutter$} | {pad}^", "")?;
            if let Some(help) = &e.help {
                write!(f, "\n{:gutter$} = help: {help}", "")?;
            }
        }
        if self.errors.len() > 1 {
            write!(f, "\n\n{} errors in {}", self.errors.len(), self.file)?;
        }
        Ok(())
    }
}

struct Ctx<'a> {
    src: &'a str,
    errors: Vec<(usize, String, Option<String>)>,
}

impl Ctx<'_> {
    fn err(&mut self, at: usize, message: impl Into<String>, help: Option<String>) {
        self.errors.push((at, message.into(), help));
    }

    fn finish(self, file: &str) -> PlanErrors {
        let mut errors: Vec<PlanError> = self
            .errors
            .into_iter()
            .map(|(at, message, help)| {
                let (line, col, source_line) = position(self.src, at);
                PlanError {
                    line,
                    col,
                    message,
                    help,
                    source_line,
                }
            })
            .collect();
        errors.sort_by_key(|e| (e.line, e.col));
        errors.dedup();
        PlanErrors {
            file: file.to_string(),
            errors,
        }
    }
}

fn position(src: &str, at: usize) -> (usize, usize, String) {
    let at = at.min(src.len());
    let before = &src[..at];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = src[line_start..at].chars().count() + 1;
    let line_end = src[line_start..]
        .find('\n')
        .map(|i| line_start + i)
        .unwrap_or(src.len());
    let source_line = src[line_start..line_end].trim_end_matches('\r').to_string();
    (line, col, source_line)
}

/// A suggestion for a misspelt name, if one is close enough.
pub(crate) fn did_you_mean(word: &str, candidates: &[&str]) -> Option<String> {
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

mod notify;
use notify::build_notify;

type Table<'a> = DeTable<'a>;
type Val<'a> = Spanned<DeValue<'a>>;

/// Parses and validates a plan. `file` is used in error messages only.
pub fn parse_plan(src: &str, file: &str) -> Result<Plan, PlanErrors> {
    let mut cx = Ctx {
        src,
        errors: Vec::new(),
    };
    let root = match DeTable::parse(src) {
        Ok(t) => t,
        Err(e) => {
            let at = e.span().map(|s| s.start).unwrap_or(0);
            cx.err(at, format!("invalid TOML: {}", e.message().trim()), None);
            return Err(cx.finish(file));
        }
    };
    let root_span = root.span();
    let root = root.into_inner();
    let plan = build(&mut cx, &root, root_span);
    if cx.errors.is_empty() {
        Ok(plan.expect("a plan is built whenever there are no errors"))
    } else {
        Err(cx.finish(file))
    }
}

fn check_keys(cx: &mut Ctx, table: &Table, known: &[&str], what: &str) {
    for key in table.keys() {
        if !known.contains(&key.get_ref().as_ref()) {
            let help = did_you_mean(key.get_ref(), known)
                .or_else(|| Some(format!("{what} takes: {}", known.join(", "))));
            cx.err(
                key.span().start,
                format!("unknown key `{}` in {what}", key.get_ref()),
                help,
            );
        }
    }
}

fn get<'t, 'a>(table: &'t Table<'a>, key: &str) -> Option<&'t Val<'a>> {
    table.get(key)
}

fn string<'v>(cx: &mut Ctx, v: &'v Val, what: &str) -> Option<&'v str> {
    match v.get_ref() {
        DeValue::String(s) => Some(s.as_ref()),
        other => {
            cx.err(
                v.span().start,
                format!("{what} must be a string, found {}", other.type_str()),
                None,
            );
            None
        }
    }
}

fn boolean(cx: &mut Ctx, v: &Val, what: &str) -> Option<bool> {
    match v.get_ref() {
        DeValue::Boolean(b) => Some(*b),
        other => {
            cx.err(
                v.span().start,
                format!("{what} must be true or false, found {}", other.type_str()),
                None,
            );
            None
        }
    }
}

fn number(v: &Val) -> Option<f64> {
    match v.get_ref() {
        DeValue::Integer(i) => i64::from_str_radix(&i.as_str().replace('_', ""), i.radix())
            .ok()
            .map(|i| i as f64),
        DeValue::Float(f) => f.as_str().replace('_', "").parse().ok(),
        _ => None,
    }
}

fn table<'t, 'a>(cx: &mut Ctx, v: &'t Val<'a>, what: &str) -> Option<&'t Table<'a>> {
    match v.get_ref() {
        DeValue::Table(t) => Some(t),
        other => {
            cx.err(
                v.span().start,
                format!("{what} must be a table, found {}", other.type_str()),
                None,
            );
            None
        }
    }
}

fn duration(cx: &mut Ctx, v: &Val, what: &str) -> Option<Millis> {
    let s = string(cx, v, what)?;
    match parse_duration(s) {
        Ok(d) => Some(d),
        Err(e) => {
            cx.err(v.span().start + 1, format!("{what}: {e}"), None);
            None
        }
    }
}

/// A percentage written as `"5%"` or as a number of percent.
fn percent(cx: &mut Ctx, v: &Val, what: &str) -> Option<f64> {
    if let Some(n) = number(v) {
        return Some(n);
    }
    let s = string(cx, v, what)?;
    let t = s.trim();
    match t.strip_suffix('%').map(|n| n.trim().parse::<f64>()) {
        Some(Ok(n)) => Some(n),
        _ => {
            cx.err(
                v.span().start + 1,
                format!("{what} must be a percentage such as \"5%\", found {s:?}"),
                None,
            );
            None
        }
    }
}

const TOP_KEYS: &[&str] = &[
    "name",
    "description",
    "cohort",
    "upstreams",
    "proxy",
    "analysis",
    "baseline",
    "phase",
    "rollout",
    "rollback",
    "notify",
];

/// A rollout name: 1-64 of `[A-Za-z0-9._-]`, starting with a letter or digit (so never `.`,
/// `..` or a hidden file's name: it names the rollout in URLs, paths and log lines).
pub(crate) fn is_slug(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn build(cx: &mut Ctx, root: &Table, root_span: Range<usize>) -> Option<Plan> {
    check_keys(cx, root, TOP_KEYS, "the plan");
    let name = match get(root, "name") {
        Some(v) => string(cx, v, "name").and_then(|s| {
            if is_slug(s) {
                Some(s.to_string())
            } else {
                cx.err(
                    v.span().start + 1,
                    "name must be 1-64 characters of letters, digits, `-`, `_` or `.`, starting with a letter or digit",
                    Some(
                        "it names the rollout in URLs and files, e.g. \"payments-backend\"".into(),
                    ),
                );
                None
            }
        }),
        None => {
            cx.err(
                root_span.start,
                "the plan has no `name`",
                Some("add e.g. name = \"payments-backend\" at the top".into()),
            );
            None
        }
    };
    let description =
        get(root, "description").and_then(|v| string(cx, v, "description").map(String::from));
    let cohort = build_cohort(cx, get(root, "cohort"), name.as_deref().unwrap_or(""));
    let upstreams = get(root, "upstreams").and_then(|v| build_upstreams(cx, v));
    let proxy = match get(root, "proxy") {
        Some(v) => build_proxy(cx, v),
        None => Some(ProxyTable::default()),
    };
    let analysis = build_analysis(cx, get(root, "analysis"));
    let baseline = build_baseline(cx, get(root, "baseline"));
    let margin = analysis.as_ref().map(|a| a.stable_margin).unwrap_or(0.001);
    let phases = build_phases(cx, get(root, "phase"), root_span.start, &baseline, margin);
    let triggers = build_triggers(cx, get(root, "rollback"), &baseline);
    let rollout_criteria = build_rollout(cx, get(root, "rollout"), &baseline, margin);
    let notify = build_notify(cx, get(root, "notify"));

    if let (Some(a), Some(ps)) = (&analysis, &phases)
        && let Some(shortest) = ps.iter().map(|p| p.duration).min()
        && a.interval > shortest
        && let Some(v) = get(root, "analysis").and_then(|t| match t.get_ref() {
            DeValue::Table(t) => t.get("interval"),
            _ => None,
        })
    {
        cx.err(
            v.span().start + 1,
            "analysis.interval is longer than the shortest phase",
            None,
        );
    }
    Some(Plan {
        name: name?,
        description,
        cohort: cohort?,
        upstreams,
        listen: proxy.as_ref().and_then(|p| p.listen),
        listen_tls: proxy.as_ref().and_then(|p| p.tls.clone()),
        trusted_proxies: proxy
            .as_ref()
            .map(|p| p.trusted.clone())
            .unwrap_or_default(),
        proxy_protocol: proxy.as_ref().is_some_and(|p| p.proxy_protocol),
        analysis: analysis?,
        baseline: baseline?,
        phases: phases?,
        triggers: triggers?,
        rollout_criteria: rollout_criteria?,
        notify: notify?,
    })
    .map(|mut plan| {
        if let Some(rps) = plan.analysis.expected_rps {
            plan.analysis.trigger_horizon = plan.planned_canary_requests(rps).max(1_000);
        }
        plan
    })
}

fn build_cohort(cx: &mut Ctx, v: Option<&Val>, plan_name: &str) -> Option<Cohort> {
    let mut cohort = Cohort {
        key: CohortKey::Header("x-user-id".into()),
        salt: plan_name.to_string(),
        formula: FORMULA_VERSION,
        unkeyed: UnkeyedRoute::Stable,
    };
    let Some(v) = v else { return Some(cohort) };
    let t = table(cx, v, "cohort")?;
    check_keys(cx, t, &["key", "salt", "formula", "unkeyed"], "[cohort]");
    let mut ok = true;
    if let Some(k) = get(t, "key")
        && let Some(s) = string(cx, k, "cohort.key")
    {
        let parsed = if let Some(h) = s.strip_prefix("header:") {
            (!h.trim().is_empty()).then(|| CohortKey::Header(h.trim().to_ascii_lowercase()))
        } else if let Some(c) = s.strip_prefix("cookie:") {
            (!c.trim().is_empty()).then(|| CohortKey::Cookie(c.trim().to_string()))
        } else if s == "client_ip" || s == "client-ip" {
            Some(CohortKey::ClientIp)
        } else {
            None
        };
        match parsed {
            Some(CohortKey::Header(h)) if !is_token(&h) => {
                ok = false;
                cx.err(
                    k.span().start + 1,
                    format!("cohort.key: {h:?} is not a valid HTTP header name"),
                    Some("header names are letters, digits and !#$%&'*+-.^_`|~, e.g. \"header:x-user-id\"".into()),
                );
            }
            Some(CohortKey::Cookie(c)) if !is_cookie_name(&c) => {
                ok = false;
                cx.err(
                    k.span().start + 1,
                    format!("cohort.key: {c:?} is not a valid cookie name"),
                    Some(
                        "cookie names are visible ASCII without ()<>@,;:\\\"/[]?={} or spaces"
                            .into(),
                    ),
                );
            }
            Some(key) => cohort.key = key,
            None => {
                ok = false;
                cx.err(
                    k.span().start + 1,
                    format!("cohort.key {s:?} is not a key source"),
                    Some("use \"header:x-user-id\", \"cookie:NAME\" or \"client_ip\"".into()),
                );
            }
        }
    }
    if let Some(s) = get(t, "salt") {
        match string(cx, s, "cohort.salt") {
            Some(salt) if !salt.is_empty() => cohort.salt = salt.to_string(),
            Some(_) => {
                ok = false;
                cx.err(s.span().start, "cohort.salt must not be empty", None);
            }
            None => ok = false,
        }
    }
    if let Some(f) = get(t, "formula") {
        match number(f) {
            Some(n) if n == FORMULA_VERSION as f64 => {}
            _ => {
                ok = false;
                cx.err(
                    f.span().start,
                    format!("cohort.formula must be {FORMULA_VERSION} (the only bucketing formula this ramp knows)"),
                    None,
                );
            }
        }
    }
    if let Some(u) = get(t, "unkeyed") {
        match string(cx, u, "cohort.unkeyed") {
            Some("stable") => cohort.unkeyed = UnkeyedRoute::Stable,
            Some("client_ip") | Some("client-ip") => cohort.unkeyed = UnkeyedRoute::ClientIp,
            Some(other) => {
                ok = false;
                cx.err(
                    u.span().start + 1,
                    format!("cohort.unkeyed {other:?} is not a route"),
                    Some("use \"stable\" (default) or \"client_ip\"".into()),
                );
            }
            None => ok = false,
        }
    }
    ok.then_some(cohort)
}

fn build_upstreams(cx: &mut Ctx, v: &Val) -> Option<Upstreams> {
    let t = table(cx, v, "upstreams")?;
    check_keys(
        cx,
        t,
        &["stable", "canary", "health_path", "health_interval", "tls"],
        "[upstreams]",
    );
    let mut one = |key: &str| -> Option<String> {
        let Some(u) = get(t, key) else {
            cx.err(v.span().start, format!("[upstreams] needs `{key}`"), None);
            return None;
        };
        let s = string(cx, u, &format!("upstreams.{key}"))?;
        match check_upstream_url(s) {
            Ok(()) => Some(s.trim_end_matches('/').to_string()),
            Err(why) => {
                cx.err(
                    u.span().start + 1,
                    format!("upstreams.{key} must be an http:// or https:// URL (http[s]://host[:port][/prefix]), found {s:?}: {why}"),
                    Some("e.g. \"http://127.0.0.1:8081\"".into()),
                );
                None
            }
        }
    };
    let stable = one("stable");
    let canary = one("canary");
    let mut ok = true;
    let health_path = match get(t, "health_path") {
        Some(h) => match string(cx, h, "upstreams.health_path") {
            Some(p) if p.starts_with('/') && !p.contains(char::is_whitespace) => {
                Some(p.to_string())
            }
            Some(p) => {
                ok = false;
                cx.err(
                    h.span().start + 1,
                    format!("upstreams.health_path must be a path starting with `/`, found {p:?}"),
                    None,
                );
                None
            }
            None => {
                ok = false;
                None
            }
        },
        None => None,
    };
    let health_interval = match get(t, "health_interval") {
        Some(h) => match duration(cx, h, "upstreams.health_interval") {
            Some(d) if (100..=HOUR).contains(&d) => d,
            Some(_) => {
                ok = false;
                cx.err(
                    h.span().start + 1,
                    "upstreams.health_interval must be between 100ms and 1h",
                    None,
                );
                0
            }
            None => {
                ok = false;
                0
            }
        },
        None => 5 * SECOND,
    };
    let (stable_tls, canary_tls) = match get(t, "tls") {
        Some(v) => build_upstream_tls(cx, v, stable.as_deref(), canary.as_deref())?,
        None => Default::default(),
    };
    if !ok {
        return None;
    }
    Some(Upstreams {
        stable: stable?,
        canary: canary?,
        health_path,
        health_interval,
        stable_tls,
        canary_tls,
    })
}

const UPSTREAM_TLS_KEYS: [&str; 4] = ["ca_file", "client_cert", "client_key", "server_name"];

/// Reads the four `[upstreams.tls]` keys of one table into `into` (a key set there wins).
fn upstream_tls_keys(cx: &mut Ctx, t: &Table, what: &str, into: &mut UpstreamTls) -> bool {
    let mut ok = true;
    for key in UPSTREAM_TLS_KEYS {
        let Some(v) = get(t, key) else { continue };
        let Some(s) = string(cx, v, &format!("{what}.{key}")) else {
            ok = false;
            continue;
        };
        if s.trim().is_empty() {
            cx.err(v.span().start + 1, format!("{what}.{key} is empty"), None);
            ok = false;
            continue;
        }
        if key == "server_name" && !is_server_name(s) {
            cx.err(
                v.span().start + 1,
                format!("{what}.server_name {s:?} is not a DNS name or an IP address"),
                None,
            );
            ok = false;
            continue;
        }
        let slot = match key {
            "ca_file" => &mut into.ca_file,
            "client_cert" => &mut into.client_cert,
            "client_key" => &mut into.client_key,
            _ => &mut into.server_name,
        };
        *slot = Some(s.to_string());
    }
    ok
}

/// Whether `s` can name a TLS server: an IP address, or a DNS name of letters, digits, `-`
/// and `.` in labels of 1-63 characters (what rustls accepts as a server name).
fn is_server_name(s: &str) -> bool {
    let s = s.trim_start_matches('[').trim_end_matches(']');
    s.parse::<std::net::IpAddr>().is_ok()
        || (s.len() <= 253
            && s.trim_end_matches('.').split('.').all(|label| {
                (1..=63).contains(&label.len())
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            }))
}

/// `[upstreams.tls]` (for both) with `[upstreams.tls.stable]` / `[upstreams.tls.canary]`
/// overriding it key by key.
fn build_upstream_tls(
    cx: &mut Ctx,
    v: &Val,
    stable: Option<&str>,
    canary: Option<&str>,
) -> Option<(UpstreamTls, UpstreamTls)> {
    let t = table(cx, v, "upstreams.tls")?;
    let mut known = UPSTREAM_TLS_KEYS.to_vec();
    known.extend(["stable", "canary"]);
    check_keys(cx, t, &known, "[upstreams.tls]");
    let mut common = UpstreamTls::default();
    let mut ok = upstream_tls_keys(cx, t, "upstreams.tls", &mut common);
    let mut out = [common.clone(), common];
    for (i, (which, url)) in [("stable", stable), ("canary", canary)]
        .into_iter()
        .enumerate()
    {
        if let Some(sub) = get(t, which) {
            let what = format!("upstreams.tls.{which}");
            match table(cx, sub, &what) {
                Some(st) => {
                    check_keys(cx, st, &UPSTREAM_TLS_KEYS, &format!("[{what}]"));
                    ok &= upstream_tls_keys(cx, st, &what, &mut out[i]);
                }
                None => ok = false,
            }
        }
        let tls = &out[i];
        if tls.client_cert.is_some() != tls.client_key.is_some() {
            cx.err(
                v.span().start,
                format!("the {which} upstream's TLS has only one of client_cert and client_key: set both or neither"),
                None,
            );
            ok = false;
        }
        if !tls.is_unset() && url.is_some_and(|u| u.starts_with("http://")) {
            cx.err(
                v.span().start,
                format!("[upstreams.tls] applies to the {which} upstream, which is http://: use https:// or drop the TLS settings"),
                None,
            );
            ok = false;
        }
    }
    let [s, c] = out;
    ok.then_some((s, c))
}

/// Whether `s` is an HTTP token (RFC 9110 5.6.2): what a header name may be.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether `s` can name a cookie (RFC 6265 4.1.1: a token).
fn is_cookie_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

/// Checks the shape the proxy can forward to: `http://host[:port][/prefix]`, with a host, a
/// port in range, no user info, query or fragment, and a path of visible ASCII.
pub(crate) fn check_upstream_url(s: &str) -> Result<(), String> {
    let Some(rest) = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
    else {
        return Err(match s.split_once("://") {
            Some((scheme, _)) => format!("scheme {scheme:?} is not supported"),
            None => "no http:// or https:// scheme".into(),
        });
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err("user info is not supported".into());
    }
    if path.contains('?') || path.contains('#') || authority.contains('?') {
        return Err("a query or fragment is not allowed".into());
    }
    if !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the path must be visible ASCII without spaces".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some(end) = v6.find(']') else {
            return Err("an IPv6 host needs its closing `]`".into());
        };
        if v6[..end].parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{:?} is not an IPv6 address", &v6[..end]));
        }
        let after = &v6[end + 1..];
        match after.strip_prefix(':') {
            Some(p) => ("v6", Some(p)),
            None if after.is_empty() => ("v6", None),
            None => return Err("unexpected text after the IPv6 host".into()),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    if host != "v6"
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return Err(format!("{host:?} is not a host name or address"));
    }
    if let Some(p) = port
        && !matches!(p.parse::<u16>(), Ok(1..))
    {
        return Err(format!("port {p:?} is not a number from 1 to 65535"));
    }
    Ok(())
}

/// `[proxy] listen = "127.0.0.1:8080"`. `Some(None)` when the table has no `listen`.
/// `[proxy]`: where it listens, its TLS, whom it believes, and the PROXY protocol.
#[derive(Default)]
struct ProxyTable {
    listen: Option<std::net::SocketAddr>,
    tls: Option<ListenerTls>,
    trusted: Vec<String>,
    proxy_protocol: bool,
}

fn build_proxy(cx: &mut Ctx, v: &Val) -> Option<ProxyTable> {
    let t = table(cx, v, "proxy")?;
    check_keys(
        cx,
        t,
        &["listen", "tls", "trusted_proxies", "proxy_protocol"],
        "[proxy]",
    );
    let mut out = ProxyTable::default();
    let mut ok = true;
    if let Some(tv) = get(t, "tls") {
        out.tls = build_listener_tls(cx, tv);
        ok &= out.tls.is_some();
    }
    if let Some(tp) = get(t, "trusted_proxies") {
        match tp.get_ref() {
            DeValue::Array(items) => {
                for item in items {
                    let Some(s) = string(cx, item, "proxy.trusted_proxies[]") else {
                        ok = false;
                        continue;
                    };
                    match s.parse::<crate::net::Cidr>() {
                        Ok(c) => out.trusted.push(c.to_string()),
                        Err(e) => {
                            cx.err(
                                item.span().start + 1,
                                format!("proxy.trusted_proxies: {e}"),
                                Some("an address or address/prefix, e.g. \"10.0.0.0/8\"".into()),
                            );
                            ok = false;
                        }
                    }
                }
            }
            other => {
                cx.err(
                    tp.span().start,
                    format!(
                        "proxy.trusted_proxies must be a list of networks, found {}",
                        other.type_str()
                    ),
                    None,
                );
                ok = false;
            }
        }
    }
    if let Some(pp) = get(t, "proxy_protocol") {
        match boolean(cx, pp, "proxy.proxy_protocol") {
            Some(true) if out.trusted.is_empty() && ok => {
                ok = false;
                cx.err(
                    pp.span().start,
                    "proxy.proxy_protocol needs proxy.trusted_proxies: a PROXY header says who the client is, so only the load balancers may send one",
                    Some("e.g. trusted_proxies = [\"10.0.0.0/8\"]".into()),
                );
            }
            Some(b) => out.proxy_protocol = b,
            None => ok = false,
        }
    }
    if let Some(l) = get(t, "listen") {
        let s = string(cx, l, "proxy.listen")?;
        match s.parse::<std::net::SocketAddr>() {
            Ok(a) => out.listen = Some(a),
            Err(_) => {
                cx.err(
                    l.span().start + 1,
                    format!("proxy.listen must be an address with a port, found {s:?}"),
                    Some("e.g. \"127.0.0.1:8080\"".into()),
                );
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

/// `[proxy.tls] cert = "…", key = "…", client_ca = "…", client_cert_required = true`.
fn build_listener_tls(cx: &mut Ctx, v: &Val) -> Option<ListenerTls> {
    let t = table(cx, v, "proxy.tls")?;
    check_keys(
        cx,
        t,
        &["cert", "key", "client_ca", "client_cert_required"],
        "[proxy.tls]",
    );
    let mut file = |key: &str, required: bool| -> Result<Option<String>, ()> {
        match get(t, key) {
            Some(f) => match string(cx, f, &format!("proxy.tls.{key}")) {
                Some(s) if !s.trim().is_empty() => Ok(Some(s.to_string())),
                Some(_) => {
                    cx.err(
                        f.span().start + 1,
                        format!("proxy.tls.{key} is empty"),
                        None,
                    );
                    Err(())
                }
                None => Err(()),
            },
            None if required => {
                cx.err(
                    v.span().start,
                    format!("[proxy.tls] needs `{key}` (a PEM file)"),
                    None,
                );
                Err(())
            }
            None => Ok(None),
        }
    };
    let cert = file("cert", true);
    let key = file("key", true);
    let client_ca = file("client_ca", false);
    let required = match get(t, "client_cert_required") {
        Some(b) => {
            let r = boolean(cx, b, "proxy.tls.client_cert_required");
            if r.is_some() && get(t, "client_ca").is_none() {
                cx.err(
                    b.span().start,
                    "proxy.tls.client_cert_required needs proxy.tls.client_ca: the CA client certificates must chain to",
                    None,
                );
                None
            } else {
                r
            }
        }
        None => Some(true),
    };
    Some(ListenerTls {
        cert: cert.ok()??,
        key: key.ok()??,
        client_ca: client_ca.ok()?,
        client_cert_required: required?,
    })
}

fn build_analysis(cx: &mut Ctx, v: Option<&Val>) -> Option<Analysis> {
    let mut a = Analysis {
        confidence: 0.95,
        interval: MINUTE,
        trigger_horizon: 10_000_000,
        stable_margin: 0.001,
        expected_rps: None,
        latency: LatencyTo::FirstByte,
    };
    let Some(v) = v else { return Some(a) };
    let t = table(cx, v, "analysis")?;
    check_keys(
        cx,
        t,
        &[
            "confidence",
            "interval",
            "trigger_horizon",
            "stable_margin",
            "expected_rps",
            "latency",
        ],
        "[analysis]",
    );
    let mut ok = true;
    if let Some(l) = get(t, "latency") {
        match string(cx, l, "analysis.latency") {
            Some("first_byte") => a.latency = LatencyTo::FirstByte,
            Some("last_byte") => a.latency = LatencyTo::LastByte,
            Some(other) => {
                ok = false;
                cx.err(
                    l.span().start + 1,
                    format!("analysis.latency must be \"first_byte\" or \"last_byte\", found {other:?}"),
                    Some("first_byte: to the response head (the default); last_byte: to the end of its body".into()),
                );
            }
            None => ok = false,
        }
    }
    if let Some(c) = get(t, "confidence") {
        let value = number(c).or_else(|| {
            // Allow "95%".
            match c.get_ref() {
                DeValue::String(s) => s
                    .trim()
                    .strip_suffix('%')
                    .and_then(|n| n.trim().parse::<f64>().ok())
                    .map(|p| p / 100.0),
                _ => None,
            }
        });
        match value {
            Some(x) if (0.5..=0.9999).contains(&x) => a.confidence = x,
            _ => {
                ok = false;
                cx.err(
                    c.span().start,
                    "analysis.confidence must be between 0.5 and 0.9999 (e.g. 0.95 or \"95%\")",
                    None,
                );
            }
        }
    }
    if let Some(i) = get(t, "interval") {
        match duration(cx, i, "analysis.interval") {
            Some(d) if (SECOND..=HOUR).contains(&d) => a.interval = d,
            Some(_) => {
                ok = false;
                cx.err(
                    i.span().start + 1,
                    "analysis.interval must be between 1s and 1h",
                    None,
                );
            }
            None => ok = false,
        }
    }
    if let Some(h) = get(t, "trigger_horizon") {
        match number(h) {
            Some(n) if (1_000.0..=1e12).contains(&n) && n.fract() == 0.0 => {
                a.trigger_horizon = n as u64
            }
            _ => {
                ok = false;
                cx.err(
                    h.span().start,
                    "analysis.trigger_horizon must be a whole number of requests between 1000 and 10^12",
                    None,
                );
            }
        }
    }
    if let (Some(r), Some(_)) = (get(t, "expected_rps"), get(t, "trigger_horizon")) {
        ok = false;
        cx.err(
            r.span().start,
            "give analysis.expected_rps or analysis.trigger_horizon, not both: the horizon is derived from the expected traffic",
            None,
        );
    } else if let Some(r) = get(t, "expected_rps") {
        match number(r) {
            Some(x) if x > 0.0 && x <= 1e9 => a.expected_rps = Some(x),
            _ => {
                ok = false;
                cx.err(
                    r.span().start,
                    "analysis.expected_rps must be a positive number of requests per second",
                    None,
                );
            }
        }
    }
    if let Some(m) = get(t, "stable_margin") {
        match percent(cx, m, "analysis.stable_margin") {
            Some(p) if (0.0..100.0).contains(&p) => a.stable_margin = p / 100.0,
            Some(_) => {
                ok = false;
                cx.err(
                    m.span().start,
                    "analysis.stable_margin must be a percentage in [0%, 100%)",
                    None,
                );
            }
            None => ok = false,
        }
    }
    ok.then_some(a)
}

/// Baseline keys: the metrics that have a meaningful reference value (rates and latencies).
fn baseline_keys() -> Vec<&'static str> {
    METRIC_NAMES
        .iter()
        .copied()
        .filter(|n| {
            matches!(
                Metric::parse(n).map(Metric::kind),
                Some(MetricKind::Rate | MetricKind::Latency)
            )
        })
        .collect()
}

fn build_baseline(cx: &mut Ctx, v: Option<&Val>) -> Option<Baseline> {
    let mut b = Baseline::default();
    let Some(v) = v else { return Some(b) };
    let t = table(cx, v, "baseline")?;
    check_keys(cx, t, &baseline_keys(), "[baseline]");
    let mut ok = true;
    for (key, val) in t.iter() {
        let Some(metric) = Metric::parse(key.get_ref()) else {
            continue;
        };
        let value = match metric.kind() {
            MetricKind::Rate => rate_value(cx, val, &format!("baseline.{}", key.get_ref())),
            MetricKind::Latency => latency_value(cx, val, &format!("baseline.{}", key.get_ref())),
            _ => None,
        };
        match value {
            Some(x) => {
                b.values.insert(metric.name(), x);
            }
            None => ok = false,
        }
    }
    ok.then_some(b)
}

/// A rate as `"0.1%"` or as a fraction in [0, 1] (`0.001`, as the seed's METRICS_BASELINE).
fn rate_value(cx: &mut Ctx, v: &Val, what: &str) -> Option<f64> {
    if let Some(n) = number(v) {
        if (0.0..=1.0).contains(&n) {
            return Some(n);
        }
        cx.err(
            v.span().start,
            format!("{what} must be a fraction in [0, 1] or a percentage string such as \"0.1%\""),
            None,
        );
        return None;
    }
    let p = percent(cx, v, what)?;
    if (0.0..=100.0).contains(&p) {
        Some(p / 100.0)
    } else {
        cx.err(
            v.span().start,
            format!("{what} must lie in [0%, 100%]"),
            None,
        );
        None
    }
}

/// A latency as `"200ms"`, `"0.2s"` or a number of milliseconds.
fn latency_value(cx: &mut Ctx, v: &Val, what: &str) -> Option<f64> {
    let ms = if let Some(n) = number(v) {
        n
    } else {
        let s = string(cx, v, what)?;
        match parse_duration(s) {
            Ok(d) => d as f64,
            Err(_) => {
                cx.err(
                    v.span().start + 1,
                    format!("{what} must be a latency such as \"200ms\", found {s:?}"),
                    None,
                );
                return None;
            }
        }
    };
    if ms > 0.0 && ms.is_finite() {
        Some(ms)
    } else {
        cx.err(v.span().start, format!("{what} must be above 0ms"), None);
        None
    }
}

const PHASE_KEYS: &[&str] = &[
    "name",
    "traffic",
    "duration",
    "approval",
    "success",
    "max_extension",
    "on_inconclusive",
    "on_failure",
    "description",
];

fn build_phases(
    cx: &mut Ctx,
    v: Option<&Val>,
    root_at: usize,
    baseline: &Option<Baseline>,
    margin: f64,
) -> Option<Vec<Phase>> {
    let Some(v) = v else {
        cx.err(
            root_at,
            "the plan has no phases",
            Some("add [[phase]] tables, e.g. name = \"canary\", traffic = \"5%\", duration = \"24h\"".into()),
        );
        return None;
    };
    let DeValue::Array(items) = v.get_ref() else {
        cx.err(
            v.span().start,
            "`phase` must be an array of tables: write each as [[phase]]",
            None,
        );
        return None;
    };
    if items.is_empty() {
        cx.err(v.span().start, "the plan has no phases", None);
        return None;
    }
    let mut phases = Vec::new();
    let mut ok = true;
    let mut prev_share: Option<(ShareBp, String)> = None;
    let mut names: Vec<String> = Vec::new();
    for item in items.iter() {
        let Some(t) = table(cx, item, "each phase") else {
            ok = false;
            continue;
        };
        let at = item.span().start;
        check_keys(cx, t, PHASE_KEYS, "[[phase]]");
        let name = match get(t, "name") {
            Some(n) => string(cx, n, "phase.name").map(String::from).and_then(|s| {
                if s.is_empty() {
                    cx.err(n.span().start, "phase.name must not be empty", None);
                    None
                } else if s.chars().any(char::is_control) {
                    cx.err(
                        n.span().start + 1,
                        "phase.name must not contain control characters",
                        None,
                    );
                    None
                } else if names.contains(&s) {
                    cx.err(
                        n.span().start + 1,
                        format!("two phases are named {s:?}"),
                        None,
                    );
                    None
                } else {
                    Some(s)
                }
            }),
            None => {
                cx.err(at, "this phase has no `name`", None);
                None
            }
        };
        if let Some(n) = &name {
            names.push(n.clone());
        }
        let share = match get(t, "traffic") {
            Some(tv) => percent(cx, tv, "phase.traffic").and_then(|p| {
                let share = if p > 0.0 { ShareBp::from_percent(p) } else { None };
                match share {
                    Some(s) if s.bp() > 0 => {
                        if let Some((prev, prev_name)) = &prev_share
                            && s <= *prev {
                                cx.err(
                                    tv.span().start + 1,
                                    format!(
                                        "traffic must rise from phase to phase: {} is not above {prev} in phase {prev_name:?}",
                                        s
                                    ),
                                    None,
                                );
                                return None;
                            }
                        Some(s)
                    }
                    _ => {
                        cx.err(
                            tv.span().start + 1,
                            format!("phase.traffic must lie in (0%, 100%], found {p}%"),
                            Some("the smallest share is 0.01% (one bucket in 10,000)".into()),
                        );
                        None
                    }
                }
            }),
            None => {
                cx.err(at, "this phase has no `traffic` share", Some("e.g. traffic = \"5%\"".into()));
                None
            }
        };
        if let (Some(s), Some(n)) = (share, &name) {
            prev_share = Some((s, n.clone()));
        }
        let dur = match get(t, "duration") {
            Some(d) => duration(cx, d, "phase.duration").and_then(|ms| {
                if (SECOND..=365 * DAY).contains(&ms) {
                    Some(ms)
                } else {
                    cx.err(
                        d.span().start + 1,
                        "phase.duration must be between 1s and 365d",
                        None,
                    );
                    None
                }
            }),
            None => {
                cx.err(
                    at,
                    "this phase has no `duration`",
                    Some("e.g. duration = \"24h\"".into()),
                );
                None
            }
        };
        let approval = get(t, "approval").map(|a| boolean(cx, a, "phase.approval"));
        let max_extension = match get(t, "max_extension") {
            Some(m) => duration(cx, m, "phase.max_extension"),
            None => dur.map(|d| d / 2),
        };
        let on_inconclusive = stop_action(
            cx,
            get(t, "on_inconclusive"),
            "phase.on_inconclusive",
            StopAction::Hold,
        );
        let on_failure = stop_action(
            cx,
            get(t, "on_failure"),
            "phase.on_failure",
            StopAction::Rollback,
        );
        let full = share == Some(ShareBp::FULL);
        let criteria = match get(t, "success") {
            Some(s) => criteria_list(cx, s, Context::Gate { full }, baseline, margin),
            None => Some(Vec::new()),
        };
        if let Some(d) = get(t, "description") {
            string(cx, d, "phase.description");
        }
        match (
            name,
            share,
            dur,
            approval.unwrap_or(Some(false)),
            criteria,
            max_extension,
            on_inconclusive,
            on_failure,
        ) {
            (
                Some(name),
                Some(share),
                Some(duration),
                Some(approval),
                Some(criteria),
                Some(max_extension),
                Some(on_inconclusive),
                Some(on_failure),
            ) => phases.push(Phase {
                name,
                share,
                duration,
                approval,
                criteria,
                max_extension,
                on_inconclusive,
                on_failure,
            }),
            _ => ok = false,
        }
    }
    ok.then_some(phases)
}

fn stop_action(
    cx: &mut Ctx,
    v: Option<&Val>,
    what: &str,
    default: StopAction,
) -> Option<StopAction> {
    let Some(v) = v else { return Some(default) };
    match string(cx, v, what)? {
        "hold" => Some(StopAction::Hold),
        "rollback" => Some(StopAction::Rollback),
        other => {
            cx.err(
                v.span().start + 1,
                format!("{what} must be \"hold\" or \"rollback\", found {other:?}"),
                did_you_mean(other, &["hold", "rollback"]),
            );
            None
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Context {
    Gate { full: bool },
    Trigger,
}

fn criteria_list(
    cx: &mut Ctx,
    v: &Val,
    context: Context,
    baseline: &Option<Baseline>,
    margin: f64,
) -> Option<Vec<Criterion>> {
    let DeValue::Array(items) = v.get_ref() else {
        cx.err(
            v.span().start,
            "criteria must be a list of strings, e.g. [\"error_rate < 0.1%\", \"pci_alerts == 0\"]",
            None,
        );
        return None;
    };
    let mut out = Vec::new();
    let mut ok = true;
    for item in items.iter() {
        let Some(text) = string(cx, item, "a criterion") else {
            ok = false;
            continue;
        };
        // Column of the text inside the quotes (exact for strings without escapes).
        let base = item.span().start + 1;
        match criterion(text, context, baseline, margin) {
            Ok(c) => out.push(c),
            Err((offset, message, help)) => {
                ok = false;
                cx.err(base + offset, message, help);
            }
        }
    }
    ok.then_some(out)
}

type CritErr = (usize, String, Option<String>);

/// Validates one criterion in its context.
fn criterion(
    text: &str,
    context: Context,
    baseline: &Option<Baseline>,
    default_margin: f64,
) -> Result<Criterion, CritErr> {
    let raw = parse_raw(text).map_err(|e| (e.offset, e.message, None))?;
    let (name, name_at) = &raw.metric;
    let metric = Metric::parse(name).ok_or_else(|| {
        let base = name.split('[').next().unwrap_or(name);
        let help = if base == "security_alerts" {
            Some(
                "severities are low, medium, high and critical, e.g. security_alerts[critical]"
                    .into(),
            )
        } else {
            did_you_mean(name, METRIC_NAMES)
                .or_else(|| Some(format!("metrics are: {}", METRIC_NAMES.join(", "))))
        };
        (*name_at, format!("unknown metric `{name}`"), help)
    })?;
    let kind = metric.kind();
    let Some(op) = raw.op else {
        // not worse than stable
        let Context::Gate { full } = context else {
            return Err((
                *name_at,
                "`not worse than stable` is a success criterion, not a rollback trigger".into(),
                Some("triggers compare with a fixed threshold, e.g. \"error_rate > 1%\"".into()),
            ));
        };
        if !matches!(
            metric,
            Metric::ErrorRate
                | Metric::SuccessRate
                | Metric::RateLimitRate
                | Metric::AuthFailureRate
                | Metric::Latency(_)
        ) {
            return Err((
                *name_at,
                format!(
                    "`not worse than stable` works for error_rate, success_rate, rate_limit_rate, auth_failure_rate and the latency quantiles, not {name}"
                ),
                None,
            ));
        }
        if full {
            return Err((
                *name_at,
                "`not worse than stable` cannot be judged in a phase that sends 100% of users to the canary: no stable traffic is left to compare with".into(),
                Some("move it to an earlier phase, or compare with a threshold or the baseline".into()),
            ));
        }
        if kind == MetricKind::Latency {
            let (relative, absolute_ms) = match raw.value {
                None => (crate::plan::criterion::DEFAULT_LATENCY_MARGIN, 0.0),
                Some((
                    RawValue::Number {
                        value,
                        unit: Unit::Percent,
                    },
                    at,
                )) => {
                    if !(0.0..=1000.0).contains(&value) {
                        return Err((at, "the margin must lie in [0%, 1000%]".into(), None));
                    }
                    (value / 100.0, 0.0)
                }
                Some((
                    RawValue::Number {
                        value,
                        unit: unit @ (Unit::Millis | Unit::Seconds),
                    },
                    at,
                )) => {
                    let ms = if unit == Unit::Seconds {
                        value * 1000.0
                    } else {
                        value
                    };
                    if !(0.0..=3_600_000.0).contains(&ms) {
                        return Err((at, "the margin must lie in [0ms, 1h]".into(), None));
                    }
                    (0.0, ms)
                }
                Some((_, at)) => {
                    return Err((
                        at,
                        "a latency margin is relative or a duration, e.g. `by 10%` or `by 20ms`"
                            .into(),
                        None,
                    ));
                }
            };
            return Ok(Criterion {
                text: text.trim().to_string(),
                metric,
                test: Test::LatencyNotWorseThanStable {
                    relative,
                    absolute_ms,
                },
            });
        }
        let margin = match raw.value {
            None => default_margin,
            Some((
                RawValue::Number {
                    value,
                    unit: Unit::Percent,
                },
                at,
            )) => {
                if !(0.0..100.0).contains(&value) {
                    return Err((at, "the margin must lie in [0%, 100%)".into(), None));
                }
                value / 100.0
            }
            Some((_, at)) => {
                return Err((
                    at,
                    "the margin is a percentage, e.g. `by 0.05%`".into(),
                    None,
                ));
            }
        };
        return Ok(Criterion {
            text: text.trim().to_string(),
            metric,
            test: Test::NotWorseThanStable { margin },
        });
    };
    let (value, value_at) = raw.value.expect("a comparison always has a value");
    let op_at = name_at + name.len();
    // Which comparisons make sense for this metric here.
    let allowed: &[Op] = match (context, kind) {
        (Context::Gate { .. }, MetricKind::Rate) => &[Op::Lt, Op::Le, Op::Gt, Op::Ge],
        (Context::Gate { .. }, MetricKind::Latency) => &[Op::Lt, Op::Le],
        (Context::Gate { .. }, MetricKind::Count) => &[Op::Eq, Op::Lt, Op::Le],
        (Context::Gate { .. }, MetricKind::Users) => &[Op::Gt, Op::Ge],
        (Context::Trigger, MetricKind::Rate) if metric.higher_is_better() => &[Op::Lt, Op::Le],
        (Context::Trigger, MetricKind::Rate) => &[Op::Gt, Op::Ge],
        (Context::Trigger, MetricKind::Latency) => &[Op::Gt, Op::Ge],
        (Context::Trigger, MetricKind::Count) => &[Op::Gt, Op::Ge],
        (Context::Trigger, MetricKind::Users) => &[],
    };
    if !allowed.contains(&op) {
        let why = match context {
            Context::Trigger if allowed.is_empty() => {
                format!("{name} cannot be a rollback trigger")
            }
            Context::Trigger => format!(
                "a rollback trigger fires on bad news: {name} triggers use {}",
                allowed
                    .iter()
                    .map(|o| o.symbol())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
            Context::Gate { .. } => format!(
                "a success criterion on {name} uses {}",
                allowed
                    .iter()
                    .map(|o| o.symbol())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let help = match (context, kind) {
            (Context::Gate { .. }, MetricKind::Count) => Some(format!(
                "write e.g. \"{name} == 0\"; to roll back on {name}, add a trigger under [rollback]"
            )),
            _ => None,
        };
        return Err((op_at, why, help));
    }
    let (threshold, from_baseline) = match value {
        RawValue::Baseline => {
            if !matches!(kind, MetricKind::Rate | MetricKind::Latency) {
                return Err((value_at, format!("{name} has no baseline"), None));
            }
            match baseline.as_ref().and_then(|b| b.get(metric)) {
                Some(x) => (x, true),
                None if baseline.is_none() => {
                    return Err((
                        value_at,
                        "`baseline` refers to the [baseline] table, which has errors".into(),
                        None,
                    ));
                }
                None => {
                    return Err((
                        value_at,
                        format!("`baseline` needs {name} in the [baseline] table"),
                        Some(format!(
                            "add e.g. {name} = {} under [baseline]",
                            if kind == MetricKind::Rate {
                                "\"0.1%\""
                            } else {
                                "\"200ms\""
                            }
                        )),
                    ));
                }
            }
        }
        RawValue::Number { value, unit } => {
            let t = match (kind, unit) {
                (MetricKind::Rate, Unit::Percent) => value / 100.0,
                (MetricKind::Rate, Unit::None) if value == 0.0 => 0.0,
                (MetricKind::Rate, _) => {
                    return Err((
                        value_at,
                        format!(
                            "{name} is a rate: write it as a percentage, e.g. `{}%`",
                            value
                        ),
                        None,
                    ));
                }
                (MetricKind::Latency, Unit::Millis) => value,
                (MetricKind::Latency, Unit::Seconds) => value * 1000.0,
                (MetricKind::Latency, _) => {
                    return Err((
                        value_at,
                        format!("{name} needs a unit: `{value}ms` or `{value}s`"),
                        None,
                    ));
                }
                (MetricKind::Count | MetricKind::Users, Unit::None) => {
                    if value.fract() != 0.0 {
                        return Err((
                            value_at,
                            format!("{name} is a count: use a whole number"),
                            None,
                        ));
                    }
                    value
                }
                (MetricKind::Count | MetricKind::Users, _) => {
                    return Err((
                        value_at,
                        format!("{name} is a count: write a plain number without a unit"),
                        None,
                    ));
                }
            };
            (t, false)
        }
    };
    match kind {
        MetricKind::Rate => {
            if !(threshold > 0.0 && threshold < 1.0) {
                return Err((
                    value_at,
                    format!("{name} threshold must lie strictly between 0% and 100%"),
                    Some("a rate of exactly 0% or 100% can never be proven with a finite sample; use e.g. 0.01%".into()),
                ));
            }
        }
        MetricKind::Latency => {
            if threshold <= 0.0 || threshold > 3_600_000.0 {
                return Err((
                    value_at,
                    format!("{name} threshold must lie in (0ms, 1h]"),
                    None,
                ));
            }
        }
        MetricKind::Count => {
            if op == Op::Eq && threshold != 0.0 {
                return Err((
                    value_at,
                    format!("`{name} == N` is only meaningful for N = 0"),
                    Some(format!("write \"{name} <= {threshold}\"")),
                ));
            }
            if context == Context::Trigger && ((op == Op::Ge && threshold < 1.0) || threshold < 0.0)
            {
                return Err((
                    value_at,
                    "this trigger would fire before any alert arrives".into(),
                    Some(format!("write \"{name} >= 1\"")),
                ));
            }
            if op == Op::Lt && threshold < 1.0 {
                return Err((
                    value_at,
                    format!("{name} can never be below 0"),
                    Some(format!("write \"{name} == 0\"")),
                ));
            }
        }
        MetricKind::Users => {
            if threshold < 1.0 {
                return Err((
                    value_at,
                    "active_users needs a threshold of at least 1".into(),
                    None,
                ));
            }
        }
    }
    Ok(Criterion {
        text: text.trim().to_string(),
        metric,
        test: Test::Compare {
            op,
            threshold,
            from_baseline,
        },
    })
}

/// `[rollout] success = [...]`: criteria over the whole rollout.
fn build_rollout(
    cx: &mut Ctx,
    v: Option<&Val>,
    baseline: &Option<Baseline>,
    margin: f64,
) -> Option<Vec<Criterion>> {
    let Some(v) = v else { return Some(Vec::new()) };
    let t = table(cx, v, "rollout")?;
    check_keys(cx, t, &["success"], "[rollout]");
    match get(t, "success") {
        Some(list) => criteria_list(cx, list, Context::Gate { full: false }, baseline, margin),
        None => Some(Vec::new()),
    }
}

fn build_triggers(
    cx: &mut Ctx,
    v: Option<&Val>,
    baseline: &Option<Baseline>,
) -> Option<Vec<Criterion>> {
    let Some(v) = v else { return Some(Vec::new()) };
    let t = table(cx, v, "rollback")?;
    check_keys(cx, t, &["triggers"], "[rollback]");
    match get(t, "triggers") {
        Some(list) => criteria_list(cx, list, Context::Trigger, baseline, 0.0),
        None => Some(Vec::new()),
    }
}
