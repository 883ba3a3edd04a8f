//! chat-local's store: connections and rooms in memory, history durable.
//!
//! chat-local holds its sockets itself, so a connection record cannot outlive
//! the process (a restart drops them all anyway): keeping connections and
//! room membership in memory loses nothing and makes a join, a leave or a
//! disconnect cost O(room size) in memory instead of DynamoDB round trips.
//! Messages still go to DynamoDB (the embedded engine, or any endpoint), in
//! group-committed batches, and each room's recent history is kept in memory
//! once it has been read, for joins.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use shared::{ChatMessage, Name, Room};

use super::dynamodb::DynamoStore;
use super::group_commit::{GroupCommit, GroupWriter};
use super::history_cache::{CACHED, HistoryCache, Lookup};
use super::{
    Admission, ClientAdmission, Connection, Limits, Member, Members, NewConnection,
    REFUSAL_WINDOW_MS, RateLimit, Store, StoreError,
};
use crate::clock::now_ms;

pub struct LocalStore {
    membership: Mutex<Membership>,
    history: Mutex<HistoryCache>,
    messages: DynamoStore,
    writer: GroupCommit,
}

#[derive(Default)]
struct Membership {
    connections: HashMap<Arc<str>, Record>,
    /// Copy-on-write member lists: a fan-out holds one without a lock.
    rooms: HashMap<Arc<str>, Members>,
    /// The rate limits' state per client address. An entry whose buckets
    /// are all full again says nothing and is dropped (see `prune_clients`).
    clients: HashMap<Arc<str>, ClientRecord>,
    /// How many clients there were after the last pruning.
    clients_after_prune: usize,
    /// When each big room's count last went out (ms); dropped with the room.
    counted_at: HashMap<Arc<str>, u64>,
    /// Connections per (room, name), for presence: only names present.
    presence: HashMap<(Arc<str>, Arc<str>), i64>,
}

struct Record {
    connected_at: u64,
    room: Option<Arc<str>>,
    name: Option<Arc<str>>,
    /// The rate limit's state ([`RateLimit::admit`]).
    full_again_us: u64,
    client: Option<Arc<str>>,
    /// Refused requests since `refused_since_ms`.
    refusals: u32,
    refused_since_ms: u64,
}

/// One client address's rate limits ([`RateLimit::admit`] states).
#[derive(Default)]
struct ClientRecord {
    /// Its handshakes.
    handshakes_full_again_us: u64,
    /// Everything its connections do, together.
    actions_full_again_us: u64,
    /// Where a new connection's rate limit starts: the latest state of its
    /// connections that spent their bucket.
    inherited_full_again_us: u64,
}

impl ClientRecord {
    fn settled(&self, now_us: u64) -> bool {
        self.handshakes_full_again_us <= now_us
            && self.actions_full_again_us <= now_us
            && self.inherited_full_again_us <= now_us
    }
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

    fn history(&self) -> MutexGuard<'_, HistoryCache> {
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
            self.history().forget(&room);
        }
    }
}

impl Membership {
    /// Drops clients whose limits are all full again, once the table has
    /// doubled since the last time: memory stays proportional to the
    /// clients active lately, at a constant cost per insertion.
    fn prune_clients(&mut self, now_us: u64) {
        if self.clients.len() < 2 * self.clients_after_prune.max(512) {
            return;
        }
        self.clients.retain(|_, client| !client.settled(now_us));
        self.clients_after_prune = self.clients.len();
    }

    fn client_mut(&mut self, client: &str, now_us: u64) -> &mut ClientRecord {
        if !self.clients.contains_key(client) {
            self.prune_clients(now_us);
            self.clients.insert(client.into(), ClientRecord::default());
        }
        self.clients.get_mut(client).expect("inserted above")
    }

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
            self.counted_at.remove(room);
            Some(name)
        } else {
            self.rooms.insert(name, remaining);
            None
        }
    }
}

