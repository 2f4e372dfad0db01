//! The strict table of a grant kind, declared in its file of the `grant` room with
//! [`credential_table!`] (and of a store backend, in its file of `store`, with
//! [`store_table!`]), and the key groups several grants share (token request, schedule,
//! waiting). serde's `flatten` would turn strictness off, so each group's keys are pasted
//! into each table that takes them, with an accessor that copies them into the group's
//! view struct: lowering code shared by several grants reads one type.

/// Declares a strict credential table: `grant`, the keys of each named group, then its own.
/// Each group also gets an accessor that copies its keys into the group's view struct, so
/// lowering code shared by several grants reads one type.
macro_rules! credential_table {
    ($(#[$m:meta])* pub struct $name:ident [$($group:ident),*] { $($own:tt)* }) => {
        $crate::config::table::credential_table!(@munch [$(#[$m])* $name] [$($group),*] [$($own)*]);
    };
    (@munch $head:tt [$group:ident $(, $rest:ident)*] [$($fields:tt)*]) => {
        $group!(@into $head [$($rest),*] [$($fields)*]);
    };
    (@munch [$(#[$m:meta])* $name:ident] [] [$($(#[$fm:meta])* $field:ident : $ty:ty,)*]) => {
        $(#[$m])*
        #[derive(::serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            pub grant: String,
            $($(#[$fm])* pub $field: $ty,)*
        }

        impl $crate::config::StrictTable for $name {
            const KEYS: &'static [&'static str] = &["grant", $(stringify!($field)),*];
        }
    };
}

/// Defines a group of keys: its view struct (`@view`), or its keys pasted into a table
/// plus the table's accessor (`@into`, called by [`credential_table!`]).
macro_rules! key_group {
    ($view:ident $accessor:ident { $($(#[$gm:meta])* $gfield:ident : $gty:ty,)* } @view) => {
        #[derive(Clone, Default)]
        pub struct $view {
            $($(#[$gm])* pub $gfield: $gty,)*
        }
    };
    (
        $view:ident $accessor:ident { $($(#[$gm:meta])* $gfield:ident : $gty:ty,)* }
        @into [$(#[$m:meta])* $name:ident] $groups:tt [$($fields:tt)*]
    ) => {
        impl $name {
            pub fn $accessor(&self) -> $crate::config::table::$view {
                $crate::config::table::$view { $($gfield: self.$gfield.clone(),)* }
            }
        }
        $crate::config::table::credential_table!(
            @munch [$(#[$m])* $name] $groups [$($fields)* $($(#[$gm])* $gfield: $gty,)*]
        );
    };
}

/// What a token request needs: the endpoint, the client and what it asks for.
macro_rules! token_request_keys {
    ($($args:tt)*) => { $crate::config::table::key_group!(RawTokenRequest token_request {
        token_url: Option<String>,
        /// RFC 8414 / OpenID Connect discovery instead of `token_url`.
        issuer: Option<String>,
        /// RFC 7009 revocation endpoint, used by logout.
        revocation_url: Option<String>,
        client_id: Option<String>,
        client_secret: Option<$crate::material::RawSecretRef>,
        /// basic | post | private_key_jwt | client_assertion | tls_client_auth | none
        client_auth: Option<String>,
        /// private_key_jwt (and jwt_bearer): a PEM private key, re-read when it changes.
        private_key: Option<$crate::material::RawSecretRef>,
        /// The JWT header `kid`.
        key_id: Option<String>,
        /// RS256 | PS256 | ES256 | ES384 | EdDSA (default: follows the key).
        signing_alg: Option<String>,
        /// The assertion's `aud` (default: the token endpoint URL).
        assertion_audience: Option<String>,
        /// client_assertion: a JWT minted elsewhere, read at every use.
        client_assertion: Option<$crate::material::RawSecretRef>,
        /// tls_client_auth: the client certificate (chain) and its key, PEM files.
        client_cert: Option<$crate::material::RawSecretRef>,
        client_key: Option<$crate::material::RawSecretRef>,
        scopes: Option<Vec<String>>,
        /// Machine grants: scopes bearerd may add on an upstream's 403 insufficient_scope.
        step_up_scopes: Option<Vec<String>>,
        resource: Option<String>,
        params: Option<::std::collections::BTreeMap<String, String>>,
        /// Timeout of one token request.
        token_timeout: Option<String>,
        /// A PEM bundle trusted for the token endpoint instead of the system roots.
        ca_file: Option<::std::path::PathBuf>,
        /// `discover = true`: the authorization servers (issuers, or hosts) an upstream's
        /// metadata may name; any other is refused before anything is sent to it.
        allowed_authorization_servers: Option<Vec<String>>,
        /// Accept plain http to a host that is not this machine for this credential's
        /// endpoints (token_url, issuer, revocation_url, redirect_uri).
        insecure_http: Option<bool>,
        /// RFC 9449: tokens bound to a key the sidecar keeps, proven on every request.
        dpop: Option<bool>,
    } $($args)*); };
}

/// When a token that expires is refreshed, and how failures back off.
macro_rules! schedule_keys {
    ($($args:tt)*) => { $crate::config::table::key_group!(RawSchedule schedule {
        refresh_ratio: Option<f64>,
        refresh_margin: Option<String>,
        /// Lifetime assumed when the token response has no `expires_in`.
        default_lifetime: Option<String>,
        backoff_base: Option<String>,
        backoff_cap: Option<String>,
    } $($args)*); };
}

/// How requests wait for a token, and how often they may trigger a new one: every grant.
macro_rules! wait_keys {
    ($($args:tt)*) => { $crate::config::table::key_group!(RawWait wait {
        /// How long a request may wait for a token before it gets a 503.
        wait_budget: Option<String>,
        /// Least time between two refreshes triggered by requests (a 401 or no token).
        min_refresh_interval: Option<String>,
    } $($args)*); };
}

token_request_keys!(@view);
schedule_keys!(@view);
wait_keys!(@view);

/// Declares a strict `[store]` table: `backend`, then the backend's own keys, and `KEYS`.
macro_rules! store_table {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* $field:ident : $ty:ty,)* }) => {
        $(#[$m])*
        #[derive(::serde::Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// Read by the first pass, to choose this table; accepted here.
            #[allow(dead_code)]
            backend: Option<String>,
            $($(#[$fm])* pub $field: $ty,)*
        }

        impl $crate::config::StrictTable for $name {
            const KEYS: &'static [&'static str] = &["backend", $(stringify!($field)),*];
        }
    };
}

pub(crate) use {
    credential_table, key_group, schedule_keys, store_table, token_request_keys, wait_keys,
};
