//! Where a rollout created over the API may listen and which upstreams it may proxy to.
//!
//! A plan posted to `POST /v1/rollouts` is outside input: an admin token that leaks must not
//! open a listener on every interface or turn the server into a proxy to any host on its
//! network. By default such a rollout listens on loopback only and may name any upstream;
//! `ramp serve --allow-listen` widens the first, `--allow-upstream` narrows the second. Plans
//! the operator gives `ramp serve` itself (`--plan`) and rollouts resumed from the journal are
//! the operator's own and are not checked.
//!
//! Upstream rules match the host as written in the plan: a name rule (`payments.internal`,
//! `*.internal`) allows what DNS answers for that name, and an address rule (`10.0.0.0/8`)
//! matches only hosts written as addresses. Nothing is resolved here.

use ramp_core::plan::Plan;
use std::net::{IpAddr, SocketAddr};

/// An address range: an address and how many leading bits must match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    /// `10.0.0.0/8`, `::1`, `192.168.1.7` (one address).
    pub fn parse(s: &str) -> Result<Net, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| format!("{s:?} is not an address or an address/prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("{s:?}: the prefix must be 0 to {max}")),
            },
        };
        Ok(Net { addr, prefix })
    }

    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as its IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// One `--allow-upstream` rule: a host (or `*.suffix`, or an address range), and optionally
/// the one port it may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRule {
    host: HostMatch,
    port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostMatch {
    Name(String),
    Suffix(String),
    Net(Net),
}

impl HostRule {
    /// `payments.internal`, `payments.internal:8443`, `*.internal`, `10.0.0.0/8`,
    /// `10.1.2.3:8080`, `[::1]:8080`.
    pub fn parse(s: &str) -> Result<HostRule, String> {
        let bad = || {
            format!(
                "{s:?} is not a host rule: expected a host, *.domain, an address or address/prefix, optionally with :port"
            )
        };
        let (host, port) = split_port(s).ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad());
        }
        let host = if let Ok(net) = Net::parse(host) {
            HostMatch::Net(net)
        } else if let Some(suffix) = host.strip_prefix("*.") {
            if !is_name(suffix) {
                return Err(bad());
            }
            HostMatch::Suffix(suffix.to_ascii_lowercase())
        } else if is_name(host) {
            HostMatch::Name(host.to_ascii_lowercase())
        } else {
            return Err(bad());
        };
        Ok(HostRule { host, port })
    }

    fn allows(&self, host: &str, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        match (&self.host, host.parse::<IpAddr>()) {
            (HostMatch::Net(net), Ok(ip)) => net.contains(ip),
            (HostMatch::Net(_), Err(_)) | (_, Ok(_)) => false,
            (HostMatch::Name(name), Err(_)) => host.eq_ignore_ascii_case(name),
            (HostMatch::Suffix(suffix), Err(_)) => {
                let host = host.to_ascii_lowercase();
                host.strip_suffix(suffix.as_str())
                    .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1)
            }
        }
    }
}

/// `host[:port]` (IPv6 in brackets); the port, if any, must be a number.
fn split_port(s: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']')?;
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((&s[..end + 2], port));
    }
    // A bare IPv6 address (several colons) has no port.
    if s.matches(':').count() > 1 {
        return Some((s, None));
    }
    match s.rsplit_once(':') {
        Some((h, p)) => Some((h, Some(p.parse().ok()?))),
        None => Some((s, None)),
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

/// The policy for rollouts created over the API.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allow {
    /// Addresses their proxies may listen on besides loopback (empty: loopback only).
    pub listen: Vec<Net>,
    /// Upstreams they may proxy to (`None`: any).
    pub upstreams: Option<Vec<HostRule>>,
}

