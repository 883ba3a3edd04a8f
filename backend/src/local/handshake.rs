//! The opening handshake (RFC 6455, section 4.2.1): what a request must
//! carry to become a WebSocket.

use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;

/// The `Sec-WebSocket-Key` of a valid opening handshake (RFC 6455, 4.2.1),
/// or the answer to one that is not.
#[allow(clippy::result_large_err)] // Refusals are rare; the key is the hot path.
pub(super) fn handshake_key<'a>(
    method: &Method,
    headers: &'a HeaderMap,
) -> Result<&'a [u8], Response> {
    // Only GET upgrades; HEAD (which routing lets through with GET) is not
    // a handshake.
    if method != Method::GET {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET")],
            "a WebSocket handshake is a GET",
        )
            .into_response());
    }
    if !headers.contains_key(header::HOST) {
        return Err((StatusCode::BAD_REQUEST, "the handshake has no Host").into_response());
    }
    let has_token = |name, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value
                .to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return Err((
            StatusCode::UPGRADE_REQUIRED,
            [(header::UPGRADE, "websocket")],
            "this is a WebSocket endpoint",
        )
            .into_response());
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|version| version != "13")
    {
        return Err((
            StatusCode::UPGRADE_REQUIRED,
            [(header::SEC_WEBSOCKET_VERSION, "13")],
            "only WebSocket version 13 is supported",
        )
            .into_response());
    }
    // A nonce: 16 bytes, base64-encoded.
    let mut keys = headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
    match (keys.next(), keys.next()) {
        (Some(key), None)
            if base64::engine::general_purpose::STANDARD
                .decode(key.as_bytes())
                .is_ok_and(|nonce| nonce.len() == 16) =>
        {
            Ok(key.as_bytes())
        }
        _ => Err((
            StatusCode::BAD_REQUEST,
            "missing or malformed Sec-WebSocket-Key",
        )
            .into_response()),
    }
}
