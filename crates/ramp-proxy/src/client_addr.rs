//! Who the client is: trusted proxies, forwarded headers and the PROXY protocol.
//!
//! The proxy uses these for the plan's `[proxy] trusted_proxies` and `proxy_protocol`
//! (see the crate docs); the pieces are:
//!
//! * [`TrustedProxies`]: the networks ([`Cidr`]) whose connections are believed when they say
//!   whom they forward for.
//! * [`client_ip`]: the client address (and scheme) of one request, from the connection's peer
//!   and the request's `Forwarded` / `X-Forwarded-For` / `X-Forwarded-Proto` headers.
//! * [`read_proxy_header`]: reads a PROXY protocol (v1 or v2) header off a new connection,
//!   exactly its bytes and no more, so what follows (an HTTP request, a TLS ClientHello) is
//!   left for the next reader. [`parse_v1`] and [`parse_v2`] decode complete headers.
//!
//! # Trusted proxies
//!
//! Entries are CIDRs (`10.0.0.0/8`, `fd00::/8`) or single addresses (`192.168.1.7`, `::1`,
//! meaning `/32` and `/128`). An entry with host bits set beyond its prefix (`10.0.0.1/8`) is
//! rejected rather than silently widened or narrowed: it is a typo for either the network
//! (`10.0.0.0/8`) or the one address, and guessing wrong trusts the wrong machines. The error
//! names the network the prefix would give. IPv4 addresses with leading zeros (`010.0.0.1`,
//! octal to some tools) and IPv6 zone indices (`fe80::1%eth0`) are rejected too.
//!
//! An IPv4 address and its IPv4-mapped IPv6 form (`::ffff:10.1.2.3`, what a dual-stack socket
//! reports for an IPv4 peer) are the same address: `::ffff:10.1.2.3` is in `10.0.0.0/8`, and
//! `10.1.2.3` is in an IPv6 network that holds `::ffff:10.1.2.3` (such as `::ffff:0:0/96`).
//!
//! # Client address
//!
//! The headers of a request are believed only when its peer is a trusted proxy; from anyone
//! else they are ignored, since anyone can send them. From a trusted peer the forwarded list
//! is walked from the right (the element the peer itself appended) to the left, skipping
//! trusted addresses; the first address that is not trusted is the client (like nginx's
//! `real_ip_recursive on`). Everything left of it was written by the client or by proxies
//! nobody vouches for and is not looked at. When every address is trusted, the leftmost one is
//! the client. An element that cannot be parsed, `for=unknown`, an obfuscated identifier
//! (`for=_hidden`) or an element without `for=` ends the walk: the client is then the last
//! trusted hop seen (or the peer itself) — never an address read past garbage. At most
//! [`MAX_FORWARDED_ELEMENTS`] elements (empty ones included) are examined, so a huge header
//! costs little; a walk that reaches the limit also ends at the last trusted hop.
//!
//! `Forwarded` (RFC 7239) wins over `X-Forwarded-For` when a request carries a non-empty one.
//! **Deployment requirement**: every trusted proxy must then either append to `Forwarded` or
//! remove it. A trusted proxy that appends only to `X-Forwarded-For` and passes a client's own
//! `Forwarded` through lets that client choose its address.
//!
//! Accepted forms: `X-Forwarded-For` elements are `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`,
//! `[2001:db8::1]` and `[2001:db8::1]:80`, comma-separated over any number of header lines,
//! with spaces and tabs around elements ignored. `Forwarded` elements are `;`-separated
//! `name=value` pairs, the value a token or a quoted string (`for="[2001:db8::1]:4711"`);
//! names are case-insensitive and a parameter given twice in one element makes it unparsable
//! (RFC 7239 §4). Unquoted values may hold characters a token may not (`for=[::1]:80`, written
//! by some proxies): every element the walk examines was written by a trusted proxy, so
//! understanding it is safe. A `for=` value with a backslash escape is not decoded and ends
//! the walk.
//!
//! The reported address is canonical: an IPv4-mapped IPv6 address is reported as IPv4 (as the
//! proxy already does for its peers), so a client has one cohort key however it was seen.
//!
//! # Forwarded scheme
//!
//! Only `http` and `https` (any case) are accepted; anything else is `None`.
//!
//! * With `Forwarded`, the scheme is the `proto=` of the element the walk ended on: the element
//!   the trusted proxy nearest the client wrote, which says how the client reached it (an
//!   `unknown` or obfuscated `for=` still ends the walk on its element). `X-Forwarded-Proto`
//!   is then ignored.
//! * Otherwise it is the last element of the last `X-Forwarded-Proto` line: the value the
//!   delivering proxy set (proxies usually overwrite this header rather than append, so its
//!   elements do not line up with `X-Forwarded-For`'s).
//!
//! # PROXY protocol
//!
//! Implements haproxy's `proxy-protocol.txt`, strictly: a connection that does not start with
//! a complete, valid v1 or v2 header is an error and should be closed. Only read a header on a
//! listener configured to expect one from trusted proxies (the protocol cannot be detected
//! safely: whoever can send a header chooses its address). [`read_proxy_header`] has no
//! timeout; wrap it in one (the spec suggests a few seconds, at least 3).
//!
//! * v1: `TCP4` and `TCP6` lines give the addresses; `UNKNOWN` (anything up to the CRLF is
//!   ignored) means [`ProxyHeader::Local`]. Addresses must match the announced family (IPv6
//!   as `inet_pton` reads it, a dotted IPv4 tail included), ports and IPv4 octets must have no
//!   leading zeros, fields are separated by exactly one space, and the line must end with CRLF
//!   within [`V1_MAX_LEN`] bytes.
//! * v2: the `PROXY` command with TCP over IPv4 or IPv6 gives the addresses. The `LOCAL`
//!   command means [`ProxyHeader::Local`] whatever its address block; so do `AF_UNSPEC` and the
//!   defined combinations this reader does not use (UDP, `AF_UNIX`), as the spec asks of
//!   receivers that do not implement them. Undefined versions, commands and family bytes are
//!   errors, as is an address block shorter than its family needs or longer than
//!   [`V2_MAX_ADDR_LEN`]. TLVs after the addresses are consumed but not interpreted (nor
//!   checked: the spec lets receivers skip them).
//!
//! The reader never reads past the header: a v2 header says its length up front; a v1 line
//! does not, so the reader asks only for as many bytes as the shortest valid completion of
//! what it has (the rest of the current field, the shortest possible remaining fields, the
//! CRLF), which a valid line always has: six reads for a typical `TCP4` line rather than one
//! per byte. Each read's bytes are checked at once, so a connection that speaks something else
//! fails on its first bytes without waiting for more.

#![forbid(unsafe_code)]

use http::HeaderMap;
use http::header::{FORWARDED, HeaderName};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use tokio::io::{AsyncRead, AsyncReadExt};

pub use ramp_core::net::{Cidr, CidrError, CidrErrorKind};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

// ---------------------------------------------------------------------------------------------
// Trusted proxies
// ---------------------------------------------------------------------------------------------

/// The proxies whose forwarding headers are believed: a list of networks. The default is
/// empty: nobody is trusted and every request's client is its peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    cidrs: Vec<Cidr>,
}

impl TrustedProxies {
    /// Parses each entry as a [`Cidr`]; the first bad entry is the error.
    pub fn parse<I>(entries: I) -> Result<Self, CidrError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        entries
            .into_iter()
            .map(|e| e.as_ref().parse())
            .collect::<Result<Vec<Cidr>, _>>()
            .map(|cidrs| TrustedProxies { cidrs })
    }

    /// Whether `ip` is in one of the networks (IPv4-mapped IPv6 addresses match IPv4
    /// networks).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidrs.iter().any(|c| c.contains(ip))
    }

    /// The networks.
    pub fn cidrs(&self) -> &[Cidr] {
        &self.cidrs
    }

    /// Whether nobody is trusted.
    pub fn is_empty(&self) -> bool {
        self.cidrs.is_empty()
    }
}

impl FromIterator<Cidr> for TrustedProxies {
    fn from_iter<I: IntoIterator<Item = Cidr>>(iter: I) -> Self {
        TrustedProxies {
            cidrs: iter.into_iter().collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client address from forwarding headers
// ---------------------------------------------------------------------------------------------

/// Most forwarded elements [`client_ip`] examines (from the right, empty ones included).
pub const MAX_FORWARDED_ELEMENTS: usize = 32;

/// The scheme a client used, as a trusted proxy reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    /// `http`.
    Http,
    /// `https`.
    Https,
}

impl Proto {
    /// `"http"` or `"https"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Http => "http",
            Proto::Https => "https",
        }
    }

