//! Logs through `tracing`, as JSON or human-readable text. Pingora's own `log` records are
//! bridged in. The filter comes from `BEARERD_LOG` (e.g. `debug`, `bearerd=debug,pingora=warn`).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber once; later calls (tests, demo) are no-ops.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("BEARERD_LOG").unwrap_or_else(|_| {
        EnvFilter::new("info,pingora_core=warn,pingora_proxy=warn,pingora=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}
