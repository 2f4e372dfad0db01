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

/// The harness's sidecar with more credential and upstream tables after its own.
async fn with_tables(
    tokens: support::TokenServer,
    upstream: support::Upstream,
    tables: String,
) -> Harness {
    let opts = Options {
        upstream_extra: tables,
        ..Default::default()
    };
    Harness::start_with(tokens, upstream, opts).await
}

/// Issue 20, hole 3: with `discover = true` the upstream names the authorization server,
/// and so would choose who receives the client's secret. Discovery is pinned: a server
/// outside the credential's `allowed_authorization_servers` fails the credential with a
/// clear error, and nothing at all reaches it (not even a metadata request).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_cannot_send_the_clients_secret_to_an_authorization_server_of_its_choosing() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    // The server the upstream names: it counts every connection made to it.
    let trap = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let trap_url = format!("http://{}", trap.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    tokio::spawn(async move {
        while let Ok((conn, _)) = trap.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(conn);
        }
    });
    let (tokens, upstream) = support::start_peers(std::time::Duration::from_secs(60)).await;
    let mcp = support::Upstream::start(Arc::clone(&tokens.state))
        .await
        .unwrap();
    *mcp.state.authorization_server.lock().unwrap() = Some(trap_url.clone());
    let extra = format!(
        r#"
[credentials.mcp]
grant = "client_credentials"
client_id = "{id}"
client_secret = "{secret}"
allowed_authorization_servers = ["{issuer}"]

[upstreams.mcp]
url = "http://{mcp}/"
path_prefix = "/mcp"
credential = "mcp"
discover = true
"#,
        id = support::token_server::CLIENT_ID,
        secret = support::token_server::CLIENT_SECRET,
        issuer = tokens.issuer(),
        mcp = mcp.addr,
    );
    let h = with_tables(tokens, upstream, extra).await;
    // A deadline, so a regression fails the test instead of hanging it.
    let mcp_status = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            let s = h.status().await;
            let c = s["credentials"]["mcp"].clone();
            if c["state"] == "failed" {
                break c;
            }
            assert_ne!(c["state"], "valid", "{c}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the credential fails within 30 s");
    let message = mcp_status["last_error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&trap_url) && message.contains("allowed_authorization_servers"),
        "{message}"
    );
    let r = h.get("/mcp/tools").await;
    assert_eq!(r.status(), 503);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "nothing reached the upstream's server"
    );
    // The other credential, pinned by its token_url, is not touched.
    assert_eq!(h.get("/api/x").await.status(), 200);
}

/// Discovery asks a protected resource without a token. A GET that draws no challenge is
/// followed by a JSON-RPC `ping` POST only for an MCP server (`mcp = true`, which serves
/// POST only): any other upstream is never sent a request that could change something.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_an_mcp_upstream_is_probed_with_a_post() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    for mcp in [false, true] {
        // An upstream that challenges nothing: every request gets 404, POSTs are counted.
        let posts = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&posts);
        let app = axum::Router::new().fallback(move |method: http::Method| {
            let counter = Arc::clone(&counter);
            async move {
                if method == http::Method::POST {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                http::StatusCode::NOT_FOUND
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let (tokens, upstream) = support::start_peers(std::time::Duration::from_secs(60)).await;
        let extra = format!(
            r#"
[credentials.quiet]
grant = "client_credentials"
client_id = "{id}"
client_secret = "{secret}"
allowed_authorization_servers = ["{issuer}"]

[upstreams.quiet]
url = "http://{addr}/"
path_prefix = "/quiet"
credential = "quiet"
discover = true
mcp = {mcp}
"#,
            id = support::token_server::CLIENT_ID,
            secret = support::token_server::CLIENT_SECRET,
            issuer = tokens.issuer(),
        );
        let h = with_tables(tokens, upstream, extra).await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let s = h.status().await;
            if !s["credentials"]["quiet"]["last_error"].is_null() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{s}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let sent = posts.load(Ordering::SeqCst);
        match mcp {
            false => assert_eq!(sent, 0, "a plain upstream is never POSTed to"),
            true => assert!(sent >= 1, "an MCP server is asked with a ping"),
        }
    }
}
