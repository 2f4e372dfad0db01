//! `[events]`: webhooks (where each goes, what it takes, how it is signed) and the audit
//! file; `[telemetry]`: where spans go.

use super::super::error::SourceMap;
use super::super::pending::Material;
use super::super::raw::{RawEvents, RawTelemetry};
use super::super::urls::secure_or_loopback;
use super::super::{ConfigError, EventsConfig, TelemetryConfig, WebhookConfig};
use super::http_url;
use crate::api::EventKind;

/// The events a webhook may hold back before it drops new ones, by default.
const DEFAULT_QUEUE: usize = 1024;

pub(super) fn lower_events(map: &SourceMap, raw: &RawEvents) -> Result<EventsConfig, ConfigError> {
    let mut webhooks = Vec::new();
    for (i, w) in raw.webhook.iter().enumerate() {
        let key = |k: &str| format!("events.webhook.{i}.{k}");
        let url = http_url(map, &key("url"), &w.url)?;
        // Events name credentials and their errors: they cross the network only in TLS.
        if !secure_or_loopback(&url) {
            return Err(map.error_at(
                &key("url"),
                format!("{:?} is plain http to another host: events would cross the network in clear. Use https", w.url),
            ));
        }
        let mut on = Vec::new();
        for name in w.on.iter().flatten() {
            let kind = EventKind::parse(name).ok_or_else(|| {
                map.error_at(
                    &key("on"),
                    format!(
                        "unknown event {name:?} (expected {})",
                        EventKind::ALL.map(EventKind::as_str).join(" | ")
                    ),
                )
            })?;
            on.push(kind);
        }
        let secret = map.lower_secret(&key("secret"), &w.secret)?;
        map.check_later(&key("secret"), Material::WebhookSecret(secret.clone()));
        let queue = match w.queue {
            None => DEFAULT_QUEUE,
            Some(n) if (1..=1_000_000).contains(&n) => n,
            Some(n) => {
                return Err(map.error_at(
                    &key("queue"),
                    format!("{n} is out of range: between 1 and 1000000"),
                ))
            }
        };
        webhooks.push(WebhookConfig {
            url,
            on,
            secret,
            queue,
        });
    }
    if let Some(path) = &raw.audit_file {
        if path.as_os_str().is_empty() {
            return Err(map.error_at(
                "events.audit_file",
                "must name a file (it is created if missing, and appended to)",
            ));
        }
    }
    Ok(EventsConfig {
        webhooks,
        audit_file: raw.audit_file.clone(),
    })
}

pub(super) fn lower_telemetry(
    map: &SourceMap,
    raw: &RawTelemetry,
) -> Result<TelemetryConfig, ConfigError> {
    let mut telemetry = TelemetryConfig::default();
    if let Some(url) = &raw.otlp_endpoint {
        // Spans name credentials, upstreams and paths, never a token: a collector in the
        // cluster over plain http is the common case, so http is allowed anywhere.
        telemetry.otlp_endpoint = Some(http_url(map, "telemetry.otlp_endpoint", url)?);
    }
    if let Some(name) = &raw.service_name {
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(map.error_at(
                "telemetry.service_name",
                "must be 1 to 128 printable characters",
            ));
        }
        telemetry.service_name = name.clone();
    }
    Ok(telemetry)
}
