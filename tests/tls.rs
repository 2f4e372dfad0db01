//! Upstream TLS: a test CA given as `ca_file` is trusted; any other CA gives a 502.

mod support;

use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use support::{Harness, Options};
use tokio_rustls::rustls;

struct TestCa {
    pem: String,
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn new_ca(name: &str) -> TestCa {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    TestCa {
        pem: cert.pem(),
        cert,
        key,
    }
}

/// Serves the test upstream's router over TLS with a certificate for `localhost`.
async fn tls_upstream(ca: &TestCa, state: Arc<support::UpstreamState>) -> std::net::SocketAddr {
    let params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = support::Upstream::router(state);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                    .await;
            });
        }
    });
    addr
}

fn write_pem(pem: &str) -> String {
    let dir = std::env::temp_dir().join(format!("bearerd-tls-{}", support::rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ca.pem");
    std::fs::write(&path, pem).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_upstream_with_test_ca_works_and_a_wrong_ca_gives_502() {
    let ca = new_ca("bearerd test CA");
    let other = new_ca("some other CA");
    let tokens = support::TokenServer::start(std::time::Duration::from_secs(60))
        .await
        .unwrap();
    let state = Arc::new(support::UpstreamState::new(tokens.state.clone()));
    let addr = tls_upstream(&ca, state.clone()).await;
    let plain = support::Upstream::start(tokens.state.clone())
        .await
        .unwrap();
    let extra = format!(
        "ca_file = {:?}\n\n[upstreams.wrong]\nurl = \"https://localhost:{}/base\"\npath_prefix = \"/wrong\"\ncredential = \"api\"\nca_file = {:?}\n",
        write_pem(&ca.pem),
        addr.port(),
        write_pem(&other.pem)
    );
    let h = Harness::start_with(
        tokens,
        plain,
        Options {
            upstream_url: Some(format!("https://localhost:{}/base", addr.port())),
            upstream_extra: extra,
            ..Default::default()
        },
    )
    .await;

    let resp = h.get("/api/secure?x=1").await;
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["target"], "/base/secure?x=1");
    assert_eq!(body["host"], format!("localhost:{}", addr.port()));
    assert!(body["token_serial"].as_u64().is_some());

    let resp = h.get("/wrong/secure").await;
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["upstream"], "wrong");
    assert_eq!(
        state.requests(),
        1,
        "nothing reached the upstream over the untrusted connection"
    );
}