impl Store for LocalStore {
    async fn admit_client(
        &self,
        client: &str,
        limits: &Limits,
        joining: bool,
        now_us: u64,
    ) -> Result<ClientAdmission, StoreError> {
        let mut state = self.membership();
        let record = state.client_mut(client, now_us);
        let handshakes = match &limits.handshakes {
            Some(limit) => match limit.admit(record.handshakes_full_again_us, now_us) {
                Some(next) => next,
                None => return Ok(ClientAdmission::Limited),
            },
            None => record.handshakes_full_again_us,
        };
        let mut start = record.inherited_full_again_us;
        let mut actions = record.actions_full_again_us;
        if joining {
            match (
                admit(&limits.connection, start, now_us),
                admit(&limits.client, actions, now_us),
            ) {
                (Some(connection), Some(client)) => (start, actions) = (connection, client),
                _ => {
                    // The handshake was made all the same (as on DynamoDB).
                    record.handshakes_full_again_us = handshakes;
                    return Ok(ClientAdmission::Limited);
                }
            }
        }
        record.handshakes_full_again_us = handshakes;
        record.actions_full_again_us = actions;
        if admit(&limits.connection, start, now_us).is_none() {
            // The join spent it: see `admit_message`.
            record.inherited_full_again_us = record.inherited_full_again_us.max(start);
        }
        Ok(ClientAdmission::Admitted {
            full_again_us: start,
        })
    }

    async fn add_connection(&self, connection: &NewConnection<'_>) -> Result<(), StoreError> {
        let NewConnection {
            connection_id,
            connected_at,
            client,
            full_again_us,
            membership,
        } = *connection;
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
        // The client table's own key where there is one: one allocation per
        // address, not per connection.
        let client = client.map(|client| {
            state
                .clients
                .get_key_value(client)
                .map_or_else(|| Arc::from(client), |(key, _)| Arc::clone(key))
        });
        state.connections.insert(
            id,
            Record {
                connected_at,
                room,
                name,
                full_again_us,
                client,
                refusals: 0,
                refused_since_ms: 0,
            },
        );
        Ok(())
    }

    async fn connection(&self, connection_id: &str) -> Result<Option<Connection>, StoreError> {
        Ok(self.membership().record(connection_id))
    }

    /// Both the connection's limit and its client address's: in memory
    /// the second costs nothing, so it is checked on every message.
    async fn admit_message(
        &self,
        connection_id: &str,
        limits: &Limits,
        now_us: u64,
    ) -> Result<Admission, StoreError> {
        let mut state = self.membership();
        let Membership {
            connections,
            clients,
            ..
        } = &mut *state;
        let Some(record) = connections.get_mut(connection_id) else {
            return Ok(Admission::Unknown);
        };
        let Some(connection_next) = admit(&limits.connection, record.full_again_us, now_us) else {
            return Ok(Admission::limited(retry_after(
                &limits.connection,
                record.full_again_us,
                now_us,
            )));
        };
        // Made again if pruned meanwhile: a pruned record was settled,
        // the same as a new one.
        let client = record
            .client
            .as_ref()
            .map(|client| clients.entry(Arc::clone(client)).or_default());
        if let Some(client) = client {
            let Some(client_next) = admit(&limits.client, client.actions_full_again_us, now_us)
            else {
                return Ok(Admission::limited(retry_after(
                    &limits.client,
                    client.actions_full_again_us,
                    now_us,
                )));
            };
            client.actions_full_again_us = client_next;
            // Spent: handed to the address at once, so reconnecting does not
            // refill it. Only a spent bucket is handed on (a person typing
            // never spends one): people sharing an address, behind a NAT,
            // never pay for each other's chatting.
            if admit(&limits.connection, connection_next, now_us).is_none() {
                client.inherited_full_again_us =
                    client.inherited_full_again_us.max(connection_next);
            }
        }
        record.full_again_us = connection_next;
        Ok(Admission::Admitted(record.connection(connection_id)))
    }

