//! `assertion = { file = "…" }`: a JWT the platform issues and rewrites (SEP-1933 workload
//! identity, a projected service-account token), read again at every exchange and checked
//! to be an unexpired JWT before it is sent.

use std::path::{Path, PathBuf};

use super::{Assertion, AssertionSource};
use crate::config::SecretRef;
use crate::grant::GrantBuildError;
use crate::oauth::client_auth::read_jwt;
use crate::oauth::{GrantError, GrantInput, TokenEndpoint};

#[derive(Debug, Clone)]
pub struct FileConfig {
    pub file: PathBuf,
}

impl FileConfig {
    pub fn identity(&self) -> String {
        format!("assertion file {}", self.file.display())
    }
}

pub(super) fn lower(file: &Path) -> FileConfig {
    FileConfig {
        file: file.to_path_buf(),
    }
}

struct PlatformAssertion(SecretRef);

pub(super) fn build(config: &FileConfig) -> Result<Box<dyn AssertionSource>, GrantBuildError> {
    Ok(Box::new(PlatformAssertion(SecretRef::File(
        config.file.clone(),
    ))))
}

#[async_trait::async_trait]
impl AssertionSource for PlatformAssertion {
    async fn assertion(&self, _endpoint: &TokenEndpoint) -> Result<Assertion, GrantError> {
        Ok(Assertion {
            jwt: read_jwt(&self.0, GrantInput::Assertion)?,
            scopes_inside: false,
        })
    }
}