impl Allow {
    /// Whether a rollout of `plan`, listening on `listen`, may be created over the API; if not,
    /// why, in words that name the flag to change.
    pub fn check(&self, plan: &Plan, listen: SocketAddr) -> Result<(), String> {
        let ip = listen.ip();
        let loopback = match ip {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
            IpAddr::V4(v4) => v4.is_loopback(),
        };
        // An unspecified address (0.0.0.0, ::) listens on every interface: only a rule that
        // names it (or the whole range) allows it.
        let allowed = if ip.is_unspecified() {
            self.listen.iter().any(|n| n.contains(ip))
        } else {
            loopback || self.listen.iter().any(|n| n.contains(ip))
        };
        if !allowed {
            return Err(format!(
                "a rollout created over the API may not listen on {listen}: only loopback \
                 addresses unless the server allows more (`ramp serve --allow-listen ADDRESS[/PREFIX]`)"
            ));
        }
        if let (Some(rules), Some(up)) = (&self.upstreams, &plan.upstreams) {
            for (key, url) in [("stable", &up.stable), ("canary", &up.canary)] {
                let Some((host, port)) = authority(url) else {
                    return Err(format!("upstreams.{key} {url:?} has no host"));
                };
                if !rules.iter().any(|r| r.allows(host, port)) {
                    return Err(format!(
                        "upstreams.{key} {url:?} is not an upstream this server allows \
                         (`ramp serve --allow-upstream`): {host}:{port} matches none of its rules"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The host and port of a checked upstream URL (`http://host[:port][/prefix]`; port 80 if
/// absent).
fn authority(url: &str) -> Option<(&str, u16)> {
    let rest = url.strip_prefix("http://")?;
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let (host, port) = split_port(authority)?;
    Some((host, port.unwrap_or(80)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ramp_core::plan::parse_plan;

    fn plan(stable: &str, canary: &str) -> Plan {
        parse_plan(
            &format!(
                "name = \"p\"\n[upstreams]\nstable = \"{stable}\"\ncanary = \"{canary}\"\n[[phase]]\nname = \"c\"\ntraffic = \"5%\"\nduration = \"1h\"\n"
            ),
            "p.toml",
        )
        .unwrap()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_contain_what_they_should() {
        let n = Net::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.200.1.1".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.1.1".parse().unwrap()), "v4-mapped");
        assert!(
            Net::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(
            Net::parse("fd00::/8")
                .unwrap()
                .contains("fd12::1".parse().unwrap())
        );
        assert!(
            Net::parse("192.168.1.7")
                .unwrap()
                .contains("192.168.1.7".parse().unwrap())
        );
        assert!(
            !Net::parse("192.168.1.7")
                .unwrap()
                .contains("192.168.1.8".parse().unwrap())
        );
        for bad in ["10.0.0.0/33", "host", "::/129", "", "1.2.3.4/x"] {
            assert!(Net::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn api_rollouts_listen_on_loopback_unless_allowed() {
        let p = plan("http://127.0.0.1:1", "http://127.0.0.1:2");
        let none = Allow::default();
        assert!(none.check(&p, addr("127.0.0.1:9000")).is_ok());
        assert!(none.check(&p, addr("[::1]:9000")).is_ok());
        let err = none.check(&p, addr("0.0.0.0:9000")).unwrap_err();
        assert!(err.contains("--allow-listen"), "{err}");
        assert!(none.check(&p, addr("10.0.0.5:9000")).is_err());
        let lan = Allow {
            listen: vec![Net::parse("10.0.0.0/8").unwrap()],
            upstreams: None,
        };
        assert!(lan.check(&p, addr("10.0.0.5:9000")).is_ok());
        assert!(
            lan.check(&p, addr("0.0.0.0:9000")).is_err(),
            "every interface needs a rule naming it"
        );
        let any = Allow {
            listen: vec![Net::parse("0.0.0.0").unwrap()],
            upstreams: None,
        };
        assert!(any.check(&p, addr("0.0.0.0:9000")).is_ok());
    }

    #[test]
    fn upstreams_must_match_a_rule_when_there_are_rules() {
        let rules = |r: &[&str]| Allow {
            listen: Vec::new(),
            upstreams: Some(r.iter().map(|s| HostRule::parse(s).unwrap()).collect()),
        };
        let lo = addr("127.0.0.1:9000");
        let a = rules(&["*.internal", "10.0.0.0/8:8080"]);
        assert!(
            a.check(
                &plan("http://pay.internal", "http://pay-v2.internal:81/x"),
                lo
            )
            .is_ok()
        );
        assert!(
            a.check(&plan("http://10.1.2.3:8080", "http://pay.internal"), lo)
                .is_ok()
        );
        let err = a
            .check(&plan("http://10.1.2.3:9090", "http://pay.internal"), lo)
            .unwrap_err();
        assert!(
            err.contains("upstreams.stable") && err.contains("10.1.2.3:9090"),
            "{err}"
        );
        assert!(
            a.check(&plan("http://internal", "http://pay.internal"), lo)
                .is_err()
        );
        assert!(
            a.check(&plan("http://evilinternal", "http://pay.internal"), lo)
                .is_err()
        );
        assert!(
            a.check(&plan("http://169.254.169.254", "http://pay.internal"), lo)
                .is_err(),
            "the metadata service is no upstream"
        );
        let exact = rules(&["Payments.Internal:8443", "[::1]:8081"]);
        assert!(
            exact
                .check(
                    &plan("http://payments.internal:8443", "http://[::1]:8081"),
                    lo
                )
                .is_ok()
        );
        assert!(
            exact
                .check(&plan("http://payments.internal", "http://[::1]:8081"), lo)
                .is_err()
        );
        assert!(
            Allow::default()
                .check(&plan("http://anything:1", "http://x:2"), lo)
                .is_ok()
        );
        for bad in ["", "*.", "a b", "host:x", "[::1", "http://x"] {
            assert!(HostRule::parse(bad).is_err(), "{bad}");
        }
    }
}
