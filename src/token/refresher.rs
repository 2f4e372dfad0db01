//! The refresher: one task per credential, the only writer of its slot. It runs the schedule,
//! serves demands (rate-limited when they come from requests) and backs off after failures.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use super::grant::{Grant, GrantOutcome};
use super::schedule::{backoff_delay, expiry_floor, min_interval, refresh_delay};
use super::{bearer_header, CredentialSlot, LastError, TokenSnapshot, Trigger};

/// Runs until `shutdown` flips. Starts with an immediate refresh.
pub async fn run(slot: Arc<CredentialSlot>, grant: Grant, mut shutdown: watch::Receiver<bool>) {
    let mut trigger = Some(Trigger::Startup);
    loop {
        if let Some(t) = trigger.take() {
            attempt(&slot, &grant, t).await;
        }
        let next = slot.control().next_refresh_at;
        let due = async {
            match next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = due => trigger = Some(Trigger::Scheduled),
            _ = slot.wake.notified() => trigger = take_demand(&slot).await,
            _ = shutdown.changed() => return,
        }
    }
}

/// Takes the pending demand, if it still needs a refresh, after waiting out the rate limit
/// for request-triggered refreshes.
async fn take_demand(slot: &CredentialSlot) -> Option<Trigger> {
    loop {
        let wait = {
            let mut c = slot.control();
            let d = c.demand?;
            let current = slot.current();
            if current
                .as_ref()
                .is_some_and(|t| t.generation > d.below_generation && t.is_usable(Instant::now()))
            {
                // A refresh since the demand already produced a newer token.
                c.demand = None;
                return None;
            }
            let interval = min_interval(&slot.policy, current.and_then(|t| t.lifetime));
            match c.last_request_attempt {
                Some(at) if d.trigger.is_request_triggered() && at.elapsed() < interval => {
                    interval - at.elapsed()
                }
                _ => {
                    c.demand = None;
                    return Some(d.trigger);
                }
            }
        };
        tokio::time::sleep(wait).await;
    }
}

async fn attempt(slot: &CredentialSlot, grant: &Grant, trigger: Trigger) {
    let started = Instant::now();
    {
        let mut c = slot.control();
        c.in_flight = true;
        if trigger.is_request_triggered() {
            c.last_request_attempt = Some(started);
        }
    }
    slot.bump();
    let result = grant.obtain().await;
    let elapsed = started.elapsed();
    let now = Instant::now();
    let mut rng = rand::thread_rng();
    let name = &*slot.name;

    let mut c = slot.control();
    c.in_flight = false;
    c.attempts_completed += 1;
    let outcome = match result {
        Ok(GrantOutcome::Unchanged) => {
            c.next_refresh_at = grant.poll_interval().map(|p| now + p);
            None
        }
        Ok(GrantOutcome::Issued(token)) => match bearer_header(&token.access_token) {
            Some(header) => {
                let lifetime = match grant {
                    Grant::Static { .. } => None,
                    _ => Some(token.lifetime.unwrap_or(slot.policy.default_lifetime)),
                };
                let generation = slot.current().map_or(0, |t| t.generation) + 1;
                // The token was issued some time after the request left: count from then,
                // which errs on the side of refreshing early.
                slot.token.store(Some(Arc::new(TokenSnapshot {
                    header,
                    generation,
                    issued_at: started,
                    issued_wall: std::time::SystemTime::now() - elapsed,
                    lifetime,
                    usable_until: lifetime.map(|l| started + l - expiry_floor(l)),
                    scopes: token.scopes,
                })));
                let attempt = c.consecutive_failures + 1;
                c.consecutive_failures = 0;
                c.permanent_failure = false;
                c.refreshes += 1;
                c.next_refresh_at = match lifetime {
                    Some(l) => Some(started + refresh_delay(&slot.policy, l, &mut rng)),
                    None => grant.poll_interval().map(|p| now + p),
                };
                tracing::info!(
                    credential = name,
                    trigger = trigger.as_str(),
                    attempt,
                    outcome = "success",
                    generation,
                    duration_ms = elapsed.as_millis() as u64,
                    expires_in_s = lifetime.map(|l| l.as_secs_f64()),
                    next_refresh_in_s = c
                        .next_refresh_at
                        .map(|n| n.saturating_duration_since(now).as_secs_f64()),
                    "token refreshed"
                );
                Some("success")
            }
            None => {
                fail(
                    &mut c,
                    slot,
                    grant,
                    trigger,
                    elapsed,
                    now,
                    "malformed_response",
                    "token is not a valid header value",
                    false,
                    None,
                );
                Some("transient_error")
            }
        },
        Err(e) => {
            let repeat = matches!(grant, Grant::Static { .. })
                && c.last_error.as_ref().is_some_and(|l| l.kind == e.kind)
                && c.consecutive_failures > 0;
            let result = if e.permanent {
                "permanent_error"
            } else {
                "transient_error"
            };
            fail(
                &mut c,
                slot,
                grant,
                trigger,
                elapsed,
                now,
                &e.kind,
                &e.message,
                e.permanent,
                e.retry_after,
            );
            // A watched static file that stays broken is reported once, not every second.
            (!repeat).then_some(result)
        }
    };
    drop(c);
    if let Some(result) = outcome {
        slot.metrics
            .token_refresh_total
            .with_label_values(&[name, trigger.as_str(), result])
            .inc();
        slot.metrics
            .token_refresh_duration_seconds
            .with_label_values(&[name])
            .observe(elapsed.as_secs_f64());
    }
    slot.bump();
}

#[allow(clippy::too_many_arguments)]
fn fail(
    c: &mut super::Control,
    slot: &CredentialSlot,
    grant: &Grant,
    trigger: Trigger,
    elapsed: std::time::Duration,
    now: Instant,
    kind: &str,
    message: &str,
    permanent: bool,
    retry_after: Option<std::time::Duration>,
) {
    let first = c.consecutive_failures == 0 || c.last_error.as_ref().is_none_or(|l| l.kind != kind);
    c.consecutive_failures += 1;
    c.last_error = Some(LastError {
        kind: kind.to_string(),
        message: message.to_string(),
        at: super::rfc3339_now(),
    });
    c.permanent_failure = permanent;
    c.next_refresh_at = match grant.poll_interval() {
        // A watched file is read again soon whatever the error: fixing it fixes bearerd.
        Some(p) => Some(now + p),
        None if permanent => None,
        None => Some(
            now + backoff_delay(
                &slot.policy,
                c.consecutive_failures,
                retry_after,
                &mut rand::thread_rng(),
            ),
        ),
    };
    let next_in = c
        .next_refresh_at
        .map(|n| n.saturating_duration_since(now).as_secs_f64());
    if grant.poll_interval().is_some() && !first {
        return;
    }
    if permanent {
        tracing::error!(
            credential = &*slot.name,
            trigger = trigger.as_str(),
            attempt = c.consecutive_failures,
            outcome = "permanent_error",
            error_kind = kind,
            error = message,
            duration_ms = elapsed.as_millis() as u64,
            "token refresh failed permanently; automatic retries stop until re-authorization"
        );
    } else {
        tracing::warn!(
            credential = &*slot.name,
            trigger = trigger.as_str(),
            attempt = c.consecutive_failures,
            outcome = "transient_error",
            error_kind = kind,
            error = message,
            duration_ms = elapsed.as_millis() as u64,
            next_refresh_in_s = next_in,
            "token refresh failed; retrying with backoff"
        );
    }
}
