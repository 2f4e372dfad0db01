//! Config errors that name the file, the line and column, and the key.

use std::cell::RefCell;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::pending::{Material, MaterialCheck, Place};
use super::{ClientAuthKind, ClientIdentity, SecretRef};
use crate::material::RawSecretRef;

#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// Dotted key path, e.g. `upstreams.crm.credential`.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if let Some(key) = &self.key {
            write!(f, "`{key}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Finds positions in the TOML source so that errors found after parsing (a missing
/// credential, a duplicate prefix) still point at the line the user must change.
pub struct SourceMap<'a> {
    file: &'a Path,
    text: &'a str,
    doc: Option<toml_edit::ImDocument<&'a str>>,
    /// What lowering found to read later, in the order it was written (the check step).
    checks: RefCell<Vec<MaterialCheck>>,
    /// The client authentication methods the config is read with.
    client_auths: &'static [&'static dyn ClientAuthKind],
}

impl<'a> SourceMap<'a> {
    pub fn new(file: &'a Path, text: &'a str) -> Self {
        let doc = toml_edit::ImDocument::parse(text).ok();
        SourceMap {
            file,
            text,
            doc,
            checks: RefCell::default(),
            client_auths: &[],
        }
    }

    /// Lowering with these client authentication methods.
    pub fn with_client_auths(self, methods: &'static [&'static dyn ClientAuthKind]) -> Self {
        SourceMap {
            client_auths: methods,
            ..self
        }
    }

    pub fn client_auths(&self) -> &'static [&'static dyn ClientAuthKind] {
        self.client_auths
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
        (line, column)
    }

    /// The span of the key (or, failing that, its table) at `path`.
    fn span_of(&self, path: &[&str]) -> Option<Range<usize>> {
        let doc = self.doc.as_ref()?;
        let mut table: &dyn toml_edit::TableLike = doc.as_table();
        let mut best = None;
        let mut i = 0;
        while i < path.len() {
            let (key, item) = table.get_key_value(path[i])?;
            best = key.span().or_else(|| item.span()).or(best);
            i += 1;
            if i == path.len() {
                break;
            }
            table = match item {
                toml_edit::Item::Table(t) => t,
                toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => t,
                // `[[events.webhook]]`: the next part is the entry's index.
                toml_edit::Item::ArrayOfTables(a) => {
                    let Some(entry) = path[i].parse().ok().and_then(|n: usize| a.get(n)) else {
                        break;
                    };
                    best = entry.span().or(best);
                    i += 1;
                    if i == path.len() {
                        break;
                    }
                    entry
                }
                _ => break,
            };
        }
        best
    }

    /// The string value at `path`, if there is one.
    pub fn str_at(&self, path: &[&str]) -> Option<&str> {
        let mut item = self.doc.as_ref()?.as_item();
        for part in path {
            item = item.get(part)?;
        }
        item.as_str()
    }

    /// The place of the key `path` (dotted), or of the nearest enclosing key that exists,
    /// or the top of the file.
    pub fn place(&self, path: &str) -> Place {
        let parts: Vec<&str> = path.split('.').collect();
        let span = (1..=parts.len())
            .rev()
            .find_map(|n| self.span_of(&parts[..n]));
        let (line, column) = span.map_or((1, 1), |s| self.line_col(s.start));
        Place {
            line,
            column,
            key: path.to_string(),
        }
    }

    /// An error at the key `path` (dotted), or at the top of the file when it is absent.
    pub fn error_at(&self, path: &str, message: impl fmt::Display) -> ConfigError {
        let at = self.place(path);
        ConfigError {
            file: self.file.to_path_buf(),
            line: at.line,
            column: at.column,
            key: Some(at.key),
            message: message.to_string(),
        }
    }

    /// A secret reference; a variable or a file is read by the check step.
    pub fn lower_secret(&self, key: &str, raw: &RawSecretRef) -> Result<SecretRef, ConfigError> {
        let secret = SecretRef::lower(raw).map_err(|m| self.error_at(key, m))?;
        if !matches!(secret, SecretRef::Value(_)) {
            self.check_later(key, Material::Secret(secret.clone()));
        }
        Ok(secret)
    }

    /// A certificate and its key, for the check step to read together.
    pub fn check_identity_later(&self, table: &str, identity: &ClientIdentity) {
        self.check_later(
            &format!("{table}.client_cert"),
            Material::Identity {
                identity: identity.clone(),
                key_at: self.place(&format!("{table}.client_key")),
            },
        );
    }

    /// Records `what` for the check step, at the key `path`.
    pub fn check_later(&self, path: &str, what: Material) {
        let at = self.place(path);
        self.checks.borrow_mut().push(MaterialCheck { at, what });
    }

    /// What lowering recorded for the check step.
    pub fn take_checks(&self) -> Vec<MaterialCheck> {
        self.checks.take()
    }

    /// Turns a serde/TOML error (unknown key, wrong type, syntax) into a located error.
    pub fn toml_error(&self, err: &toml::de::Error) -> ConfigError {
        let (line, column) = err.span().map_or((1, 1), |s| self.line_col(s.start));
        let key = err.span().and_then(|s| self.key_path_at(s.start));
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            key,
            message: match err.message().trim() {
                // toml says nothing about a value cut off at the end of the file.
                "" => {
                    "a value is missing here (the file ends in the middle of a `key = value` line?)"
                        .to_string()
                }
                m => m.to_string(),
            },
        }
    }

    /// The dotted path of the innermost key whose key or value contains `offset`.
    fn key_path_at(&self, offset: usize) -> Option<String> {
        fn walk(
            table: &dyn toml_edit::TableLike,
            offset: usize,
            prefix: &mut Vec<String>,
        ) -> Option<Vec<String>> {
            for (key, _) in table.iter() {
                let Some((k, item)) = table.get_key_value(key) else {
                    continue;
                };
                let in_key = k.span().is_some_and(|s| s.contains(&offset));
                let in_item = item.span().is_some_and(|s| s.contains(&offset));
                let nested: Option<&dyn toml_edit::TableLike> = match item {
                    toml_edit::Item::Table(t) => Some(t),
                    toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => Some(t),
                    _ => None,
                };
                prefix.push(k.get().to_string());
                if let Some(t) = nested {
                    if let Some(found) = walk(t, offset, prefix) {
                        return Some(found);
                    }
                }
                if in_key || in_item {
                    return Some(prefix.clone());
                }
                prefix.pop();
            }
            None
        }
        let doc = self.doc.as_ref()?;
        walk(doc.as_table(), offset, &mut Vec::new()).map(|p| p.join("."))
    }
}
