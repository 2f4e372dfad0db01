//! How a token request reaches the authorization server: the HTTP client (timeouts, no
//! redirects, the configured CA, the client certificate for mutual TLS), sent directly or
//! through the rotation helper, and the raw answer that `response` classifies.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use super::error::{GrantError, GrantErrorKind, GrantInput};
use crate::material::ca::CaFileError;
use crate::material::identity::{load_identity, IdentityError};
use crate::material::ClientIdentity;

/// A provider response as the grant reads it.
pub struct RawResponse {
    pub status: u16,
    pub retry_after: Option<http::HeaderValue>,
    pub body: Vec<u8>,
}

/// Why the token client cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    CaFile(#[from] CaFileError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("{0}")]
    Certificate(reqwest::Error),
    #[error("cannot build the token client: {0}")]
    Build(reqwest::Error),
}

/// The HTTP client for token requests: the request timeout, no redirects, the configured CA
/// instead of the system roots when there is one, and the client certificate for mutual TLS.
/// The rotation helper builds the same one.
pub(crate) fn token_http_client(
    timeout: Duration,
    ca_file: Option<&Path>,
    identity: Option<reqwest::Identity>,
) -> Result<reqwest::Client, ClientError> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("bearerd/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = ca_file {
        builder = builder.tls_built_in_root_certs(false);
        for der in crate::material::load_ca_file(ca)? {
            let cert = reqwest::Certificate::from_der(&der).map_err(ClientError::Certificate)?;
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some(identity) = identity {
        builder = builder.identity(identity);
    }
    builder.build().map_err(ClientError::Build)
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
    ) -> Result<Transport, ClientError> {
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
                Err(m) => {
                    return Err(GrantError::unavailable(
                        GrantInput::ClientCertificate,
                        m.to_string(),
                    ))
                }
            };
            if current.0 != Some(loaded.fingerprint) {
                let client =
                    token_http_client(self.timeout, self.ca_file.as_deref(), Some(loaded.identity))
                        .map_err(|m| {
                            GrantError::unavailable(GrantInput::ClientCertificate, m.to_string())
                        })?;
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
