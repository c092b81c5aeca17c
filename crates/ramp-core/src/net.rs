//! IP networks (`10.0.0.0/8`, `fd00::/8`): what trusted-proxy lists are made of. Pure
//! parsing and matching, shared by the plan (checked when it is parsed) and the proxy.
//!
//! An entry with host bits set beyond its prefix (`10.0.0.1/8`) is rejected rather than
//! silently widened or narrowed; IPv4 addresses with leading zeros and IPv6 zone indices are
//! rejected too. An IPv4 address and its IPv4-mapped IPv6 form are the same address.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IP network: an address with no bits set beyond a prefix length, as in `10.0.0.0/8`.
///
/// Parsed from `addr/prefix` or a bare address (a `/32` or `/128` network); see the module
/// docs for what is rejected. Displayed as `addr/prefix`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Why a trusted-proxy entry is not a valid network.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{entry:?}: {kind}")]
pub struct CidrError {
    entry: String,
    kind: CidrErrorKind,
}

/// What is wrong with a trusted-proxy entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrErrorKind {
    /// The entry is empty (or only whitespace).
    #[error("empty entry")]
    Empty,
    /// The part before any `/` is not an IPv4 or IPv6 address.
    #[error("not an IPv4 or IPv6 address")]
    Address,
    /// The part after the `/` is not a decimal number.
    #[error("prefix length is not a decimal number")]
    PrefixNotNumber,
    /// The prefix is longer than the address (32 bits for IPv4, 128 for IPv6).
    #[error("prefix longer than {max}")]
    PrefixTooLong {
        /// The address family's width in bits.
        max: u8,
    },
    /// The address has bits set beyond the prefix (`10.0.0.1/8`).
    #[error(
        "host bits set beyond the /{prefix} prefix (the network is {network}; a single address \
         is written without a prefix)"
    )]
    HostBits {
        /// The prefix length given.
        prefix: u8,
        /// The network that prefix would give.
        network: Cidr,
    },
}

impl CidrError {
    /// The entry as given.
    pub fn entry(&self) -> &str {
        &self.entry
    }

    /// What is wrong with it.
    pub fn kind(&self) -> &CidrErrorKind {
        &self.kind
    }
}

fn mask4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

