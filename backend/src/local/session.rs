//! One socket's session, from `$connect` to `$disconnect`: frames read
//! become events for the integration, frames pushed to the socket go out in
//! one write per burst, and every way a socket can end is reported as API
//! Gateway reports it.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use base64::Engine;
use bytes::Bytes;
use hyper::upgrade::OnUpgrade;
use shared::{ErrorCode, ServerFrame};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::gateway::{Gateway, Integration};
use super::http::HttpIo;
use super::websocket::{self, Incoming, Violation};
use crate::clock::now_ms;
use crate::pusher::Frame;
use crate::pusher::local::{ConnectionInfo, LocalSocket, Outgoing, close_code};

/// Why a socket's session ended, as the `$disconnect` event reports it.
pub(super) struct Ending {
    pub(super) status_code: u16,
    pub(super) reason: String,
}

impl<I: Integration> Gateway<I> {
    /// A socket from `$connect` to `$disconnect`.
    pub(super) async fn session(
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
                .map(|upgraded| upgraded.downcast::<HttpIo>())
            {
                // The bare stream: a WebSocket keeps time by its own rules.
                Ok(Ok(parts)) => Some((parts.io.into_inner().into_inner(), parts.read_buf)),
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
        // Counted against the budget for unfinished messages through the
        // decoder itself: no field of its own in every idle socket's task.
        let mut decoder = Budgeted {
            decoder: websocket::Decoder::new(websocket::Limits {
                max_message: self.config.max_message_size,
                max_read: self.config.max_read_size,
            }),
            total: &self.unfinished_bytes,
        };
        let mut incoming = Vec::new();
        // Bytes the socket would not take yet; while there are any, the
        // outbox is left alone, so a reader that stops reading fills it and
        // is disconnected instead of growing this without bound.
        let mut unsent = Vec::new();
        let mut violation = decoder.decoder.decode(&read_ahead, &mut incoming).err();
        socket
            .info
            .set_unfinished(decoder.decoder.unfinished(), now_ms());
        if !decoder.account(0, self.config.max_unfinished_bytes) {
            violation = violation.or(Some(Violation::Overloaded));
        }
        drop(read_ahead);
        loop {
            // Taken, not drained: an idle socket keeps no frame list.
            for frame in std::mem::take(&mut incoming) {
                match frame {
                    Incoming::Text(body) => {
                        let event = self.message_event(connection_id, &socket.info, body, false);
                        self.route(connection_id, event).await;
                    }
                    Incoming::Binary(body) => {
                        let encoded = base64::engine::general_purpose::STANDARD.encode(&body);
                        let event = self.message_event(connection_id, &socket.info, encoded, true);
                        self.route(connection_id, event).await;
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
                    Ok(Some((result, held_before))) => {
                        let now = now_ms();
                        // Whole frames are signs of life; bytes of one
                        // unfinished message are not, however they trickle.
                        if !incoming.is_empty() {
                            socket.info.touch(now);
                        }
                        // A message finished: what is unfinished now began
                        // after it (a control frame finishes nothing).
                        if incoming.iter().any(|frame| {
                            matches!(
                                frame,
                                Incoming::Text(_) | Incoming::Binary(_) | Incoming::TooLarge
                            )
                        }) {
                            socket.info.set_unfinished(false, now);
                        }
                        socket
                            .info
                            .set_unfinished(decoder.decoder.unfinished(), now);
                        violation = result.err();
                        if !decoder.account(held_before, self.config.max_unfinished_bytes) {
                            violation = violation.or(Some(Violation::Overloaded));
                        }
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
            Violation::Protocol(_) | Violation::Overloaded => None,
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

    /// A client frame's event, to its route's integration. If that fails
    /// (in Lambda mode: the function errored, timed out or was throttled),
    /// the client is told as API Gateway tells it.
    async fn route(&self, connection_id: &str, event: ApiGatewayWebsocketProxyRequest) {
        let request_id = event.request_context.request_id.clone().unwrap_or_default();
        let response = self.call(event).await;
        if response
            .headers
            .contains_key(super::gateway::INTEGRATION_FAILED)
        {
            let frame = serde_json::json!({
                "message": "Internal server error",
                "connectionId": connection_id,
                "requestId": request_id,
            });
            let _ = self
                .sockets
                .try_push(connection_id, Frame::from(frame.to_string()));
        }
    }

    /// The integration's answer to `event`, its future on the heap.
    ///
    /// Every invocation goes through here, from plain functions: a handler's
    /// future is large, and so is the event; a socket's task is sized for its
    /// largest state for its whole life, and an async fn that held an event
    /// across an await would keep room for it even after moving it out.
    pub(super) fn call(
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
    pub(super) fn disconnect(
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
}

/// A socket's decoder, whose unfinished input counts against the budget
/// all sockets share; given back when the socket ends.
struct Budgeted<'a> {
    decoder: websocket::Decoder,
    total: &'a std::sync::atomic::AtomicUsize,
}

impl Budgeted<'_> {
    /// Records the change since the decoder held `before` bytes; false if
    /// it grew and all sockets together are now over `budget`.
    fn account(&self, before: usize, budget: usize) -> bool {
        let now = self.decoder.held_bytes();
        if now > before {
            let added = now - before;
            self.total.fetch_add(added, Ordering::Relaxed) + added <= budget
        } else {
            self.total.fetch_sub(before - now, Ordering::Relaxed);
            true
        }
    }
}

impl Drop for Budgeted<'_> {
    fn drop(&mut self) {
        self.total
            .fetch_sub(self.decoder.held_bytes(), Ordering::Relaxed);
    }
}

/// How long a closing socket may take to accept its last frames and close.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Bytes waiting for a socket beyond which it is no longer read from.
const MAX_UNSENT: usize = 256 * 1024;

/// Reads what has arrived (once: the loop comes back while there is more):
/// `None` when it was a false alarm, else whether it decoded cleanly and
/// what the decoder held before.
fn read_some(
    stream: &TcpStream,
    decoder: &mut Budgeted<'_>,
    incoming: &mut Vec<Incoming>,
) -> io::Result<Option<(Result<(), Violation>, usize)>> {
    // On this function's stack, not in the socket's task: an idle socket
    // holds no read buffer.
    let mut buffer = [0u8; 16 * 1024];
    match stream.try_read(&mut buffer) {
        Ok(0) => Err(io::ErrorKind::UnexpectedEof.into()),
        Ok(read) => {
            let before = decoder.decoder.held_bytes();
            let decoded = decoder.decoder.decode(&buffer[..read], incoming);
            Ok(Some((decoded, before)))
        }
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