    fn parse(value: &[u8]) -> Option<Self> {
        let value = trim_ows(value);
        if value.eq_ignore_ascii_case(b"http") {
            Some(Proto::Http)
        } else if value.eq_ignore_ascii_case(b"https") {
            Some(Proto::Https)
        } else {
            None
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a request's client is (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The client address, canonical (an IPv4-mapped IPv6 address is given as IPv4).
    pub ip: IpAddr,
    /// Whether `ip` was taken from a forwarding header a trusted peer sent; false when it is
    /// the peer's own address.
    pub vouched: bool,
    /// The scheme the client used, when a trusted peer reported one.
    pub proto: Option<Proto>,
}

/// The client of a request that came from `peer` with `headers` (see the module docs for the
/// algorithm): `peer` itself unless it is a trusted proxy, else the first untrusted address of
/// the forwarded list from the right.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> Resolved {
    let direct = Resolved {
        ip: peer.to_canonical(),
        vouched: false,
        proto: None,
    };
    if !trusted.contains(peer) {
        return direct;
    }
    let forwarded = headers
        .get_all(&FORWARDED)
        .iter()
        .any(|v| !trim_ows(v.as_bytes()).is_empty());
    if forwarded {
        walk(
            direct,
            rev_elements(headers, &FORWARDED, true),
            trusted,
            parse_forwarded_element,
        )
    } else {
        let mut resolved = walk(
            direct,
            rev_elements(headers, &X_FORWARDED_FOR, false),
            trusted,
            |e| parse_host_port(trim_ows(e), false).map(|ip| (Hop::Addr(ip), None)),
        );
        resolved.proto = rev_elements(headers, &X_FORWARDED_PROTO, false)
            .take(MAX_FORWARDED_ELEMENTS)
            .map(trim_ows)
            .find(|e| !e.is_empty())
            .and_then(Proto::parse);
        resolved
    }
}

/// What one forwarded element says about the hop before it.
enum Hop {
    /// Its address.
    Addr(IpAddr),
    /// It is there but its address is not given (`unknown`, obfuscated, no `for=`).
    Hidden,
}

/// Walks elements from the right (see the module docs); `parse` gives an element's hop and
/// scheme, `None` when it is unparsable.
fn walk<'a>(
    direct: Resolved,
    elements: impl Iterator<Item = &'a [u8]>,
    trusted: &TrustedProxies,
    parse: impl Fn(&[u8]) -> Option<(Hop, Option<Proto>)>,
) -> Resolved {
    let mut last_trusted = None;
    let mut proto = None;
    for element in elements.take(MAX_FORWARDED_ELEMENTS) {
        if trim_ows(element).is_empty() {
            continue;
        }
        let Some((hop, element_proto)) = parse(element) else {
            break;
        };
        proto = element_proto;
        match hop {
            Hop::Hidden => break,
            Hop::Addr(ip) if trusted.contains(ip) => last_trusted = Some(ip),
            Hop::Addr(ip) => {
                return Resolved {
                    ip: ip.to_canonical(),
                    vouched: true,
                    proto,
                };
            }
        }
    }
    match last_trusted {
        Some(ip) => Resolved {
            ip: ip.to_canonical(),
            vouched: true,
            proto,
        },
        None => Resolved { proto, ..direct },
    }
}

/// The elements of every `name` line, last line first and each line from the right.
fn rev_elements<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
    quoted: bool,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .get_all(name)
        .iter()
        .rev()
        .flat_map(move |v| RevSplit {
            rest: Some(v.as_bytes()),
            quoted,
        })
}

/// Splits a comma-separated list from the right; with `quoted`, commas inside quoted strings
/// do not split. Scanning from the right keeps what a trusted proxy appended intact whatever
/// the client put before it (an unbalanced quote only spoils the client's own elements).
struct RevSplit<'a> {
    rest: Option<&'a [u8]>,
    quoted: bool,
}

impl<'a> Iterator for RevSplit<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let s = self.rest?;
        let mut in_quote = false;
        for i in (0..s.len()).rev() {
            match s[i] {
                b',' if !in_quote => {
                    self.rest = Some(&s[..i]);
                    return Some(&s[i + 1..]);
                }
                b'"' if self.quoted => {
                    if !in_quote {
                        in_quote = true;
                    } else {
                        // Inside a quoted string a quote after an odd number of backslashes
                        // is escaped; otherwise it is the string's opening quote.
                        let backslashes = s[..i].iter().rev().take_while(|&&b| b == b'\\').count();
                        if backslashes % 2 == 0 {
                            in_quote = false;
                        }
                    }
                }
                _ => {}
            }
        }
        self.rest = None;
        Some(s)
    }
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s
        && is_ows(*first)
    {
        s = rest;
    }
    while let [rest @ .., last] = s
        && is_ows(*last)
    {
        s = rest;
    }
    s
}

/// An RFC 9110 token character.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A character of an unquoted `Forwarded` value: visible ASCII but the delimiters. Wider than
/// a token so that `for=[::1]:80` from a careless (but trusted) proxy is understood.
fn is_unquoted_value_char(b: u8) -> bool {
    b.is_ascii_graphic() && !matches!(b, b'"' | b';' | b',')
}

/// A quoted string at the start of `s` (which starts with `"`): its content, whether it holds
/// a backslash escape, and what follows the closing quote.
fn quoted_string(s: &[u8]) -> Option<(&[u8], bool, &[u8])> {
    let mut escaped = false;
    let mut i = 1;
    while i < s.len() {
        match s[i] {
            b'"' => return Some((&s[1..i], escaped, &s[i + 1..])),
            b'\\' => {
                let next = *s.get(i + 1)?;
                if !(next == b'\t' || next == b' ' || next >= 0x21) || next == 0x7f {
                    return None;
                }
                escaped = true;
                i += 2;
            }
            b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff => i += 1,
            _ => return None,
        }
    }
    None
}

/// One `Forwarded` element: its `for=` node and `proto=` (RFC 7239 §4); `None` when it is
/// not valid.
fn parse_forwarded_element(element: &[u8]) -> Option<(Hop, Option<Proto>)> {
    let mut node: Option<(&[u8], bool)> = None;
    let mut proto: Option<(&[u8], bool)> = None;
    let (mut by, mut host) = (false, false);
    let mut rest = trim_ows(element);
    loop {
        let name_len = rest.iter().take_while(|&&b| is_tchar(b)).count();
        if name_len == 0 {
            return None;
        }
        let name = &rest[..name_len];
        rest = rest[name_len..].strip_prefix(b"=")?;
        let (value, escaped, after) = if rest.first() == Some(&b'"') {
            quoted_string(rest)?
        } else {
            let n = rest
                .iter()
                .take_while(|&&b| is_unquoted_value_char(b))
                .count();
            if n == 0 {
                return None;
            }
            (&rest[..n], false, &rest[n..])
        };
        let once = |seen: bool| (!seen).then_some(());
        if name.eq_ignore_ascii_case(b"for") {
            once(node.is_some())?;
            node = Some((value, escaped));
        } else if name.eq_ignore_ascii_case(b"proto") {
            once(proto.is_some())?;
            proto = Some((value, escaped));
        } else if name.eq_ignore_ascii_case(b"by") {
            once(by)?;
            by = true;
        } else if name.eq_ignore_ascii_case(b"host") {
            once(host)?;
            host = true;
        }
        rest = trim_ows(after);
        if rest.is_empty() {
            break;
        }
        rest = trim_ows(rest.strip_prefix(b";")?);
    }
    let proto = proto.and_then(|(v, escaped)| if escaped { None } else { Proto::parse(v) });
    let hop = match node {
        None => Hop::Hidden,
        Some((_, true)) => return None,
        Some((v, false)) => parse_node(v)?,
    };
    Some((hop, proto))
}

/// A `for=` node (RFC 7239 §6): an address with an optional port, `unknown` or an obfuscated
/// identifier.
fn parse_node(v: &[u8]) -> Option<Hop> {
    if v.eq_ignore_ascii_case(b"unknown") {
        return Some(Hop::Hidden);
    }
    if let Some(id) = v.strip_prefix(b"_") {
        return is_obfuscated(id).then_some(Hop::Hidden);
    }
    parse_host_port(v, true).map(Hop::Addr)
}

