//! Diagnostics (warnings and errors) on stderr through `tracing`: as short text lines, or with
//! `--log-format json` as one JSON object per line with its fields.

/// Installs the subscriber for the whole process. `RAMP_LOG` (`error`, `warn`, `info`, `debug`)
/// sets the level; `warn` by default.
pub(crate) fn init(json: bool) {
    let level = std::env::var("RAMP_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::WARN);
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.without_time().with_ansi(false).try_init()
    };
}
