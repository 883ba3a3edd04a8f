//! What the app knows, as signals, and how each server frame changes it.

use std::collections::{BTreeMap, BTreeSet};

use leptos::prelude::*;
use shared::{ChatMessage, ErrorCode, HistoryEntry, Name, PresenceEvent, Room, ServerFrame};

/// The log keeps this many entries; older ones scroll away for good.
const LOG_LIMIT: usize = 500;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Connecting,
    Online,
    /// Waiting to try again.
    Offline,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A message, and whether this browser sent it: told by its nonce,
    /// never by name (two people, or two tabs, can share one).
    Message(ChatMessage, bool),
    /// Someone came or went.
    Notice {
        key: u64,
        name: String,
        event: PresenceEvent,
        ts: u64,
    },
    /// Messages this tab missed (it was away, or the room moved on while
    /// it was closed), not in the log yet: they belong where this stands.
    /// What is known about them is in [`ChatState::gaps`] under `key`.
    Gap { key: u64, ts: u64 },
}

impl Entry {
    pub fn key(&self) -> String {
        match self {
            Self::Message(message, _) => message.id.clone(),
            Self::Notice { key, .. } => format!("notice-{key}"),
            Self::Gap { key, .. } => format!("gap-{key}"),
        }
    }

    pub fn ts(&self) -> u64 {
        match self {
            Self::Message(message, _) => message.ts,
            Self::Notice { ts, .. } | Self::Gap { ts, .. } => *ts,
        }
    }
}

/// Messages missing between two in the log: after `after` and before
/// `before` (ids, which sort as the messages were stored).
#[derive(Clone, Debug)]
struct Gap {
    after: String,
    before: String,
    /// How many have been fetched into it since it was last asked for.
    fetched: usize,
}

/// How many missed messages are fetched without asking: past that, the gap
/// is shown with a button to load the rest.
pub const CATCH_UP_MAX: usize = 500;

/// The room this tab is in, as the server confirmed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    /// The room's id, as the server sends it.
    pub room: String,
    /// The room's name as this person spelled it (`#General` is the room
    /// `general`).
    pub shown: String,
    pub name: String,
}

#[derive(Clone, Copy)]
pub struct ChatState {
    pub status: RwSignal<Status>,
    /// Whether this page has been connected at all.
    pub been_online: StoredValue<bool>,
    /// The server's address, once several attempts in a row have failed to
    /// reach it: shown, since a wrong `config.json` looks like this.
    pub unreachable: RwSignal<Option<String>>,
    /// Where the user wants to be; the socket (re)joins it on every connect.
    pub target: RwSignal<Option<(Room, Name)>>,
    pub joined: RwSignal<Option<Membership>>,
    /// The room last left, offered again in the lobby.
    pub last_room: RwSignal<Option<String>>,
    pub members: RwSignal<Vec<String>>,
    pub count: RwSignal<usize>,
    /// A `members` request is on its way (one at a time: each is a Query
    /// of the whole room, and counts against the rate limit).
    pub members_asked: RwSignal<bool>,
    /// The member list is as of a while ago: `count` frames came, which
    /// the server sends instead of arrivals in a room of more than 100
    /// connections. It is asked for again when looked at, and as soon as
    /// the room is told of arrivals again.
    pub members_stale: RwSignal<bool>,
    pub log: RwSignal<Vec<Entry>>,
    /// The latest error from the server, shown until the next action.
    pub error: RwSignal<Option<String>>,
    /// What the composer holds.
    pub draft: RwSignal<String>,
    /// What the composer held in the other rooms this tab was in.
    drafts: StoredValue<BTreeMap<String, String>>,
    /// Messages that came while the tab was hidden (shown in its title).
    pub unread: RwSignal<usize>,
    /// Requests sent and not yet answered, oldest first: the server answers
    /// each, in order, with a `history` frame or an error. (At most one is
    /// on its way at a time: on AWS answers to two could cross.)
    pub unanswered: StoredValue<std::collections::VecDeque<Request>>,
    /// Answers still to come to requests given up on for taking too long.
    late: StoredValue<u32>,
    /// Messages written here and not yet confirmed, oldest first.
    pub outgoing: RwSignal<Vec<Outgoing>>,
    /// Nonces of the messages left for another page when this one was last
    /// hidden.
    handed: StoredValue<Vec<String>>,
    /// After a message was refused for going too fast, the queue goes at
    /// the pace the server named: (ms between messages, when the last went).
    /// Sent at once, the one after would only be refused in its turn, and a
    /// connection refused too often is closed.
    pace: StoredValue<(u64, u64)>,
    seen: StoredValue<BTreeSet<String>>,
    notices: StoredValue<u64>,
    /// Presence notices held back in case they are half of a reconnect.
    pending: StoredValue<Vec<Pending>, LocalStorage>,
    /// Names this tab lost sight of while it reconnected itself, and until
    /// when (ms) their join is taken for a reconnect too.
    missed: StoredValue<BTreeMap<String, u64>>,
    /// Messages for the room being joined that came before its `joined`.
    early: StoredValue<Vec<ChatMessage>>,
    /// Nonces of the messages this browser sent (the latest, remembered
    /// across reloads).
    sent: StoredValue<BTreeSet<String>>,
    /// The room a `join` was sent for and not yet answered.
    in_flight: StoredValue<Option<String>>,
    /// Whether the log should follow new entries: the reader is at the
    /// newest, or has just sent something.
    pub follow: StoredValue<bool>,
    /// Whether the room has messages older than the log's first.
    pub older: RwSignal<Older>,
    /// The log's gaps, by key: see [`Entry::Gap`].
    gaps: StoredValue<BTreeMap<u64, Gap>>,
    /// The gap being filled, if one is: no message of ours is sent
    /// meanwhile, since it may hold one whose answer never came.
    pub filling: RwSignal<Option<u64>>,
    /// The newest message this tab had read when it came into the room (as
    /// this browser last left it): the first after it is marked new.
    pub read_mark: RwSignal<Option<String>>,
    /// The newest message the reader has had in view since.
    read_up_to: StoredValue<Option<String>>,
    /// No `history` request before this (ms): one was refused.
    pub older_not_before: StoredValue<u64>,
}

