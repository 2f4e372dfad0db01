//! One file per grant kind: its table's lowering (`raw::LowerGrant`). The tables and the
//! registry are in `raw.rs` (`grants!`); what is shared by several grants (token request,
//! client authentication, signing, schedule, subjects in memory) is in `credential.rs`.

mod client_credentials;
mod jwt_bearer;
mod refresh_token;
mod static_token;
mod token_exchange;
