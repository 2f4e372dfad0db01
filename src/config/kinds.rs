//! What a config is read with: the registries of grant kinds, store backends and client
//! authentication methods. They live in the rooms above config (`grant`, `store`,
//! `oauth`), which own each kind; `crate::kinds`
//! names the ones this build has.

use super::client_auth::ClientAuthKind;
use super::grant::GrantTables;
use super::store::StoreTables;

/// The registries a config is read with.
pub trait Kinds {
    type Grants: GrantTables;
    type Stores: StoreTables;
    /// The client authentication methods, in the order error messages list them.
    const CLIENT_AUTHS: &'static [&'static dyn ClientAuthKind];
}

/// A strict table (a grant's or a store backend's): every key it accepts, for the hint
/// that names which kind takes a key the table refused.
pub trait StrictTable {
    const KEYS: &'static [&'static str];
}
