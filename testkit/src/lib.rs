//! Stand-in peers for `bearerd demo` and the black-box tests: a token endpoint and an API
//! upstream that count requests and fail on command, and an OTLP collector that keeps the
//! spans it is sent. All listen on 127.0.0.1 only.

pub mod assertions;
pub mod dpop;
pub mod otlp;
pub mod token_server;
pub mod upstream;

pub use assertions::{AssertionPolicy, TrustedSigner};
pub use token_server::{FailMode, TokenServer, TokenServerState};
pub use upstream::{SeenRequest, Upstream, UpstreamState};
