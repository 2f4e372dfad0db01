//! Logs through `tracing`, as JSON or human-readable text. Pingora's own `log` records are
//! bridged in. The filter comes from `BEARERD_LOG` (e.g. `debug`, `bearerd=trace`).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Pingora's crates: at debug and trace they print raw request headers, tokens included,
/// so they are never enabled beyond `info`, whatever `BEARERD_LOG` says.
const PINGORA_TARGETS: [&str; 8] = [
    "pingora",
    "pingora_core",
    "pingora_proxy",
    "pingora_pool",
    "pingora_http",
    "pingora_error",
    "pingora_rustls",
    "pingora_runtime",
];

/// The effective filter for a `BEARERD_LOG` value.
pub fn filter(user: Option<&str>) -> EnvFilter {
    let user = user.unwrap_or("info");
    let mut filter = EnvFilter::try_new(user).unwrap_or_else(|_| EnvFilter::new("info"));
    // Pingora is quiet unless asked for, and never below info.
    let level = if user.contains("pingora") {
        "info"
    } else {
        "warn"
    };
    for target in PINGORA_TARGETS {
        if let Ok(d) = format!("{target}={level}").parse() {
            filter = filter.add_directive(d);
        }
    }
    filter
}

/// Installs the global subscriber once; later calls (tests, demo) are no-ops.
pub fn init(format: LogFormat) {
    let user = std::env::var("BEARERD_LOG").ok();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(user.as_deref()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            // The span carries a subject's log tag (`"span":{"subject":"s:…"}`).
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}
