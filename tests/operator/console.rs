//! The console's server side, black-box: the page and its policy, the session (cookie, CSRF
//! token, the page's own origin), the login callback's state, and the proxy keeping the
//! session cookie from upstreams. The page itself is tested in Chromium (tests/e2e).

use reqwest::header::{HeaderMap, HeaderValue};

use super::support::{Harness, Options};
use super::{harness, ADMIN_TOKEN};

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The admin listener's origin, as the page's requests carry it.
fn origin(h: &Harness) -> String {
    h.admin("").trim_end_matches('/').to_string()
}

/// Opens a console session: (the cookie pair, the CSRF token).
async fn sign_in(h: &Harness) -> (String, String) {
    let r = no_redirects()
        .post(h.admin("/console/session"))
        .header("origin", origin(h))
        .json(&serde_json::json!({ "admin_token": ADMIN_TOKEN }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let pair = cookie.split(';').next().unwrap().to_string();
    assert!(pair.starts_with("bearerd_console="), "{pair}");
    let body: serde_json::Value = r.json().await.unwrap();
    (pair, body["csrf"].as_str().unwrap().to_string())
}

async fn refresh_with(h: &Harness, headers: &[(&str, &str)]) -> u16 {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.insert(
            reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    no_redirects()
        .post(h.admin("/credentials/api/refresh"))
        .headers(map)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_is_built_in_with_a_strict_content_security_policy() {
    let h = Harness::start(Options::default()).await;
    let page = h.admin_get("/").await;
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe") && !csp.contains("http"), "{csp}");
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    let html = page.text().await.unwrap();
    // No inline script or style: every script has a src, no element has a style attribute.
    assert!(
        !html.contains("<script>") && !html.contains(" style="),
        "{html}"
    );
    assert!(html.contains(r#"<script src="/console/app.js""#), "{html}");
    for (path, kind) in [
        ("/console/app.js", "text/javascript"),
        ("/console/app.css", "text/css"),
        ("/console/icon.svg", "image/svg+xml"),
    ] {
        let r = h.admin_get(path).await;
        assert_eq!(r.status(), 200, "{path}");
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with(kind));
        assert!(r.headers().contains_key("content-security-policy"));
    }
    // Nothing in the page's script builds HTML from data.
    let script = h.admin_get("/console/app.js").await.text().await.unwrap();
    assert!(!script.contains("innerHTML") && !script.contains("eval("));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn console_actions_need_the_session_its_csrf_token_and_the_pages_own_origin() {
    let h = harness().await;
    h.wait_ready().await;
    let own = origin(&h);

    // The admin token is asked for once; a wrong one, or a page of another origin, opens nothing.
    let wrong = no_redirects()
        .post(h.admin("/console/session"))
        .header("origin", &own)
        .json(&serde_json::json!({ "admin_token": "guess" }))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(!wrong.headers().contains_key("set-cookie"));
    let foreign = no_redirects()
        .post(h.admin("/console/session"))
        .header("origin", "http://127.0.0.1:1")
        .json(&serde_json::json!({ "admin_token": ADMIN_TOKEN }))
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);

    let (cookie, csrf) = sign_in(&h).await;
    let session: serde_json::Value = no_redirects()
        .get(h.admin("/console/session"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(session["signed_in"], true);
    // The CSRF token is given once: another server on this host gets the cookie too.
    assert!(session.get("csrf").is_none(), "{session}");

    let page = [
        ("cookie", cookie.as_str()),
        ("x-bearerd-csrf", csrf.as_str()),
        ("origin", own.as_str()),
        ("sec-fetch-site", "same-origin"),
    ];
    assert_eq!(refresh_with(&h, &page).await, 200);
    // Without the CSRF token, from another origin (loopback too), from another site, or with
    // a cookie alone: refused.
    assert_eq!(refresh_with(&h, &[page[0], page[2]]).await, 401);
    assert_eq!(
        refresh_with(&h, &[page[0], ("x-bearerd-csrf", "forged"), page[2]]).await,
        401
    );
    assert_eq!(
        refresh_with(&h, &[page[0], page[1], ("origin", "http://localhost:1")]).await,
        401
    );
    assert_eq!(
        refresh_with(
            &h,
            &[page[0], page[1], page[2], ("sec-fetch-site", "same-site")]
        )
        .await,
        401
    );
    // A browser's request never passes with the admin token alone either.
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    assert_eq!(
        refresh_with(&h, &[("authorization", &bearer), page[2]]).await,
        401
    );

    // Signing out ends the session.
    let out = no_redirects()
        .delete(h.admin("/console/session"))
        .header("cookie", &cookie)
        .header("x-bearerd-csrf", &csrf)
        .header("origin", &own)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 200);
    assert!(out.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    assert_eq!(refresh_with(&h, &page).await, 401);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_login_is_state_bound_and_only_for_login_credentials() {
    let h = Harness::start(Options {
        server_extra: format!("admin_token = \"{ADMIN_TOKEN}\""),
        ..Default::default()
    })
    .await;
    h.wait_ready().await;
    let (cookie, csrf) = sign_in(&h).await;
    // A client_credentials credential has nothing to log in.
    let start = no_redirects()
        .post(h.admin("/console/login/api"))
        .header("cookie", &cookie)
        .header("x-bearerd-csrf", &csrf)
        .header("origin", origin(&h))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 409);
    let without_session = no_redirects()
        .post(h.admin("/console/login/api"))
        .header("origin", origin(&h))
        .send()
        .await
        .unwrap();
    assert_eq!(without_session.status(), 401);

    // A forged (or used) state goes back to the page with why, and redeems nothing.
    let sent = h.tokens.state.requests();
    let back = no_redirects()
        .get(h.admin("/console/callback?code=stolen&state=forged"))
        .header("sec-fetch-mode", "navigate")
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(back.status(), 303);
    let location = back.headers()["location"].to_str().unwrap();
    assert!(location.starts_with("/#login-error="), "{location}");
    assert_eq!(h.tokens.state.requests(), sent, "no code was redeemed");

    // A top-level navigation to the page passes the trust boundary; a cross-site fetch does not.
    let navigate = no_redirects()
        .get(h.admin("/"))
        .header("sec-fetch-mode", "navigate")
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(navigate.status(), 200);
    let fetch = no_redirects()
        .get(h.admin("/console/session"))
        .header("origin", "http://evil.example")
        .header("sec-fetch-mode", "cors")
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(fetch.status(), 403);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_proxy_never_forwards_the_console_session_cookie() {
    let h = Harness::start(Options::default()).await;
    h.wait_ready().await;
    for (sent, forwarded) in [
        ("a=1; bearerd_console=secret-session; b=2", Some("a=1; b=2")),
        ("bearerd_console=secret-session", None),
        ("theme=dark", Some("theme=dark")),
    ] {
        let r = h
            .client
            .get(h.url("/api/items"))
            .header("cookie", sent)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let seen = h.upstream.state.seen();
        let last = seen.last().unwrap();
        assert_eq!(
            last.headers.get("cookie").map(|v| v.to_str().unwrap()),
            forwarded,
            "{sent}"
        );
    }
    // Nor may an upstream set it in the operator's browser; its other cookies pass.
    let r = h.get("/api/set-cookies").await;
    let set: Vec<&str> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(set, vec!["theme=dark; Path=/"]);
    h.stop().await;
}