/// The characters of an obfuscated identifier after its `_`.
fn is_obfuscated(id: &[u8]) -> bool {
    !id.is_empty()
        && id
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]` or `[2001:db8::1]:80`; with
/// `obfuscated_port` the port may also be an obfuscated identifier (`_p1`).
fn parse_host_port(v: &[u8], obfuscated_port: bool) -> Option<IpAddr> {
    let port_ok = |p: &[u8]| {
        let numeric = !p.is_empty()
            && p.len() <= 5
            && p.iter().all(u8::is_ascii_digit)
            && std::str::from_utf8(p).ok()?.parse::<u16>().is_ok();
        let obfuscated = obfuscated_port && p.strip_prefix(b"_").is_some_and(is_obfuscated);
        (numeric || obfuscated).then_some(())
    };
    let s = std::str::from_utf8(v).ok()?;
    if let Some(bracketed) = s.strip_prefix('[') {
        let (inside, after) = bracketed.split_once(']')?;
        let ip: Ipv6Addr = inside.parse().ok()?;
        if !after.is_empty() {
            port_ok(after.strip_prefix(':')?.as_bytes())?;
        }
        return Some(IpAddr::V6(ip));
    }
    // An IPv4 address, or an IPv6 one written without brackets (it cannot carry a port).
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    let (host, port) = s.split_once(':')?;
    let ip: Ipv4Addr = host.parse().ok()?;
    port_ok(port.as_bytes())?;
    Some(IpAddr::V4(ip))
}

// ---------------------------------------------------------------------------------------------
// PROXY protocol
// ---------------------------------------------------------------------------------------------

/// Longest v1 header line, CRLF included (the spec's worst case, `UNKNOWN` with two full IPv6
/// addresses).
pub const V1_MAX_LEN: usize = 107;

/// Longest v2 address block accepted (the bytes after the 16-byte fixed header: addresses and
/// TLVs). The addresses take at most 216 bytes; the rest leaves room for TLVs.
pub const V2_MAX_ADDR_LEN: usize = 1024;

/// The shortest v1 line: `PROXY UNKNOWN\r\n`.
const V1_MIN_LEN: usize = 15;
const V1_SIGNATURE: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V2_FIXED_LEN: usize = 16;
const V2_LOCAL: u8 = 0x0;
const V2_PROXY: u8 = 0x1;
const V2_TCP4: u8 = 0x11;
const V2_TCP6: u8 = 0x21;

/// What a PROXY protocol header says about the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyHeader {
    /// The connection was relayed for `source`, which connected to `destination`.
    Proxied {
        /// The original client.
        source: SocketAddr,
        /// The address the client connected to.
        destination: SocketAddr,
    },
    /// The addresses are not given (v2 `LOCAL`, v1 `UNKNOWN`, or an address family this reader
    /// does not use): the connection's real peer is the client.
    Local,
}

impl ProxyHeader {
    /// The client: the header's source, or `peer` (the connection's real peer) for
    /// [`ProxyHeader::Local`].
    pub fn source_or(&self, peer: SocketAddr) -> SocketAddr {
        match self {
            ProxyHeader::Proxied { source, .. } => *source,
            ProxyHeader::Local => peer,
        }
    }
}

/// Why a connection has no valid PROXY protocol header (it should be closed).
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// Reading from the connection failed.
    #[error("reading the PROXY protocol header: {0}")]
    Io(std::io::Error),
    /// The connection (or the bytes given to a parser) ended inside the header.
    #[error("the connection ended inside the PROXY protocol header")]
    Truncated,
    /// The bytes start with neither the v1 (`PROXY `) nor the v2 signature.
    #[error("the connection does not start with a PROXY protocol header")]
    NotProxy,
    /// A parser was given bytes beyond the end of the header.
    #[error("bytes after the end of the PROXY protocol header")]
    TrailingBytes,
    /// No CRLF within [`V1_MAX_LEN`] bytes.
    #[error("PROXY protocol v1: no CRLF within {V1_MAX_LEN} bytes")]
    V1TooLong,
    /// The v1 line is malformed.
    #[error("PROXY protocol v1: {0}")]
    V1(&'static str),
    /// The v2 version nibble is not 2.
    #[error("PROXY protocol v2: version {0} (only 2 is defined)")]
    V2Version(u8),
    /// The v2 command is neither `LOCAL` nor `PROXY`.
    #[error("PROXY protocol v2: undefined command {0:#x}")]
    V2Command(u8),
    /// The v2 address family and transport byte is not one the spec defines.
    #[error("PROXY protocol v2: undefined address family and transport {0:#04x}")]
    V2Family(u8),
    /// The v2 address block is longer than [`V2_MAX_ADDR_LEN`].
    #[error("PROXY protocol v2: address block of {len} bytes (at most {max} accepted)")]
    V2TooLong {
        /// The length the header declares.
        len: usize,
        /// The most accepted.
        max: usize,
    },
    /// The v2 address block is too short for its address family.
    #[error(
        "PROXY protocol v2: address block of {len} bytes for family {family:#04x}, which needs {need}"
    )]
    V2AddressLength {
        /// The family and transport byte.
        family: u8,
        /// The length the header declares.
        len: usize,
        /// The length the family needs.
        need: usize,
    },
}

/// Reads one PROXY protocol header (v1 or v2) from the start of a connection, consuming
/// exactly its bytes (see the module docs). No timeout: the caller should apply one.
pub async fn read_proxy_header<R>(io: &mut R) -> Result<ProxyHeader, ProxyHeaderError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut buf = Vec::with_capacity(64);
    loop {
        let need = progress(&buf)?;
        if need == 0 {
            break;
        }
        let start = buf.len();
        buf.resize(start + need, 0);
        let got = io
            .read(&mut buf[start..])
            .await
            .map_err(ProxyHeaderError::Io)?;
        buf.truncate(start + got);
        if got == 0 {
            return Err(ProxyHeaderError::Truncated);
        }
    }
    if buf.first() == Some(&V2_SIGNATURE[0]) {
        parse_v2(&buf)
    } else {
        parse_v1(&buf)
    }
}

/// How many more bytes the header starting `p` needs at least (0: `p` is a complete header),
/// or why `p` cannot start a valid one.
fn progress(p: &[u8]) -> Result<usize, ProxyHeaderError> {
    match p.first() {
        None => Ok(V1_MIN_LEN),
        Some(&b) if b == V2_SIGNATURE[0] => v2_progress(p),
        Some(&b) if b == V1_SIGNATURE[0] => v1_progress(p),
        Some(_) => Err(ProxyHeaderError::NotProxy),
    }
}

/// Decodes one complete v1 header line, CRLF included and nothing after it.
pub fn parse_v1(line: &[u8]) -> Result<ProxyHeader, ProxyHeaderError> {
    use ProxyHeaderError::V1;
    if v1_progress(line)? > 0 {
        return Err(ProxyHeaderError::Truncated);
    }
    let body = &line[V1_SIGNATURE.len()..line.len() - 2];
    if body == b"UNKNOWN" || body.starts_with(b"UNKNOWN ") {
        return Ok(ProxyHeader::Local);
    }
    let mut fields = body.split(|&b| b == b' ');
    let family = fields.next().unwrap_or_default();
    if family != b"TCP4" && family != b"TCP6" {
        return Err(V1("unknown protocol (expected TCP4, TCP6 or UNKNOWN)"));
    }
    let mut field = || fields.next().ok_or(V1("too few fields"));
    let (src, dst, sport, dport) = (field()?, field()?, field()?, field()?);
    if fields.next().is_some() {
        return Err(V1("too many fields"));
    }
    let addr = |text: &[u8], what| -> Result<IpAddr, ProxyHeaderError> {
        let text = std::str::from_utf8(text).map_err(|_| V1(what))?;
        match family {
            b"TCP4" => text.parse::<Ipv4Addr>().map(IpAddr::V4),
            _ => text.parse::<Ipv6Addr>().map(IpAddr::V6),
        }
        .map_err(|_| V1(what))
    };
    let port = |text: &[u8], what| -> Result<u16, ProxyHeaderError> {
        let digits = !text.is_empty() && text.iter().all(u8::is_ascii_digit);
        if !digits || (text.len() > 1 && text[0] == b'0') {
            return Err(V1(what));
        }
        std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or(V1(what))
    };
    Ok(ProxyHeader::Proxied {
        source: SocketAddr::new(
            addr(src, "bad source address")?,
            port(sport, "bad source port")?,
        ),
        destination: SocketAddr::new(
            addr(dst, "bad destination address")?,
            port(dport, "bad destination port")?,
        ),
    })
}

/// [`progress`] for a v1 line: at least how many more bytes a valid line starting with `p`
/// has. Checks what it can of `p` on the way, so garbage fails early; [`parse_v1`] does the
/// full check once the line is complete.
fn v1_progress(p: &[u8]) -> Result<usize, ProxyHeaderError> {
    use ProxyHeaderError::V1;
    let sig = p.len().min(V1_SIGNATURE.len());
    if p[..sig] != V1_SIGNATURE[..sig] {
        return Err(ProxyHeaderError::NotProxy);
    }
    let need = if let Some(i) = p.iter().position(|&b| b == b'\r' || b == b'\n') {
        if p[i] == b'\n' {
            return Err(V1("line feed without a carriage return"));
        }
        match p.get(i + 1) {
            None => 1,
            Some(b'\n') if i + 2 == p.len() => {
                if p.len() > V1_MAX_LEN {
                    return Err(ProxyHeaderError::V1TooLong);
                }
                return Ok(0);
            }
            // Bytes after the CRLF: either a parser was given more than a line, or the reader
            // asked for the shortest valid completion of a line that turned out shorter
            // (so invalid); report what is wrong with the line itself.
            Some(b'\n') => {
                return Err(parse_v1(&p[..i + 2])
                    .err()
                    .unwrap_or(ProxyHeaderError::TrailingBytes));
            }
            Some(_) => return Err(V1("carriage return without a line feed")),
        }
    } else if p.len() < V1_SIGNATURE.len() {
        V1_MIN_LEN - p.len()
    } else {
        v1_need(&p[V1_SIGNATURE.len()..])?
    };
    if p.len() + need > V1_MAX_LEN {
        return Err(ProxyHeaderError::V1TooLong);
    }
    Ok(need)
}

/// The shortest valid completion of a v1 line's text after `PROXY ` (`rest` holds no CR or
/// LF): the rest of the current field, the shortest possible remaining fields and the CRLF.
fn v1_need(rest: &[u8]) -> Result<usize, ProxyHeaderError> {
    use ProxyHeaderError::V1;
    const UNKNOWN_PROTOCOL: &str = "unknown protocol (expected TCP4, TCP6 or UNKNOWN)";
    if let Some(after) = rest.strip_prefix(b"UNKNOWN") {
        return match after.first() {
            None | Some(b' ') => Ok(2),
            Some(_) => Err(V1(UNKNOWN_PROTOCOL)),
        };
    }
    let (v4, fields) = if let Some(f) = rest.strip_prefix(b"TCP4 ") {
        (true, f)
    } else if let Some(f) = rest.strip_prefix(b"TCP6 ") {
        (false, f)
    } else {
        // Shortest lines after `PROXY `: `UNKNOWN\r\n`, `TCP4 0.0.0.0 0.0.0.0 0 0\r\n` and
        // `TCP6 :: :: 0 0\r\n`.
        let candidates: [(&[u8], usize); 3] = [(b"UNKNOWN", 9), (b"TCP4 ", 26), (b"TCP6 ", 16)];
        return candidates
            .iter()
            .filter(|(name, _)| name.len() > rest.len() && name.starts_with(rest))
            .map(|(_, shortest)| shortest - rest.len())
            .min()
            .ok_or(V1(UNKNOWN_PROTOCOL));
    };
    let addr_char: fn(u8) -> bool = if v4 {
        |b| b.is_ascii_digit() || b == b'.'
    } else {
        |b| b.is_ascii_hexdigit() || b == b':' || b == b'.'
    };
    let port_char: fn(u8) -> bool = |b| b.is_ascii_digit();
    let (addr_min, addr_max) = if v4 { (7, 15) } else { (2, 45) };
    let shortest: [usize; 4] = [addr_min, addr_min, 1, 1];
    let longest = [addr_max, addr_max, 5, 5];
    let what = [
        "bad source address",
        "bad destination address",
        "bad source port",
        "bad destination port",
    ];
    let pieces = fields.iter().filter(|&&b| b == b' ').count() + 1;
    if pieces > 4 {
        return Err(V1("too many fields"));
    }
    let mut current = 0;
    for (i, piece) in fields.split(|&b| b == b' ').enumerate() {
        let valid = if i < 2 { addr_char } else { port_char };
        if piece.len() > longest[i] || !piece.iter().all(|&b| valid(b)) {
            return Err(V1(what[i]));
        }
        if i + 1 < pieces && piece.is_empty() {
            return Err(V1(
                "empty field (fields are separated by exactly one space)",
            ));
        }
        current = piece.len();
    }
    let field = pieces - 1;
    let rest_of_field = shortest[field].saturating_sub(current);
    let later_fields: usize = shortest[field + 1..].iter().map(|n| n + 1).sum();
    Ok(rest_of_field + later_fields + 2)
}

/// Decodes one complete v2 header: the 16 fixed bytes and exactly the address block they
/// announce.
pub fn parse_v2(header: &[u8]) -> Result<ProxyHeader, ProxyHeaderError> {
    if v2_progress(header)? > 0 {
        return Err(ProxyHeaderError::Truncated);
    }
    if header[12] & 0x0f == V2_LOCAL {
        return Ok(ProxyHeader::Local);
    }
    let a = &header[V2_FIXED_LEN..];
    let port = |at: usize| u16::from_be_bytes([a[at], a[at + 1]]);
    Ok(match header[13] {
        V2_TCP4 => {
            let ip = |at: usize| IpAddr::from([a[at], a[at + 1], a[at + 2], a[at + 3]]);
            ProxyHeader::Proxied {
                source: SocketAddr::new(ip(0), port(8)),
                destination: SocketAddr::new(ip(4), port(10)),
            }
        }
        V2_TCP6 => {
            let ip = |at: usize| {
                let mut octets = [0; 16];
                octets.copy_from_slice(&a[at..at + 16]);
                IpAddr::from(octets)
            };
            ProxyHeader::Proxied {
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            }
        }
        // AF_UNSPEC, UDP and AF_UNIX: fall back to the real connection (spec §2.2).
        _ => ProxyHeader::Local,
    })
}

/// [`progress`] for a v2 header.
fn v2_progress(p: &[u8]) -> Result<usize, ProxyHeaderError> {
    let sig = p.len().min(V2_SIGNATURE.len());
    if p[..sig] != V2_SIGNATURE[..sig] {
        return Err(ProxyHeaderError::NotProxy);
    }
    if let Some(&ver_cmd) = p.get(12) {
        if ver_cmd >> 4 != 2 {
            return Err(ProxyHeaderError::V2Version(ver_cmd >> 4));
        }
        if ver_cmd & 0x0f > V2_PROXY {
            return Err(ProxyHeaderError::V2Command(ver_cmd & 0x0f));
        }
    }
    let proxy = p.get(12).is_some_and(|&b| b & 0x0f == V2_PROXY);
    // The address length each defined family byte needs; LOCAL ignores the family.
    let need = match p.get(13) {
        Some(&family) if proxy => Some(match family {
            0x00 => 0,
            0x11 | 0x12 => 12,
            0x21 | 0x22 => 36,
            0x31 | 0x32 => 216,
            _ => return Err(ProxyHeaderError::V2Family(family)),
        }),
        _ => None,
    };
    if p.len() < V2_FIXED_LEN {
        return Ok(V2_FIXED_LEN - p.len());
    }
    let len = usize::from(u16::from_be_bytes([p[14], p[15]]));
    if len > V2_MAX_ADDR_LEN {
        return Err(ProxyHeaderError::V2TooLong {
            len,
            max: V2_MAX_ADDR_LEN,
        });
    }
    if let Some(need) = need
        && len < need
    {
        return Err(ProxyHeaderError::V2AddressLength {
            family: p[13],
            len,
            need,
        });
    }
    (V2_FIXED_LEN + len)
        .checked_sub(p.len())
        .ok_or(ProxyHeaderError::TrailingBytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::{AsyncWriteExt, ReadBuf};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sock(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    // --- CIDRs -----------------------------------------------------------------------------
    #[test]
    fn trusted_proxies_list() {
        let t =
            TrustedProxies::parse(["10.0.0.0/8", "192.168.1.7", "::1/128", "fd00::/8"]).unwrap();
        assert_eq!(t.cidrs().len(), 4);
        assert!(!t.is_empty());
        for yes in [
            "10.1.2.3",
            "::ffff:10.1.2.3",
            "192.168.1.7",
            "::1",
            "fd00::5",
        ] {
            assert!(t.contains(ip(yes)), "{yes}");
        }
        for no in [
            "192.168.1.8",
            "127.0.0.1",
            "fe80::1",
            "203.0.113.1",
            "::ffff:192.168.1.8",
        ] {
            assert!(!t.contains(ip(no)), "{no}");
        }

        let err = TrustedProxies::parse(["10.0.0.0/8", "10.0.0.0/33", "bad"]).unwrap_err();
        assert_eq!(err.to_string(), "\"10.0.0.0/33\": prefix longer than 32");

        let none = TrustedProxies::default();
        assert!(none.is_empty() && !none.contains(ip("127.0.0.1")));
        assert_eq!(TrustedProxies::parse(Vec::<String>::new()).unwrap(), none);

        let collected: TrustedProxies = ["::1".parse::<Cidr>().unwrap()].into_iter().collect();
        assert!(collected.contains(ip("::1")));
    }

    // --- Client address ---------------------------------------------------------------------

    const TRUSTED: [&str; 4] = ["10.0.0.0/8", "192.168.0.0/16", "fd00::/8", "::1"];
    const PEER: &str = "10.0.0.1";

    fn headers(lines: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in lines {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        h
    }

    struct Case {
        name: &'static str,
        peer: &'static str,
        lines: Vec<(&'static str, &'static str)>,
        ip: &'static str,
        vouched: bool,
        proto: Option<Proto>,
    }

    fn case(
        name: &'static str,
        peer: &'static str,
        lines: &[(&'static str, &'static str)],
        ip: &'static str,
        vouched: bool,
        proto: Option<Proto>,
    ) -> Case {
        Case {
            name,
            peer,
            lines: lines.to_vec(),
            ip,
            vouched,
            proto,
        }
    }

    fn run(cases: &[Case]) {
        let trusted = TrustedProxies::parse(TRUSTED).unwrap();
        for c in cases {
            let got = client_ip(ip(c.peer), &headers(&c.lines), &trusted);
            let want = Resolved {
                ip: ip(c.ip),
                vouched: c.vouched,
                proto: c.proto,
            };
            assert_eq!(got, want, "{}", c.name);
        }
    }

    const XFF: &str = "x-forwarded-for";
    const XFP: &str = "x-forwarded-proto";
    const FWD: &str = "forwarded";
    const HTTPS: Option<Proto> = Some(Proto::Https);
    const HTTP: Option<Proto> = Some(Proto::Http);

    // One case per line: name, peer, header lines, expected client, vouched, proto.
    #[rustfmt::skip]
    #[test]
    fn untrusted_peers_are_the_client() {
        let spoofed = [(XFF, "1.2.3.4"), (XFP, "https"), (FWD, "for=1.2.3.4;proto=https")];
        run(&[
            case("spoofed headers", "203.0.113.9", &spoofed, "203.0.113.9", false, None),
            case("no headers", "203.0.113.9", &[], "203.0.113.9", false, None),
            case("mapped peer is given as IPv4", "::ffff:203.0.113.9", &spoofed, "203.0.113.9", false, None),
            case("IPv6 peer", "2001:db8::9", &spoofed, "2001:db8::9", false, None),
        ]);
    }

    #[rustfmt::skip]
    #[test]
    fn x_forwarded_for_walk() {
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        let chain_31 = leak(format!("198.51.100.7{}", ", 10.0.0.3".repeat(31)));
        let chain_32 = leak(format!("198.51.100.7{}", ", 10.0.0.3".repeat(32)));
        let huge = leak(format!("198.51.100.7{}", ", 10.0.0.3".repeat(10_000)));
        let c = "198.51.100.7";
        run(&[
            case("trusted peer, no headers", PEER, &[], PEER, false, None),
            case("client", PEER, &[(XFF, c)], c, true, None),
            case("spoofed element left of the client", PEER, &[(XFF, "6.6.6.6, 198.51.100.7")], c, true, None),
            case("chain of trusted proxies", PEER,
                &[(XFF, "6.6.6.6, 198.51.100.7, 192.168.3.4, 10.9.9.9, fd00::2, ::1")], c, true, None),
            case("all trusted: the leftmost", PEER, &[(XFF, "10.0.0.9, 192.168.0.1")], "10.0.0.9", true, None),
            case("mapped trusted peer", "::ffff:10.0.0.1", &[(XFF, c)], c, true, None),
            case("IPv6 trusted peer", "fd00::1", &[(XFF, c)], c, true, None),
            case("mapped trusted element", PEER, &[(XFF, "198.51.100.7, ::ffff:10.2.3.4")], c, true, None),
            case("mapped client is given as IPv4", PEER, &[(XFF, "::ffff:198.51.100.7")], c, true, None),
            case("IPv4 with port", PEER, &[(XFF, "198.51.100.7:5678")], c, true, None),
            case("bracketed IPv6 with port", PEER, &[(XFF, "[2001:db8::1]:80")], "2001:db8::1", true, None),
            case("bracketed IPv6", PEER, &[(XFF, "[2001:db8::1]")], "2001:db8::1", true, None),
            case("bare IPv6", PEER, &[(XFF, "2001:db8::1")], "2001:db8::1", true, None),
            case("trusted loopback with port", PEER, &[(XFF, "198.51.100.7, [::1]:80")], c, true, None),
            case("whitespace", PEER, &[(XFF, " \t198.51.100.7 ,\t 10.0.0.3 ")], c, true, None),
            case("empty elements", PEER, &[(XFF, "198.51.100.7,, 10.0.0.3, ,")], c, true, None),
            case("several lines: the last is nearest", PEER,
                &[(XFF, "6.6.6.6"), (XFF, "198.51.100.7, 10.0.0.3")], c, true, None),
            case("several lines: the walk crosses lines", PEER,
                &[(XFF, "198.51.100.7"), (XFF, "10.0.0.3"), (XFF, "")], c, true, None),
            case("garbage: the last trusted hop", PEER, &[(XFF, "198.51.100.7, bogus, 10.0.0.3")], "10.0.0.3", true, None),
            case("garbage only", PEER, &[(XFF, "bogus")], PEER, false, None),
            case("unknown stops the walk", PEER, &[(XFF, "198.51.100.7, unknown")], PEER, false, None),
            case("port out of range", PEER, &[(XFF, "198.51.100.7:65536")], PEER, false, None),
            case("empty port", PEER, &[(XFF, "198.51.100.7:")], PEER, false, None),
            case("IPv6 with a port but no brackets", PEER, &[(XFF, "2001:db8::1:80:")], PEER, false, None),
            case("unclosed bracket", PEER, &[(XFF, "[2001:db8::1")], PEER, false, None),
            case("octal-looking IPv4", PEER, &[(XFF, "010.0.0.1")], PEER, false, None),
            case("zone index", PEER, &[(XFF, "fe80::1%eth0")], PEER, false, None),
            case("obfuscated ports are Forwarded's", PEER, &[(XFF, "198.51.100.7:_p")], PEER, false, None),
            case("31 trusted hops and the client", PEER, &[(XFF, chain_31)], c, true, None),
            case("32 trusted hops: the limit", PEER, &[(XFF, chain_32)], "10.0.0.3", true, None),
            case("a huge header", PEER, &[(XFF, huge)], "10.0.0.3", true, None),
        ]);
    }

    #[rustfmt::skip]
    #[test]
    fn forwarded_walk() {
        let c = "198.51.100.7";
        run(&[
            case("client", PEER, &[(FWD, "for=198.51.100.7")], c, true, None),
            case("quoted IPv6 with port", PEER, &[(FWD, "for=\"[2001:db8::1]:4711\"")], "2001:db8::1", true, None),
            case("quoted IPv4 with port, proto, by", PEER,
                &[(FWD, "for=\"198.51.100.7:4711\";proto=https;by=10.0.0.1")], c, true, HTTPS),
            case("names and proto are case-insensitive", PEER, &[(FWD, "For=198.51.100.7;PROTO=HTTPS")], c, true, HTTPS),
            case("whitespace around ; and ,", PEER,
                &[(FWD, " for=198.51.100.7 ; proto=http ,\tfor=10.0.0.3 ")], c, true, HTTP),
            case("wins over X-Forwarded-For", PEER, &[(XFF, "198.51.100.99"), (FWD, "for=198.51.100.7")], c, true, None),
            case("a blank Forwarded does not count", PEER,
                &[(FWD, " "), (XFF, "198.51.100.99")], "198.51.100.99", true, None),
            case("chain: the client element's proto", PEER,
                &[(FWD, "for=6.6.6.6;proto=https, for=198.51.100.7;proto=http, for=10.0.0.3;proto=https")],
                c, true, HTTP),
            case("several lines", PEER, &[(FWD, "for=198.51.100.7"), (FWD, "for=\"[fd00::3]\"")], c, true, None),
            case("obfuscated client: the last trusted hop, its element's proto", PEER,
                &[(FWD, "for=_hidden;proto=https, for=10.0.0.3")], "10.0.0.3", true, HTTPS),
            case("unknown: the peer, with the proto reported for the client", PEER,
                &[(FWD, "for=198.51.100.7, for=unknown;proto=https")], PEER, false, HTTPS),
            case("no for=", PEER, &[(FWD, "proto=https;by=_lb")], PEER, false, HTTPS),
            case("obfuscated port", PEER, &[(FWD, "for=\"198.51.100.7:_p1\"")], c, true, None),
            case("unquoted brackets from a careless proxy", PEER, &[(FWD, "for=[2001:db8::1]:80")], "2001:db8::1", true, None),
            case("comma and escaped quote inside a quoted value", PEER,
                &[(FWD, "for=198.51.100.9;ext=\"a\\\",b\", for=10.0.0.3")], "198.51.100.9", true, None),
            case("an unbalanced quote only spoils the client's part", PEER,
                &[(FWD, "for=\"6.6.6.6, for=198.51.100.7")], c, true, None),
            case("garbage element: the last trusted hop", PEER,
                &[(FWD, "for=198.51.100.7, for=\"[2001:db8::1\", for=10.0.0.3;proto=https")], "10.0.0.3", true, HTTPS),
            case("for twice", PEER, &[(FWD, "for=198.51.100.7;for=10.0.0.3")], PEER, false, None),
            case("proto twice", PEER, &[(FWD, "for=198.51.100.7;proto=http;proto=https")], PEER, false, None),
            case("trailing semicolon", PEER, &[(FWD, "for=198.51.100.7;")], PEER, false, None),
            case("space around =", PEER, &[(FWD, "for = 198.51.100.7")], PEER, false, None),
            case("not a node", PEER, &[(FWD, "for=bogus")], PEER, false, None),
            case("bad obfuscated id", PEER, &[(FWD, "for=_")], PEER, false, None),
            case("empty value", PEER, &[(FWD, "for=")], PEER, false, None),
            case("unterminated quote", PEER, &[(FWD, "for=\"198.51.100.7")], PEER, false, None),
            case("escapes in for= are not decoded", PEER, &[(FWD, "for=\"198.51.100.\\7\"")], PEER, false, None),
            case("junk after a quoted value", PEER, &[(FWD, "for=\"198.51.100.7\"x")], PEER, false, None),
        ]);
    }

    #[rustfmt::skip]
    #[test]
    fn forwarded_proto() {
        let c = "198.51.100.7";
        run(&[
            case("X-Forwarded-Proto alone", PEER, &[(XFP, "https")], PEER, false, HTTPS),
            case("any case", PEER, &[(XFP, "HTTPS")], PEER, false, HTTPS),
            case("http", PEER, &[(XFP, " http ")], PEER, false, HTTP),
            case("the last element", PEER, &[(XFF, c), (XFP, "http, https")], c, true, HTTPS),
            case("the last line", PEER, &[(XFP, "https"), (XFP, "http")], PEER, false, HTTP),
            case("empty elements skipped", PEER, &[(XFP, "https, ")], PEER, false, HTTPS),
            case("only http and https", PEER, &[(XFP, "ftp")], PEER, false, None),
            case("no partial match", PEER, &[(XFP, "httpsx")], PEER, false, None),
            case("X-Forwarded-Proto is ignored with Forwarded", PEER,
                &[(FWD, "for=198.51.100.7"), (XFP, "https")], c, true, None),
            case("Forwarded proto=ftp", PEER, &[(FWD, "for=198.51.100.7;proto=ftp")], c, true, None),
            case("quoted proto", PEER, &[(FWD, "for=198.51.100.7;proto=\"https\"")], c, true, HTTPS),
            case("untrusted peer", "203.0.113.9", &[(XFP, "https")], "203.0.113.9", false, None),
        ]);
        assert_eq!(Proto::Https.to_string(), "https");
        assert_eq!(Proto::Http.as_str(), "http");
    }

    #[test]
    fn obs_text_in_headers_is_garbage_not_a_panic() {
        let trusted = TrustedProxies::parse(TRUSTED).unwrap();
        let mut h = HeaderMap::new();
        h.append(
            FWD,
            HeaderValue::from_bytes(b"for=\"\xff\xfe\", for=10.0.0.3").unwrap(),
        );
        h.append(XFF, HeaderValue::from_bytes(b"\xff, 10.0.0.3").unwrap());
        let got = client_ip(ip(PEER), &h, &trusted);
        assert_eq!((got.ip, got.vouched), (ip("10.0.0.3"), true));
        h.remove(FWD);
        let got = client_ip(ip(PEER), &h, &trusted);
        assert_eq!((got.ip, got.vouched), (ip("10.0.0.3"), true));
    }

    // --- PROXY protocol ---------------------------------------------------------------------

    /// Hands out at most `chunk` bytes per read, and counts the reads.
    struct Chunked<'a> {
        data: &'a [u8],
        chunk: usize,
        reads: usize,
    }

    impl AsyncRead for Chunked<'_> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let n = self.chunk.min(self.data.len()).min(buf.remaining());
            let (now, later) = self.data.split_at(n);
            buf.put_slice(now);
            self.data = later;
            self.reads += 1;
            Poll::Ready(Ok(()))
        }
    }

    /// Reads a header from `data` in chunks of `chunk` bytes: the outcome and the unread rest.
    fn read_chunked(data: &[u8], chunk: usize) -> (Result<ProxyHeader, ProxyHeaderError>, &[u8]) {
        let mut reader = Chunked {
            data,
            chunk,
            reads: 0,
        };
        let result = block_on(read_proxy_header(&mut reader));
        (result, reader.data)
    }

    fn v2_raw(ver_cmd: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(ver_cmd);
        out.push(family);
        out.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
        out.extend_from_slice(block);
        out
    }

    /// A v2 `PROXY` header for TCP between `source` and `destination` (same family), with
    /// `tlvs` after the addresses.
    fn encode_v2(source: SocketAddr, destination: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
        let mut block = Vec::new();
        let family = match (source.ip(), destination.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                block.extend_from_slice(&s.octets());
                block.extend_from_slice(&d.octets());
                V2_TCP4
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                block.extend_from_slice(&s.octets());
                block.extend_from_slice(&d.octets());
                V2_TCP6
            }
            _ => panic!("mixed families"),
        };
        block.extend_from_slice(&source.port().to_be_bytes());
        block.extend_from_slice(&destination.port().to_be_bytes());
        block.extend_from_slice(tlvs);
        v2_raw(0x21, family, &block)
    }

    fn encode_v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
        let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
        format!(
            "PROXY {family} {} {} {} {}\r\n",
            source.ip(),
            destination.ip(),
            source.port(),
            destination.port()
        )
        .into_bytes()
    }

    fn proxied(source: &str, destination: &str) -> ProxyHeader {
        ProxyHeader::Proxied {
            source: sock(source),
            destination: sock(destination),
        }
    }

    const FULL6: &str = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";

    /// Valid headers and what they say.
    fn valid_headers() -> Vec<(Vec<u8>, ProxyHeader)> {
        let tlvs = [0x04, 0x00, 0x03, 1, 2, 3, 0xea, 0x00, 0x01, 0x7f];
        let mut unix_block = vec![b'/'; 216];
        unix_block.extend_from_slice(&tlvs);
        vec![
            (
                b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n".to_vec(),
                proxied("192.168.0.1:56324", "192.168.0.11:443"),
            ),
            (
                b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n".to_vec(),
                proxied("0.0.0.0:0", "255.255.255.255:65535"),
            ),
            (
                b"PROXY TCP6 2001:db8::1 2001:db8::2 4711 443\r\n".to_vec(),
                proxied("[2001:db8::1]:4711", "[2001:db8::2]:443"),
            ),
            (
                b"PROXY TCP6 :: ::1 1 2\r\n".to_vec(),
                proxied("[::]:1", "[::1]:2"),
            ),
            (
                b"PROXY TCP6 ::ffff:10.1.2.3 ::ffff:10.1.2.4 1 2\r\n".to_vec(),
                proxied("[::ffff:10.1.2.3]:1", "[::ffff:10.1.2.4]:2"),
            ),
            (
                format!("PROXY TCP6 {FULL6} {FULL6} 65535 65535\r\n").into_bytes(),
                proxied(&format!("[{FULL6}]:65535"), &format!("[{FULL6}]:65535")),
            ),
            (b"PROXY UNKNOWN\r\n".to_vec(), ProxyHeader::Local),
            (
                b"PROXY UNKNOWN whatever it says\r\n".to_vec(),
                ProxyHeader::Local,
            ),
            (
                format!("PROXY UNKNOWN {FULL6} {FULL6} 65535 65535\r\n").into_bytes(),
                ProxyHeader::Local,
            ),
            (
                encode_v2(sock("192.168.0.1:56324"), sock("192.168.0.11:443"), &[]),
                proxied("192.168.0.1:56324", "192.168.0.11:443"),
            ),
            (
                encode_v2(sock("[2001:db8::1]:4711"), sock("[2001:db8::2]:443"), &[]),
                proxied("[2001:db8::1]:4711", "[2001:db8::2]:443"),
            ),
            (
                encode_v2(sock("192.168.0.1:1"), sock("192.168.0.11:2"), &tlvs),
                proxied("192.168.0.1:1", "192.168.0.11:2"),
            ),
            (
                encode_v2(sock("192.168.0.1:1"), sock("192.168.0.11:2"), &[0; 1012]),
                proxied("192.168.0.1:1", "192.168.0.11:2"),
            ),
            (v2_raw(0x20, 0x00, &[]), ProxyHeader::Local),
            (v2_raw(0x20, 0x11, &[9; 12]), ProxyHeader::Local),
            // LOCAL ignores the family byte altogether.
            (v2_raw(0x20, 0x45, &[9; 3]), ProxyHeader::Local),
            (v2_raw(0x21, 0x00, &[]), ProxyHeader::Local),
            (v2_raw(0x21, 0x00, &tlvs), ProxyHeader::Local),
            (v2_raw(0x21, 0x12, &[9; 12]), ProxyHeader::Local),
            (v2_raw(0x21, 0x22, &[9; 36]), ProxyHeader::Local),
            (v2_raw(0x21, 0x31, &unix_block), ProxyHeader::Local),
            (v2_raw(0x21, 0x32, &[0; 216]), ProxyHeader::Local),
        ]
    }

    #[test]
    fn reads_each_form_and_leaves_the_rest() {
        for (header, want) in valid_headers() {
            let shown = String::from_utf8_lossy(&header).into_owned();
            let parsed = if header[0] == b'P' {
                parse_v1(&header)
            } else {
                parse_v2(&header)
            };
            assert_eq!(parsed.unwrap(), want, "{shown:?}");
            let mut data = header.clone();
            data.extend_from_slice(REQUEST);
            for chunk in [1, 2, 3, 7, 16, 64, 4096] {
                let (got, rest) = read_chunked(&data, chunk);
                assert_eq!(got.unwrap(), want, "{shown:?} in chunks of {chunk}");
                assert_eq!(
                    rest, REQUEST,
                    "{shown:?} in chunks of {chunk}: the rest is unread"
                );
            }
            // A plain byte slice too (one read gets everything asked for).
            let mut slice = &data[..];
            assert_eq!(block_on(read_proxy_header(&mut slice)).unwrap(), want);
            assert_eq!(slice, REQUEST);
        }
    }

    #[test]
    fn a_few_reads_per_header() {
        for (header, reads) in [
            (&b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"[..], 6),
            (b"PROXY TCP6 2001:db8::1 2001:db8::2 4711 443\r\n", 7),
            (b"PROXY UNKNOWN\r\n", 1),
            (
                &encode_v2(sock("192.168.0.1:1"), sock("192.168.0.11:2"), &[]),
                3,
            ),
        ] {
            let data = [header, REQUEST].concat();
            let mut reader = Chunked {
                data: &data,
                chunk: usize::MAX,
                reads: 0,
            };
            assert!(block_on(read_proxy_header(&mut reader)).is_ok());
            assert_eq!(reader.data, REQUEST);
            assert_eq!(reader.reads, reads, "{:?}", String::from_utf8_lossy(header));
        }
    }

    #[test]
    fn source_or_the_real_peer() {
        let peer = sock("10.0.0.1:5000");
        assert_eq!(ProxyHeader::Local.source_or(peer), peer);
        let h = proxied("198.51.100.7:4711", "10.0.0.2:443");
        assert_eq!(h.source_or(peer), sock("198.51.100.7:4711"));
    }

    #[test]
    fn truncated_headers() {
        for (header, _) in valid_headers() {
            for end in 0..header.len() {
                let prefix = &header[..end];
                let (got, rest) = read_chunked(prefix, 5);
                assert!(
                    matches!(got, Err(ProxyHeaderError::Truncated)),
                    "{:?}: {got:?}",
                    String::from_utf8_lossy(prefix)
                );
                assert!(rest.is_empty());
                if end > 0 {
                    let parsed = if header[0] == b'P' {
                        parse_v1(prefix)
                    } else {
                        parse_v2(prefix)
                    };
                    assert!(
                        matches!(parsed, Err(ProxyHeaderError::Truncated)),
                        "{parsed:?}"
                    );
                }
            }
        }
    }

    /// Reads `data` followed by a request in several chunk sizes: every read fails with
    /// `message`, having read at most `limit` bytes.
    fn assert_fails(data: &[u8], message: &str, limit: usize) {
        let shown = String::from_utf8_lossy(data);
        let with_rest = [data, REQUEST].concat();
        for chunk in [1, 3, 4096] {
            let (got, rest) = read_chunked(&with_rest, chunk);
            let err = got.expect_err(&shown);
            assert_eq!(err.to_string(), message, "{shown:?} in chunks of {chunk}");
            assert!(
                with_rest.len() - rest.len() <= limit,
                "{shown:?}: read too much"
            );
        }
    }

    #[rustfmt::skip]
    #[test]
    fn v1_errors() {
        const NOT: &str = "the connection does not start with a PROXY protocol header";
        let v1 = |reason: &str| format!("PROXY protocol v1: {reason}");
        let protocol = v1("unknown protocol (expected TCP4, TCP6 or UNKNOWN)");
        let (src, dst) = (v1("bad source address"), v1("bad destination address"));
        let (sport, dport) = (v1("bad source port"), v1("bad destination port"));
        let (many, few) = (v1("too many fields"), v1("too few fields"));
        let empty = v1("empty field (fields are separated by exactly one space)");
        let (lf, cr) = (v1("line feed without a carriage return"), v1("carriage return without a line feed"));
        let long = "PROXY protocol v1: no CRLF within 107 bytes".to_owned();
        let long_unknown = format!("PROXY UNKNOWN {}", "a".repeat(100));
        let long_line = format!("PROXY UNKNOWN {}\r\n", "a".repeat(92));
        let cases: Vec<(&[u8], &str)> = vec![
            (b"GET / HTTP/1.1\r\n\r\n", NOT),
            (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", NOT),
            (b"PROXX TCP4 1.2.3.4 5.6.7.8 1 2\r\n", NOT),
            (b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", NOT),
            (b"PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n", NOT),
            (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", &protocol),
            (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", &protocol),
            (b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", &protocol),
            (b"PROXY UNKNOWNX\r\n", &protocol),
            (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", &empty),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", &many),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", &many),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", &few),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8\r\n", &few),
            (b"PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n", &src),
            (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", &src),
            (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", &src),
            (b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n", &src),
            (b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n", &dst),
            (b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", &src),
            (b"PROXY TCP6 fe80::1%1 ::1 1 2\r\n", &src),
            (b"PROXY TCP6 ::1 ::1:: 1 2\r\n", &dst),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", &sport),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", &sport),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", &dport),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2x\r\n", &dport),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", &lf),
            (b"PROXY TCP4 1.2.3.4\n5.6.7.8 1 2\r\n", &lf),
            (b"PROXY UNKNOWN \n\r\n", &lf),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", &cr),
            (b"PROXY UNKNOWN\r\r\n", &cr),
            (long_unknown.as_bytes(), &long),
            (long_line.as_bytes(), &long),
        ];
        for (data, message) in cases {
            // Never more than a v1 line is read.
            assert_fails(data, message, V1_MAX_LEN);
        }
    }

    #[test]
    fn v1_parser_edges() {
        use ProxyHeaderError as E;
        // Exactly 107 bytes is fine; the parser wants exactly one line.
        let max = format!("PROXY UNKNOWN {}\r\n", "a".repeat(91));
        assert_eq!(max.len(), V1_MAX_LEN);
        assert_eq!(parse_v1(max.as_bytes()).unwrap(), ProxyHeader::Local);
        let trailing = parse_v1(b"PROXY UNKNOWN\r\nGET");
        assert!(matches!(trailing, Err(E::TrailingBytes)), "{trailing:?}");
        assert!(matches!(parse_v1(b""), Err(E::Truncated)));
        assert!(matches!(parse_v1(b"PROXY TCP4 1.2"), Err(E::Truncated)));
        assert!(matches!(
            parse_v1(&encode_v2(sock("1.2.3.4:1"), sock("5.6.7.8:2"), &[])),
            Err(E::NotProxy)
        ));
        // Garbage fails on the bytes that show it, without reading on.
        let (got, rest) = read_chunked(b"PROXY TCP4 1.2.3.x 5.6.7.8 1 2\r\n", 1);
        assert!(matches!(got, Err(E::V1("bad source address"))), "{got:?}");
        assert_eq!(rest, b" 5.6.7.8 1 2\r\n");
    }

    #[rustfmt::skip]
    #[test]
    fn v2_errors() {
        const NOT: &str = "the connection does not start with a PROXY protocol header";
        let mut bad_sig = v2_raw(0x21, 0x11, &[0; 12]);
        bad_sig[10] = b'X';
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (bad_sig, NOT),
            (v2_raw(0x11, 0x11, &[0; 12]), "PROXY protocol v2: version 1 (only 2 is defined)"),
            (v2_raw(0x31, 0x11, &[0; 12]), "PROXY protocol v2: version 3 (only 2 is defined)"),
            (v2_raw(0x01, 0x11, &[0; 12]), "PROXY protocol v2: version 0 (only 2 is defined)"),
            (v2_raw(0x22, 0x11, &[0; 12]), "PROXY protocol v2: undefined command 0x2"),
            (v2_raw(0x2f, 0x11, &[0; 12]), "PROXY protocol v2: undefined command 0xf"),
            (v2_raw(0x21, 0x10, &[0; 12]), "PROXY protocol v2: undefined address family and transport 0x10"),
            (v2_raw(0x21, 0x01, &[0; 12]), "PROXY protocol v2: undefined address family and transport 0x01"),
            (v2_raw(0x21, 0x13, &[0; 12]), "PROXY protocol v2: undefined address family and transport 0x13"),
            (v2_raw(0x21, 0x41, &[0; 12]), "PROXY protocol v2: undefined address family and transport 0x41"),
            (v2_raw(0x21, 0x11, &[0; 11]),
                "PROXY protocol v2: address block of 11 bytes for family 0x11, which needs 12"),
            (v2_raw(0x21, 0x21, &[0; 35]),
                "PROXY protocol v2: address block of 35 bytes for family 0x21, which needs 36"),
            (v2_raw(0x21, 0x31, &[0; 215]),
                "PROXY protocol v2: address block of 215 bytes for family 0x31, which needs 216"),
            (v2_raw(0x21, 0x11, &[0; 1025]),
                "PROXY protocol v2: address block of 1025 bytes (at most 1024 accepted)"),
            (v2_raw(0x20, 0x00, &[0; 65535]),
                "PROXY protocol v2: address block of 65535 bytes (at most 1024 accepted)"),
        ];
        for (data, message) in cases {
            // Nothing past the fixed header is read for these.
            assert_fails(&data, message, V2_FIXED_LEN);
            assert_eq!(parse_v2(&data).unwrap_err().to_string(), message);
        }
    }

    #[test]
    fn v2_parser_edges() {
        use ProxyHeaderError as E;
        let mut long = encode_v2(sock("1.2.3.4:1"), sock("5.6.7.8:2"), &[]);
        long.push(0);
        assert!(matches!(parse_v2(&long), Err(E::TrailingBytes)));
        assert!(matches!(parse_v2(&long[..27]), Err(E::Truncated)));
        assert!(matches!(parse_v2(&long[..5]), Err(E::Truncated)));
        assert!(matches!(parse_v2(b"PROXY UNKNOWN\r\n"), Err(E::NotProxy)));
        assert!(matches!(parse_v2(b""), Err(E::Truncated)));
    }

    #[tokio::test]
    async fn connection_speaking_something_else_fails_at_once() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GE").await.unwrap();
        // The client keeps the connection open and says no more: no waiting for 15 bytes.
        let got = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            read_proxy_header(&mut server),
        )
        .await
        .expect("no wait");
        assert!(matches!(got, Err(ProxyHeaderError::NotProxy)), "{got:?}");
        drop(client);
    }

    #[tokio::test]
    async fn header_in_pieces_over_a_stream() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            for piece in [
                &b"PROXY TCP6 2001:d"[..],
                b"b8::1 2001:db8::2 4",
                b"711 443\r",
                b"\n\x16\x03\x01 a ClientHello",
            ] {
                client.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let got = read_proxy_header(&mut server).await.unwrap();
        assert_eq!(got, proxied("[2001:db8::1]:4711", "[2001:db8::2]:443"));
        writer.await.unwrap();
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"\x16\x03\x01 a ClientHello");
    }

    #[tokio::test]
    async fn io_errors_and_eof() {
        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        let got = read_proxy_header(&mut server).await;
        assert!(matches!(got, Err(ProxyHeaderError::Truncated)), "{got:?}");

        struct Failing;
        impl AsyncRead for Failing {
            fn poll_read(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                _: &mut ReadBuf<'_>,
            ) -> Poll<std::io::Result<()>> {
                Poll::Ready(Err(std::io::Error::from(
                    std::io::ErrorKind::ConnectionReset,
                )))
            }
        }
        let got = read_proxy_header(&mut Failing).await;
        assert!(
            matches!(got, Err(ProxyHeaderError::Io(ref e)) if e.kind() == std::io::ErrorKind::ConnectionReset)
        );
        // A trait object reads too.
        let mut slice: &[u8] = b"PROXY UNKNOWN\r\n";
        let dynamic: &mut (dyn AsyncRead + Unpin) = &mut slice;
        assert_eq!(
            read_proxy_header(dynamic).await.unwrap(),
            ProxyHeader::Local
        );
    }

    fn ipv4() -> impl Strategy<Value = IpAddr> {
        any::<u32>().prop_map(|v| IpAddr::V4(Ipv4Addr::from(v)))
    }

    fn ipv6() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u128>(),
            0u128..1024,
            any::<u32>().prop_map(|v| 0xffff_0000_0000 | u128::from(v)),
            (any::<u16>(), any::<u16>()).prop_map(|(a, b)| u128::from(a) << 112 | u128::from(b)),
        ]
        .prop_map(|v| IpAddr::V6(Ipv6Addr::from(v)))
    }

    fn address_pair() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
        prop_oneof![(ipv4(), ipv4()), (ipv6(), ipv6())].prop_flat_map(|(s, d)| {
            (any::<u16>(), any::<u16>())
                .prop_map(move |(sp, dp)| (SocketAddr::new(s, sp), SocketAddr::new(d, dp)))
        })
    }

    /// Bytes that look like a header for a while and then go anywhere.
    fn header_like() -> impl Strategy<Value = Vec<u8>> {
        let tail = proptest::collection::vec(any::<u8>(), 0..1100);
        let text = "[0-9a-fA-F:. \r\nTCPUNKOW46]{0,120}".prop_map(String::into_bytes);
        prop_oneof![
            tail.clone(),
            tail.clone().prop_map(|t| [&V2_SIGNATURE[..], &t].concat()),
            (0u8..=0xff, 0u8..=0xff, 0u16..1100, tail.clone()).prop_map(|(vc, fam, len, t)| {
                [&V2_SIGNATURE[..], &[vc, fam], &len.to_be_bytes(), &t].concat()
            }),
            text.clone().prop_map(|t| [&b"PROXY "[..], &t].concat()),
            text.prop_map(|t| [&b"PROXY TCP4 "[..], &t].concat()),
            address_pair().prop_flat_map(move |(s, d)| {
                let line = encode_v1(s, d);
                (0..line.len(), tail.clone()).prop_map(move |(cut, t)| {
                    // A valid line with one byte changed somewhere.
                    let mut bad = line.clone();
                    bad[cut] = t.first().copied().unwrap_or(b' ');
                    bad.extend_from_slice(&t);
                    bad
                })
            }),
        ]
    }

    proptest! {
        /// Any bytes: no panic; the outcome does not depend on how the bytes arrive; a header
        /// that is accepted is exactly what the parser accepts, and nothing after it is read.
        #[test]
        fn never_panics_and_never_overreads(data in header_like(), chunk in 1usize..9) {
            let (whole, whole_rest) = read_chunked(&data, usize::MAX);
            let (pieces, pieces_rest) = read_chunked(&data, chunk);
            match (&whole, &pieces) {
                (Ok(a), Ok(b)) => {
                    prop_assert_eq!(a, b);
                    prop_assert_eq!(whole_rest, pieces_rest);
                    let used = &data[..data.len() - whole_rest.len()];
                    let parsed = if used[0] == b'P' { parse_v1(used) } else { parse_v2(used) };
                    prop_assert_eq!(&parsed.unwrap(), a);
                }
                (Err(_), Err(_)) => {}
                _ => prop_assert!(false, "{:?} vs {:?}", whole, pieces),
            }
        }

        /// v2: parse(encode(addresses)) is the addresses, with any TLV bytes after them, and
        /// the reader stops at the header's end.
        #[test]
        fn v2_round_trip(
            (source, destination) in address_pair(),
            tlvs in proptest::collection::vec(any::<u8>(), 0..300),
            rest in proptest::collection::vec(any::<u8>(), 0..40),
            chunk in 1usize..40,
        ) {
            let header = encode_v2(source, destination, &tlvs);
            let want = ProxyHeader::Proxied { source, destination };
            prop_assert_eq!(parse_v2(&header).unwrap(), want);
            let data = [&header[..], &rest].concat();
            let (got, left) = read_chunked(&data, chunk);
            prop_assert_eq!(got.unwrap(), want);
            prop_assert_eq!(left, &rest[..]);
        }

        /// v1: the same, and no prefix of a valid line asks for more bytes than the line has.
        #[test]
        fn v1_round_trip(
            (source, destination) in address_pair(),
            rest in proptest::collection::vec(any::<u8>(), 0..40),
            chunk in 1usize..40,
        ) {
            let line = encode_v1(source, destination);
            let want = ProxyHeader::Proxied { source, destination };
            prop_assert_eq!(parse_v1(&line).unwrap(), want);
            for end in 0..line.len() {
                let need = progress(&line[..end]).unwrap();
                prop_assert!(need >= 1 && end + need <= line.len(), "{} at {}", need, end);
            }
            let data = [&line[..], &rest].concat();
            let (got, left) = read_chunked(&data, chunk);
            prop_assert_eq!(got.unwrap(), want);
            prop_assert_eq!(left, &rest[..]);
        }
    }
}
