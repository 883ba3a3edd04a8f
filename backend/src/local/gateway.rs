//! The WebSocket front door of chat-local, playing API Gateway: it gives each
//! socket a connection id, turns what happens on the socket into the same
//! `$connect`, `$disconnect` and message events API Gateway would send,
//! selects routes by `$request.body.action`, and hands every event to an
//! [`Integration`] (the handlers, in process).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::{Future, poll_fn};
use std::io;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use aws_lambda_events::encodings::Body;
use aws_lambda_events::query_map::QueryMap;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use shared::limits::CLIENT_MESSAGE_MAX_BYTES;
use shared::{ErrorCode, ServerFrame};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::task::TaskTracker;

use super::websocket::{self, Incoming, Violation};
use crate::chat::{Chat, now_ms};
use crate::ids::random_id;
use crate::pusher::Frame;
use crate::pusher::local::{
    Closing, ConnectionInfo, LocalPusher, LocalSocket, Outgoing, close_code,
};
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
        }
    }
}

/// Counts open sockets, in all and per client address, against the caps.
#[derive(Default)]
struct OpenSockets {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, u32>>,
}

impl OpenSockets {
    /// Counts one more socket from `ip`, or says why it may not open.
    fn open(&self, ip: IpAddr, config: &GatewayConfig) -> Result<(), Refusal> {
        let over_total = self
            .total
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |open| {
                (open < config.max_connections).then_some(open + 1)
            })
            .is_err();
        if over_total {
            tracing::warn!(
                max = config.max_connections,
                "connection refused: the server is full"
            );
            return Err(Refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server has as many connections as it takes; try again later",
            ));
        }
        if let Some(max) = config.max_connections_per_ip {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let open = per_ip.entry(client_of(ip)).or_default();
            if *open >= max {
                drop(per_ip);
                self.total.fetch_sub(1, Ordering::SeqCst);
                tracing::info!(%ip, max, "connection refused: too many from one address");
                return Err(Refusal(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many connections from your address; close some and try again",
                ));
            }
            *open += 1;
        }
        Ok(())
    }

    fn close(&self, ip: IpAddr, config: &GatewayConfig) {
        self.total.fetch_sub(1, Ordering::SeqCst);
        if config.max_connections_per_ip.is_some() {
            let client = client_of(ip);
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(open) = per_ip.get_mut(&client) {
                *open -= 1;
                if *open == 0 {
                    per_ip.remove(&client);
                }
            }
        }
    }
}

/// One open socket's place in [`OpenSockets`], given back when dropped.
struct Slot<'a> {
    open: &'a OpenSockets,
    ip: IpAddr,
    config: &'a GatewayConfig,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.open.close(self.ip, self.config);
    }
}

/// Whom a per-address cap counts: an IPv4 address, or an IPv6 /64 (one
/// host usually has a whole /64 to pick addresses from).
fn client_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
    }
}

/// A handshake refused for want of room, to be tried again later.
struct Refusal(StatusCode, &'static str);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, [(header::RETRY_AFTER, "5")], self.1).into_response()
    }
}

