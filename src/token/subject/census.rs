//! How many subjects rest in the store (not in memory), per state. The registry counts the
//! subjects in memory itself; those at rest are counted by a census of the store (at start,
//! then every so often), and the count stays current between censuses: a subject that
//! leaves memory is added in the state it left in, one that enters memory is taken out.
//!
//! Only an 8-byte hash of each subject is kept, so 100,000 subjects at rest cost about
//! 2 MiB, and no subject is held in memory for counting's sake.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use super::{stored_state, StateCounts, SubjectKey};
use crate::store::StoreError;
use crate::token::slot::CredentialState;

/// A subject's index in [`CredentialState::ALL`] (and in [`StateCounts`]).
pub fn state_index(state: CredentialState) -> usize {
    CredentialState::ALL
        .iter()
        .position(|s| *s == state)
        .unwrap_or(0)
}

#[derive(Default)]
pub struct RestingCensus {
    hasher: RandomState,
    inner: Mutex<Resting>,
    /// Held while a census runs: the moves noted during one belong to it alone.
    running: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Resting {
    /// Subject hash → state index.
    states: HashMap<u64, u8>,
    counts: StateCounts,
    /// While a census runs: what left (`Some`) and entered (`None`) memory meanwhile, put
    /// over the census's result so a subject that moved is counted where it is now.
    moved_during_census: Option<HashMap<u64, Option<u8>>>,
}

impl Resting {
    fn insert(&mut self, hash: u64, state: u8) {
        if let Some(old) = self.states.insert(hash, state) {
            self.counts[old as usize] -= 1;
        }
        self.counts[state as usize] += 1;
    }

    fn remove(&mut self, hash: u64) {
        if let Some(old) = self.states.remove(&hash) {
            self.counts[old as usize] -= 1;
        }
    }
}

/// The subjects at rest as one census found them, to install with [`RestingCensus::finish`].
pub struct CensusCount(Vec<(u64, u8)>);

impl RestingCensus {
    fn lock(&self) -> MutexGuard<'_, Resting> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn hash(&self, subject: &str) -> u64 {
        self.hasher.hash_one(subject)
    }

    /// A subject left memory; its record rests in `state`.
    pub fn rest(&self, subject: &str, state: CredentialState) {
        let (hash, state) = (self.hash(subject), state_index(state) as u8);
        let mut resting = self.lock();
        resting.insert(hash, state);
        if let Some(moved) = &mut resting.moved_during_census {
            moved.insert(hash, Some(state));
        }
    }

    /// A subject entered memory: the registry counts it from now on.
    pub fn wake(&self, subject: &str) {
        let hash = self.hash(subject);
        let mut resting = self.lock();
        resting.remove(hash);
        if let Some(moved) = &mut resting.moved_during_census {
            moved.insert(hash, None);
        }
    }

    pub fn counts(&self) -> StateCounts {
        self.lock().counts
    }

    /// A census starts: from now on, moves are noted so the census's result can be
    /// corrected by them.
    pub fn begin(&self) -> CensusCount {
        self.lock().moved_during_census = Some(HashMap::new());
        CensusCount(Vec::new())
    }

    /// Counts one subject found at rest by the census.
    pub fn found(&self, count: &mut CensusCount, subject: &str, state: CredentialState) {
        count.0.push((self.hash(subject), state_index(state) as u8));
    }

    /// Replaces the count with the census's, corrected by what moved while it ran.
    pub fn finish(&self, count: CensusCount) {
        let mut resting = self.lock();
        let moved = resting.moved_during_census.take().unwrap_or_default();
        let mut fresh = Resting::default();
        for (hash, state) in count.0 {
            fresh.insert(hash, state);
        }
        for (hash, now) in moved {
            match now {
                Some(state) => fresh.insert(hash, state),
                None => fresh.remove(hash),
            }
        }
        *resting = fresh;
    }

    /// A census that failed: moves are no longer noted, and the count stays as it was.
    pub fn abandon(&self) {
        self.lock().moved_during_census = None;
    }
}

impl super::SubjectRegistry {
    /// Counts the subjects at rest in the store by state, a page at a time (see
    /// [`census`]); answers how many it found.
    pub async fn take_census(&self) -> Result<usize, StoreError> {
        const PAGE: usize = 500;
        if self.config.on_behalf_of() {
            return Ok(0); // nothing of theirs is stored
        }
        // One census at a time: the moves noted during one belong to it alone.
        let _one_at_a_time = self.census.running.lock().await;
        let prefix = SubjectKey::store_prefix(&self.credential);
        let mut count = self.census.begin();
        let mut found = 0;
        let mut after: Option<String> = None;
        loop {
            let keys = match self
                .starter
                .store
                .list(&prefix, after.as_deref(), PAGE)
                .await
            {
                Ok(keys) => keys,
                Err(e) => {
                    self.census.abandon();
                    return Err(e);
                }
            };
            let resting: Vec<(SubjectKey, String)> = keys
                .iter()
                .filter_map(|k| {
                    SubjectKey::from_store_key(&self.credential, k).map(|s| (s, k.clone()))
                })
                .filter(|(s, _)| !self.live.contains_key(s))
                .collect();
            let store_keys: Vec<String> = resting.iter().map(|(_, k)| k.clone()).collect();
            let sets = match self.starter.store.load_many(&store_keys).await {
                Ok(sets) => sets,
                // One record that does not open must not stop the count: the page again,
                // record by record, leaving out those that fail.
                Err(_) => {
                    let mut sets = Vec::with_capacity(store_keys.len());
                    for key in &store_keys {
                        sets.push(self.starter.store.load(key).await.ok().flatten());
                    }
                    sets
                }
            };
            let now = SystemTime::now();
            for ((subject, _), set) in resting.iter().zip(sets) {
                if let Some(set) = set {
                    self.census
                        .found(&mut count, subject.as_str(), stored_state(&set.token, now));
                    found += 1;
                }
            }
            if keys.len() < PAGE {
                break;
            }
            after = keys.last().cloned();
            // A large store is counted in slices, between the runtime's other work.
            tokio::task::yield_now().await;
        }
        self.census.finish(count);
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CredentialState::*;

    fn count(c: &RestingCensus, state: CredentialState) -> usize {
        c.counts()[state_index(state)]
    }

    #[test]
    fn moves_during_a_census_win_over_what_it_found() {
        let c = RestingCensus::default();
        c.rest("a", Valid);
        c.rest("a", Failed); // the same subject again: counted once, as it is now
        assert_eq!((count(&c, Valid), count(&c, Failed)), (0, 1));
        let mut census = c.begin();
        c.found(&mut census, "a", Failed);
        c.found(&mut census, "b", Valid);
        c.found(&mut census, "c", Expired);
        c.wake("b"); // entered memory after the census saw it at rest
        c.rest("d", LoggedOut); // left memory after the census passed it
        c.finish(census);
        let counts: Vec<usize> = [Valid, Expired, Failed, LoggedOut]
            .into_iter()
            .map(|s| count(&c, s))
            .collect();
        assert_eq!(counts, [0, 1, 1, 1]);
        c.wake("a");
        assert_eq!(count(&c, Failed), 0);
        c.wake("never-seen");
        assert_eq!(c.counts().iter().sum::<usize>(), 2);
    }

    #[test]
    fn an_abandoned_census_keeps_the_count() {
        let c = RestingCensus::default();
        c.rest("a", Valid);
        let mut census = c.begin();
        c.found(&mut census, "z", Valid);
        c.abandon();
        assert_eq!(count(&c, Valid), 1);
    }
}
