//! `[events]`: webhooks (where each goes, what it takes, how it is signed) and the audit
//! file.

use super::super::error::SourceMap;
use super::super::pending::Material;
use super::super::raw::RawEvents;
use super::super::urls::secure_or_loopback;
use super::super::{ConfigError, EventsConfig, WebhookConfig};
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
