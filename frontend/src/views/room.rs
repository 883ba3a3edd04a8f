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
    let leave = move |_| chat.leave();

    view! {
        <div class="room">
            <header class="topbar">
                <div class="title">
                    <span class="hash" aria-hidden="true">"#"</span>
                    <h1>{room}</h1>
                    <span class="you">"as " <strong>{me}</strong></span>
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
    let me = move || state.joined.with(|j| j.as_ref().map(|j| j.name.clone()));
    let log_ref = NodeRef::<html::Ol>::new();

    // Keep the newest message in view.
    Effect::new(move |_| {
        state.log.track();
        if let Some(log) = log_ref.get() {
            log.set_scroll_top(log.scroll_height());
        }
    });

    view! {
        <ol class="log" role="log" aria-label="Conversation" aria-live="polite" node_ref=log_ref>
            <Show when=move || state.log.with(Vec::is_empty)>
                <li class="empty">"No messages yet. Say hello!"</li>
            </Show>
            <For each=move || state.log.get() key=Entry::key let:entry>
                {match entry {
                    Entry::Message(message) => {
                        let mine = me().as_deref() == Some(message.name.as_str());
                        view! {
                            <li class="message" class:mine=mine>
                                <div class="meta">
                                    <span class="author">{message.name.clone()}</span>
                                    <time>{browser::clock_time(message.ts)}</time>
                                </div>
                                <p class="text">{message.data.clone()}</p>
                            </li>
                        }.into_any()
                    }
                    Entry::Notice { text, ts, .. } => view! {
                        <li class="notice">
                            <span>{text}</span>
                            " "
                            <time>{browser::clock_time(ts)}</time>
                        </li>
                    }.into_any(),
                }}
            </For>
        </ol>
    }
}

#[component]
fn Composer() -> impl IntoView {
    let chat = expect_context::<Chat>();
    let state = chat.state;
    let draft = state.draft;
    let online = move || state.status.get() == Status::Online;
    let too_long = move || draft.with(|d| d.len() > DATA_MAX_BYTES);

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
                bind:value=draft aria-invalid=move || too_long().to_string() />
            <button type="submit" disabled=move || !online() || too_long()>"Send"</button>
        </form>
    }
}

#[component]
fn MemberList() -> impl IntoView {
    let chat = expect_context::<Chat>();
    let state = chat.state;
    // A name on several connections (two tabs, or a reconnect whose old
    // connection the server has not let go yet) is one person here.
    let distinct = Memo::new(move |_| {
        let mut members = state.members.get();
        members.sort_by(|a, b| a.to_lowercase().cmp(&b.to_lowercase()).then(a.cmp(b)));
        members.dedup();
        members
    });
    let count = move || {
        let repeated = state.members.with(Vec::len) - distinct.with(Vec::len);
        state.count.get().saturating_sub(repeated)
    };
    view! {
        <aside class="members">
            <h2 id="members-heading">"Members " <span class="count">{count}</span></h2>
            <ul aria-label="Members">
                <For each=move || distinct.get() key=String::clone let:name>
                    <li>
                        <span class="avatar" aria-hidden="true">{initial(&name)}</span>
                        <span class="member-name">{name.clone()}</span>
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
