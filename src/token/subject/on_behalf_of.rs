//! On behalf of: each request's user token picks (or starts) the subject whose exchanged
//! token the request gets, under a limit on how often a user's token is exchanged again,
//! and on how many user tokens not seen before may be exchanged (a flood of distinct
//! tokens would otherwise cost a subject, a refresher and an exchange each).

use std::sync::Mutex;

use secrecy::ExposeSecret;

use super::*;

/// A request whose user token is new while the rate of new ones is spent: 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyNewSubjects {
    /// When a new user token can be exchanged again.
    pub retry_after: Duration,
}

/// A token bucket of new user tokens: `per_second` a second, and as many at once.
pub(super) struct NewSubjectRate {
    per_second: u32,
    /// Tokens left, and when they were counted.
    bucket: Mutex<(f64, Instant)>,
}

impl NewSubjectRate {
    pub fn new(per_second: u32) -> NewSubjectRate {
        NewSubjectRate {
            per_second,
            bucket: Mutex::new((f64::from(per_second), Instant::now())),
        }
    }

    /// Takes one, or says how long until one is there.
    pub fn take(&self, now: Instant) -> Result<(), TooManyNewSubjects> {
        let rate = f64::from(self.per_second);
        let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let (left, at) = *bucket;
        let left = (left + now.saturating_duration_since(at).as_secs_f64() * rate).min(rate);
        if left >= 1.0 {
            *bucket = (left - 1.0, now);
            Ok(())
        } else {
            *bucket = (left, now);
            Err(TooManyNewSubjects {
                retry_after: Duration::from_secs_f64((1.0 - left) / rate),
            })
        }
    }
}

impl SubjectRegistry {
    /// On behalf of: the slot of the user whose token a request carries; a token not seen
    /// before (or no longer in memory, or whose opaque token's time is up) is exchanged on
    /// the first request that needs it, within the rate of new user tokens.
    pub fn slot_for_subject_token(
        &self,
        token: &secrecy::SecretString,
    ) -> Result<(SubjectKey, Arc<CredentialSlot>), TooManyNewSubjects> {
        let subject = SubjectKey::of_token(token);
        let live = self.touch(subject.as_str());
        if let Some(live) = &live {
            if !self.may_exchange_again(live) && !self.past_serve_until(live) {
                return Ok((subject, Arc::clone(&live.credential.slot)));
            }
        }
        // A new exchange, counted before anything is dropped.
        if let Some(rate) = &self.new_subjects {
            rate.take(Instant::now())?;
        }
        if let Some(live) = live {
            if let Some((subject, gone)) =
                self.live.remove_if(&subject, |_, l| Arc::ptr_eq(l, &live))
            {
                self.leave_memory(&subject, &gone);
            }
        }
        let live = self.admit_with(&subject, Some(token));
        Ok((subject, Arc::clone(&live.credential.slot)))
    }

    /// With an actor token, a refused exchange may be the actor's fault (revoked, or renewed
    /// late), not the user's: a failed user is exchanged again on a request once
    /// `min_refresh_interval` has passed since the failed attempt began, rather than staying
    /// refused for as long as the app sends that user token. Without an actor the refusal
    /// is the user token's, and final for it.
    pub(super) fn may_exchange_again(&self, live: &LiveSubject) -> bool {
        let with_actor = self
            .starter
            .exchange
            .as_ref()
            .is_some_and(|x| x.actor.is_some());
        with_actor
            && live.slot.state() == CredentialState::Failed
            && self.now_ms().saturating_sub(live.admitted_ms)
                >= self
                    .starter
                    .credential_config
                    .policy
                    .min_interval
                    .as_millis() as u64
    }

    /// An opaque user token (no `exp` to bound its exchange) is served for
    /// `opaque_token_lifetime`, then exchanged again: a revoked one stops working then.
    fn past_serve_until(&self, live: &LiveSubject) -> bool {
        live.serve_until_ms
            .is_some_and(|until| self.now_ms() >= until)
    }

    /// When a subject admitted for `subject_token` must be exchanged again: for an opaque
    /// token (or a JWT without `exp`), `opaque_token_lifetime` from now.
    pub(super) fn serve_until_ms(
        &self,
        subject_token: Option<&secrecy::SecretString>,
    ) -> Option<u64> {
        let SubjectKind::OnBehalfOf {
            opaque_lifetime, ..
        } = self.config.kind
        else {
            return None;
        };
        let token = subject_token?;
        let bounded = crate::material::jwt::peek(token.expose_secret())
            .is_ok_and(|facts| facts.expires_at.is_some());
        (!bounded).then(|| self.now_ms() + opaque_lifetime.as_millis() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_of_new_user_tokens_is_a_token_bucket() {
        let rate = NewSubjectRate::new(4);
        let t0 = Instant::now();
        for _ in 0..4 {
            assert!(rate.take(t0).is_ok());
        }
        let refused = rate.take(t0).unwrap_err();
        assert!(
            refused.retry_after > Duration::ZERO
                && refused.retry_after <= Duration::from_millis(250)
        );
        // A quarter second later, one more.
        assert!(rate.take(t0 + Duration::from_millis(250)).is_ok());
        assert!(rate.take(t0 + Duration::from_millis(250)).is_err());
        // Never more than a second's worth at once.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..4 {
            assert!(rate.take(later).is_ok());
        }
        assert!(rate.take(later).is_err());
    }
}