pub struct Gateway<I> {
    integration: I,
    sockets: LocalPusher,
    config: GatewayConfig,
    /// The socket tasks, so shutdown can wait for their close frames.
    tasks: TaskTracker,
    shutting_down: AtomicBool,
    open: OpenSockets,
}

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
            open: OpenSockets::default(),
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

    pub fn sockets(&self) -> &LocalPusher {
        &self.sockets
    }

    /// Pings quiet sockets, and closes those silent past the idle timeout or
    /// open past the maximum duration: one task for every socket, rather
    /// than timers in each.
    pub async fn keep_alive(self: Arc<Self>) {
        let pings = !self.config.ping_interval.is_zero();
        let every = if pings {
            self.config.ping_interval
        } else {
            // Only closing to do: often enough that the idle timeout is kept
            // to within a quarter of itself.
            (self.config.idle_timeout / 4)
                .clamp(Duration::from_millis(100), Duration::from_secs(30))
        };
        let mut tick = tokio::time::interval_at(Instant::now() + every, every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let ping_after = every.as_millis() as u64;
        let idle_after = self.config.idle_timeout.as_millis() as u64;
        let expire_after = self.config.max_connection_duration.as_millis() as u64;
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
                } else if silent > idle_after {
                    Some(Closing {
                        code: close_code::ABNORMAL,
                        reason: "idle timeout",
                    })
                } else {
                    if pings && silent >= ping_after {
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
        let accept = match handshake_key(request.headers()) {
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
        // Behind a dual-stack listener IPv4 clients arrive as ::ffff:a.b.c.d.
        let ip = peer.ip().to_canonical();
        if let Err(refusal) = gateway.open.open(ip, &gateway.config) {
            return refusal.into_response();
        }
        let headers = request.headers();
        let connection_id = new_connection_id();
        let user_agent = headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
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
                return (status, body_text(refused.body)).into_response();
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

    /// A socket from `$connect` to `$disconnect`.
    async fn session(
        &self,
        event: Box<ApiGatewayWebsocketProxyRequest>,
        connection_id: String,
        socket: Arc<LocalSocket>,
        answer: oneshot::Sender<Result<(), ApiGatewayProxyResponse>>,
        on_upgrade: OnUpgrade,
    ) {
        // Consumed by `call_boxed`, which frees the box (and the request
        // headers in it) at once: a box this task merely moved out of would
        // stay allocated for the socket's whole life. In a block of its own:
        // the response is not kept in the task for the socket's whole life.
        {
            let response = self.call_boxed(event).await;
            if !(200..300).contains(&response.status_code) {
                self.sockets
                    .close(&connection_id, close_code::NORMAL, "connect refused");
                let _ = answer.send(Err(response));
                return;
            }
        }
        socket.opened();
        let stream = if answer.send(Ok(())).is_err() {
            tracing::info!(connection_id, "the client left during $connect");
            None
        } else {
            match on_upgrade
                .await
                .map(|upgraded| upgraded.downcast::<TokioIo<TcpStream>>())
            {
                Ok(Ok(parts)) => Some((parts.io.into_inner(), parts.read_buf)),
                Ok(Err(_)) => {
                    tracing::error!(connection_id, "the upgraded connection is not a TCP stream");
                    None
                }
                Err(error) => {
                    tracing::info!(connection_id, %error, "upgrade failed after $connect");
                    None
                }
            }
        };
        let ending = match stream {
            Some((stream, read_ahead)) => {
                self.run(&stream, read_ahead, &connection_id, &socket).await
            }
            None => Ending {
                status_code: close_code::ABNORMAL,
                reason: "upgrade failed".into(),
            },
        };
        self.sockets
            .close(&connection_id, close_code::NORMAL, "closed");
        self.disconnect(&connection_id, &socket.info, ending).await;
    }

    /// One socket's life: frames in become events, queued frames go out in
    /// one write per burst. Between bursts the socket holds no buffer.
    async fn run(
        &self,
        stream: &TcpStream,
        read_ahead: Bytes,
        connection_id: &str,
        socket: &LocalSocket,
    ) -> Ending {
        let mut decoder = websocket::Decoder::new(websocket::Limits {
            max_message: self.config.max_message_size,
            max_read: self.config.max_read_size,
        });
        let mut incoming = Vec::new();
        // Bytes the socket would not take yet; while there are any, the
        // outbox is left alone, so a reader that stops reading fills it and
        // is disconnected instead of growing this without bound.
        let mut unsent = Vec::new();
        let mut violation = decoder.decode(&read_ahead, &mut incoming).err();
        drop(read_ahead);
        loop {
            // Taken, not drained: an idle socket keeps no frame list.
            for frame in std::mem::take(&mut incoming) {
                match frame {
                    Incoming::Text(body) => {
                        let event = self.message_event(connection_id, &socket.info, body, false);
                        self.call(event).await;
                    }
                    Incoming::Binary(body) => {
                        let encoded = base64::engine::general_purpose::STANDARD.encode(&body);
                        let event = self.message_event(connection_id, &socket.info, encoded, true);
                        self.call(event).await;
                    }
                    Incoming::TooLarge => self.refuse_too_large(connection_id),
                    Incoming::Ping(payload) => {
                        websocket::encode(websocket::opcode::PONG, &payload, &mut unsent)
                    }
                    Incoming::Pong => {}
                    Incoming::Close(frame) => {
                        // Echo the code, as RFC 6455 asks, then hang up.
                        let (code, reason) = frame.unwrap_or((1005, String::new()));
                        let echo = if code == 1005 {
                            close_code::NORMAL
                        } else {
                            code
                        };
                        websocket::encode_close(echo, "", &mut unsent);
                        Box::pin(self.write_before_closing(stream, &mut unsent)).await;
                        return Ending {
                            status_code: code,
                            reason,
                        };
                    }
                }
            }
            if let Some(violation) = violation.take() {
                return Box::pin(self.fail(stream, connection_id, violation, &mut unsent)).await;
            }
            if let Some(closing) = socket.closing() {
                encode_queued(socket.take_queued(), &mut unsent);
                if closing.code != close_code::ABNORMAL {
                    websocket::encode_close(closing.code, closing.reason, &mut unsent);
                    Box::pin(self.write_before_closing(stream, &mut unsent)).await;
                }
                return Ending {
                    status_code: closing.code,
                    reason: closing.reason.into(),
                };
            }
            if !unsent.is_empty()
                && let Err(error) = write_more(stream, &mut unsent)
            {
                return lost(error);
            }
            // Checked again after every write that emptied `unsent`: frames
            // queued meanwhile woke nobody (the queue was not empty).
            if unsent.is_empty() {
                let queued = socket.take_queued();
                if !queued.is_empty()
                    && let Err(error) = write_now(stream, queued, &mut unsent)
                {
                    return lost(error);
                }
            }

            // Polled by hand rather than with `select!`, whose futures would
            // live in every idle socket's task. Every source is polled on
            // each pass, so a busy outbox cannot starve reading.
            let readable = poll_fn(|cx| {
                let queued = socket.poll_changed(cx).is_ready();
                // A peer that sends (pings, say) but does not read stops
                // being read until it catches up.
                let readable = unsent.len() < MAX_UNSENT
                    && match stream.poll_read_ready(cx) {
                        Poll::Ready(Ok(())) => true,
                        Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                        Poll::Pending => false,
                    };
                let writable = !unsent.is_empty()
                    && match stream.poll_write_ready(cx) {
                        Poll::Ready(Ok(())) => true,
                        Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                        Poll::Pending => false,
                    };
                if queued || readable || writable {
                    Poll::Ready(Ok(readable))
                } else {
                    Poll::Pending
                }
            })
            .await;
            // Woken for one source, the task is not waiting on pushes while
            // it handles the others (a handler's own fan-out included).
            socket.stop_waiting();
            match readable {
                Err(error) => return lost(error),
                Ok(false) => {}
                Ok(true) => match read_some(stream, &mut decoder, &mut incoming) {
                    Ok(Some(result)) => {
                        socket.info.touch(now_ms());
                        violation = result.err();
                    }
                    Ok(None) => {}
                    Err(error) => return lost(error),
                },
            }
        }
    }

    /// Input the WebSocket layer itself refuses fails the connection: the
    /// client is told why in an error frame where the protocol has a code for
    /// it, then the socket is closed with the code RFC 6455 prescribes.
    async fn fail(
        &self,
        stream: &TcpStream,
        connection_id: &str,
        violation: Violation,
        unsent: &mut Vec<u8>,
    ) -> Ending {
        tracing::info!(connection_id, %violation, "unreadable frame; closing");
        let told = match violation {
            Violation::InvalidUtf8 => Some((
                ErrorCode::BadRequest,
                "text frame is not valid UTF-8".to_owned(),
            )),
            Violation::TooBig => Some((
                ErrorCode::TooLarge,
                format!(
                    "messages are limited to {} bytes",
                    self.config.max_read_size
                ),
            )),
            Violation::Protocol(_) => None,
        };
        let reason = match told {
            Some((code, message)) => {
                let frame = Frame::from(&ServerFrame::error(code, message.clone()));
                websocket::encode(websocket::opcode::TEXT, frame.as_bytes(), unsent);
                message
            }
            None => violation.to_string(),
        };
        websocket::encode_close(violation.close_code(), &reason, unsent);
        self.write_before_closing(stream, unsent).await;
        Ending {
            status_code: violation.close_code(),
            reason,
        }
    }

    /// Last words, then a lingering close: the close frame is written if the
    /// peer takes it within a moment, our side is shut, and what the peer
    /// still sends is read and dropped until it hangs up. Closing the socket
    /// with unread input would reset the connection, and the peer could lose
    /// the close frame and its code.
    async fn write_before_closing(&self, stream: &TcpStream, unsent: &mut Vec<u8>) {
        let deadline = Instant::now() + CLOSE_GRACE;
        while !unsent.is_empty() {
            if write_more(stream, unsent).is_err() {
                return;
            }
            if !unsent.is_empty()
                && tokio::time::timeout_at(deadline, stream.writable())
                    .await
                    .is_err()
            {
                return;
            }
        }
        shut_down_writes(stream);
        while let Ok(Ok(())) = tokio::time::timeout_at(deadline, stream.readable()).await {
            if !discard_input(stream) {
                return;
            }
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

    /// The integration's answer to `event`, its future on the heap.
    ///
    /// Every invocation goes through here, from plain functions: a handler's
    /// future is large, and so is the event; a socket's task is sized for its
    /// largest state for its whole life, and an async fn that held an event
    /// across an await would keep room for it even after moving it out.
    fn call(
        &self,
        event: ApiGatewayWebsocketProxyRequest,
    ) -> Pin<Box<impl Future<Output = ApiGatewayProxyResponse> + Send + '_>> {
        Box::pin(self.integration.invoke(event))
    }

    /// [`Self::call`] for a boxed event, freeing the box at once.
    fn call_boxed(
        &self,
        event: Box<ApiGatewayWebsocketProxyRequest>,
    ) -> Pin<Box<impl Future<Output = ApiGatewayProxyResponse> + Send + '_>> {
        self.call(*event)
    }

    /// `$disconnect`, unless the whole gateway is shutting down.
    fn disconnect(
        &self,
        connection_id: &str,
        info: &ConnectionInfo,
        ending: Ending,
    ) -> impl Future<Output = ()> + Send + '_ {
        let call = (!self.shutting_down.load(Ordering::SeqCst)).then(|| {
            let event = self.disconnect_event(connection_id, info, ending);
            self.call(event)
        });
        async move {
            if let Some(call) = call {
                call.await;
            }
        }
    }

    fn connect_event(
        &self,
        connection_id: &str,
        info: &ConnectionInfo,
        headers: &HeaderMap,
        query: Vec<(String, String)>,
    ) -> ApiGatewayWebsocketProxyRequest {
        let mut event = self.event(connection_id, info, "$connect", "CONNECT");
        event.headers = headers.clone();
        event.multi_value_headers = headers.clone();
        let mut parameters: HashMap<String, Vec<String>> = HashMap::new();
        for (key, value) in query {
            parameters.entry(key).or_default().push(value);
        }
        let parameters = QueryMap::from(parameters);
        event.query_string_parameters = parameters.clone();
        event.multi_value_query_string_parameters = parameters;
        event
    }

    /// API Gateway's `$disconnect` carries a few headers of its own, most of
    /// them empty.
    fn disconnect_event(
        &self,
        connection_id: &str,
        info: &ConnectionInfo,
        ending: Ending,
    ) -> ApiGatewayWebsocketProxyRequest {
        let mut event = self.event(connection_id, info, "$disconnect", "DISCONNECT");
        event.request_context.disconnect_status_code = Some(i64::from(ending.status_code));
        event.request_context.disconnect_reason = Some(ending.reason);
        let mut headers = HeaderMap::new();
        if let Ok(host) = self.config.domain_name.parse() {
            headers.insert(header::HOST, host);
        }
        for name in ["x-api-key", "x-forwarded-for", "x-restapi"] {
            headers.insert(name, axum::http::HeaderValue::from_static(""));
        }
        event.multi_value_headers = headers.clone();
        event.headers = headers;
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
        context.domain_name = Some(self.config.domain_name.clone());
        let request_id = random_id(16);
        context.extended_request_id = Some(request_id.clone());
        context.request_id = Some(request_id);
        context.connected_at = info.connected_at_ms as i64;
        let now = now_ms();
        context.request_time_epoch = now as i64;
        context.request_time = Some(request_time(now));
        context.message_direction = Some("IN".to_owned());
        context.identity.source_ip = Some(info.source_ip.clone());
        context.identity.user_agent = Some(info.user_agent.clone());
        event
    }
}

/// API Gateway's `requestTime`: `25/Nov/2026:12:00:00 +0000`.
fn request_time(ms: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let seconds = ms / 1000;
    let (days, of_day) = ((seconds / 86_400) as i64, seconds % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize],
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

/// How long a closing socket may take to accept its last frames and close.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Bytes waiting for a socket beyond which it is no longer read from.
const MAX_UNSENT: usize = 256 * 1024;

/// Reads what has arrived (once: the loop comes back while there is more):
/// `None` when it was a false alarm, else whether it decoded cleanly.
fn read_some(
    stream: &TcpStream,
    decoder: &mut websocket::Decoder,
    incoming: &mut Vec<Incoming>,
) -> io::Result<Option<Result<(), Violation>>> {
    // On this function's stack, not in the socket's task: an idle socket
    // holds no read buffer.
    let mut buffer = [0u8; 16 * 1024];
    match stream.try_read(&mut buffer) {
        Ok(0) => Err(io::ErrorKind::UnexpectedEof.into()),
        Ok(read) => Ok(Some(decoder.decode(&buffer[..read], incoming))),
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(error) => Err(error),
    }
}

fn encode_queued(queued: VecDeque<Outgoing>, out: &mut Vec<u8>) {
    for item in queued {
        match item {
            Outgoing::Text(frame) => {
                websocket::encode(websocket::opcode::TEXT, frame.as_bytes(), out)
            }
            Outgoing::Ping => websocket::encode(websocket::opcode::PING, &[], out),
        }
    }
}

thread_local! {
    /// Where a burst of frames is encoded before its one write; only what the
    /// socket does not take moves into the connection's own buffer.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Encodes `queued` and writes it in one system call; what the socket would
/// not take is left in `unsent`.
fn write_now(
    stream: &TcpStream,
    queued: VecDeque<Outgoing>,
    unsent: &mut Vec<u8>,
) -> io::Result<()> {
    SCRATCH.with_borrow_mut(|scratch| {
        scratch.clear();
        encode_queued(queued, scratch);
        let written = match stream.try_write(scratch) {
            Ok(written) => written,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => 0,
            Err(error) => return Err(error),
        };
        unsent.extend_from_slice(&scratch[written..]);
        // A rare huge burst should not pin its memory to this thread.
        if scratch.capacity() > 256 * 1024 {
            *scratch = Vec::new();
        }
        Ok(())
    })
}

/// Writes as much of `unsent` as the socket takes now.
fn write_more(stream: &TcpStream, unsent: &mut Vec<u8>) -> io::Result<()> {
    match stream.try_write(unsent) {
        Ok(written) if written == unsent.len() => *unsent = Vec::new(),
        Ok(written) => {
            unsent.drain(..written);
        }
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
        Err(error) => return Err(error),
    }
    Ok(())
}

/// Reads and drops what has arrived; false once the peer has hung up.
fn discard_input(stream: &TcpStream) -> bool {
    // Not in the socket's task: a buffer there would be held by every idle
    // socket.
    let mut discard = [0u8; 4096];
    match stream.try_read(&mut discard) {
        Ok(0) => false,
        Ok(_) => true,
        Err(error) => error.kind() == io::ErrorKind::WouldBlock,
    }
}

/// Sends FIN: the peer reads the end of the stream after our last frame.
fn shut_down_writes(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for as long as `stream` is borrowed.
    unsafe {
        libc::shutdown(stream.as_raw_fd(), libc::SHUT_WR);
    }
}

fn lost(error: io::Error) -> Ending {
    let reason = if error.kind() == io::ErrorKind::UnexpectedEof {
        "connection lost".to_owned()
    } else {
        error.to_string()
    };
    Ending {
        status_code: close_code::ABNORMAL,
        reason,
    }
}

/// The `Sec-WebSocket-Key` of a valid opening handshake (RFC 6455, 4.2.1),
/// or the answer to one that is not.
#[allow(clippy::result_large_err)] // Refusals are rare; the key is the hot path.
fn handshake_key(headers: &HeaderMap) -> Result<&[u8], Response> {
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
    match headers.get(header::SEC_WEBSOCKET_KEY) {
        Some(key)
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

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;

    impl Integration for Nothing {
        async fn invoke(&self, _: ApiGatewayWebsocketProxyRequest) -> ApiGatewayProxyResponse {
            ApiGatewayProxyResponse::default()
        }
    }

    fn gateway() -> Gateway<Nothing> {
        Gateway::new(Nothing, LocalPusher::default(), GatewayConfig::default())
    }

    /// Every key the recorded event has, with the JSON type of its value,
    /// recursively; values themselves differ (ids, times, addresses).
    fn shape(value: &serde_json::Value, path: &str, out: &mut Vec<String>) {
        use serde_json::Value;
        let kind = match value {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        out.push(format!("{path}: {kind}"));
        match value {
            // Header names vary; their values' shapes do not.
            Value::Object(map) if path.ends_with("eaders") => {
                for value in map.values() {
                    shape(value, &format!("{path}.*"), out);
                }
            }
            Value::Object(map) => {
                for (key, value) in map {
                    shape(value, &format!("{path}.{key}"), out);
                }
            }
            Value::Array(items) => {
                for item in items.iter().take(1) {
                    shape(item, &format!("{path}[]"), out);
                }
            }
            _ => {}
        }
    }

    fn shape_of(value: &serde_json::Value) -> Vec<String> {
        let mut out = Vec::new();
        shape(value, "", &mut out);
        out.sort();
        out.dedup();
        out
    }

    fn recorded(file: &str) -> serde_json::Value {
        let path = format!("{}/testdata/{file}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn request_times_are_written_as_api_gateway_writes_them() {
        assert_eq!(
            request_time(1_795_608_000_012),
            "25/Nov/2026:12:00:00 +0000"
        );
        assert_eq!(request_time(0), "01/Jan/1970:00:00:00 +0000");
        assert_eq!(request_time(951_825_599_000), "29/Feb/2000:11:59:59 +0000");
    }

    #[test]
    fn events_have_the_shape_api_gateway_sends() {
        let gateway = gateway();
        let info = ConnectionInfo::new(1_795_694_400_000, "203.0.113.7".into(), "test".into());
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "evil.example".parse().unwrap());
        headers.insert(header::USER_AGENT, "test".parse().unwrap());
        let query = vec![
            ("room".to_owned(), "chat:1".to_owned()),
            ("name".to_owned(), "Ada".to_owned()),
        ];
        let connect = gateway.connect_event("c1", &info, &headers, query);
        let connect = super::super::lambda::payload(&connect).unwrap();
        assert_eq!(shape_of(&connect), shape_of(&recorded("connect.json")));
        assert_eq!(connect["queryStringParameters"]["room"], "chat:1");
        assert_eq!(
            connect["requestContext"]["domainName"], gateway.config.domain_name,
            "not the client's Host header"
        );

        let message = gateway.message_event(
            "c1",
            &info,
            r#"{"action":"sendmessage","data":"hi"}"#.into(),
            false,
        );
        let message = super::super::lambda::payload(&message).unwrap();
        assert_eq!(shape_of(&message), shape_of(&recorded("sendmessage.json")));

        let ending = Ending {
            status_code: 1001,
            reason: "Going away".into(),
        };
        let disconnect = gateway.disconnect_event("c1", &info, ending);
        let disconnect = super::super::lambda::payload(&disconnect).unwrap();
        assert_eq!(
            shape_of(&disconnect),
            shape_of(&recorded("disconnect.json"))
        );
    }
}
