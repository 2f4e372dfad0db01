//! Finding the token endpoint: from an issuer (RFC 8414), and from an MCP-style protected
//! resource whose 401 names its metadata (RFC 9728).

mod support;

use support::{Discovery, Harness, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_endpoint_from_the_issuer_metadata() {
    let h = Harness::start(Options {
        discovery: Discovery::Issuer,
        ..Default::default()
    })
    .await;
    assert!(!h.config_text.contains("token_url"));
    h.wait_ready().await;
    assert_eq!(h.get("/api/x").await.status(), 200);
    assert_eq!(h.tokens.state.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn authorization_server_from_the_protected_resource_metadata() {
    let h = Harness::start(Options {
        discovery: Discovery::ProtectedResource,
        ..Default::default()
    })
    .await;
    assert!(!h.config_text.contains("token_url") && !h.config_text.contains("issuer"));
    h.wait_ready().await;
    let resp = h.get("/api/tools").await;
    assert_eq!(resp.status(), 200);
    // RFC 8707: the resource from the metadata is sent with the token request.
    let form = h.tokens.state.last_form();
    let resource = form
        .iter()
        .find(|(k, _)| k == "resource")
        .map(|(_, v)| v.clone());
    assert_eq!(resource, Some(format!("http://{}/", h.upstream.addr)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn explicit_urls_override_discovery() {
    let (tokens, upstream) = support::start_peers(std::time::Duration::from_secs(60)).await;
    let other = support::TokenServer::start(std::time::Duration::from_secs(60))
        .await
        .unwrap();
    // The issuer's metadata points at `other`'s twin; the explicit token_url wins.
    let extra = format!("issuer = \"{}\"", other.issuer());
    let h = Harness::start_with(
        tokens,
        upstream,
        Options {
            credential_extra: extra,
            ..Default::default()
        },
    )
    .await;
    h.wait_ready().await;
    assert_eq!(h.tokens.state.requests(), 1);
    assert_eq!(other.state.requests(), 0);
}
