//! `SubjectKey`: the end user a request names in a per-subject credential's header, checked
//! once at the edge; and `SubjectTagger`, the short keyed hash that names a subject in logs
//! (subjects are often e-mail addresses).

use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::store::RecordKey;

/// A valid subject: 1–256 printable ASCII bytes, no space at either end.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubjectKey(Arc<str>);

/// Why a subject value is refused (the `detail` of a 400 `subject-required`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSubject {
    #[error("the request has no subject header")]
    Missing,
    #[error("the subject is empty")]
    Empty,
    #[error("the subject is {0} bytes; at most 256 are allowed")]
    TooLong(usize),
    #[error("the subject may hold printable ASCII only, with no space at either end")]
    NotPrintable,
    #[error("the subject header appears more than once")]
    Repeated,
    #[error("the user's token must be 1 to 16384 visible ASCII characters (optionally after \"Bearer \")")]
    BadToken,
}

impl SubjectKey {
    pub const MAX_LEN: usize = 256;

    pub fn parse(value: &[u8]) -> Result<SubjectKey, InvalidSubject> {
        Self::check(value).map(|text| SubjectKey(Arc::from(text)))
    }

    /// On behalf of: the subject a user's token stands for, by its hash (`sha256:` and 32
    /// hex digits), so the token itself is never a key, a log field or a path.
    pub fn of_token(token: &secrecy::SecretString) -> SubjectKey {
        use secrecy::ExposeSecret;
        let digest = Sha256::digest(token.expose_secret().as_bytes());
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        SubjectKey(Arc::from(format!("sha256:{hex}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The subject's record key in the store.
    pub fn store_key(&self, credential: &str) -> String {
        RecordKey::Subject {
            credential,
            subject: &self.0,
        }
        .to_key()
    }

    /// The subject of a store key of `credential`, if it is one.
    pub fn from_store_key(credential: &str, key: &str) -> Option<SubjectKey> {
        match RecordKey::parse(key) {
            RecordKey::Subject {
                credential: c,
                subject,
            } if c == credential => SubjectKey::parse(subject.as_bytes()).ok(),
            _ => None,
        }
    }

    /// The prefix every store key of `credential`'s subjects starts with.
    pub fn store_prefix(credential: &str) -> String {
        RecordKey::subjects_prefix(credential)
    }
}

/// Looked up by the header's text, without making a key first (no allocation per request).
impl std::borrow::Borrow<str> for SubjectKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl SubjectKey {
    /// Checks a subject value without taking a copy of it.
    pub fn check(value: &[u8]) -> Result<&str, InvalidSubject> {
        if value.is_empty() {
            return Err(InvalidSubject::Empty);
        }
        if value.len() > Self::MAX_LEN {
            return Err(InvalidSubject::TooLong(value.len()));
        }
        let printable = value.iter().all(|b| (0x20..=0x7e).contains(b));
        if !printable || value[0] == b' ' || value[value.len() - 1] == b' ' {
            return Err(InvalidSubject::NotPrintable);
        }
        std::str::from_utf8(value).map_err(|_| InvalidSubject::NotPrintable)
    }
}

/// Never prints the subject: `Debug` is what ends up in logs by accident.
impl fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SubjectKey(…)")
    }
}

/// Names subjects in logs by a keyed hash: stable for the life of the store key (or of the
/// process, with the memory store), and useless to anyone without that key.
#[derive(Clone)]
pub struct SubjectTagger {
    key: [u8; 32],
}

impl SubjectTagger {
    /// Keyed from the store key when there is one, so tags stay the same across restarts.
    pub fn new(store_key: Option<&[u8; 32]>) -> SubjectTagger {
        let key = match store_key {
            Some(k) => Sha256::new()
                .chain_update(b"bearerd subject log tag\n")
                .chain_update(k)
                .finalize()
                .into(),
            None => rand::random(),
        };
        SubjectTagger { key }
    }

    /// `s:` and 12 hex digits.
    pub fn tag(&self, subject: &SubjectKey) -> String {
        let digest = Sha256::new()
            .chain_update(self.key)
            .chain_update(subject.as_str().as_bytes())
            .finalize();
        let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        format!("s:{hex}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_printable_ascii_of_1_to_256_bytes() {
        assert!(SubjectKey::parse(b"alice@example.com").is_ok());
        assert!(SubjectKey::parse(b"a b").is_ok());
        assert_eq!(SubjectKey::parse(b""), Err(InvalidSubject::Empty));
        assert_eq!(
            SubjectKey::parse(&[b'a'; 257]),
            Err(InvalidSubject::TooLong(257))
        );
        assert!(SubjectKey::parse(&[b'a'; 256]).is_ok());
        for bad in [
            &b" alice"[..],
            b"alice ",
            b"al\tice",
            b"al\nice",
            "älice".as_bytes(),
        ] {
            assert_eq!(SubjectKey::parse(bad), Err(InvalidSubject::NotPrintable));
        }
    }

    #[test]
    fn store_keys_round_trip_and_stay_within_their_credential() {
        let s = SubjectKey::parse(b"a\\b/c:d").unwrap();
        let key = s.store_key("gmail");
        assert_eq!(SubjectKey::from_store_key("gmail", &key), Some(s));
        assert_eq!(SubjectKey::from_store_key("gmai", &key), None);
        assert_eq!(SubjectKey::from_store_key("gmail", "gmail"), None);
    }

    #[test]
    fn tags_are_stable_per_key_and_hide_the_subject() {
        let key = [7u8; 32];
        let s = SubjectKey::parse(b"alice@example.com").unwrap();
        let a = SubjectTagger::new(Some(&key));
        let tag = a.tag(&s);
        assert_eq!(tag, SubjectTagger::new(Some(&key)).tag(&s));
        assert_ne!(tag, SubjectTagger::new(Some(&[8u8; 32])).tag(&s));
        assert!(!tag.contains("alice") && tag.len() == 14, "{tag}");
        assert!(!format!("{s:?}").contains("alice"));
    }
}
