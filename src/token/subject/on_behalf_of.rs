//! On behalf of: each request's user token picks (or starts) the subject whose exchanged
//! token the request gets, under a limit on how often a user's token is exchanged again.

use super::*;

impl SubjectRegistry {
    /// On behalf of: the slot of the user whose token a request carries; a token not seen
    /// before (or no longer in memory) is exchanged on the first request that needs it.
    pub fn slot_for_subject_token(
        &self,
        token: &secrecy::SecretString,
    ) -> (SubjectKey, Arc<CredentialSlot>) {
        let subject = SubjectKey::of_token(token);
        let mut live = self.admit_with(&subject, Some(token));
        if self.may_exchange_again(&live) {
            if let Some((subject, gone)) =
                self.live.remove_if(&subject, |_, l| Arc::ptr_eq(l, &live))
            {
                self.leave_memory(&subject, &gone);
            }
            live = self.admit_with(&subject, Some(token));
        }
        (subject, Arc::clone(&live.credential.slot))
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
}