/// A message written here that the server has not confirmed yet: shown in
/// the log at once, sent in order, and kept until the server's own copy
/// (found by its nonce) replaces it or the person deletes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub nonce: String,
    pub room: String,
    pub text: String,
    pub sending: Sending,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sending {
    /// Waiting for its turn, the connection or the room.
    Queued,
    /// Sent; its answer has not come.
    InFlight,
    /// Refused for going too fast: goes again by itself at this time (ms).
    After(u64),
    /// Refused for good, or the server failed after perhaps saving it:
    /// the person decides (Retry, Delete).
    Failed,
}

/// Messages that may wait to be sent at most.
pub const OUTBOX_MAX: usize = 100;

/// How long after a refused `history` request the next may go.
const HISTORY_RETRY_MS: u64 = 3_000;

/// A request that the server answers with a frame of its own or an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Older messages, for the top of the log.
    History,
    /// Missed messages, for the gap with this key.
    Gap(u64),
}

/// What is known of the messages before the log's first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Older {
    /// There may be some: a `history` request will tell.
    Maybe,
    /// A `history` request is on its way.
    Loading,
    /// The log starts where the room's history does.
    None,
}

/// What the socket should do after a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Followup {
    Nothing,
    /// Send the `join` for the target room again, after a pause.
    RetryJoin,
    /// Fill the gap being filled, then send the next outgoing message, if
    /// either may go.
    Flush,
    /// Ask for the gap's next page after this many milliseconds: the last
    /// ask was refused for going too fast.
    FillGapAfter(u64),
    /// Ask for the member list: the room is told of arrivals again, and
    /// the list it had is from when it was not.
    AskMembers,
}

/// How long a leave (or a join of a name already here) waits for its pair
/// before it is shown: the web app reconnects within a few seconds.
const RECONNECT_GRACE_MS: u32 = 5_000;

/// How long after this tab's own rejoin a name missing from the new member
/// list may come back without a notice: past the longest retry (15 s), so a
/// restarted server's rejoins, spread over the backoff, stay quiet.
const MISSED_GRACE_MS: u64 = 30_000;

struct Pending {
    key: u64,
    name: String,
    event: PresenceEvent,
    ts: u64,
    /// Shows the notice when the grace is over; dropped (and so cancelled)
    /// with the notice when its pair comes.
    _timer: gloo_timers::callback::Timeout,
}

/// Rooms with more members than this show no comings and goings in the
/// log.
pub const BIG_ROOM: usize = 100;

/// First-strong isolates: a right-to-left name cannot reorder the words
/// around it.
pub fn presence_text(name: &str, event: PresenceEvent) -> String {
    let verb = match event {
        PresenceEvent::Join => "joined",
        PresenceEvent::Leave => "left",
    };
    format!("\u{2068}{name}\u{2069} {verb}")
}

impl ChatState {
    pub fn new() -> Self {
        Self {
            status: RwSignal::new(Status::Connecting),
            been_online: StoredValue::new(false),
            unreachable: RwSignal::new(None),
            target: RwSignal::new(None),
            joined: RwSignal::new(None),
            last_room: RwSignal::new(None),
            members: RwSignal::new(Vec::new()),
            count: RwSignal::new(0),
            members_asked: RwSignal::new(false),
            members_stale: RwSignal::new(false),
            log: RwSignal::new(Vec::new()),
            error: RwSignal::new(None),
            draft: RwSignal::new(String::new()),
            drafts: StoredValue::new(crate::browser::saved_drafts()),
            unread: RwSignal::new(0),
            unanswered: StoredValue::new(std::collections::VecDeque::new()),
            late: StoredValue::new(0),
            outgoing: RwSignal::new(crate::browser::take_saved_outbox()),
            handed: StoredValue::new(Vec::new()),
            pace: StoredValue::new((0, 0)),
            seen: StoredValue::new(BTreeSet::new()),
            notices: StoredValue::new(0),
            pending: StoredValue::new_local(Vec::new()),
            missed: StoredValue::new(BTreeMap::new()),
            early: StoredValue::new(Vec::new()),
            sent: StoredValue::new(crate::browser::sent_nonces().into_iter().collect()),
            in_flight: StoredValue::new(None),
            follow: StoredValue::new(true),
            older: RwSignal::new(Older::Maybe),
            older_not_before: StoredValue::new(0),
            gaps: StoredValue::new(BTreeMap::new()),
            filling: RwSignal::new(None),
            read_mark: RwSignal::new(None),
            read_up_to: StoredValue::new(None),
        }
    }

    /// Notes that a `join` for `room` is being sent.
    pub fn joining(&self, room: &Room) {
        self.in_flight.set_value(Some(room.as_str().to_owned()));
    }

