//! Rotation policy: which refresh token wins when a rotation journal and the stored record
//! disagree, and when a configured seed counts as spent. Pure, and the engine's: a store
//! that keeps journals applies it (`TokenStore::recover_journals`) when the engine asks at
//! startup.

use crate::store::journal::JournalEntry;
use crate::store::{fingerprint, StoredToken};

/// The record after a journal that a helper of the previous run left: the journaled
/// refresh token over the stored one, when the journal replaced it (or the store holds
/// none); `None` when the journal is older than the record, which is then discarded, so a
/// stale journal never brings back a spent token. A logout stands.
pub fn after_journal(current: Option<StoredToken>, entry: JournalEntry) -> Option<StoredToken> {
    let stored_rt = current.as_ref().and_then(|c| c.refresh_token.as_ref());
    let applies = match (&current, stored_rt) {
        (Some(c), _) if c.logged_out => false,
        (_, Some(rt)) => entry.supersedes(&fingerprint(rt)),
        (_, None) => true,
    };
    if !applies {
        return None;
    }
    let mut record = current.unwrap_or_else(StoredToken::empty);
    if record.refresh_token.is_none() {
        // The first replaced token was a configured seed: it must never be sent again.
        record.spent_seed = entry.replaces.first().cloned();
    }
    record.refresh_token = Some(entry.refresh_token);
    Some(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::{ExposeSecret, SecretString};

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_string())
    }

    fn stored(rt: &str) -> StoredToken {
        StoredToken {
            refresh_token: Some(secret(rt)),
            ..StoredToken::empty()
        }
    }

    /// `rt` journaled as replacing `replaces`, on top of `previous`.
    fn entry(previous: Option<JournalEntry>, rt: &str, replaces: &str) -> JournalEntry {
        JournalEntry::after(previous, secret(rt), fingerprint(&secret(replaces)))
    }

    fn rt_of(record: Option<StoredToken>) -> Option<String> {
        record?.refresh_token.map(|r| r.expose_secret().to_string())
    }

    #[test]
    fn a_journal_applies_only_over_the_token_it_replaced() {
        let applied = after_journal(Some(stored("rt-1")), entry(None, "rt-2", "rt-1"));
        assert_eq!(rt_of(applied).as_deref(), Some("rt-2"));
        // Stale: the store moved past it; it never brings back a spent token.
        assert!(after_journal(Some(stored("rt-2")), entry(None, "rt-1", "rt-0")).is_none());
        // A logout stands.
        let logged_out = StoredToken {
            logged_out: true,
            ..stored("rt-1")
        };
        assert!(after_journal(Some(logged_out), entry(None, "rt-2", "rt-1")).is_none());
    }

    #[test]
    fn a_journal_over_a_seed_marks_the_seed_spent() {
        let record = after_journal(None, entry(None, "rt-1", "the-seed")).unwrap();
        assert_eq!(record.spent_seed, Some(fingerprint(&secret("the-seed"))));
        assert_eq!(rt_of(Some(record)).as_deref(), Some("rt-1"));
    }

    #[test]
    fn rotations_the_store_missed_chain_in_the_journal() {
        let chained = entry(Some(entry(None, "rt-2", "rt-1")), "rt-3", "rt-2");
        let applied = after_journal(Some(stored("rt-1")), chained);
        assert_eq!(rt_of(applied).as_deref(), Some("rt-3"));
    }

    /// A helper that journals the same rotation again (its first write's answer was lost)
    /// keeps the chain: a store still at the oldest token finds the newest.
    #[test]
    fn journaling_the_same_rotation_twice_keeps_the_chain() {
        let chained = entry(Some(entry(None, "rt-2", "rt-1")), "rt-3", "rt-2");
        let again = entry(Some(chained), "rt-3", "rt-2");
        let applied = after_journal(Some(stored("rt-1")), again);
        assert_eq!(rt_of(applied).as_deref(), Some("rt-3"));
    }
}
