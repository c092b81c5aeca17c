//! Command-line arguments checked and turned into settings, without any IO: every mistake a
//! user can make on the command line is reported here, with exit code 2.

use crate::args::{DemoArgs, LimitArgs, ServeArgs};
use ramp_control::Defaults;
use ramp_demo::{CanaryBehaviour, DemoOptions};
use ramp_proxy::Limits;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bad input: printed as is, exit code 2.
#[derive(Debug)]
pub(crate) struct Invalid(pub(crate) String);

/// What `ramp serve` runs, validated.
#[derive(Debug)]
pub(crate) struct Serve {
    /// Plan files to start.
    pub(crate) plans: Vec<PathBuf>,
    /// The proxy address of a single plan.
    pub(crate) listen: Option<SocketAddr>,
    /// The journal.
    pub(crate) db: PathBuf,
    /// The tokens file.
    pub(crate) tokens: PathBuf,
    /// Where the API listens.
    pub(crate) api: SocketAddr,
    /// TLS on the API listener.
    pub(crate) api_tls: Option<ramp_proxy::tls::ListenerTlsFiles>,
    /// The access-log file: path, rotation size in bytes, files kept.
    pub(crate) access_log_file: Option<(PathBuf, u64, u32)>,
    /// `/metrics` without a token.
    pub(crate) open_metrics: bool,
    /// The API request log.
    pub(crate) api_log: bool,
    /// The API's connection cap.
    pub(crate) api_max_connections: usize,
    /// Stop once every rollout has settled.
    pub(crate) exit_on_end: bool,
    /// Proxy worker threads.
    pub(crate) workers: usize,
    /// What every rollout shares.
    pub(crate) defaults: Defaults,
}

/// `--tokens`, or the `--db` path with `.tokens` appended.
pub(crate) fn tokens_path(db: &Path, tokens: Option<PathBuf>) -> PathBuf {
    tokens.unwrap_or_else(|| {
        let mut p = db.as_os_str().to_owned();
        p.push(".tokens");
        PathBuf::from(p)
    })
}

fn duration_arg(name: &str, text: &str) -> Result<Duration, Invalid> {
    ramp_core::time::parse_duration(text)
        .map(Duration::from_millis)
        .map_err(|e| Invalid(format!("error: --{name}: {e}")))
}

/// A percentage (`5%`) or a fraction (`0.05`) between 0 and 1.
pub(crate) fn percent_arg(name: &str, text: &str) -> Result<f64, Invalid> {
    let t = text.trim();
    let v = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0),
        None => t.parse::<f64>(),
    };
    match v {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        _ => Err(Invalid(format!(
            "error: {name} must be a percentage between 0% and 100%, found {text:?}"
        ))),
    }
}

fn limits(a: &LimitArgs) -> Result<Limits, Invalid> {
    let limits = Limits {
        max_header_bytes: a.max_header_bytes,
        max_headers: a.max_headers,
        header_read_timeout: duration_arg("header-read-timeout", &a.header_read_timeout)?,
        connect_timeout: duration_arg("connect-timeout", &a.connect_timeout)?,
        response_timeout: duration_arg("response-timeout", &a.response_timeout)?,
        upstream_body_timeout: duration_arg("upstream-body-timeout", &a.upstream_body_timeout)?,
        client_body_timeout: duration_arg("client-body-timeout", &a.client_body_timeout)?,
        client_write_timeout: duration_arg("client-write-timeout", &a.client_write_timeout)?,
        idle_timeout: duration_arg("idle-timeout", &a.idle_timeout)?,
        variant_max_in_flight: a.variant_max_in_flight,
        variant_max_queued: a.variant_max_queued,
        variant_queue_timeout: duration_arg("variant-queue-timeout", &a.variant_queue_timeout)?,
        max_connections: a.max_connections,
        drain_timeout: duration_arg("drain-timeout", &a.drain_timeout)?,
    };
    for (ok, what) in [
        (
            limits.max_connections >= 1,
            "--max-connections must be at least 1",
        ),
        (limits.max_headers >= 1, "--max-headers must be at least 1"),
        (
            (1..=1 << 30).contains(&limits.variant_max_in_flight),
            "--variant-max-in-flight must be between 1 and 1073741824",
        ),
        (
            limits.max_header_bytes >= 1,
            "--max-header-bytes must be at least 1",
        ),
    ] {
        if !ok {
            return Err(Invalid(format!("error: {what}")));
        }
    }
    Ok(limits)
}

