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
    pub fn join(&self, room: Room, name: Name) {
        browser::remember_name(name.as_str());
        browser::set_fragment(Some(room.as_str()));
        self.state.error.set(None);
        self.state.target.set(Some((room.clone(), name.clone())));
        self.outbox.send(ClientFrame::Join { room, name });
    }

    pub fn leave(&self) {
        self.state.target.set(None);
        self.state.clear_room();
        browser::set_fragment(None);
        self.outbox.send(ClientFrame::Leave);
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

    // Following a link to another room while in one switches rooms.
    let on_hash_change = chat.clone();
    let _ = window_event_listener(leptos::ev::hashchange, move |_| {
        let Some(room) = browser::room_in_fragment().and_then(|r| Room::parse(&r).ok()) else {
            return;
        };
        let current = on_hash_change.state.target.get_untracked();
        if let Some((current_room, name)) = current
            && current_room != room
        {
            on_hash_change.join(room, name);
        }
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
    let label = move || match status.get() {
        Status::Connecting => "Connecting…".to_owned(),
        Status::Online => "Connected".to_owned(),
        Status::Offline(seconds) => format!("Offline, retrying in {seconds}s"),
    };
    let class = move || match status.get() {
        Status::Online => "status online",
        Status::Connecting => "status connecting",
        Status::Offline(_) => "status offline",
    };
    view! {
        <span class=class role="status" aria-live="polite" data-testid="connection-status">
            <span class="dot" aria-hidden="true"></span>
            {label}
        </span>
    }
}
