//! What a grant kind's or a store backend's own lowering (in its file of the `grant` or the
//! `store` room) uses of config: the source map, for errors at file, line and key; the
//! macros of strict tables and the shared key groups; and the lowering of what several
//! kinds share (token request, signing, schedule, subjects, the store key).

pub(crate) use super::lower::{
    bounded_duration, file_only, key_source, lower_policy, lower_signing, lower_token_request,
    non_empty, private_url, subject_header_name, subjects_in_memory, ClientIdRule, SIGNING_KEYS,
};
pub use super::raw::{RawSubjectFrom, RawSubjectJwt};
pub(crate) use super::store::lower_store_key;
pub(crate) use super::table::{
    credential_table, schedule_keys, store_table, token_request_keys, wait_keys,
};
pub use super::table::{RawSchedule, RawTokenRequest, RawWait};
