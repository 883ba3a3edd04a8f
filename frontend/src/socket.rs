//! The one WebSocket: opened at start, reopened with backoff whenever it
//! drops, and on every open it rejoins the room the user is in.

use std::time::Duration;

use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use futures::{SinkExt, StreamExt, select};
use gloo_net::websocket::Message;
use gloo_net::websocket::futures::WebSocket;
use leptos::prelude::*;
use leptos::task::spawn_local;
use serde::Deserialize;
use shared::{ClientFrame, ServerFrame};
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use crate::state::{ChatState, Status};

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
    spawn_local(run(state, queue));
    Outbox(outbox)
}

async fn run(state: ChatState, mut queue: UnboundedReceiver<ClientFrame>) {
    let url = websocket_url().await;
    let mut failures = 0u32;
    loop {
        state.status.set(Status::Connecting);
        if let Ok(socket) = WebSocket::open(&url)
            && session(&state, socket, &mut queue).await
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
async fn session(
    state: &ChatState,
    socket: WebSocket,
    queue: &mut UnboundedReceiver<ClientFrame>,
) -> bool {
    let (mut write, read) = socket.split();
    let mut read = read.fuse();
    // The sink waits for the socket to open; the ping proves it did.
    if write.send(text(&ClientFrame::Ping)).await.is_err() {
        return false;
    }
    state.status.set(Status::Online);
    // What was queued while offline is stale by now.
    while queue.try_recv().is_ok() {}
    if let Some((room, name)) = state.target.get_untracked()
        && write
            .send(text(&ClientFrame::Join { room, name }))
            .await
            .is_err()
    {
        return true;
    }
    loop {
        select! {
            frame = queue.next() => match frame {
                Some(frame) => {
                    if write.send(text(&frame)).await.is_err() {
                        return true;
                    }
                }
                None => return true,
            },
            incoming = read.next() => match incoming {
                Some(Ok(Message::Text(body))) => match ServerFrame::parse(&body) {
                    Ok(frame) => state.apply(frame),
                    Err(error) => leptos::logging::warn!("unreadable frame from the server: {error}"),
                },
                Some(Ok(Message::Bytes(_))) => {}
                Some(Err(_)) | None => return true,
            },
        }
    }
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

/// `config.json` beside the page may name the WebSocket URL (the S3
/// deployment does); otherwise it is this page's own origin at `/ws`.
async fn websocket_url() -> String {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Config {
        websocket_url: String,
    }
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
        serde_json::from_str::<Config>(&text).ok()
    };
    match configured.await {
        Some(config) if !config.websocket_url.is_empty() => config.websocket_url,
        _ => crate::browser::default_websocket_url(),
    }
}
