//! The one outcome classification table: how an answer (or the lack of one) counts as evidence.
//!
//! The proxy and the simulator both classify every request with [`classify`], so a rule such
//! as "a 429 is a rate-limit hit, not an error" is written once and holds for live traffic and
//! rehearsals alike. The table:
//!
//! | answer | class |
//! | --- | --- |
//! | 2xx, 3xx, 101 (an upgrade accepted: WebSocket) | [`Class::Success`] |
//! | 429 | [`Class::RateLimited`] |
//! | 401, 403 | [`Class::AuthFailure`] |
//! | any other 4xx | [`Class::ClientError`] |
//! | 5xx | [`Class::Error`] |
//! | upstream refused or unreachable (client gets 502) | [`Class::Error`] |
//! | upstream broke the connection (502) | [`Class::Error`] |
//! | upstream did not answer in time (504) | [`Class::Error`] |
//! | upstream's response body broke or stalled after its head (any status) | [`Class::Error`] |
//! | the variant's bulkhead was full: too many requests waiting on it (503) | [`Class::Error`] |
//! | the client went away first (logged as 499) | [`Class::Neither`] |
//! | the client's own request failed (aborted or stalled upload, bad body: 400/408) | [`Class::Neither`] |
//! | 1xx and anything else | [`Class::Neither`] |
//!
//! Every classified request counts as a request; the class says which counter it adds to
//! besides. A request is classified when its response *ends*: a 200 whose body the upstream
//! resets half-way is an error, not a success. An upstream is blamed only for what it did: a
//! client that leaves, uploads too slowly or breaks its own request never counts against the
//! variant it was routed to; an upstream that refuses, times out, resets, stalls or answers
//! 5xx always does.

use serde::{Deserialize, Serialize};

/// What became of one request, as the proxy (or the simulator) saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "answer", content = "status", rename_all = "snake_case")]
pub enum Answer {
    /// The upstream answered with this status.
    Status(u16),
    /// The upstream could not be connected to (the client got a 502).
    ConnectFailed,
    /// The upstream connection broke before a response head (the client got a 502).
    UpstreamFailed,
    /// The upstream sent no response head in time (the client got a 504).
    TimedOut,
    /// The client went away before the answer was ready (logged as 499).
    ClientClosed,
    /// The client's own request failed: it aborted its upload or sent a malformed body (the
    /// client got a 400), or its upload stalled (408).
    ClientFailed,
    /// The upstream sent this status, then its body broke (reset, closed early, malformed) or
    /// stalled past the body timeout; the client's response was cut off.
    Truncated(u16),
    /// The variant already had as many requests in flight and waiting as its bulkhead allows
    /// (the client got a 503 without the upstream being asked).
    Overloaded,
}

impl Answer {
    /// The status the client saw (or, for [`Answer::ClientClosed`], nginx's 499 convention).
    pub fn status(self) -> u16 {
        match self {
            Answer::Status(s) => s,
            Answer::ConnectFailed | Answer::UpstreamFailed => 502,
            Answer::TimedOut => 504,
            Answer::ClientClosed => 499,
            Answer::ClientFailed => 400,
            Answer::Truncated(s) => s,
            Answer::Overloaded => 503,
        }
    }
}

/// Which counter an answer adds to, besides `requests`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// The variant failed the request: 5xx, unreachable, broken, timed out.
    Error,
    /// 2xx or 3xx.
    Success,
    /// 429.
    RateLimited,
    /// 401 or 403.
    AuthFailure,
    /// Any other 4xx: the request was refused as the client's mistake.
    ClientError,
    /// Counted as a request only.
    Neither,
}

/// The classification table (see the module docs).
#[inline]
pub fn classify(answer: Answer) -> Class {
    match answer {
        Answer::Status(200..=399 | 101) => Class::Success,
        Answer::Status(429) => Class::RateLimited,
        Answer::Status(401 | 403) => Class::AuthFailure,
        Answer::Status(400..=499) => Class::ClientError,
        Answer::Status(500..=599) => Class::Error,
        Answer::Status(_) => Class::Neither,
        Answer::ConnectFailed
        | Answer::UpstreamFailed
        | Answer::TimedOut
        | Answer::Truncated(_)
        | Answer::Overloaded => Class::Error,
        Answer::ClientClosed | Answer::ClientFailed => Class::Neither,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table() {
        let cases = [
            (Answer::Status(200), Class::Success),
            (Answer::Status(204), Class::Success),
            (Answer::Status(302), Class::Success),
            (Answer::Status(399), Class::Success),
            (Answer::Status(400), Class::ClientError),
            (Answer::Status(401), Class::AuthFailure),
            (Answer::Status(403), Class::AuthFailure),
            (Answer::Status(404), Class::ClientError),
            (Answer::Status(429), Class::RateLimited),
            (Answer::Status(499), Class::ClientError),
            (Answer::Status(500), Class::Error),
            (Answer::Status(503), Class::Error),
            (Answer::Status(599), Class::Error),
            (Answer::Status(100), Class::Neither),
            (Answer::Status(101), Class::Success),
            (Answer::Status(600), Class::Neither),
            (Answer::ConnectFailed, Class::Error),
            (Answer::UpstreamFailed, Class::Error),
            (Answer::TimedOut, Class::Error),
            (Answer::ClientClosed, Class::Neither),
            (Answer::ClientFailed, Class::Neither),
            (Answer::Truncated(200), Class::Error),
            (Answer::Truncated(404), Class::Error),
            (Answer::Overloaded, Class::Error),
        ];
        for (answer, class) in cases {
            assert_eq!(classify(answer), class, "{answer:?}");
        }
    }

    #[test]
    fn statuses_the_client_saw() {
        assert_eq!(Answer::ConnectFailed.status(), 502);
        assert_eq!(Answer::UpstreamFailed.status(), 502);
        assert_eq!(Answer::TimedOut.status(), 504);
        assert_eq!(Answer::ClientClosed.status(), 499);
        assert_eq!(Answer::ClientFailed.status(), 400);
        assert_eq!(Answer::Status(201).status(), 201);
        assert_eq!(Answer::Truncated(200).status(), 200);
        assert_eq!(Answer::Overloaded.status(), 503);
    }
}
