//! The memory store: token sets for the life of the process. Also the in-process leases and
//! change notifications that every store local to one process (memory, file) uses.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{
    LocalCoordination, SaveOutcome, StoreBackend, StoreError, StoredSet, StoredToken, TokenStore,
};

/// `backend = "memory"` (the default): tokens live as long as the process.
pub struct MemoryBackend;

impl super::Backend for MemoryBackend {
    const NAME: &'static str = crate::config::DEFAULT_BACKEND;
    type Table = RawMemoryStore;
}

crate::config::lowering::store_table! {
    /// The memory store takes no keys of its own.
    pub struct RawMemoryStore {}
}

impl crate::config::LowerStore for RawMemoryStore {
    fn lower(
        &self,
        _map: &crate::config::SourceMap,
    ) -> Result<crate::config::StoreConfig, crate::config::ConfigError> {
        Ok(crate::config::StoreConfig::Memory)
    }
}

pub struct MemoryStore {
    sets: Mutex<HashMap<String, StoredSet>>,
    local: LocalCoordination,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore {
            sets: Mutex::new(HashMap::new()),
            local: LocalCoordination::default(),
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

/// The compare-and-set rule every store applies: `Saved` with the next generation when the
/// current generation is `expected`, else the conflict with what is there.
pub(super) fn compare_and_set(
    current: Option<&StoredSet>,
    expected: Option<u64>,
) -> Result<u64, SaveOutcome> {
    match (current.map(|c| c.generation), expected) {
        (None, None) => Ok(1),
        (Some(now), Some(want)) if now == want => Ok(now + 1),
        _ => Err(SaveOutcome::Conflict {
            current: current.cloned().map(Box::new),
        }),
    }
}

#[async_trait]
impl TokenStore for MemoryStore {
    fn backend(&self) -> StoreBackend {
        StoreBackend::Memory
    }

    async fn load(&self, credential: &str) -> Result<Option<StoredSet>, StoreError> {
        Ok(lock(&self.sets).get(credential).cloned())
    }

    async fn save(
        &self,
        credential: &str,
        token: &StoredToken,
        expected: Option<u64>,
    ) -> Result<SaveOutcome, StoreError> {
        let mut sets = lock(&self.sets);
        let generation = match compare_and_set(sets.get(credential), expected) {
            Ok(g) => g,
            Err(conflict) => return Ok(conflict),
        };
        sets.insert(
            credential.to_string(),
            StoredSet {
                token: token.clone(),
                generation,
            },
        );
        drop(sets);
        self.local.changed(credential);
        Ok(SaveOutcome::Saved { generation })
    }

    async fn remove(&self, credential: &str) -> Result<(), StoreError> {
        lock(&self.sets).remove(credential);
        self.local.changed(credential);
        Ok(())
    }

    fn coordination(&self) -> &LocalCoordination {
        &self.local
    }

    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let sets = lock(&self.sets);
        Ok(page(sets.keys(), prefix, after, limit))
    }
}

/// One page of keys: those with `prefix`, after `after`, in order, at most `limit`.
pub(super) fn page<'a>(
    keys: impl Iterator<Item = &'a String>,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Vec<String> {
    let mut matching: Vec<&String> = keys
        .filter(|k| k.starts_with(prefix) && after.is_none_or(|a| k.as_str() > a))
        .collect();
    matching.sort_unstable();
    matching.into_iter().take(limit).cloned().collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock would be a bug; the map stays usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LeaseAnswer;
    use std::time::Duration;

    fn token() -> StoredToken {
        StoredToken::empty()
    }

    #[tokio::test]
    async fn saves_compare_and_set_on_the_generation() {
        let s = MemoryStore::new();
        let mut watch = s.watch("c");
        assert!(matches!(
            s.save("c", &token(), None).await.unwrap(),
            SaveOutcome::Saved { generation: 1 }
        ));
        assert!(watch.has_changed().unwrap());
        watch.mark_unchanged();
        // A writer that saw no record, or an older generation, loses.
        match s.save("c", &token(), None).await.unwrap() {
            SaveOutcome::Conflict { current } => assert_eq!(current.unwrap().generation, 1),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            s.save("c", &token(), Some(1)).await.unwrap(),
            SaveOutcome::Saved { generation: 2 }
        ));
        assert!(matches!(
            s.save("c", &token(), Some(1)).await.unwrap(),
            SaveOutcome::Conflict { .. }
        ));
        assert_eq!(s.load("c").await.unwrap().unwrap().generation, 2);
        assert!(watch.has_changed().unwrap(), "each save is a change");
    }

    #[tokio::test]
    async fn one_lease_holder_at_a_time_until_it_runs_out() {
        let s = MemoryStore::new();
        let lease = |c: &'static str, hold_for| {
            let s = &s;
            async move { s.lease(c, hold_for, true).await.unwrap() }
        };
        let LeaseAnswer::Taken(taken) = lease("c", Duration::from_secs(60)).await else {
            panic!("the first asker takes the lease (and never settles)")
        };
        assert!(matches!(
            lease("c", Duration::from_secs(60)).await,
            LeaseAnswer::Held
        ));
        assert!(matches!(
            lease("d", Duration::from_secs(60)).await,
            LeaseAnswer::Taken(_)
        ));
        s.release(&taken).await.unwrap();
        assert!(matches!(
            lease("c", Duration::ZERO).await,
            LeaseAnswer::Taken(_)
        ));
        // A lease of no time has run out at once.
        assert!(matches!(
            lease("c", Duration::from_secs(60)).await,
            LeaseAnswer::Taken(_)
        ));
    }
}
