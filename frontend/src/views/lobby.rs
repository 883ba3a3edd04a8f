use leptos::ev::SubmitEvent;
use leptos::prelude::*;
use shared::limits::{NAME_MAX_CHARS, ROOM_MAX_LEN};
use shared::{Name, Room};

use super::{Chat, ConnectionStatus, ReconnectBanner, WaitingElsewhere};
use crate::browser;
use crate::state::Status;

/// Pick a name and a room. Both are checked here with the same rules the
/// server applies, so mistakes show before anything is sent.
#[component]
pub fn Lobby() -> impl IntoView {
    let chat = expect_context::<Chat>();
    let state = chat.state;
    let name = RwSignal::new(browser::remembered_name().unwrap_or_default());
    let room = RwSignal::new(
        browser::room_in_fragment()
            .or_else(|| state.last_room.get_untracked())
            .unwrap_or_else(|| "lobby".into()),
    );
    let problem = RwSignal::new(None::<String>);
    // A shared link to a room says where it leads.
    let invited = browser::room_in_fragment();
    let recent = browser::recent_rooms();
    // A room named in the address while here (Back, an edit) fills the field.
    Effect::new(move |_| {
        if let Some(last) = state.last_room.get() {
            room.set(last);
        }
    });
    let joining = move || state.target.with(Option::is_some) && state.joined.with(Option::is_none);

    let submit = move |event: SubmitEvent| {
        event.prevent_default();
        let checked = Name::parse(&name.get_untracked())
            .and_then(|n| Room::parse(room.get_untracked().trim()).map(|r| (r, n)));
        match checked {
            Ok((room, name)) => {
                problem.set(None);
                chat.join(room, name);
            }
            Err(error) => problem.set(Some(error.message)),
        }
    };
    let shown_error = move || problem.get().or_else(|| state.error.get());
    // The cursor goes where typing is needed first: the name, on a first
    // visit or from a shared link; back from a room, the next room.
    let name_field = NodeRef::<leptos::html::Input>::new();
    let room_field = NodeRef::<leptos::html::Input>::new();
    Effect::new(move |_| {
        if let (Some(name_field), Some(room_field)) = (name_field.get(), room_field.get()) {
            let _ = if name.get_untracked().is_empty() {
                name_field.focus()
            } else if state.last_room.get_untracked().is_some() {
                room_field.focus()
            } else {
                Ok(())
            };
        }
    });

    view! {
        <main class="lobby">
            <form class="card" on:submit=submit>
                <header>
                    {match invited {
                        Some(room) => view! {
                            <h1>"You're joining " <span class="invited">{format!("#{room}")}</span></h1>
                            <p class="subtitle">{move || if joining() {
                                "You'll be in as soon as the connection is there."
                            } else {
                                "Pick the name the room will see you by."
                            }}</p>
                        }.into_any(),
                        None => view! {
                            <h1>"Chat rooms"</h1>
                            <p class="subtitle">"Pick a name and any room. Everyone in the room sees your messages the moment you send them."</p>
                        }.into_any(),
                    }}
                </header>
                <label for="name">"Name"</label>
                // No `maxlength`: it counts UTF-16 units, the limit counts
                // characters (an emoji is two units); the check on Join says.
                <input id="name" name="name" autocomplete="nickname" placeholder="Your name"
                    required bind:value=name node_ref=name_field />
                <p class="hint">{format!("Up to {NAME_MAX_CHARS} characters.")}</p>
                <label for="room">"Room"</label>
                <input id="room" name="room" placeholder="Any room name" maxlength=ROOM_MAX_LEN.to_string()
                    pattern="[A-Za-z0-9_.:\\-]+" title="Letters, digits, '_', '.', ':' or '-'"
                    required bind:value=room node_ref=room_field />
                <p class="hint">"Rooms: letters, digits and _ . : - (up to 64)."</p>
                {(!recent.is_empty()).then(|| view! {
                    <nav class="recent" aria-label="Recently visited">
                        <span class="hint">"Recent:"</span>
                        {recent.into_iter().map(|recent_room| {
                            let label = format!("#{recent_room}");
                            view! {
                                <button type="button" class="secondary chip"
                                    on:click=move |_| room.set(recent_room.clone())>{label}</button>
                            }
                        }).collect_view()}
                    </nav>
                })}
                <WaitingElsewhere />
                <Show when=move || shown_error().is_some()>
                    <p class="error" role="alert">{shown_error}</p>
                </Show>
                <button type="submit" disabled=move || state.status.get() != Status::Online || joining()>
                    {move || if joining() { "Joining…" } else { "Join" }}
                </button>
                <footer><ConnectionStatus /></footer>
                <ReconnectBanner />
            </form>
        </main>
    }
}
