//! Small wrappers over the browser APIs the app uses.

use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};

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

const ROOMS_KEY: &str = "chat.rooms";
/// How many recently visited rooms the lobby offers.
const RECENT_ROOMS: usize = 5;

/// The rooms visited last, most recent first.
pub fn recent_rooms() -> Vec<String> {
    window()
        .local_storage()
        .ok()
        .flatten()
        .and_then(|storage| storage.get_item(ROOMS_KEY).ok().flatten())
        .map(|list| {
            list.split(' ')
                .filter(|room| !room.is_empty())
                .take(RECENT_ROOMS)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Puts `room` first among the recent ones (room names have no spaces).
pub fn remember_room(room: &str) {
    let mut rooms = recent_rooms();
    rooms.retain(|r| !r.eq_ignore_ascii_case(room));
    rooms.insert(0, room.to_owned());
    rooms.truncate(RECENT_ROOMS);
    if let Ok(Some(storage)) = window().local_storage() {
        let _ = storage.set_item(ROOMS_KEY, &rooms.join(" "));
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

const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `HH:MM` in the browser's time zone (the log's day headings say the
/// day).
pub fn clock_time(ts_ms: u64) -> String {
    let date = date(ts_ms);
    format!("{:02}:{:02}", date.get_hours(), date.get_minutes())
}

/// The day and the time, `Mon 24 Nov 2026, 14:05`: for a time's tooltip.
pub fn full_time(ts_ms: u64) -> String {
    let year = date(ts_ms).get_full_year();
    let day = day_name(ts_ms);
    let day = if day.ends_with(&year.to_string()) {
        day
    } else {
        format!("{day} {year}")
    };
    format!("{day}, {}", clock_time(ts_ms))
}

/// Whether the main pointer is a finger (a phone, a tablet): there is no
/// Shift+Enter there, so Return makes a new line and a button sends.
pub fn touch_first() -> bool {
    window()
        .match_media("(pointer: coarse)")
        .ok()
        .flatten()
        .is_some_and(|query| query.matches())
}

/// Whether two instants fall on the same day where the browser is.
pub fn same_day(a_ms: u64, b_ms: u64) -> bool {
    let (a, b) = (date(a_ms), date(b_ms));
    a.get_full_year() == b.get_full_year()
        && a.get_month() == b.get_month()
        && a.get_date() == b.get_date()
}

/// A day heading for the log: `Today`, `Yesterday`, else the date.
pub fn day_label(ts_ms: u64) -> String {
    let now = now_ms();
    if same_day(ts_ms, now) {
        return "Today".into();
    }
    if same_day(ts_ms, now.saturating_sub(24 * 3600 * 1000)) {
        return "Yesterday".into();
    }
    day_name(ts_ms)
}

/// `Mon 24 Nov`, with the year when it is not this one.
fn day_name(ts_ms: u64) -> String {
    let day = date(ts_ms);
    let name = format!(
        "{} {} {}",
        DAYS[day.get_day() as usize % 7],
        day.get_date(),
        MONTHS[day.get_month() as usize % 12]
    );
    if day.get_full_year() == date(now_ms()).get_full_year() {
        name
    } else {
        format!("{name} {}", day.get_full_year())
    }
}

fn date(ms: u64) -> js_sys::Date {
    js_sys::Date::new(&JsValue::from_f64(ms as f64))
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

// Case and collation come from the browser: Rust's own would add its Unicode
// case tables (about 25 KB) to the app.

/// Names in the order people expect: by the browser's collation (which
/// ignores case), then exactly, so equal names sit together.
pub fn compare_names(a: &str, b: &str) -> std::cmp::Ordering {
    // Numbers by value: "Guest 7" before "Guest 36".
    let options = js_sys::Object::new();
    let _ = js_sys::Reflect::set(&options, &"numeric".into(), &true.into());
    js_sys::JsString::from(a)
        .locale_compare(b, &js_sys::Array::new(), &options)
        .cmp(&0)
        .then_with(|| a.cmp(b))
}

pub fn uppercase(text: &str) -> String {
    js_sys::JsString::from(text).to_upper_case().into()
}

/// A message's nonce: 16 random characters of the alphabet `shared`
/// allows. Unique enough to tell one browser's messages apart; not a
/// secret.
pub fn new_nonce() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..16)
        .map(|_| {
            let at = (js_sys::Math::random() * ALPHABET.len() as f64) as usize;
            ALPHABET[at.min(ALPHABET.len() - 1)] as char
        })
        .collect()
}

const SENT_KEY: &str = "chat.sent";
/// How many of this browser's latest nonces are remembered: enough for
/// every message of its own a room's recent history can show.
const SENT_REMEMBERED: usize = 500;

/// The nonces of the messages this browser sent lately.
pub fn sent_nonces() -> Vec<String> {
    stored(SENT_KEY)
        .map(|list| {
            list.split(' ')
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

pub fn remember_sent(nonce: &str) {
    let mut nonces = sent_nonces();
    nonces.push(nonce.to_owned());
    let excess = nonces.len().saturating_sub(SENT_REMEMBERED);
    store(SENT_KEY, &nonces[excess..].join(" "));
}

const OUTBOX_KEY: &str = "chat.outbox";

/// The messages pages of this browser left unsent, as saved.
fn saved_outbox() -> Vec<crate::state::Outgoing> {
    let Some(saved) = stored(OUTBOX_KEY).and_then(|text| js_sys::JSON::parse(&text).ok()) else {
        return Vec::new();
    };
    if !js_sys::Array::is_array(&saved) {
        return Vec::new();
    }
    js_sys::Array::from(&saved)
        .iter()
        .filter_map(|item| {
            let failed =
                crate::wire::field(&item, "failed").and_then(|f| f.as_bool()) == Some(true);
            Some(crate::state::Outgoing {
                nonce: crate::wire::string(&item, "nonce").filter(|n| shared::is_nonce(n))?,
                // Rooms are known by their lower-case id (older pages saved
                // the spelling).
                room: crate::wire::string(&item, "room")?.to_ascii_lowercase(),
                text: crate::wire::string(&item, "text")?,
                // One the person was to decide about stays so.
                sending: if failed {
                    crate::state::Sending::Failed
                } else {
                    crate::state::Sending::Queued
                },
            })
        })
        .collect()
}

/// The messages pages of this browser left unsent when they closed (or
/// reloaded, or were hidden): taken, so that one page, not every open tab,
/// sends them, when their room is joined again.
pub fn take_saved_outbox() -> Vec<crate::state::Outgoing> {
    let saved = saved_outbox();
    if let Ok(Some(storage)) = window().local_storage() {
        let _ = storage.remove_item(OUTBOX_KEY);
    }
    saved
}

/// Leaves `outgoing` for the next page ([`take_saved_outbox`]), beside what
/// other pages left and no page took yet. Whether it was saved (if not,
/// what was saved before stays as it was).
pub fn save_outbox(outgoing: &[crate::state::Outgoing]) -> bool {
    let mut all = saved_outbox();
    for o in outgoing {
        match all.iter_mut().find(|a| a.nonce == o.nonce) {
            Some(saved) => saved.sending = o.sending,
            None => all.push(o.clone()),
        }
    }
    write_outbox(&all)
}

/// This page is in sight again (or sending while hidden) after
/// [`save_outbox`]: of `nonces`, those still saved are its own again, are
/// taken back and returned; the others were taken by a page opened
/// meanwhile, which sends them.
pub fn reclaim_outbox(nonces: &[String]) -> Vec<String> {
    if window().local_storage().ok().flatten().is_none() {
        // Storage cannot be read: nothing can have been taken from it.
        return nonces.to_vec();
    }
    let mut all = saved_outbox();
    let mine: Vec<String> = all
        .iter()
        .filter(|o| nonces.contains(&o.nonce))
        .map(|o| o.nonce.clone())
        .collect();
    if !mine.is_empty() {
        all.retain(|o| !mine.contains(&o.nonce));
        write_outbox(&all);
    }
    mine
}

/// Writes the saved list whole (none: the key goes). Whether it was written.
fn write_outbox(all: &[crate::state::Outgoing]) -> bool {
    if all.is_empty() {
        if let Ok(Some(storage)) = window().local_storage() {
            return storage.remove_item(OUTBOX_KEY).is_ok();
        }
        return false;
    }
    let items = js_sys::Array::new();
    for o in all {
        let item = js_sys::Object::new();
        for (key, value) in [("nonce", &o.nonce), ("room", &o.room), ("text", &o.text)] {
            let _ = js_sys::Reflect::set(&item, &key.into(), &value.into());
        }
        if o.sending == crate::state::Sending::Failed {
            let _ = js_sys::Reflect::set(&item, &"failed".into(), &true.into());
        }
        items.push(&item);
    }
    js_sys::JSON::stringify(&items).is_ok_and(|text| store(OUTBOX_KEY, &String::from(text)))
}

fn stored(key: &str) -> Option<String> {
    window().local_storage().ok()??.get_item(key).ok()?
}

/// Whether it was stored (a full or forbidden storage refuses).
fn store(key: &str, value: &str) -> bool {
    matches!(window().local_storage(), Ok(Some(storage)) if storage.set_item(key, value).is_ok())
}

const READ_KEY: &str = "chat.read";
/// How many rooms' read marks are remembered (the latest visited).
const READ_REMEMBERED: usize = 100;

/// `room=id` pairs, latest first (neither has spaces or `=`).
fn read_marks() -> Vec<(String, String)> {
    stored(READ_KEY)
        .map(|list| {
            list.split(' ')
                .filter_map(|pair| pair.split_once('='))
                .map(|(room, id)| (room.to_owned(), id.to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// The id of the newest message this browser had read in `room`.
pub fn last_read(room: &str) -> Option<String> {
    read_marks()
        .into_iter()
        .find_map(|(r, id)| (r == room).then_some(id))
}

pub fn save_last_read(room: &str, id: &str) {
    let mut marks = read_marks();
    marks.retain(|(r, _)| r != room);
    marks.insert(0, (room.to_owned(), id.to_owned()));
    marks.truncate(READ_REMEMBERED);
    let list: Vec<String> = marks.iter().map(|(r, id)| format!("{r}={id}")).collect();
    store(READ_KEY, &list.join(" "));
}

/// Whether the element with the focus has `class`.
pub fn focused_has_class(class: &str) -> bool {
    window()
        .document()
        .and_then(|document| document.active_element())
        .is_some_and(|element| element.class_name().split_whitespace().any(|c| c == class))
}

/// Calls back whenever an element's size changes, until dropped.
pub struct OnResize {
    observer: web_sys::ResizeObserver,
    _callback: Closure<dyn FnMut(JsValue)>,
}

impl OnResize {
    pub fn new(element: &web_sys::Element, mut resized: impl FnMut() + 'static) -> Option<Self> {
        let callback = Closure::<dyn FnMut(JsValue)>::new(move |_| resized());
        let observer = web_sys::ResizeObserver::new(callback.as_ref().unchecked_ref()).ok()?;
        observer.observe(element);
        Some(Self {
            observer,
            _callback: callback,
        })
    }
}

impl Drop for OnResize {
    fn drop(&mut self) {
        self.observer.disconnect();
    }
}

const DRAFTS_KEY: &str = "chat.drafts";
/// How many rooms' drafts are kept (the latest written).
const DRAFTS_KEPT: usize = 20;

/// What was being written in each room when a page of this browser went.
pub fn saved_drafts() -> std::collections::BTreeMap<String, String> {
    let Some(saved) = stored(DRAFTS_KEY).and_then(|text| js_sys::JSON::parse(&text).ok()) else {
        return Default::default();
    };
    if !js_sys::Array::is_array(&saved) {
        return Default::default();
    }
    js_sys::Array::from(&saved)
        .iter()
        .filter_map(|item| {
            let room = crate::wire::string(&item, "room")?.to_ascii_lowercase();
            let text = crate::wire::string(&item, "text")?;
            (shared::Room::parse(&room).is_ok() && !text.is_empty()).then_some((room, text))
        })
        .collect()
}

pub fn save_drafts(drafts: &std::collections::BTreeMap<String, String>) {
    let items = js_sys::Array::new();
    for (room, text) in drafts.iter().take(DRAFTS_KEPT) {
        let item = js_sys::Object::new();
        let _ = js_sys::Reflect::set(&item, &"room".into(), &room.into());
        let _ = js_sys::Reflect::set(&item, &"text".into(), &text.into());
        items.push(&item);
    }
    if let Ok(text) = js_sys::JSON::stringify(&items) {
        store(DRAFTS_KEY, &String::from(text));
    }
}
