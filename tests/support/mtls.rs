//! A mutual-TLS front for the test token server (RFC 8705 `tls_client_auth`): it asks for
//! a client certificate from its test CA, passes the connections of the registered client
//! (by subject CN) through to the plain token server, and answers every other one with
//! 401 `invalid_client`, as a provider does for a certificate it does not know.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

pub struct MtlsFront {
    pub addr: SocketAddr,
    pub ca_pem: String,
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
    /// Connections refused for their certificate (or for having none).
    pub refused: Arc<AtomicUsize>,
    /// Connections of the registered client passed through to the token server.
    pub served: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MtlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A certificate and its key, as PEM.
pub struct ClientPair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl MtlsFront {
    pub async fn start(backend: SocketAddr, registered_cn: &str) -> MtlsFront {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "bearerd test client CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = params.self_signed(&ca_key).unwrap();

        let server_key = KeyPair::generate().unwrap();
        let server_cert = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&server_key, &ca_cert, &ca_key)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&provider),
        )
        .allow_unauthenticated()
        .build()
        .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![server_cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(server_key.serialize_der()).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let refused = Arc::new(AtomicUsize::new(0));
        let registered = registered_cn.to_string();
        let counter = Arc::clone(&refused);
        let served = Arc::new(AtomicUsize::new(0));
        let passed = Arc::clone(&served);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, registered, counter, passed) = (
                    acceptor.clone(),
                    registered.clone(),
                    Arc::clone(&counter),
                    Arc::clone(&passed),
                );
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let cn = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| common_name(c.as_ref()));
                    if cn.as_deref() == Some(registered.as_str()) {
                        passed.fetch_add(1, Ordering::SeqCst);
                        if let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await {
                            let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                        }
                        return;
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let mut buf = vec![0u8; 16 * 1024];
                    let _ = tls.read(&mut buf).await;
                    let body = r#"{"error":"invalid_client","error_description":"unknown client certificate"}"#;
                    let answer = format!(
                        "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(answer.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        MtlsFront {
            addr,
            ca_pem: ca_cert.pem(),
            ca_cert,
            ca_key,
            refused,
            served,
            task,
        }
    }

    pub fn token_url(&self) -> String {
        format!("https://localhost:{}/token", self.addr.port())
    }

    /// A client certificate for this subject CN, signed by the front's CA.
    pub fn client_pair(&self, cn: &str) -> ClientPair {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        ClientPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}
