//! The routing decision: cohort key → bucket → variant, against the current share.
//!
//! The share is the only thing that changes while the proxy runs; it lives in one `AtomicU16`
//! (written with Release, read with Acquire), so a [`Routing::set_share`] applies to the very
//! next request and the request path never takes a lock.

use ramp_core::cohort::{self, Salt, ShareBp, Variant};
use std::sync::atomic::{AtomicU16, Ordering};

/// The current traffic split, shared by the proxy and the controller.
#[derive(Debug)]
pub struct Routing {
    salt: Salt,
    share_bp: AtomicU16,
}

impl Routing {
    /// Routing for a cohort salt (the plan's `cohort.salt`), starting at `share`.
    pub fn new(salt: &str, share: ShareBp) -> Self {
        Routing {
            salt: Salt::new(salt),
            share_bp: AtomicU16::new(share.bp()),
        }
    }

    /// The current canary share.
    pub fn share(&self) -> ShareBp {
        // Only `set_share` writes, always a valid share.
        ShareBp::new(self.share_bp.load(Ordering::Acquire)).unwrap_or(ShareBp::ZERO)
    }

    /// Sets the canary share; the next request routed sees it.
    pub fn set_share(&self, share: ShareBp) {
        self.share_bp.store(share.bp(), Ordering::Release);
    }

    /// The salt's precomputed seed.
    pub fn salt(&self) -> Salt {
        self.salt
    }

    /// The variant for a request with cohort key `key` (formula v1:
    /// `bucket(salt, key) < share_bp`).
    #[inline]
    pub fn route(&self, key: &[u8]) -> Variant {
        let share = self.share_bp.load(Ordering::Acquire);
        // Shares 0 and 100% need no hash.
        if share == 0 {
            return Variant::Stable;
        }
        if share >= cohort::BUCKETS || cohort::bucket(self.salt, key) < share {
            Variant::Canary
        } else {
            Variant::Stable
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_like_the_core_formula() {
        let r = Routing::new("checkout-v2", ShareBp::new(2392).unwrap());
        // bucket("user-42") under "checkout-v2" is 2392 (published vector).
        assert_eq!(r.route(b"user-42"), Variant::Stable);
        r.set_share(ShareBp::new(2393).unwrap());
        assert_eq!(r.share().bp(), 2393);
        assert_eq!(r.route(b"user-42"), Variant::Canary);
        for share in [0u16, 1, 500, 2000, 9_999, 10_000] {
            let s = ShareBp::new(share).unwrap();
            r.set_share(s);
            for i in 0..200 {
                let key = format!("user-{i}");
                assert_eq!(
                    r.route(key.as_bytes()),
                    cohort::assign(Salt::new("checkout-v2"), key.as_bytes(), s)
                );
            }
        }
    }
}
