//! Everything read from files (or the environment): secret references, CA files, client
//! identities for mutual TLS, private keys and the assertions they sign, DPoP keys and
//! their proofs, and what a JWT says about itself, and `Watched<T>`: the one rule for files read again while running. A leaf:
//! it imports nothing of bearerd, so the config, the OAuth client and the stores can all use
//! it.

pub mod ca;
pub mod dpop;
pub mod identity;
pub mod jwt;
pub mod secret;
pub mod signing;
pub mod store_key;
pub mod watched;
pub mod webhook_secret;

pub use ca::{load_ca_file, parse_ca_pem};
pub use identity::ClientIdentity;
pub use secret::{same_secret, RawSecretRef, SecretRef};
pub use signing::{KeySource, SigningAlg, SigningConfig};
pub use store_key::parse_store_key;
pub use watched::{Seen, Watched};
