//! The one WebSocket: opened at start, reopened with backoff whenever it
//! drops, and on every open it rejoins the room the user is in.
//!
//! It is the browser's `WebSocket` with event handlers, and timers for the
//! backoff and the heartbeat: no async streams, which keeps the app small.

use std::time::Duration;

use gloo_timers::callback::Timeout;
use leptos::prelude::*;
use shared::ClientFrame;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{MessageEvent, WebSocket};

use crate::state::{ChatState, Followup, Request, Status};
use crate::wire;

const FIRST_RETRY: Duration = Duration::from_millis(500);
const LONGEST_RETRY: Duration = Duration::from_secs(15);
/// How long a message's answer may take before the room is joined again to
/// find out whether it arrived.
const ANSWER_DEADLINE: Duration = Duration::from_secs(15);
/// A join the server failed is sent again after this long.
const JOIN_RETRY: Duration = Duration::from_secs(3);
/// A connection that stays up this long ends the backoff: one that a server
/// accepts and drops at once still backs off.
const STEADY: Duration = Duration::from_secs(10);
/// Failed attempts in a row after which the app names the address it cannot
/// reach.
const UNREACHABLE_AFTER: u32 = 3;

/// Sends frames to the server. A frame sent while offline is dropped (every
/// reconnect rejoins the room anyway), except messages: those wait in the
/// state's outgoing list until they are confirmed.
#[derive(Clone, Copy)]
pub struct Outbox {
    state: ChatState,
    link: StoredValue<Link, LocalStorage>,
}

/// The socket and the timers around it.
#[derive(Default)]
struct Link {
    settings: Option<Settings>,
    socket: Option<WebSocket>,
    /// The socket's event handlers, alive as long as it is.
    handlers: Vec<Closure<dyn FnMut(JsValue)>>,
    /// Which socket is current: events of an older one are ignored.
    generation: u32,
    /// Connection attempts that failed (or did not last) in a row.
    failures: u32,
    /// Ends the backoff once the connection has lasted.
    steady: Option<Timeout>,
    /// When a frame was last sent (ms), for the heartbeat.
    last_sent: f64,
    heartbeat: Option<Timeout>,
    /// The next attempt while offline.
    retry: Option<Timeout>,
    /// A `join` to send again after the server failed one.
    rejoin: Option<Timeout>,
    /// The `join` on its way is answered by then, or given up.
    join_deadline: Option<Timeout>,
    /// The next outgoing message's turn, after a rate limit.
    next_message: Option<Timeout>,
    /// The message on its way gets its answer by then, or the room is
    /// joined again, whose history says whether it arrived.
    answer_deadline: Option<Timeout>,
    /// The next page of missed messages, after a rate limit.
    next_gap_page: Option<Timeout>,
    /// The `history` request on its way is answered by then, or it is
    /// given up (a gap offers to try again, and messages may go; the top
    /// offers older messages again).
    history_deadline: Option<Timeout>,
}

/// Starts the connection for the life of the page.
pub fn connect(state: ChatState) -> Outbox {
    let outbox = Outbox {
        state,
        link: StoredValue::new_local(Link::default()),
    };
    leptos::task::spawn_local(async move {
        let settings = settings().await;
        outbox
            .link
            .update_value(|link| link.settings = Some(settings));
        outbox.open();
    });
    outbox
}

impl Outbox {
    /// Sends `frame` if the socket is open; whether it did.
    pub fn send(&self, frame: ClientFrame) -> bool {
        let socket = self.link.with_value(|link| link.socket.clone());
        let Some(socket) = socket.filter(|s| s.ready_state() == WebSocket::OPEN) else {
            return false;
        };
        let sent = socket.send_with_str(&frame.to_json()).is_ok();
        if sent {
            self.link
                .update_value(|link| link.last_sent = js_sys::Date::now());
        }
        sent
    }

    /// Sends a `join`, which is answered by then or given up (an answer
    /// lost on AWS must not leave the lobby saying "Joining…" for good).
    pub fn join(&self, room: shared::Room, name: shared::Name) {
        let outbox = *self;
        let waited_for = room.as_str().to_owned();
        let deadline = Timeout::new(ANSWER_DEADLINE.as_millis() as u32, move || {
            if outbox.state.join_unanswered(&waited_for) == Followup::RetryJoin {
                outbox.rejoin_target();
            }
        });
        self.link
            .update_value(|link| link.join_deadline = Some(deadline));
        self.send(ClientFrame::Join { room, name });
    }

    /// Asks for the room's member list, unless a request is on its way.
    pub fn ask_members(&self) {
        if !self.state.members_asked.get_untracked() && self.send(ClientFrame::Members) {
            self.state.members_asked.set(true);
        }
    }

    /// Writes a message: shown at once, sent as soon as it may go. Whether
    /// it was taken.
    pub fn post(&self, text: String) -> bool {
        let taken = self.state.post(text);
        self.flush();
        taken
    }

