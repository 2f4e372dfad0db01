//! What the admin API and the metrics see of a per-subject credential: counts per state,
//! one subject's status, pages of subjects. Never a token.

use super::*;

impl SubjectRegistry {
    /// Subjects per state, in memory and at rest in the store (never which subjects).
    pub fn counts(&self) -> StateCounts {
        let mut counts = self.census.counts();
        for live in self.live.iter() {
            counts[census::state_index(live.credential.slot.state())] += 1;
        }
        counts
    }
    /// How many subjects rest in the store, as the census counts them.
    pub fn at_rest(&self) -> usize {
        self.census.counts().iter().sum()
    }
    /// Sets `bearerd_subjects{credential,state}`.
    pub fn update_gauges(&self) {
        for (state, n) in CredentialState::ALL.iter().zip(self.counts()) {
            self.starter
                .metrics
                .subjects
                .with_label_values(&[&*self.credential, state.as_str()])
                .set(n as i64);
        }
    }
    /// One subject's status: from memory, else from its record; `None` when unknown.
    pub async fn status_of(
        &self,
        subject: &SubjectKey,
    ) -> Result<Option<SubjectStatus>, StoreError> {
        if let Some(live) = self.get(subject) {
            let mut status = live_status(subject, &live);
            if status.status.state == CredentialState::LoggedOut {
                // The tombstone's details are in the record.
                let set = self
                    .starter
                    .store
                    .load(&subject.store_key(&self.credential))
                    .await?;
                status.logout = set.and_then(|s| s.token.logout).map(logout_view);
            }
            return Ok(Some(status));
        }
        let set = self
            .starter
            .store
            .load(&subject.store_key(&self.credential))
            .await?;
        Ok(set.map(|set| self.stored_status(subject, &set)))
    }
    /// A page of subjects in order (`after` excluded), with the next page's start.
    pub async fn list(
        &self,
        after: Option<&SubjectKey>,
        limit: usize,
    ) -> Result<(Vec<SubjectStatus>, Option<String>), StoreError> {
        let prefix = SubjectKey::store_prefix(&self.credential);
        let after_key = after.map(|a| a.store_key(&self.credential));
        let stored = self
            .starter
            .store
            .list(&prefix, after_key.as_deref(), limit)
            .await?;
        // Subjects in memory whose record the store has no listing of (on behalf of: in
        // memory only), merged in the store's order.
        let order = |k: &SubjectKey| {
            self.starter
                .store
                .list_order(&k.store_key(&self.credential))
        };
        let after_order = after.map(order);
        let mut subjects: Vec<(String, SubjectKey)> = stored
            .iter()
            .filter_map(|k| SubjectKey::from_store_key(&self.credential, k))
            .chain(self.live.iter().map(|e| e.key().clone()))
            .map(|k| (order(&k), k))
            .filter(|(o, _)| after_order.as_ref().is_none_or(|a| o > a))
            .collect();
        subjects.sort_unstable();
        subjects.dedup();
        subjects.truncate(limit);
        // One batch for the subjects not in memory (one round trip on Redis).
        let in_memory: Vec<bool> = subjects
            .iter()
            .map(|(_, k)| self.live.contains_key(k))
            .collect();
        let stored_keys: Vec<String> = subjects
            .iter()
            .zip(&in_memory)
            .filter(|(_, live)| !**live)
            .map(|((_, k), _)| k.store_key(&self.credential))
            .collect();
        let mut stored_sets = self
            .starter
            .store
            .load_many(&stored_keys)
            .await?
            .into_iter();
        let mut page = Vec::with_capacity(subjects.len());
        for ((_, subject), live) in subjects.iter().zip(in_memory) {
            let status = if live {
                self.status_of(subject).await?
            } else {
                stored_sets
                    .next()
                    .flatten()
                    .map(|set| self.stored_status(subject, &set))
            };
            page.extend(status);
        }
        let next = (subjects.len() == limit)
            .then(|| subjects.last().map(|(_, s)| s.as_str().to_string()))
            .flatten();
        Ok((page, next))
    }
    /// The status of a subject that is not in memory, as its record gives it.
    pub(super) fn stored_status(&self, subject: &SubjectKey, set: &StoredSet) -> SubjectStatus {
        let t = &set.token;
        let now = SystemTime::now();
        let remaining = t.expires_at.and_then(|e| e.duration_since(now).ok());
        // Shown as it is served: a rolled-back record is not.
        let rolled_back = self.rolled_back(subject, set.generation);
        let state = match rolled_back {
            true => CredentialState::Failed,
            false => stored_state(t, now),
        };
        SubjectStatus {
            subject: subject.as_str().to_string(),
            tag: None,
            in_memory: false,
            logout: t.logout.clone().map(logout_view),
            status: CredentialStatus {
                state,
                grant: self.starter.credential_config.grant.kind().to_string(),
                client_auth: Some(
                    self.starter
                        .endpoint
                        .config()
                        .client
                        .method
                        .name()
                        .to_string(),
                ),
                expires_in_s: remaining.map(|r| crate::token::slot::round(r.as_secs_f64())),
                token_age_s: (!t.logged_out && t.issued_at > SystemTime::UNIX_EPOCH)
                    .then(|| now.duration_since(t.issued_at).ok())
                    .flatten()
                    .map(|a| crate::token::slot::round(a.as_secs_f64())),
                generation: 0,
                refreshes: 0,
                consecutive_failures: 0,
                last_error: rolled_back.then(|| crate::api::LastError {
                    kind: "rolled_back".into(),
                    message: "the stored record is older than when the subject left memory (put back by someone with write access to the store?): refused; connect again".into(),
                    at: crate::token::slot::rfc3339_now(),
                }),
                next_refresh_in_s: None,
                scopes: t.scopes.clone(),
                has_refresh_token: t.refresh_token.is_some(),
                step_up_scopes: Vec::new(),
                drill: None,
            },
        }
    }
}

/// A stored logout as the admin API shows it (the record's format is the store's own).
pub(super) fn logout_view(l: crate::store::LogoutRecord) -> crate::api::LogoutRecord {
    crate::api::LogoutRecord {
        at: l.at,
        revocation: l.revocation,
    }
}

pub(super) fn live_status(subject: &SubjectKey, live: &LiveSubject) -> SubjectStatus {
    SubjectStatus {
        subject: subject.as_str().to_string(),
        tag: None,
        in_memory: true,
        logout: None,
        status: live.credential.slot.status(),
    }
}

/// The state of a subject at rest, from its record.
pub(super) fn stored_state(t: &StoredToken, now: SystemTime) -> CredentialState {
    let remaining = t.expires_at.and_then(|e| e.duration_since(now).ok());
    if t.logged_out {
        CredentialState::LoggedOut
    } else if remaining.is_some_and(|r| !r.is_zero()) {
        CredentialState::Valid
    } else if t.refresh_token.is_some() {
        // Refreshed on its next request.
        CredentialState::Expired
    } else {
        CredentialState::Failed
    }
}
