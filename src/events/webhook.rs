//! Webhook delivery, signed the Standard Webhooks way: `webhook-id`, `webhook-timestamp`
//! and `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
//!
//! Each webhook has its own bounded queue and one delivery task, so events reach it in
//! order and a slow receiver holds back no other sink. A failed delivery is retried with
//! backoff (the same id and body, a new timestamp and signature); one that still fails is
//! given up and counted.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use prometheus::IntCounterVec;
use tokio::sync::{mpsc, watch};

use super::{Event, EventBus, WebhookQueue};
use crate::config::WebhookConfig;
use crate::material::webhook_secret::{parse_webhook_secret, WebhookSecretError};

/// The waits between attempts: five retries over about half a minute.
const RETRY_DELAYS: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(16),
];

const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// How a delivery attempt ended: `result` of `bearerd_webhook_deliveries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryResult {
    Delivered,
    /// This attempt failed; another follows.
    Retried,
    /// The last attempt failed: the event is not delivered to this webhook.
    Abandoned,
}

impl DeliveryResult {
    pub const ALL: [DeliveryResult; 3] = [Self::Delivered, Self::Retried, Self::Abandoned];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retried => "retried",
            Self::Abandoned => "abandoned",
        }
    }
}

/// Why a webhook could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook {url}: secret: {0}", url = .1)]
    Secret(#[source] crate::material::secret::SecretError, String),
    #[error("webhook {url}: {0}", url = .1)]
    Key(#[source] WebhookSecretError, String),
    #[error("webhook {url}: {0}", url = .1)]
    Client(#[source] reqwest::Error, String),
}

/// Why one delivery attempt failed.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("{0}")]
    Send(reqwest::Error),
    #[error("the receiver answered {0}")]
    Status(reqwest::StatusCode),
}

/// One webhook's delivery task, ready to run.
pub struct Delivery {
    url: url::Url,
    /// Its scheme and host: what logs say (a webhook URL often holds a secret in its path).
    shown: String,
    key: zeroize::Zeroizing<Vec<u8>>,
    client: reqwest::Client,
    queue: mpsc::Receiver<Arc<Event>>,
    results: IntCounterVec,
}

/// Registers a webhook's queue with the bus and returns its delivery task, to run on the
/// control runtime. The secret is read and checked now: a bad one stops the start.
pub fn attach(
    bus: &EventBus,
    config: &WebhookConfig,
    results: IntCounterVec,
) -> Result<Delivery, WebhookError> {
    let url = shown(&config.url);
    let secret = config
        .secret
        .resolve()
        .map_err(|e| WebhookError::Secret(e, url.clone()))?;
    let key = parse_webhook_secret(secrecy::ExposeSecret::expose_secret(&secret))
        .map_err(|e| WebhookError::Key(e, url.clone()))?;
    let client = reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("bearerd/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| WebhookError::Client(e, url.clone()))?;
    for r in DeliveryResult::ALL {
        results.with_label_values(&[r.as_str()]);
    }
    let (tx, rx) = mpsc::channel(config.queue);
    bus.add_webhook(WebhookQueue {
        on: config.on.clone(),
        queue: tx,
    });
    Ok(Delivery {
        shown: shown(&config.url),
        url: config.url.clone(),
        key,
        client,
        queue: rx,
        results,
    })
}

/// A webhook URL as logs show it: scheme, host and port, never its path or query.
fn shown(url: &url::Url) -> String {
    format!(
        "{}://{}{}/…",
        url.scheme(),
        url.host_str().unwrap_or("-"),
        url.port().map(|p| format!(":{p}")).unwrap_or_default()
    )
}

/// The Standard Webhooks signature of one attempt.
pub fn signature(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    let mut ctx = aws_lc_rs::hmac::Context::with_key(&key);
    ctx.update(id.as_bytes());
    ctx.update(b".");
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    )
}

/// The body a webhook receives: Standard Webhooks' `{type, timestamp, data}`.
fn payload(event: &Event) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "type": event.kind.as_str(),
        "timestamp": event.at,
        "data": event,
    }))
    .unwrap_or_default()
}

impl Delivery {
    /// Delivers the queue's events in order until `shutdown` changes.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let event = tokio::select! {
                e = self.queue.recv() => match e {
                    Some(e) => e,
                    None => return,
                },
                _ = shutdown.changed() => return,
            };
            tokio::select! {
                _ = self.deliver(&event) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn deliver(&self, event: &Event) {
        let id = format!("msg_{}", event.id);
        let body = payload(event);
        // The first attempt, then one after each delay; `None` marks the last.
        let waits = RETRY_DELAYS.iter().map(Some).chain([None]);
        for wait in waits {
            let outcome = self.attempt(&id, &body).await;
            let result = match (&outcome, wait) {
                (Ok(()), _) => DeliveryResult::Delivered,
                (Err(_), Some(_)) => DeliveryResult::Retried,
                (Err(_), None) => DeliveryResult::Abandoned,
            };
            self.results.with_label_values(&[result.as_str()]).inc();
            match (outcome, wait) {
                (Ok(()), _) => return,
                (Err(why), None) => {
                    tracing::warn!(webhook = %self.shown, event = %event.id, error = %why, "webhook delivery abandoned after its retries");
                }
                (Err(why), Some(wait)) => {
                    tracing::debug!(webhook = %self.shown, event = %event.id, error = %why, "webhook delivery failed; retrying");
                    tokio::time::sleep(*wait).await;
                }
            }
        }
    }

    async fn attempt(&self, id: &str, body: &[u8]) -> Result<(), AttemptError> {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let response = self
            .client
            .post(self.url.clone())
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                signature(&self.key, id, timestamp, body),
            )
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| AttemptError::Send(e.without_url()))?;
        match response.status() {
            s if s.is_success() => Ok(()),
            s => Err(AttemptError::Status(s)),
        }
    }
}

#[cfg(test)]
mod tests {
    /// The example of the Standard Webhooks specification.
    #[test]
    fn signs_as_the_standard_webhooks_example() {
        use base64::Engine;
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            super::signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }
}
