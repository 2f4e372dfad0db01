//! MCP URL elicitation, for upstreams with `mcp = true`: a user who must connect their
//! account (or consent to more scopes) is asked to by the MCP client itself. The JSON-RPC
//! request is answered with the URL-elicitation-required error of the MCP 2025-11-25
//! revision (-32042), whose URL starts that user's connect flow; MCP clients show it as
//! "connect your account" and can call again once the user has.
//!
//! A request that is no JSON-RPC request (a notification, a batch, a GET stream) gets the
//! problem+json answer instead, as on any other upstream.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde_json::{json, Value};

/// The MCP error code: the request cannot go on until the user completes the URL
/// elicitations in `data.elicitations`.
pub const URL_ELICITATION_REQUIRED: i64 = -32042;

/// The first MCP revision with URL elicitation; a request that names an older
/// `MCP-Protocol-Version` is not answered with one.
pub const FIRST_VERSION: &str = "2025-11-25";

/// The most of a request body read to find its JSON-RPC `id`.
const MAX_BODY: usize = 1 << 20;

/// The `id` of a JSON-RPC request body; `None` for anything else (a notification, a
/// response, a batch, not JSON).
pub fn request_id(body: &[u8]) -> Option<Value> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let object = value.as_object()?;
    if object.get("jsonrpc")?.as_str()? != "2.0" || !object.contains_key("method") {
        return None;
    }
    let id = object.get("id")?;
    (id.is_string() || id.is_number()).then(|| id.clone())
}

/// Reads the request body (at most 1 MiB) and gives its JSON-RPC `id`, if it is a request.
pub async fn read_request_id(session: &mut Session) -> Option<Value> {
    if session.req_header().method != http::Method::POST {
        return None;
    }
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = session.read_request_body().await {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BODY {
            return None;
        }
    }
    request_id(&body)
}

/// The JSON-RPC error answer for request `id`: one URL elicitation, `url`, saying `message`.
pub fn answer(id: Value, url: &str, message: &str) -> Vec<u8> {
    let elicitation_id = format!("{:032x}", rand::random::<u128>());
    let body = json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {
            "code": URL_ELICITATION_REQUIRED,
            "message": message,
            "data": {
                "elicitations": [{
                    "mode": "url",
                    "elicitationId": elicitation_id,
                    "url": url,
                    "message": message,
                }]
            }
        }
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Writes the answer as the whole response: 200 with the JSON-RPC error, as an MCP server
/// answers a request it refuses.
pub async fn send(session: &mut Session, body: Vec<u8>, request_id: &str) -> pingora::Result<()> {
    let body = Bytes::from(body);
    let mut header = ResponseHeader::build(200, Some(4))?;
    header.insert_header("content-type", "application/json")?;
    header.insert_header("content-length", body.len().to_string())?;
    header.insert_header("x-request-id", request_id)?;
    header.insert_header("cache-control", "no-store")?;
    session.set_keepalive(None);
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_json_rpc_request_has_an_id_to_answer() {
        let id = |s: &str| request_id(s.as_bytes());
        assert_eq!(
            id(r#"{"jsonrpc":"2.0","id":7,"method":"tools/call"}"#),
            Some(json!(7))
        );
        assert_eq!(
            id(r#"{"jsonrpc":"2.0","id":"a","method":"initialize"}"#),
            Some(json!("a"))
        );
        assert_eq!(
            id(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#),
            None
        );
        assert_eq!(id(r#"[{"jsonrpc":"2.0","id":1,"method":"x"}]"#), None);
        assert_eq!(id(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#), None);
        assert_eq!(id("not json"), None);
        let a: Value =
            serde_json::from_slice(&answer(json!(3), "https://idp/authorize?x", "m")).unwrap();
        assert_eq!(a["id"], 3);
        assert_eq!(a["error"]["code"], URL_ELICITATION_REQUIRED);
        assert_eq!(a["error"]["data"]["elicitations"][0]["mode"], "url");
        assert_eq!(
            a["error"]["data"]["elicitations"][0]["url"],
            "https://idp/authorize?x"
        );
    }
}
