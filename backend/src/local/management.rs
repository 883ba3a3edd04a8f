//! The API Gateway Management API, served by chat-local over HTTP:
//! `POST`, `GET` and `DELETE` on `/@connections/{id}` (also under
//! `/{stage}/`, where the AWS SDK puts it), so the SDK's management client,
//! `curl` or another service can push to chat-local's sockets as on AWS.
//!
//! Like every other route it answers only on chat-local's own address, and
//! it refuses peers that are not on this machine: API Gateway requires signed
//! IAM requests for this API, and chat-local has no IAM to check.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use shared::limits::SERVER_FRAME_MAX_BYTES;

use super::gateway::{Gateway, Integration};
use crate::pusher::local::close_code;
use crate::pusher::{Frame, PushError};

type Target = (Path<String>, ConnectInfo<SocketAddr>);

/// `POST /@connections/{id}`: the body becomes one text frame.
pub async fn post_to_connection<I: Integration>(
    State(gateway): State<Arc<Gateway<I>>>,
    Path(connection_id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    if let Some(refusal) = refuse_remote(peer) {
        return refusal;
    }
    if body.len() > SERVER_FRAME_MAX_BYTES {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLargeException",
            &format!("frames are limited to {SERVER_FRAME_MAX_BYTES} bytes"),
        );
    }
    let Ok(text) = String::from_utf8(body.to_vec()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "BadRequestException",
            "chat-local sends text frames only; the body must be UTF-8",
        );
    };
    match gateway
        .sockets()
        .try_push(&connection_id, Frame::from(text))
    {
        Ok(()) => StatusCode::OK.into_response(),
        Err(PushError::Gone) => gone(),
        Err(PushError::Failed(message)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            &message,
        ),
    }
}

/// `GET /@connections/{id}`: when it connected, from where, and when it was
/// last heard from.
pub async fn get_connection<I: Integration>(
    State(gateway): State<Arc<Gateway<I>>>,
    (Path(connection_id), ConnectInfo(peer)): Target,
) -> Response {
    if let Some(refusal) = refuse_remote(peer) {
        return refusal;
    }
    let Some(socket) = gateway.sockets().socket(&connection_id) else {
        return gone();
    };
    let info = &socket.info;
    Json(json!({
        "connectedAt": iso8601(info.connected_at_ms),
        "lastActiveAt": iso8601(info.last_active_ms()),
        "identity": { "sourceIp": info.source_ip, "userAgent": info.user_agent },
    }))
    .into_response()
}

/// `DELETE /@connections/{id}`: closes the socket; its `$disconnect` follows.
pub async fn delete_connection<I: Integration>(
    State(gateway): State<Arc<Gateway<I>>>,
    (Path(connection_id), ConnectInfo(peer)): Target,
) -> Response {
    if let Some(refusal) = refuse_remote(peer) {
        return refusal;
    }
    if gateway.sockets().close(
        &connection_id,
        close_code::NORMAL,
        "closed by the management API",
    ) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        gone()
    }
}

/// The same routes under a stage prefix, as the AWS SDK calls them when its
/// endpoint is `http://host/{stage}`.
pub async fn post_to_staged_connection<I: Integration>(
    state: State<Arc<Gateway<I>>>,
    Path((_stage, connection_id)): Path<(String, String)>,
    peer: ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    post_to_connection(state, Path(connection_id), peer, body).await
}

pub async fn get_staged_connection<I: Integration>(
    state: State<Arc<Gateway<I>>>,
    Path((_stage, connection_id)): Path<(String, String)>,
    peer: ConnectInfo<SocketAddr>,
) -> Response {
    get_connection(state, (Path(connection_id), peer)).await
}

pub async fn delete_staged_connection<I: Integration>(
    state: State<Arc<Gateway<I>>>,
    Path((_stage, connection_id)): Path<(String, String)>,
    peer: ConnectInfo<SocketAddr>,
) -> Response {
    delete_connection(state, (Path(connection_id), peer)).await
}

fn refuse_remote(peer: SocketAddr) -> Option<Response> {
    (!peer.ip().is_loopback()).then(|| {
        error(
            StatusCode::FORBIDDEN,
            "ForbiddenException",
            "the management API answers only on this machine",
        )
    })
}

fn gone() -> Response {
    error(StatusCode::GONE, "GoneException", "no such connection")
}

/// An error the AWS SDK understands: its type in `x-amzn-errortype`.
fn error(status: StatusCode, kind: &'static str, message: &str) -> Response {
    let mut response = (status, Json(json!({ "message": message }))).into_response();
    response.headers_mut().insert(
        HeaderName::from_static("x-amzn-errortype"),
        HeaderValue::from_static(kind),
    );
    response
}

fn iso8601(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}
