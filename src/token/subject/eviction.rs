//! Keeping memory bounded: idle subjects leave memory (their records stay in the store),
//! the least recently used go first when there are too many, and every subject's refresher
//! stops at shutdown.

use super::*;

impl SubjectRegistry {
    /// Takes subjects out of memory: those idle for `subject_idle`, then the least recently
    /// used beyond `max_subjects_in_memory`. Their refreshers stop; their records stay.
    pub fn sweep(&self) {
        let now = self.now_ms();
        let idle = self.config.idle.as_millis() as u64;
        let mut evicted = 0usize;
        self.live.retain(|subject, live| {
            let keep = now.saturating_sub(live.last_used_ms.load(Ordering::Relaxed)) < idle;
            if !keep {
                self.leave_memory(subject, live);
                evicted += 1;
            }
            keep
        });
        let over = self.live.len().saturating_sub(self.config.max_in_memory);
        if over > 0 {
            self.evict_least_recent(over, None);
        }
        if evicted > 0 {
            tracing::debug!(
                credential = &*self.credential,
                evicted,
                in_memory = self.live.len(),
                "idle subjects left memory"
            );
        }
    }
    /// Takes the least recently used subjects out of memory: `count`, or a 64th of the cap
    /// if that is more, so that at the cap the scan of every subject is paid once per
    /// many admissions rather than once per admission.
    pub(super) fn evict_least_recent(&self, count: usize, keep: Option<&SubjectKey>) {
        let mut by_age: Vec<(u64, SubjectKey)> = self
            .live
            .iter()
            .filter(|e| Some(e.key()) != keep)
            .map(|e| (e.last_used_ms.load(Ordering::Relaxed), e.key().clone()))
            .collect();
        let count = count.max(self.config.max_in_memory / 64).min(by_age.len());
        if count == 0 {
            return;
        }
        if count < by_age.len() {
            by_age.select_nth_unstable_by_key(count, |(at, _)| *at);
        }
        for (_, subject) in by_age.into_iter().take(count) {
            if let Some((subject, live)) = self.live.remove(&subject) {
                self.leave_memory(&subject, &live);
            }
        }
    }
    /// Stops a subject's refresher as it leaves memory; its record rests in the store
    /// (on behalf of, there is none: its token leaves with it).
    pub(super) fn leave_memory(&self, subject: &SubjectKey, live: &LiveSubject) {
        let _ = live.stop.send(true);
        if self.config.on_behalf_of() {
            return;
        }
        let generation = live.credential.generation_seen();
        if generation > 0 {
            self.left_at.insert(rollback_id(subject), generation);
        }
        // Counted as its record will read (see `stored_state`); a subject that never held a
        // token (a refused hand-over) has none, and the next census finds whatever it has.
        let token = live.slot.current();
        let state = match live.slot.state() {
            CredentialState::LoggedOut => CredentialState::LoggedOut,
            _ if token.is_none() => return,
            CredentialState::Failed => CredentialState::Failed,
            _ if token.is_some_and(|t| t.is_usable(Instant::now())) => CredentialState::Valid,
            _ => CredentialState::Expired,
        };
        self.census.rest(subject.as_str(), state);
    }
    /// Whether a record of `generation` is older than the subject's when it left memory
    /// (logged as the error it is).
    pub(super) fn rolled_back(&self, subject: &SubjectKey, generation: u64) -> bool {
        let Some(left) = self.left_at.get(&rollback_id(subject)).map(|g| *g) else {
            return false;
        };
        if generation >= left {
            return false;
        }
        tracing::error!(
            credential = &*self.credential,
            found = generation,
            left_at = left,
            "a subject's record is older than when it left memory: put back by someone with write access to the store? Refused; the subject must connect again"
        );
        true
    }

    /// Stops every subject's refresher (shutdown).
    pub fn stop_all(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        for live in self.live.iter() {
            let _ = live.stop.send(true);
        }
    }
    /// How often the sweep runs: often enough that `subject_idle` is kept to within a
    /// quarter of it.
    pub fn sweep_interval(&self) -> Duration {
        (self.config.idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5))
    }
}

/// A subject's entry in `left_at`: the subject itself is not kept.
pub(super) fn rollback_id(subject: &SubjectKey) -> [u8; 16] {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(subject.as_str().as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id
}
