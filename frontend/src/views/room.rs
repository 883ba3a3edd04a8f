use leptos::ev::{KeyboardEvent, SubmitEvent};
use leptos::html;
use leptos::prelude::*;
use shared::{ClientFrame, PresenceEvent, check_message_data, limits::DATA_MAX_BYTES};

use super::{Chat, ConnectionStatus, ReconnectBanner, WaitingElsewhere};
use crate::browser;
use crate::state::{Entry, Older, Request, Sending, Status, presence_text};

#[component]
pub fn RoomView() -> impl IntoView {
    let chat = expect_context::<Chat>();
    let state = chat.state;
    let room = move || {
        state
            .joined
            .with(|j| j.as_ref().map(|j| j.shown.clone()).unwrap_or_default())
    };
    let me = move || {
        state
            .joined
            .with(|j| j.as_ref().map(|j| j.name.clone()).unwrap_or_default())
    };
    let leave = move |_| chat.leave(crate::browser::Entry::Push);
    // On a phone the member list is a sheet over the conversation, behind
    // a button; on wider screens it is always beside it.
    let members_open = RwSignal::new(false);
    let toggle = NodeRef::<html::Button>::new();
    let log_ref = NodeRef::<html::Div>::new();

    view! {
        <div class="room">
            <header class="topbar">
                <div class="title">
                    <span class="hash" aria-hidden="true">"#"</span>
                    <h1>{room}</h1>
                    <span class="you" title=me>"as " <strong>{me}</strong></span>
                </div>
                <div class="actions">
                    <ConnectionStatus />
                    <button type="button" class="secondary members-toggle" aria-controls="members"
                        aria-expanded=move || members_open.get().to_string() node_ref=toggle
                        on:click=move |_| members_open.update(|open| *open = !*open)>
                        "Members " <span class="count">{move || state.people()}</span>
                    </button>
                    <button type="button" class="secondary" on:click=leave>"Leave"</button>
                </div>
            </header>
            <ReconnectBanner />
            <div class="body">
                <main class="conversation">
                    <MessageLog log_ref />
                    <WaitingElsewhere />
                    <Composer log_ref />
                </main>
                <MemberList open=members_open toggle />
                // Around the phone's member sheet: a tap outside closes it.
                <Show when=move || members_open.get()>
                    <div class="backdrop" aria-hidden="true" on:click=move |_| members_open.set(false)></div>
                </Show>
            </div>
        </div>
    }
}

