//! `[notify]`: the schedule, the channels (`[notify.channel.NAME]`) and the stakeholder groups
//! (`[notify.group.NAME]`).

use super::*;

const NOTIFY_KEYS: &[&str] = &[
    "status_every",
    "daily_summary",
    "summary_every",
    "final_report",
    "critical",
    "link",
    "give_up_after",
    "channel",
    "group",
];

const KINDS: &[&str] = &["webhook", "slack", "email", "pagerduty"];

pub(super) fn build_notify(cx: &mut Ctx, v: Option<&Val>) -> Option<Notify> {
    let mut n = Notify {
        status_every: None,
        summary_every: None,
        final_report: true,
        critical_immediately: true,
        channels: Vec::new(),
        groups: Vec::new(),
        link: None,
        give_up_after: DEFAULT_GIVE_UP_AFTER,
    };
    let Some(v) = v else { return Some(n) };
    let t = table(cx, v, "notify")?;
    check_keys(cx, t, NOTIFY_KEYS, "[notify]");
    let mut ok = true;
    let mut every = |cx: &mut Ctx, key: &str| -> Option<Option<Millis>> {
        let v = get(t, key)?;
        if let DeValue::Boolean(false) = v.get_ref() {
            return Some(None);
        }
        if key == "daily_summary"
            && let DeValue::Boolean(true) = v.get_ref()
        {
            return Some(Some(DAY));
        }
        match duration(cx, v, &format!("notify.{key}")) {
            Some(d) if d >= MINUTE => Some(Some(d)),
            Some(_) => {
                cx.err(
                    v.span().start + 1,
                    format!("notify.{key} must be at least 1m"),
                    None,
                );
                ok = false;
                None
            }
            None => {
                ok = false;
                None
            }
        }
    };
    if let Some(s) = every(cx, "status_every") {
        n.status_every = s;
    }
    if let Some(s) = every(cx, "daily_summary") {
        n.summary_every = s;
    }
    if let Some(s) = every(cx, "summary_every") {
        n.summary_every = s;
    }
    if let Some(g) = every(cx, "give_up_after") {
        n.give_up_after = g.unwrap_or(DEFAULT_GIVE_UP_AFTER);
    }
    if let Some(f) = get(t, "final_report") {
        match boolean(cx, f, "notify.final_report") {
            Some(b) => n.final_report = b,
            None => ok = false,
        }
    }
    if let Some(c) = get(t, "critical") {
        match c.get_ref() {
            DeValue::Boolean(b) => n.critical_immediately = *b,
            DeValue::String(s) if s.as_ref() == "immediate" => n.critical_immediately = true,
            DeValue::String(s) if s.as_ref() == "off" => n.critical_immediately = false,
            _ => {
                ok = false;
                cx.err(
                    c.span().start,
                    "notify.critical must be \"immediate\", \"off\" or a boolean",
                    None,
                );
            }
        }
    }
    if let Some(l) = get(t, "link") {
        match string(cx, l, "notify.link") {
            Some(s) if web_url(s).is_ok() => n.link = Some(s.trim_end_matches('/').to_string()),
            Some(s) => {
                let why = web_url(s).err().unwrap_or_default();
                cx.err(l.span().start + 1, format!("notify.link: {why}"), None);
                ok = false;
            }
            None => ok = false,
        }
    }
    if let Some(cs) = get(t, "channel") {
        match table(cx, cs, "notify.channel") {
            Some(cs) => {
                for (name, c) in cs.iter() {
                    let name_s = name.get_ref().as_ref();
                    if name_s == LOG_CHANNEL || !is_slug(name_s) {
                        cx.err(
                            name.span().start,
                            format!(
                                "channel name {name_s:?}: use 1-64 letters, digits, `-`, `_`, `.`; `log` is the live log's"
                            ),
                            None,
                        );
                        ok = false;
                        continue;
                    }
                    match channel(cx, name_s, c) {
                        Some(kind) => n.channels.push(Channel {
                            name: name_s.to_string(),
                            kind,
                        }),
                        None => ok = false,
                    }
                }
            }
            None => ok = false,
        }
    }
    if let Some(gs) = get(t, "group") {
        match table(cx, gs, "notify.group") {
            Some(gs) => {
                let names: Vec<&str> = n.channels.iter().map(|c| c.name.as_str()).collect();
                for (name, g) in gs.iter() {
                    match group(cx, name.get_ref().as_ref(), g, &names) {
                        Some(g) => n.groups.push(g),
                        None => ok = false,
                    }
                }
            }
            None => ok = false,
        }
    }
    ok.then_some(n)
}