/// `ramp serve`'s arguments, checked.
pub(crate) fn serve(a: ServeArgs) -> Result<Serve, Invalid> {
    if a.listen.is_some() && a.plan.len() > 1 {
        return Err(Invalid(
            "error: --listen applies to a single --plan; give each plan a [proxy] listen".into(),
        ));
    }
    if !(a.time_scale.is_finite() && a.time_scale > 0.0) {
        return Err(Invalid(
            "error: --time-scale must be a positive number".into(),
        ));
    }
    let window_retention = ramp_core::time::parse_duration(&a.window_retention)
        .map_err(|e| Invalid(format!("error: --window-retention: {e}")))?;
    let limits = limits(&a.limits)?;
    let allow = ramp_control::allow::Allow {
        listen: a
            .allow_listen
            .iter()
            .map(|s| ramp_control::allow::Net::parse(s.trim()))
            .collect::<Result<_, _>>()
            .map_err(|e| Invalid(format!("error: --allow-listen: {e}")))?,
        upstreams: if a.allow_upstream.is_empty() {
            None
        } else {
            Some(
                a.allow_upstream
                    .iter()
                    .map(|s| ramp_control::allow::HostRule::parse(s.trim()))
                    .collect::<Result<_, _>>()
                    .map_err(|e| Invalid(format!("error: --allow-upstream: {e}")))?,
            )
        },
    };
    let access_log = a.access_log || a.access_log_file.is_some();
    let reports_dir = a.reports.clone().unwrap_or_else(|| {
        let mut p = a.db.as_os_str().to_owned();
        p.push(".reports");
        PathBuf::from(p)
    });
    Ok(Serve {
        tokens: tokens_path(&a.db, a.tokens),
        plans: a.plan,
        listen: a.listen,
        db: a.db,
        api: a.api,
        api_tls: match (a.api_tls_cert, a.api_tls_key) {
            (Some(cert), Some(key)) => Some(ramp_proxy::tls::ListenerTlsFiles {
                cert,
                key,
                client_ca: a.api_client_ca,
                client_auth: ramp_proxy::tls::ClientAuth::Required,
            }),
            _ => None,
        },
        access_log_file: a.access_log_file.map(|p| {
            (
                p,
                a.access_log_max_mib.max(1) << 20,
                a.access_log_keep.max(1),
            )
        }),
        open_metrics: a.open_metrics,
        api_log: a.api_log,
        api_max_connections: a.api_max_connections.max(1),
        exit_on_end: a.exit_on_end,
        workers: a.limits.workers,
        defaults: Defaults {
            time_scale: a.time_scale,
            limits,
            variant_header: a.variant_header,
            default_listen: a
                .listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            access_log,
            window_retention,
            allow,
            certificates: ramp_proxy::tls::Certificates::new(),
            access_log_file: None,
            access_log_dropped: Default::default(),
            channels: Default::default(),
            reports_dir: Some(reports_dir),
        },
    })
}

/// `ramp demo`'s arguments, checked (`live` is decided by the caller, who knows the terminal).
pub(crate) fn demo(a: DemoArgs) -> Result<DemoOptions, Invalid> {
    let error_rate = percent_arg("--canary-error-rate", &a.canary_error_rate)?;
    let canary = match (a.scenario.as_deref(), a.canary_fails_at) {
        (Some(_), Some(_)) => {
            return Err(Invalid(
                "error: use either --scenario or --canary-fails-at".into(),
            ));
        }
        (None, None) | (Some("healthy"), None) => CanaryBehaviour::Healthy,
        (Some("error-spike"), None) => CanaryBehaviour::FailsAt {
            at: 0.5,
            error_rate,
        },
        (Some("latency-regression"), None) => CanaryBehaviour::SlowsAt {
            at: 0.1,
            p95_ms: 400.0,
        },
        (Some(other), None) => {
            return Err(Invalid(format!(
                "error: unknown demo scenario {other:?}: use healthy, error-spike or latency-regression"
            )));
        }
        (None, Some(at)) => CanaryBehaviour::FailsAt {
            at: percent_arg("--canary-fails-at", &at)?,
            error_rate,
        },
    };
    let ok =
        (5.0..=3600.0).contains(&a.seconds) && a.rps > 0.0 && a.rps <= 100_000.0 && a.users > 0;
    if !ok {
        return Err(Invalid(
            "error: --seconds must be in [5, 3600], --rps in (0, 100000], --users at least 1"
                .into(),
        ));
    }
    Ok(DemoOptions {
        canary,
        seconds: a.seconds,
        rps: a.rps,
        users: a.users,
        live: !a.plain,
        reports: a.reports,
        webhook: a.webhook,
        smtp: a.smtp,
        mail_to: a.mail_to,
    })
}

/// A token name: one word of visible characters, not starting with `#` (which the tokens file
/// reads as a comment).
pub(crate) fn token_name(name: &str) -> Result<(), Invalid> {
    if name.is_empty() || name.starts_with('#') || !name.chars().all(|c| c.is_ascii_graphic()) {
        return Err(Invalid(
            "error: a token name is one word of letters, digits and punctuation, not starting with `#`"
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_and_fractions() {
        assert_eq!(percent_arg("x", "5%").unwrap(), 0.05);
        assert_eq!(percent_arg("x", " 0.5 ").unwrap(), 0.5);
        assert!(percent_arg("x", "150%").is_err());
        assert!(percent_arg("x", "abc").is_err());
    }

    #[test]
    fn token_names_that_would_never_work_are_refused() {
        assert!(token_name("alice").is_ok());
        for bad in ["", "#admin", "two words", "tab\there", "émile"] {
            assert!(token_name(bad).is_err(), "{bad:?}");
        }
    }
}
