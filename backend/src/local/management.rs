//! The API Gateway Management API, served by chat-local over HTTP:
//! `POST`, `GET` and `DELETE` on `/@connections/{id}` (also under
//! `/{stage}/`, where the AWS SDK puts it), so the SDK's management client,
//! `curl` or another service can push to chat-local's sockets as on AWS.
//!
//! It is served on a listener of its own (`--management-addr`, loopback by
//! default), never on the public one: API Gateway requires signed IAM
//! requests for this API, and chat-local has no IAM to check, so who can
//! reach that address is who may push. (Judging by the peer address on the
//! public listener would trust everything behind a local reverse proxy.)

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use shared::limits::SERVER_FRAME_MAX_BYTES;

use super::gateway::{Gateway, Integration};
use crate::pusher::local::close_code;
use crate::pusher::{Frame, PushError};

/// The Management API's routes, at the root and under any stage prefix.
pub fn router<I: Integration>(gateway: Arc<Gateway<I>>) -> Router {
    Router::new()
        .route(
            "/@connections/{id}",
            get(get_connection)
                .post(post_to_connection)
                .delete(delete_connection),
        )
        .route(
            "/{stage}/@connections/{id}",
            get(get_staged_connection)
                .post(post_to_staged_connection)
                .delete(delete_staged_connection),
        )
        .with_state(gateway)
        .layer(axum::middleware::from_fn(only_local_callers))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(None),
            super::web_app::security_headers,
        ))
}

/// Requests from a browser page (an `Origin`) or addressed by a name
/// (DNS rebinding turns a page's own host name into this address) are
/// refused: the callers of this API are programs on this machine, which
/// address it by IP or `localhost`.
async fn only_local_callers(request: Request, next: Next) -> Response {
    if request.headers().contains_key(header::ORIGIN) {
        return error(
            StatusCode::FORBIDDEN,
            "ForbiddenException",
            "the management API does not serve web pages",
        );
    }
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|host| host.to_str().ok());
    if !host.is_some_and(is_local_host) {
        return error(
            StatusCode::FORBIDDEN,
            "ForbiddenException",
            "address the management API by IP address or localhost",
        );
    }
    next.run(request).await
}

/// `127.0.0.1:8090`, `[::1]:8090`, `localhost`: an IP literal or
/// `localhost`, with or without a port.
fn is_local_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, _)) => return v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.parse::<u16>().is_ok() {
                name
            } else {
                host
            }
        }),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

/// `POST /@connections/{id}`: the body becomes one text frame.
async fn post_to_connection<I: Integration>(
    State(gateway): State<Arc<Gateway<I>>>,
    Path(connection_id): Path<String>,
    body: Bytes,
) -> Response {
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
async fn get_connection<I: Integration>(
    State(gateway): State<Arc<Gateway<I>>>,
    Path(connection_id): Path<String>,
) -> Response {
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
async fn delete_connection<I: Integration>(
    State(gateway): State<Arc<Gateway<I>>>,
    Path(connection_id): Path<String>,
) -> Response {
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
async fn post_to_staged_connection<I: Integration>(
    state: State<Arc<Gateway<I>>>,
    Path((_stage, connection_id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    post_to_connection(state, Path(connection_id), body).await
}

async fn get_staged_connection<I: Integration>(
    state: State<Arc<Gateway<I>>>,
    Path((_stage, connection_id)): Path<(String, String)>,
) -> Response {
    get_connection(state, Path(connection_id)).await
}

async fn delete_staged_connection<I: Integration>(
    state: State<Arc<Gateway<I>>>,
    Path((_stage, connection_id)): Path<(String, String)>,
) -> Response {
    delete_connection(state, Path(connection_id)).await
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

#[cfg(test)]
mod tests {
    use super::is_local_host;

    #[test]
    fn only_ip_literals_and_localhost_address_the_management_api() {
        for host in [
            "127.0.0.1:8090",
            "127.0.0.1",
            "[::1]:8090",
            "localhost:8090",
            "LOCALHOST",
        ] {
            assert!(is_local_host(host), "{host}");
        }
        for host in [
            "evil.example:8090",
            "evil.example",
            "[::1",
            "127.0.0.1.nip.io",
            "",
        ] {
            assert!(!is_local_host(host), "{host}");
        }
    }
}
