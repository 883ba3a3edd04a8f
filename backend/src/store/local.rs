//! chat-local's store: connections and rooms in memory, history durable.
//!
//! chat-local holds its sockets itself, so a connection record cannot outlive
//! the process (a restart drops them all anyway): keeping connections and
//! room membership in memory loses nothing and makes a join, a leave or a
//! disconnect cost O(room size) in memory instead of DynamoDB round trips.
//! Messages still go to DynamoDB (the embedded engine, or any endpoint), in
//! group-committed batches, and each room's recent history is kept in memory
//! once it has been read, for joins.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use shared::limits::HISTORY_LEN;
use shared::{ChatMessage, Name, Room};

use super::dynamodb::DynamoStore;
use super::group_commit::{GroupCommit, GroupWriter};
use super::{Admission, Connection, Member, Members, RateLimit, Store, StoreError};

pub struct LocalStore {
    membership: Mutex<Membership>,
    history: Mutex<HashMap<Arc<str>, RoomHistory>>,
    messages: DynamoStore,
    writer: GroupCommit,
}

#[derive(Default)]
struct Membership {
    connections: HashMap<Arc<str>, Record>,
    /// Copy-on-write member lists: a fan-out holds one without a lock.
    rooms: HashMap<Arc<str>, Members>,
}

struct Record {
    connected_at: u64,
    room: Option<Arc<str>>,
    name: Option<Arc<str>>,
    /// The rate limit's state ([`RateLimit::admit`]).
    full_again_us: u64,
}

impl Record {
    fn connection(&self, connection_id: &str) -> Connection {
        Connection {
            connection_id: connection_id.to_owned(),
            room: self.room.as_deref().map(str::to_owned),
            name: self.name.as_deref().map(str::to_owned),
            connected_at: self.connected_at,
        }
    }
}

enum RoomHistory {
    /// Being read from DynamoDB; messages saved meanwhile wait here so the
    /// read cannot miss them.
    Loading { saved_meanwhile: Vec<ChatMessage> },
    /// The latest messages, oldest first, at most [`HISTORY_LEN`].
    Ready(VecDeque<ChatMessage>),
}

impl LocalStore {
    /// Must be called within a Tokio runtime (it starts the history writer).
    /// History is read through `messages` and written in groups by
    /// `writer`.
    pub fn new(messages: DynamoStore, writer: impl GroupWriter) -> Self {
        Self {
            membership: Mutex::default(),
            history: Mutex::default(),
            writer: GroupCommit::start(writer),
            messages,
        }
    }

    fn membership(&self) -> MutexGuard<'_, Membership> {
        self.membership.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn history(&self) -> MutexGuard<'_, HashMap<Arc<str>, RoomHistory>> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a recorded connection out of its room, then applies `then` under
    /// the same lock; the record as it was before, `None` when there is none.
    fn take_out(
        &self,
        connection_id: &str,
        then: impl FnOnce(&mut Membership),
    ) -> Option<Connection> {
        let (emptied, previous) = {
            let mut state = self.membership();
            let previous = state.record(connection_id)?;
            let emptied = previous
                .room
                .as_deref()
                .and_then(|old| state.exit(old, connection_id));
            then(&mut state);
            (emptied, previous)
        };
        self.forget_history_of(emptied);
        Some(previous)
    }

    /// Forgets the cached history of rooms nobody is in: memory stays
    /// bounded by the rooms in use, and a later join reads it again.
    fn forget_history_of(&self, emptied: Option<Arc<str>>) {
        if let Some(room) = emptied {
            let mut history = self.history();
            if let Some(RoomHistory::Ready(_)) = history.get(&room) {
                history.remove(&room);
            }
        }
    }
}

impl Membership {
    fn record(&self, connection_id: &str) -> Option<Connection> {
        let record = self.connections.get(connection_id)?;
        Some(record.connection(connection_id))
    }

    fn enter(&mut self, room: &Arc<str>, member: Member) {
        let members = self
            .rooms
            .entry(Arc::clone(room))
            .or_insert_with(|| Arc::new([]));
        *members = members.iter().cloned().chain([member]).collect();
    }

    /// Takes `connection_id` out of `room`; the room when that emptied it.
    fn exit(&mut self, room: &str, connection_id: &str) -> Option<Arc<str>> {
        let (name, members) = self.rooms.get_key_value(room)?;
        let remaining: Members = members
            .iter()
            .filter(|member| &*member.connection_id != connection_id)
            .cloned()
            .collect();
        let name = Arc::clone(name);
        if remaining.is_empty() {
            self.rooms.remove(room);
            Some(name)
        } else {
            self.rooms.insert(name, remaining);
            None
        }
    }
}

impl Store for LocalStore {
    async fn add_connection(
        &self,
        connection_id: &str,
        connected_at: u64,
        membership: Option<(&Room, &Name)>,
    ) -> Result<(), StoreError> {
        let id: Arc<str> = connection_id.into();
        let mut state = self.membership();
        let (room, name) = match membership {
            Some((room, name)) => {
                let (room, name): (Arc<str>, Arc<str>) =
                    (room.as_str().into(), name.as_str().into());
                state.enter(
                    &room,
                    Member {
                        connection_id: Arc::clone(&id),
                        name: Arc::clone(&name),
                    },
                );
                (Some(room), Some(name))
            }
            None => (None, None),
        };
        state.connections.insert(
            id,
            Record {
                connected_at,
                room,
                name,
                full_again_us: 0,
            },
        );
        Ok(())
    }

    async fn connection(&self, connection_id: &str) -> Result<Option<Connection>, StoreError> {
        Ok(self.membership().record(connection_id))
    }

