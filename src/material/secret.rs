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

/// Why a secret reference gives no value. The messages name the variable or file, never
/// a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is empty")]
    EnvEmpty(String),
    #[error("environment variable {0} is not set")]
    EnvUnset(String),
    #[error("{{ header = \"…\" }} takes a value from each request: only a token_exchange subject_token can come from there (on-behalf-of)")]
    HeaderNotAllowed,
    #[error("cannot read secret file {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("secret file {} is empty", path.display())]
    EmptyFile { path: PathBuf },
}

/// A validated secret reference. Lowering only names the source; reading it (the
/// environment variable, the file) is the check step's work, so that a config can be
/// validated where its files and variables do not exist (`bearerd inject`).
#[derive(Clone)]
pub enum SecretRef {
    Value(SecretString),
    /// An environment variable, read at each use (the environment of a running process
    /// does not change, so the check step's read stands for all of them).
    Env(String),
    File(PathBuf),
}

impl std::fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretRef::Value(_) => f.write_str("SecretRef::Value([REDACTED])"),
            SecretRef::Env(name) => write!(f, "SecretRef::Env({name})"),
            SecretRef::File(p) => write!(f, "SecretRef::File({})", p.display()),
        }
    }
}

impl SecretRef {
    /// Lowers the raw form without reading anything; errors are plain messages, the caller
    /// adds file, line and key.
    pub fn lower(raw: &RawSecretRef) -> Result<Self, SecretError> {
        match raw {
            RawSecretRef::Inline(s) => Ok(SecretRef::Value(s.clone())),
            RawSecretRef::Env { env } => Ok(SecretRef::Env(env.clone())),
            RawSecretRef::Header { .. } => Err(SecretError::HeaderNotAllowed),
            RawSecretRef::File { file } => Ok(SecretRef::File(file.clone())),
        }
    }

    /// The current value. Files and variables are read again on every call.
    pub fn resolve(&self) -> Result<SecretString, SecretError> {
        match self {
            SecretRef::Value(s) => Ok(s.clone()),
            SecretRef::Env(name) => match std::env::var(name) {
                Ok(v) if !v.trim().is_empty() => Ok(SecretString::from(v.trim().to_string())),
                Ok(_) => Err(SecretError::EnvEmpty(name.clone())),
                Err(_) => Err(SecretError::EnvUnset(name.clone())),
            },
            SecretRef::File(p) => read_secret_file(p),
        }
    }

    /// Where the value comes from, for `check` output and status (never the value).
    pub fn describe(&self) -> String {
        match self {
            SecretRef::Value(_) | SecretRef::Env(_) => "inline/env".to_string(),
            SecretRef::File(p) => format!("file {}", p.display()),
        }
    }

    pub fn file(&self) -> Option<&PathBuf> {
        match self {
            SecretRef::File(p) => Some(p),
            SecretRef::Value(_) | SecretRef::Env(_) => None,
        }
    }
}

fn read_secret_file(path: &PathBuf) -> Result<SecretString, SecretError> {
    let text = std::fs::read_to_string(path).map_err(|source| SecretError::Unreadable {
        path: path.clone(),
        source,
    })?;
    let value = text.trim();
    if value.is_empty() {
        return Err(SecretError::EmptyFile { path: path.clone() });
    }
    Ok(SecretString::from(value.to_string()))
}

/// Compares without exposing either value in a panic message or log.
pub fn same_secret(a: &SecretString, b: &SecretString) -> bool {
    a.expose_secret() == b.expose_secret()
}
