//! How a token request reaches the authorization server: the HTTP client (timeouts, no
//! redirects, the configured CA, the client certificate for mutual TLS), sent directly or
//! through the rotation helper, and the raw answer that `response` classifies.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::error::{GrantError, GrantErrorKind, GrantInput};
use super::signing::parse_private_key;
use crate::config::ClientIdentity;

/// A provider response as the grant reads it.
pub struct RawResponse {
    pub status: u16,
    pub retry_after: Option<http::HeaderValue>,
    pub body: Vec<u8>,
}

/// The HTTP client for token requests: the request timeout, no redirects, the configured CA
/// instead of the system roots when there is one, and the client certificate for mutual TLS.
/// The rotation helper builds the same one.
pub(crate) fn token_http_client(
    timeout: Duration,
    ca_file: Option<&Path>,
    identity: Option<reqwest::Identity>,
) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("bearerd/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = ca_file {
        builder = builder.tls_built_in_root_certs(false);
        for der in crate::config::load_ca_file(ca)? {
            let cert = reqwest::Certificate::from_der(&der).map_err(|e| e.to_string())?;
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some(identity) = identity {
        builder = builder.identity(identity);
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the token client: {e}"))
}

/// A client certificate and key as read from their files, checked to belong together.
pub struct LoadedIdentity {
    pub identity: reqwest::Identity,
    /// SHA-256 over both files, to notice a rotation.
    pub fingerprint: [u8; 32],
}

/// The config key a `load_identity` error is about: the key file's own faults point at
/// `client_key`, everything else (including a pair that does not match) at `client_cert`.
pub fn identity_error_key(message: &str) -> &'static str {
    if message.starts_with("client_key") || message.starts_with("cannot read client_key") {
        "client_key"
    } else {
        "client_cert"
    }
}

/// Reads the certificate chain and key for mutual TLS. Messages name the files, never
/// their content.
pub fn load_identity(id: &ClientIdentity) -> Result<LoadedIdentity, String> {
    let read = |p: &Path, what: &str| {
        std::fs::read(p).map_err(|e| format!("cannot read {what} {}: {e}", p.display()))
    };
    let cert_pem = read(&id.cert, "client_cert")?;
    let key_pem = zeroize::Zeroizing::new(read(&id.key, "client_key")?);
    identity_from_pem(id, &cert_pem, &key_pem)
}

/// The identity of this certificate chain and key, as read from `id`'s files (which name
/// them in messages).
pub fn identity_from_pem(
    id: &ClientIdentity,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<LoadedIdentity, String> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| format!("client_cert {} is not valid PEM: {e}", id.cert.display()))?;
    let Some(leaf) = certs.first() else {
        return Err(format!(
            "client_cert {} holds no PEM certificate",
            id.cert.display()
        ));
    };
    let (_, leaf) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| {
        format!(
            "client_cert {} is not an X.509 certificate: {e}",
            id.cert.display()
        )
    })?;
    let key =
        parse_private_key(key_pem).map_err(|e| format!("client_key {} {e}", id.key.display()))?;
    if leaf.public_key().subject_public_key.data.as_ref() != key.public_key.as_slice() {
        return Err(format!(
            "client_cert {} does not match client_key {} (the certificate is for another key)",
            id.cert.display(),
            id.key.display()
        ));
    }
    let mut both = zeroize::Zeroizing::new(key_pem.to_vec());
    both.push(b'\n');
    both.extend_from_slice(cert_pem);
    let identity = reqwest::Identity::from_pem(&both).map_err(|e| {
        format!(
            "client_cert {} and client_key {} cannot be used for TLS: {e}",
            id.cert.display(),
            id.key.display()
        )
    })?;
    let mut h = Sha256::new();
    h.update(cert_pem);
    h.update(key_pem);
    Ok(LoadedIdentity {
        identity,
        fingerprint: h.finalize().into(),
    })
}

/// The direct transport: one HTTP client, rebuilt when the client certificate changes.
pub struct Transport {
    timeout: Duration,
    ca_file: Option<std::path::PathBuf>,
    identity: Option<ClientIdentity>,
    /// The client, and the fingerprint of the identity it was built with.
    client: Mutex<(Option<[u8; 32]>, reqwest::Client)>,
}

impl Transport {
    pub fn new(
        timeout: Duration,
        ca_file: Option<&Path>,
        identity: Option<&ClientIdentity>,
    ) -> Result<Transport, String> {
        let (fingerprint, client) = match identity {
            Some(id) => {
                let loaded = load_identity(id)?;
                (
                    Some(loaded.fingerprint),
                    token_http_client(timeout, ca_file, Some(loaded.identity))?,
                )
            }
            None => (None, token_http_client(timeout, ca_file, None)?),
        };
        Ok(Transport {
            timeout,
            ca_file: ca_file.map(Path::to_path_buf),
            identity: identity.cloned(),
            client: Mutex::new((fingerprint, client)),
        })
    }

    pub fn identity(&self) -> Option<&ClientIdentity> {
        self.identity.as_ref()
    }

    /// The client to send with. With mutual TLS the certificate and key are read again,
    /// and a rotated pair gets a new client (and new connections) from this request on.
    pub fn client(&self) -> Result<reqwest::Client, GrantError> {
        let mut current = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = &self.identity {
            let loaded = match load_identity(id) {
                Ok(loaded) => loaded,
                // Mid-rotation (the key written, the certificate not yet), or gone: the
                // last pair that worked is used until the files agree again.
                Err(m) if current.0.is_some() => {
                    tracing::warn!(error = %m, "client certificate unusable; keeping the previous one");
                    return Ok(current.1.clone());
                }
                Err(m) => return Err(GrantError::unavailable(GrantInput::ClientCertificate, m)),
            };
            if current.0 != Some(loaded.fingerprint) {
                let client =
                    token_http_client(self.timeout, self.ca_file.as_deref(), Some(loaded.identity))
                        .map_err(|m| GrantError::unavailable(GrantInput::ClientCertificate, m))?;
                if current.0.is_some() {
                    tracing::info!(cert = %id.cert.display(), "client certificate changed; using the new one");
                }
                *current = (Some(loaded.fingerprint), client);
            }
        }
        Ok(current.1.clone())
    }

    pub fn transport_failure(&self, timeout: bool, message: String) -> GrantError {
        if timeout {
            GrantError::transient(
                GrantErrorKind::Timeout,
                format!("token endpoint did not answer within {:?}", self.timeout),
            )
        } else {
            GrantError::transient(GrantErrorKind::Network, message)
        }
    }

    /// Sends a request built with [`Transport::client`] and reads the whole answer.
    pub async fn send(
        &self,
        client: &reqwest::Client,
        request: reqwest::Request,
    ) -> Result<RawResponse, GrantError> {
        // reqwest errors name the URL but never the form body.
        let resp = client.execute(request).await.map_err(|e| {
            let message = format!("token endpoint unreachable: {}", error_chain(&e));
            self.transport_failure(e.is_timeout(), message)
        })?;
        let status = resp.status().as_u16();
        let retry_after = resp.headers().get("retry-after").cloned();
        let body = resp.bytes().await.map_err(|e| {
            GrantError::transient(
                GrantErrorKind::Network,
                format!("token response broke off: {}", error_chain(&e)),
            )
        })?;
        Ok(RawResponse {
            status,
            retry_after,
            body: body.to_vec(),
        })
    }
}

pub(crate) fn error_chain(e: &reqwest::Error) -> String {
    // The URL is the token endpoint's (no secret); the form body is never in the message.
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
