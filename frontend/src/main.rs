//! The chat web app: a Leptos client-side-rendered app, built by Trunk.
//!
//! - [`state`]: what the app knows (room, members, log) and how server frames
//!   change it.
//! - [`socket`]: the WebSocket, reconnecting with backoff and rejoining.
//! - [`views`]: the lobby and the room.
//! - [`browser`]: the few browser facilities used (URL fragment, storage).

mod browser;
mod socket;
mod state;
mod views;

fn main() {
    leptos::mount::mount_to_body(views::App);
}
