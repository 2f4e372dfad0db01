//! The refresher: one task per credential, the only writer of its slot. It runs the schedule,
//! serves demands (rate-limited when they come from requests) and backs off after failures.
//!
//! Each attempt runs "adopt or refresh" against the store, which may be shared by replicas:
//! 1. a set in the store newer than the one held here is adopted, with no token request;
//! 2. otherwise the attempt takes the credential's lease (or waits for its holder's set),
//! 3. looks in the store once more,
//! 4. obtains a new set,
//! 5. saves it with compare-and-set on the generation (never over a newer set),
//! 6. and only then publishes it, so a rotated refresh token is durable before anything can
//!    use the access token it came with.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::credential::dpop_record;
use super::credential::Credential;
use super::schedule::{backoff_delay, expiry_floor, refresh_delay};
use super::slot::AttemptFailure;
use super::GrantErrorKind;
use super::{authorization_header, CredentialSlot, DpopBinding, TokenSnapshot, Trigger};
use crate::grant::{Grant, GrantOutcome, IssuedToken};
use crate::metrics::RefreshResult;
use crate::store::{BindingMatch, Lease, LeaseAnswer, SaveOutcome, StoredToken};

/// The least time between two scheduled refreshes, whatever the token's lifetime.
const MIN_REFRESH_GAP: Duration = Duration::from_millis(100);

/// How often a replica waiting for the lease holder's set looks in the store when no change
/// notification comes.
const LEASE_POLL: Duration = Duration::from_millis(250);

/// How long a lease lasts unless its holder renews it (every third of it while it works):
/// how soon another replica takes over from a holder that died.
const LEASE_HOLD: Duration = Duration::from_secs(6);

