//! The Redis store's client, and the TLS files behind it. A `rediss://` store with a
//! `ca_file` or a client certificate reads them again every second (from the health check):
//! a renewed, usable set becomes the client of every new connection, and the store's own
//! connection is rebuilt on its next use. Open connections are not cut: TLS checks
//! certificates at the handshake only. A changed set that cannot be used (a certificate
//! written before its key, say) is reported once and the previous set stays in use.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use super::StoreError;
use crate::config::RedisTls;
use crate::material::watched::{fingerprint, Seen, Watched};

/// Why the TLS files of a Redis store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsFilesError {
    #[error("cannot read {what} {}: {source}", path.display())]
    Unreadable {
        what: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    CaFile(#[from] crate::material::ca::CaFileError),
    #[error(transparent)]
    Identity(#[from] crate::material::identity::IdentityError),
    #[error("the TLS files ({files}) cannot be used: {source}")]
    Unusable {
        files: String,
        source: redis::RedisError,
    },
}

/// What a reload found.
#[derive(Debug)]
pub enum Reload {
    /// The files are as they were (or as a set already refused).
    Unchanged,
    /// A new set is in use for new connections.
    Renewed,
    /// The files changed but cannot be used; the previous set stays. Said once per set.
    Refused(TlsFilesError),
}

pub struct RedisClients {
    info: redis::ConnectionInfo,
    tls: RedisTls,
    current: ArcSwap<redis::Client>,
    /// Counts the sets put in use; a connection built from an older one is rebuilt.
    generation: AtomicU64,
    /// The TLS files as last read, and the client built from the last good set.
    files: Watched<redis::Client>,
}

/// The files' bytes, read together.
struct TlsFiles {
    ca: Option<Vec<u8>>,
    cert: Option<Vec<u8>>,
    key: Option<Zeroizing<Vec<u8>>>,
}

impl TlsFiles {
    fn read(tls: &RedisTls) -> Result<TlsFiles, TlsFilesError> {
        let read = |path: &std::path::Path, what: &'static str| {
            std::fs::read(path).map_err(|source| TlsFilesError::Unreadable {
                what,
                path: path.to_path_buf(),
                source,
            })
        };
        Ok(TlsFiles {
            ca: tls
                .ca_file
                .as_deref()
                .map(|p| read(p, "ca_file"))
                .transpose()?,
            cert: tls
                .identity
                .as_ref()
                .map(|id| read(&id.cert, "client_cert"))
                .transpose()?,
            key: tls
                .identity
                .as_ref()
                .map(|id| read(&id.key, "client_key").map(Zeroizing::new))
                .transpose()?,
        })
    }

    fn fingerprint(&self) -> [u8; 32] {
        fingerprint([
            self.ca.as_deref().unwrap_or_default(),
            self.cert.as_deref().unwrap_or_default(),
            self.key.as_deref().map(|k| &k[..]).unwrap_or_default(),
        ])
    }
}

impl RedisClients {
    /// The client for `url`, with the TLS files read now. Errors never quote the url (it may
    /// hold a password).
    pub fn new(url: &SecretString, tls: &RedisTls) -> Result<RedisClients, StoreError> {
        let info = redis::IntoConnectionInfo::into_connection_info(url.expose_secret().trim())
            .map_err(|e| {
                StoreError::Invalid(format!("redis store: unusable url: {:?}", e.kind()))
            })?;
        let files = Watched::default();
        let client = if tls.ca_file.is_none() && tls.identity.is_none() {
            let client = redis::Client::open(info.clone()).map_err(|e| {
                StoreError::Invalid(format!("redis store: unusable url: {:?}", e.kind()))
            })?;
            Arc::new(client)
        } else {
            let seen = files
                .look(TlsFiles::read(tls), TlsFiles::fingerprint, |f| {
                    build(&info, tls, f)
                })
                .map_err(|m| StoreError::Invalid(format!("redis store: {m}")))?;
            Arc::clone(seen.value())
        };
        Ok(RedisClients {
            info,
            tls: tls.clone(),
            current: ArcSwap::new(client),
            generation: AtomicU64::new(0),
            files,
        })
    }

    /// The client for new connections.
    pub fn client(&self) -> redis::Client {
        (**self.current.load()).clone()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Whether there are files to watch.
    pub fn has_tls_files(&self) -> bool {
        self.tls.ca_file.is_some() || self.tls.identity.is_some()
    }

    /// Reads the TLS files again and puts a changed, usable set in use.
    pub fn reload(&self) -> Reload {
        if !self.has_tls_files() {
            return Reload::Unchanged;
        }
        let seen = self
            .files
            .look(TlsFiles::read(&self.tls), TlsFiles::fingerprint, |f| {
                build(&self.info, &self.tls, f)
            });
        match seen {
            Ok(Seen::Renewed(client)) => {
                self.current.store(client);
                self.generation.fetch_add(1, Ordering::SeqCst);
                Reload::Renewed
            }
            // Missing for a moment (a volume being updated) is not a change: the next
            // second reads them again.
            Ok(Seen::Kept {
                why: Some(why),
                unreadable: false,
                ..
            }) => Reload::Refused(why),
            Ok(_) => Reload::Unchanged,
            Err(why) => Reload::Refused(why),
        }
    }
}

/// A client with these files, checked first as the config check does (a certificate that
/// parses, a client certificate that matches its key), so a half-written set is refused
/// here rather than at every handshake.
fn build(
    info: &redis::ConnectionInfo,
    tls: &RedisTls,
    files: TlsFiles,
) -> Result<redis::Client, TlsFilesError> {
    // The bytes read, not the files again: they may have changed since.
    if let (Some(path), Some(ca)) = (&tls.ca_file, &files.ca) {
        crate::material::parse_ca_pem(path, ca)?;
    }
    if let (Some(identity), Some(cert), Some(key)) = (&tls.identity, &files.cert, &files.key) {
        crate::material::identity::identity_from_pem(identity, cert, key)?;
    }
    let certificates = redis::TlsCertificates {
        client_tls: match (files.cert, files.key) {
            (Some(client_cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert,
                // The Redis client keeps its own copy for every reconnection.
                client_key: key.to_vec(),
            }),
            _ => None,
        },
        root_cert: files.ca,
    };
    redis::Client::build_with_tls(info.clone(), certificates).map_err(|source| {
        TlsFilesError::Unusable {
            files: tls.describe(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientIdentity;

    fn pair(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["bearerd".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    /// Unchanged files are not rebuilt; a renewed pair is put in use; a pair that does not
    /// match (the certificate written before its key) is refused once, not every second,
    /// and the set in use stays; the completed renewal is then put in use.
    #[test]
    fn renewed_files_are_used_and_a_half_written_pair_is_refused_once() {
        let dir = std::env::temp_dir().join(format!("bearerd-rc-{:x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = pair(&dir, "first");
        let live = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::copy(&cert, &live.0).unwrap();
        std::fs::copy(&key, &live.1).unwrap();
        let tls = RedisTls {
            ca_file: Some(live.0.clone()),
            identity: Some(ClientIdentity {
                cert: live.0.clone(),
                key: live.1.clone(),
            }),
        };
        let url = SecretString::from("rediss://127.0.0.1:1/0".to_string());
        let clients = RedisClients::new(&url, &tls).unwrap();
        assert!(matches!(clients.reload(), Reload::Unchanged));
        assert_eq!(clients.generation(), 0);

        let (cert2, key2) = pair(&dir, "second");
        std::fs::copy(&cert2, &live.0).unwrap();
        assert!(
            matches!(clients.reload(), Reload::Refused(m) if m.to_string().contains("does not match"))
        );
        assert!(
            matches!(clients.reload(), Reload::Unchanged),
            "refused once"
        );
        assert_eq!(clients.generation(), 0);

        std::fs::copy(&key2, &live.1).unwrap();
        assert!(matches!(clients.reload(), Reload::Renewed));
        assert_eq!(clients.generation(), 1);
        assert!(matches!(clients.reload(), Reload::Unchanged));

        // A file missing for a moment (a volume being swapped) changes nothing.
        std::fs::remove_file(&live.1).unwrap();
        assert!(matches!(clients.reload(), Reload::Unchanged));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The longest one Redis command may take.
pub(super) const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest a connection attempt may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a Redis call gave nothing.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RedisFailure {
    /// Redis's (or the connection's) own words, which never quote the URL.
    #[error("{0}")]
    Refused(String),
    #[error("no answer within {0:?}")]
    NoAnswer(Duration),
}

/// `work` within `limit`: its result, or why there is none (never the URL: it may hold a
/// password, and Redis errors do not quote it).
pub(super) async fn within<T>(
    limit: Duration,
    work: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, RedisFailure> {
    match tokio::time::timeout(limit, work).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(RedisFailure::Refused(e.to_string())),
        Err(_) => Err(RedisFailure::NoAnswer(limit)),
    }
}

/// A plain multiplexed connection with bearerd's time limits.
pub(super) async fn connect_plain(
    client: &redis::Client,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(COMMAND_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}
