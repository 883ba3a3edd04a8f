use leptos::ev::SubmitEvent;
use leptos::html;
use leptos::prelude::*;
use shared::{ClientFrame, check_message_data, limits::DATA_MAX_BYTES};

use super::{Chat, ConnectionStatus};
use crate::browser;
use crate::state::{Entry, Status};

#[component]
pub fn RoomView() -> impl IntoView {
    let chat = expect_context::<Chat>();
    let state = chat.state;
    let room = move || {
        state
            .joined
            .with(|j| j.as_ref().map(|j| j.room.clone()).unwrap_or_default())
    };
    let me = move || {
        state
            .joined
            .with(|j| j.as_ref().map(|j| j.name.clone()).unwrap_or_default())
    };
    let leave = move |_| chat.leave(crate::browser::Entry::Push);

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
                    <button class="secondary" on:click=leave>"Leave"</button>
                </div>
            </header>
            <div class="body">
                <section class="conversation">
                    <MessageLog />
                    <Composer />
                </section>
                <MemberList />
            </div>
        </div>
    }
}

#[component]
fn MessageLog() -> impl IntoView {
    let chat = expect_context::<Chat>();
    let state = chat.state;
    let log_ref = NodeRef::<html::Ol>::new();
    // New entries keep a reader who is at the newest one there (or who has
    // just sent something), but never pull one away from older ones: they
    // are counted on a button instead.
    let unseen = RwSignal::new(0usize);
    let last_key = StoredValue::new(None::<String>);
    let to_bottom = move || {
        if let Some(log) = log_ref.get_untracked() {
            log.set_scroll_top(log.scroll_height());
        }
        state.follow.set_value(true);
        unseen.set(0);
    };
    Effect::new(move |_| {
        // Messages after the last entry seen (by key: the log is trimmed
        // at its limit, so its length stops telling).
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
    let on_scroll = move |_| {
        if let Some(log) = log_ref.get_untracked() {
            let near = log.scroll_height() - log.scroll_top() - log.client_height() < 48;
            state.follow.set_value(near);
            if near {
                unseen.set(0);
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
        <ol class="log" role="log" aria-label="Conversation" aria-live="polite" node_ref=log_ref
            on:scroll=on_scroll>
            <Show when=move || state.log.with(Vec::is_empty)>
                <li class="empty">"No messages yet. Say hello!"</li>
            </Show>
            <For each=move || state.log.get() key=Entry::key let:entry>
                {match entry {
                    Entry::Message(message, mine) => {
                        view! {
                            <li class="message" class:mine=mine>
                                <div class="meta">
                                    <span class="author">{message.name.clone()}</span>
                                    <time datetime=browser::iso_time(message.ts)>{browser::clock_time(message.ts)}</time>
                                </div>
                                <p class="text">{message.data.clone()}</p>
                            </li>
                        }.into_any()
                    }
                    Entry::Notice { text, ts, .. } => view! {
                        <li class="notice">
                            <span>{text}</span>
                            " "
                            <time datetime=browser::iso_time(ts)>{browser::clock_time(ts)}</time>
                        </li>
                    }.into_any(),
                }}
            </For>
        </ol>
        </div>
    }
}

#[component]
fn Composer() -> impl IntoView {
    let chat = expect_context::<Chat>();
    let state = chat.state;
    let draft = state.draft;
    let online = move || state.status.get() == Status::Online;
    let too_long = move || draft.with(|d| d.len() > DATA_MAX_BYTES);
    // Bytes, as the limit counts them; shown once a message nears it.
    let counter = move || {
        let used = draft.with(String::len);
        (used > DATA_MAX_BYTES * 9 / 10).then(|| {
            if used > DATA_MAX_BYTES {
                format!(
                    "Too long: {used} of {DATA_MAX_BYTES} bytes (accents and emoji take 2 to 4 bytes each)"
                )
            } else {
                format!("{used} of {DATA_MAX_BYTES} bytes")
            }
        })
    };
    let field = NodeRef::<html::Input>::new();
    // Joining puts the cursor where the typing happens.
    Effect::new(move |_| {
        if let Some(field) = field.get() {
            let _ = field.focus();
        }
    });

    let send = move |event: SubmitEvent| {
        event.prevent_default();
        let data = draft.get_untracked();
        if data.trim().is_empty() {
            return;
        }
        match check_message_data(&data) {
            Ok(()) => {
                state
                    .unanswered
                    .update_value(|unanswered| unanswered.push_back(data.clone()));
                // One's own message is worth seeing arrive.
                state.follow.set_value(true);
                chat.outbox.send(ClientFrame::SendMessage { data });
                draft.set(String::new());
            }
            Err(error) => state.error.set(Some(error.message)),
        }
    };

    view! {
        <form class="composer" on:submit=send>
            <Show when=move || state.error.with(Option::is_some)>
                <p class="error" role="alert">{move || state.error.get()}</p>
            </Show>
            <label for="message" class="visually-hidden">"Message"</label>
            <input id="message" name="message" autocomplete="off" placeholder="Write a message…"
                bind:value=draft aria-invalid=move || too_long().to_string()
                aria-describedby="message-counter" node_ref=field />
            <button type="submit" disabled=move || !online() || too_long()>"Send"</button>
            <p id="message-counter" class="counter" class:over=too_long>
                {counter}
            </p>
        </form>
    }
}

#[component]
fn MemberList() -> impl IntoView {
    let chat = expect_context::<Chat>();
    let state = chat.state;
    // A name on several connections (two tabs, two people, or a reconnect
    // whose old connection the server has not let go yet) is listed once,
    // with how many there are.
    let distinct = Memo::new(move |_| {
        let mut members = state.members.get();
        members.sort_by(|a, b| a.to_lowercase().cmp(&b.to_lowercase()).then(a.cmp(b)));
        let mut counted: Vec<(String, usize)> = Vec::new();
        for name in members {
            match counted.last_mut() {
                Some((last, n)) if *last == name => *n += 1,
                _ => counted.push((name, 1)),
            }
        }
        counted
    });
    let count = move || state.count.get();
    view! {
        <aside class="members">
            <h2 id="members-heading">"Members " <span class="count">{count}</span></h2>
            <ul aria-label="Members">
                <For each=move || distinct.get() key=|entry| entry.clone() let:member>
                    <li>
                        <span class="avatar" aria-hidden="true">{initial(&member.0)}</span>
                        <span class="member-name" title=member.0.clone()>{member.0.clone()}</span>
                        {(member.1 > 1).then(|| view! {
                            <span class="times" title="connected more than once">{format!("×{}", member.1)}</span>
                        })}
                    </li>
                </For>
            </ul>
        </aside>
    }
}

fn initial(name: &str) -> String {
    name.chars()
        .next()
        .map(|c| c.to_uppercase().collect())
        .unwrap_or_default()
}
