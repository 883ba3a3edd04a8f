//! The views: [`App`] shows the lobby until the server confirms a room, then
//! the room.

mod lobby;
mod room;

use leptos::prelude::*;
use shared::{ClientFrame, Name, Room};

use crate::browser;
use crate::socket::{self, Outbox};
use crate::state::{ChatState, Status};

/// Everything the views need to act: the state and the way to the server.
#[derive(Clone, Copy)]
pub struct Chat {
    pub state: ChatState,
    pub outbox: Outbox,
}

impl Chat {
    /// Joins `room`, or switches to it. The address names it once the
    /// server confirms (a join from the address finds it there already).
    pub fn join(&self, room: Room, name: Name) {
        browser::remember_name(name.as_str());
        self.state.error.set(None);
        self.state.target.set(Some((room.clone(), name.clone())));
        self.state.joining(&room);
        self.outbox.join(room, name);
    }

    /// Back to the lobby; `entry` says how the address follows.
    pub fn leave(&self, entry: browser::Entry) {
        self.state.error.set(None);
        self.state.target.set(None);
        self.state.clear_room();
        browser::set_fragment(None, entry);
        self.outbox.send(ClientFrame::Leave);
    }

    /// Goes to `room` under the current (or remembered) name; without a
    /// name, the lobby offers it.
    fn go_to(&self, room: &str) {
        let Ok(room) = Room::parse(room) else { return };
        let name = self
            .state
            .target
            .get_untracked()
            .map(|(_, name)| name)
            .or_else(|| browser::remembered_name().and_then(|n| Name::parse(&n).ok()));
        match name {
            Some(name) => self.join(room, name),
            None => self.state.last_room.set(Some(room.shown().to_owned())),
        }
    }

    /// The address changed (a link, Back or Forward, an edit): the room
    /// follows it. The browser has moved already, so nothing is pushed.
    fn follow_fragment(&self) {
        let target = self.state.target.get_untracked();
        let Some(fragment) = browser::room_in_fragment() else {
            if target.is_some() {
                self.leave(browser::Entry::Replace);
            }
            return;
        };
        let room = match Room::parse(&fragment) {
            Ok(room) => room,
            Err(error) => {
                self.state.error.set(Some(format!(
                    "#{fragment} is not a room: {}",
                    error.message
                )));
                // The address goes back to where the user is.
                let current = target.as_ref().map(|(room, _)| room.shown());
                browser::set_fragment(current, browser::Entry::Replace);
                return;
            }
        };
        let name = target
            .map(|(_, name)| name)
            .or_else(|| browser::remembered_name().and_then(|n| Name::parse(&n).ok()));
        match (self.state.target.get_untracked(), name) {
            (Some((current, _)), _) if current == room => {}
            (_, Some(name)) => self.join(room, name),
            // No name yet: the lobby shows the room, to join once named.
            (_, None) => self.state.last_room.set(Some(room.shown().to_owned())),
        }
    }
}

#[component]
pub fn App() -> impl IntoView {
    let state = ChatState::new();
    let chat = Chat {
        state,
        outbox: socket::connect(state),
    };
    provide_context(chat);

    // A shared link (`#room`) with a remembered name goes straight in.
    if let (Some(room), Some(name)) = (
        browser::room_in_fragment().and_then(|r| Room::parse(&r).ok()),
        browser::remembered_name().and_then(|n| Name::parse(&n).ok()),
    ) {
        chat.join(room, name);
    }

    // The room follows the address, both ways: links, Back and Forward,
    // edits of the fragment.
    let follow = chat;
    let _ = window_event_listener(leptos::ev::popstate, move |_| follow.follow_fragment());
    let follow = chat;
    let _ = window_event_listener(leptos::ev::hashchange, move |_| follow.follow_fragment());

    // Messages not sent yet outlive the page (a reload, a closed tab): the
    // next page of this browser sends them.
    // So is how far each room was read.
    let _ = window_event_listener(leptos::ev::pagehide, move |_| {
        state.save_outbox();
        state.save_read();
        state.save_drafts();
    });
    // Back from the back-forward cache: what it saved is its own again.
    let _ = window_event_listener(leptos::ev::pageshow, move |_| state.reclaim_saved());
    // The network is back: no need to wait for the next attempt.
    let outbox = chat.outbox;
    let _ = window_event_listener(leptos::ev::online, move |_| outbox.retry_now());

    // The title names the room, and counts what came while the tab was
    // hidden; looking at it again clears the count. Hidden is the last
    // moment a phone surely gives a page before discarding it.
    let _ = window_event_listener(leptos::ev::visibilitychange, move |_| {
        if browser::tab_hidden() {
            state.save_outbox();
            state.save_read();
            state.save_drafts();
        } else {
            state.reclaim_saved();
            state.unread.set(0);
            state.mark_read_if_seen();
            outbox.retry_now();
        }
    });
    Effect::new(move |_| {
        let room = state.joined.with(|j| j.as_ref().map(|j| j.shown.clone()));
        let title = match (room, state.unread.get()) {
            (None, _) => "Chat rooms".to_owned(),
            (Some(room), 0) => format!("#{room} · Chat rooms"),
            (Some(room), unread) => format!("({unread}) #{room} · Chat rooms"),
        };
        browser::set_title(&title);
    });

    view! {
        <div class="app">
            <Show
                when=move || state.joined.with(Option::is_some)
                fallback=|| view! { <lobby::Lobby /> }
            >
                <room::RoomView />
            </Show>
        </div>
    }
}