/// An `http(s)://` URL with a host (a query is allowed: webhooks often carry one).
fn web_url(s: &str) -> Result<(), String> {
    let base = s.split(['?', '#']).next().unwrap_or(s);
    check_upstream_url(base)
}

/// `{ env = "NAME" }` or `{ file = "/path" }`; a plain string is refused, so that no secret
/// is ever written into a plan (which is journaled and served by the API).
fn secret(cx: &mut Ctx, v: &Val, what: &str) -> Option<Secret> {
    let help = Some(format!(
        "write {what} = {{ env = \"VARIABLE\" }} or {what} = {{ file = \"/path/to/secret\" }}"
    ));
    match v.get_ref() {
        DeValue::Table(t) => {
            check_keys(cx, t, &["env", "file"], what);
            match (get(t, "env"), get(t, "file")) {
                (Some(e), None) => {
                    let s = string(cx, e, &format!("{what}.env"))?;
                    let valid = !s.is_empty()
                        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                        && !s.starts_with(|c: char| c.is_ascii_digit());
                    if !valid {
                        cx.err(
                            e.span().start + 1,
                            format!("{what}.env: {s:?} is not an environment variable name"),
                            None,
                        );
                        return None;
                    }
                    Some(Secret::Env(s.to_string()))
                }
                (None, Some(f)) => {
                    let s = string(cx, f, &format!("{what}.file"))?;
                    if s.trim().is_empty() {
                        cx.err(f.span().start + 1, format!("{what}.file is empty"), None);
                        return None;
                    }
                    Some(Secret::File(s.to_string()))
                }
                _ => {
                    cx.err(
                        v.span().start,
                        format!("{what} needs exactly one of `env` or `file`"),
                        help,
                    );
                    None
                }
            }
        }
        DeValue::String(_) => {
            cx.err(
                v.span().start,
                format!("{what}: a secret never goes in the plan itself"),
                help,
            );
            None
        }
        other => {
            cx.err(
                v.span().start,
                format!("{what} must be a table, found {}", other.type_str()),
                help,
            );
            None
        }
    }
}

fn required<'t, 'a>(
    cx: &mut Ctx,
    t: &'t Table<'a>,
    at: &Val,
    key: &str,
    what: &str,
) -> Option<&'t Val<'a>> {
    let v = get(t, key);
    if v.is_none() {
        cx.err(at.span().start, format!("{what} needs `{key}`"), None);
    }
    v
}

fn addresses(cx: &mut Ctx, v: &Val, what: &str) -> Option<Vec<String>> {
    let list: Vec<&Val> = match v.get_ref() {
        DeValue::Array(items) => items.iter().collect(),
        DeValue::String(_) => vec![v],
        other => {
            cx.err(
                v.span().start,
                format!(
                    "{what} must be a list of addresses, found {}",
                    other.type_str()
                ),
                None,
            );
            return None;
        }
    };
    let mut out = Vec::new();
    let mut ok = true;
    for item in list {
        match string(cx, item, what) {
            Some(s) if is_mailbox(s) => out.push(s.to_string()),
            Some(s) => {
                cx.err(
                    item.span().start + 1,
                    format!("{what}: {s:?} is not an e-mail address"),
                    None,
                );
                ok = false;
            }
            None => ok = false,
        }
    }
    if ok && out.is_empty() {
        cx.err(v.span().start, format!("{what} names no address"), None);
        ok = false;
    }
    ok.then_some(out)
}

/// `user@host`, or `Name <user@host>`, with nothing that could break a header.
fn is_mailbox(s: &str) -> bool {
    let addr = match (s.find('<'), s.strip_suffix('>')) {
        (Some(i), Some(inner)) => &inner[i + 1..],
        _ => s,
    };
    let Some((user, host)) = addr.rsplit_once('@') else {
        return false;
    };
    !user.is_empty()
        && host.contains('.')
        && !s.chars().any(|c| c.is_control())
        && addr
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"<>()[]\\,;:\"".contains(&b) || b == b'@')
}

