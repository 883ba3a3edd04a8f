//! The WebSocket front door of chat-local, playing API Gateway: it gives each
//! socket a connection id, turns what happens on the socket into the same
//! `$connect`, `$disconnect` and message events API Gateway would send,
//! selects routes by `$request.body.action`, and hands every event to an
//! [`Integration`] (the handlers, in process).
//!
//! The flow, top to bottom: [`Gateway::upgrade`] checks the handshake
//! (`handshake`) and the caps (`admission`), runs `$connect`, then hands the
//! socket to its session (`session`: frames in become events, pushed frames
//! go out); `keep_alive` pings quiet sockets and closes dead ones. The
//! events themselves are built in `events`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use aws_lambda_events::encodings::Body;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use shared::limits::CLIENT_MESSAGE_MAX_BYTES;
use tokio::sync::oneshot;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::task::TaskTracker;

use super::admission::{OpenSockets, Slot};
use super::client_address::TrustedProxies;
use super::handshake::handshake_key;
use super::websocket;
use crate::chat::Chat;
use crate::clock::now_ms;
use crate::ids::unguessable_id;
use crate::pusher::local::{Closing, ConnectionInfo, LocalPusher, close_code};
use crate::store::Store;

/// Where API Gateway would send an event: to the handlers in this process, or
/// (for a deployment's real binaries) to a Lambda function.
/// Marks an integration's answer as its failure (a function that errored,
/// timed out or was throttled), not a response of its own: API Gateway then
/// sends the client `{"message": "Internal server error", "connectionId",
/// "requestId"}` on a message route, and so does chat-local.
pub const INTEGRATION_FAILED: &str = "x-chat-local-integration-failed";

pub trait Integration: Send + Sync + 'static {
    fn invoke(
        &self,
        event: ApiGatewayWebsocketProxyRequest,
    ) -> impl Future<Output = ApiGatewayProxyResponse> + Send;
}

impl<S: Store, P: crate::pusher::Pusher> Integration for Chat<S, P> {
    async fn invoke(&self, event: ApiGatewayWebsocketProxyRequest) -> ApiGatewayProxyResponse {
        self.handle(event).await
    }
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub stage: String,
    /// The API's domain in every event's `requestContext.domainName`, as
    /// API Gateway names its own (never the client's `Host` header).
    pub domain_name: String,
    /// Route keys besides `$connect`, `$disconnect` and `$default`.
    pub routes: Vec<String>,
    /// How often quiet sockets are pinged (and idle or expired ones closed);
    /// zero never pings, as API Gateway does not.
    pub ping_interval: Duration,
    /// How long a socket may stay silent (no frame, no pong) before it counts
    /// as dead and is disconnected.
    pub idle_timeout: Duration,
    /// API Gateway closes every connection after 2 hours; so does chat-local.
    pub max_connection_duration: Duration,
    /// Largest message passed on to a route, API Gateway's limit; a larger
    /// one is answered with a `too_large` error frame.
    pub max_message_size: usize,
    /// Largest message read at all; a larger one closes the socket with 1009
    /// (message too big), as RFC 6455 has it.
    pub max_read_size: usize,
    /// Open sockets at most; a handshake beyond it gets 503.
    pub max_connections: usize,
    /// Open sockets per client address at most (`None`: no limit); a
    /// handshake beyond it gets 429.
    pub max_connections_per_ip: Option<u32>,
    /// Bytes all sockets together may hold for messages that have not fully
    /// arrived; a socket that would go over is closed with 1013.
    pub max_unfinished_bytes: usize,
    /// How long part of a message may wait for the rest before the socket
    /// is closed (1008): a client may not hold a buffer open forever.
    pub message_deadline: Duration,
    /// Reverse proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Arc<TrustedProxies>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            stage: "local".into(),
            domain_name: "localhost".into(),
            routes: ["join", "sendmessage", "leave", "history"]
                .map(String::from)
                .to_vec(),
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            max_connection_duration: Duration::from_secs(2 * 3600),
            max_message_size: CLIENT_MESSAGE_MAX_BYTES,
            max_read_size: 1024 * 1024,
            max_connections: 20_000,
            max_connections_per_ip: None,
            max_unfinished_bytes: 64 * 1024 * 1024,
            message_deadline: Duration::from_secs(30),
            trusted_proxies: Arc::default(),
        }
    }
}

