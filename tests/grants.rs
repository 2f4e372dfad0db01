//! Secretless and delegated grants against the real sidecar: `private_key_jwt` with RSA,
//! EC and Ed25519 keys, `client_assertion` from a projected-token file, `tls_client_auth`
//! through a mutual-TLS front, `token_exchange` (RFC 8693) and `jwt_bearer` (RFC 7523),
//! also with a Google service-account key, and DPoP-bound tokens (RFC 9449). The test token
//! server verifies every signed token as a provider would (signature, `iss`, `sub`, `aud`,
//! `exp`, `jti` never reused); it and the upstream verify DPoP proofs and key bindings.
//! Tokens live for a second or so, so every test sees rotations.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use support::keys::{now, KeyKind, TestKey};
use support::mtls::MtlsFront;
use support::{start_peers, token_server::CLIENT_ID, Harness, Options};

const CLUSTER: &str = "https://cluster.test";
const WORKLOAD: &str = "system:serviceaccount:apps:billing";

fn fixture_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bearerd-grants-{}", support::rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes a file (atomically, as the kubelet swaps projected tokens) and gives its path.
fn put(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path.display().to_string()
}

/// Polls `check` for up to 15 s; the loose bound only ends a test that is stuck.
macro_rules! eventually {
    ($what:expr, $check:expr) => {{
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if $check {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never: {}", $what);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }};
}

/// Requests keep succeeding while the token server sees `n` more token requests.
async fn requests_succeed_across_refreshes(h: &Harness, n: usize) {
    let target = h.tokens.state.requests() + n;
    eventually!("more token requests", {
        let r = h.get("/api/items").await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
        h.tokens.state.requests() >= target
    });
}

fn form_value(h: &Harness, key: &str) -> Option<String> {
    h.tokens
        .state
        .last_form()
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

fn opts(client: String, extra: String) -> Options {
    Options {
        lifetime: Duration::from_secs(1),
        client: Some(client),
        credential_extra: extra,
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_key_jwt_assertions_verify_for_rsa_ec_and_ed25519_keys() {
    for kind in [
        KeyKind::Rsa,
        KeyKind::EcP256Sec1,
        KeyKind::EcP384,
        KeyKind::Ed25519,
    ] {
        let (tokens, upstream) = start_peers(Duration::from_secs(1)).await;
        let key = TestKey::generate(kind);
        tokens.state.trust_client_assertions(vec![key.signer(
            CLIENT_ID,
            Some(CLIENT_ID),
            &tokens.token_url(),
        )]);
        let dir = fixture_dir();
        let pem = put(&dir, "client.pem", &key.private_pem);
        let client = format!(
            "client_id = \"{CLIENT_ID}\"\nclient_auth = \"private_key_jwt\"\nprivate_key = {{ file = \"{pem}\" }}\nkey_id = \"k-{kind:?}\""
        );
        let h = Harness::start_with(tokens, upstream, opts(client, String::new())).await;
        h.wait_ready().await;
        requests_succeed_across_refreshes(&h, 3).await;
        let (accepted, refused, why) = h.tokens.state.assertion_counts();
        assert_eq!(refused, 0, "{kind:?}: refused: {why:?}");
        assert!(accepted >= 3, "{kind:?}: {accepted} assertions");
        let claims = h.tokens.state.last_assertion_claims().unwrap();
        assert_eq!(claims["iss"], CLIENT_ID);
        assert_eq!(claims["sub"], CLIENT_ID);
        assert_eq!(claims["aud"], h.tokens.token_url());
        let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
        assert!(lifetime <= 60, "{kind:?}: assertion lives {lifetime} s");
        assert_eq!(
            h.tokens.state.last_assertion_kid().as_deref(),
            Some(format!("k-{kind:?}").as_str())
        );
        assert_eq!(
            form_value(&h, "client_assertion_type").as_deref(),
            Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        );
        assert_eq!(form_value(&h, "client_secret"), None);
        let status = h.status().await;
        assert_eq!(
            status["credentials"]["api"]["client_auth"], "private_key_jwt",
            "{status}"
        );
        assert!(
            !status.to_string().contains("PRIVATE KEY"),
            "no key material in /status"
        );
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assertion_signed_with_an_untrusted_key_fails_for_reauthorization() {
    let (tokens, upstream) = start_peers(Duration::from_secs(1)).await;
    let trusted = TestKey::generate(KeyKind::EcP256);
    let other = TestKey::generate(KeyKind::EcP256);
    tokens.state.trust_client_assertions(vec![trusted.signer(
        CLIENT_ID,
        Some(CLIENT_ID),
        &tokens.token_url(),
    )]);
    let pem = put(&fixture_dir(), "client.pem", &other.private_pem);
    let client = format!(
        "client_id = \"{CLIENT_ID}\"\nclient_auth = \"private_key_jwt\"\nprivate_key = {{ file = \"{pem}\" }}"
    );
    let h = Harness::start_with(tokens, upstream, opts(client, String::new())).await;
    eventually!("state failed", h.state().await == "failed");
    let status = h.status().await;
    assert_eq!(
        status["credentials"]["api"]["last_error"]["kind"],
        "invalid_client"
    );
    let r = h.get("/api/items").await;
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["requires_reauth"], true, "{body}");
    assert_eq!(
        h.upstream.state.requests(),
        0,
        "nothing went out without a token"
    );
    let (_, refused, why) = h.tokens.state.assertion_counts();
    assert!(refused >= 1);
    assert!(
        why.unwrap().contains("ignature"),
        "refused for its signature"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_private_key_is_used_from_the_next_request_on() {
    let (tokens, upstream) = start_peers(Duration::from_secs(1)).await;
    let old = TestKey::generate(KeyKind::Rsa);
    let new = TestKey::generate(KeyKind::Ed25519);
    let url = tokens.token_url();
    let signer = |k: &TestKey| k.signer(CLIENT_ID, Some(CLIENT_ID), &url);
    tokens.state.trust_client_assertions(vec![signer(&old)]);
    let dir = fixture_dir();
    let pem = put(&dir, "client.pem", &old.private_pem);
    let client = format!(
        "client_id = \"{CLIENT_ID}\"\nclient_auth = \"private_key_jwt\"\nprivate_key = {{ file = \"{pem}\" }}"
    );
    let h = Harness::start_with(tokens, upstream, opts(client, String::new())).await;
    h.wait_ready().await;
    requests_succeed_across_refreshes(&h, 2).await;
    // The provider learns the new key first (as a JWKS update would), then the file turns.
    h.tokens
        .state
        .trust_client_assertions(vec![signer(&old), signer(&new)]);
    put(&dir, "client.pem", &new.private_pem);
    requests_succeed_across_refreshes(&h, 2).await;
    // Only the new key from here on: an assertion still signed with the old one fails.
    h.tokens.state.trust_client_assertions(vec![signer(&new)]);
    requests_succeed_across_refreshes(&h, 3).await;
    let (_, refused, why) = h.tokens.state.assertion_counts();
    assert_eq!(refused, 0, "{why:?}");
    assert_eq!(h.state().await, "valid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_assertion_file_is_read_again_at_every_use() {
    let (tokens, upstream) = start_peers(Duration::from_secs(1)).await;
    let cluster = TestKey::generate(KeyKind::Rsa);
    let mut signer = cluster.signer(CLUSTER, Some(WORKLOAD), "idp.test");
    signer.single_use = false;
    tokens.state.trust_client_assertions(vec![signer]);
    let projected = |jti: &str| {
        cluster.mint(&json!({
            "iss": CLUSTER, "sub": WORKLOAD, "aud": "idp.test",
            "iat": now(), "exp": now() + 600, "jti": jti,
        }))
    };
    let dir = fixture_dir();
    let file = put(&dir, "idp-token", &projected("first"));
    let client = format!(
        "client_id = \"{CLIENT_ID}\"\nclient_auth = \"client_assertion\"\nclient_assertion = {{ file = \"{file}\" }}"
    );
    let h = Harness::start_with(tokens, upstream, opts(client, String::new())).await;
    h.wait_ready().await;
    requests_succeed_across_refreshes(&h, 2).await;
    assert_eq!(
        h.tokens.state.last_assertion_claims().unwrap()["jti"],
        "first"
    );
    assert_eq!(form_value(&h, "client_id").as_deref(), Some(CLIENT_ID));
    put(&dir, "idp-token", &projected("second"));
    eventually!(
        "the rotated assertion is sent",
        h.tokens.state.last_assertion_claims().unwrap()["jti"] == "second"
    );
    requests_succeed_across_refreshes(&h, 1).await;
    let (_, refused, why) = h.tokens.state.assertion_counts();
    assert_eq!(refused, 0, "{why:?}");
}

/// The credential lines of a `tls_client_auth` client with a certificate the front's CA
/// signed for the registered client, its files and the CA in `dir`.
fn mtls_client(front: &MtlsFront, dir: &Path) -> String {
    let ca = put(dir, "ca.pem", &front.ca_pem);
    let pair = front.client_pair("bearerd-client");
    let cert = put(dir, "client.crt", &pair.cert_pem);
    let key = put(dir, "client.key", &pair.key_pem);
    format!(
        "client_id = \"{CLIENT_ID}\"\nclient_auth = \"tls_client_auth\"\nclient_cert = {{ file = \"{cert}\" }}\nclient_key = {{ file = \"{key}\" }}\nca_file = \"{ca}\""
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_auth_presents_the_rotated_certificate_and_a_wrong_one_fails() {
    let (tokens, upstream) = start_peers(Duration::from_secs(1)).await;
    tokens.state.allow_public_client(true);
    let front = MtlsFront::start(tokens.addr, "bearerd-client").await;
    let dir = fixture_dir();
    let mut o = opts(mtls_client(&front, &dir), String::new());
    o.endpoint = Some(format!("token_url = \"{}\"", front.token_url()));
    let h = Harness::start_with(tokens, upstream, o).await;
    h.wait_ready().await;
    requests_succeed_across_refreshes(&h, 2).await;
    assert_eq!(form_value(&h, "client_id").as_deref(), Some(CLIENT_ID));
    assert_eq!(form_value(&h, "client_secret"), None);
    // A renewed certificate (new key too) is picked up without a restart. The key goes
    // first: a pair that does not match is never presented.
    let renewed = front.client_pair("bearerd-client");
    put(&dir, "client.key", &renewed.key_pem);
    put(&dir, "client.crt", &renewed.cert_pem);
    requests_succeed_across_refreshes(&h, 2).await;
    assert_eq!(front.refused.load(std::sync::atomic::Ordering::SeqCst), 0);
    // A certificate the provider does not know: invalid_client, a failure for a person.
    let wrong = front.client_pair("someone-else");
    put(&dir, "client.key", &wrong.key_pem);
    put(&dir, "client.crt", &wrong.cert_pem);
    eventually!("state failed", h.state().await == "failed");
    let status = h.status().await;
    assert_eq!(
        status["credentials"]["api"]["last_error"]["kind"],
        "invalid_client"
    );
    assert_eq!(
        status["credentials"]["api"]["client_auth"],
        "tls_client_auth"
    );
    assert!(front.refused.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    eventually!("the last token expired", {
        let r = h.get("/api/items").await;
        r.status() == 503 && r.json::<serde_json::Value>().await.unwrap()["requires_reauth"] == true
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_exchange_sends_every_field_follows_the_subject_token_and_its_exp() {
    // The provider's own tokens would live 5 minutes; the subject token only 4 seconds.
    let (tokens, upstream) = start_peers(Duration::from_secs(300)).await;
    let cluster = TestKey::generate(KeyKind::Rsa);
    let mut signer = cluster.signer(CLUSTER, None, "sts.test");
    signer.single_use = false;
    tokens.state.trust_grant_assertions(vec![signer]);
    let sa_token = |sub: &str, jti: &str, lifetime: u64| {
        cluster.mint(&json!({
            "iss": CLUSTER, "sub": sub, "aud": "sts.test",
            "iat": now(), "exp": now() + lifetime, "jti": jti,
        }))
    };
    let dir = fixture_dir();
    let first = sa_token(WORKLOAD, "s1", 4);
    let subject = put(&dir, "token", &first);
    let actor = put(
        &dir,
        "actor",
        &sa_token("system:serviceaccount:apps:agent", "a1", 600),
    );
    let extra = format!(
        "subject_token = {{ file = \"{subject}\" }}\nactor_token = {{ file = \"{actor}\" }}\naudience = \"crm\"\nrequested_token_type = \"urn:ietf:params:oauth:token-type:access_token\"\nresource = \"https://crm.example/\""
    );
    let mut o = Options {
        lifetime: Duration::from_secs(300),
        grant: "token_exchange",
        credential_extra: extra,
        ..Options::default()
    };
    o.client = None;
    let h = Harness::start_with(tokens, upstream, o).await;
    h.wait_ready().await;
    let r = h.get("/api/items").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        h.upstream.state.requests(),
        1,
        "the upstream accepted the exchanged token"
    );
    for (key, want) in [
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        ("subject_token", first.as_str()),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
        ("actor_token_type", "urn:ietf:params:oauth:token-type:jwt"),
        ("audience", "crm"),
        (
            "requested_token_type",
            "urn:ietf:params:oauth:token-type:access_token",
        ),
        ("resource", "https://crm.example/"),
        ("scope", "demo.read"),
    ] {
        assert_eq!(form_value(&h, key).as_deref(), Some(want), "{key}");
    }
    assert!(form_value(&h, "actor_token").is_some());
    // The exchanged token is renewed before the subject token's exp, not after 5 minutes.
    let expires_in = h.status().await["credentials"]["api"]["expires_in_s"]
        .as_f64()
        .unwrap();
    assert!(
        expires_in <= 4.0,
        "bounded by the subject token: {expires_in}"
    );
    // The platform writes a new subject token; the next exchange (before the old one's
    // exp) carries it, and the bound follows the new exp.
    put(&dir, "token", &sa_token(WORKLOAD, "s2", 600));
    eventually!(
        "the rotated subject token is exchanged",
        h.tokens.state.last_assertion_claims().unwrap()["jti"] == "s2"
    );
    eventually!("a 5-minute token", {
        let s = h.status().await;
        s["credentials"]["api"]["expires_in_s"]
            .as_f64()
            .unwrap_or(0.0)
            > 100.0
    });
    assert_eq!(h.get("/api/items").await.status(), 200);
    assert_eq!(h.tokens.state.assertion_counts().1, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_bearer_signs_an_assertion_for_the_configured_subject() {
    let (tokens, upstream) = start_peers(Duration::from_secs(1)).await;
    let key = TestKey::generate(KeyKind::EcP256);
    tokens.state.trust_grant_assertions(vec![key.signer(
        CLIENT_ID,
        Some("user@example.com"),
        &tokens.token_url(),
    )]);
    let pem = put(&fixture_dir(), "client.pem", &key.private_pem);
    let client = format!("client_id = \"{CLIENT_ID}\"\nprivate_key = {{ file = \"{pem}\" }}");
    let mut o = opts(client, "assertion_subject = \"user@example.com\"".into());
    o.grant = "jwt_bearer";
    let h = Harness::start_with(tokens, upstream, o).await;
    h.wait_ready().await;
    requests_succeed_across_refreshes(&h, 3).await;
    let (accepted, refused, why) = h.tokens.state.assertion_counts();
    assert_eq!(refused, 0, "{why:?}");
    assert!(accepted >= 3);
    assert_eq!(
        form_value(&h, "grant_type").as_deref(),
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    );
    assert_eq!(form_value(&h, "scope").as_deref(), Some("demo.read"));
    assert_eq!(form_value(&h, "client_secret"), None);
    assert_eq!(
        h.status().await["credentials"]["api"]["client_auth"],
        "none"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_google_service_account_key_file_works_end_to_end() {
    let (tokens, upstream) = start_peers(Duration::from_secs(1)).await;
    let key = TestKey::generate(KeyKind::Rsa);
    let email = "billing@project-1.iam.gserviceaccount.com";
    tokens
        .state
        .trust_grant_assertions(vec![key.signer(email, Some(email), &tokens.token_url())]);
    let sa = json!({
        "type": "service_account",
        "project_id": "project-1",
        "private_key_id": "5f1c0ffee",
        "private_key": key.private_pem,
        "client_email": email,
        "client_id": "1234567890",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": tokens.token_url(),
    });
    let file = put(&fixture_dir(), "sa.json", &sa.to_string());
    let mut o = opts(
        String::new(),
        format!("service_account_key = {{ file = \"{file}\" }}"),
    );
    o.grant = "jwt_bearer";
    o.endpoint = Some(String::new());
    let h = Harness::start_with(tokens, upstream, o).await;
    h.wait_ready().await;
    requests_succeed_across_refreshes(&h, 2).await;
    let claims = h.tokens.state.last_assertion_claims().unwrap();
    assert_eq!(claims["iss"], email);
    assert_eq!(
        claims["scope"], "demo.read",
        "Google wants scopes in the assertion"
    );
    assert_eq!(
        h.tokens.state.last_assertion_kid().as_deref(),
        Some("5f1c0ffee")
    );
    assert_eq!(form_value(&h, "scope"), None);
    assert_eq!(form_value(&h, "client_id"), None);
    assert_eq!(h.tokens.state.assertion_counts().1, 0);
}

/// Config mistakes with keys, assertions and certificates: each names file, line and key.
#[test]
fn bad_keys_assertions_and_certificates_are_config_errors_with_their_line() {
    let dir = fixture_dir();
    let rsa = put(
        &dir,
        "rsa.pem",
        &TestKey::generate(KeyKind::Rsa).private_pem,
    );
    let cert_only = {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (
            put(&dir, "c.crt", &cert.pem()),
            put(
                &dir,
                "other.key",
                &rcgen::KeyPair::generate().unwrap().serialize_pem(),
            ),
        )
    };
    let not_jwt = put(&dir, "token", "not-a-jwt");
    let sa = put(
        &dir,
        "sa.json",
        &json!({
            "type": "service_account",
            "private_key": TestKey::generate(KeyKind::Rsa).private_pem,
            "client_email": "a@b.iam.gserviceaccount.com",
        })
        .to_string(),
    );
    let head = "[credentials.api]\ntoken_url = \"https://idp.test/token\"\nclient_id = \"c\"\n";
    let tail = "[upstreams.api]\nurl = \"https://api.test/\"\npath_prefix = \"/api\"\ncredential = \"api\"\n";
    let cases: Vec<(String, usize, Vec<&str>)> = vec![
        (
            format!("grant = \"client_credentials\"\nclient_auth = \"private_key_jwt\"\nprivate_key = {{ file = \"{rsa}\" }}\nsigning_alg = \"ES256\"\n"),
            7,
            vec!["signing_alg", "holds an RSA key", "ES256 needs an EC P-256 key"],
        ),
        (
            "grant = \"client_credentials\"\nclient_auth = \"private_key_jwt\"\nprivate_key = { file = \"/nonexistent/key.pem\" }\n".into(),
            6,
            vec!["private_key", "cannot read"],
        ),
        (
            format!("grant = \"client_credentials\"\nclient_auth = \"private_key_jwt\"\nprivate_key = {{ file = \"{}\" }}\n", cert_only.0),
            6,
            vec!["private_key", "holds no PEM private key"],
        ),
        (
            format!("grant = \"client_credentials\"\nclient_auth = \"client_assertion\"\nclient_assertion = {{ file = \"{not_jwt}\" }}\n"),
            6,
            vec!["client_assertion", "is not a JWT"],
        ),
        (
            format!("grant = \"client_credentials\"\nclient_auth = \"tls_client_auth\"\nclient_cert = {{ file = \"{}\" }}\nclient_key = {{ file = \"{}\" }}\n", cert_only.0, cert_only.1),
            6,
            vec!["client_cert", "does not match client_key"],
        ),
        (
            format!("grant = \"client_credentials\"\nclient_auth = \"private_key_jwt\"\nclient_secret = \"s\"\nprivate_key = {{ file = \"{rsa}\" }}\n"),
            6,
            vec!["client_secret", "not used with client_auth \"private_key_jwt\""],
        ),
        (
            "grant = \"token_exchange\"\n".into(),
            4,
            vec!["grant", "needs `subject_token"],
        ),
        (
            format!("grant = \"token_exchange\"\nsubject_token = {{ file = \"{not_jwt}\" }}\n"),
            5,
            vec!["subject_token", "is not a JWT"],
        ),
        (
            "grant = \"jwt_bearer\"\n".into(),
            4,
            vec!["grant", "needs `private_key"],
        ),
        (
            format!("grant = \"jwt_bearer\"\nservice_account_key = {{ file = \"{rsa}\" }}\n"),
            5,
            vec!["service_account_key", "not a Google service-account key"],
        ),
        (
            "grant = \"client_credentials\"\nclient_auth = \"private_key_jwt\"\nprivate_key = \"-----BEGIN PRIVATE KEY-----\"\n".into(),
            6,
            vec!["private_key", "must not be written into the config"],
        ),
        (
            "grant = \"token_exchange\"\nsubject_token = { env = \"HOME\" }\n".into(),
            5,
            vec!["subject_token", "must be a file"],
        ),
        (
            format!("grant = \"jwt_bearer\"\nservice_account_key = {{ file = \"{sa}\" }}\n"),
            5,
            vec!["service_account_key", "needs `scopes`"],
        ),
    ];
    for (lines, line, wants) in cases {
        let text = format!("{head}{lines}\n{tail}");
        let err = bearerd::config::Config::parse(Path::new("grants.toml"), &text)
            .err()
            .unwrap_or_else(|| panic!("accepted:\n{text}"))
            .to_string();
        assert!(
            err.starts_with(&format!("grants.toml:{line}:")),
            "{err}\n{text}"
        );
        for want in wants {
            assert!(err.contains(want), "{want:?} not in {err}");
        }
        assert!(
            !err.contains("-----") && !err.contains("MII"),
            "no key material in {err}"
        );
    }
}

/// Replicas and restarts reuse a stored token only for the same identity: a token obtained
/// for one assertion subject (or subject token) is never adopted for another.
#[test]
fn the_stored_token_is_bound_to_who_the_assertion_or_exchange_is_for() {
    let dir = fixture_dir();
    let pem = put(
        &dir,
        "k.pem",
        &TestKey::generate(KeyKind::EcP256).private_pem,
    );
    let jwt = TestKey::generate(KeyKind::EcP256)
        .mint(&json!({"iss": CLUSTER, "sub": WORKLOAD, "aud": "a", "exp": now() + 600}));
    let first = put(&dir, "t1", &jwt);
    let second = put(&dir, "t2", &jwt);
    let binding = |grant_lines: String| {
        let text = format!("[credentials.api]\ntoken_url = \"https://idp.test/token\"\nclient_id = \"c\"\n{grant_lines}\n[upstreams.api]\nurl = \"https://api.test/\"\npath_prefix = \"/api\"\ncredential = \"api\"\n");
        bearerd::config::Config::parse(Path::new("b.toml"), &text)
            .unwrap_or_else(|e| panic!("{e}"))
            .credentials[0]
            .binding()
    };
    let bearer = |sub: &str| {
        binding(format!("grant = \"jwt_bearer\"\nprivate_key = {{ file = \"{pem}\" }}\nassertion_subject = \"{sub}\"\n"))
    };
    assert_eq!(bearer("alice@example.com"), bearer("alice@example.com"));
    assert_ne!(bearer("alice@example.com"), bearer("bob@example.com"));
    let exchange = |file: &str| {
        binding(format!(
            "grant = \"token_exchange\"\nclient_secret = \"s\"\nsubject_token = {{ file = \"{file}\" }}\n"
        ))
    };
    assert_ne!(exchange(&first), exchange(&second));
}

/// A client secret mounted as a file (a Kubernetes Secret volume) is read at every token
/// request: a rotated Secret counts from the next refresh on, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_client_secret_file_is_used_without_a_restart() {
    let (tokens, upstream) = start_peers(Duration::from_secs(1)).await;
    let dir = fixture_dir();
    let old = support::token_server::CLIENT_SECRET;
    let file = put(&dir, "client-secret", old);
    let client = format!("client_id = \"{CLIENT_ID}\"\nclient_secret = {{ file = \"{file}\" }}");
    let h = Harness::start_with(tokens, upstream, opts(client, String::new())).await;
    h.wait_ready().await;
    requests_succeed_across_refreshes(&h, 2).await;
    // The provider takes both while the Secret rotates, then only the new one.
    let new = "rotated-secret-7d1e";
    h.tokens.state.set_client_secrets(&[old, new]);
    put(&dir, "client-secret", new);
    requests_succeed_across_refreshes(&h, 2).await;
    h.tokens.state.set_client_secrets(&[new]);
    requests_succeed_across_refreshes(&h, 3).await;
    // With 1-second tokens a refresh is often under way (`refreshing`): valid between them.
    eventually!("valid", h.state().await == "valid");
    assert_eq!(
        h.status().await["credentials"]["api"]["consecutive_failures"],
        0
    );
}

/// RFC 8705 §5: found by discovery, a provider's `mtls_endpoint_aliases` are where a client
/// with a certificate sends its token requests (the plain endpoint may not ask for one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_auth_uses_the_providers_mtls_alias_from_discovery() {
    let (tokens, upstream) = start_peers(Duration::from_secs(1)).await;
    tokens.state.allow_public_client(true);
    let front = MtlsFront::start(tokens.addr, "bearerd-client").await;
    tokens.state.set_mtls_token_alias(&front.token_url());
    let dir = fixture_dir();
    let mut o = opts(mtls_client(&front, &dir), String::new());
    o.endpoint = Some(format!("issuer = \"{}\"", tokens.issuer()));
    let h = Harness::start_with(tokens, upstream, o).await;
    h.wait_ready().await;
    requests_succeed_across_refreshes(&h, 2).await;
    assert!(
        front.served.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "token requests went to the mTLS alias"
    );
}

/// A provider that quotes the request in its `error_description` does not make bearerd
/// repeat a secret: the client secret, an assertion or a subject token never reaches
/// `last_error`, `/status` or the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_a_provider_echoes_back_are_redacted_from_errors() {
    let (tokens, upstream) = start_peers(Duration::from_secs(1)).await;
    tokens.state.set_fail(support::FailMode::EchoForm);
    let cluster = TestKey::generate(KeyKind::EcP256);
    let subject =
        cluster.mint(&json!({"iss": CLUSTER, "sub": WORKLOAD, "aud": "sts", "exp": now() + 600}));
    let file = put(&fixture_dir(), "token", &subject);
    let client = format!(
        "client_id = \"{CLIENT_ID}\"\nclient_secret = \"{}\"\nclient_auth = \"post\"",
        support::token_server::CLIENT_SECRET
    );
    let mut o = opts(client, format!("subject_token = {{ file = \"{file}\" }}"));
    o.grant = "token_exchange";
    let h = Harness::start_with(tokens, upstream, o).await;
    eventually!("state failed", h.state().await == "failed");
    let status = h.status().await.to_string();
    assert!(status.contains("[redacted]"), "{status}");
    for secret in [support::token_server::CLIENT_SECRET, subject.as_str()] {
        assert!(
            !status.contains(&secret[..12]),
            "a secret in /status: {status}"
        );
    }
}

/// Issue 21 (SEP-1933 workload identity): `assertion = { file = … }` presents a JWT the
/// platform issued and rewrites; each exchange reads the file again, so a rotated token
/// counts from the next refresh on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_bearer_presents_a_platform_issued_assertion_read_at_every_exchange() {
    let (tokens, upstream) = start_peers(Duration::from_secs(1)).await;
    let platform = TestKey::generate(KeyKind::EcP256);
    let mut signer = platform.signer(CLUSTER, None, &tokens.issuer());
    signer.single_use = false;
    tokens.state.trust_grant_assertions(vec![signer]);
    let audience = tokens.issuer();
    let workload_token = |sub: &str| {
        platform.mint(&json!({
            "iss": CLUSTER, "sub": sub, "aud": audience,
            "iat": now(), "exp": now() + 600, "jti": sub,
        }))
    };
    let dir = fixture_dir();
    let path = put(&dir, "token", &workload_token("workload-a"));
    let mut o = opts(
        format!(
            "client_id = \"{CLIENT_ID}\"\nclient_secret = \"{}\"",
            support::token_server::CLIENT_SECRET
        ),
        format!("assertion = {{ file = \"{path}\" }}"),
    );
    o.grant = "jwt_bearer";
    let h = Harness::start_with(tokens, upstream, o).await;
    h.wait_ready().await;
    requests_succeed_across_refreshes(&h, 2).await;
    assert_eq!(
        h.tokens.state.last_assertion_claims().unwrap()["sub"],
        "workload-a"
    );
    // The platform rotates the token: the next exchange presents the new one.
    put(&dir, "token", &workload_token("workload-b"));
    eventually!(
        "the rotated assertion presented",
        h.tokens.state.last_assertion_claims().unwrap()["sub"] == "workload-b"
    );
    requests_succeed_across_refreshes(&h, 1).await;
    // A file that holds no JWT is refused before anything is sent.
    let before = h.tokens.state.requests();
    put(&dir, "token", "not a jwt");
    let r = h.admin_post("/credentials/api/refresh").await;
    assert_ne!(r.status(), 200);
    assert_eq!(h.tokens.state.requests(), before, "nothing sent");
    let status = h.status().await;
    assert_eq!(
        status["credentials"]["api"]["last_error"]["kind"], "assertion_unavailable",
        "{status}"
    );
}

/// Issue 21 (enterprise-managed authorization, the suite's cross-app access): the user's
/// ID token is exchanged at the enterprise IdP for an ID-JAG addressed to the MCP server's
/// authorization server, which takes it as a jwt-bearer assertion. A new ID-JAG each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_bearer_presents_an_id_jag_from_the_enterprise_idp() {
    let (tokens, upstream) = start_peers(Duration::from_secs(1)).await;
    let idp = support::TokenServer::start(Duration::from_secs(60))
        .await
        .unwrap();
    const ENTERPRISE: &str = "https://login.enterprise.test";
    // The user's ID token, issued by the enterprise to bearerd's client there.
    let user_keys = TestKey::generate(KeyKind::Rsa);
    let mut id_token_signer = user_keys.signer(ENTERPRISE, None, CLIENT_ID);
    id_token_signer.single_use = false;
    idp.state.trust_grant_assertions(vec![id_token_signer]);
    let jag_keys = TestKey::generate(KeyKind::EcP256);
    idp.state
        .issue_id_jags(&jag_keys.private_pem, &idp.issuer());
    // The MCP server's authorization server trusts the IdP's ID-JAGs addressed to it.
    tokens.state.trust_grant_assertions(vec![jag_keys.signer(
        &idp.issuer(),
        Some("alice@enterprise.test"),
        &tokens.issuer(),
    )]);
    let id_token = user_keys.mint(&json!({
        "iss": ENTERPRISE, "sub": "alice@enterprise.test", "aud": CLIENT_ID,
        "iat": now(), "exp": now() + 600,
    }));
    let path = put(&fixture_dir(), "id-token", &id_token);
    let secret = support::token_server::CLIENT_SECRET;
    let mut o = opts(
        format!("client_id = \"{CLIENT_ID}\"\nclient_secret = \"{secret}\""),
        format!(
            "assertion = {{ id_jag = {{ token_url = \"{}\", client_id = \"{CLIENT_ID}\", client_secret = \"{secret}\", subject_token = {{ file = \"{path}\" }} }} }}",
            idp.token_url()
        ),
    );
    o.grant = "jwt_bearer";
    let h = Harness::start_with(tokens, upstream, o).await;
    h.wait_ready().await;
    requests_succeed_across_refreshes(&h, 2).await;
    let at_idp: std::collections::HashMap<String, String> =
        idp.state.last_form().into_iter().collect();
    assert_eq!(
        at_idp["grant_type"],
        "urn:ietf:params:oauth:grant-type:token-exchange"
    );
    assert_eq!(
        at_idp["requested_token_type"],
        "urn:ietf:params:oauth:token-type:id-jag"
    );
    assert_eq!(
        at_idp["subject_token_type"],
        "urn:ietf:params:oauth:token-type:id_token"
    );
    assert_eq!(at_idp["audience"], h.tokens.issuer());
    assert!(
        idp.state.requests() >= 2,
        "a new ID-JAG for each token request"
    );
    assert_eq!(
        form_value(&h, "grant_type").as_deref(),
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    );
    let claims = h.tokens.state.last_assertion_claims().unwrap();
    assert_eq!(claims["iss"], idp.issuer());
    assert_eq!(claims["sub"], "alice@enterprise.test");
    let served: serde_json::Value = h.get("/api/x").await.json().await.unwrap();
    assert_eq!(served["token_subject"], "alice@enterprise.test");
}

/// The `Authorization` scheme and the DPoP proof of every request the upstream saw.
fn dpop_requests(h: &Harness) -> Vec<(String, bool)> {
    h.upstream
        .state
        .seen()
        .iter()
        .map(|r| {
            let auth = r.headers.get("authorization").and_then(|v| v.to_str().ok());
            let scheme = auth.and_then(|a| a.split_once(' ')).map(|(s, _)| s);
            (
                scheme.unwrap_or("").to_string(),
                r.headers.contains_key("dpop"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpop_binds_every_token_to_one_key_proven_at_the_token_endpoint_and_upstream() {
    let (tokens, upstream) = support::start_peers(Duration::from_millis(1500)).await;
    // Both ask for a nonce first (RFC 9449 §8, §9): one retry each, then the nonce is kept.
    tokens.state.require_dpop(Some("as-nonce-1"));
    upstream.state.require_dpop_nonce("rs-nonce-1");
    let opts = Options {
        credential_extra: "dpop = true".into(),
        ..Options::default()
    };
    let h = Harness::start_with(tokens, upstream, opts).await;
    h.wait_ready().await;
    requests_succeed_across_refreshes(&h, 3).await;
    let every = h.tokens.state.every_issued();
    let keys: std::collections::HashSet<_> = every
        .iter()
        .filter_map(|t| h.tokens.state.jkt_of(t))
        .collect();
    assert_eq!(keys.len(), 1, "one key binds every token: {keys:?}");
    assert_eq!(
        every.len(),
        every
            .iter()
            .filter(|t| h.tokens.state.jkt_of(t).is_some())
            .count(),
        "every token issued is bound"
    );
    let (accepted, refused, challenged, why) = h.tokens.state.dpop_counts();
    assert!(accepted >= 3, "{accepted}");
    assert_eq!((refused, challenged), (0, 1), "{why:?}");
    // Every request carried the token in the DPoP scheme with a proof of its key; only
    // the first was answered with the nonce, and replayed with it.
    let seen = dpop_requests(&h);
    assert!(
        seen.iter()
            .all(|(scheme, proof)| scheme == "DPoP" && *proof),
        "{seen:?}"
    );
    let (accepted, refused, challenged, why) = h.upstream.state.dpop_counts();
    assert_eq!((refused, challenged), (0, 1), "{why:?}");
    // The upstream records only the requests it served.
    assert_eq!(accepted, seen.len());

    // Both rotate their nonce: the next token request and the next upstream request are
    // each answered use_dpop_nonce once, then go through; the app sees none of it.
    h.tokens.state.require_dpop(Some("as-nonce-2"));
    h.upstream.state.require_dpop_nonce("rs-nonce-2");
    requests_succeed_across_refreshes(&h, 2).await;
    assert_eq!(h.tokens.state.dpop_counts().2, 2);
    assert_eq!(h.upstream.state.dpop_counts().2, 2);
    let status = h.status().await;
    assert_eq!(
        status["credentials"]["api"]["last_error"],
        serde_json::Value::Null,
        "a nonce retry is not a failed refresh: {status}"
    );
    let refused = (
        h.tokens.state.dpop_counts().1,
        h.upstream.state.dpop_counts().1,
    );
    assert_eq!(refused, (0, 0));

    // A new nonce and a revoked token at once: the nonce replay, then the token's own
    // refresh and replay; the app still sees 200.
    h.tokens.state.revoke_access_tokens();
    h.upstream.state.require_dpop_nonce("rs-nonce-3");
    let r = h.get("/api/items").await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    assert_eq!(h.upstream.state.dpop_counts().2, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dpop_key_is_kept_in_the_store_and_used_again_after_a_restart() {
    let dir = fixture_dir();
    let (tokens, upstream) = support::start_peers(Duration::from_millis(1500)).await;
    // With a nonce: the rotations go through the file store's rotation helper, which
    // carries the nonce challenge back.
    tokens.state.require_dpop(Some("as-nonce"));
    let opts = Options {
        grant: "refresh_token",
        credential_extra: "dpop = true".into(),
        store: format!(
            "backend = \"file\"\npath = \"{}\"\nkey = \"{}\"",
            dir.join("tokens.store").display(),
            bearerd::store::generate_key()
        ),
        ..Options::default()
    };
    let mut h = Harness::start_with(tokens, upstream, opts).await;
    h.wait_ready().await;
    requests_succeed_across_refreshes(&h, 2).await;
    let last = |h: &Harness| h.tokens.state.every_issued().last().cloned().unwrap();
    let key_before = h.tokens.state.jkt_of(&last(&h)).expect("bound");
    let issued_before = h.tokens.state.every_issued().len();
    support::restart(&mut h).await;
    h.wait_ready().await;
    // The refresh tokens are bound to the key too: a new key could not refresh at all.
    requests_succeed_across_refreshes(&h, 2).await;
    assert!(h.tokens.state.every_issued().len() > issued_before);
    assert_eq!(
        h.tokens.state.jkt_of(&last(&h)).as_deref(),
        Some(key_before.as_str())
    );
    let (_, refused, _, why) = h.tokens.state.dpop_counts();
    assert_eq!(refused, 0, "{why:?}");
    assert_eq!(h.tokens.state.reuse_detected(), 0);
    // Valid between refreshes (with 1.5-second tokens one is often under way).
    eventually!("valid", h.state().await == "valid");
    assert_eq!(
        h.tokens.state.dpop_counts().2,
        2,
        "one nonce challenge per run"
    );
    // The key is sealed with the tokens: its PKCS#8 form never lies in the file in clear.
    let sealed = std::fs::read(dir.join("tokens.store")).unwrap();
    let pkcs8_p256 = b"MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEH";
    assert!(!sealed.windows(pkcs8_p256.len()).any(|w| w == pkcs8_p256));
}