    /// Asks for the next page of the missed messages being filled in, if
    /// none is on its way.
    pub fn fill_gap(&self) {
        if let Some((key, before)) = self.state.next_gap_request()
            && self.send(ClientFrame::History {
                before: Some(before),
            })
        {
            self.asked(Request::Gap(key));
        }
    }

    /// `request` has been sent: it waits for its answer, for a while.
    pub fn asked(&self, request: Request) {
        self.state
            .unanswered
            .update_value(|unanswered| unanswered.push_back(request.clone()));
        let outbox = *self;
        let deadline = Timeout::new(ANSWER_DEADLINE.as_millis() as u32, move || {
            outbox.state.unanswered_for_too_long(&request);
            outbox.flush();
        });
        self.link
            .update_value(|link| link.history_deadline = Some(deadline));
    }

    /// Sends the next outgoing message if its turn has come, or sets a
    /// timer for when it does.
    pub fn flush(&self) {
        let outbox = *self;
        match self.state.next_to_send(crate::browser::now_ms()) {
            Ok(Some((nonce, data))) => {
                let sent = self.send(ClientFrame::SendMessage {
                    data,
                    nonce: Some(nonce.clone()),
                });
                if !sent {
                    // Offline: it waits for the next `joined`.
                    self.state.connection_lost();
                    return;
                }
                // An answer that never comes (a failed function on AWS, a
                // lost push) must not hold every later message back.
                let deadline = Timeout::new(ANSWER_DEADLINE.as_millis() as u32, move || {
                    if outbox.state.is_in_flight(&nonce) {
                        outbox.state.connection_lost();
                        outbox.rejoin_target();
                    }
                });
                self.link
                    .update_value(|link| link.answer_deadline = Some(deadline));
            }
            Ok(None) => {}
            Err(at) => {
                let wait = at.saturating_sub(crate::browser::now_ms()) as u32;
                let timer = Timeout::new(wait, move || outbox.flush());
                self.link
                    .update_value(|link| link.next_message = Some(timer));
            }
        }
    }

    fn open(self) {
        self.state.status.set(Status::Connecting);
        let url = self.link.with_value(|link| {
            link.settings
                .as_ref()
                .map(|s| s.websocket_url.clone())
                .unwrap_or_default()
        });
        let generation = self
            .link
            .try_update_value(|link| {
                link.generation = link.generation.wrapping_add(1);
                link.generation
            })
            .unwrap_or_default();
        let Ok(socket) = WebSocket::new(&url) else {
            // A URL the browser refuses: retried like a failed connection.
            return self.closed(generation);
        };
        let on_open = Closure::<dyn FnMut(JsValue)>::new(move |_| self.opened());
        let on_message = Closure::<dyn FnMut(JsValue)>::new(move |event: JsValue| {
            if let Some(text) = event.unchecked_into::<MessageEvent>().data().as_string() {
                self.received(&text);
            }
        });
        // A socket the page's policy blocks gets an `error` and no `close`:
        // both mean this socket is over (whichever comes first counts).
        let on_close = Closure::<dyn FnMut(JsValue)>::new(move |_| self.closed(generation));
        socket.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        socket.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        socket.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        socket.set_onerror(Some(on_close.as_ref().unchecked_ref()));
        self.link.update_value(|link| {
            link.socket = Some(socket);
            link.handlers = vec![on_open, on_message, on_close];
        });
    }

    fn opened(self) {
        let state = self.state;
        state.unreachable.set(None);
        state.been_online.set_value(true);
        let steady = Timeout::new(STEADY.as_millis() as u32, move || {
            self.link.update_value(|link| link.failures = 0);
        });
        self.link.update_value(|link| link.steady = Some(steady));
        state.status.set(Status::Online);
        // Nothing sent on the old socket will be answered on this one.
        state.forget_requests();
        // Messages on their way wait for the rejoin's history to say
        // whether they arrived.
        state.connection_lost();
        // A socket just opened needs no heartbeat for a while: a ping now
        // would spend a token of the rate limit the join may need.
        self.link
            .update_value(|link| link.last_sent = js_sys::Date::now());
        self.rejoin_target();
        self.beat();
    }

    /// Sends the `join` for the room the user is in, if any.
    fn rejoin_target(self) {
        if let Some((room, name)) = self.state.target.get_untracked() {
            self.state.joining(&room);
            self.join(room, name);
        }
    }

    /// Keeps the connection alive: after `heartbeat` without sending
    /// anything it sends a `ping`, since API Gateway drops a connection after
    /// 10 minutes without a client frame, however busy the room.
    fn beat(self) {
        let heartbeat = self.link.with_value(|link| {
            link.settings
                .as_ref()
                .map_or(DEFAULT_HEARTBEAT, |s| s.heartbeat)
        });
        let quiet_for = js_sys::Date::now() - self.link.with_value(|link| link.last_sent);
        let heartbeat_ms = heartbeat.as_millis() as f64;
        // A socket that is no longer open stops beating; the next one that
        // opens starts again.
        if quiet_for >= heartbeat_ms && !self.send(ClientFrame::Ping) {
            return;
        }
        let quiet_for = js_sys::Date::now() - self.link.with_value(|link| link.last_sent);
        let wait = (heartbeat_ms - quiet_for).clamp(0.0, heartbeat_ms) as u32;
        let timer = Timeout::new(wait, move || self.beat());
        self.link.update_value(|link| link.heartbeat = Some(timer));
    }

