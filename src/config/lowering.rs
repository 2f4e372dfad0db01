//! What a grant kind's own lowering (in its file of the `grant` room) uses of config: the
//! source map, for errors at file, line and key; the shared key groups and the macro that
//! pastes them into a strict table; and the lowering of what several grants share.

pub(crate) use super::lower::{
    bounded_duration, file_only, key_source, lower_policy, lower_signing, lower_token_request,
    non_empty, private_url, subject_header_name, subjects_in_memory, ClientIdRule,
};
pub use super::raw::{RawSubjectFrom, RawSubjectJwt};
pub(crate) use super::table::{credential_table, schedule_keys, token_request_keys, wait_keys};
pub use super::table::{RawSchedule, RawTokenRequest, RawWait};