    /// Applies one server frame; what the socket should do about it.
    pub fn apply(&self, frame: ServerFrame) -> Followup {
        match frame {
            ServerFrame::Joined {
                room,
                name,
                members,
                count,
                history,
                more,
            } => {
                self.in_flight.set_value(None);
                // A late answer to a join the user has moved on from (Back
                // while joining, another room meanwhile).
                if !self.is_joining(&room) {
                    return Followup::Nothing;
                }
                let same_room = self
                    .joined
                    .with_untracked(|joined| joined.as_ref().is_some_and(|j| j.room == room));
                // Where the log had got to: messages after it and before the
                // history's first were missed.
                let known = if same_room {
                    // A rejoin after this tab's own reconnect.
                    self.note_missed(&members);
                    self.last_message_id()
                } else {
                    // The room being left is read up to where it was, and
                    // keeps what was being written in it.
                    self.save_read();
                    self.switch_draft(Some(&room));
                    self.forget_log();
                    self.follow.set_value(true);
                    self.older
                        .set(if more { Older::Maybe } else { Older::None });
                    let mark = crate::browser::last_read(&room);
                    self.read_mark.set(mark.clone());
                    mark
                };
                let oldest = history
                    .first()
                    .map(|HistoryEntry::Message(m)| (m.id.clone(), m.ts));
                // The address names the room once the server has it in it.
                let shown = self
                    .target
                    .with_untracked(|t| t.as_ref().map(|(r, _)| r.shown().to_owned()))
                    .filter(|shown| shown.eq_ignore_ascii_case(&room))
                    .unwrap_or_else(|| room.clone());
                crate::browser::set_fragment(Some(&shown), crate::browser::Entry::Push);
                crate::browser::remember_room(&shown);
                self.joined.set(Some(Membership { room, shown, name }));
                self.members.set(members);
                self.members_stale.set(false);
                self.count.set(count);
                self.error.set(None);
                // After a reconnect this fills in what was missed; what was
                // already shown is skipped by id. A message of ours found
                // here was posted although its answer never came: it is not
                // sent again.
                for HistoryEntry::Message(message) in history {
                    self.confirm(&message);
                    let mine = self.is_mine(&message);
                    self.add_message(message, mine);
                }
                for message in self
                    .early
                    .try_update_value(std::mem::take)
                    .unwrap_or_default()
                {
                    if self.is_current_room(&message.room) {
                        self.confirm(&message);
                        let mine = self.is_mine(&message);
                        self.add_message(message, mine);
                    }
                }
                // Older messages than the history's, newer than the log's
                // last (or than this browser last read): a gap to fill.
                if more
                    && let (Some(known), Some((oldest, ts))) = (known, oldest)
                    && oldest > known
                {
                    self.open_gap(known, oldest, ts);
                }
                // Only what is news on arrival is marked as news.
                if let Some(mark) = self.read_mark.get_untracked()
                    && !self.log.with_untracked(|log| {
                        log.iter().any(|e| {
                            matches!(e, Entry::Message(m, false) if m.id > mark)
                                || matches!(e, Entry::Gap { .. })
                        })
                    })
                {
                    self.read_mark.set(None);
                }
                self.mark_read_if_seen();
                return Followup::Flush;
            }
            ServerFrame::Message(message) => {
                let answered = self.confirm(&message);
                if answered {
                    // A message of ours went through: an older error no
                    // longer applies.
                    self.error.set(None);
                }
                let mine = self.is_mine(&message);
                if self.is_current_room(&message.room) {
                    if !mine && crate::browser::tab_hidden() {
                        self.unread.update(|n| *n += 1);
                    }
                    self.add_message(message, mine);
                    self.mark_read_if_seen();
                } else if self.is_joining(&message.room) {
                    // The server may fan a message out to a joiner before
                    // its `joined`; it is merged in by id once that comes.
                    self.early.update_value(|early| early.push(message));
                }
                if answered {
                    return Followup::Flush;
                }
            }
            ServerFrame::Presence {
                event,
                room,
                name,
                count,
                also,
            } => {
                if !self.is_current_room(&room) {
                    return Followup::Nothing;
                }
                for name in std::iter::once(name).chain(also) {
                    let already_here = self.members.with_untracked(|m| m.contains(&name));
                    // Names, each once: the server tells of people, and a
                    // name may be told twice when two of its connections
                    // arrive together.
                    self.members.update(|members| match event {
                        PresenceEvent::Join if !already_here => members.push(name.clone()),
                        PresenceEvent::Join => {}
                        PresenceEvent::Leave => members.retain(|m| *m != name),
                    });
                    self.announce(event, name, already_here);
                }
                self.count.set(count);
                // Told of arrivals again: the list from the big days is
                // asked for once.
                if self.members_stale.get_untracked() {
                    return Followup::AskMembers;
                }
            }
            // A big room's arrivals and departures, as a count.
            ServerFrame::Count { room, count } => {
                if self.is_current_room(&room) {
                    self.count.set(count);
                    self.members_stale.set(true);
                }
            }
            ServerFrame::Members {
                room,
                members,
                count,
            } => {
                self.members_asked.set(false);
                if self.is_current_room(&room) {
                    self.members.set(members);
                    // A room this big stays quiet about who comes and goes:
                    // the list is only as of now.
                    self.members_stale.set(count > BIG_ROOM);
                    self.count.set(count);
                }
            }
            ServerFrame::Left { room } => {
                if self.is_current_room(&room) {
                    self.clear_room();
                }
            }
            ServerFrame::Error {
                code,
                message,
                action,
                retry_after_ms,
                nonce,
            } => {
                let current = self.joined.get_untracked();
                // A heartbeat refused (rate limited) is no news: the
                // socket is alive, which is all a ping asks. A member list
                // refused can be asked for again.
                if action.as_deref() == Some("ping") {
                    return Followup::Nothing;
                }
                if action.as_deref() == Some("members") {
                    self.members_asked.set(false);
                    return Followup::Nothing;
                }
                // API Gateway's own error names no request: it may be this.
                if action.is_none() {
                    self.members_asked.set(false);
                }
                // A refused message of ours: it says which.
                if let Some(nonce) = nonce {
                    return self.refused(&nonce, code, message, retry_after_ms);
                }
                // A page of history that was refused: one for the top is
                // asked for again when the reader next reaches it, after a
                // pause; missed messages as soon as the server allows.
                if action.as_deref() == Some("history") {
                    let request = self.take_unanswered();
                    if request.is_none() && self.take_late() {
                        return Followup::Nothing;
                    }
                    if code == ErrorCode::NotInRoom && current.is_some() {
                        return Followup::RetryJoin;
                    }
                    return self.history_refused(request, code, retry_after_ms);
                }
                // A refused message without its nonce (an older server):
                // the one on its way.
                if action.as_deref() == Some("sendmessage")
                    && let Some(nonce) = self.in_flight_nonce()
                {
                    return self.refused(&nonce, code, message, retry_after_ms);
                }
                self.error.set(Some(message));
                if matches!(action.as_deref(), None | Some("join"))
                    && let Some(failed) = self.in_flight.try_update_value(Option::take).flatten()
                {
                    return self.join_failed(&failed, current, code);
                }
                let mut followup = Followup::Nothing;
                if action.is_none() && self.unanswered.with_value(|u| !u.is_empty()) {
                    let request = self.take_unanswered();
                    followup = self.history_refused(request, code, retry_after_ms);
                }
                // The server has lost this tab's membership (a store
                // outage, a record expired): join again.
                if code == ErrorCode::NotInRoom && current.is_some() {
                    return Followup::RetryJoin;
                }
                return followup;
            }
            ServerFrame::History {
                room,
                messages,
                more,
            } => {
                let request = self.take_unanswered();
                if !self.is_current_room(&room) || (request.is_none() && self.take_late()) {
                    return Followup::Nothing;
                }
                let messages = messages.into_iter().map(|HistoryEntry::Message(m)| m);
                match request {
                    Some(Request::Gap(key)) => return self.fill_gap(key, messages.collect(), more),
                    Some(Request::History) | None => {
                        self.add_older(messages);
                        self.older
                            .set(if more { Older::Maybe } else { Older::None });
                        // A gap waiting for its turn may ask now.
                        return Followup::Flush;
                    }
                }
            }
            ServerFrame::Pong => {}
        }
        Followup::Nothing
    }

