//! The server's JSON, read with the browser's own `JSON.parse`: its fields go
//! into `shared`'s [`ServerFields`], and `shared` decides what makes a frame.
//! No JSON library is compiled into the app.

use js_sys::{Array, JSON, Reflect};
use shared::{ChatMessage, ErrorCode, PresenceEvent, ServerFields, ServerFrame};
use wasm_bindgen::JsValue;

/// One text frame from the server.
pub fn parse_frame(text: &str) -> Result<ServerFrame, String> {
    let frame = JSON::parse(text).map_err(|_| "not JSON".to_owned())?;
    if !frame.is_object() {
        return Err("not a JSON object".into());
    }
    // API Gateway's own answer when the function behind a route failed
    // (an error, a timeout, throttling): no `type`, and nothing says which
    // request it was. It is the server failing, and said so.
    if string(&frame, "type").is_none()
        && string(&frame, "message").is_some()
        && string(&frame, "requestId").is_some()
    {
        return Ok(ServerFrame::Error {
            code: ErrorCode::Internal,
            message: "The server could not answer just now; trying again.".into(),
            action: None,
            retry_after_ms: None,
            nonce: None,
        });
    }
    let fields = ServerFields {
        kind: string(&frame, "type").ok_or("no type")?,
        room: string(&frame, "room"),
        name: string(&frame, "name"),
        members: list(&frame, "members", |name| name.as_string()),
        count: whole_number(&frame, "count").map(|n| n as usize),
        history: list(&frame, "history", |entry| message(&entry)),
        id: string(&frame, "id"),
        data: string(&frame, "data"),
        ts: whole_number(&frame, "ts"),
        event: string(&frame, "event").and_then(|event| PresenceEvent::from_wire(&event)),
        // A code this build does not know (a newer server) is still an
        // error whose message is worth showing.
        code: string(&frame, "code")
            .map(|code| ErrorCode::from_wire(&code).unwrap_or(ErrorCode::Internal)),
        message: string(&frame, "message"),
        messages: list(&frame, "messages", |entry| message(&entry)),
        more: field(&frame, "more").and_then(|more| more.as_bool()),
        also: list(&frame, "also", |name| name.as_string()),
        action: string(&frame, "action"),
        retry_after_ms: whole_number(&frame, "retryAfterMs"),
        nonce: string(&frame, "nonce"),
    };
    ServerFrame::try_from(fields)
}

fn message(entry: &JsValue) -> Option<ChatMessage> {
    Some(ChatMessage {
        id: string(entry, "id")?,
        room: string(entry, "room")?,
        name: string(entry, "name")?,
        data: string(entry, "data")?,
        ts: whole_number(entry, "ts")?,
        nonce: string(entry, "nonce"),
    })
}

pub fn field(object: &JsValue, key: &str) -> Option<JsValue> {
    Reflect::get(object, &JsValue::from_str(key))
        .ok()
        .filter(|value| !value.is_undefined() && !value.is_null())
}

pub fn string(object: &JsValue, key: &str) -> Option<String> {
    field(object, key)?.as_string()
}

/// A count or a timestamp: a JSON number that is a whole number, at least 0.
fn whole_number(object: &JsValue, key: &str) -> Option<u64> {
    field(object, key)?
        .as_f64()
        .filter(|n| *n >= 0.0 && n.fract() == 0.0 && *n <= 9_007_199_254_740_991.0)
        .map(|n| n as u64)
}

/// An array whose every item reads as `T`; none if any does not.
fn list<T>(object: &JsValue, key: &str, read: impl Fn(JsValue) -> Option<T>) -> Option<Vec<T>> {
    let items = field(object, key)?;
    if !Array::is_array(&items) {
        return None;
    }
    Array::from(&items).iter().map(read).collect()
}
