//! CA files: the certificates a TLS client trusts instead of the system roots.

use std::path::{Path, PathBuf};

/// Why a CA file cannot be used. The messages name the file.
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    #[error("cannot read CA file {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA file {} is not valid PEM: {source}", path.display())]
    NotPem {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA file {} holds a certificate that does not parse: {reason}", path.display())]
    BadCertificate { path: PathBuf, reason: String },
    #[error("CA file {} holds no PEM certificate", path.display())]
    Empty { path: PathBuf },
}

/// Reads a PEM bundle and returns its certificates as DER, each one checked to parse, so a
/// bad file is a config error rather than a failure (or a panic) at the first connection.
pub fn load_ca_file(path: &Path) -> Result<Vec<Vec<u8>>, CaFileError> {
    let data = std::fs::read(path).map_err(|source| CaFileError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    parse_ca_pem(path, &data)
}

/// The certificates of a CA file's content (`path` names it in messages).
pub fn parse_ca_pem(path: &Path, data: &[u8]) -> Result<Vec<Vec<u8>>, CaFileError> {
    let mut certs = Vec::new();
    for item in rustls_pemfile::certs(&mut &data[..]) {
        let der = item.map_err(|source| CaFileError::NotPem {
            path: path.to_path_buf(),
            source,
        })?;
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| {
            CaFileError::BadCertificate {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }
        })?;
        certs.push(der.as_ref().to_vec());
    }
    if certs.is_empty() {
        return Err(CaFileError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}
