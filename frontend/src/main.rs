//! The chat web app: a Leptos client-side-rendered app, built by Trunk.
//!
//! - [`state`]: what the app knows (room, members, log) and how server frames
//!   change it.
//! - [`socket`]: the WebSocket, reconnecting with backoff and rejoining.
//! - [`views`]: the lobby and the room.
//! - [`wire`]: the server's frames, read with the browser's `JSON.parse`.
//! - [`browser`]: the few browser facilities used (URL fragment, storage).

mod browser;
mod socket;
mod state;
mod views;
mod wire;

fn main() {
    leptos::mount::mount_to_body(views::App);
    // The app is up: the loading note in index.html goes.
    if let Some(loading) = web_sys::window()
        .and_then(|window| window.document())
        .and_then(|document| document.get_element_by_id("loading"))
    {
        loading.remove();
    }
}