#[component]
fn MessageLog(log_ref: NodeRef<html::Div>) -> impl IntoView {
    let chat = expect_context::<Chat>();
    let state = chat.state;
    provide_context(OpenNotices(StoredValue::new(Default::default())));
    // Whether the "Load older messages" button had the focus: when the
    // start of the conversation replaces it, the focus goes to the log,
    // not to the page's body.
    let older_had_focus = StoredValue::new(false);
    // New entries keep a reader who is at the newest one there (or who has
    // just sent something), but never pull one away from older ones: they
    // are counted on a button instead.
    let unseen = RwSignal::new(0usize);
    let last_key = StoredValue::new(None::<String>);
    let first_key = StoredValue::new(None::<String>);
    // How far the view is from the log's end, kept as the reader scrolls:
    // older messages put before the first then leave the view where it was.
    let from_bottom = StoredValue::new(0);
    // Older messages come a page at a time, when the reader reaches the top
    // (or asks with the button, which also serves keyboards).
    let load_older = move || {
        // One `history` request at a time (see `next_gap_request`), and
        // none above a gap: its own button fills it in order.
        if state.older.get_untracked() != Older::Maybe
            || browser::now_ms() < state.older_not_before.get_value()
            || state.unanswered.with_value(|u| !u.is_empty())
            || state
                .log
                .with_untracked(|log| matches!(log.first(), Some(Entry::Gap { .. })))
        {
            return;
        }
        // Where the view is now: new messages may have come since the last
        // scroll.
        if let Some(log) = log_ref.get_untracked() {
            from_bottom.set_value(log.scroll_height() - log.scroll_top());
        }
        older_had_focus.set_value(browser::focused_has_class("load-older"));
        // No message yet (the joined frame had no room for any): the newest.
        let before = state.first_message_id();
        if chat.outbox.send(ClientFrame::History { before }) {
            state.older.set(Older::Loading);
            chat.outbox.asked(Request::History);
        }
    };
    // Ours on their way, in this room.
    let waiting = move || {
        let room = state
            .joined
            .with(|j| j.as_ref().map(|j| j.room.clone()).unwrap_or_default());
        state.outgoing.with(|outgoing| {
            outgoing
                .iter()
                .filter(|o| o.room == room)
                .cloned()
                .collect::<Vec<_>>()
        })
    };
    let to_bottom = move || {
        if let Some(log) = log_ref.get_untracked() {
            log.set_scroll_top(log.scroll_height());
        }
        state.follow.set_value(true);
        state.mark_read_if_seen();
        unseen.set(0);
    };
    Effect::new(move |_| {
        // Messages after the last entry seen (by key: the log is trimmed
        // at its limit, so its length stops telling).
        let prepended = state.log.with(|log| {
            let first = log.first().map(Entry::key);
            let before = first_key.try_update_value(|key| std::mem::replace(key, first.clone()));
            matches!(before, Some(Some(before)) if first.as_ref() != Some(&before)
                && log.iter().any(|entry| entry.key() == before))
        });
        if prepended && let Some(log) = log_ref.get_untracked() {
            log.set_scroll_top(log.scroll_height() - from_bottom.get_value());
            return;
        }
        let new_messages = state.log.with(|log| {
            let seen = last_key.with_value(|key| {
                key.as_ref()
                    .and_then(|key| log.iter().rposition(|entry| entry.key() == *key))
            });
            last_key.set_value(log.last().map(Entry::key));
            let after = seen.map_or(0, |at| at + 1);
            log[after.min(log.len())..]
                .iter()
                .filter(|entry| matches!(entry, Entry::Message(..)))
                .count()
        });
        if state.follow.get_value() {
            to_bottom();
        } else {
            unseen.update(|n| *n += new_messages);
        }
    });
    // Writing one's own follows it down, as a new message would.
    Effect::new(move |_| {
        state.outgoing.track();
        if state.follow.get_value() {
            to_bottom();
        }
    });
    Effect::new(move |_| {
        if state.older.get() == Older::None
            && older_had_focus.get_value()
            && let Some(log) = log_ref.get_untracked()
        {
            older_had_focus.set_value(false);
            let _ = log.focus();
        }
    });
    // The log keeps its newest message in view while the space it has
    // changes: the composer growing a line or showing an error, the window
    // or the on-screen keyboard resizing.
    let resized = StoredValue::new_local(None::<browser::OnResize>);
    Effect::new(move |_| {
        if let Some(log) = log_ref.get() {
            resized.set_value(browser::OnResize::new(&log, move || {
                if state.follow.get_value()
                    && let Some(log) = log_ref.get_untracked()
                {
                    log.set_scroll_top(log.scroll_height());
                }
            }));
        }
    });
    let on_scroll = move |_| {
        if let Some(log) = log_ref.get_untracked() {
            from_bottom.set_value(log.scroll_height() - log.scroll_top());
            if log.scroll_top() < 64 {
                load_older();
            }
            let near = log.scroll_height() - log.scroll_top() - log.client_height() < 48;
            state.follow.set_value(near);
            if near {
                unseen.set(0);
                state.mark_read_if_seen();
            }
        }
    };

    view! {
        <div class="log-frame">
        <Show when=move || unseen.get() != 0>
            <button type="button" class="jump" on:click=move |_| to_bottom()>
                {move || match unseen.get() {
                    1 => "↓ 1 new message".to_owned(),
                    n => format!("↓ {n} new messages"),
                }}
            </button>
        </Show>
        // Scrolls with the keyboard once focused (and from the composer
        // with PageUp and PageDown).
        <div class="log" tabindex="0" role="region" aria-label="Messages" node_ref=log_ref
            on:scroll=on_scroll>
            <Show when=move || state.log.with(Vec::is_empty) && waiting().is_empty()>
                <div class="empty">"No messages yet. Say hello!"</div>
            </Show>
            <div class="older">
                // Above a gap, the gap's own button says what is missing.
                // One button while it loads, so a keyboard's focus stays.
                <Show when=move || state.older.get() != Older::None
                    && !state.log.with(|log| matches!(log.first(), Some(Entry::Gap { .. })))
                    fallback=move || view! {
                        <span>{move || (state.older.get() == Older::None && !state.log.with(Vec::is_empty))
                            .then_some("The start of the conversation")}</span>
                    }>
                    <button type="button" class="secondary load-older"
                        aria-disabled=move || (state.older.get() == Older::Loading).to_string()
                        on:click=move |_| load_older()>
                        {move || if state.older.get() == Older::Loading {
                            "Loading older messages…"
                        } else {
                            "Load older messages"
                        }}
                    </button>
                </Show>
            </div>
            // A log, not a list: `role="log"` on a list would strip its items
            // of their list semantics. Only what the server has is in it:
            // one's own messages on their way are not announced, nor missed
            // ones one by one while they are being filled in.
            <div class="entries" role="log" aria-label="Conversation" aria-live="polite"
                aria-busy=move || state.filling.with(Option::is_some).to_string()>
            <For each=move || rows(&state.log.read(), state.read_mark.read().as_deref()) key=Row::key let:row>
                {row.day.map(|day| view! { <div class="day" role="separator">{day}</div> })}
                {row.new_since.then(|| view! {
                    <div class="new-since" role="separator" aria-label="New since you were here">"New since you were here"</div>
                })}
                {match (row.entry, row.notices) {
                    (entry, Some(notices)) => view! { <Notices notices key=entry.key() /> }.into_any(),
                    (Entry::Message(message, mine), None) => {
                        let grouped = row.grouped;
                        view! {
                            <div class="message" class:mine=mine class:grouped=grouped>
                                <div class="meta" class:visually-hidden=grouped>
                                    <span class="author">{message.name.clone()}</span>
                                    <Time ts=message.ts />
                                </div>
                                <p class="text">{message_text(&message.data)}</p>
                            </div>
                        }.into_any()
                    }
                    (Entry::Notice { name, event, ts, .. }, None) => view! {
                        <div class="notice">
                            <span>{presence_text(&name, event)}</span>
                            " "
                            <Time ts />
                        </div>
                    }.into_any(),
                    (Entry::Gap { key, .. }, None) => view! { <MissedMessages key /> }.into_any(),
                }}
            </For>
            </div>
            <div class="outbox">
                <For each=waiting key=|o| o.nonce.clone() let:o>
                    <OutgoingMessage nonce=o.nonce text=o.text />
                </For>
            </div>
        </div>
        </div>
    }
}