    /// Writes a message: shown at once, sent when it may go. Whether it was
    /// taken (the queue is bounded: a browser offline for long cannot pile
    /// up more than [`OUTBOX_MAX`]).
    pub fn post(&self, text: String) -> bool {
        // The room the person is looking at, even while a switch is on its
        // way.
        let Some(room) = self
            .joined
            .with_untracked(|j| j.as_ref().map(|j| j.room.clone()))
        else {
            return false;
        };
        if self.outgoing.with_untracked(Vec::len) >= OUTBOX_MAX {
            self.error.set(Some(format!(
                "{OUTBOX_MAX} messages are waiting to be sent already; this one is kept here until they have gone"
            )));
            return false;
        }
        let nonce = crate::browser::new_nonce();
        self.sent.update_value(|sent| {
            sent.insert(nonce.clone());
        });
        crate::browser::remember_sent(&nonce);
        self.outgoing.update(|outgoing| {
            outgoing.push(Outgoing {
                nonce,
                room,
                text,
                sending: Sending::Queued,
            })
        });
        true
    }

    /// The next message to send now, marked as on its way: the oldest of
    /// the current room that is not refused for good, if its turn has come
    /// and none is on its way already (one at a time keeps the order,
    /// whatever the server refuses). Otherwise, when the next may go (ms).
    pub fn next_to_send(&self, now_ms: u64) -> Result<Option<(String, String)>, u64> {
        let Some(room) = self
            .joined
            .with_untracked(|j| j.as_ref().map(|j| j.room.clone()))
        else {
            return Ok(None);
        };
        // Nothing goes while a join is on its way: the server would post it
        // to the room being joined, and after a reconnect only the rejoin's
        // history can tell whether what was on its way had arrived.
        if self.in_flight.with_value(Option::is_some) || self.filling.get_untracked().is_some() {
            return Ok(None);
        }
        self.claim_next(&room);
        let (pace, last_went) = self.pace.get_value();
        if pace > 0 && now_ms < last_went + pace {
            let waiting = self
                .outgoing
                .with_untracked(|o| o.iter().any(|o| o.sending != Sending::Failed));
            if waiting {
                return Err(last_went + pace);
            }
        }
        let mut next = Ok(None);
        self.outgoing.update(|outgoing| {
            let Some(first) = outgoing
                .iter_mut()
                .find(|o| o.room == room && o.sending != Sending::Failed)
            else {
                return;
            };
            match first.sending {
                Sending::InFlight => {}
                Sending::After(at) if at > now_ms => next = Err(at),
                Sending::Queued | Sending::After(_) => {
                    first.sending = Sending::InFlight;
                    next = Ok(Some((first.nonce.clone(), first.text.clone())));
                }
                Sending::Failed => unreachable!("skipped above"),
            }
        });
        if pace > 0 {
            let drained = self
                .outgoing
                .with_untracked(|o| o.iter().all(|o| o.sending == Sending::Failed));
            match &next {
                Ok(Some(_)) => self.pace.set_value((pace, now_ms)),
                // Nothing left to pace.
                Ok(None) if drained => self.pace.set_value((0, 0)),
                _ => {}
            }
        }
        next
    }

    /// While this page's messages are saved for another (it was hidden),
    /// the next to go is taken back from the saved list first: if another
    /// page took it meanwhile, that page sends it, and this one drops it.
    fn claim_next(&self, room: &str) {
        loop {
            let next = self.outgoing.with_untracked(|outgoing| {
                outgoing
                    .iter()
                    .find(|o| o.room == room && o.sending != Sending::Failed)
                    .map(|o| o.nonce.clone())
            });
            let Some(nonce) = next.filter(|n| self.handed.with_value(|h| h.contains(n))) else {
                return;
            };
            self.handed.update_value(|h| h.retain(|n| *n != nonce));
            if !crate::browser::reclaim_outbox(std::slice::from_ref(&nonce)).is_empty() {
                return;
            }
            self.outgoing.update(|o| o.retain(|o| o.nonce != nonce));
        }
    }

