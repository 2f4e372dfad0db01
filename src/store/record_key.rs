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
}
