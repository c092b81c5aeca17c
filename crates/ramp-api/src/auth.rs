//! Bearer tokens and roles. Only SHA-256 hashes of tokens are kept; a presented token is hashed
//! and compared with every known hash in constant time.

use super::ApiError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read status, events and metrics.
    Viewer,
    /// Read, and pause, resume, approve, promote and roll back.
    Operator,
    /// Everything, including creating rollouts.
    Admin,
    /// Send signals (and Alertmanager webhooks) only; cannot read.
    Ingest,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Operator, Role::Admin, Role::Ingest];

    /// The role's name in configuration and the API.
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::Ingest => "ingest",
        }
    }

    /// Whether this role may do `access`.
    pub(crate) fn allows(self, access: Access) -> bool {
        match access {
            Access::Read => matches!(self, Role::Viewer | Role::Operator | Role::Admin),
            Access::Operate => matches!(self, Role::Operator | Role::Admin),
            Access::Create => self == Role::Admin,
            Access::Ingest => matches!(self, Role::Ingest | Role::Admin),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = ApiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| ApiError::UnknownRole(s.to_string()))
    }
}

/// What an endpoint needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Status, events, metrics.
    Read,
    /// Operator commands.
    Operate,
    /// Creating rollouts.
    Create,
    /// Signals.
    Ingest,
}

impl Access {
    /// The roles that may, for error messages.
    pub(crate) fn roles(self) -> &'static str {
        match self {
            Access::Read => "viewer, operator or admin",
            Access::Operate => "operator or admin",
            Access::Create => "admin",
            Access::Ingest => "ingest or admin",
        }
    }
}

struct Entry {
    name: String,
    role: Role,
    hash: [u8; 32],
}

/// The token of an `Authorization: Bearer <token>` header value (`None` when malformed or
/// another scheme).
pub(crate) fn bearer(value: &http::HeaderValue) -> Option<&str> {
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}

/// The known tokens: SHA-256 hashes with a name (recorded as `by` in the journal) and a role.
/// The tokens themselves are never stored.
#[derive(Default)]
pub struct Tokens {
    entries: Vec<Entry>,
}

impl fmt::Debug for Tokens {
    // Names and roles only: not even the hashes are printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| (&e.name, e.role)))
            .finish()
    }
}

impl Tokens {
    /// No tokens: every authenticated endpoint answers 401.
    pub fn new() -> Self {
        Tokens::default()
    }

    /// Adds a token (only its hash is kept).
    pub fn add(&mut self, name: &str, role: Role, token: &str) {
        self.entries.push(Entry {
            name: name.to_string(),
            role,
            hash: digest(token),
        });
    }

    /// Adds a token by its SHA-256 hash (64 hex digits, either case).
    pub fn add_hashed(&mut self, name: &str, role: Role, sha256_hex: &str) -> Result<(), ApiError> {
        let invalid = || ApiError::InvalidHash {
            name: name.to_string(),
        };
        let hex = sha256_hex.trim().as_bytes();
        if hex.len() != 64 {
            return Err(invalid());
        }
        let mut hash = [0u8; 32];
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            let hi = hex_value(pair[0]).ok_or_else(invalid)?;
            let lo = hex_value(pair[1]).ok_or_else(invalid)?;
            hash[i] = hi << 4 | lo;
        }
        self.entries.push(Entry {
            name: name.to_string(),
            role,
            hash,
        });
        Ok(())
    }

    /// A new random token: 32 bytes from the operating system as `ramp_` and 64 hex digits.
    ///
    /// # Panics
    /// When the operating system has no random source to offer.
    pub fn generate() -> String {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("the operating system provides random bytes");
        format!("ramp_{}", to_hex(&bytes))
    }

    /// The lowercase hex SHA-256 of a token, as configuration stores it.
    pub fn hash(token: &str) -> String {
        to_hex(&digest(token))
    }

    /// Who a presented token belongs to. The presented token's hash is compared with every
    /// entry in constant time, without stopping at a match. An empty token never matches.
    pub fn check(&self, presented: &str) -> Option<(String, Role)> {
        if presented.is_empty() {
            return None;
        }
        let hash = digest(presented);
        let mut found = Choice::from(0);
        let mut index = 0u64;
        for (i, entry) in self.entries.iter().enumerate() {
            let same = entry.hash.ct_eq(&hash);
            index = u64::conditional_select(&index, &(i as u64), same);
            found |= same;
        }
        if bool::from(found) {
            let entry = &self.entries[index as usize];
            Some((entry.name.clone(), entry.role))
        } else {
            None
        }
    }

    /// True when no token is configured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many tokens are configured.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_input() {
        assert_eq!(
            Tokens::hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn last_matching_entry_is_found_among_many() {
        let mut t = Tokens::new();
        for i in 0..10 {
            t.add(&format!("t{i}"), Role::Viewer, &format!("token-{i}"));
        }
        assert_eq!(t.check("token-7"), Some(("t7".into(), Role::Viewer)));
        assert_eq!(t.check("token-0"), Some(("t0".into(), Role::Viewer)));
        assert_eq!(t.check("token-10"), None);
    }
}
