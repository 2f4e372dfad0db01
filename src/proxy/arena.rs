//! A small per-thread byte arena for the bytes a request adds: the rewritten target and a
//! generated request id.
//!
//! `http::Uri` and `HeaderValue` own their bytes. Built from a `String` or a slice, each
//! costs one allocation, and one more the first time it is cloned (into the upstream
//! request, into the response). Cut from here instead, each is a shared view (`Bytes`) into
//! the arena's current block, and a clone is a reference count. A block is reclaimed in
//! place once every view cut from it is gone, so the arena allocates only when requests in
//! flight still hold the previous block.

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};

/// Small on purpose: a long-lived request (an SSE stream) keeps its block alive.
pub const BLOCK: usize = 4096;

thread_local! {
    static ARENA: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// `len` bytes written by `fill`, as a shared view. `fill` must write exactly `len` bytes
/// for the no-allocation promise; more still works, at the cost of a reallocation.
pub fn cut(len: usize, fill: impl FnOnce(&mut BytesMut)) -> Bytes {
    ARENA.with_borrow_mut(|block| {
        if block.capacity() < len {
            block.reserve(BLOCK.max(len));
        }
        fill(block);
        block.split().freeze()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_outlive_their_block_and_stay_intact() {
        let held: Vec<(Vec<u8>, Bytes)> = (0..3_000u32)
            .map(|i| {
                let want = format!("view-{i}").into_bytes();
                let got = cut(want.len(), |b| b.extend_from_slice(&want));
                (want, got)
            })
            .collect();
        for (want, got) in &held {
            assert_eq!(got.as_ref(), want.as_slice());
        }
    }

    #[test]
    fn a_cut_longer_than_a_block() {
        let long = vec![7u8; 3 * BLOCK];
        assert_eq!(cut(long.len(), |b| b.extend_from_slice(&long)), long);
    }
}