fn width(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

impl Cidr {
    /// The network `network/prefix`; fails when the prefix is longer than the address or the
    /// address has bits set beyond it.
    pub fn new(network: IpAddr, prefix: u8) -> Result<Self, CidrErrorKind> {
        let max = width(network);
        if prefix > max {
            return Err(CidrErrorKind::PrefixTooLong { max });
        }
        let masked = match network {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask4(prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask6(prefix))),
        };
        if masked != network {
            return Err(CidrErrorKind::HostBits {
                prefix,
                network: Cidr {
                    network: masked,
                    prefix,
                },
            });
        }
        Ok(Cidr { network, prefix })
    }

    /// The network address (no bits set beyond the prefix).
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in the network; an IPv4 address and its IPv4-mapped IPv6 form count as
    /// the same address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(a)) => u32::from(a) & mask4(self.prefix) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V4(a)) => {
                u128::from(a.to_ipv6_mapped()) & mask6(self.prefix) == u128::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                u128::from(a) & mask6(self.prefix) == u128::from(net)
            }
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// Parses `addr/prefix` or a bare address; surrounding whitespace is ignored.
    fn from_str(entry: &str) -> Result<Self, CidrError> {
        let err = |kind| CidrError {
            entry: entry.to_owned(),
            kind,
        };
        let text = entry.trim();
        if text.is_empty() {
            return Err(err(CidrErrorKind::Empty));
        }
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| err(CidrErrorKind::Address))?;
        let max = width(addr);
        let prefix = match prefix {
            None => max,
            Some(p) => {
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(err(CidrErrorKind::PrefixNotNumber));
                }
                // All digits: only overflow can fail, and that is too long as well.
                let n = p.parse::<u32>().unwrap_or(u32::MAX);
                if n > u32::from(max) {
                    return Err(err(CidrErrorKind::PrefixTooLong { max }));
                }
                n as u8
            }
        };
        Cidr::new(addr, prefix).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_parses_and_displays() {
        let cases = [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("192.168.1.7", "192.168.1.7/32"),
            ("192.168.1.7/32", "192.168.1.7/32"),
            ("::1/128", "::1/128"),
            ("::1", "::1/128"),
            ("fd00::/8", "fd00::/8"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("::/0", "::/0"),
            (" 10.0.0.0/8\t", "10.0.0.0/8"),
            ("10.0.0.0/08", "10.0.0.0/8"),
            ("::ffff:10.0.0.0/104", "::ffff:10.0.0.0/104"),
            ("2001:DB8::/32", "2001:db8::/32"),
        ];
        for (input, shown) in cases {
            let cidr: Cidr = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(cidr.to_string(), shown, "{input}");
            assert_eq!(shown.parse::<Cidr>().unwrap(), cidr, "{input} round trip");
        }
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert_eq!((c.network(), c.prefix_len()), (ip("10.0.0.0"), 8));
    }

    #[test]
    fn cidr_errors_name_the_entry_and_the_reason() {
        let cases = [
            ("10.0.0.0/33", "\"10.0.0.0/33\": prefix longer than 32"),
            ("fd00::/129", "\"fd00::/129\": prefix longer than 128"),
            (
                "10.0.0.0/99999999999",
                "\"10.0.0.0/99999999999\": prefix longer than 32",
            ),
            (
                "10.0.0.1/8",
                "\"10.0.0.1/8\": host bits set beyond the /8 prefix (the network is 10.0.0.0/8; \
                 a single address is written without a prefix)",
            ),
            (
                "fd00::1/8",
                "\"fd00::1/8\": host bits set beyond the /8 prefix (the network is fd00::/8; a \
                 single address is written without a prefix)",
            ),
            ("", "\"\": empty entry"),
            ("  ", "\"  \": empty entry"),
            (
                "10.0.0.0/",
                "\"10.0.0.0/\": prefix length is not a decimal number",
            ),
            (
                "10.0.0.0/x",
                "\"10.0.0.0/x\": prefix length is not a decimal number",
            ),
            (
                "10.0.0.0/+8",
                "\"10.0.0.0/+8\": prefix length is not a decimal number",
            ),
            (
                "10.0.0.0/-1",
                "\"10.0.0.0/-1\": prefix length is not a decimal number",
            ),
            (
                "10.0.0.0/ 8",
                "\"10.0.0.0/ 8\": prefix length is not a decimal number",
            ),
            (
                "10.0.0.0/8/8",
                "\"10.0.0.0/8/8\": prefix length is not a decimal number",
            ),
            ("/8", "\"/8\": not an IPv4 or IPv6 address"),
            ("10.0.0.256", "\"10.0.0.256\": not an IPv4 or IPv6 address"),
            ("010.0.0.1", "\"010.0.0.1\": not an IPv4 or IPv6 address"),
            ("10.0.0", "\"10.0.0\": not an IPv4 or IPv6 address"),
            (
                "fe80::1%eth0",
                "\"fe80::1%eth0\": not an IPv4 or IPv6 address",
            ),
            (
                "example.com",
                "\"example.com\": not an IPv4 or IPv6 address",
            ),
            (
                "10.0.0.0 /8",
                "\"10.0.0.0 /8\": not an IPv4 or IPv6 address",
            ),
            ("[::1]/128", "\"[::1]/128\": not an IPv4 or IPv6 address"),
        ];
        for (input, message) in cases {
            let err = input.parse::<Cidr>().unwrap_err();
            assert_eq!(err.to_string(), message, "{input}");
            assert_eq!(err.entry(), input);
        }
        assert_eq!(
            "10.0.0.1/8".parse::<Cidr>().unwrap_err().kind(),
            &CidrErrorKind::HostBits {
                prefix: 8,
                network: "10.0.0.0/8".parse().unwrap()
            }
        );
        assert_eq!(
            Cidr::new(ip("10.0.0.0"), 33),
            Err(CidrErrorKind::PrefixTooLong { max: 32 })
        );
    }

    #[test]
    fn cidr_matching() {
        let cases = [
            ("10.0.0.0/8", "10.0.0.0", true),
            ("10.0.0.0/8", "10.255.255.255", true),
            ("10.0.0.0/8", "11.0.0.0", false),
            ("10.0.0.0/8", "9.255.255.255", false),
            ("10.0.0.0/8", "::ffff:10.1.2.3", true),
            ("10.0.0.0/8", "::ffff:11.1.2.3", false),
            // IPv4-compatible (not mapped) addresses are plain IPv6.
            ("10.0.0.0/8", "::10.1.2.3", false),
            ("10.0.0.0/8", "fd00::1", false),
            ("172.16.0.0/12", "172.31.255.255", true),
            ("172.16.0.0/12", "172.32.0.0", false),
            ("192.168.1.7", "192.168.1.7", true),
            ("192.168.1.7", "192.168.1.8", false),
            ("192.168.1.7", "::ffff:192.168.1.7", true),
            ("255.255.255.255/32", "255.255.255.255", true),
            ("0.0.0.0/0", "203.0.113.1", true),
            ("0.0.0.0/0", "::ffff:203.0.113.1", true),
            ("0.0.0.0/0", "2001:db8::1", false),
            ("::/0", "2001:db8::1", true),
            // 203.0.113.1 is ::ffff:203.0.113.1, which ::/0 holds.
            ("::/0", "203.0.113.1", true),
            ("::1/128", "::1", true),
            ("::1", "::2", false),
            ("::1/128", "127.0.0.1", false),
            ("fd00::/8", "fdff:ffff::1", true),
            ("fd00::/8", "fe00::", false),
            ("fc00::/7", "fd12::1", true),
            ("2001:db8::/32", "2001:db8:ffff:ffff::1", true),
            ("2001:db8::/32", "2001:db9::", false),
            ("::ffff:0:0/96", "10.1.2.3", true),
            ("::ffff:0:0/96", "::ffff:10.1.2.3", true),
            ("::ffff:0:0/96", "2001:db8::1", false),
            ("::ffff:10.0.0.0/104", "10.9.9.9", true),
            ("::ffff:10.0.0.0/104", "11.0.0.0", false),
        ];
        for (cidr, addr, want) in cases {
            let c: Cidr = cidr.parse().unwrap();
            assert_eq!(c.contains(ip(addr)), want, "{cidr} contains {addr}");
        }
    }
}