/// A time as `HH:MM`; the day and time in full on hover, or on a tap (a
/// touch screen has no hover).
#[component]
fn Time(ts: u64) -> impl IntoView {
    let full = RwSignal::new(false);
    view! {
        <time datetime=browser::iso_time(ts) title=browser::full_time(ts)
            on:click=move |_| full.update(|f| *f = !*f)>
            {move || if full.get() { browser::full_time(ts) } else { browser::clock_time(ts) }}
        </time>
    }
}

/// The runs of notices the reader opened, by their first notice's key.
#[derive(Clone, Copy)]
struct OpenNotices(StoredValue<std::collections::BTreeSet<String>>);

/// A run of comings and goings, folded into one line that opens to list
/// them: a crowd arriving does not bury what is being said.
#[component]
fn Notices(notices: Vec<(String, PresenceEvent, u64)>, key: String) -> impl IntoView {
    // Open stays open as the run grows (the row is rebuilt each time).
    let opened = expect_context::<OpenNotices>().0;
    let open = opened.with_value(|o| o.contains(&key));
    let count = |event| notices.iter().filter(|(_, e, _)| *e == event).count();
    let people = |n: usize| {
        if n == 1 {
            "1 person".to_owned()
        } else {
            format!("{n} people")
        }
    };
    let summary = [
        (count(PresenceEvent::Join), "joined"),
        (count(PresenceEvent::Leave), "left"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .enumerate()
    .map(|(at, (n, verb))| {
        if at == 0 {
            format!("{} {verb}", people(n))
        } else {
            format!("{n} {verb}")
        }
    })
    .collect::<Vec<_>>()
    .join(", ");
    view! {
        <details class="notice notices" open=open on:toggle=move |event| {
            let open = event_target::<web_sys::HtmlDetailsElement>(&event).open();
            opened.update_value(|o| {
                if open {
                    o.insert(key.clone());
                } else {
                    o.remove(&key);
                }
            });
        }>
            <summary>{summary}</summary>
            <ul>
                {notices.into_iter().map(|(name, event, ts)| view! {
                    <li><span>{presence_text(&name, event)}</span> " " <Time ts /></li>
                }).collect_view()}
            </ul>
        </details>
    }
}

/// Where messages this tab missed belong: filled in by itself (up to
/// [`crate::state::CATCH_UP_MAX`]), then on request.
#[component]
fn MissedMessages(key: u64) -> impl IntoView {
    let chat = expect_context::<Chat>();
    let state = chat.state;
    let loading = move || state.filling.get() == Some(key);
    // One button throughout, so a keyboard's focus stays on it.
    view! {
        <div class="gap" role="group" aria-label="Missed messages">
            <span aria-hidden="true">"Missed messages"</span>
            <button type="button" class="secondary" aria-disabled=move || loading().to_string()
                on:click=move |_| {
                    if !loading() {
                        state.resume_gap(key);
                        chat.outbox.fill_gap();
                    }
                }>
                {move || if loading() { "Loading them…" } else { "Load them" }}
            </button>
        </div>
    }
}

/// A message of ours on its way, or refused: in the log, after the
/// confirmed ones, until the server's copy replaces it.
#[component]
fn OutgoingMessage(nonce: String, text: String) -> impl IntoView {
    let chat = expect_context::<Chat>();
    let state = chat.state;
    // Read as it changes: the row stays (and a focused Retry keeps focus).
    let sending = {
        let nonce = nonce.clone();
        Memo::new(move |_| {
            state.outgoing.with(|outgoing| {
                outgoing
                    .iter()
                    .find(|o| o.nonce == nonce)
                    .map_or(Sending::Queued, |o| o.sending)
            })
        })
    };
    let failed = move || sending.get() == Sending::Failed;
    // Whether it goes next (one at a time): the ones behind wait their turn.
    let first_in_line = {
        let nonce = nonce.clone();
        move || {
            state.outgoing.with(|outgoing| {
                outgoing
                    .iter()
                    .find(|o| {
                        Some(&o.room) == outgoing.iter().find(|x| x.nonce == nonce).map(|x| &x.room)
                            && o.sending != Sending::Failed
                    })
                    .is_some_and(|o| o.nonce == nonce)
            })
        }
    };
    // Counts down while it waits for its turn.
    let tick = RwSignal::new(0u32);
    let _ticking = StoredValue::new_local(gloo_timers::callback::Interval::new(1_000, move || {
        if matches!(sending.get_untracked(), Sending::After(_)) {
            tick.update(|n| *n = n.wrapping_add(1));
        }
    }));
    let status = move || match sending.get() {
        Sending::Failed => "Not sent".to_owned(),
        _ if state.status.get() != Status::Online => "Waiting for the connection…".to_owned(),
        Sending::After(at) => {
            tick.track();
            let seconds = at.saturating_sub(browser::now_ms()).div_ceil(1000).max(1);
            format!("Sending in {seconds} s…")
        }
        Sending::Queued if !first_in_line() => "Waiting to send…".to_owned(),
        Sending::Queued | Sending::InFlight => "Sending…".to_owned(),
    };
    let actions = move || {
        failed().then(|| {
            let (retry, delete) = (nonce.clone(), nonce.clone());
            view! {
                " "
                <button type="button" class="link" on:click=move |_| {
                    state.retry(&retry);
                    chat.outbox.flush();
                }>"Retry"</button>
                " "
                <button type="button" class="link" on:click=move |_| state.discard(&delete)>
                    "Delete"
                </button>
            }
        })
    };
    view! {
        <div class="message mine outgoing" class:failed=failed>
            <p class="text">{message_text(&text)}</p>
            <p class="sending">
                <span>{status}</span>
                {actions}
            </p>
        </div>
    }
}

/// One entry of the log as shown: under a day heading when it starts a
/// day, and without its name when it follows the same person's message by
/// a few minutes.
#[derive(Clone)]
struct Row {
    entry: Entry,
    /// A run of comings and goings shown as one row (name, event, time).
    notices: Option<Vec<(String, PresenceEvent, u64)>>,
    grouped: bool,
    day: Option<String>,
    /// The first message that came after the reader was last here.
    new_since: bool,
}

impl Row {
    fn key(&self) -> String {
        format!(
            "{}{}{}{}{}",
            self.entry.key(),
            self.grouped,
            self.day.is_some(),
            self.new_since,
            self.notices.as_ref().map_or(0, Vec::len)
        )
    }
}

/// Messages this close together from one person read as one group.
const GROUP_MS: u64 = 5 * 60 * 1000;

/// Comings and goings in a row from this many on are folded into one.
const NOTICE_RUN: usize = 3;

fn rows(log: &[Entry], read_mark: Option<&str>) -> Vec<Row> {
    let mut rows = Vec::with_capacity(log.len());
    let mut previous: Option<&Entry> = None;
    let mut marked = read_mark.is_none();
    let mut at = 0;
    while let Some(entry) = log.get(at) {
        at += 1;
        let ts = entry.ts();
        // A run of notices on one day.
        let run = log[at - 1..]
            .iter()
            .take_while(|e| matches!(e, Entry::Notice { .. }) && browser::same_day(e.ts(), ts))
            .count();
        if run >= NOTICE_RUN {
            let notices = log[at - 1..at - 1 + run]
                .iter()
                .filter_map(|e| match e {
                    Entry::Notice {
                        name, event, ts, ..
                    } => Some((name.clone(), *event, *ts)),
                    _ => None,
                })
                .collect();
            let new_day = previous.is_none_or(|p| !browser::same_day(p.ts(), ts));
            rows.push(Row {
                entry: entry.clone(),
                notices: Some(notices),
                grouped: false,
                day: new_day.then(|| browser::day_label(ts)),
                new_since: false,
            });
            at += run - 1;
            previous = log.get(at - 1);
            continue;
        }
        let new_since = !marked
            && matches!((entry, read_mark), (Entry::Message(m, false), Some(mark)) if m.id.as_str() > mark);
        marked |= new_since;
        let new_day = previous.is_none_or(|p| !browser::same_day(p.ts(), ts));
        let grouped = !new_day
            && matches!((previous, entry),
                (Some(Entry::Message(before, was_mine)), Entry::Message(message, mine))
                    if before.name == message.name
                        && was_mine == mine
                        && message.ts.saturating_sub(before.ts) < GROUP_MS);
        rows.push(Row {
            entry: entry.clone(),
            notices: None,
            grouped,
            day: new_day.then(|| browser::day_label(ts)),
            new_since,
        });
        previous = Some(entry);
    }
    rows
}

/// A message's text with its web addresses as links: built as DOM nodes,
/// never as HTML, so nothing in a message can become markup.
fn message_text(text: &str) -> Vec<AnyView> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(at) = ["https://", "http://"]
        .iter()
        .filter_map(|scheme| rest.find(scheme))
        .min()
    {
        let (before, from) = rest.split_at(at);
        let end = from.find(char::is_whitespace).unwrap_or(from.len());
        let url = link_end(&from[..end]);
        let scheme_len = if url.starts_with("https://") { 8 } else { 7 };
        if !before.is_empty() {
            parts.push(before.to_owned().into_any());
        }
        if url.len() <= scheme_len {
            // A scheme with nothing after it is just text.
            parts.push(from[..scheme_len].to_owned().into_any());
            rest = &from[scheme_len..];
            continue;
        }
        let url = url.to_owned();
        parts.push(
            view! { <a href=url.clone() target="_blank" rel="noopener noreferrer">{url.clone()}</a> }
                .into_any(),
        );
        rest = &from[url.len()..];
    }
    if !rest.is_empty() {
        parts.push(rest.to_owned().into_any());
    }
    parts
}

/// An address without what ends the sentence around it: trailing
/// punctuation, and a closing parenthesis it did not open itself (as in
/// `(see https://example.org)`, but not in
/// `https://en.wikipedia.org/wiki/Rust_(programming_language)`).
fn link_end(mut url: &str) -> &str {
    while let Some(last) = url.chars().last() {
        let trailing = match last {
            ')' => url.matches('(').count() < url.matches(')').count(),
            '.' | ',' | ';' | ':' | '!' | '?' | ']' | '\'' | '"' => true,
            _ => false,
        };
        if !trailing {
            break;
        }
        url = &url[..url.len() - 1];
    }
    url
}

#[component]
fn Composer(log_ref: NodeRef<html::Div>) -> impl IntoView {
    let chat = expect_context::<Chat>();
    let state = chat.state;
    let draft = state.draft;
    let too_long = move || draft.with(|d| d.len() > DATA_MAX_BYTES);
    // Bytes, as the limit counts them; shown once a message nears it.
    let counter = move || {
        let used = draft.with(String::len);
        (used > DATA_MAX_BYTES * 9 / 10).then(|| {
            let (used_text, max) = (thousands(used), thousands(DATA_MAX_BYTES));
            if used > DATA_MAX_BYTES {
                format!(
                    "Too long by {}: {used_text} of {max} bytes (accents and emoji take 2 to 4 bytes each)",
                    thousands(used - DATA_MAX_BYTES)
                )
            } else {
                format!("{used_text} of {max} bytes")
            }
        })
    };
    // On a touch screen Return makes a new line and the button sends.
    let touch = browser::touch_first();
    let field = NodeRef::<html::Textarea>::new();
    // Joining puts the cursor where the typing happens.
    Effect::new(move |_| {
        if let Some(field) = field.get() {
            let _ = field.focus();
        }
    });

    let send = move || {
        let data = draft.get_untracked();
        if data.trim().is_empty() {
            return;
        }
        // Too long: the counter under the field says so already.
        if check_message_data(&data).is_err() {
            return;
        }
        // One's own message is worth seeing arrive.
        state.follow.set_value(true);
        // Online or not: it waits in the log until it has gone.
        if chat.outbox.post(data) {
            draft.set(String::new());
        }
    };

    // Enter sends; Shift+Enter starts a new line (and Enter while an input
    // method is composing belongs to it). PageUp and PageDown scroll the
    // log, as in other chat apps.
    let send_on_enter = send;
    let on_key = move |event: KeyboardEvent| match event.key().as_str() {
        "Enter" if !touch && !event.shift_key() && !event.is_composing() => {
            event.prevent_default();
            send_on_enter();
        }
        key @ ("PageUp" | "PageDown") => {
            if let Some(log) = log_ref.get_untracked() {
                event.prevent_default();
                let page = f64::from(log.client_height()) * 0.85;
                let by = if key == "PageUp" { -page } else { page };
                log.scroll_by_with_x_and_y(0.0, by);
            }
        }
        _ => {}
    };

    view! {
        <form class="composer" on:submit=move |event: SubmitEvent| {
            event.prevent_default();
            send();
        }>
            <Show when=move || state.error.with(Option::is_some)>
                <p class="error" role="alert">{move || state.error.get()}</p>
            </Show>
            <label for="message" class="visually-hidden">"Message"</label>
            <textarea id="message" name="message" rows="1"
                placeholder=if touch { "Write a message…" } else { "Write a message… (Shift+Enter: new line)" }
                enterkeyhint=if touch { "enter" } else { "send" }
                prop:value=move || draft.get()
                on:input=move |event| {
                    draft.set(event_target_value(&event));
                    // What the error was about has changed.
                    state.error.set(None);
                }
                on:keydown=on_key
                aria-invalid=move || too_long().to_string()
                aria-describedby="message-counter" node_ref=field></textarea>
            // A tap on Send leaves the focus (and a phone's keyboard) in the
            // field.
            <button type="submit" disabled=too_long
                on:pointerdown=|event: leptos::ev::PointerEvent| event.prevent_default()>"Send"</button>
            <p id="message-counter" class="counter" class:over=too_long>
                {counter}
            </p>
        </form>
    }
}

#[component]
fn MemberList(open: RwSignal<bool>, toggle: NodeRef<html::Button>) -> impl IntoView {
    let chat = expect_context::<Chat>();
    let state = chat.state;
    // People, each once (the server tells of names, not connections: two
    // tabs of one person are one), in the reader's alphabetical order.
    let sorted = Memo::new(move |_| {
        let mut members = state.members.get();
        members.sort_by(|a, b| browser::compare_names(a, b));
        members.dedup();
        members
    });
    let count = move || state.people();
    // A big room hears no one come and go: its list is asked for when
    // looked at, and on Refresh.
    let big = move || state.members_stale.get();
    let refresh = move || {
        if state.members_stale.get_untracked() {
            chat.outbox.ask_members();
        }
    };
    // As a sheet (on a phone), it takes the focus when opened and gives it
    // back to its button when closed.
    let close_button = NodeRef::<html::Button>::new();
    Effect::new(move |was_open: Option<bool>| {
        let is_open = open.get();
        if is_open && was_open == Some(false) {
            refresh();
        }
        if is_open && let Some(close) = close_button.get_untracked() {
            let _ = close.focus();
        } else if was_open == Some(true)
            && let Some(toggle) = toggle.get_untracked()
        {
            let _ = toggle.focus();
        }
        is_open
    });
    view! {
        <aside id="members" class="members" class:open=move || open.get() aria-labelledby="members-heading"
            on:keydown=move |event: KeyboardEvent| if event.key() == "Escape" { open.set(false) }>
            <div class="members-head">
                <h2 id="members-heading">"Members " <span class="count">{count}</span></h2>
                <button type="button" class="secondary refresh" hidden=move || !big()
                    disabled=move || state.members_asked.get() on:click=move |_| refresh()
                    title="A room this big lists its members when asked">"Refresh"</button>
                <button type="button" class="secondary close" node_ref=close_button
                    on:click=move |_| open.set(false)>"Close"</button>
            </div>
            <ul aria-label="Members">
                <For each=move || sorted.get() key=|name| name.clone() let:member>
                    <li>
                        <span class="avatar" aria-hidden="true">{initial(&member)}</span>
                        <span class="member-name" title=member.clone()>{member.clone()}</span>
                    </li>
                </For>
            </ul>
        </aside>
    }
}

fn initial(name: &str) -> String {
    name.chars()
        .next()
        .map(|c| browser::uppercase(c.encode_utf8(&mut [0; 4])))
        .unwrap_or_default()
}

/// `4096` as `4 096`: digits in groups of three, with a narrow no-break
/// space.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (at, digit) in digits.chars().enumerate() {
        if at > 0 && (digits.len() - at).is_multiple_of(3) {
            out.push('\u{202f}');
        }
        out.push(digit);
    }
    out
}