fn channel(cx: &mut Ctx, name: &str, v: &Val) -> Option<ChannelKind> {
    let what = format!("[notify.channel.{name}]");
    let t = table(cx, v, &what)?;
    let Some(kind_v) = get(t, "kind") else {
        cx.err(
            v.span().start,
            format!("{what} needs `kind`: one of {}", KINDS.join(", ")),
            None,
        );
        return None;
    };
    let kind = string(cx, kind_v, &format!("notify.channel.{name}.kind"))?;
    let key = |k: &str| format!("notify.channel.{name}.{k}");
    match kind {
        "webhook" => {
            check_keys(cx, t, &["kind", "url", "secret"], &what);
            let url = required(cx, t, v, "url", &what)?;
            let url_s = string(cx, url, &key("url"))?;
            if let Err(e) = web_url(url_s) {
                cx.err(url.span().start + 1, format!("{}: {e}", key("url")), None);
                return None;
            }
            let secret = match get(t, "secret") {
                Some(s) => Some(secret(cx, s, &key("secret"))?),
                None => None,
            };
            Some(ChannelKind::Webhook {
                url: url_s.to_string(),
                secret,
            })
        }
        "slack" => {
            check_keys(
                cx,
                t,
                &["kind", "webhook_url", "token", "channel", "api"],
                &what,
            );
            let webhook_url = match get(t, "webhook_url") {
                Some(s) => Some(secret(cx, s, &key("webhook_url"))?),
                None => None,
            };
            let token = match get(t, "token") {
                Some(s) => Some(secret(cx, s, &key("token"))?),
                None => None,
            };
            let channel = match get(t, "channel") {
                Some(c) => Some(string(cx, c, &key("channel"))?.to_string()),
                None => None,
            };
            let api = match get(t, "api") {
                Some(a) => {
                    let s = string(cx, a, &key("api"))?;
                    if let Err(e) = web_url(s) {
                        cx.err(a.span().start + 1, format!("{}: {e}", key("api")), None);
                        return None;
                    }
                    s.trim_end_matches('/').to_string()
                }
                None => "https://slack.com/api".to_string(),
            };
            match (&webhook_url, &token, &channel) {
                (Some(_), None, None) | (None, Some(_), Some(_)) => {}
                (None, Some(_), None) => {
                    cx.err(
                        v.span().start,
                        format!("{what}: a bot `token` needs the `channel` to post to"),
                        None,
                    );
                    return None;
                }
                _ => {
                    cx.err(
                        v.span().start,
                        format!(
                            "{what} needs either `webhook_url` (an incoming webhook) or `token` and `channel` (a bot, one thread per rollout)"
                        ),
                        None,
                    );
                    return None;
                }
            }
            Some(ChannelKind::Slack {
                webhook_url,
                token,
                channel,
                api,
            })
        }
        "email" => {
            check_keys(
                cx,
                t,
                &["kind", "smtp", "tls", "from", "to", "username", "password"],
                &what,
            );
            let smtp = required(cx, t, v, "smtp", &what);
            let from = required(cx, t, v, "from", &what);
            let to = required(cx, t, v, "to", &what);
            let (smtp, from, to) = (smtp?, from?, to?);
            let smtp_s = string(cx, smtp, &key("smtp"))?;
            let Some((scheme_tls, host, port)) = smtp_url(smtp_s) else {
                cx.err(
                    smtp.span().start + 1,
                    format!(
                        "{}: {smtp_s:?} is not smtp://host[:port] (STARTTLS) or smtps://host[:port] (TLS)",
                        key("smtp")
                    ),
                    None,
                );
                return None;
            };
            let tls = match get(t, "tls") {
                Some(tv) => match string(cx, tv, &key("tls"))? {
                    "starttls" => SmtpTls::Starttls,
                    "tls" => SmtpTls::Tls,
                    "none" => SmtpTls::None,
                    other => {
                        cx.err(
                            tv.span().start + 1,
                            format!(
                                "{} must be \"starttls\", \"tls\" or \"none\", found {other:?}",
                                key("tls")
                            ),
                            None,
                        );
                        return None;
                    }
                },
                None => scheme_tls,
            };
            let from_s = string(cx, from, &key("from"))?;
            if !is_mailbox(from_s) {
                cx.err(
                    from.span().start + 1,
                    format!("{}: {from_s:?} is not an e-mail address", key("from")),
                    None,
                );
                return None;
            }
            let to = addresses(cx, to, &key("to"))?;
            let username = match get(t, "username") {
                Some(u) => Some(string(cx, u, &key("username"))?.to_string()),
                None => None,
            };
            let password = match get(t, "password") {
                Some(p) => Some(secret(cx, p, &key("password"))?),
                None => None,
            };
            let local = matches!(host.as_str(), "localhost" | "127.0.0.1" | "::1");
            if tls == SmtpTls::None && password.is_some() && !local {
                cx.err(
                    v.span().start,
                    format!(
                        "{what}: tls = \"none\" would send the password in the clear to {host}; use STARTTLS or TLS, or a relay on localhost"
                    ),
                    None,
                );
                return None;
            }
            if username.is_some() != password.is_some() {
                cx.err(
                    v.span().start,
                    format!("{what}: `username` and `password` go together"),
                    None,
                );
                return None;
            }
            Some(ChannelKind::Email {
                host,
                port,
                tls,
                from: from_s.to_string(),
                to,
                username,
                password,
            })
        }
        "pagerduty" => {
            check_keys(cx, t, &["kind", "routing_key", "url"], &what);
            let rk = required(cx, t, v, "routing_key", &what)?;
            let routing_key = secret(cx, rk, &key("routing_key"))?;
            let url = match get(t, "url") {
                Some(u) => {
                    let s = string(cx, u, &key("url"))?;
                    if let Err(e) = web_url(s) {
                        cx.err(u.span().start + 1, format!("{}: {e}", key("url")), None);
                        return None;
                    }
                    s.to_string()
                }
                None => "https://events.pagerduty.com/v2/enqueue".to_string(),
            };
            Some(ChannelKind::Pagerduty { routing_key, url })
        }
        other => {
            cx.err(
                kind_v.span().start + 1,
                format!(
                    "unknown channel kind {other:?}; ramp sends to {}",
                    KINDS.join(", ")
                ),
                did_you_mean(other, KINDS).or(None),
            );
            None
        }
    }
}

