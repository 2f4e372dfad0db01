//! Leases and change notifications among the refreshers of one process: all a store inside
//! the process needs, and what a shared store adds its own leases to.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{Lease, LeaseAnswer};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock would be a bug; the map stays usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Leases and change notifications among the refreshers of one process.
pub struct LocalCoordination {
    /// This process's owner id for leases.
    owner: String,
    /// Credential → (holder, until).
    leases: Mutex<HashMap<String, (String, Instant)>>,
    watches: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Default for LocalCoordination {
    fn default() -> Self {
        LocalCoordination {
            owner: format!("{:016x}", rand::random::<u64>()),
            leases: Mutex::new(HashMap::new()),
            watches: Mutex::new(HashMap::new()),
        }
    }
}

impl LocalCoordination {
    /// The lease, unless a holder's has not run out yet.
    pub(super) fn lease(&self, credential: &str, hold_for: Duration) -> LeaseAnswer {
        let mut leases = lock(&self.leases);
        let now = Instant::now();
        if leases
            .get(credential)
            .is_some_and(|(_, until)| *until > now)
        {
            return LeaseAnswer::Held;
        }
        let lease = Lease::new(credential, &self.owner);
        leases.insert(
            credential.to_string(),
            (lease.holder.clone(), now + hold_for),
        );
        LeaseAnswer::Taken(lease)
    }

    pub(super) fn renew(&self, lease: &Lease, hold_for: Duration) -> bool {
        let mut leases = lock(&self.leases);
        match leases.get_mut(&lease.credential) {
            Some((holder, until)) if *holder == lease.holder && *until > Instant::now() => {
                *until = Instant::now() + hold_for;
                true
            }
            _ => false,
        }
    }

    pub(super) fn release(&self, lease: &Lease) {
        let mut leases = lock(&self.leases);
        if leases
            .get(&lease.credential)
            .is_some_and(|(holder, _)| *holder == lease.holder)
        {
            leases.remove(&lease.credential);
        }
    }

    fn sender(&self, credential: &str) -> watch::Sender<u64> {
        lock(&self.watches)
            .entry(credential.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .clone()
    }

    pub(super) fn watch(&self, credential: &str) -> watch::Receiver<u64> {
        self.sender(credential).subscribe()
    }

    pub(super) fn changed(&self, credential: &str) {
        self.sender(credential)
            .send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Every record watched here changed (a shared store that may have lost writes): each
    /// credential and each subject in memory looks at the store again. Watches nobody holds
    /// any more (subjects that left memory) go.
    pub(super) fn changed_all(&self) {
        lock(&self.watches).retain(|_, tx| {
            tx.send_modify(|v| *v = v.wrapping_add(1));
            tx.receiver_count() > 0
        });
    }
}
