//! The key of a record in a store: a credential's own, or one of its subjects'. Written as
//! `{credential}\n{subject}` (no subject holds a newline): built and read here only.

/// A record key, read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKey<'a> {
    /// A credential's own record.
    Credential(&'a str),
    /// A subject's record of a per-subject credential.
    Subject {
        credential: &'a str,
        subject: &'a str,
    },
}

const SEPARATOR: char = '\n';

/// How a store names a subject where others can read the name (a file store's row keys, a
/// rotation journal's file name, a Redis key): 32 hex digits of a SHA-256 keyed by a key
/// derived from the store key, so nobody without the store key can check a guessed subject
/// (an e-mail address) against a listing.
pub struct SubjectNames {
    key: [u8; 32],
}

impl SubjectNames {
    pub fn new(store_key: &[u8; 32]) -> SubjectNames {
        use sha2::Digest;
        // The label is the Redis store's, which named subjects this way first: one
        // derivation for every store, and no Redis key moves.
        SubjectNames {
            key: sha2::Sha256::new()
                .chain_update(b"bearerd redis subject names\0")
                .chain_update(store_key)
                .finalize()
                .into(),
        }
    }

    /// The subject's keyed hash.
    pub fn hash(&self, subject: &str) -> String {
        use sha2::Digest;
        sha2::Sha256::new()
            .chain_update(self.key)
            .chain_update(subject.as_bytes())
            .finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The key a record is kept under where it can be read: a credential's own as it is, a
    /// subject's as `{credential}\n{hash}`. Ordered by the hash, not the subject.
    pub fn stored_key(&self, key: &str) -> String {
        match RecordKey::parse(key) {
            RecordKey::Subject {
                credential,
                subject,
            } => format!("{credential}{SEPARATOR}{}", self.hash(subject)),
            RecordKey::Credential(c) => c.to_string(),
        }
    }
}

impl<'a> RecordKey<'a> {
    pub fn parse(key: &'a str) -> RecordKey<'a> {
        match key.rsplit_once(SEPARATOR) {
            Some((credential, subject)) => RecordKey::Subject {
                credential,
                subject,
            },
            None => RecordKey::Credential(key),
        }
    }

    /// The credential the record belongs to.
    pub fn credential(self) -> &'a str {
        match self {
            RecordKey::Credential(c) | RecordKey::Subject { credential: c, .. } => c,
        }
    }

    /// The subject, for a subject's record.
    pub fn subject(self) -> Option<&'a str> {
        match self {
            RecordKey::Subject { subject, .. } => Some(subject),
            RecordKey::Credential(_) => None,
        }
    }

    /// The key as the store holds it.
    pub fn to_key(self) -> String {
        match self {
            RecordKey::Credential(c) => c.to_string(),
            RecordKey::Subject {
                credential,
                subject,
            } => format!("{credential}{SEPARATOR}{subject}"),
        }
    }

    /// What every subject key of `credential` starts with.
    pub fn subjects_prefix(credential: &str) -> String {
        format!("{credential}{SEPARATOR}")
    }

    /// The credential whose subjects `prefix` (from [`RecordKey::subjects_prefix`]) lists.
    pub fn credential_of_subjects_prefix(prefix: &str) -> Option<&str> {
        prefix
            .strip_suffix(SEPARATOR)
            .filter(|c| !c.contains(SEPARATOR))
    }

    /// The record as errors name it: a subject's never shows the subject (often an e-mail
    /// address, and errors reach the logs).
    pub fn describe(self) -> String {
        match self {
            RecordKey::Subject { credential, .. } => {
                format!("a subject's record of credential {credential:?}")
            }
            RecordKey::Credential(c) => format!("the record for credential {c:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_reads_back_as_it_was_built() {
        for key in [
            RecordKey::Credential("crm"),
            RecordKey::Subject {
                credential: "gmail",
                subject: "alice@example.com",
            },
        ] {
            assert_eq!(RecordKey::parse(&key.to_key()), key);
        }
        let prefix = RecordKey::subjects_prefix("gmail");
        assert!(RecordKey::Subject {
            credential: "gmail",
            subject: "bob"
        }
        .to_key()
        .starts_with(&prefix));
        assert_eq!(
            RecordKey::credential_of_subjects_prefix(&prefix),
            Some("gmail")
        );
        assert_eq!(RecordKey::credential_of_subjects_prefix("gmail"), None);
        assert!(!RecordKey::parse("gmail\nalice@example.com")
            .describe()
            .contains("alice"));
    }

    #[test]
    fn stored_keys_hide_the_subject_behind_the_store_key() {
        let (one, other) = (SubjectNames::new(&[1; 32]), SubjectNames::new(&[2; 32]));
        let key = "gmail\nalice@example.com";
        let stored = one.stored_key(key);
        assert!(
            stored.starts_with("gmail\n") && !stored.contains("alice"),
            "{stored}"
        );
        assert_eq!(stored, one.stored_key(key), "the same name every time");
        assert_ne!(stored, other.stored_key(key), "another key, another name");
        assert_eq!(one.stored_key("gmail"), "gmail");
    }
}
