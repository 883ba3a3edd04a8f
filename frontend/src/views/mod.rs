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
#[derive(Clone)]
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
        self.outbox.send(ClientFrame::Join { room, name });
    }

    /// Back to the lobby; `entry` says how the address follows.
    pub fn leave(&self, entry: browser::Entry) {
        self.state.error.set(None);
        self.state.target.set(None);
        self.state.clear_room();
        browser::set_fragment(None, entry);
        self.outbox.send(ClientFrame::Leave);
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
                let current = target.as_ref().map(|(room, _)| room.as_str());
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
            (_, None) => self.state.last_room.set(Some(room.as_str().to_owned())),
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
    provide_context(chat.clone());

    // A shared link (`#room`) with a remembered name goes straight in.
    if let (Some(room), Some(name)) = (
        browser::room_in_fragment().and_then(|r| Room::parse(&r).ok()),
        browser::remembered_name().and_then(|n| Name::parse(&n).ok()),
    ) {
        chat.join(room, name);
    }

    // The room follows the address, both ways: links, Back and Forward,
    // edits of the fragment.
    let follow = chat.clone();
    let _ = window_event_listener(leptos::ev::popstate, move |_| follow.follow_fragment());
    let follow = chat.clone();
    let _ = window_event_listener(leptos::ev::hashchange, move |_| follow.follow_fragment());

    // Messages not sent yet outlive the page (a reload, a closed tab): the
    // next page of this browser sends them.
    // So is how far each room was read.
    let _ = window_event_listener(leptos::ev::pagehide, move |_| {
        state
            .outgoing
            .with_untracked(|outgoing| browser::save_outbox(outgoing));
        state.save_read();
    });

    // The title names the room, and counts what came while the tab was
    // hidden; looking at it again clears the count. Hidden is the last
    // moment a phone surely gives a page before discarding it.
    let _ = window_event_listener(leptos::ev::visibilitychange, move |_| {
        if browser::tab_hidden() {
            state.save_read();
        } else {
            state.unread.set(0);
            state.mark_read_if_seen();
        }
    });
    Effect::new(move |_| {
        let room = state.joined.with(|j| j.as_ref().map(|j| j.room.clone()));
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

/// The connection status, for people and for screen readers.
#[component]
pub fn ConnectionStatus() -> impl IntoView {
    let chat = expect_context::<Chat>();
    let status = chat.state.status;
    // Only the state is announced; the countdown beside it is not, or a
    // screen reader would read it out every second.
    // A retry after going offline is still "Offline": only coming back is
    // news.
    let label = Memo::new(move |previous: Option<&&str>| match status.get() {
        Status::Online => "Connected",
        Status::Offline(_) => "Offline",
        Status::Connecting if previous == Some(&"Offline") => "Offline",
        Status::Connecting => "Connecting…",
    });
    let retry = move || match status.get() {
        Status::Offline(seconds) => Some(format!(", retrying in {seconds}s")),
        _ => None,
    };
    let class = move || match status.get() {
        Status::Online => "status online",
        Status::Connecting => "status connecting",
        Status::Offline(_) => "status offline",
    };
    let unreachable = move || {
        chat.state.unreachable.get().map(|url| {
            view! {
                <span class="unreachable" role="alert">
                    "Cannot reach the chat server at " <code>{url}</code>
                </span>
            }
        })
    };
    view! {
        <span class=class data-testid="connection-status">
            <span class="dot" aria-hidden="true"></span>
            <span role="status" aria-live="polite">{label}</span>
            <span class="retry" aria-hidden="true">{retry}</span>
            {unreachable}
        </span>
    }
}
