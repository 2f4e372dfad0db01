//! Sealing with the store key: XChaCha20-Poly1305 with a random 192-bit nonce, and
//! associated data that binds each value to where it belongs (a record moved to another
//! credential or store does not open). Every store backend and the rotation journal seal
//! through this, so no backend ever holds a plaintext token.

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

impl Sealer {
    pub fn new(key: &[u8; 32]) -> Sealer {
        Sealer {
            cipher: XChaCha20Poly1305::new(key.into()),
        }
    }

    /// `plain` sealed under `aad`: base64 of nonce and ciphertext.
    pub fn seal(&self, plain: &[u8], aad: &[u8]) -> String {
        let nonce_bytes: [u8; 24] = rand::random();
        let nonce = XNonce::from_slice(&nonce_bytes);
        // Encryption with a valid key and nonce cannot fail for in-memory buffers.
        let ct = self
            .cipher
            .encrypt(nonce, Payload { msg: plain, aad })
            .unwrap_or_default();
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&ct);
        b64().encode(out)
    }

    /// The plaintext, or `None` when the value is not base64, was sealed with another key
    /// or `aad`, or was altered.
    pub fn open(&self, sealed: &str, aad: &[u8]) -> Option<Vec<u8>> {
        let bytes = b64().decode(sealed).ok()?;
        if bytes.len() < 24 + 16 {
            return None;
        }
        let (nonce, ct) = bytes.split_at(24);
        self.cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_only_with_the_same_key_and_aad() {
        let s = Sealer::new(&[1u8; 32]);
        let sealed = s.seal(b"secret", b"a");
        assert_eq!(s.open(&sealed, b"a").as_deref(), Some(&b"secret"[..]));
        assert!(s.open(&sealed, b"b").is_none());
        assert!(Sealer::new(&[2u8; 32]).open(&sealed, b"a").is_none());
        assert!(s.open("not base64!", b"a").is_none());
    }
}
