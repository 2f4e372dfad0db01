//! Client identities for mutual TLS: a certificate chain and its key, read from their files
//! and checked to belong together.

use std::path::Path;

use sha2::{Digest, Sha256};

use super::signing::parse_private_key;

/// The client certificate (chain) and its key for mutual TLS, read again when they change.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ClientIdentity {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// A client certificate and key as read from their files, checked to belong together.
pub struct LoadedIdentity {
    pub identity: reqwest::Identity,
    /// SHA-256 over both files, to notice a rotation.
    pub fingerprint: [u8; 32],
}

/// Which of the two files an identity error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityFile {
    Cert,
    Key,
}

impl IdentityFile {
    /// The config key that names this file.
    pub fn config_key(self) -> &'static str {
        match self {
            IdentityFile::Cert => "client_cert",
            IdentityFile::Key => "client_key",
        }
    }
}

/// Why a client identity cannot be used. Messages name the files, never their content.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct IdentityError {
    /// The file at fault: the key file for its own faults, else the certificate (also for a
    /// pair that does not match).
    pub file: IdentityFile,
    message: String,
}

impl IdentityError {
    fn cert(message: String) -> IdentityError {
        IdentityError {
            file: IdentityFile::Cert,
            message,
        }
    }

    fn key(message: String) -> IdentityError {
        IdentityError {
            file: IdentityFile::Key,
            message,
        }
    }
}

/// Reads the certificate chain and key for mutual TLS.
pub fn load_identity(id: &ClientIdentity) -> Result<LoadedIdentity, IdentityError> {
    let files = read_identity(id)?;
    identity_from_pem(id, &files.cert, &files.key)
}

/// The bytes of a certificate chain and its key, read together.
pub struct IdentityFiles {
    pub cert: Vec<u8>,
    /// Wiped when dropped.
    pub key: zeroize::Zeroizing<Vec<u8>>,
}

impl IdentityFiles {
    pub fn fingerprint(&self) -> [u8; 32] {
        super::watched::fingerprint([self.cert.as_slice(), self.key.as_slice()])
    }
}

/// Reads both files, without checking them.
pub fn read_identity(id: &ClientIdentity) -> Result<IdentityFiles, IdentityError> {
    let read = |p: &Path, file: IdentityFile| {
        std::fs::read(p).map_err(|e| IdentityError {
            file,
            message: format!("cannot read {} {}: {e}", file.config_key(), p.display()),
        })
    };
    Ok(IdentityFiles {
        cert: read(&id.cert, IdentityFile::Cert)?,
        key: zeroize::Zeroizing::new(read(&id.key, IdentityFile::Key)?),
    })
}

/// The identity of this certificate chain and key, as read from `id`'s files (which name
/// them in messages).
pub fn identity_from_pem(
    id: &ClientIdentity,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<LoadedIdentity, IdentityError> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| {
            IdentityError::cert(format!(
                "client_cert {} is not valid PEM: {e}",
                id.cert.display()
            ))
        })?;
    let Some(leaf) = certs.first() else {
        return Err(IdentityError::cert(format!(
            "client_cert {} holds no PEM certificate",
            id.cert.display()
        )));
    };
    let (_, leaf) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| {
        IdentityError::cert(format!(
            "client_cert {} is not an X.509 certificate: {e}",
            id.cert.display()
        ))
    })?;
    let key = parse_private_key(key_pem)
        .map_err(|e| IdentityError::key(format!("client_key {} {e}", id.key.display())))?;
    if leaf.public_key().subject_public_key.data.as_ref() != key.public_key.as_slice() {
        return Err(IdentityError::cert(format!(
            "client_cert {} does not match client_key {} (the certificate is for another key)",
            id.cert.display(),
            id.key.display()
        )));
    }
    let mut both = zeroize::Zeroizing::new(key_pem.to_vec());
    both.push(b'\n');
    both.extend_from_slice(cert_pem);
    let identity = reqwest::Identity::from_pem(&both).map_err(|e| {
        IdentityError::cert(format!(
            "client_cert {} and client_key {} cannot be used for TLS: {e}",
            id.cert.display(),
            id.key.display()
        ))
    })?;
    let mut h = Sha256::new();
    h.update(cert_pem);
    h.update(key_pem);
    Ok(LoadedIdentity {
        identity,
        fingerprint: h.finalize().into(),
    })
}
