//! A token set as a store keeps it at rest: JSON, sealed with the store key under
//! associated data that says where the value belongs. Written once for every backend.

use super::sealed::Sealer;
use super::{StoreError, StoredSet, StoredSetRecord};

/// Why a stored value gave no set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsealed {
    /// It does not open: another key, another place, or altered.
    DoesNotOpen,
    /// It opens, but is not a token set.
    Malformed,
}

/// `set`, sealed under `aad`.
pub fn seal_set(sealer: &Sealer, set: &StoredSet, aad: &[u8]) -> Result<String, StoreError> {
    let plain = serde_json::to_vec(&StoredSetRecord::from(set))
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
    Ok(sealer.seal(&plain, aad))
}

/// The set sealed in `sealed`, when it opens under `aad` and parses.
pub fn open_set(sealer: &Sealer, sealed: &str, aad: &[u8]) -> Result<StoredSet, Unsealed> {
    let plain = sealer.open(sealed, aad).ok_or(Unsealed::DoesNotOpen)?;
    let record: StoredSetRecord =
        serde_json::from_slice(&plain).map_err(|_| Unsealed::Malformed)?;
    Ok(record.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoredToken;

    #[test]
    fn a_set_opens_only_where_it_was_sealed() {
        let sealer = Sealer::new(&[7; 32]);
        let set = StoredSet {
            token: StoredToken::empty(),
            generation: 3,
        };
        let sealed = seal_set(&sealer, &set, b"here").unwrap();
        assert_eq!(
            open_set(&sealer, &sealed, b"here").map(|s| s.generation),
            Ok(3)
        );
        assert_eq!(
            open_set(&sealer, &sealed, b"there").map(|s| s.generation),
            Err(Unsealed::DoesNotOpen)
        );
        let not_a_set = sealer.seal(b"[1, 2]", b"here");
        assert_eq!(
            open_set(&sealer, &not_a_set, b"here").map(|s| s.generation),
            Err(Unsealed::Malformed)
        );
    }
}