    /// The connection is gone: what was on its way may or may not have
    /// arrived. It waits for the next `joined`, whose history says.
    pub fn connection_lost(&self) {
        self.outgoing.update(|outgoing| {
            for o in outgoing
                .iter_mut()
                .filter(|o| o.sending == Sending::InFlight)
            {
                o.sending = Sending::Queued;
            }
        });
    }

    /// Sends a message refused for good again (the person's Retry).
    pub fn retry(&self, nonce: &str) {
        self.outgoing.update(|outgoing| {
            if let Some(o) = outgoing.iter_mut().find(|o| o.nonce == nonce) {
                o.sending = Sending::Queued;
            }
        });
        self.error.set(None);
    }

    /// Drops a message that was not sent (the person's Delete).
    pub fn discard(&self, nonce: &str) {
        self.outgoing
            .update(|outgoing| outgoing.retain(|o| o.nonce != nonce));
        // The error was about it.
        self.error.set(None);
    }

    /// Keeps what is being written, in every room, for the next page of
    /// this browser (a reload, a phone discarding the tab).
    pub fn save_drafts(&self) {
        let current = self
            .joined
            .with_untracked(|j| j.as_ref().map(|j| j.room.clone()));
        let mut drafts = self.drafts.get_value();
        if let Some(room) = current {
            let text = self.draft.get_untracked();
            if text.trim().is_empty() {
                drafts.remove(&room);
            } else {
                drafts.insert(room, text);
            }
        }
        crate::browser::save_drafts(&drafts);
    }

    /// How many people are in the room: names, not connections (one
    /// person's two tabs are one), while the member list is whole; the
    /// server's count when the list was cut to fit a frame or the room is
    /// too big to hear each arrival.
    pub fn people(&self) -> usize {
        let count = self.count.get();
        self.members.with(|members| {
            // A big room's list is as of when it was last asked for (no one
            // is announced there); its count is kept up to date.
            if members.len() < count || self.members_stale.get() {
                return count;
            }
            let distinct: BTreeSet<&str> = members.iter().map(String::as_str).collect();
            distinct.len()
        })
    }

    /// Drops every message waiting to be sent in `room` (the person's
    /// Delete).
    pub fn discard_room(&self, room: &str) {
        self.outgoing
            .update(|outgoing| outgoing.retain(|o| o.room != room));
    }

    /// Whether message `nonce` is still on its way (its answer not come).
    pub fn is_in_flight(&self, nonce: &str) -> bool {
        self.outgoing.with_untracked(|outgoing| {
            outgoing
                .iter()
                .any(|o| o.nonce == nonce && o.sending == Sending::InFlight)
        })
    }

    fn in_flight_nonce(&self) -> Option<String> {
        self.outgoing.with_untracked(|outgoing| {
            outgoing
                .iter()
                .find(|o| o.sending == Sending::InFlight)
                .map(|o| o.nonce.clone())
        })
    }

    /// The server has `message`: if it is one of ours waiting, it is done.
    fn confirm(&self, message: &ChatMessage) -> bool {
        let Some(nonce) = &message.nonce else {
            return false;
        };
        let mut found = false;
        self.outgoing.update(|outgoing| {
            let before = outgoing.len();
            outgoing.retain(|o| o.nonce != *nonce);
            found = outgoing.len() != before;
        });
        // Saved as the tab went out of sight: no other page is to send it.
        if found && crate::browser::tab_hidden() {
            crate::browser::reclaim_outbox(std::slice::from_ref(nonce));
        }
        found
    }

    /// Back in sight after the outbox was saved: what another page took
    /// meanwhile is that page's to send (unless it is on its way from here
    /// already); the rest is this page's again.
    pub fn reclaim_saved(&self) {
        let handed = self
            .handed
            .try_update_value(std::mem::take)
            .unwrap_or_default();
        if handed.is_empty() {
            return;
        }
        let still = crate::browser::reclaim_outbox(&handed);
        self.outgoing.update(|outgoing| {
            outgoing.retain(|o| {
                !handed.contains(&o.nonce)
                    || still.contains(&o.nonce)
                    || o.sending == Sending::InFlight
            })
        });
    }

    /// Leaves the messages not sent yet where the next page of this browser
    /// finds them: as the page goes away, or out of sight (a phone may
    /// discard a hidden tab without another word).
    pub fn save_outbox(&self) {
        let saved = self
            .outgoing
            .with_untracked(|outgoing| crate::browser::save_outbox(outgoing));
        if saved {
            self.handed.set_value(
                self.outgoing
                    .with_untracked(|o| o.iter().map(|o| o.nonce.clone()).collect()),
            );
        }
    }

    /// The server refused our message `nonce`.
    fn refused(
        &self,
        nonce: &str,
        code: ErrorCode,
        message: String,
        retry_after_ms: Option<u64>,
    ) -> Followup {
        let sending = match code {
            // It goes again by itself when allowed, and the rest at that
            // pace.
            ErrorCode::RateLimited => {
                let wait = retry_after_ms.unwrap_or(1_000).clamp(250, 60_000);
                // The wait names when one more may go, not the rate: a
                // second apart at least, slower each time the pace was not
                // slow enough.
                let (pace, _) = self.pace.get_value();
                let pace = wait.max(1_000).max(pace.saturating_mul(2)).min(60_000);
                self.pace.set_value((pace, crate::browser::now_ms()));
                Sending::After(crate::browser::now_ms() + wait)
            }
            // The membership was lost: it goes once the room is joined again.
            ErrorCode::NotInRoom => Sending::Queued,
            _ => {
                self.error.set(Some(message));
                Sending::Failed
            }
        };
        self.outgoing.update(|outgoing| {
            if let Some(o) = outgoing.iter_mut().find(|o| o.nonce == nonce) {
                o.sending = sending;
            }
        });
        match code {
            ErrorCode::NotInRoom if self.joined.with_untracked(Option::is_some) => {
                Followup::RetryJoin
            }
            _ => Followup::Flush,
        }
    }

