//! Small wrappers over the browser APIs the app uses.

use wasm_bindgen::JsValue;

const NAME_KEY: &str = "chat.name";

fn window() -> web_sys::Window {
    web_sys::window().expect("the app runs in a browser window")
}

/// The room named in the URL fragment (`#lobby`), if any.
pub fn room_in_fragment() -> Option<String> {
    let hash = window().location().hash().ok()?;
    let room = hash.trim_start_matches('#');
    (!room.is_empty()).then(|| room.to_owned())
}

/// Puts the room in the URL fragment, so the address can be shared.
pub fn set_fragment(room: Option<&str>) {
    let location = window().location();
    let wanted = room.map(|room| format!("#{room}")).unwrap_or_default();
    if location.hash().ok().as_deref() != Some(wanted.as_str()) {
        if wanted.is_empty() {
            // Clears the fragment without leaving a bare `#` or a history entry.
            let _ = window().history().and_then(|history| {
                let path = location.pathname().unwrap_or_default()
                    + &location.search().unwrap_or_default();
                history.replace_state_with_url(&JsValue::NULL, "", Some(&path))
            });
        } else {
            let _ = location.set_hash(&wanted);
        }
    }
}

pub fn remembered_name() -> Option<String> {
    window().local_storage().ok()??.get_item(NAME_KEY).ok()?
}

pub fn remember_name(name: &str) {
    if let Ok(Some(storage)) = window().local_storage() {
        let _ = storage.set_item(NAME_KEY, name);
    }
}

/// `ws(s)://<this host>/ws`: where chat-local (or `trunk serve`'s proxy)
/// answers.
pub fn default_websocket_url() -> String {
    let location = window().location();
    let scheme = match location.protocol().as_deref() {
        Ok("https:") => "wss",
        _ => "ws",
    };
    format!("{scheme}://{}/ws", location.host().unwrap_or_default())
}

/// `HH:MM` in the browser's time zone.
pub fn clock_time(ts_ms: u64) -> String {
    let date = js_sys::Date::new(&JsValue::from_f64(ts_ms as f64));
    format!("{:02}:{:02}", date.get_hours(), date.get_minutes())
}

pub fn now_ms() -> u64 {
    js_sys::Date::now() as u64
}
