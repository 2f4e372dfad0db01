//! An identity provider as the app's users know it: OpenID metadata and a JWK set on a
//! free loopback port, with keys a test adds and removes (a key rotation), counting how
//! often its keys are fetched.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

#[derive(Default)]
pub struct IdpState {
    issuer: Mutex<String>,
    keys: Mutex<Vec<serde_json::Value>>,
    jwks_fetches: AtomicUsize,
}

pub struct Idp {
    pub addr: SocketAddr,
    pub state: Arc<IdpState>,
}

impl Idp {
    pub async fn start() -> Idp {
        let state = Arc::new(IdpState::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        *state.issuer.lock().unwrap() = format!("http://{addr}");
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(metadata))
            .route("/jwks", get(jwks))
            .with_state(Arc::clone(&state));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Idp { addr, state }
    }

    pub fn issuer(&self) -> String {
        self.state.issuer.lock().unwrap().clone()
    }

    /// Publishes the keys (JWKs) the issuer signs with from now on.
    pub fn publish(&self, keys: Vec<serde_json::Value>) {
        *self.state.keys.lock().unwrap() = keys;
    }

    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }
}

async fn metadata(State(state): State<Arc<IdpState>>) -> Json<serde_json::Value> {
    let issuer = state.issuer.lock().unwrap().clone();
    Json(serde_json::json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/jwks"),
    }))
}

async fn jwks(State(state): State<Arc<IdpState>>) -> Json<serde_json::Value> {
    state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let keys = state.keys.lock().unwrap().clone();
    Json(serde_json::json!({ "keys": keys }))
}
