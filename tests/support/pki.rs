//! A private CA as PEM files, for TLS test peers that are separate processes (a TLS Redis):
//! a server certificate for 127.0.0.1 and localhost, a client certificate, and a second,
//! unrelated CA for the "trusts the wrong CA" cases.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

#[derive(Clone)]
pub struct TestPki {
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert, key)
}

impl TestPki {
    /// Writes the files into `dir` (created if missing).
    pub fn generate(dir: &Path) -> TestPki {
        std::fs::create_dir_all(dir).unwrap();
        let (ca_cert, ca_key) = ca("bearerd test CA");
        let (other_cert, _) = ca("bearerd unrelated test CA");
        let leaf = |names: Vec<String>, cn: &str| {
            let mut params = CertificateParams::new(names).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let server = leaf(vec!["127.0.0.1".into(), "localhost".into()], "redis");
        let client = leaf(Vec::new(), "bearerd");
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        TestPki {
            ca: write("ca.crt", &ca_cert.pem()),
            other_ca: write("other-ca.crt", &other_cert.pem()),
            server_cert: write("server.crt", &server.0),
            server_key: write("server.key", &server.1),
            client_cert: write("client.crt", &client.0),
            client_key: write("client.key", &client.1),
        }
    }
}
