//! The store key: 32 bytes that seal every token a store keeps at rest.

/// Why a store key cannot be used (never quoting it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreKeyError {
    #[error("the store key is neither base64 nor hex")]
    NotBase64OrHex,
    #[error("the store key must be 32 bytes, got {0}")]
    WrongLength(usize),
}

/// Parses a store key: 32 bytes as base64 (what `bearerd keygen` prints) or 64 hex digits.
pub fn parse_store_key(text: &str) -> Result<[u8; 32], StoreKeyError> {
    use base64::Engine;
    let text = text.trim();
    let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| StoreKeyError::NotBase64OrHex)?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| StoreKeyError::NotBase64OrHex)?
    };
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| StoreKeyError::WrongLength(b.len()))
}
