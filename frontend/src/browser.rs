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
    // Browsers percent-encode what they show decoded (`#café`).
    let room: String = js_sys::decode_uri_component(room)
        .map(String::from)
        .unwrap_or_else(|_| room.to_owned());
    (!room.is_empty()).then_some(room)
}

/// How a change of room shows in the browser's history.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// A new entry, so Back returns to where the user was.
    Push,
    /// The current entry rewritten (the browser moved there already, or a
    /// wrong address is being corrected).
    Replace,
}

/// Puts the room in the URL fragment (none: the lobby), so the address can
/// be shared and Back and Forward move between rooms and the lobby.
pub fn set_fragment(room: Option<&str>, entry: Entry) {
    let location = window().location();
    let wanted = room.map(|room| format!("#{room}")).unwrap_or_default();
    if room_in_fragment().as_deref() == room {
        return;
    }
    let Ok(history) = window().history() else {
        return;
    };
    // The lobby is the page's own path: no bare `#`.
    let url =
        location.pathname().unwrap_or_default() + &location.search().unwrap_or_default() + &wanted;
    let _ = match entry {
        Entry::Push => history.push_state_with_url(&JsValue::NULL, "", Some(&url)),
        Entry::Replace => history.replace_state_with_url(&JsValue::NULL, "", Some(&url)),
    };
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

/// `HH:MM` in the browser's time zone, after the day for a time not today
/// (`Mon 24 Nov, 14:05`; history reaches back 30 days).
pub fn clock_time(ts_ms: u64) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let date = js_sys::Date::new(&JsValue::from_f64(ts_ms as f64));
    let time = format!("{:02}:{:02}", date.get_hours(), date.get_minutes());
    let today = js_sys::Date::new_0();
    let same_day = date.get_full_year() == today.get_full_year()
        && date.get_month() == today.get_month()
        && date.get_date() == today.get_date();
    if same_day {
        return time;
    }
    let day = format!(
        "{} {} {}",
        DAYS[date.get_day() as usize % 7],
        date.get_date(),
        MONTHS[date.get_month() as usize % 12]
    );
    if date.get_full_year() == today.get_full_year() {
        format!("{day}, {time}")
    } else {
        format!("{day} {}, {time}", date.get_full_year())
    }
}

/// The instant as `<time datetime>` wants it (ISO 8601, UTC).
pub fn iso_time(ts_ms: u64) -> String {
    js_sys::Date::new(&JsValue::from_f64(ts_ms as f64))
        .to_iso_string()
        .into()
}

/// Whether the page is out of sight (another tab, a minimized window).
pub fn tab_hidden() -> bool {
    window()
        .document()
        .is_some_and(|document| document.hidden())
}

/// The tab's title.
pub fn set_title(title: &str) {
    if let Some(document) = window().document() {
        document.set_title(title);
    }
}

pub fn now_ms() -> u64 {
    js_sys::Date::now() as u64
}
