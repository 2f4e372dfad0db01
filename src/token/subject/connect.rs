//! The connect flow of per-subject credentials: `POST …/subjects/{s}/connect` starts an
//! authorization code + PKCE flow whose `state` is bound to the credential and the subject,
//! valid for `connect_lifetime` (10 minutes by default) and good for one callback; `GET /connect/callback` (relayed by the
//! app from its redirect URI) redeems the code and stores the subject's tokens.

use std::time::{Duration, Instant};

use dashmap::DashMap;
use secrecy::{ExposeSecret, SecretString};

use super::SubjectKey;

/// The longest a connect flow's `state` can be accepted (`connect_lifetime` is at most this).
const LONGEST: Duration = Duration::from_secs(3600);

/// At most this many flows wait for their callback at once: a caller that starts flows in a
/// loop cannot fill memory (the oldest expired ones go first, then new ones are refused).
const MAX_PENDING: usize = 100_000;

/// A connect flow waiting for its callback.
pub struct PendingConnect {
    pub credential: String,
    pub subject: SubjectKey,
    pub redirect_uri: String,
    pub verifier: SecretString,
    expires: Instant,
}

/// Why a callback was refused; nothing was stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectRefused {
    #[error("the state is unknown: forged, already used, or from before a restart")]
    UnknownState,
    #[error("the connect flow expired (connect_lifetime); start it again")]
    Expired,
    #[error("the connect flow was started for another subject")]
    OtherSubject,
    #[error("too many connect flows are waiting for their callback")]
    TooMany,
}

#[derive(Default)]
pub struct ConnectStates {
    pending: DashMap<String, PendingConnect>,
}

impl ConnectStates {
    /// Registers a flow; returns its `state`.
    pub fn begin(
        &self,
        credential: &str,
        subject: &SubjectKey,
        redirect_uri: &str,
        state: SecretString,
        verifier: SecretString,
        lifetime: Duration,
    ) -> Result<(), ConnectRefused> {
        if self.pending.len() >= MAX_PENDING {
            self.sweep();
            if self.pending.len() >= MAX_PENDING {
                return Err(ConnectRefused::TooMany);
            }
        }
        self.pending.insert(
            state.expose_secret().to_string(),
            PendingConnect {
                credential: credential.to_string(),
                subject: subject.clone(),
                redirect_uri: redirect_uri.to_string(),
                verifier,
                expires: Instant::now() + lifetime.min(LONGEST),
            },
        );
        Ok(())
    }

    /// Takes the flow of `state`, once: a second callback with the same state finds
    /// nothing. `subject`, when the app names whom it relays for, must be the flow's.
    pub fn take(
        &self,
        state: &str,
        subject: Option<&str>,
    ) -> Result<PendingConnect, ConnectRefused> {
        let (_, flow) = self
            .pending
            .remove(state)
            .ok_or(ConnectRefused::UnknownState)?;
        if Instant::now() >= flow.expires {
            return Err(ConnectRefused::Expired);
        }
        if subject.is_some_and(|s| s != flow.subject.as_str()) {
            return Err(ConnectRefused::OtherSubject);
        }
        Ok(flow)
    }

    /// Drops flows past their lifetime (called by the registry's sweep).
    pub fn sweep(&self) {
        let now = Instant::now();
        self.pending.retain(|_, p| now < p.expires);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(states: &ConnectStates, subject: &str) -> String {
        start_for(states, subject, Duration::from_secs(600))
    }

    fn start_for(states: &ConnectStates, subject: &str, lifetime: Duration) -> String {
        let state = format!("state-{subject}");
        let s = SubjectKey::parse(subject.as_bytes()).unwrap();
        states
            .begin(
                "gmail",
                &s,
                "https://app/cb",
                SecretString::from(state.clone()),
                SecretString::from("v".to_string()),
                lifetime,
            )
            .unwrap();
        state
    }

    #[test]
    fn a_state_is_good_for_one_callback_of_its_own_subject_within_its_lifetime() {
        let states = ConnectStates::default();
        let a = start(&states, "alice");
        assert_eq!(
            states.take(&a, Some("alice")).unwrap().subject.as_str(),
            "alice"
        );
        assert_eq!(
            states.take(&a, None).err(),
            Some(ConnectRefused::UnknownState)
        );
        let b = start(&states, "bob");
        assert_eq!(
            states.take(&b, Some("alice")).err(),
            Some(ConnectRefused::OtherSubject)
        );
        let c = start_for(&states, "carol", Duration::ZERO);
        assert_eq!(states.take(&c, None).err(), Some(ConnectRefused::Expired));
        assert_eq!(
            states.take("forged", None).err(),
            Some(ConnectRefused::UnknownState)
        );
    }
}