    async fn admit_message(
        &self,
        connection_id: &str,
        limit: Option<&RateLimit>,
        now_us: u64,
    ) -> Result<Admission, StoreError> {
        let mut state = self.membership();
        let Some(record) = state.connections.get_mut(connection_id) else {
            return Ok(Admission::Unknown);
        };
        if let Some(limit) = limit {
            match limit.admit(record.full_again_us, now_us) {
                Some(full_again_us) => record.full_again_us = full_again_us,
                None => return Ok(Admission::Limited),
            }
        }
        Ok(Admission::Admitted(record.connection(connection_id)))
    }

    async fn join_room(
        &self,
        connection_id: &str,
        room: &Room,
        name: &Name,
    ) -> Result<Option<Connection>, StoreError> {
        Ok(self.take_out(connection_id, |state| {
            let (room, name): (Arc<str>, Arc<str>) = (room.as_str().into(), name.as_str().into());
            state.enter(
                &room,
                Member {
                    connection_id: connection_id.into(),
                    name: Arc::clone(&name),
                },
            );
            if let Some(record) = state.connections.get_mut(connection_id) {
                record.room = Some(room);
                record.name = Some(name);
            }
        }))
    }

    async fn leave_room(&self, connection_id: &str) -> Result<Option<Connection>, StoreError> {
        Ok(self.take_out(connection_id, |state| {
            if let Some(record) = state.connections.get_mut(connection_id) {
                record.room = None;
            }
        }))
    }

    async fn remove_connection(
        &self,
        connection_id: &str,
    ) -> Result<Option<Connection>, StoreError> {
        Ok(self.take_out(connection_id, |state| {
            state.connections.remove(connection_id);
        }))
    }

    async fn forget_gone(
        &self,
        connection_id: &str,
        connected_before: u64,
    ) -> Result<Option<Connection>, StoreError> {
        let settled = self
            .membership()
            .connections
            .get(connection_id)
            .is_some_and(|record| record.connected_at < connected_before);
        if !settled {
            return Ok(None);
        }
        self.remove_connection(connection_id).await
    }

    async fn room_members(&self, room: &str) -> Result<Members, StoreError> {
        Ok(self
            .membership()
            .rooms
            .get(room)
            .cloned()
            .unwrap_or_else(|| Arc::new([])))
    }

    async fn save_message(&self, message: &ChatMessage) -> Result<(), StoreError> {
        self.writer
            .save(self.messages.message_item(message))
            .await?;
        match self.history().get_mut(message.room.as_str()) {
            Some(RoomHistory::Ready(recent)) => insert_in_order(recent, message.clone()),
            Some(RoomHistory::Loading { saved_meanwhile }) => saved_meanwhile.push(message.clone()),
            None => {}
        }
        Ok(())
    }

    async fn messages_before(
        &self,
        room: &str,
        before: &str,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        // Older pages are read rarely and straight from the table: a message
        // is delivered only once it is written there.
        self.messages.messages_before(room, before, limit).await
    }

    async fn recent_messages(
        &self,
        room: &str,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        if limit > HISTORY_LEN {
            return self.messages.recent_messages(room, limit).await;
        }
        {
            let mut history = self.history();
            match history.get(room) {
                Some(RoomHistory::Ready(recent)) => return Ok(latest(recent, limit)),
                // Someone else is reading it; read too rather than wait.
                Some(RoomHistory::Loading { .. }) => {}
                None => {
                    history.insert(
                        room.into(),
                        RoomHistory::Loading {
                            saved_meanwhile: Vec::new(),
                        },
                    );
                }
            }
        }
        let read = self.messages.recent_messages(room, HISTORY_LEN).await;
        let mut history = self.history();
        let read = match read {
            Ok(read) => read,
            Err(error) => {
                // A later join reads again; a cache someone else made stays.
                if let Some(RoomHistory::Loading { .. }) = history.get(room) {
                    history.remove(room);
                }
                return Err(error);
            }
        };
        match history.remove(room) {
            Some(RoomHistory::Loading { saved_meanwhile }) => {
                let mut recent = VecDeque::from(read);
                for message in saved_meanwhile {
                    insert_in_order(&mut recent, message);
                }
                // The read reserved room for a full page: an empty or quiet
                // room must not keep it (thousands of small rooms would).
                recent.shrink_to_fit();
                let messages = latest(&recent, limit);
                // Cached only while someone is in the room (see forget_history_of).
                if self.membership().rooms.contains_key(room) {
                    history.insert(room.into(), RoomHistory::Ready(recent));
                }
                Ok(messages)
            }
            // Another reader cached it meanwhile: keep theirs.
            Some(ready) => {
                history.insert(room.into(), ready);
                Ok(latest(&VecDeque::from(read), limit))
            }
            None => Ok(latest(&VecDeque::from(read), limit)),
        }
    }
}

/// Adds a message to a room's recent history, keeping id order (concurrent
/// batches may finish out of order) and at most [`HISTORY_LEN`] messages.
fn insert_in_order(recent: &mut VecDeque<ChatMessage>, message: ChatMessage) {
    if recent.iter().any(|m| m.id == message.id) {
        return;
    }
    let at = recent.partition_point(|m| m.id < message.id);
    recent.insert(at, message);
    while recent.len() > HISTORY_LEN {
        recent.pop_front();
    }
}

/// The latest `limit` messages, oldest first.
fn latest(recent: &VecDeque<ChatMessage>, limit: usize) -> Vec<ChatMessage> {
    recent
        .range(recent.len().saturating_sub(limit)..)
        .cloned()
        .collect()
}
