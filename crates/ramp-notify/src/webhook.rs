//! A generic JSON webhook, signed.
//!
//! Each POST carries the notice as JSON (the outbox entry's `notice` with its numbers, plus
//! `text`, the same message as plain text) and these headers:
//!
//! - `Idempotency-Key` / `X-Ramp-Notice`: `ramp-<rollout>-<id>`, the same on every attempt;
//! - `X-Ramp-Timestamp`: Unix seconds when the attempt was signed;
//! - `X-Ramp-Signature`: `v1=` and the lowercase hex HMAC-SHA256, keyed with the channel's
//!   secret, of `<timestamp>.<body>` (the exact bytes received).
//!
//! A receiver recomputes the HMAC over the timestamp, a dot and the raw body, compares in
//! constant time, and refuses timestamps more than five minutes old (replays). In Python:
//!
//! ```text
//! import hmac, hashlib, time
//! def verify(secret: bytes, headers, body: bytes) -> bool:
//!     ts = headers["X-Ramp-Timestamp"]
//!     want = "v1=" + hmac.new(secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
//!     fresh = abs(time.time() - int(ts)) < 300
//!     return fresh and hmac.compare_digest(want, headers["X-Ramp-Signature"])
//! ```

use crate::{Attempt, Notifier, NotifyError, Sent};
use hmac::{Hmac, Mac};
use ramp_store::BoxFuture;
use sha2::Sha256;

/// A webhook channel.
pub struct Webhook {
    name: String,
    url: String,
    key: Option<String>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("name", &self.name)
            .field("signed", &self.key.is_some())
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// POSTs to `url`, signing with `key` when given.
    pub fn new(name: String, url: String, key: Option<String>) -> Self {
        Webhook { name, url, key }
    }
}

/// `v1=<hex HMAC-SHA256(key, "<timestamp>.<body>")>`.
pub fn signature(key: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        // HMAC takes keys of any length.
        Err(_) => unreachable!("HMAC accepts every key length"),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(3 + digest.len() * 2);
    out.push_str("v1=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The body a webhook receives.
pub fn body(attempt: &Attempt<'_>) -> Vec<u8> {
    let e = attempt.entry;
    let doc = serde_json::json!({
        "id": attempt.key(),
        "rollout": e.rollout,
        "seq": e.seq,
        "at": e.at,
        "attempt": attempt.number,
        "notice": e.notice,
        "text": crate::message::text(e),
    });
    serde_json::to_vec(&doc).unwrap_or_default()
}

/// Unix seconds now: the signature's timestamp (a receiver's replay window), not a decision.
#[allow(clippy::disallowed_methods)]
fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Notifier for Webhook {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver<'a>(&'a self, attempt: Attempt<'a>) -> BoxFuture<'a, Result<Sent, NotifyError>> {
        Box::pin(async move {
            let body = body(&attempt);
            let ts = unix_seconds();
            let key = attempt.key();
            let mut headers = vec![
                ("idempotency-key", key.clone()),
                ("x-ramp-notice", key),
                ("x-ramp-timestamp", ts.to_string()),
            ];
            if let Some(k) = &self.key {
                headers.push(("x-ramp-signature", signature(k.as_bytes(), ts, &body)));
            }
            let what = format!("webhook {}", self.name);
            crate::http::post_json(&what, &self.url, &headers, body).await?;
            Ok(Sent::default())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_published_hmac_sha256() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Ours signs "<timestamp>.<body>".
        let sig = signature(b"Jefe", 1, b"what do ya want for nothing?");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"1.what do ya want for nothing?");
        let want: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(sig, format!("v1={want}"));
    }
}