/// Messages written in other rooms, waiting to be sent there: they go once
/// their room is joined again; here they can be gone to, or dropped.
#[component]
pub fn WaitingElsewhere() -> impl IntoView {
    let chat = expect_context::<Chat>();
    let state = chat.state;
    let elsewhere = Memo::new(move |_| {
        let here = state.joined.with(|j| j.as_ref().map(|j| j.room.clone()));
        let mut rooms: Vec<(String, usize)> = Vec::new();
        state.outgoing.with(|outgoing| {
            for o in outgoing.iter().filter(|o| Some(&o.room) != here.as_ref()) {
                match rooms.iter_mut().find(|(room, _)| *room == o.room) {
                    Some((_, n)) => *n += 1,
                    None => rooms.push((o.room.clone(), 1)),
                }
            }
        });
        rooms
    });
    view! {
        <Show when=move || !elsewhere.with(Vec::is_empty)>
            <div class="elsewhere" role="region" aria-label="Not sent yet">
                <For each=move || elsewhere.get() key=|entry| entry.clone() let:entry>
                    <p>
                        {match entry.1 {
                            1 => format!("1 message waits to be sent in #{}.", entry.0),
                            n => format!("{n} messages wait to be sent in #{}.", entry.0),
                        }}
                        " "
                        // The room being joined already: they go once it is.
                        {
                            let room = entry.0.clone();
                            let joining = state.target.with_untracked(|t| {
                                t.as_ref().is_some_and(|(r, _)| r.as_str() == room)
                            });
                            (!joining).then(|| view! {
                                <button type="button" class="link" on:click=move |_| chat.go_to(&room)>
                                    {format!("Open #{}", entry.0)}
                                </button>
                                " "
                            })
                        }
                        " "
                        <button type="button" class="link" on:click={
                            let room = entry.0.clone();
                            move |_| state.discard_room(&room)
                        }>"Delete them"</button>
                    </p>
                </For>
            </div>
        </Show>
    }
}

/// The connection status, for people and for screen readers: a dot and a
/// word.
#[component]
pub fn ConnectionStatus() -> impl IntoView {
    let chat = expect_context::<Chat>();
    let status = chat.state.status;
    // A retry after losing the connection is still reconnecting: only
    // coming back is news.
    let been_online = chat.state.been_online;
    let label = Memo::new(move |previous: Option<&&str>| match status.get() {
        Status::Online => "Connected",
        Status::Offline if !been_online.get_value() => "Connecting…",
        Status::Offline => "Reconnecting…",
        Status::Connecting if previous == Some(&"Reconnecting…") => "Reconnecting…",
        Status::Connecting => "Connecting…",
    });
    let class = move || match status.get() {
        Status::Online => "status online",
        Status::Connecting => "status connecting",
        Status::Offline => "status offline",
    };
    view! {
        <span class=class data-testid="connection-status">
            <span class="dot" aria-hidden="true"></span>
            <span class="label" role="status" aria-live="polite">{label}</span>
        </span>
    }
}

/// While the connection is down: one plain line, a way to try at once, and
/// (once several attempts have failed) the address that cannot be reached,
/// for whoever runs the server.
#[component]
pub fn ReconnectBanner() -> impl IntoView {
    let chat = expect_context::<Chat>();
    let state = chat.state;
    let unreachable = move || {
        state.unreachable.get().map(|url| {
            view! {
                <span class="unreachable" role="alert">
                    "Cannot reach the chat server at " <code>{url}</code>
                </span>
            }
        })
    };
    // Shown from the first failed attempt until connected again, the tries
    // in between included: the banner (and a focused Retry now) stays put.
    let reconnecting = Memo::new(move |before: Option<&bool>| match state.status.get() {
        Status::Online => false,
        Status::Offline => true,
        Status::Connecting => before.copied().unwrap_or(false),
    });
    let trying = move || state.status.get() == Status::Connecting;
    view! {
        <Show when=move || reconnecting.get() || state.unreachable.with(Option::is_some)>
            <div class="banner">
                <span aria-hidden="true">
                    {move || if state.been_online.get_value() { "Reconnecting…" } else { "Connecting…" }}
                </span>
                <button type="button" class="secondary" aria-disabled=move || trying().to_string()
                    on:click=move |_| chat.outbox.retry_now()>
                    "Retry now"
                </button>
                {unreachable}
            </div>
        </Show>
    }
}
