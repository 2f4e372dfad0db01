//! The store's health as the admin API shows it (the token engine reports in `api`'s types
//! already).

use crate::api;

pub(super) fn store_health(h: crate::store::StoreHealth) -> api::StoreHealth {
    api::StoreHealth {
        backend: h.backend.as_str().to_string(),
        up: h.up,
        last_error: h.last_error,
    }
}
