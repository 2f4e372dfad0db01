//! What lowering found that the config names outside its own text, each with the place it
//! was written: the check step's work list (see `check`).

use std::path::PathBuf;

use super::{ClientIdentity, SecretRef, SigningConfig};

/// Where a value was written: the line, column and dotted key an error about it names.
#[derive(Debug, Clone)]
pub struct Place {
    pub line: usize,
    pub column: usize,
    pub key: String,
}

/// One thing outside the config to read, and where the config named it.
#[derive(Debug, Clone)]
pub struct MaterialCheck {
    pub at: Place,
    pub what: Material,
}

#[derive(Debug, Clone)]
pub enum Material {
    /// A value that must resolve: a set, non-empty variable, or a readable, non-empty file.
    Secret(SecretRef),
    /// A token file that must hold a JWT (a client assertion, a subject or actor token).
    Jwt(SecretRef),
    CaFile(PathBuf),
    /// A certificate chain and its key, which must belong together. `at` names the
    /// certificate; `key_at` the key.
    Identity {
        identity: ClientIdentity,
        key_at: Place,
    },
    /// A private key, which must be usable with its algorithm. `at` names the key source.
    SigningKey {
        config: SigningConfig,
        alg_at: Place,
        /// A service-account key needs scopes: the config gave none.
        scopes_missing: bool,
    },
    /// A service-account key standing in for `token_url`: the endpoint it names must be an
    /// http(s) URL, and it must name one when nothing else can (`required_at`).
    ServiceAccountEndpoint {
        key: SecretRef,
        required_at: Option<Place>,
        /// The credential says `insecure_http = true`: plain http to another host is taken.
        insecure_http: bool,
    },
    /// The store key: 32 bytes; `help` says how to make one.
    StoreKey {
        key: SecretRef,
        help: String,
    },
    /// A webhook's signing secret: `whsec_` and base64.
    WebhookSecret(SecretRef),
    /// The Redis url, which must parse; the TLS keys written at `tls_keys` need `rediss://`.
    RedisUrl {
        url: SecretRef,
        tls_keys: Vec<Place>,
    },
}
