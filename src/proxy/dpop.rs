//! DPoP on the data path (RFC 9449 §7): a fresh proof on every upstream request that
//! carries a DPoP-bound token, and the nonce the upstream asks for (§9). Bearer tokens pay
//! a branch per request and one per 401.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::{Error, ErrorType};

use crate::config::UpstreamConfig;
use crate::token::TokenSnapshot;

/// An upstream as DPoP proofs name it, and its last nonce.
pub struct UpstreamDpop {
    /// `scheme://authority`: the `htu` of a request is this and its path.
    origin: String,
    /// The last `DPoP-Nonce` the upstream sent, in every proof until it sends another.
    nonce: ArcSwapOption<String>,
}

/// What a response to a DPoP request says about the nonce.
#[derive(Debug, PartialEq, Eq)]
pub enum NonceChallenge {
    /// Not a 401 `use_dpop_nonce`.
    None,
    /// A 401 `use_dpop_nonce`; `fresh` when its nonce is not the one the proof carried
    /// (a try with it may succeed).
    UseNonce { fresh: bool },
}

impl UpstreamDpop {
    pub fn new(config: &UpstreamConfig) -> UpstreamDpop {
        let scheme = if config.tls { "https" } else { "http" };
        UpstreamDpop {
            origin: format!("{scheme}://{}", config.authority.to_ascii_lowercase()),
            nonce: ArcSwapOption::empty(),
        }
    }

    /// Adds the proof for this request (method and target as they go upstream) when its
    /// token is DPoP-bound; answers the nonce the proof carries. A proof that cannot be
    /// made stops the request: the token is worthless without it.
    pub fn add_proof(
        &self,
        req: &mut RequestHeader,
        token: &TokenSnapshot,
    ) -> pingora::Result<Option<Arc<String>>> {
        if token.dpop.is_none() {
            return Ok(None);
        }
        let htu = format!("{}{}", self.origin, req.uri.path());
        let nonce = self.nonce.load_full();
        match token.dpop_proof(
            req.method.as_str(),
            &htu,
            nonce.as_deref().map(String::as_str),
        ) {
            Some(Ok(proof)) => {
                req.insert_header(bytes::Bytes::from_static(b"DPoP"), proof)?;
                Ok(nonce)
            }
            Some(Err(e)) => Error::e_explain(
                ErrorType::InternalError,
                format!("no DPoP proof for the upstream request: {e}"),
            ),
            None => Ok(None),
        }
    }

    /// Keeps the nonce a response to a DPoP request carries, and says whether it is a 401
    /// `use_dpop_nonce` (`sent`: the nonce the request's proof carried).
    pub fn nonce_challenge(
        &self,
        resp: &ResponseHeader,
        sent: Option<&Arc<String>>,
    ) -> NonceChallenge {
        let nonce = resp
            .headers
            .get("dpop-nonce")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::material::dpop::valid_nonce);
        if let Some(n) = &nonce {
            if self.nonce.load().as_deref() != Some(n) {
                self.nonce.store(Some(Arc::new(n.clone())));
            }
        }
        let asked = resp.status == http::StatusCode::UNAUTHORIZED
            && resp
                .headers
                .get_all(http::header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| {
                    crate::token::dpop_challenge_error(v).as_deref() == Some("use_dpop_nonce")
                });
        if !asked {
            return NonceChallenge::None;
        }
        let fresh = nonce.is_some_and(|n| sent.map(|s| s.as_str()) != Some(n.as_str()));
        NonceChallenge::UseNonce { fresh }
    }
}
