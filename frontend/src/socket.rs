//! The one WebSocket: opened at start, reopened with backoff whenever it
//! drops, and on every open it rejoins the room the user is in.

use std::time::Duration;

use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use futures::{FutureExt, SinkExt, StreamExt, select};
use gloo_net::websocket::Message;
use gloo_net::websocket::futures::WebSocket;
use leptos::prelude::*;
use leptos::task::spawn_local;
use shared::{ClientFrame, ServerFrame};
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use crate::state::{ChatState, Followup, Status};

const FIRST_RETRY: Duration = Duration::from_millis(500);
const LONGEST_RETRY: Duration = Duration::from_secs(15);

/// Sends frames to the server. Frames sent while offline are dropped: the
/// UI only offers actions that need the server while it is online, and every
/// reconnect rejoins the room anyway.
#[derive(Clone)]
pub struct Outbox(UnboundedSender<ClientFrame>);

impl Outbox {
    pub fn send(&self, frame: ClientFrame) {
        let _ = self.0.unbounded_send(frame);
    }
}

/// Starts the connection loop for the life of the page.
pub fn connect(state: ChatState) -> Outbox {
    let (outbox, queue) = unbounded();
    let outbox = Outbox(outbox);
    spawn_local(run(state, queue, outbox.clone()));
    outbox
}

/// A join the server failed is sent again after this long.
const JOIN_RETRY: Duration = Duration::from_secs(3);

async fn run(state: ChatState, mut queue: UnboundedReceiver<ClientFrame>, outbox: Outbox) {
    let settings = settings().await;
    let mut failures = 0u32;
    loop {
        state.status.set(Status::Connecting);
        if let Ok(socket) = WebSocket::open(&settings.websocket_url)
            && session(&state, socket, &mut queue, settings.heartbeat, &outbox).await
        {
            failures = 0;
        }
        failures += 1;
        let delay = retry_delay(failures);
        let mut left = delay.as_secs_f64().ceil() as u32;
        // A countdown the status bar can show.
        while left > 0 {
            state.status.set(Status::Offline(left));
            let step = Duration::from_secs(1).min(delay);
            gloo_timers::future::sleep(step).await;
            left -= 1;
        }
    }
}

/// One open socket, until it drops. True if it ever opened.
///
/// After `heartbeat` without sending anything it sends a `ping`: API Gateway
/// drops a connection after 10 minutes without a client frame, however
/// busy the room.
async fn session(
    state: &ChatState,
    socket: WebSocket,
    queue: &mut UnboundedReceiver<ClientFrame>,
    heartbeat: Duration,
    outbox: &Outbox,
) -> bool {
    let (mut write, read) = socket.split();
    let mut read = read.fuse();
    // The sink waits for the socket to open; the ping proves it did.
    if write.send(text(&ClientFrame::Ping)).await.is_err() {
        return false;
    }
    state.status.set(Status::Online);
    // What was queued while offline is stale by now, and nothing sent on
    // the old socket will be answered on this one: the oldest unanswered
    // text goes back to the composer, to be sent again.
    while queue.try_recv().is_ok() {}
    if let Some(unsent) = state
        .unanswered
        .try_update_value(|unanswered| std::mem::take(unanswered).pop_front())
        .flatten()
    {
        state.restore_draft(unsent);
    }
    if let Some((room, name)) = state.target.get_untracked() {
        state.joining(&room);
        if write
            .send(text(&ClientFrame::Join { room, name }))
            .await
            .is_err()
        {
            return true;
        }
    }
    let mut last_sent = js_sys::Date::now();
    loop {
        let quiet_for = Duration::from_millis((js_sys::Date::now() - last_sent).max(0.0) as u64);
        let mut beat = gloo_timers::future::sleep(heartbeat.saturating_sub(quiet_for)).fuse();
        select! {
            () = beat => {
                if write.send(text(&ClientFrame::Ping)).await.is_err() {
                    return true;
                }
                last_sent = js_sys::Date::now();
            },
            frame = queue.next() => match frame {
                Some(frame) => {
                    if write.send(text(&frame)).await.is_err() {
                        return true;
                    }
                    last_sent = js_sys::Date::now();
                }
                None => return true,
            },
            incoming = read.next() => match incoming {
                Some(Ok(Message::Text(body))) => match ServerFrame::parse(&body) {
                    Ok(frame) => {
                        if state.apply(frame) == Followup::RetryJoin {
                            retry_join(*state, outbox.clone());
                        }
                    }
                    Err(error) => leptos::logging::warn!("unreadable frame from the server: {error}"),
                },
                Some(Ok(Message::Bytes(_))) => {}
                Some(Err(_)) | None => return true,
            },
        }
    }
}

/// Sends the target room's `join` again in a moment, if there still is one.
fn retry_join(state: ChatState, outbox: Outbox) {
    spawn_local(async move {
        gloo_timers::future::sleep(JOIN_RETRY).await;
        if let Some((room, name)) = state.target.get_untracked() {
            state.joining(&room);
            outbox.send(ClientFrame::Join { room, name });
        }
    });
}

fn text(frame: &ClientFrame) -> Message {
    Message::Text(frame.to_json())
}

/// Exponential backoff with jitter, so a restarted server is not hit by every
/// tab at the same instant.
fn retry_delay(failures: u32) -> Duration {
    let exponential = FIRST_RETRY.saturating_mul(1 << failures.min(6).saturating_sub(1));
    let capped = exponential.min(LONGEST_RETRY);
    capped.mul_f64(0.5 + js_sys::Math::random() / 2.0)
}

/// What `config.json` beside the page may set; every field is optional.
struct Settings {
    /// The S3 deployment names its API Gateway URL; otherwise it is this
    /// page's own origin at `/ws`.
    websocket_url: String,
    /// `heartbeatSeconds`, 300 by default: half API Gateway's idle timeout.
    heartbeat: Duration,
}

const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(300);

async fn settings() -> Settings {
    let configured = async {
        let window = web_sys::window()?;
        let response: web_sys::Response = JsFuture::from(window.fetch_with_str("config.json"))
            .await
            .ok()?
            .dyn_into()
            .ok()?;
        if !response.ok() {
            return None;
        }
        let text = JsFuture::from(response.text().ok()?)
            .await
            .ok()?
            .as_string()?;
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(config) => Some(config),
            Err(error) => {
                leptos::logging::warn!("config.json is not JSON, using defaults: {error}");
                None
            }
        }
    };
    let config = configured.await.unwrap_or_default();
    // Field by field: one mistyped field costs only itself.
    let field = |name: &str| {
        let value = config.get(name);
        if value.is_some_and(|v| !v.is_null()) {
            leptos::logging::warn!(
                "config.json: {name} is not usable ({value:?}); using the default"
            );
        }
        value
    };
    let websocket_url = config
        .get("websocketUrl")
        .and_then(|v| v.as_str())
        .filter(|url| !url.is_empty())
        .map(str::to_owned);
    if websocket_url.is_none() {
        field("websocketUrl");
    }
    let heartbeat = config
        .get("heartbeatSeconds")
        .and_then(|v| v.as_f64())
        .filter(|seconds| seconds.is_finite() && *seconds > 0.0);
    if heartbeat.is_none() {
        field("heartbeatSeconds");
    }
    Settings {
        websocket_url: websocket_url.unwrap_or_else(crate::browser::default_websocket_url),
        // At least a second: a tiny value would be a flood of pings.
        heartbeat: heartbeat.map_or(DEFAULT_HEARTBEAT, |seconds| {
            Duration::from_secs_f64(seconds.clamp(1.0, 86_400.0))
        }),
    }
}
