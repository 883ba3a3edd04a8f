//! The WebSocket front door of chat-local, playing API Gateway: it gives each
//! socket a connection id, turns what happens on the socket into the same
//! `$connect`, `$disconnect` and message events API Gateway would send,
//! selects routes by `$request.body.action`, and hands every event to an
//! [`Integration`] (the handlers, in process).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use aws_lambda_events::encodings::Body;
use aws_lambda_events::query_map::QueryMap;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures::{SinkExt, StreamExt};
use shared::limits::SERVER_FRAME_MAX_BYTES;
use shared::{ErrorCode, ServerFrame};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::task::TaskTracker;

use crate::chat::{Chat, now_ms};
use crate::pusher::Frame;
use crate::pusher::local::{ConnectionInfo, LocalPusher, close_code};
use crate::store::Store;

/// Where API Gateway would send an event: to the handlers in this process, or
/// (for a deployment's real binaries) to a Lambda function.
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
    /// Route keys besides `$connect`, `$disconnect` and `$default`.
    pub routes: Vec<String>,
    /// How often an idle socket is pinged.
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
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            stage: "local".into(),
            routes: ["join", "sendmessage", "leave"].map(String::from).to_vec(),
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            max_connection_duration: Duration::from_secs(2 * 3600),
            max_message_size: SERVER_FRAME_MAX_BYTES,
            max_read_size: 1024 * 1024,
        }
    }
}

pub struct Gateway<I> {
    integration: I,
    sockets: LocalPusher,
    config: GatewayConfig,
    /// The socket tasks, so shutdown can wait for their close frames.
    tasks: TaskTracker,
    shutting_down: AtomicBool,
}

type Sink = futures::stream::SplitSink<WebSocket, Message>;

/// Why a socket's session ended, as the `$disconnect` event reports it.
struct Ending {
    status_code: u16,
    reason: String,
}

impl<I: Integration> Gateway<I> {
    pub fn new(integration: I, sockets: LocalPusher, config: GatewayConfig) -> Self {
        Self {
            integration,
            sockets,
            config,
            tasks: TaskTracker::new(),
            shutting_down: AtomicBool::new(false),
        }
    }

    /// Closes every socket with 1001 (going away) and waits, up to `grace`,
    /// for the close frames to go out. No `$disconnect` runs: a restart
    /// clears the connection records anyway, and announcing every departure
    /// to rooms that are closing too would only cost time.
    pub async fn shut_down(&self, grace: Duration) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.sockets.close_all(close_code::GOING_AWAY);
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

    pub fn sockets(&self) -> &LocalPusher {
        &self.sockets
    }

    /// `GET /ws`: runs `$connect` before accepting the upgrade, as API Gateway
    /// does, so a refused connect is an HTTP error, never an open socket.
    pub async fn upgrade(
        State(gateway): State<Arc<Self>>,
        ConnectInfo(peer): ConnectInfo<SocketAddr>,
        Query(query): Query<Vec<(String, String)>>,
        headers: HeaderMap,
        upgrade: WebSocketUpgrade,
    ) -> Response {
        let connection_id = new_connection_id();
        let user_agent = headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let info = Arc::new(ConnectionInfo::new(
            now_ms(),
            peer.ip().to_string(),
            user_agent,
        ));
        // Registered before `$connect` runs: once the handler records the
        // connection, others may push to it, and those frames must wait in its
        // queue rather than find it gone.
        let outbound = gateway.sockets.register(&connection_id, Arc::clone(&info));
        let event = gateway.connect_event(&connection_id, &info, &headers, query);
        let response = gateway.integration.invoke(event).await;
        if !(200..300).contains(&response.status_code) {
            gateway.sockets.close(&connection_id, close_code::NORMAL);
            let status = u16::try_from(response.status_code)
                .ok()
                .and_then(|code| StatusCode::from_u16(code).ok())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (status, body_text(response.body)).into_response();
        }

        let on_failure = {
            let gateway = Arc::clone(&gateway);
            let connection_id = connection_id.clone();
            let info = Arc::clone(&info);
            move |error: axum::Error| {
                tracing::info!(connection_id, %error, "upgrade failed after $connect");
                tokio::spawn(async move {
                    gateway.sockets.close(&connection_id, close_code::NORMAL);
                    let ending = Ending {
                        status_code: 1006,
                        reason: "upgrade failed".into(),
                    };
                    gateway.disconnect(&connection_id, &info, ending).await;
                });
            }
        };
        upgrade
            // Small buffers keep an idle socket cheap; they grow for the rare
            // large frame.
            .read_buffer_size(4 * 1024)
            .write_buffer_size(0)
            .max_message_size(gateway.config.max_read_size)
            .max_frame_size(gateway.config.max_read_size)
            .on_failed_upgrade(on_failure)
            .on_upgrade(move |socket| {
                let tasks = gateway.tasks.clone();
                tasks.track_future(async move {
                    gateway.run(socket, connection_id, outbound, info).await;
                })
            })
    }

