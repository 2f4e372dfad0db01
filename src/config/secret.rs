//! Secret references: a value given inline, read from an environment variable, or read
//! from a file (re-read at every use, so a rotated Kubernetes secret is picked up).

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// A secret as written in the config: `"literal"`, `{ env = "NAME" }` or `{ file = "/path" }`.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
pub enum RawSecretRef {
    Inline(SecretString),
    Env {
        env: String,
    },
    File {
        file: PathBuf,
    },
    /// Each request's header (on-behalf-of `subject_token` only).
    Header {
        header: String,
    },
}

/// A validated secret reference. `Env` values are captured at load time: the environment of a
/// running process does not change, so resolving once gives the error at startup.
#[derive(Clone)]
pub enum SecretRef {
    Value(SecretString),
    File(PathBuf),
}

impl std::fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretRef::Value(_) => f.write_str("SecretRef::Value([REDACTED])"),
            SecretRef::File(p) => write!(f, "SecretRef::File({})", p.display()),
        }
    }
}

impl SecretRef {
    /// Lowers the raw form; errors are plain messages, the caller adds file, line and key.
    pub fn lower(raw: &RawSecretRef) -> Result<Self, String> {
        match raw {
            RawSecretRef::Inline(s) => Ok(SecretRef::Value(s.clone())),
            RawSecretRef::Env { env } => match std::env::var(env) {
                Ok(v) if !v.trim().is_empty() => {
                    Ok(SecretRef::Value(SecretString::from(v.trim().to_string())))
                }
                Ok(_) => Err(format!("environment variable {env} is empty")),
                Err(_) => Err(format!("environment variable {env} is not set")),
            },
            RawSecretRef::Header { .. } => Err(
                "{ header = \"…\" } takes a value from each request: only a token_exchange subject_token can come from there (on-behalf-of)".into(),
            ),
            RawSecretRef::File { file } => {
                // Read once now so a missing or unreadable file is a config error, not a
                // failure at the first refresh.
                read_secret_file(file)?;
                Ok(SecretRef::File(file.clone()))
            }
        }
    }

    /// The current value. Files are read again on every call.
    pub fn resolve(&self) -> Result<SecretString, String> {
        match self {
            SecretRef::Value(s) => Ok(s.clone()),
            SecretRef::File(p) => read_secret_file(p),
        }
    }

    /// Where the value comes from, for `check` output and status (never the value).
    pub fn describe(&self) -> String {
        match self {
            SecretRef::Value(_) => "inline/env".to_string(),
            SecretRef::File(p) => format!("file {}", p.display()),
        }
    }

    pub fn file(&self) -> Option<&PathBuf> {
        match self {
            SecretRef::File(p) => Some(p),
            SecretRef::Value(_) => None,
        }
    }
}

fn read_secret_file(path: &PathBuf) -> Result<SecretString, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
    let value = text.trim();
    if value.is_empty() {
        return Err(format!("secret file {} is empty", path.display()));
    }
    Ok(SecretString::from(value.to_string()))
}

/// Compares without exposing either value in a panic message or log.
pub fn same_secret(a: &SecretString, b: &SecretString) -> bool {
    a.expose_secret() == b.expose_secret()
}
