//! bearerd: a sidecar reverse proxy that injects fresh OAuth2 bearer tokens.
//!
//! [`Sidecar::start`] (in `app.rs`) builds the whole thing from a validated
//! [`config::Config`]: the proxy listeners (Pingora), the admin listener and the control
//! service that runs the token engine. The binary and the black-box tests both start it
//! this way. The README's Layout section says what each module owns.

pub mod admin;
pub mod allocator;
pub mod api;
pub mod app;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod events;
pub mod grant;
pub mod inject;
pub mod kinds;
pub mod logging;
pub mod material;
pub mod metrics;
pub mod oauth;
pub mod proxy;
pub mod reload;
pub mod store;
pub mod token;

pub use app::{Shared, Sidecar, SidecarHandle, StartError};