    /// One socket's life: frames in become events, queued frames go out, a
    /// silent peer is pinged and, if it stays silent, disconnected.
    async fn run(
        &self,
        socket: WebSocket,
        connection_id: String,
        mut outbound: mpsc::Receiver<Frame>,
        info: Arc<ConnectionInfo>,
    ) {
        let (mut sink, mut stream) = socket.split();
        let started = Instant::now();
        let mut ping = tokio::time::interval_at(
            started + self.config.ping_interval,
            self.config.ping_interval,
        );
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let expiry = tokio::time::sleep_until(started + self.config.max_connection_duration);
        tokio::pin!(expiry);

        let ending = loop {
            tokio::select! {
                queued = outbound.recv() => match queued {
                    Some(frame) => {
                        if !self.send(&mut sink, Message::Text(text(frame))).await {
                            break Ending { status_code: 1006, reason: "write failed".into() };
                        }
                    }
                    None => {
                        // Taken out of the registry: close as asked.
                        let code = info.close_code();
                        let _ = self.send(&mut sink, close(code, "closed by the server")).await;
                        break Ending { status_code: code, reason: "closed by the server".into() };
                    }
                },
                incoming = stream.next() => {
                    info.touch(now_ms());
                    match incoming {
                        Some(Ok(Message::Text(ref text))) if text.len() > self.config.max_message_size => {
                            self.refuse_too_large(&connection_id);
                        }
                        Some(Ok(Message::Binary(ref bytes))) if bytes.len() > self.config.max_message_size => {
                            self.refuse_too_large(&connection_id);
                        }
                        Some(Ok(Message::Text(body))) => {
                            let event = self.message_event(&connection_id, &info, body.as_str().to_owned(), false);
                            self.integration.invoke(event).await;
                        }
                        Some(Ok(Message::Binary(body))) => {
                            let encoded = base64::engine::general_purpose::STANDARD.encode(&body);
                            let event = self.message_event(&connection_id, &info, encoded, true);
                            self.integration.invoke(event).await;
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                        Some(Ok(Message::Close(frame))) => {
                            let (code, reason) = frame
                                .map(|f| (f.code, f.reason.as_str().to_owned()))
                                .unwrap_or((1005, String::new()));
                            break Ending { status_code: code, reason };
                        }
                        None => break Ending { status_code: 1006, reason: "connection lost".into() },
                        Some(Err(error)) => {
                            break self.refuse_unreadable(&mut sink, &connection_id, &error).await;
                        }
                    }
                }
                _ = ping.tick() => {
                    let silent_ms = now_ms().saturating_sub(info.last_active_ms());
                    if silent_ms > self.config.idle_timeout.as_millis() as u64 {
                        tracing::info!(connection_id, silent_ms, "peer stopped answering; disconnecting");
                        break Ending { status_code: 1006, reason: "idle timeout".into() };
                    }
                    if !self.send(&mut sink, Message::Ping(Default::default())).await {
                        break Ending { status_code: 1006, reason: "write failed".into() };
                    }
                }
                _ = &mut expiry => {
                    let _ = self.send(&mut sink, close(close_code::GOING_AWAY, "maximum connection duration reached")).await;
                    break Ending { status_code: close_code::GOING_AWAY, reason: "maximum connection duration".into() };
                }
            }
        };
        self.sockets.close(&connection_id, close_code::NORMAL);
        self.disconnect(&connection_id, &info, ending).await;
    }

    /// A frame the WebSocket layer itself rejects ends the stream: the client
    /// is told why in an error frame, then the socket is closed with the code
    /// RFC 6455 prescribes.
    async fn refuse_unreadable(
        &self,
        sink: &mut Sink,
        connection_id: &str,
        error: &axum::Error,
    ) -> Ending {
        let detail = error.to_string();
        let cause = std::error::Error::source(error)
            .and_then(|source| source.downcast_ref::<tungstenite::Error>());
        let (code, close_with, message) = match cause {
            Some(tungstenite::Error::Utf8(_)) => (
                ErrorCode::BadRequest,
                close_code::INVALID_PAYLOAD,
                "text frame is not valid UTF-8".to_owned(),
            ),
            Some(tungstenite::Error::Capacity(_)) => (
                ErrorCode::TooLarge,
                close_code::TOO_BIG,
                format!(
                    "messages are limited to {} bytes",
                    self.config.max_read_size
                ),
            ),
            _ => {
                tracing::info!(connection_id, %detail, "socket failed");
                return Ending {
                    status_code: 1006,
                    reason: detail,
                };
            }
        };
        tracing::info!(connection_id, %detail, "unreadable frame; closing");
        let frame = Frame::from(&ServerFrame::error(code, message.clone()));
        self.send(sink, Message::Text(text(frame))).await;
        self.send(sink, close(close_with, &message)).await;
        Ending {
            status_code: close_with,
            reason: message,
        }
    }

    /// Messages API Gateway would not pass on are answered here, and the
    /// socket stays open.
    fn refuse_too_large(&self, connection_id: &str) {
        let frame = ServerFrame::error(
            ErrorCode::TooLarge,
            format!(
                "messages are limited to {} bytes",
                self.config.max_message_size
            ),
        );
        let _ = self.sockets.try_push(connection_id, Frame::from(&frame));
    }

    /// Writes one message; false if the socket failed or the write could not
    /// finish within the idle timeout (a peer that stopped reading is treated
    /// like one that stopped answering pings).
    async fn send(&self, sink: &mut Sink, message: Message) -> bool {
        matches!(
            tokio::time::timeout(self.config.idle_timeout, sink.send(message)).await,
            Ok(Ok(()))
        )
    }

    async fn disconnect(&self, connection_id: &str, info: &ConnectionInfo, ending: Ending) {
        if self.shutting_down.load(Ordering::SeqCst) {
            return;
        }
        let mut event = self.event(connection_id, info, "$disconnect", "DISCONNECT");
        event.request_context.disconnect_status_code = Some(i64::from(ending.status_code));
        event.request_context.disconnect_reason = Some(ending.reason);
        self.integration.invoke(event).await;
    }

    fn connect_event(
        &self,
        connection_id: &str,
        info: &ConnectionInfo,
        headers: &HeaderMap,
        query: Vec<(String, String)>,
    ) -> ApiGatewayWebsocketProxyRequest {
        let mut event = self.event(connection_id, info, "$connect", "CONNECT");
        if let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) {
            event.request_context.domain_name = Some(host.to_owned());
        }
        event.headers = headers.clone();
        let mut parameters: HashMap<String, Vec<String>> = HashMap::new();
        for (key, value) in query {
            parameters.entry(key).or_default().push(value);
        }
        let parameters = QueryMap::from(parameters);
        event.query_string_parameters = parameters.clone();
        event.multi_value_query_string_parameters = parameters;
        event
    }