pub struct Gateway<I> {
    pub(super) integration: I,
    pub(super) sockets: LocalPusher,
    pub(super) config: GatewayConfig,
    /// The socket tasks, so shutdown can wait for their close frames.
    pub(super) tasks: TaskTracker,
    pub(super) shutting_down: AtomicBool,
    pub(super) open: OpenSockets,
    /// Bytes held for unfinished messages, all sockets together.
    pub(super) unfinished_bytes: AtomicUsize,
}

impl<I: Integration> Gateway<I> {
    pub fn new(integration: I, sockets: LocalPusher, config: GatewayConfig) -> Self {
        Self {
            integration,
            sockets,
            config,
            tasks: TaskTracker::new(),
            shutting_down: AtomicBool::new(false),
            open: OpenSockets::default(),
            unfinished_bytes: AtomicUsize::new(0),
        }
    }

    /// Closes every socket with 1001 (going away) and waits, up to `grace`,
    /// for the close frames to go out. No `$disconnect` runs: a restart
    /// clears the connection records anyway, and announcing every departure
    /// to rooms that are closing too would only cost time.
    pub async fn shut_down(&self, grace: Duration) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.sockets
            .close_all(close_code::GOING_AWAY, "the server is shutting down");
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.tasks.len(),
                "some sockets did not close in time"
            );
        }
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    pub fn sockets(&self) -> &LocalPusher {
        &self.sockets
    }

    /// Pings quiet sockets, and closes those silent past the idle timeout or
    /// open past the maximum duration: one task for every socket, rather
    /// than timers in each.
    pub async fn keep_alive(self: Arc<Self>) {
        let pings = !self.config.ping_interval.is_zero();
        // Often enough that the idle timeout is kept to within a quarter of
        // itself and the message deadline to within half of itself, and
        // that quiet sockets are pinged every ping interval.
        let mut every = (self.config.idle_timeout / 4).min(self.config.message_deadline / 2);
        if pings {
            every = every.min(self.config.ping_interval);
        }
        let every = every.clamp(Duration::from_millis(100), Duration::from_secs(30));
        let mut tick = tokio::time::interval_at(Instant::now() + every, every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let ping_after = self.config.ping_interval.as_millis() as u64;
        let tick_ms = every.as_millis() as u64;
        let idle_after = self.config.idle_timeout.as_millis() as u64;
        let expire_after = self.config.max_connection_duration.as_millis() as u64;
        let finish_within = self.config.message_deadline.as_millis() as u64;
        loop {
            tick.tick().await;
            if self.shutting_down.load(Ordering::Relaxed) {
                return;
            }
            let now = now_ms();
            self.sockets.sweep(|socket| {
                let silent = now.saturating_sub(socket.info.last_active_ms());
                if now.saturating_sub(socket.info.connected_at_ms) >= expire_after {
                    Some(Closing {
                        code: close_code::GOING_AWAY,
                        reason: "maximum connection duration reached",
                    })
                } else if socket
                    .info
                    .unfinished_since_ms()
                    .is_some_and(|since| now.saturating_sub(since) > finish_within)
                {
                    Some(Closing {
                        code: close_code::POLICY,
                        reason: "message not finished in time",
                    })
                } else if silent > idle_after {
                    Some(Closing {
                        code: close_code::ABNORMAL,
                        reason: "idle timeout",
                    })
                } else {
                    // Once per ping interval of silence: when this tick
                    // crossed a multiple of it.
                    if pings
                        && silent >= ping_after
                        && silent / ping_after > silent.saturating_sub(tick_ms) / ping_after
                    {
                        socket.ping();
                    }
                    None
                }
            });
        }
    }

    /// `GET /ws`: runs `$connect` before accepting the upgrade, as API Gateway
    /// does, so a refused connect is an HTTP error, never an open socket.
    pub async fn upgrade(
        State(gateway): State<Arc<Self>>,
        ConnectInfo(peer): ConnectInfo<SocketAddr>,
        Query(query): Query<Vec<(String, String)>>,
        mut request: Request,
    ) -> Response {
        let accept = match handshake_key(request.method(), request.headers()) {
            Ok(key) => websocket::accept_key(key),
            Err(refusal) => return refusal,
        };
        let Some(on_upgrade) = request.extensions_mut().remove::<OnUpgrade>() else {
            return (
                StatusCode::UPGRADE_REQUIRED,
                [(header::UPGRADE, "websocket")],
                "WebSocket needs an HTTP/1.1 connection",
            )
                .into_response();
        };
        // The client, behind the proxies the operator trusts.
        let ip = gateway
            .config
            .trusted_proxies
            .client(peer.ip(), request.headers());
        if let Err(refusal) = gateway.open.open(ip, &gateway.config) {
            return refusal.into_response();
        }
        let headers = request.headers();
        let connection_id = new_connection_id();
        // Kept for the socket's whole life (the Management API reports it):
        // no client gets to choose how much memory that is.
        let user_agent = truncated(
            headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default(),
            MAX_USER_AGENT_BYTES,
        );
        let info = ConnectionInfo::new(now_ms(), ip.to_string(), user_agent);
        // Boxed: the task below keeps what it captures for the socket's whole
        // life, and the event is large.
        let event = Box::new(gateway.connect_event(&connection_id, &info, headers, query));
        // Registered before `$connect` runs, but pushes find it gone until
        // `$connect` has accepted it, exactly as on API Gateway: the
        // handlers must cope with that there, so they are made to here.
        let socket = gateway.sockets.register_connecting(&connection_id, info);
        if gateway.shutting_down.load(Ordering::SeqCst) {
            gateway
                .sockets
                .close(&connection_id, close_code::GOING_AWAY, "shutting down");
            gateway.open.close(ip, &gateway.config);
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down",
            )
                .into_response();
        }

        // The rest runs in a task of its own, so that a client hanging up
        // during `$connect` (which drops this request) still gets its
        // `$disconnect` once `$connect` has recorded it.
        let (answer, answered) = oneshot::channel();
        let tasks = gateway.tasks.clone();
        let task = async move {
            // Released however the session ends, a panicking handler too.
            let _slot = Slot {
                open: &gateway.open,
                ip,
                config: &gateway.config,
            };
            gateway
                .session(event, connection_id, socket, answer, on_upgrade)
                .await;
        };
        tracing::trace!(bytes = std::mem::size_of_val(&task), "socket task");
        tasks.spawn(task);
        match answered.await {
            Ok(Ok(())) => {}
            Ok(Err(refused)) => {
                let status = u16::try_from(refused.status_code)
                    .ok()
                    .and_then(|code| StatusCode::from_u16(code).ok())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                // Headers too: a 429's Retry-After tells the client when.
                return (status, refused.headers, body_text(refused.body)).into_response();
            }
            Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        }
        (
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (header::UPGRADE, "websocket".to_owned()),
                (header::CONNECTION, "Upgrade".to_owned()),
                (header::SEC_WEBSOCKET_ACCEPT, accept),
            ],
        )
            .into_response()
    }
}

/// Longest `User-Agent` kept; real ones are under 200 bytes.
const MAX_USER_AGENT_BYTES: usize = 256;

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncated(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

fn body_text(body: Option<Body>) -> String {
    match body {
        Some(Body::Text(text)) => text,
        Some(Body::Binary(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        _ => String::new(),
    }
}

/// A connection id shaped like API Gateway's: 16 URL-safe characters, and
/// as hard to guess (it is the only credential for `@connections`).
fn new_connection_id() -> String {
    unguessable_id(16)
}