    /// The `join` for `room` got no answer in time: taken as failed (a
    /// rejoin is tried again, a join from the lobby gives the lobby back).
    pub fn join_unanswered(&self, room: &str) -> Followup {
        let waiting = self
            .in_flight
            .with_value(|in_flight| in_flight.as_deref() == Some(room));
        if !waiting {
            return Followup::Nothing;
        }
        self.in_flight.set_value(None);
        self.error
            .set(Some("The server did not answer; try again.".into()));
        let current = self.joined.get_untracked();
        self.join_failed(room, current, ErrorCode::Internal)
    }

    /// A `join` for `room` was answered with an error.
    fn join_failed(&self, room: &str, current: Option<Membership>, code: ErrorCode) -> Followup {
        match current {
            // From the lobby: back to a usable lobby, not "Joining…".
            None => {
                self.target.set(None);
                self.early.update_value(Vec::clear);
                Followup::Nothing
            }
            // The rejoin after a reconnect: the user is still in that room,
            // so it is tried again (the error stays shown meanwhile).
            Some(current)
                if current.room == room
                    && !matches!(code, ErrorCode::InvalidRoom | ErrorCode::InvalidName) =>
            {
                Followup::RetryJoin
            }
            // A switch that failed: stay where the server has the user.
            Some(current) => {
                let name = self
                    .target
                    .with_untracked(|t| t.as_ref().map(|(_, n)| n.clone()));
                let back = Room::parse(&current.shown).ok().zip(name);
                self.target.set(back);
                self.early.update_value(Vec::clear);
                crate::browser::set_fragment(Some(&current.shown), crate::browser::Entry::Replace);
                Followup::Nothing
            }
        }
    }

    /// A notice that someone came or went, unless it is a reconnect: a
    /// connection dropped (API Gateway's 2-hour cap, a network change) and
    /// the same name came back within [`RECONNECT_GRACE_MS`], in either
    /// order (the old connection's leave can come after the new one's join).
    /// Such notices wait that long and are dropped if their pair arrives.
    fn announce(&self, event: PresenceEvent, name: String, already_here: bool) {
        // Taken first, so that the entry is used up whichever way this goes.
        let expected = event == PresenceEvent::Join && self.expected_back(&name);
        let pair = |pending: &Pending| pending.name == name && pending.event != event;
        if let Some(at) = self.pending.with_value(|p| p.iter().position(pair)) {
            self.pending.update_value(|p| {
                p.remove(at);
            });
            return;
        }
        // Back after a leave this tab never heard: its own connection was
        // being replaced at the same moment (connections cut together, a
        // server restart), so the leave went to the old one, or nowhere.
        if expected {
            return;
        }
        // In a big room comings and goings would bury the conversation:
        // the member list and its count tell them.
        if self.count.get_untracked() > BIG_ROOM {
            return;
        }
        if event == PresenceEvent::Join && !already_here {
            self.add_notice(name, event);
            return;
        }
        let key = self.next_notice_key();
        let state = *self;
        let timer = gloo_timers::callback::Timeout::new(RECONNECT_GRACE_MS, move || {
            let Some(pending) = state
                .pending
                .try_update_value(|p| p.iter().position(|p| p.key == key).map(|at| p.remove(at)))
                .flatten()
            else {
                return;
            };
            // Still or again present after a leave: nobody left.
            let on = state
                .members
                .with_untracked(|m| m.iter().filter(|n| **n == pending.name).count());
            // A join of a name already here is only ever half of a
            // reconnect: the name is listed, nothing more to say.
            let happened = pending.event == PresenceEvent::Leave && on == 0;
            if happened && state.joined.with_untracked(Option::is_some) {
                state.push(Entry::Notice {
                    key: pending.key,
                    name: pending.name,
                    event: pending.event,
                    ts: pending.ts,
                });
            }
        });
        self.pending.update_value(|p| {
            p.push(Pending {
                key,
                name,
                event,
                ts: crate::browser::now_ms(),
                _timer: timer,
            })
        });
    }

    /// On a rejoin of the same room after this tab's own reconnect: names
    /// listed before and missing from the server's new list went while this
    /// tab was away, and their leave went unheard (to the old connection, or
    /// to none: a restarted server sends none). Most of them are reconnecting
    /// too, so their join, when it comes, is not news.
    fn note_missed(&self, members: &[String]) {
        let now = crate::browser::now_ms();
        let listed: BTreeSet<&str> = members.iter().map(String::as_str).collect();
        let gone: Vec<String> = self.members.with_untracked(|before| {
            before
                .iter()
                .filter(|name| !listed.contains(name.as_str()))
                .cloned()
                .collect()
        });
        self.missed.update_value(|missed| {
            missed.retain(|_, until| *until > now);
            for name in gone {
                missed.insert(name, now + MISSED_GRACE_MS);
            }
        });
    }

    /// Whether `name` is one [`Self::note_missed`] is still waiting for; it
    /// waits no longer either way.
    fn expected_back(&self, name: &str) -> bool {
        self.missed
            .try_update_value(|missed| missed.remove(name))
            .flatten()
            .is_some_and(|until| crate::browser::now_ms() < until)
    }

    pub fn clear_room(&self) {
        self.save_read();
        self.switch_draft(None);
        if let Some(joined) = self.joined.get_untracked() {
            self.last_room.set(Some(joined.shown));
        }
        self.joined.set(None);
        self.members.set(Vec::new());
        self.members_stale.set(false);
        self.count.set(0);
        self.forget_log();
        self.early.update_value(Vec::clear);
    }