/// Runs until `shutdown` flips. Starts from the store when it holds a usable token, and
/// with an immediate refresh otherwise.
pub async fn run(cred: Arc<Credential>, mut shutdown: watch::Receiver<bool>) {
    let slot = &cred.slot;
    let mut store_changes = cred.store.watch(&cred.store_key);
    let mut trigger = {
        let _op = cred.op.lock().await;
        Box::pin(restore(&cred)).await
    };
    // A subject's key is its credential's, which the engine settles.
    if !cred.is_subject() {
        cred.settle_dpop_key();
    }
    loop {
        if let Some(t) = trigger.take() {
            // The whole attempt (obtain, persist, publish) excludes logout and login.
            let _op = cred.op.lock().await;
            // A logout while this trigger was armed cancels it; only an operator restarts.
            if t == Trigger::Manual || !slot.is_logged_out() {
                // Boxed: an attempt's state is large (the token request), and a refresher
                // idles between attempts. Inline, it made every idle refresher (one per
                // subject in memory) 13 KB.
                Box::pin(attempt(&cred, t)).await;
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
            r = store_changes.changed(), if is_open(&store_changes) => {
                if r.is_ok() {
                    let _op = cred.op.lock().await;
                    Box::pin(refill_if_lost(&cred)).await;
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Whether the store's change channel is still open (a closed one is not waited on).
fn is_open(changes: &watch::Receiver<u64>) -> bool {
    changes.has_changed().is_ok()
}

/// When the store lost the set this process holds (a shared store that restarted empty),
/// writes it back, with its generation: the store only takes it over nothing or an older
/// set, so the replica with the newest set wins.
async fn refill_if_lost(cred: &Credential) {
    let (slot, grant) = (&cred.slot, &cred.grant);
    let Some(held) = cred.generation_to_write_back() else {
        return;
    };
    if !grant.persists() || slot.is_logged_out() {
        return;
    }
    match cred.store.load(&cred.store_key).await {
        Ok(Some(set)) if set.generation >= held => return,
        Ok(_) => {}
        Err(_) => return,
    }
    let (Some(token), Some(access_token)) = (slot.current(), slot.access_token()) else {
        return;
    };
    let set = crate::store::StoredSet {
        token: StoredToken {
            access_token,
            issued_at: token.issued_wall,
            expires_at: token.lifetime.map(|l| token.issued_wall + l),
            scopes: token.scopes.clone(),
            refresh_token: grant.refresh_token().await,
            logged_out: false,
            spent_seed: grant.spent_seed().await,
            logout: None,
            bound_to: Some(slot.binding.clone()),
            registration: grant.registration_record(),
            dpop: dpop_record(grant, token.dpop.as_ref().map(|d| &*d.key)),
        },
        generation: held,
    };
    match cred.store.refill(&cred.store_key, &set).await {
        Ok(true) => {
            cred.hold_generation(held);
            tracing::warn!(
                credential = &*slot.name,
                generation = held,
                "the store had lost the token set; written back"
            )
        }
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(credential = &*slot.name, error = %e, "could not write the token set back")
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
async fn restore(cred: &Credential) -> Option<Trigger> {
    let (slot, grant) = (&cred.slot, &cred.grant);
    // A subject admitted for a hand-over or a connect may be served before its refresher
    // starts: what happened since is newer than the store's record, and a failure it
    // recorded must stand (not be tried again, nor its error replaced).
    if slot.has_history() {
        return None;
    }
    let Some(set) = cred.load_set().await else {
        // A subject with no record yet waits for its connect flow or login.
        return (!cred.is_subject()).then_some(Trigger::Startup);
    };
    cred.hold_generation(set.generation);
    cred.take_client_material(&set.token);
    if set.token.logged_out {
        // Logged out before the restart: stay so until a login.
        if let Some(fp) = set.token.spent_seed {
            grant.restore_spent_seed(fp).await;
        }
        slot.mark_logged_out();
        return None;
    }
    if !grant.persists() {
        return Some(Trigger::Startup);
    }
    // A record obtained under another config is never served (issue 20, hole 5).
    match slot.binding.compare(&set.token) {
        BindingMatch::Same => {}
        BindingMatch::SameIssuer => {
            // Its refresh token goes back to the issuer that issued it, for a token that
            // fits the config now.
            take_refresh_state(grant, &set.token).await;
            tracing::info!(
                credential = &*slot.name,
                "the stored token was obtained under another config: not served; refreshing now"
            );
            return Some(Trigger::Startup);
        }
        BindingMatch::OtherIssuer { was } => {
            if let Some(fp) = set.token.spent_seed.clone() {
                grant.restore_spent_seed(fp).await;
            }
            let was = was.unwrap_or_else(|| "another issuer".to_string());
            let why = format!(
                "the stored refresh token was issued by {was}, and the config now names {}: it is never sent there",
                slot.binding.issuer.as_deref().unwrap_or("another issuer")
            );
            tracing::warn!(credential = &*slot.name, "{why}");
            grant.refuse_stored_refresh_token(why).await;
            return Some(Trigger::Startup);
        }
    }
    take_refresh_state(grant, &set.token).await;
    match stored_snapshot(slot, grant, &set.token) {
        Some((token, next, remaining, held)) => {
            slot.restore(token, next, held);
            tracing::info!(
                credential = &*slot.name,
                outcome = "restored",
                expires_in_s = remaining.as_secs_f64(),
                next_refresh_in_s = next.saturating_duration_since(Instant::now()).as_secs_f64(),
                "token restored from the store"
            );
            None
        }
        None => Some(Trigger::Startup),
    }
}

/// Takes a stored set's refresh token (or its absence) and spent seed into the grant.
async fn take_refresh_state(grant: &Grant, stored: &StoredToken) {
    if let Some(fp) = stored.spent_seed.clone() {
        grant.restore_spent_seed(fp).await;
    }
    grant
        .take_stored_refresh_token(stored.refresh_token.clone())
        .await;
}

/// A stored access token as a snapshot, with the time of its refresh, the time it has
/// left, and whether a refresh token came with it; `None` when it is not usable any more.
/// A set without a refresh token (a login at a provider without offline access) is kept
/// until it expires: there is nothing to refresh it with before then.
fn stored_snapshot(
    slot: &CredentialSlot,
    grant: &Grant,
    stored: &StoredToken,
) -> Option<(TokenSnapshot, Instant, Duration, bool)> {
    let (now, now_wall) = (Instant::now(), SystemTime::now());
    let expires_at = stored.expires_at?;
    let remaining = expires_at.duration_since(now_wall).ok()?;
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
        return None;
    }
    // A token bound to a DPoP key goes only with proofs of that key: the record's own,
    // and only while the credential still binds its tokens.
    let dpop = match stored.dpop.as_ref().filter(|d| d.bound) {
        Some(d) => {
            use secrecy::ExposeSecret;
            let held = grant.dpop_key()?;
            let key = match held.to_record().expose_secret() == d.key.expose_secret() {
                true => held,
                false => Arc::new(crate::material::dpop::DpopKey::from_record(&d.key).ok()?),
            };
            Some(DpopBinding::new(key, &stored.access_token))
        }
        None => None,
    };
    let header = authorization_header(&stored.access_token, dpop.is_some())?;
    let held = stored.refresh_token.is_some() || !grant.needs_lease();
    let usable_until = issued_at + lifetime - expiry_floor(lifetime);
    let next = match held {
        true => issued_at + refresh_delay(&slot.policy, lifetime, &mut rand::thread_rng()),
        false => usable_until,
    };
    let token = TokenSnapshot {
        header,
        dpop,
        generation: 0,
        issued_at,
        issued_wall: stored.issued_at,
        lifetime: Some(lifetime),
        usable_until: Some(usable_until),
        scopes: stored.scopes.clone(),
    };
    Some((token, next.max(now), remaining, held))
}

/// Adopts a set from the store that is newer than the one held here (another replica
/// wrote it): its refresh state always (it is the live one), its access token when still
/// usable, which ends the attempt without a token request; a newer logout logs out here
/// too.
async fn adopt_newer(cred: &Credential) -> bool {
    if !cred.grant.persists() {
        return false;
    }
    let Some(set) = cred.load_set().await else {
        return false;
    };
    if cred
        .stored_generation()
        .is_some_and(|held| set.generation <= held)
    {
        return false;
    }
    cred.hold_generation(set.generation);
    cred.take_client_material(&set.token);
    take_refresh_state(&cred.grant, &set.token).await;
    if set.token.logged_out {
        cred.grant.forget().await;
        cred.slot.finish_unchanged(None);
        cred.slot.mark_logged_out();
        tracing::warn!(
            credential = &*cred.slot.name,
            "logged out by another replica"
        );
        return true;
    }
    let Some((token, next, remaining, held)) = stored_snapshot(&cred.slot, &cred.grant, &set.token)
    else {
        return false;
    };
    let (generation, _) = cred.slot.publish(token, Some(next), held);
    cred.slot.count_adoption();
    tracing::info!(
        credential = &*cred.slot.name,
        outcome = "adopted",
        generation,
        stored_generation = set.generation,
        expires_in_s = remaining.as_secs_f64(),
        "token set adopted from the store"
    );
    true
}

/// What the attempt may do after asking for the lease.
enum LeaseOutcome {
    /// Refresh (holding this lease, or without one when the store cannot lease).
    Refresh(Option<Lease>),
    /// Done: the holder's set was adopted, or the attempt failed.
    Ended,
}

/// Takes the credential's lease so that one refresh runs across every replica on the
/// store. While another holds it, waits (within the wait budget) for the holder's set and
/// adopts it, and takes the lease itself when the holder gives up or dies.
async fn take_lease(cred: &Credential, trigger: Trigger, started: Instant) -> LeaseOutcome {
    let (slot, grant) = (&cred.slot, &cred.grant);
    if !grant.persists() {
        return LeaseOutcome::Refresh(None);
    }
    let mut changes = cred.store.watch(&cred.store_key);
    let deadline = tokio::time::Instant::now() + slot.policy.wait_budget;
    // Only a refresh token that a lost set may have spent waits for a store to settle.
    let settle_first = grant.needs_lease();
    let mut settling = false;
    let failure = loop {
        match cred
            .store
            .lease(&cred.store_key, LEASE_HOLD, settle_first)
            .await
        {
            Ok(LeaseAnswer::Taken(lease)) => return LeaseOutcome::Refresh(Some(lease)),
            Ok(LeaseAnswer::Held) => settling = false,
            Ok(LeaseAnswer::Settling { left }) => {
                if !settling {
                    tracing::warn!(
                        credential = &*slot.name,
                        settle_s = left.as_secs_f64(),
                        "the store may have lost writes (it restarted or failed over): no refresh token is sent until the replicas have written back their sets"
                    );
                }
                settling = true;
                // This replica's set may be the newest there is: it goes back first.
                refill_if_lost(cred).await;
            }
            Err(e) if grant.needs_lease() => {
                // A rotating refresh token is never sent without the lease: another
                // replica may be sending it now.
                tracing::warn!(credential = &*slot.name, error = %e, "no refresh lease: the store is unavailable");
                break AttemptFailure {
                    kind: &GrantErrorKind::StoreUnavailable,
                    message:
                        "the store is unavailable, and a refresh token is only sent under its lease",
                    permanent: false,
                };
            }
            Err(e) => {
                // Refreshing locally (single-flight in this process) costs at most one
                // token request per replica.
                tracing::warn!(credential = &*slot.name, error = %e, "no refresh lease: the store is unavailable; refreshing locally");
                return LeaseOutcome::Refresh(None);
            }
        }
        if adopt_newer(cred).await {
            return LeaseOutcome::Ended;
        }
        if tokio::time::Instant::now() >= deadline {
            break match settling {
                true => AttemptFailure {
                    kind: &GrantErrorKind::StoreSettling,
                    message: "the store may have lost writes (it restarted or failed over) and settles: no refresh token is sent until the replicas have written back their sets",
                    permanent: false,
                },
                false => AttemptFailure {
                    kind: &GrantErrorKind::LeaseHeld,
                    message: "another replica holds the refresh lease and wrote no new token set in time",
                    permanent: false,
                },
            };
        }
        tokio::select! {
            _ = changes.changed() => {},
            _ = tokio::time::sleep(LEASE_POLL) => {},
            _ = tokio::time::sleep_until(deadline) => {},
        }
    };
    if let Some(result) = record_failure(slot, grant, trigger, started.elapsed(), &failure, None) {
        slot.count_attempt(trigger, result, started.elapsed());
    }
    LeaseOutcome::Ended
}

/// Runs `work` while renewing the lease, so a live holder keeps it however long its token
/// request takes, and a dead one loses it within `LEASE_HOLD`.
async fn while_holding<T>(
    cred: &Credential,
    lease: &Option<Lease>,
    work: impl Future<Output = T>,
) -> T {
    let Some(lease) = lease else {
        return work.await;
    };
    tokio::pin!(work);
    let mut renew = tokio::time::interval(LEASE_HOLD / 3);
    renew.tick().await;
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = renew.tick() => match cred.store.renew(lease, LEASE_HOLD).await {
                Ok(true) => {}
                // The compare-and-set still keeps a newer set from being overwritten.
                Ok(false) => tracing::warn!(credential = &*cred.slot.name, "the refresh lease ran out during the attempt"),
                Err(e) => tracing::warn!(credential = &*cred.slot.name, error = %e, "could not renew the refresh lease"),
            },
        }
    }
}

async fn release(cred: &Credential, lease: Option<Lease>) {
    if let Some(lease) = lease {
        if let Err(e) = cred.store.release(&lease).await {
            // It runs out by itself.
            tracing::warn!(credential = &*cred.slot.name, error = %e, "could not release the refresh lease");
        }
    }
}

/// Saves with compare-and-set; when the store lost what this replica last saw there (it
/// restarted empty, or failed over to a replica that lacks the last writes: nothing, or an
/// older generation), the set just obtained is the newest there is, and goes back with the
/// generation after the one held, never a restarted count, so replicas still holding that
/// one adopt it.
async fn save_or_write_back(
    cred: &Credential,
    record: &StoredToken,
) -> Result<SaveOutcome, crate::store::StoreError> {
    let held = cred.stored_generation();
    let outcome = cred.save_set(record).await;
    let (Ok(SaveOutcome::Conflict { current }), Some(held)) = (&outcome, held) else {
        return outcome;
    };
    if current.as_ref().is_some_and(|c| c.generation > held) {
        return outcome;
    }
    tracing::warn!(
        credential = &*cred.slot.name,
        "the store lost the token set; writing it back"
    );
    let set = crate::store::StoredSet {
        token: record.clone(),
        generation: held + 1,
    };
    match cred.store.refill(&cred.store_key, &set).await {
        Ok(true) => {
            cred.hold_generation(held + 1);
            Ok(SaveOutcome::Saved {
                generation: held + 1,
            })
        }
        Ok(false) => Ok(SaveOutcome::Conflict { current: None }),
        Err(e) => Err(e),
    }
}

/// How long a holder goes on writing a set with a refresh token that the store (or its
/// replicas) did not confirm, before it gives the lease up anyway.
const CONFIRM_FOR: Duration = Duration::from_secs(30);

/// Saves a token set with compare-and-set; a failure is recorded on the slot (the set is
/// kept in memory), and a newer set that someone else saved is left as it is. True when a
/// set with a refresh token did not reach the store, or its replicas, for a reason that may
/// pass (see [`store_until_confirmed`]).
async fn save(cred: &Credential, record: &StoredToken) -> bool {
    let slot = &cred.slot;
    let outcome = save_or_write_back(cred, record).await;
    match outcome {
        Ok(SaveOutcome::Saved { .. }) => {}
        Ok(SaveOutcome::Conflict { current }) => {
            // Only a holder whose lease ran out gets here: the newer set stays, and the
            // next attempt adopts it.
            tracing::warn!(
                credential = &*slot.name,
                stored_generation = current.map(|c| c.generation),
                "a newer token set was saved meanwhile; this one is not written over it"
            );
        }
        Err(e) => {
            tracing::error!(credential = &*slot.name, error = %e, "could not persist the token set; it is kept in memory");
            slot.record_store_error(e.to_string());
            return e.is_transient() && record.refresh_token.is_some();
        }
    }
    false
}

/// How long [`store_until_confirmed`] goes on: [`CONFIRM_FOR`], and never past half of what
/// the new token has left, so the credential's next refresh is not held up.
fn confirm_limit(record: &StoredToken) -> Duration {
    let left = record
        .expires_at
        .and_then(|e| e.duration_since(SystemTime::now()).ok())
        .unwrap_or(CONFIRM_FOR * 2);
    (left / 2).clamp(Duration::from_secs(1), CONFIRM_FOR)
}

/// Writes a set that holds a refresh token again until the store confirms it (its replicas
/// too, by `min_replicas_acked`), for at most [`confirm_limit`]; the caller holds the lease
/// meanwhile. Released earlier, another replica could send the refresh token this set
/// replaced, should a failover lose the write, and a strict provider revokes the grant. A
/// failover to a replica that lacks the write gets it written back.
async fn store_until_confirmed(cred: &Credential, record: &StoredToken) {
    let started = Instant::now();
    let limit = confirm_limit(record);
    let mut pause = Duration::from_millis(200);
    let mut tries = 1;
    while started.elapsed() < limit {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
        tries += 1;
        match save_or_write_back(cred, record).await {
            Ok(SaveOutcome::Saved { .. }) => {
                tracing::info!(
                    credential = &*cred.slot.name,
                    tries,
                    "the token set is stored and confirmed"
                );
                return;
            }
            Ok(SaveOutcome::Conflict { current }) => {
                tracing::warn!(
                    credential = &*cred.slot.name,
                    stored_generation = current.map(|c| c.generation),
                    "a newer token set was saved meanwhile; this one is not written over it"
                );
                return;
            }
            Err(e) if e.is_transient() => {
                // Said on the slot once the new token is out (publishing it cleared the
                // error the first try recorded).
                if tries == 2 {
                    cred.slot.record_store_error(e.to_string());
                }
                tracing::debug!(credential = &*cred.slot.name, error = %e, "the token set is not confirmed yet; trying again under the lease");
            }
            Err(e) => {
                cred.slot.record_store_error(e.to_string());
                return;
            }
        }
    }
    tracing::error!(credential = &*cred.slot.name, tries, "the store did not confirm the token set in time; the lease goes (the set is on the master, and kept in memory: it is written back if a failover loses it)");
}

/// Writes the new token set durably. Runs before the token is published. Returns the
/// record when it must be written again (see [`save`]).
async fn persist(
    cred: &Credential,
    token: &IssuedToken,
    issued: SystemTime,
    lifetime: Option<Duration>,
) -> Option<StoredToken> {
    let record = record_of(cred, token, issued, lifetime).await;
    save(cred, &record).await.then_some(record)
}

/// The store record of an issued token.
async fn record_of(
    cred: &Credential,
    token: &IssuedToken,
    issued: SystemTime,
    lifetime: Option<Duration>,
) -> StoredToken {
    StoredToken {
        access_token: token.access_token.clone(),
        issued_at: issued,
        expires_at: lifetime.map(|l| issued + l),
        scopes: token.scopes.clone(),
        refresh_token: token.refresh_token.clone(),
        logged_out: false,
        spent_seed: cred.grant.spent_seed().await,
        logout: None,
        bound_to: Some(cred.slot.binding.clone()),
        registration: cred.grant.registration_record(),
        dpop: dpop_record(&cred.grant, token.dpop_key.as_deref()),
    }
}

async fn attempt(cred: &Credential, trigger: Trigger) {
    let (slot, grant) = (&cred.slot, &cred.grant);
    let started = Instant::now();
    slot.begin_attempt(trigger, started);
    // A drill: the failure is recorded as a real one would be, and nothing is sent.
    if let Some(fail) = slot.drilled_failure() {
        drilled_attempt(slot, grant, trigger, fail, started);
        return;
    }
    if adopt_newer(cred).await {
        return;
    }
    let LeaseOutcome::Refresh(lease) = take_lease(cred, trigger, started).await else {
        return;
    };
    // Looked at again under the lease: a holder that finished just now wrote its set.
    if lease.is_some() && adopt_newer(cred).await {
        release(cred, lease).await;
        return;
    }
    let lifetime_of = |t: &IssuedToken| {
        grant
            .has_lifetime()
            .then(|| t.effective_lifetime(slot.policy.default_lifetime))
    };
    // A token's lifetime counts from when it was asked for, not from when the attempt began:
    // the attempt may have waited for the lease (or a store's settle) for seconds.
    let requested = Instant::now();
    let requested_wall = SystemTime::now();
    let span = token_request_span(slot, trigger);
    // A step-up attempt asks for the scopes challenges left pending; no other does.
    let step_up = grant.endpoint().map(|e| e.step_up());
    let asked = match (&step_up, trigger) {
        (Some(s), Trigger::StepUp) => s.arm(),
        _ => Vec::new(),
    };
    let (result, unconfirmed) = while_holding(
        cred,
        &lease,
        obtain_and_persist(cred, requested_wall, &lifetime_of),
    )
    .await;
    if let (Some(s), false) = (&step_up, asked.is_empty()) {
        s.finish(&asked, step_up_result(&result));
    }
    let elapsed = started.elapsed();
    let now = Instant::now();
    let failed = |kind: &GrantErrorKind, message: &str, permanent: bool, retry_after| {
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
            if lifetime_of(&token).is_some_and(|l| requested + l <= now + expiry_floor(l)) =>
        {
            // Expired on arrival (a tiny expires_in, or a very slow provider): treat it as a
            // failure with backoff rather than refreshing in a tight loop.
            failed(
                &GrantErrorKind::ExpiredOnArrival,
                "the token endpoint issued a token that expired before it arrived",
                false,
                None,
            )
        }
        Ok(GrantOutcome::Issued(token)) => publish_issued(
            slot,
            grant,
            trigger,
            token,
            (requested, requested_wall),
            elapsed,
        ),
        // A step-up's token request for more scopes failed: the credential stays as it
        // was (the scopes are dropped by the step-up), its token still serves the rest.
        Err(e) if !asked.is_empty() && refused_scope(&e) && slot.is_ready() => {
            keep_after_step_up(slot, &e)
        }
        Err(e) => failed(&e.kind, &e.message, e.permanent, e.retry_after),
    };
    // The new token serves from now on; its refresh token is confirmed before the lease
    // goes.
    if let (Some(record), Some(_)) = (&unconfirmed, &lease) {
        while_holding(cred, &lease, store_until_confirmed(cred, record)).await;
    }
    release(cred, lease).await;
    end_token_request_span(span, outcome);
    if let Some(result) = outcome {
        slot.count_attempt(trigger, result, elapsed);
    }
}

type TracedSpan<'a> = Option<(
    &'a Arc<crate::events::trace::Tracer>,
    crate::events::trace::Span,
)>;

/// A token request's span, when tracing is on: a trace of its own (one refresh serves
/// every request waiting on it).
fn token_request_span(slot: &CredentialSlot, trigger: Trigger) -> TracedSpan<'_> {
    slot.tracer().map(|t| {
        let mut s = t.start(
            "token request",
            crate::events::trace::SpanKind::Client,
            None,
        );
        s.set("bearerd.credential", &slot.name);
        s.set("bearerd.trigger", trigger.as_str());
        (t, s)
    })
}

fn end_token_request_span(span: TracedSpan<'_>, outcome: Option<crate::metrics::RefreshResult>) {
    if let Some((tracer, mut s)) = span {
        let result = outcome.map_or("unchanged", |r| r.as_str());
        s.set("bearerd.result", result);
        if outcome.is_some_and(|r| r != crate::metrics::RefreshResult::Success) {
            s.fail(result);
        }
        tracer.end(s);
    }
}

/// An attempt during a failure drill: what the token endpoint's `fail` would make of the
/// credential, classified as the real answer would be, without a request (so no refresh
/// token is sent, and nothing is stored).
fn drilled_attempt(
    slot: &CredentialSlot,
    grant: &Grant,
    trigger: Trigger,
    fail: crate::api::DrillFailure,
    started: Instant,
) {
    use crate::api::DrillFailure;
    use crate::oauth::response::classify_failure;
    let e = match fail {
        DrillFailure::Unauthorized => classify_failure(401, b"", None),
        DrillFailure::ServerError => classify_failure(500, b"", None),
        DrillFailure::InvalidGrant => classify_failure(
            400,
            br#"{"error":"invalid_grant","error_description":"failure drill"}"#,
            None,
        ),
        DrillFailure::Timeout => crate::oauth::GrantError::transient(
            GrantErrorKind::Timeout,
            "the token endpoint did not answer in time",
        ),
    };
    let message = format!("drill: {}", e.message);
    let failure = AttemptFailure {
        kind: &e.kind,
        message: &message,
        permanent: e.permanent,
    };
    let elapsed = started.elapsed();
    if let Some(result) = record_failure(slot, grant, trigger, elapsed, &failure, None) {
        slot.count_attempt(trigger, result, elapsed);
    }
}

/// One token request, and what it leaves in the store: the issued set, a rotated refresh
/// token kept from an unusable answer, or a dropped grant's refresh token gone.
/// The token request, and the write of what it gave; the record when it must be written
/// again under the lease (see [`save`]).
async fn obtain_and_persist(
    cred: &Credential,
    requested_wall: SystemTime,
    lifetime_of: &impl Fn(&IssuedToken) -> Option<Duration>,
) -> (
    Result<GrantOutcome, crate::oauth::GrantError>,
    Option<StoredToken>,
) {
    let grant = &cred.grant;
    let result = grant.obtain().await;
    let mut unconfirmed = None;
    match &result {
        Ok(GrantOutcome::Issued(t)) if grant.persists() => {
            unconfirmed = persist(cred, t, requested_wall, lifetime_of(t)).await;
        }
        Err(e) if e.rotated_refresh_token.is_some() => {
            // The provider rotated but its answer was unusable: keep the new refresh
            // token.
            let mut stored = cred
                .load_set()
                .await
                .map_or_else(StoredToken::empty, |s| s.token);
            stored.refresh_token = e.rotated_refresh_token.clone();
            stored.spent_seed = grant.spent_seed().await;
            // The new refresh token is bound to the key that asked for it: the credential's
            // now. The stored access token stays bound only if that is its key too.
            if let Some(mut now) = dpop_record(grant, None) {
                use secrecy::ExposeSecret;
                now.bound = stored
                    .dpop
                    .as_ref()
                    .is_some_and(|d| d.bound && d.key.expose_secret() == now.key.expose_secret());
                stored.dpop = Some(now);
            }
            if save(cred, &stored).await {
                unconfirmed = Some(stored);
            }
        }
        Err(e) if e.drops_refresh_token() && grant.forgets_refresh_token_on_failure() => {
            // The provider dropped the grant: the stored refresh token goes too.
            if let Some(set) = cred.load_set().await {
                let mut stored = set.token;
                stored.refresh_token = None;
                save(cred, &stored).await;
            }
        }
        _ => {}
    }
    (result, unconfirmed)
}

/// How a step-up attempt's token request went, for the step-up's record.
fn step_up_result(
    result: &Result<GrantOutcome, crate::oauth::GrantError>,
) -> crate::oauth::step_up::StepUpResult {
    use crate::oauth::step_up::StepUpResult;
    match result {
        Ok(_) => StepUpResult::Issued,
        Err(e) if refused_scope(e) => StepUpResult::Refused,
        Err(_) => StepUpResult::Failed,
    }
}

/// `invalid_scope`: the server will not give this client the scopes it asked for.
fn refused_scope(e: &crate::oauth::GrantError) -> bool {
    e.kind.is_oauth(crate::oauth::OAuthErrorCode::InvalidScope)
}

/// Ends a step-up attempt whose scopes the server refused: the current token stays, as do
/// the credential's schedule and health (the refusal was the step-up's, not the grant's).
fn keep_after_step_up(
    slot: &CredentialSlot,
    e: &crate::oauth::GrantError,
) -> Option<RefreshResult> {
    tracing::warn!(
        credential = &*slot.name,
        error = %e.message,
        "the authorization server refused the scopes a step-up asked for; the current token stays"
    );
    slot.end_attempt_as_it_was();
    Some(RefreshResult::PermanentError)
}

/// Publishes a token the provider just issued (and the caller persisted), with its refresh
/// scheduled, and logs it. Returns the `result` label to count.
fn publish_issued(
    slot: &CredentialSlot,
    grant: &Grant,
    trigger: Trigger,
    token: IssuedToken,
    (requested, requested_wall): (Instant, SystemTime),
    elapsed: Duration,
) -> Option<RefreshResult> {
    let now = Instant::now();
    let lifetime = grant
        .has_lifetime()
        .then(|| token.effective_lifetime(slot.policy.default_lifetime));
    let dpop = token
        .dpop_key
        .clone()
        .map(|key| DpopBinding::new(key, &token.access_token));
    let Some(header) = authorization_header(&token.access_token, dpop.is_some()) else {
        let failure = AttemptFailure {
            kind: &GrantErrorKind::MalformedResponse,
            message: "token is not a valid header value",
            permanent: false,
        };
        return record_failure(slot, grant, trigger, elapsed, &failure, None);
    };
    // A token without a refresh token (a login at a provider without offline access) is
    // kept until it expires: there is nothing to refresh it with before then.
    let held = token.refresh_token.is_some() || !grant.needs_lease();
    let next_refresh_at = match lifetime {
        Some(l) if !held => Some((requested + l - expiry_floor(l)).max(now + MIN_REFRESH_GAP)),
        // A floor keeps a pathological lifetime from becoming a busy loop.
        Some(l) => Some(
            (requested + refresh_delay(&slot.policy, l, &mut rand::thread_rng()))
                .max(now + MIN_REFRESH_GAP),
        ),
        None => grant.poll_interval().map(|p| now + p),
    };
    // The token was issued some time after the request left: count from then, which errs
    // on the side of refreshing early.
    let (generation, attempt) = slot.publish(
        TokenSnapshot {
            header,
            dpop,
            generation: 0,
            issued_at: requested,
            issued_wall: requested_wall,
            lifetime,
            usable_until: lifetime.map(|l| requested + l - expiry_floor(l)),
            scopes: token.scopes,
        },
        next_refresh_at,
        held,
    );
    tracing::info!(
        credential = &*slot.name,
        trigger = trigger.as_str(),
        attempt,
        outcome = RefreshResult::Success.as_str(),
        generation,
        duration_ms = elapsed.as_millis() as u64,
        expires_in_s = lifetime.map(|l| l.as_secs_f64()),
        next_refresh_in_s = next_refresh_at.map(|n| n.saturating_duration_since(now).as_secs_f64()),
        "token refreshed"
    );
    Some(RefreshResult::Success)
}

/// Takes a token set a connect flow obtained for a subject (the code was redeemed now):
/// persists it, then publishes it, as a refresh would. Excludes refreshes, logout and login.
pub(super) async fn take_connected(
    cred: &Credential,
    token: IssuedToken,
    started: (Instant, SystemTime),
) -> bool {
    let _op = cred.op.lock().await;
    cred.grant
        .take_stored_refresh_token(token.refresh_token.clone())
        .await;
    let lifetime = Some(token.effective_lifetime(cred.slot.policy.default_lifetime));
    persist(cred, &token, started.1, lifetime).await;
    publish_taken(cred, token, started)
}

/// Publishes a token set taken from a login or a connect flow (already persisted), as a
/// manual refresh would; answers whether it was published.
fn publish_taken(cred: &Credential, token: IssuedToken, started: (Instant, SystemTime)) -> bool {
    cred.slot.accept_login();
    cred.slot.begin_attempt(Trigger::Manual, started.0);
    let result = publish_issued(
        &cred.slot,
        &cred.grant,
        Trigger::Manual,
        token,
        started,
        started.0.elapsed(),
    );
    result == Some(RefreshResult::Success)
}

/// A login's token set, published as it came: from a code the sidecar redeemed (with its
/// refresh token, when the provider gave one), or an access token alone (a provider that
/// offers no offline access). Persisted and published; without a refresh token it serves
/// until it expires, and the credential then asks for a login. Answers whether the token
/// was published.
pub async fn login_access_token(
    cred: &Credential,
    token: IssuedToken,
) -> Result<bool, super::credential::HandOverError> {
    if !cred.grant.forgets_refresh_token_on_failure() {
        return Err(super::credential::HandOverError::NotRefreshToken(
            cred.slot.name.to_string(),
        ));
    }
    if token.refresh_token.is_none() {
        tracing::info!(
            credential = &*cred.slot.name,
            "access token received from a login, without a refresh token: a new login is needed when it expires"
        );
    }
    let _op = cred.op.lock().await;
    let started = (Instant::now(), SystemTime::now());
    // An operator's decision, as a login's refresh token is: it replaces whatever set the
    // store holds (still by compare-and-set, so no write is torn). Saved before the grant
    // takes its refresh token: one that could not be saved is never used.
    let lifetime = Some(token.effective_lifetime(cred.slot.policy.default_lifetime));
    cred.save_over(&record_of(cred, &token, started.1, lifetime).await)
        .await?;
    cred.grant
        .take_stored_refresh_token(token.refresh_token.clone())
        .await;
    Ok(publish_taken(cred, token, started))
}

/// A subject's refresh token handed over by the app: stored, then used at once, all under
/// the credential's lock, so the subject's refresher (which may be starting this moment)
/// either sees no record or the finished result, and never sends the token a second time.
pub(super) async fn hand_over(
    cred: &Credential,
    refresh_token: secrecy::SecretString,
) -> Result<(), super::credential::HandOverError> {
    let _op = cred.op.lock().await;
    cred.take_login(refresh_token).await?;
    attempt(cred, Trigger::Manual).await;
    Ok(())
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
) -> Option<RefreshResult> {
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
        RefreshResult::PermanentError
    } else {
        RefreshResult::TransientError
    };
    if grant.poll_interval().is_some() && record.repeated {
        return None;
    }
    let next_in = record
        .next_refresh_at
        .map(|n| n.saturating_duration_since(now).as_secs_f64());
    // One event: at error when retries stop, at warn while they go on (tracing takes the
    // level at compile time, hence the macro).
    macro_rules! refresh_failed {
        ($level:ident, $($rest:tt)*) => {
            tracing::$level!(
                credential = &*slot.name,
                trigger = trigger.as_str(),
                attempt = record.consecutive_failures,
                outcome = result.as_str(),
                error_kind = %failure.kind,
                error = failure.message,
                duration_ms = elapsed.as_millis() as u64,
                $($rest)*
            )
        };
    }
    if failure.permanent {
        refresh_failed!(
            error,
            "token refresh failed permanently; automatic retries stop until re-authorization"
        );
    } else {
        refresh_failed!(
            warn,
            next_refresh_in_s = next_in,
            "token refresh failed; retrying with backoff"
        );
    }
    Some(result)
}

#[cfg(test)]
mod tests {
    /// A refresher runs per subject in memory: idle, it must stay small (the attempt's
    /// state is boxed while one runs).
    #[test]
    fn an_idle_refresher_is_small() {
        let config = crate::config::Config::parse(
            std::path::Path::new("t.toml"),
            "[credentials.a]\ngrant = \"refresh_token\"\ntoken_url = \"http://127.0.0.1:9/t\"\nclient_id = \"x\"\nsubject_header = \"x-s\"\n[upstreams.a]\nurl = \"http://127.0.0.1:9/\"\npath_prefix = \"/a\"\ncredential = \"a\"\n",
        )
        .unwrap();
        let c = &config.credentials[0];
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new(["a"], ["a"]));
        let slot = super::CredentialSlot::new(c, metrics);
        let grant = super::Grant::new(&c.grant).unwrap();
        let store = std::sync::Arc::new(crate::store::MemoryStore::new());
        let cred = super::Credential::new(slot, grant, store);
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let run = super::run(cred, rx);
        assert!(
            std::mem::size_of_val(&run) < 2048,
            "{} bytes",
            std::mem::size_of_val(&run)
        );
    }
}