    async fn note_refusal(&self, connection_id: &str, now_ms: u64) -> Result<u32, StoreError> {
        let mut state = self.membership();
        let Some(record) = state.connections.get_mut(connection_id) else {
            return Ok(0);
        };
        if now_ms < record.refused_since_ms.saturating_add(REFUSAL_WINDOW_MS) {
            record.refusals = record.refusals.saturating_add(1);
        } else {
            (record.refusals, record.refused_since_ms) = (1, now_ms);
        }
        Ok(record.refusals)
    }

    async fn count_presence(
        &self,
        room: &str,
        name: &str,
        delta: i64,
        _now_ms: u64,
    ) -> Result<i64, StoreError> {
        let mut state = self.membership();
        let key = (Arc::<str>::from(room), Arc::<str>::from(name));
        let count = state.presence.entry(key.clone()).or_insert(0);
        *count = (*count + delta).max(0);
        let now = *count;
        // Only names present take memory.
        if now == 0 {
            state.presence.remove(&key);
        }
        Ok(now)
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

    async fn claim_count_turn(
        &self,
        room: &str,
        now_ms: u64,
        every_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut state = self.membership();
        // Only rooms in use: the map stays as small as the rooms.
        let Some((room, _)) = state.rooms.get_key_value(room) else {
            return Ok(false);
        };
        let room = Arc::clone(room);
        let last = state.counted_at.entry(room).or_insert(0);
        if *last != 0 && now_ms < last.saturating_add(every_ms) {
            return Ok(false);
        }
        *last = now_ms;
        Ok(true)
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
        self.history().saved(message, now_ms());
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
        let mut may_wait = true;
        loop {
            // Bound to a statement of its own: the guard is not held across
            // the awaits below.
            let lookup = self.history().lookup(room, limit, may_wait, now_ms());
            match lookup {
                Lookup::Hit(messages) => return Ok(messages),
                Lookup::Uncached => return self.messages.recent_messages(room, limit).await,
                // Then look once more: a hit, or a read of its own.
                Lookup::Wait(load) => {
                    load.finished().await;
                    may_wait = false;
                }
                Lookup::Load => break,
            }
        }
        // Given up however this ends before it is cached (an error, or this
        // future dropped mid-read), so that waiters are not left waiting
        // for a load nobody finishes.
        let mut unfinished = UnfinishedLoad {
            store: self,
            room: Some(room),
        };
        let read = self.messages.recent_messages(room, CACHED).await?;
        unfinished.room = None;
        // Cached only while someone is in the room (see forget_history_of).
        let keep = self.membership().rooms.contains_key(room);
        let merged = self
            .history()
            .loaded(room, Some(&read), keep, limit, now_ms());
        Ok(merged.unwrap_or_else(|| read[read.len().saturating_sub(limit)..].to_vec()))
    }
}

/// A history load in progress, given up if dropped before it finished.
struct UnfinishedLoad<'a> {
    store: &'a LocalStore,
    room: Option<&'a str>,
}

impl Drop for UnfinishedLoad<'_> {
    fn drop(&mut self) {
        if let Some(room) = self.room {
            self.store.history().loaded(room, None, false, 0, now_ms());
        }
    }
}

/// How long until a refused action would be allowed by `limit`.
fn retry_after(limit: &Option<RateLimit>, full_again_us: u64, now_us: u64) -> u64 {
    limit
        .as_ref()
        .map_or(0, |limit| limit.retry_after_us(full_again_us, now_us))
}

/// The next state of a limit's bucket if an action at `now_us` is within
/// it (the same state when there is no limit); `None` if it is over.
fn admit(limit: &Option<RateLimit>, full_again_us: u64, now_us: u64) -> Option<u64> {
    match limit {
        Some(limit) => limit.admit(full_again_us, now_us),
        None => Some(full_again_us),
    }
}