    fn received(self, text: &str) {
        match wire::parse_frame(text) {
            Ok(frame) => match self.state.apply(frame) {
                Followup::RetryJoin => {
                    let timer =
                        Timeout::new(JOIN_RETRY.as_millis() as u32, move || self.rejoin_target());
                    self.link.update_value(|link| link.rejoin = Some(timer));
                }
                Followup::Flush => {
                    self.fill_gap();
                    self.flush();
                }
                Followup::FillGapAfter(wait) => {
                    let timer = Timeout::new(wait as u32, move || self.fill_gap());
                    self.link
                        .update_value(|link| link.next_gap_page = Some(timer));
                }
                Followup::AskMembers => self.ask_members(),
                Followup::Nothing => {}
            },
            Err(error) => leptos::logging::warn!("unreadable frame from the server: {error}"),
        }
    }

    /// Socket `generation` closed (or never opened): counts down, then
    /// tries again. An older socket's events, or a second one of this
    /// socket's, change nothing.
    fn closed(self, generation: u32) {
        let delay = self.link.try_update_value(|link| {
            if link.generation != generation || link.retry.is_some() {
                return None;
            }
            // Never connected, several times in a row: say where it tried
            // (a wrong config.json looks like this). After a connection has
            // worked, a drop is the network's, and the address would mean
            // nothing to most people.
            if link.failures + 1 >= UNREACHABLE_AFTER
                && link.steady.is_none()
                && !self.state.been_online.get_value()
            {
                let url = link.settings.as_ref().map(|s| s.websocket_url.clone());
                self.state.unreachable.set(url);
            }
            if let Some(socket) = link.socket.take() {
                let _ = socket.close();
            }
            link.heartbeat = None;
            link.rejoin = None;
            link.join_deadline = None;
            link.next_message = None;
            link.answer_deadline = None;
            link.next_gap_page = None;
            link.history_deadline = None;
            link.steady = None;
            link.failures += 1;
            Some(retry_delay(link.failures))
        });
        let Some(delay) = delay.flatten() else { return };
        self.state.status.set(Status::Offline);
        let attempt = Timeout::new(delay.as_millis() as u32, move || {
            self.link.update_value(|link| link.retry = None);
            self.open();
        });
        self.link.update_value(|link| link.retry = Some(attempt));
    }

    /// Tries again now instead of at the next attempt's time: the person
    /// asked, or the browser says the network is back.
    pub fn retry_now(&self) {
        let waiting = self
            .link
            .try_update_value(|link| link.retry.take().is_some())
            .unwrap_or(false);
        if waiting {
            self.open();
        }
    }
}

/// Exponential backoff with jitter, so a restarted server is not hit by every
/// tab at the same instant.
fn retry_delay(failures: u32) -> Duration {
    let exponential = FIRST_RETRY.saturating_mul(1 << failures.min(6).saturating_sub(1));
    let capped = exponential.min(LONGEST_RETRY);
    capped.mul_f64(0.5 + js_sys::Math::random() / 2.0)
}

/// What `/config.json` may set; every field is optional.
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
        let response: web_sys::Response = JsFuture::from(window.fetch_with_str("/config.json"))
            .await
            .ok()?
            .dyn_into()
            .ok()?;
        if !response.ok() {
            return None;
        }
        let config = JsFuture::from(response.json().ok()?).await;
        if config.is_err() {
            leptos::logging::warn!("config.json is not JSON; using the defaults");
        }
        config.ok().filter(|config| config.is_object())
    };
    let config = configured.await.unwrap_or_default();
    // Field by field: one mistyped field costs only itself.
    fn usable<T>(config: &JsValue, name: &str, value: Option<T>) -> Option<T> {
        if value.is_none() && wire::field(config, name).is_some() {
            leptos::logging::warn!("config.json: {name} is not usable; using the default");
        }
        value
    }
    let websocket_url = usable(
        &config,
        "websocketUrl",
        wire::string(&config, "websocketUrl").filter(|url| !url.is_empty()),
    );
    let heartbeat = usable(
        &config,
        "heartbeatSeconds",
        wire::field(&config, "heartbeatSeconds")
            .and_then(|seconds| seconds.as_f64())
            .filter(|seconds| seconds.is_finite() && *seconds > 0.0),
    );
    Settings {
        websocket_url: websocket_url.unwrap_or_else(crate::browser::default_websocket_url),
        // At least a second: a tiny value would be a flood of pings.
        heartbeat: heartbeat.map_or(DEFAULT_HEARTBEAT, |seconds| {
            Duration::from_secs_f64(seconds.clamp(1.0, 86_400.0))
        }),
    }
}
