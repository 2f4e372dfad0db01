//! A Standard Webhooks signing secret: `whsec_` and the key in base64.

use base64::Engine;

/// Why a webhook secret is unusable. Never quotes the value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookSecretError {
    #[error(
        "a webhook secret is `whsec_` followed by base64 (e.g. `whsec_$(openssl rand -base64 32)`)"
    )]
    Format,
    #[error("a webhook secret's key must be at least 24 bytes (it is {0})")]
    TooShort(usize),
}

/// The signing key a `whsec_…` secret holds.
pub fn parse_webhook_secret(text: &str) -> Result<zeroize::Zeroizing<Vec<u8>>, WebhookSecretError> {
    let b64 = text
        .trim()
        .strip_prefix("whsec_")
        .ok_or(WebhookSecretError::Format)?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| WebhookSecretError::Format)?;
    if key.len() < 24 {
        return Err(WebhookSecretError::TooShort(key.len()));
    }
    Ok(zeroize::Zeroizing::new(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_whsec_base64_and_refuses_the_rest() {
        let key = parse_webhook_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(key.len(), 24);
        assert_eq!(
            parse_webhook_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Err(WebhookSecretError::Format)
        );
        assert_eq!(
            parse_webhook_secret("whsec_not base64!"),
            Err(WebhookSecretError::Format)
        );
        assert_eq!(
            parse_webhook_secret("whsec_c2hvcnQ="),
            Err(WebhookSecretError::TooShort(5))
        );
    }
}
