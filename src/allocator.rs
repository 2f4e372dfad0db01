//! Settings for mimalloc, the global allocator of the binaries. Its defaults commit whole
//! arenas up front (see .cargo/config.toml, which turns that off at build time) and keep freed
//! memory: with them a sidecar holding 1,000 keep-alive connections used twice the memory and
//! never gave it back. Purging at once trades a little CPU for memory that comes back.

/// Positions in mimalloc's `mi_option_e` (libmimalloc-sys names only some of them).
#[cfg(feature = "mimalloc")]
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Call first thing in `main`, before any thread starts.
pub fn tune() {
    #[cfg(feature = "mimalloc")]
    // SAFETY: a plain option setter of the C library, called before any thread is started.
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
    }
}
