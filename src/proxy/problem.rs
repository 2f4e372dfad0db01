//! The errors bearerd answers with itself: `application/problem+json` (RFC 9457).

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde::Serialize;

#[derive(Serialize)]
pub struct Problem<'a> {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<&'a str>,
    pub requires_reauth: bool,
    pub request_id: &'a str,
    /// 403 `subject-not-connected`: the subject, and the admin path of its connect flow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect: Option<String>,
    /// 403 `insufficient-scope`: the scopes the next login asks for, and its admin path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login: Option<String>,
    /// Seconds for `Retry-After` (a 429).
    #[serde(skip)]
    pub retry_after: Option<u64>,
    /// `WWW-Authenticate` (a 401 for the user's own token, RFC 6750).
    #[serde(skip)]
    pub www_authenticate: Option<&'static str>,
}

impl<'a> Problem<'a> {
    pub fn new(
        slug: &str,
        title: &'static str,
        status: u16,
        detail: impl Into<String>,
        request_id: &'a str,
    ) -> Self {
        Problem {
            kind: format!("urn:bearerd:problem:{slug}"),
            title,
            status,
            detail: detail.into(),
            credential: None,
            upstream: None,
            requires_reauth: false,
            request_id,
            subject: None,
            connect: None,
            scopes: None,
            login: None,
            retry_after: None,
            www_authenticate: None,
        }
    }

    /// Writes the problem as the whole response. The connection is not kept alive: the
    /// request body, if any, was not read.
    pub async fn send(&self, session: &mut Session) -> pingora::Result<()> {
        let body = Bytes::from(serde_json::to_vec(self).unwrap_or_default());
        let mut header = ResponseHeader::build(self.status, Some(4))?;
        header.insert_header("content-type", "application/problem+json")?;
        header.insert_header("content-length", body.len().to_string())?;
        header.insert_header("x-request-id", self.request_id)?;
        header.insert_header("cache-control", "no-store")?;
        if let Some(seconds) = self.retry_after {
            header.insert_header("retry-after", seconds.to_string())?;
        }
        if let Some(challenge) = self.www_authenticate {
            header.insert_header("www-authenticate", challenge)?;
        }
        session.set_keepalive(None);
        session
            .write_response_header(Box::new(header), false)
            .await?;
        session.write_response_body(Some(body), true).await
    }
}
