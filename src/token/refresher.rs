//! The refresher: one task per credential, the only writer of its slot. It runs the schedule,
//! serves demands (rate-limited when they come from requests) and backs off after failures.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::watch;

use super::credential::Credential;
use super::grant::{Grant, GrantOutcome, IssuedToken};
use super::schedule::{backoff_delay, expiry_floor, refresh_delay};
use super::slot::AttemptFailure;
use super::{bearer_header, CredentialSlot, TokenSnapshot, Trigger};
use crate::store::{Store, StoredToken};

/// The least time between two scheduled refreshes, whatever the token's lifetime.
const MIN_REFRESH_GAP: std::time::Duration = std::time::Duration::from_millis(100);

/// Runs until `shutdown` flips. Starts from the store when it holds a usable token, and
/// with an immediate refresh otherwise.
pub async fn run(cred: Arc<Credential>, mut shutdown: watch::Receiver<bool>) {
    let (slot, grant, store) = (&cred.slot, &cred.grant, &cred.store);
    let mut trigger = {
        let _op = cred.op.lock().await;
        restore(slot, grant, store).await
    };
    loop {
        if let Some(t) = trigger.take() {
            // The whole attempt (obtain, persist, publish) excludes logout and login.
            let _op = cred.op.lock().await;
            // A logout while this trigger was armed cancels it; only an operator restarts.
            if t == Trigger::Manual || !slot.is_logged_out() {
                attempt(slot, grant, store, t).await;
            }
        }
        let next = slot.next_refresh_at();
        let due = async {
            match next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = due => trigger = Some(Trigger::Scheduled),
            _ = slot.demanded() => trigger = take_demand(slot).await,
            _ = shutdown.changed() => return,
        }
    }
}

/// Takes the pending demand, if it still needs a refresh, after waiting out the rate limit
/// for request-triggered refreshes.
async fn take_demand(slot: &CredentialSlot) -> Option<Trigger> {
    loop {
        match slot.take_demand()? {
            Ok(trigger) => return Some(trigger),
            Err(wait) => tokio::time::sleep(wait).await,
        }
    }
}

/// Publishes a stored token that is still usable and schedules its refresh. Returns the
/// trigger for an immediate refresh when there is nothing usable to start from.
async fn restore(slot: &CredentialSlot, grant: &Grant, store: &Store) -> Option<Trigger> {
    if store.load(&slot.name).is_some_and(|s| s.logged_out) {
        // Logged out before the restart: stay so until a login.
        if let Some(fp) = store.load(&slot.name).and_then(|s| s.spent_seed) {
            grant.restore_spent_seed(fp).await;
        }
        slot.mark_logged_out();
        return None;
    }
    if restore_token(slot, grant, store).await {
        None
    } else {
        Some(Trigger::Startup)
    }
}

/// Whether a usable token came out of the store.
async fn restore_token(slot: &CredentialSlot, grant: &Grant, store: &Store) -> bool {
    if !grant.persists() {
        return false;
    }
    let Some(stored) = store.load(&slot.name) else {
        return false;
    };
    if let Some(fp) = stored.spent_seed.clone() {
        grant.restore_spent_seed(fp).await;
    }
    if let Some(rt) = stored.refresh_token.clone() {
        grant.restore_refresh_token(rt).await;
    }
    let (now, now_wall) = (Instant::now(), SystemTime::now());
    let Some(expires_at) = stored.expires_at else {
        return false;
    };
    let Ok(remaining) = expires_at.duration_since(now_wall) else {
        return false;
    };
    let lifetime = expires_at
        .duration_since(stored.issued_at)
        .unwrap_or(remaining);
    let age = now_wall
        .duration_since(stored.issued_at)
        .unwrap_or_default();
    // Instants cannot reach before boot: then count the token as issued now.
    let (issued_at, lifetime) = match now.checked_sub(age) {
        Some(at) if age <= lifetime => (at, lifetime),
        _ => (now, remaining),
    };
    if remaining <= expiry_floor(lifetime) {
        return false;
    }
    let Some(header) = bearer_header(&stored.access_token) else {
        return false;
    };
    let next = issued_at + refresh_delay(&slot.policy, lifetime, &mut rand::thread_rng());
    slot.restore(
        TokenSnapshot {
            header,
            generation: 1,
            issued_at,
            issued_wall: stored.issued_at,
            lifetime: Some(lifetime),
            usable_until: Some(issued_at + lifetime - expiry_floor(lifetime)),
            scopes: stored.scopes,
        },
        next.max(now),
    );
    tracing::info!(
        credential = &*slot.name,
        outcome = "restored",
        expires_in_s = remaining.as_secs_f64(),
        next_refresh_in_s = next.saturating_duration_since(now).as_secs_f64(),
        "token restored from the store"
    );
    true
}