    fn message_event(
        &self,
        connection_id: &str,
        info: &ConnectionInfo,
        body: String,
        is_base64_encoded: bool,
    ) -> ApiGatewayWebsocketProxyRequest {
        let route = if is_base64_encoded {
            "$default"
        } else {
            self.select_route(&body)
        };
        let mut event = self.event(connection_id, info, route, "MESSAGE");
        event.request_context.message_id = Some(random_id(16));
        event.body = Some(body);
        event.is_base64_encoded = is_base64_encoded;
        event
    }

    /// `$request.body.action`: the route named by the frame's `action`, or
    /// `$default` when there is no such route (or no JSON object at all).
    fn select_route(&self, body: &str) -> &str {
        #[derive(serde::Deserialize)]
        struct Probe<'a> {
            #[serde(borrow)]
            action: Option<std::borrow::Cow<'a, str>>,
        }
        serde_json::from_str::<Probe>(body)
            .ok()
            .and_then(|probe| probe.action)
            .and_then(|action| self.config.routes.iter().find(|route| **route == action))
            .map_or("$default", String::as_str)
    }

    fn event(
        &self,
        connection_id: &str,
        info: &ConnectionInfo,
        route_key: &str,
        event_type: &str,
    ) -> ApiGatewayWebsocketProxyRequest {
        let mut event = ApiGatewayWebsocketProxyRequest::default();
        let context = &mut event.request_context;
        context.route_key = Some(route_key.to_owned());
        context.event_type = Some(event_type.to_owned());
        context.connection_id = Some(connection_id.to_owned());
        context.stage = Some(self.config.stage.clone());
        context.apiid = Some("local".to_owned());
        context.domain_name = Some("localhost".to_owned());
        context.request_id = Some(random_id(16));
        context.connected_at = info.connected_at_ms as i64;
        context.request_time_epoch = now_ms() as i64;
        context.message_direction = Some("IN".to_owned());
        context.identity.source_ip = Some(info.source_ip.clone());
        context.identity.user_agent = Some(info.user_agent.clone());
        event
    }
}

fn text(frame: Frame) -> Utf8Bytes {
    Utf8Bytes::try_from(frame.as_bytes().clone()).expect("frames are UTF-8")
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    }))
}

fn body_text(body: Option<Body>) -> String {
    match body {
        Some(Body::Text(text)) => text,
        Some(Body::Binary(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        _ => String::new(),
    }
}

/// A connection id shaped like API Gateway's: 16 URL-safe characters.
fn new_connection_id() -> String {
    random_id(16)
}

fn random_id(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = vec![0u8; len];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}
