//! `bearerd check --live`: each credential gets a token from its real endpoint, in memory
//! only, so an operator learns before a deploy (or during an incident) which credentials
//! work. Nothing of a running sidecar is touched: no store is opened, and a credential whose
//! grant lives in that store (a refresh token, a registered client, a subject's) is
//! skipped, never spent.

use std::process::ExitCode;
use std::time::Duration;

use bearerd::config::{Config, CredentialConfig};
use bearerd::grant::{Grant, GrantOutcome, RefreshTokenConfig};
use bearerd::oauth::{GrantError, GrantErrorKind, OAuthErrorCode};

/// How long one credential's check may take.
const LIVE_TIMEOUT: Duration = Duration::from_secs(30);

/// What one credential's check found.
enum Verdict {
    Ok(String),
    Skipped(&'static str),
    Failed(String),
}

/// Why a credential is not checked live, if it is not.
fn skipped(c: &CredentialConfig) -> Option<&'static str> {
    if c.subjects.is_some() {
        return Some("per-subject: each subject's grant is in the sidecar's store");
    }
    if c.grant.settings::<RefreshTokenConfig>().is_some() {
        return Some("refresh_token: the running sidecar's store owns its refresh token, which a check must not spend");
    }
    if c.grant.request().is_some_and(|r| r.registration.is_some()) {
        return Some("registration = \"auto\": its client is registered in the sidecar's store");
    }
    None
}

/// What to do about a failure, for the operator reading the report.
fn advice(e: &GrantError) -> &'static str {
    use GrantErrorKind as K;
    match &e.kind {
        K::OAuth(OAuthErrorCode::InvalidClient) | K::Http(401) => {
            "check client_id and the client's secret, key or certificate (and client_auth)"
        }
        K::OAuth(OAuthErrorCode::InvalidGrant) => {
            "the grant itself was refused: check the assertion or subject token and its audience"
        }
        K::OAuth(OAuthErrorCode::InvalidScope) | K::OAuth(OAuthErrorCode::InvalidTarget) => {
            "the provider does not allow these scopes or this audience/resource for the client"
        }
        K::OAuth(OAuthErrorCode::UnauthorizedClient)
        | K::OAuth(OAuthErrorCode::UnsupportedGrantType) => {
            "the client is not allowed this grant at the provider: enable it there"
        }
        K::Timeout | K::Network | K::Http(500..=599) => {
            "the token endpoint is unreachable or failing: check token_url, DNS, the network path and the provider's status"
        }
        K::DiscoveryFailed | K::NoTokenEndpoint => {
            "check issuer (its /.well-known metadata) or set token_url"
        }
        K::Unavailable(_) => "a file or variable the credential names cannot be read: see the message",
        K::MalformedResponse | K::UnsupportedTokenType => {
            "the endpoint answered, but not with a usable token: is token_url the token endpoint?"
        }
        _ => "see the message",
    }
}

async fn check_one(c: &CredentialConfig) -> Verdict {
    if let Some(why) = skipped(c) {
        return Verdict::Skipped(why);
    }
    let grant = match Grant::new(&c.grant) {
        Ok(g) => g,
        Err(e) => return Verdict::Failed(e.to_string()),
    };
    // No store: a DPoP key is made for this check alone.
    grant.settle_dpop_key();
    match tokio::time::timeout(LIVE_TIMEOUT, grant.obtain()).await {
        Err(_) => Verdict::Failed(format!(
            "timeout: no answer within {}s; the token endpoint is unreachable or hangs",
            LIVE_TIMEOUT.as_secs()
        )),
        Ok(Ok(GrantOutcome::Issued(t))) => {
            let mut what = format!("{} token", if t.dpop_bound { "DPoP" } else { "bearer" });
            if let Some(l) = t.lifetime {
                what.push_str(&format!(", expires in {}s", l.as_secs()));
            }
            if !t.scopes.is_empty() {
                what.push_str(&format!(", scopes {}", t.scopes.join(" ")));
            }
            Verdict::Ok(what)
        }
        Ok(Ok(GrantOutcome::Unchanged)) => Verdict::Ok("unchanged".into()),
        Ok(Err(e)) => Verdict::Failed(format!(
            "{} ({}): {}. {}",
            e.kind.label(),
            if e.permanent {
                "permanent"
            } else {
                "transient"
            },
            e.message,
            advice(&e)
        )),
    }
}

/// Checks every credential live; exits 1 when any failed.
pub fn check_live(config: &Config) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start a runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let mut failed = 0;
    for c in &config.credentials {
        match rt.block_on(check_one(c)) {
            Verdict::Ok(what) => println!("{}: ok: {what}", c.name),
            Verdict::Skipped(why) => println!("{}: skipped: {why}", c.name),
            Verdict::Failed(why) => {
                failed += 1;
                println!("{}: FAILED: {why}", c.name);
            }
        }
    }
    match failed {
        0 => ExitCode::SUCCESS,
        n => {
            eprintln!("error: {n} credential(s) failed the live check");
            ExitCode::from(1)
        }
    }
}