/// `smtp://host[:587]` or `smtps://host[:465]`.
fn smtp_url(s: &str) -> Option<(SmtpTls, String, u16)> {
    let (tls, rest, default) = if let Some(r) = s.strip_prefix("smtps://") {
        (SmtpTls::Tls, r, 465)
    } else if let Some(r) = s.strip_prefix("smtp://") {
        (SmtpTls::Starttls, r, 587)
    } else {
        return None;
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, p.parse().ok()?),
        _ => (rest, default),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let valid = !host.is_empty()
        && port > 0
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b));
    valid.then(|| (tls, host.to_string(), port))
}

fn group(cx: &mut Ctx, name: &str, v: &Val, channels: &[&str]) -> Option<Group> {
    let what = format!("[notify.group.{name}]");
    if !is_slug(name) {
        cx.err(
            v.span().start,
            format!("group name {name:?}: use 1-64 letters, digits, `-`, `_`, `.`"),
            None,
        );
        return None;
    }
    let t = table(cx, v, &what)?;
    check_keys(cx, t, &["channels", "receives"], &what);
    let mut ok = true;
    let mut g = Group {
        name: name.to_string(),
        channels: Vec::new(),
        receives: Topic::DEFAULT.to_vec(),
    };
    let Some(cs) = get(t, "channels") else {
        cx.err(
            v.span().start,
            format!(
                "{what} needs `channels`: the names of [notify.channel.*] tables that reach it"
            ),
            None,
        );
        return None;
    };
    let DeValue::Array(items) = cs.get_ref() else {
        cx.err(
            cs.span().start,
            format!("notify.group.{name}.channels must be a list of channel names"),
            None,
        );
        return None;
    };
    for item in items {
        let Some(s) = string(cx, item, &format!("notify.group.{name}.channels[]")) else {
            ok = false;
            continue;
        };
        if !channels.contains(&s) {
            let help = did_you_mean(s, channels).or_else(|| {
                Some(if channels.is_empty() {
                    "define it as a [notify.channel.NAME] table".into()
                } else {
                    format!("the plan's channels: {}", channels.join(", "))
                })
            });
            cx.err(
                item.span().start + 1,
                format!("notify.group.{name}: no channel named {s:?}"),
                help,
            );
            ok = false;
        } else if !g.channels.iter().any(|c| c == s) {
            g.channels.push(s.to_string());
        }
    }
    if let Some(rs) = get(t, "receives") {
        let DeValue::Array(items) = rs.get_ref() else {
            cx.err(
                rs.span().start,
                format!("notify.group.{name}.receives must be a list of topics"),
                None,
            );
            return None;
        };
        let names: Vec<&str> = Topic::ALL.iter().map(|t| t.name()).collect();
        g.receives.clear();
        for item in items {
            let Some(s) = string(cx, item, &format!("notify.group.{name}.receives[]")) else {
                ok = false;
                continue;
            };
            match Topic::parse(s) {
                Some(topic) if !g.receives.contains(&topic) => g.receives.push(topic),
                Some(_) => {}
                None => {
                    cx.err(
                        item.span().start + 1,
                        format!("notify.group.{name}: unknown topic {s:?}"),
                        did_you_mean(s, &names)
                            .or_else(|| Some(format!("topics: {}", names.join(", ")))),
                    );
                    ok = false;
                }
            }
        }
    }
    ok.then_some(g)
}
