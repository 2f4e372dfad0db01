//! MCP URL elicitation, for upstreams with `mcp = true`: a user who must connect their
//! account (or consent to more scopes) is asked to by the MCP client itself, whose URL
//! starts that user's connect flow; MCP clients show it as "connect your account" and call
//! again once the user has. In the form of the revision the request carries:
//!
//! - 2025-11-25: the JSON-RPC error -32042 (URL elicitation required).
//! - 2026-07-28 (multi round-trip requests): for `tools/call`, `prompts/get` and
//!   `resources/read`, an `input_required` result whose `inputRequests` holds one
//!   `elicitation/create` in URL mode (and no `requestState`: the retry reaches the server
//!   once the user has connected, and a server refuses a state it did not make). The client
//!   retries with its answer: a declined one is told so (an error result for a tool call,
//!   an error otherwise). A client that does not declare URL elicitation gets
//!   `-32021` (a missing required capability). Other methods have no `input_required`
//!   form and get the 2025-11-25 error, the one way left to ask.
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

/// The first revision that asks with an `input_required` result (multi round-trip
/// requests) rather than the error.
pub const INPUT_REQUIRED_VERSION: &str = "2026-07-28";

/// The methods whose result may be `input_required` (2026-07-28).
const INPUT_METHODS: [&str; 3] = ["tools/call", "prompts/get", "resources/read"];

/// The key of bearerd's input request in `inputRequests`, and of its answer in the
/// retry's `inputResponses`.
const INPUT_KEY: &str = "bearerd-connect";

/// 2026-07-28: the client did not declare a capability the answer needs.
pub const MISSING_CAPABILITY: i64 = -32021;

/// An implementation-defined JSON-RPC server error: the user declined to connect.
const DECLINED: i64 = -32000;

/// The most of a request body read to find its JSON-RPC `id`.
const MAX_BODY: usize = 1 << 20;

/// A JSON-RPC request, as far as an elicitation needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonRpcRequest {
    pub id: Value,
    pub method: String,
    /// A 2026-07-28 retry whose answer to bearerd's own input request declined (or
    /// cancelled) it.
    pub declined: bool,
    /// Whether the request's `_meta` declares URL elicitation among the client's
    /// capabilities (2026-07-28 requests carry them).
    pub declares_url_elicitation: bool,
}

/// The JSON-RPC request in a body; `None` for anything else (a notification, a response,
/// a batch, not JSON).
pub fn request(body: &[u8]) -> Option<JsonRpcRequest> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let object = value.as_object()?;
    if object.get("jsonrpc")?.as_str()? != "2.0" {
        return None;
    }
    let method = object.get("method")?.as_str()?.to_string();
    let id = object.get("id")?;
    if !(id.is_string() || id.is_number()) {
        return None;
    }
    let params = object.get("params");
    let action = params
        .and_then(|p| p.get("inputResponses"))
        .and_then(|r| r.get(INPUT_KEY))
        .and_then(|r| r.get("action"))
        .and_then(Value::as_str);
    let declares_url_elicitation = params
        .and_then(|p| p.get("_meta"))
        .and_then(|m| m.get("io.modelcontextprotocol/clientCapabilities"))
        .and_then(|c| c.get("elicitation"))
        .and_then(|e| e.get("url"))
        .is_some();
    Some(JsonRpcRequest {
        id: id.clone(),
        method,
        declined: matches!(action, Some("decline" | "cancel")),
        declares_url_elicitation,
    })
}

/// An `MCP-Protocol-Version` value as a revision date, when it is one (`YYYY-MM-DD`).
pub fn revision(version: &str) -> Option<&str> {
    let b = version.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let shaped = b.len() == 10 && b[4] == b'-' && b[7] == b'-';
    (shaped && digits(0..4) && digits(5..7) && digits(8..10)).then_some(version)
}

/// The `id` of a JSON-RPC request body (see [`request`]).
pub fn request_id(body: &[u8]) -> Option<Value> {
    request(body).map(|r| r.id)
}

/// Reads the request body (at most 1 MiB) and gives the JSON-RPC request in it, if any.
pub async fn read_request(session: &mut Session) -> Option<JsonRpcRequest> {
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
    request(&body)
}

/// Whether the answer to `request` carries a URL (a connect flow to start): not for a
/// 2026-07-28 client that lacks the capability, nor for its declined retry.
pub fn needs_url(request: &JsonRpcRequest, version: Option<&str>) -> bool {
    let modern = version
        .and_then(revision)
        .is_some_and(|v| v >= INPUT_REQUIRED_VERSION);
    let input_method = INPUT_METHODS.contains(&request.method.as_str());
    !(modern && input_method && (!request.declares_url_elicitation || request.declined))
}

