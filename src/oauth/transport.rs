//! How a token request reaches the authorization server: the HTTP client (timeouts, no
//! redirects, the configured CA, the client certificate for mutual TLS), sent directly or
//! through the rotation helper, and the raw answer that `response` classifies.

use std::path::Path;
use std::time::Duration;

use super::error::{GrantError, GrantErrorKind, GrantInput};
use crate::material::ca::CaFileError;
use crate::material::identity::{identity_from_pem, read_identity, IdentityError, IdentityFiles};
use crate::material::watched::{Seen, Watched};
use crate::material::ClientIdentity;

/// A provider response as the grant reads it.
pub struct RawResponse {
    pub status: u16,
    pub retry_after: Option<http::HeaderValue>,
    pub body: Vec<u8>,
    /// RFC 9449 §8: the nonce the server wants in the next DPoP proof.
    pub dpop_nonce: Option<String>,
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
    #[error(transparent)]
    DpopKey(crate::material::dpop::DpopKeyError),
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
    clients: Clients,
}

enum Clients {
    /// No client certificate: one client.
    Plain(reqwest::Client),
    /// Mutual TLS: the client built from the certificate and key as last read.
    WithIdentity(ClientIdentity, Watched<reqwest::Client>),
}

impl Transport {
    pub fn new(
        timeout: Duration,
        ca_file: Option<&Path>,
        identity: Option<&ClientIdentity>,
    ) -> Result<Transport, ClientError> {
        let clients = match identity {
            None => Clients::Plain(token_http_client(timeout, ca_file, None)?),
            Some(id) => Clients::WithIdentity(id.clone(), Watched::default()),
        };
        let transport = Transport {
            timeout,
            ca_file: ca_file.map(Path::to_path_buf),
            clients,
        };
        // Read once now: a pair that cannot be used is a startup error.
        if let Clients::WithIdentity(id, watched) = &transport.clients {
            transport.look_at_identity(id, watched)?;
        }
        Ok(transport)
    }

    /// The client for the certificate and key as they are now (see [`Watched`]).
    fn look_at_identity(
        &self,
        id: &ClientIdentity,
        watched: &Watched<reqwest::Client>,
    ) -> Result<Seen<reqwest::Client, ClientError>, ClientError> {
        watched.look(
            read_identity(id).map_err(ClientError::from),
            IdentityFiles::fingerprint,
            |files| {
                let loaded = identity_from_pem(id, &files.cert, &files.key)?;
                token_http_client(self.timeout, self.ca_file.as_deref(), Some(loaded.identity))
            },
        )
    }

    pub fn identity(&self) -> Option<&ClientIdentity> {
        match &self.clients {
            Clients::Plain(_) => None,
            Clients::WithIdentity(id, _) => Some(id),
        }
    }

    /// The client to send with. With mutual TLS the certificate and key are read again,
    /// and a rotated pair gets a new client (and new connections) from this request on;
    /// mid-rotation (the key written, the certificate not yet) the last pair that worked
    /// stays in use until the files agree again.
    pub fn client(&self) -> Result<reqwest::Client, GrantError> {
        let (id, watched) = match &self.clients {
            Clients::Plain(client) => return Ok(client.clone()),
            Clients::WithIdentity(id, watched) => (id, watched),
        };
        let seen = self
            .look_at_identity(id, watched)
            .map_err(|e| GrantError::unavailable(GrantInput::ClientCertificate, e))?;
        match &seen {
            Seen::Renewed(_) => {
                tracing::info!(cert = %id.cert.display(), "client certificate changed; using the new one")
            }
            Seen::Kept { why: Some(e), .. } => {
                tracing::warn!(error = %e, "client certificate unusable; keeping the previous one")
            }
            _ => {}
        }
        Ok((**seen.value()).clone())
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
        let dpop_nonce = dpop_nonce_of(resp.headers());
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
            dpop_nonce,
        })
    }
}

/// The `DPoP-Nonce` header (RFC 9449 §8), when it is a usable value.
pub(crate) fn dpop_nonce_of(headers: &http::HeaderMap) -> Option<String> {
    crate::material::dpop::valid_nonce(headers.get("dpop-nonce")?.to_str().ok()?)
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