    fn next_notice_key(&self) -> u64 {
        let key = self.notices.get_value();
        self.notices.set_value(key + 1);
        key
    }

    fn add_notice(&self, name: String, event: PresenceEvent) {
        let key = self.next_notice_key();
        self.push(Entry::Notice {
            key,
            name,
            event,
            ts: crate::browser::now_ms(),
        });
    }

    /// A message this browser sent, by its nonce.
    fn is_mine(&self, message: &ChatMessage) -> bool {
        message
            .nonce
            .as_ref()
            .is_some_and(|nonce| self.sent.with_value(|sent| sent.contains(nonce)))
    }

    /// Whether `room` is the one a `join` has been sent for.
    fn is_joining(&self, room: &str) -> bool {
        self.target
            .with_untracked(|target| target.as_ref().is_some_and(|(r, _)| r.as_str() == room))
    }

    fn is_current_room(&self, room: &str) -> bool {
        self.joined
            .with_untracked(|joined| joined.as_ref().is_some_and(|j| j.room == room))
    }

    /// Messages from before the log's first (oldest first), put before it.
    fn add_older(&self, messages: impl Iterator<Item = ChatMessage>) {
        let older: Vec<Entry> = messages
            .filter(|message| {
                self.seen
                    .try_update_value(|seen| seen.insert(message.id.clone()))
                    .unwrap_or(false)
            })
            .map(|message| {
                let mine = self.is_mine(&message);
                Entry::Message(message, mine)
            })
            .collect();
        if !older.is_empty() {
            self.log.update(|log| {
                log.splice(0..0, older);
            });
        }
    }

    /// The id of the log's first message: where older history ends.
    pub fn first_message_id(&self) -> Option<String> {
        self.log.with_untracked(|log| {
            log.iter().find_map(|entry| match entry {
                Entry::Message(message, _) => Some(message.id.clone()),
                _ => None,
            })
        })
    }

    fn add_message(&self, message: ChatMessage, mine: bool) {
        let fresh = self
            .seen
            .try_update_value(|seen| seen.insert(message.id.clone()))
            .unwrap_or(false);
        if fresh {
            self.push(Entry::Message(message, mine));
        }
    }

    /// A new connection: nothing asked on the old one will be answered.
    pub fn forget_requests(&self) {
        self.unanswered
            .update_value(std::collections::VecDeque::clear);
        self.late.set_value(0);
        self.members_asked.set(false);
        if self.older.get_untracked() == Older::Loading {
            self.older.set(Older::Maybe);
        }
    }

    /// Whether an answer came to a request given up on: it is that answer.
    fn take_late(&self) -> bool {
        self.late
            .try_update_value(|late| {
                let was = *late > 0;
                *late = late.saturating_sub(1);
                was
            })
            .unwrap_or(false)
    }

    /// Removes and returns the oldest unanswered request: the one the
    /// server's next answer is for.
    fn take_unanswered(&self) -> Option<Request> {
        self.unanswered
            .try_update_value(std::collections::VecDeque::pop_front)
            .flatten()
    }

    /// A `history` request was refused (or failed).
    fn history_refused(
        &self,
        request: Option<Request>,
        code: ErrorCode,
        retry_after_ms: Option<u64>,
    ) -> Followup {
        match request {
            Some(Request::Gap(_)) if code == ErrorCode::RateLimited => {
                Followup::FillGapAfter(retry_after_ms.unwrap_or(1_000).clamp(250, 60_000))
            }
            // Anything else stops the filling: the gap offers to try again,
            // and messages of ours may go.
            Some(Request::Gap(key)) => {
                self.stop_filling(key);
                Followup::Flush
            }
            Some(Request::History) | None => {
                self.older_not_before
                    .set_value(crate::browser::now_ms() + HISTORY_RETRY_MS);
                self.older.set(Older::Maybe);
                Followup::Nothing
            }
        }
    }

    /// Marks the messages between `after` and `before` (the id and time of
    /// a message in the log) as missed, and starts filling them in.
    fn open_gap(&self, after: String, before: String, ts: u64) {
        let key = self.next_notice_key();
        let mut opened = false;
        self.log.update(|log| {
            if let Some(at) = log.iter().position(|e| e.key() == before) {
                log.insert(at, Entry::Gap { key, ts });
                opened = true;
            }
        });
        if opened {
            self.gaps.update_value(|gaps| {
                gaps.insert(
                    key,
                    Gap {
                        after,
                        before,
                        fetched: 0,
                    },
                );
            });
            self.filling.set(Some(key));
        }
    }

    /// The next page to ask for to fill the gap being filled: its key and
    /// the message it ends before. None while a page is on its way.
    pub fn next_gap_request(&self) -> Option<(u64, String)> {
        let key = self.filling.get_untracked()?;
        // One `history` request at a time: on AWS each is answered by a
        // function of its own, so two answers could come in either order.
        if self.unanswered.with_value(|u| !u.is_empty()) {
            return None;
        }
        let before = self
            .gaps
            .with_value(|gaps| gaps.get(&key).map(|gap| gap.before.clone()));
        if before.is_none() {
            // Trimmed out of the log meanwhile.
            self.filling.set(None);
        }
        before.map(|before| (key, before))
    }

    /// The person asks for the rest of gap `key`.
    pub fn resume_gap(&self, key: u64) {
        self.gaps.update_value(|gaps| {
            if let Some(gap) = gaps.get_mut(&key) {
                gap.fetched = 0;
            }
        });
        self.filling.set(Some(key));
    }