/// The answer to `request` in the form of `version` (its `MCP-Protocol-Version`): one URL
/// elicitation, `url`, saying `message`.
pub fn answer_for(
    request: JsonRpcRequest,
    version: Option<&str>,
    url: &str,
    message: &str,
) -> Vec<u8> {
    let modern = version
        .and_then(revision)
        .is_some_and(|v| v >= INPUT_REQUIRED_VERSION);
    if !modern || !INPUT_METHODS.contains(&request.method.as_str()) {
        return answer(request.id, url, message);
    }
    let body = if !request.declares_url_elicitation {
        json!({ "jsonrpc": "2.0", "id": request.id, "error": {
            "code": MISSING_CAPABILITY,
            "message": format!("{message} (the client does not declare URL elicitation)"),
            "data": { "requiredCapabilities": { "elicitation": { "url": {} } } },
        }})
    } else if request.declined && request.method != "tools/call" {
        json!({ "jsonrpc": "2.0", "id": request.id, "error": {
            "code": DECLINED,
            "message": format!("{message} (declined)"),
        }})
    } else if request.declined {
        // The user said no: a complete result, so the client stops asking.
        let result = json!({
            "resultType": "complete",
            "content": [{ "type": "text", "text": message }],
            "isError": true,
        });
        json!({ "jsonrpc": "2.0", "id": request.id, "result": result })
    } else {
        let result = json!({
            "resultType": "input_required",
            "inputRequests": {
                INPUT_KEY: {
                    "method": "elicitation/create",
                    "params": { "mode": "url", "message": message, "url": url },
                }
            },
        });
        json!({ "jsonrpc": "2.0", "id": request.id, "result": result })
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The 2025-11-25 JSON-RPC error answer for request `id`: one URL elicitation, `url`,
/// saying `message`.
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

    #[test]
    fn a_2026_07_28_request_gets_input_required_and_a_declined_retry_a_complete_result() {
        let url = "https://idp/authorize?s";
        let modern = Some(INPUT_REQUIRED_VERSION);
        let ask = |body: &str, version: Option<&str>| -> Value {
            let req = request(body.as_bytes()).unwrap();
            serde_json::from_slice(&answer_for(req, version, url, "m")).unwrap()
        };
        let meta =
            r#""_meta":{"io.modelcontextprotocol/clientCapabilities":{"elicitation":{"url":{}}}}"#;
        let call = format!(
            r#"{{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{{"name":"echo",{meta}}}}}"#
        );
        assert!(request(call.as_bytes()).unwrap().declares_url_elicitation);
        assert!(needs_url(&request(call.as_bytes()).unwrap(), modern));
        let a = ask(&call, modern);
        assert_eq!(a["id"], 4);
        assert_eq!(a["result"]["resultType"], "input_required");
        let input = &a["result"]["inputRequests"][INPUT_KEY];
        assert_eq!(input["method"], "elicitation/create");
        assert_eq!(input["params"]["mode"], "url");
        assert_eq!(input["params"]["url"], url);
        assert!(
            a["result"].get("requestState").is_none(),
            "a server refuses a state it did not make"
        );
        // The 2025-11-25 form for older clients, and for methods without input_required.
        let old = ask(&call, Some("2025-11-25"));
        assert_eq!(old["error"]["code"], URL_ELICITATION_REQUIRED);
        let list = ask(r#"{"jsonrpc":"2.0","id":5,"method":"tools/list"}"#, modern);
        assert_eq!(list["error"]["code"], URL_ELICITATION_REQUIRED);
        // The retry with the user's "no" to bearerd's own request: a complete error result.
        let retry = format!(
            r#"{{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{{"name":"echo","inputResponses":{{"{INPUT_KEY}":{{"action":"decline"}}}},{meta}}}}}"#
        );
        assert!(request(retry.as_bytes()).unwrap().declined);
        assert!(
            !needs_url(&request(retry.as_bytes()).unwrap(), modern),
            "no flow for a no"
        );
        let d = ask(&retry, modern);
        assert_eq!(d["result"]["resultType"], "complete");
        assert_eq!(d["result"]["isError"], true);
        // A declined prompt or resource read has no error result of that shape.
        let p = ask(&retry.replace("tools/call", "prompts/get"), modern);
        assert_eq!(p["error"]["code"], DECLINED);
        // Another input's answer is not bearerd's.
        let other = retry.replace(INPUT_KEY, "server-input");
        assert!(!request(other.as_bytes()).unwrap().declined);
        // A client that does not declare URL elicitation is told which capability it lacks.
        let bare = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo"}}"#;
        assert_eq!(ask(bare, modern)["error"]["code"], MISSING_CAPABILITY);
        assert!(!needs_url(&request(bare.as_bytes()).unwrap(), modern));
        assert!(needs_url(
            &request(bare.as_bytes()).unwrap(),
            Some("2025-11-25")
        ));
        // Versions are dates or nothing: a malformed one is not taken for a new revision.
        for v in ["9", "draft", "2026-07-28x", "2030", ""] {
            assert_eq!(revision(v), None, "{v}");
            let old = ask(&call, Some(v));
            assert_eq!(old["error"]["code"], URL_ELICITATION_REQUIRED, "{v}");
        }
        assert_eq!(revision("2026-07-28"), Some("2026-07-28"));
    }
}