/// Writes the new token set durably. Runs before the token is published, so a rotated
/// refresh token is on disk before anything can use the access token it came with.
async fn persist(
    slot: &CredentialSlot,
    store: &Arc<Store>,
    token: &IssuedToken,
    issued: SystemTime,
    lifetime: Option<std::time::Duration>,
    spent_seed: Option<String>,
) {
    let record = StoredToken {
        access_token: token.access_token.clone(),
        issued_at: issued,
        expires_at: lifetime.map(|l| issued + l),
        scopes: token.scopes.clone(),
        refresh_token: token.refresh_token.clone(),
        logged_out: false,
        spent_seed,
    };
    save(slot, store, Some(record)).await;
}

async fn save(slot: &CredentialSlot, store: &Arc<Store>, record: Option<StoredToken>) {
    let (store, name) = (Arc::clone(store), slot.name.to_string());
    let result = tokio::task::spawn_blocking(move || match record {
        Some(r) => store.save(&name, &r),
        None => store.remove(&name),
    })
    .await;
    let error = match result {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    tracing::error!(credential = &*slot.name, error = %error, "could not persist the token set; it is kept in memory");
    slot.record_store_error(error);
}

async fn attempt(slot: &CredentialSlot, grant: &Grant, store: &Arc<Store>, trigger: Trigger) {
    let started = Instant::now();
    let started_wall = SystemTime::now();
    slot.begin_attempt(trigger, started);
    let result = grant.obtain().await;
    let lifetime_of = |t: &IssuedToken| match grant {
        Grant::Static { .. } => None,
        _ => Some(t.lifetime.unwrap_or(slot.policy.default_lifetime)),
    };
    match &result {
        Ok(GrantOutcome::Issued(t)) if grant.persists() => {
            persist(
                slot,
                store,
                t,
                started_wall,
                lifetime_of(t),
                grant.spent_seed().await,
            )
            .await
        }
        Err(e) if e.rotated_refresh_token.is_some() => {
            // The provider rotated but its answer was unusable: keep the new refresh token.
            let mut stored = store.load(&slot.name).unwrap_or_else(StoredToken::empty);
            stored.refresh_token = e.rotated_refresh_token.clone();
            stored.spent_seed = grant.spent_seed().await;
            save(slot, store, Some(stored)).await;
        }
        Err(e) if e.drops_refresh_token() && grant.forgets_refresh_token_on_failure() => {
            // The provider dropped the grant: the stored refresh token goes too.
            if let Some(mut stored) = store.load(&slot.name) {
                stored.refresh_token = None;
                save(slot, store, Some(stored)).await;
            }
        }
        _ => {}
    }
    let elapsed = started.elapsed();
    let now = Instant::now();
    let failed = |kind: &str, message: &str, permanent: bool, retry_after| {
        let failure = AttemptFailure {
            kind,
            message,
            permanent,
        };
        record_failure(slot, grant, trigger, elapsed, &failure, retry_after)
    };
    let outcome = match result {
        Ok(GrantOutcome::Unchanged) => {
            slot.finish_unchanged(grant.poll_interval().map(|p| now + p));
            None
        }
        Ok(GrantOutcome::Issued(token))
            if lifetime_of(&token).is_some_and(|l| started + l <= now + expiry_floor(l)) =>
        {
            // Expired on arrival (a tiny expires_in, or a very slow provider): treat it as a
            // failure with backoff rather than refreshing in a tight loop.
            failed(
                "expired_on_arrival",
                "the token endpoint issued a token that expired before it arrived",
                false,
                None,
            )
        }
        Ok(GrantOutcome::Issued(token)) => match bearer_header(&token.access_token) {
            Some(header) => {
                let lifetime = lifetime_of(&token);
                let next_refresh_at = match lifetime {
                    // A floor keeps a pathological lifetime from becoming a busy loop.
                    Some(l) => Some(
                        (started + refresh_delay(&slot.policy, l, &mut rand::thread_rng()))
                            .max(now + MIN_REFRESH_GAP),
                    ),
                    None => grant.poll_interval().map(|p| now + p),
                };
                // The token was issued some time after the request left: count from then,
                // which errs on the side of refreshing early.
                let (generation, attempt) = slot.publish(
                    TokenSnapshot {
                        header,
                        generation: 0,
                        issued_at: started,
                        issued_wall: started_wall,
                        lifetime,
                        usable_until: lifetime.map(|l| started + l - expiry_floor(l)),
                        scopes: token.scopes,
                    },
                    next_refresh_at,
                );
                tracing::info!(
                    credential = &*slot.name,
                    trigger = trigger.as_str(),
                    attempt,
                    outcome = "success",
                    generation,
                    duration_ms = elapsed.as_millis() as u64,
                    expires_in_s = lifetime.map(|l| l.as_secs_f64()),
                    next_refresh_in_s =
                        next_refresh_at.map(|n| n.saturating_duration_since(now).as_secs_f64()),
                    "token refreshed"
                );
                Some("success")
            }
            None => failed(
                "malformed_response",
                "token is not a valid header value",
                false,
                None,
            ),
        },
        Err(e) => failed(&e.kind, &e.message, e.permanent, e.retry_after),
    };
    if let Some(result) = outcome {
        slot.count_attempt(trigger, result, elapsed);
    }
}

/// Records a failed attempt with its backoff and logs it. Returns the `result` label to
/// count, or none for a watched static file that stays broken (reported once, not every
/// second).
fn record_failure(
    slot: &CredentialSlot,
    grant: &Grant,
    trigger: Trigger,
    elapsed: std::time::Duration,
    failure: &AttemptFailure,
    retry_after: Option<std::time::Duration>,
) -> Option<&'static str> {
    let now = Instant::now();
    let record = slot.record_failure(failure, |failures| match grant.poll_interval() {
        // A watched file is read again soon whatever the error: fixing it fixes bearerd.
        Some(p) => Some(now + p),
        None if failure.permanent => None,
        None => {
            Some(now + backoff_delay(&slot.policy, failures, retry_after, &mut rand::thread_rng()))
        }
    });
    let result = if failure.permanent {
        "permanent_error"
    } else {
        "transient_error"
    };
    if grant.poll_interval().is_some() && record.repeated {
        return None;
    }
    let next_in = record
        .next_refresh_at
        .map(|n| n.saturating_duration_since(now).as_secs_f64());
    if failure.permanent {
        tracing::error!(
            credential = &*slot.name,
            trigger = trigger.as_str(),
            attempt = record.consecutive_failures,
            outcome = "permanent_error",
            error_kind = failure.kind,
            error = failure.message,
            duration_ms = elapsed.as_millis() as u64,
            "token refresh failed permanently; automatic retries stop until re-authorization"
        );
    } else {
        tracing::warn!(
            credential = &*slot.name,
            trigger = trigger.as_str(),
            attempt = record.consecutive_failures,
            outcome = "transient_error",
            error_kind = failure.kind,
            error = failure.message,
            duration_ms = elapsed.as_millis() as u64,
            next_refresh_in_s = next_in,
            "token refresh failed; retrying with backoff"
        );
    }
    Some(result)
}