    /// A page of the messages before gap `key`'s end, oldest first: those
    /// after its start go into it. It closes once a page reaches back to its
    /// start (or to the room's first message).
    fn fill_gap(&self, key: u64, messages: Vec<ChatMessage>, more: bool) -> Followup {
        let Some(mut gap) = self.gaps.with_value(|gaps| gaps.get(&key).cloned()) else {
            self.stop_filling(key);
            return Followup::Flush;
        };
        let reached = !more || messages.first().is_none_or(|m| m.id <= gap.after);
        if let Some(first) = messages.first() {
            gap.before = first.id.clone();
        }
        gap.fetched += messages.len();
        // A message of ours that arrived although its answer never came is
        // not sent again (wherever in the page it is).
        for m in &messages {
            self.confirm(m);
        }
        let missed: Vec<Entry> = messages
            .into_iter()
            .filter(|m| m.id > gap.after)
            .filter(|m| {
                self.seen
                    .try_update_value(|seen| seen.insert(m.id.clone()))
                    .unwrap_or(false)
            })
            .map(|m| {
                let mine = self.is_mine(&m);
                Entry::Message(m, mine)
            })
            .collect();
        let mut present = false;
        self.log.update(|log| {
            let Some(at) = log
                .iter()
                .position(|e| matches!(e, Entry::Gap { key: k, .. } if *k == key))
            else {
                return;
            };
            present = true;
            if reached {
                log.remove(at);
                log.splice(at..at, missed);
            } else {
                log.splice(at + 1..at + 1, missed);
            }
        });
        if reached || !present {
            self.gaps.update_value(|gaps| {
                gaps.remove(&key);
            });
            self.stop_filling(key);
            return Followup::Flush;
        }
        let enough = gap.fetched >= CATCH_UP_MAX;
        self.gaps.update_value(|gaps| {
            gaps.insert(key, gap);
        });
        if enough {
            // The rest waits for the person to ask; what we wrote goes.
            self.stop_filling(key);
        }
        Followup::Flush
    }

    /// Gap `key` is filled no further for now (another may be).
    fn stop_filling(&self, key: u64) {
        if self.filling.get_untracked() == Some(key) {
            self.filling.set(None);
        }
    }

    /// `request` got no answer in time: it is waited for no longer, and
    /// its answer, should it come after all, is dropped.
    pub fn unanswered_for_too_long(&self, request: &Request) {
        let waiting = self.unanswered.with_value(|u| u.front() == Some(request));
        if !waiting {
            return;
        }
        self.take_unanswered();
        self.late.update_value(|late| *late += 1);
        match request {
            // Its gap offers to try again; messages of ours may go.
            Request::Gap(key) => self.stop_filling(*key),
            Request::History => self.older.set(Older::Maybe),
        }
    }

    /// The id of the log's last message.
    fn last_message_id(&self) -> Option<String> {
        self.log.with_untracked(|log| {
            log.iter().rev().find_map(|entry| match entry {
                Entry::Message(message, _) => Some(message.id.clone()),
                _ => None,
            })
        })
    }

    /// The reader has the log's newest message in view, if they are at the
    /// bottom and the tab is in sight.
    pub fn mark_read_if_seen(&self) {
        if self.follow.get_value() && !crate::browser::tab_hidden() {
            self.read_up_to.set_value(self.last_message_id());
        }
    }

    /// Remembers, for this browser, how far the current room was read.
    pub fn save_read(&self) {
        let room = self
            .joined
            .with_untracked(|j| j.as_ref().map(|j| j.room.clone()));
        if let (Some(room), Some(id)) = (room, self.read_up_to.get_value()) {
            crate::browser::save_last_read(&room, &id);
        }
    }

    /// Keeps the composer's text with the room it was written in, and brings
    /// back what was written in `to`.
    fn switch_draft(&self, to: Option<&str>) {
        let from = self
            .joined
            .with_untracked(|j| j.as_ref().map(|j| j.room.clone()));
        let text = self.draft.get_untracked();
        self.drafts.update_value(|drafts| {
            if let Some(from) = from {
                if text.trim().is_empty() {
                    drafts.remove(&from);
                } else {
                    drafts.insert(from, text);
                }
            }
        });
        let next = to
            .and_then(|to| self.drafts.try_update_value(|d| d.remove(to)).flatten())
            .unwrap_or_default();
        self.draft.set(next);
    }

    /// Empties the log, and everything kept about its entries.
    fn forget_log(&self) {
        self.log.set(Vec::new());
        self.seen.update_value(BTreeSet::clear);
        self.pending.update_value(Vec::clear);
        self.missed.update_value(BTreeMap::clear);
        self.gaps.update_value(BTreeMap::clear);
        self.filling.set(None);
        self.read_up_to.set_value(None);
    }

    fn push(&self, entry: Entry) {
        // Only a reader at the newest loses the oldest entries: one who
        // scrolled up, or loaded older pages, is reading them (up to a hard
        // cap), and a page on its way must find the log's start where it
        // asked from.
        let limit = if self.follow.get_value() && self.older.get_untracked() != Older::Loading {
            LOG_LIMIT
        } else {
            LOG_LIMIT * 4
        };
        let mut trimmed = Vec::new();
        self.log.update(|log| {
            log.push(entry);
            if log.len() > limit {
                trimmed = log.drain(..log.len() - limit).collect();
            }
        });
        if !trimmed.is_empty() {
            // The first new message gone: the divider goes with it rather
            // than move to the top.
            if let Some(mark) = self.read_mark.get_untracked()
                && trimmed
                    .iter()
                    .any(|e| matches!(e, Entry::Message(m, false) if m.id > mark))
            {
                self.read_mark.set(None);
            }
            // What went can be loaded again.
            self.seen.update_value(|seen| {
                for entry in &trimmed {
                    if let Entry::Message(message, _) = entry {
                        seen.remove(&message.id);
                    }
                }
            });
            self.older.set(Older::Maybe);
        }
    }
}
