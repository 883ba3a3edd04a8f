//! The chat itself: one async handler per API Gateway WebSocket route, over a
//! [`Store`] and a [`Pusher`].
//!
//! Handlers take and return API Gateway's own event types, exactly as Lambda
//! hands them over, so the Lambda functions and chat-local run this same code.
//! The room a connection posts to is always the one the store recorded for it,
//! never one named in the frame.

mod joined;
mod origin;

pub use origin::OriginPolicy;

use std::collections::BTreeMap;

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use aws_lambda_events::encodings::Body;
use futures::StreamExt;
use shared::{
    ChatMessage, ClientFrame, ErrorCode, Name, PresenceEvent, ProtocolError, Room, ServerFrame,
    limits::HISTORY_LEN,
};

use crate::clock::now_ms;
use crate::clock::now_us;
use crate::pusher::{Frame, Pusher};
use crate::store::{
    Admission, ClientAdmission, Connection, Limits, Member, NewConnection, Store, StoreError,
    client_key,
};

/// The name of a connection that joins through the query string without one.
pub const DEFAULT_NAME: &str = "anonymous";

/// A `$connect`, as the handler reads it from the event.
#[derive(Debug, Clone, Copy)]
pub struct Connecting<'a> {
    pub connection_id: &'a str,
    /// Milliseconds since the epoch.
    pub connected_at: u64,
    /// The client address the per-client limits count ([`client_key`]).
    pub client: Option<&'a str>,
    /// `?room=` and `?name=`.
    pub room: Option<&'a str>,
    pub name: Option<&'a str>,
}

/// A connect-time join (`?room=`) its room has yet to hear of.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Arrival {
    pub connection_id: String,
    pub room: String,
    pub name: String,
}

/// Names one presence frame carries at most: 200 names of 32 four-byte
/// characters, quoted, are 26 KB, under API Gateway's 32 KB frame limit.
const NAMES_PER_PRESENCE: usize = 200;
/// Presence frames one fan-out's gone members are announced in at most.
const MAX_PRESENCE_FRAMES: usize = 5;

/// Refused requests within a minute ([`crate::store::REFUSAL_WINDOW_MS`])
/// after which a connection is closed rather than answered
/// ([`Chat::message`]). The web app never comes near: it waits out a rate
/// limit before trying again, and sends nothing the server refuses by
/// design.
pub const REFUSALS_BEFORE_CLOSE: u32 = 10;

/// Rooms of more connections than this hear no one come and go, only their count
/// (at most once a minute: [`count_every_ms`]) and, on request, their names
/// (`members`): a notice to everyone of every arrival squares a room's cost
/// (API Gateway reconnects every connection every 2 hours, which alone is
/// N²/3 600 posts a second). The web app shows no notices above this size
/// either.
pub const PRESENCE_NOTICES_UP_TO: usize = 100;
/// How often a big room's count goes out at most, while people come and go:
/// once a minute, and less often the bigger the room, so that one room's
/// counts cost at most about 33 posts a second up to 20 000 connections
/// (every 5 minutes at 10 000), N / 600 beyond (every 10 minutes).
pub fn count_every_ms(connections: usize) -> u64 {
    (connections as u64)
        .saturating_mul(30)
        .clamp(60_000, 600_000)
}

/// API Gateway answers 410 Gone for a connection until its `$connect` has
/// returned, which takes at most the integration timeout (29 s). A
/// connection younger than this that a push finds gone may be one still
/// connecting: it is left for its `$disconnect`, which always follows.
const CONNECT_WINDOW_MS: u64 = 30_000;

#[derive(Debug, Clone)]
pub struct ChatConfig {
    /// Deliveries in flight at once during one fan-out.
    pub max_in_flight: usize,
    /// The web pages that may connect (any, by default).
    pub origins: OriginPolicy,
    /// How fast one connection, and one client address, may act and
    /// connect.
    pub limits: Limits,
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 64,
            origins: OriginPolicy::default(),
            limits: Limits::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The client asked for something it cannot have; it is told why.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The store failed; the client gets an `internal` error.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Over a rate limit; allowed again after `retry_after_ms`.
    #[error("rate limited for {retry_after_ms} ms")]
    RateLimited { retry_after_ms: u64 },
}

pub struct Chat<S, P> {
    store: S,
    pusher: P,
    config: ChatConfig,
}

impl<S: Store, P: Pusher> Chat<S, P> {
    pub fn new(store: S, pusher: P, config: ChatConfig) -> Self {
        Self {
            store,
            pusher,
            config,
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn pusher(&self) -> &P {
        &self.pusher
    }

    /// Handles one API Gateway WebSocket event, whatever its route, and
    /// tells the room of a connect-time join before answering.
    pub async fn handle(&self, event: ApiGatewayWebsocketProxyRequest) -> ApiGatewayProxyResponse {
        let (response, arrival) = self.handle_deferring(event).await;
        if let Some(arrival) = arrival {
            self.announce_arrival(&arrival).await;
        }
        response
    }

    /// Handles one event and answers at once, leaving a connect-time join's
    /// announcement to the caller ([`Chat::announce_arrival`]): API Gateway
    /// completes a handshake only when `$connect` answers, and telling a room
    /// of thousands takes seconds. On AWS it runs in an invocation of its own.
    pub async fn handle_deferring(
        &self,
        event: ApiGatewayWebsocketProxyRequest,
    ) -> (ApiGatewayProxyResponse, Option<Arrival>) {
        let context = &event.request_context;
        let Some(connection_id) = context.connection_id.as_deref() else {
            return (response(400, "the event has no connectionId"), None);
        };
        let route = context.route_key.as_deref().unwrap_or("$default");
        match (context.event_type.as_deref(), route) {
            (Some("CONNECT"), _) | (None, "$connect") => {
                // Present but unreadable (not ASCII) is not absent: it is
                // no origin anyone allowed.
                let header = |name| {
                    event
                        .headers
                        .get(name)
                        .map(|v| v.to_str().unwrap_or("unreadable"))
                };
                let origin = header("origin");
                if !self.config.origins.allows(origin, header("host")) {
                    // Before anything is recorded: the socket never opens.
                    tracing::info!(connection_id, origin, "connect refused: origin not allowed");
                    return (
                        response(403, "pages from this origin may not connect"),
                        None,
                    );
                }
                let connected_at = u64::try_from(context.connected_at)
                    .ok()
                    .filter(|&at| at > 0)
                    .unwrap_or_else(now_ms);
                let query = |key| event.query_string_parameters.first(key);
                let client = context.identity.source_ip.as_deref().and_then(client_key);
                let connecting = Connecting {
                    connection_id,
                    connected_at,
                    client: client.as_deref(),
                    room: query("room"),
                    name: query("name"),
                };
                self.connect_deferring(&connecting).await
            }
            (Some("DISCONNECT"), _) | (None, "$disconnect") => {
                (self.disconnect(connection_id).await, None)
            }
            _ => {
                let frame = match (&event.body, event.is_base64_encoded) {
                    (_, true) => Err(ProtocolError::bad_request(
                        "binary frames are not supported; send JSON text frames",
                    )),
                    (Some(body), false) => ClientFrame::parse(body),
                    (None, false) => Err(ProtocolError::bad_request("empty frame")),
                };
                (self.message(connection_id, route, frame).await, None)
            }
        }
    }

    /// `$connect`: records the connection, joining `?room=` (as `?name=`) if
    /// given. API Gateway cannot push to a socket during its `$connect`, so the
    /// joiner gets no `joined` frame; the others hear of it.
    pub async fn connect(&self, connecting: &Connecting<'_>) -> ApiGatewayProxyResponse {
        let (response, arrival) = self.connect_deferring(connecting).await;
        if let Some(arrival) = arrival {
            self.announce_arrival(&arrival).await;
        }
        response
    }

    /// `$connect` without telling the room of a `?room=` join: that is the
    /// [`Arrival`] returned.
    async fn connect_deferring(
        &self,
        connecting: &Connecting<'_>,
    ) -> (ApiGatewayProxyResponse, Option<Arrival>) {
        let connection_id = connecting.connection_id;
        let membership = match connecting
            .room
            .map(|room| parse_membership(room, connecting.name))
            .transpose()
        {
            Ok(membership) => membership,
            Err(error) => {
                tracing::info!(connection_id, code = %error.code, "connect refused");
                return (response(400, &error.message), None);
            }
        };
        // The client's limits: handshakes on a bucket of their own, and a
        // `?room=` join counted like any other.
        let limits = &self.config.limits;
        let limited = limits.connection.is_some() || limits.handshakes.is_some();
        let full_again_us = match connecting.client.filter(|_| limited) {
            Some(client) => match self
                .store
                .admit_client(client, &self.config.limits, membership.is_some(), now_us())
                .await
            {
                Ok(ClientAdmission::Admitted { full_again_us }) => full_again_us,
                Ok(ClientAdmission::Limited) => {
                    tracing::info!(connection_id, client, "connect refused: rate limited");
                    let mut refused = response(
                        429,
                        "too many connections from your address; wait a few seconds",
                    );
                    refused.headers.insert(
                        aws_lambda_events::http::header::RETRY_AFTER,
                        aws_lambda_events::http::HeaderValue::from_static("5"),
                    );
                    return (refused, None);
                }
                Err(error) => {
                    tracing::error!(connection_id, %error, "connect failed");
                    return (response(500, "internal error"), None);
                }
            },
            None => 0,
        };
        let connection = NewConnection {
            connection_id,
            connected_at: connecting.connected_at,
            client: connecting.client,
            full_again_us,
            membership: membership.as_ref().map(|(room, name)| (room, name)),
        };
        match self.store.add_connection(&connection).await {
            Ok(()) => {
                tracing::info!(
                    connection_id,
                    room = membership.as_ref().map(|m| m.0.as_str()),
                    "connected"
                );
                let arrival = match membership {
                    // Told only if it is the name's first connection there.
                    Some((room, name)) if self.arrives(room.as_str(), name.as_str()).await => {
                        Some(Arrival {
                            connection_id: connection_id.to_owned(),
                            room: room.as_str().to_owned(),
                            name: name.as_str().to_owned(),
                        })
                    }
                    _ => None,
                };
                (response(200, "connected"), arrival)
            }
            Err(error) => {
                tracing::error!(connection_id, %error, "connect failed");
                // No `$disconnect` follows a failed `$connect`: a record
                // written before the failure would be a ghost member.
                if let Err(error) = self.store.remove_connection(connection_id).await {
                    tracing::warn!(connection_id, %error, "could not undo a failed connect");
                }
                (response(500, "internal error"), None)
            }
        }
    }

    /// Tells a room of a connect-time join. A failure costs only the
    /// notice: the connection is in the room either way.
    pub async fn announce_arrival(&self, arrival: &Arrival) {
        // On AWS this runs in an invocation of its own, which may come late
        // (a cold start, a throttled queue): the connection may have left,
        // or gone, by then, and a join after its leave would be a ghost.
        match self.store.connection(&arrival.connection_id).await {
            Ok(Some(now))
                if now.room.as_deref() == Some(arrival.room.as_str())
                    && now.name.as_deref() == Some(arrival.name.as_str()) => {}
            Ok(_) => {
                tracing::info!(
                    connection_id = arrival.connection_id,
                    "moved on before its connect was announced"
                );
                return;
            }
            Err(error) => {
                tracing::warn!(connection_id = arrival.connection_id, %error, "could not announce a connect");
                return;
            }
        }
        let arrived = Change::Arrived {
            connection_id: &arrival.connection_id,
            name: &arrival.name,
        };
        let announced = self.announce(&arrival.room, arrived).await;
        if let Err(error) = announced {
            tracing::warn!(connection_id = arrival.connection_id, %error, "could not announce a connect");
        }
    }

    /// `$disconnect`: forgets the connection and tells its room.
    pub async fn disconnect(&self, connection_id: &str) -> ApiGatewayProxyResponse {
        match self.forget(connection_id).await {
            Ok(()) => {
                tracing::info!(connection_id, "disconnected");
                response(200, "disconnected")
            }
            Err(error) => {
                tracing::error!(connection_id, %error, "disconnect failed");
                response(500, "internal error")
            }
        }
    }

    /// Every other route: acts on one client frame, answering anything it
    /// cannot act on with an `error` frame. The socket stays open either way.
    pub async fn message(
        &self,
        connection_id: &str,
        route: &str,
        frame: Result<ClientFrame, ProtocolError>,
    ) -> ApiGatewayProxyResponse {
        let frame = frame.and_then(|frame| on_its_route(route, frame));
        let action = frame.as_ref().ok().map(ClientFrame::action);
        // A refused message names its nonce, so the client knows which.
        let nonce = match &frame {
            Ok(ClientFrame::SendMessage { nonce, .. }) => nonce.clone(),
            _ => None,
        };
        let result = match frame {
            Ok(ClientFrame::Join { room, name }) => self.join(connection_id, room, name).await,
            Ok(ClientFrame::SendMessage { data, nonce }) => {
                self.send_message(connection_id, data, nonce).await
            }
            Ok(ClientFrame::Leave) => self.leave(connection_id).await,
            Ok(ClientFrame::History { before }) => self.history(connection_id, before).await,
            Ok(ClientFrame::Members) => self.members(connection_id).await,
            Ok(ClientFrame::Ping) => self.ping(connection_id).await,
            Err(error) => Err(error.into()),
        };
        // The refusal names what it refuses, when that is known.
        let refusal = |code, message: String, retry_after_ms| ServerFrame::Error {
            code,
            message,
            action: action.map(str::to_owned),
            retry_after_ms,
            nonce: nonce.clone(),
        };
        let refused = match result {
            Ok(()) => return response(200, "ok"),
            Err(ChatError::Store(error)) => {
                tracing::error!(connection_id, route, %error, "request failed");
                let frame = refusal(
                    ErrorCode::Internal,
                    "the server could not complete the request; try again".to_owned(),
                    None,
                );
                self.reply(connection_id, &frame).await;
                return response(500, "internal error");
            }
            Err(ChatError::Protocol(error)) => {
                tracing::info!(connection_id, route, code = %error.code, "request refused");
                refusal(error.code, error.message, None)
            }
            Err(ChatError::RateLimited { retry_after_ms }) => {
                tracing::info!(connection_id, route, retry_after_ms, "request rate limited");
                refusal(
                    ErrorCode::RateLimited,
                    "you are going too fast: this was not done; wait a moment and try again"
                        .to_owned(),
                    Some(retry_after_ms),
                )
            }
        };
        if self.refused_too_often(connection_id).await {
            return response(200, "closed");
        }
        self.reply(connection_id, &refused).await;
        response(200, "refused")
    }

    /// Counts a refusal, and closes the connection instead of answering once
    /// it has had [`REFUSALS_BEFORE_CLOSE`] within a minute (admitted
    /// requests in between change nothing: a script cannot buy more
    /// refusals with a ping now and then): on AWS every refused
    /// frame still costs an invocation, a write and a post, and a client
    /// that keeps asking for what it cannot have (a script, a bug in a loop)
    /// would cost that for as long as it likes. Reconnecting is held back by
    /// the per-address handshake limit.
    async fn refused_too_often(&self, connection_id: &str) -> bool {
        let refusals = match self.store.note_refusal(connection_id, now_ms()).await {
            Ok(refusals) => refusals,
            Err(error) => {
                tracing::warn!(connection_id, %error, "could not count a refusal");
                return false;
            }
        };
        if refusals < REFUSALS_BEFORE_CLOSE {
            return false;
        }
        tracing::info!(
            connection_id,
            refusals,
            "closing a connection whose requests keep being refused"
        );
        if let Err(error) = self.pusher.disconnect(connection_id).await {
            tracing::warn!(connection_id, %error, "could not close a connection");
        }
        true
    }

    /// `ping`: a `pong`, counted against the rate limit like any action: a
    /// flood of pings costs an invocation and a post each.
    async fn ping(&self, connection_id: &str) -> Result<(), ChatError> {
        self.admit_action(connection_id).await?;
        self.reply(connection_id, &ServerFrame::Pong).await;
        Ok(())
    }

    /// Counts an action that needs nothing of the connection's record
    /// against the rate limit: a membership change (each is announced to a
    /// whole room, so a flood of joins and leaves is as loud as a flood of
    /// messages, and dearer) or a ping.
    async fn admit_action(&self, connection_id: &str) -> Result<(), ChatError> {
        let limits = &self.config.limits;
        if limits.connection.is_none() && limits.client.is_none() {
            return Ok(());
        }
        match self
            .store
            .admit_message(connection_id, limits, now_us())
            .await?
        {
            Admission::Limited { retry_after_ms } => Err(ChatError::RateLimited { retry_after_ms }),
            // Unknown connections are told so by the change itself.
            Admission::Admitted(_) | Admission::Unknown => Ok(()),
        }
    }

    async fn join(&self, connection_id: &str, room: Room, name: Name) -> Result<(), ChatError> {
        self.admit_action(connection_id).await?;
        let Some(previous) = self.store.join_room(connection_id, &room, &name).await? else {
            return Err(not_connected());
        };
        let rejoin = previous.room.as_deref() == Some(room.as_str())
            && previous.name.as_deref() == Some(name.as_str());
        // Counted at once, whatever fails later: a retried join is a rejoin,
        // which counts nothing.
        let first = !rejoin && self.arrival_counted(connection_id, &room, &name).await;
        if let (false, Some(old_room), Some(old_name)) = (rejoin, &previous.room, &previous.name)
            && let Err(error) = self.depart(connection_id, old_room, old_name).await
        {
            tracing::warn!(connection_id, %error, "could not tell the room left");
        }

        // Membership is written before history is read, and a sender saves a
        // message before it reads the members, so every message reaches a
        // joiner one way or the other (rarely both: clients dedupe by id).
        let members = self.store.room_members(room.as_str()).await?;
        let others = others(&members, connection_id);
        // One more than a page tells whether older ones remain.
        let mut history = self
            .store
            .recent_messages(room.as_str(), HISTORY_LEN + 1)
            .await?;
        let more = history.len() > HISTORY_LEN;
        if more {
            history.remove(0);
        }
        let member_names = people(std::iter::once(name.as_str()).chain(others.map(|m| &*m.name)));
        let frame = joined::joined_frame(room.as_str(), name.as_str(), member_names, history, more);
        self.push_one(connection_id, frame).await;
        if first {
            let arrived = Change::Arrived {
                connection_id,
                name: name.as_str(),
            };
            let gone = self.tell_room(room.as_str(), &members, arrived).await;
            self.forget_gone_members(gone).await;
        }
        tracing::info!(connection_id, room = room.as_str(), rejoin, "joined");
        Ok(())
    }

    /// The sender of a request that reads or posts to its room, counted
    /// against the rate limit in the same step; refused when over it or not
    /// recorded.
    async fn admitted(&self, connection_id: &str, now_us: u64) -> Result<Connection, ChatError> {
        match self
            .store
            .admit_message(connection_id, &self.config.limits, now_us)
            .await?
        {
            Admission::Admitted(connection) => Ok(connection),
            Admission::Limited { retry_after_ms } => Err(ChatError::RateLimited { retry_after_ms }),
            Admission::Unknown => Err(not_in_room()),
        }
    }

    /// `members`: the names of the people in the asker's room, as many as
    /// fit a frame. A big room hears no one come and go; this is how its
    /// member list is brought up to date. It counts against the rate limit
    /// like a message: each is a Query of the whole room.
    async fn members(&self, connection_id: &str) -> Result<(), ChatError> {
        let connection = self.admitted(connection_id, now_us()).await?;
        let Some((room, name)) = connection.room.zip(connection.name) else {
            return Err(not_in_room());
        };
        let members = self.store.room_members(&room).await?;
        // The asker first, even if an eventually consistent index has not
        // caught up with its join yet.
        let names = people(
            std::iter::once(name.as_str()).chain(others(&members, connection_id).map(|m| &*m.name)),
        );
        self.push_one(connection_id, joined::members_frame(&room, names))
            .await;
        Ok(())
    }

    /// `history`: a page of the room's older messages, to the asker only.
    /// It counts against the rate limit like a message: each is a Query.
    async fn history(&self, connection_id: &str, before: Option<String>) -> Result<(), ChatError> {
        let connection = self.admitted(connection_id, now_us()).await?;
        let Some(room) = connection.room else {
            return Err(not_in_room());
        };
        // One more than a page tells whether older ones remain.
        let mut messages = match &before {
            Some(before) => {
                self.store
                    .messages_before(&room, before, HISTORY_LEN + 1)
                    .await?
            }
            None => self.store.recent_messages(&room, HISTORY_LEN + 1).await?,
        };
        let more = messages.len() > HISTORY_LEN;
        if more {
            messages.remove(0);
        }
        let frame = joined::history_frame(&room, messages, more);
        self.push_one(connection_id, frame).await;
        Ok(())
    }

    async fn send_message(
        &self,
        connection_id: &str,
        data: String,
        nonce: Option<String>,
    ) -> Result<(), ChatError> {
        let now_us = now_us();
        let connection = self.admitted(connection_id, now_us).await?;
        let Some((room, name)) = connection.room.zip(connection.name) else {
            return Err(not_in_room());
        };
        let ts = now_us / 1000;
        let message = ChatMessage {
            id: crate::ids::message_id(ts),
            room,
            name,
            data,
            ts,
            nonce,
        };
        self.store.save_message(&message).await?;
        let members = self.store.room_members(&message.room).await?;
        let room = message.room.clone();
        let frame = ServerFrame::Message(message);
        // The sender is included even if an eventually consistent index has
        // not caught up with its join yet.
        let recipients: Vec<&str> = std::iter::once(connection_id)
            .chain(others(&members, connection_id).map(|m| &*m.connection_id))
            .collect();
        self.deliver(&recipients, Frame::from(&frame)).await;
        tracing::debug!(
            connection_id,
            room,
            recipients = members.len(),
            "message delivered"
        );
        Ok(())
    }

    async fn leave(&self, connection_id: &str) -> Result<(), ChatError> {
        self.admit_action(connection_id).await?;
        let previous = self.store.leave_room(connection_id).await?;
        let Some((room, name)) = previous.and_then(|c| c.room.zip(c.name)) else {
            return Err(not_in_room());
        };
        self.reply(connection_id, &ServerFrame::Left { room: room.clone() })
            .await;
        self.depart(connection_id, &room, &name).await?;
        tracing::info!(connection_id, room, "left");
        Ok(())
    }

    /// Removes a connection's record and tells its room it left.
    async fn forget(&self, connection_id: &str) -> Result<(), StoreError> {
        let Some(previous) = self.store.remove_connection(connection_id).await? else {
            return Ok(());
        };
        if let Some((room, name)) = previous.room.zip(previous.name) {
            self.depart(connection_id, &room, &name).await?;
        }
        Ok(())
    }

    /// Tells the others in `room` of `change`.
    async fn announce(&self, room: &str, change: Change<'_>) -> Result<(), StoreError> {
        let members = self.store.room_members(room).await?;
        let gone = self.tell_room(room, &members, change).await;
        self.forget_gone_members(gone).await;
        Ok(())
    }

    /// Counts a connection of `name` into `room`: whether it is the name's
    /// first there, and the room is to be told. A store failure tells it:
    /// a name told twice is harmless (the web app keeps names as a set), one
    /// never told is wrong.
    async fn arrives(&self, room: &str, name: &str) -> bool {
        match self.store.count_presence(room, name, 1, now_ms()).await {
            Ok(count) => count <= 1,
            Err(error) => {
                tracing::warn!(room, %error, "could not count an arrival");
                true
            }
        }
    }

    /// Counts a connection that just joined `room` as `name` into its
    /// presence: whether it is the name's first there. On AWS its
    /// `$disconnect` (or a `leave`) may run at the same moment and be counted
    /// first; the record, read again, tells: a connection no longer there
    /// is counted out again, and nobody told.
    async fn arrival_counted(&self, connection_id: &str, room: &Room, name: &Name) -> bool {
        let first = self.arrives(room.as_str(), name.as_str()).await;
        match self.store.connection(connection_id).await {
            Ok(Some(record))
                if record.room.as_deref() == Some(room.as_str())
                    && record.name.as_deref() == Some(name.as_str()) =>
            {
                first
            }
            Ok(_) => {
                self.departs(room.as_str(), name.as_str()).await;
                false
            }
            Err(error) => {
                tracing::warn!(connection_id, %error, "could not read a joiner's record");
                first
            }
        }
    }

    /// Counts a connection of `name` out of `room`: whether it was the
    /// name's last there (told, too, when the store fails).
    async fn departs(&self, room: &str, name: &str) -> bool {
        match self.store.count_presence(room, name, -1, now_ms()).await {
            Ok(count) => count <= 0,
            Err(error) => {
                tracing::warn!(room, %error, "could not count a departure");
                true
            }
        }
    }

    /// A connection of `name` left `room`: the room is told if it was the
    /// name's last connection there.
    async fn depart(&self, connection_id: &str, room: &str, name: &str) -> Result<(), StoreError> {
        if self.departs(room, name).await {
            self.announce(room, Change::left(connection_id, name))
                .await?;
        }
        Ok(())
    }

    /// Tells `members` (but the connections that came or went) of `change`;
    /// returns the recipients found gone.
    ///
    /// Presence is about people, not connections: the callers tell only a
    /// name's first arrival and last departure ([`Store::count_presence`]),
    /// so one person's second tab, or a reconnect whose new connection
    /// comes before the old one goes, costs no post at all.
    ///
    /// In a room of more than [`PRESENCE_NOTICES_UP_TO`] connections
    /// (before and after the change), where a notice to everyone for every
    /// arrival would square the room's cost (API Gateway reconnects
    /// everyone every 2 hours), only the count goes out, at most once a
    /// minute and less often the bigger the room ([`count_every_ms`]).
    async fn tell_room(&self, room: &str, members: &[Member], change: Change<'_>) -> Vec<String> {
        let (event, movers, names): (_, &[&str], Vec<String>) = match &change {
            Change::Arrived {
                connection_id,
                name,
            } => (
                PresenceEvent::Join,
                std::slice::from_ref(connection_id),
                vec![(*name).to_owned()],
            ),
            Change::Left {
                connection_ids,
                names,
            } => (PresenceEvent::Leave, connection_ids, names.clone()),
        };
        let staying = || {
            members
                .iter()
                .filter(|member| !movers.contains(&&*member.connection_id))
        };
        let recipients: Vec<&str> = staying().map(|member| &*member.connection_id).collect();
        let mut people: std::collections::HashSet<&str> =
            staying().map(|member| &*member.name).collect();
        if event == PresenceEvent::Join {
            people.extend(names.iter().map(String::as_str));
        } else {
            // An index that lags may still list them.
            for name in &names {
                people.remove(name.as_str());
            }
        }
        let count = people.len();
        // Staying connections are the room's size before an arrival and
        // after a departure: the smaller side of the change.
        if recipients.len() > PRESENCE_NOTICES_UP_TO {
            match self
                .store
                .claim_count_turn(room, now_ms(), count_every_ms(recipients.len()))
                .await
            {
                Ok(true) => {
                    let frame = Frame::from(&ServerFrame::Count {
                        room: room.to_owned(),
                        count,
                    });
                    return self
                        .pusher
                        .push_all(&recipients, &frame, self.config.max_in_flight)
                        .await;
                }
                Ok(false) => return Vec::new(),
                Err(error) => {
                    tracing::warn!(room, %error, "could not tell a room its count");
                    return Vec::new();
                }
            }
        }
        // A frame stays within API Gateway's 32 KB: a name is at most 32
        // characters of up to 4 bytes.
        if names.len() > NAMES_PER_PRESENCE * MAX_PRESENCE_FRAMES {
            // Each frame is a fan-out to the whole room; past this many the
            // function's timeout is near. The count stays true, and the
            // names come right with the next join.
            tracing::warn!(
                room,
                names = names.len(),
                "too many came or went at once to name them all"
            );
        }
        let mut gone = Vec::new();
        for names in names.chunks(NAMES_PER_PRESENCE).take(MAX_PRESENCE_FRAMES) {
            let presence = Frame::from(&ServerFrame::Presence {
                event,
                room: room.to_owned(),
                name: names[0].clone(),
                count,
                also: names[1..].to_vec(),
            });
            gone.extend(
                self.pusher
                    .push_all(&recipients, &presence, self.config.max_in_flight)
                    .await,
            );
        }
        gone
    }

    /// Sends one frame, serialized once, to every recipient at once, then
    /// forgets the recipients that turned out to be gone, telling their rooms.
    async fn deliver(&self, recipients: &[&str], frame: Frame) {
        let gone = self
            .pusher
            .push_all(recipients, &frame, self.config.max_in_flight)
            .await;
        self.forget_gone_members(gone).await;
    }

    /// Forgets connections a fan-out found gone, and tells their rooms.
    ///
    /// The gone members one fan-out found are forgotten together: one
    /// removal pass, then per room one member query and one presence frame
    /// that names them all. A room of thousands with a few stale members
    /// costs one more fan-out, not one per stale member. Telling a room can
    /// reveal more gone members; the loop ends because each connection can
    /// be removed only once.
    async fn forget_gone_members(&self, mut gone: Vec<String>) {
        while !gone.is_empty() {
            // Each presence frame's fan-out reports the same dead ids again.
            gone.sort_unstable();
            gone.dedup();
            let left = self.forget_all_gone(std::mem::take(&mut gone)).await;
            for (room, leavers) in left {
                // Counted out whatever happens next (their records are gone:
                // nothing else will); only the names whose last connection
                // this was are told.
                let mut names = Vec::new();
                for (_, name) in &leavers {
                    if self.departs(&room, name).await {
                        names.push(name.clone());
                    }
                }
                if names.is_empty() {
                    continue;
                }
                let members = match self.store.room_members(&room).await {
                    Ok(members) => members,
                    Err(error) => {
                        tracing::warn!(room, %error, "could not tell a room who is gone");
                        continue;
                    }
                };
                let left = Change::Left {
                    connection_ids: leavers.iter().map(|(id, _)| id.as_str()).collect(),
                    names,
                };
                gone.extend(self.tell_room(&room, &members, left).await);
            }
        }
    }

    /// Removes the records of connections a push found gone (all at once,
    /// as many in flight as a fan-out), and returns who was in which room:
    /// room → (connection id, name).
    async fn forget_all_gone(&self, gone: Vec<String>) -> BTreeMap<String, Vec<(String, String)>> {
        let connected_before = now_ms().saturating_sub(CONNECT_WINDOW_MS);
        let mut forgotten = futures::stream::iter(gone)
            .map(|connection_id| async move {
                let previous = self
                    .store
                    .forget_gone(&connection_id, connected_before)
                    .await;
                (connection_id, previous)
            })
            .buffer_unordered(self.config.max_in_flight.max(1));
        let mut left: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        while let Some((connection_id, previous)) = forgotten.next().await {
            match previous {
                Ok(Some(previous)) => {
                    tracing::info!(connection_id, "forgot a gone connection");
                    if let Some((room, name)) = previous.room.zip(previous.name) {
                        left.entry(room).or_default().push((connection_id, name));
                    }
                }
                // Already forgotten, or too young to be called gone.
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(connection_id, %error, "could not forget a gone connection")
                }
            }
        }
        left
    }

    async fn reply(&self, connection_id: &str, frame: &ServerFrame) {
        self.push_one(connection_id, Frame::from(frame)).await;
    }

    async fn push_one(&self, connection_id: &str, frame: Frame) {
        if let Err(error) = self.pusher.push(connection_id, frame).await {
            tracing::info!(connection_id, %error, "reply not delivered");
        }
    }
}

/// Who came or went, for [`Chat::tell_room`].
enum Change<'a> {
    /// A connection joined a room as `name`, the name's first there.
    Arrived {
        connection_id: &'a str,
        name: &'a str,
    },
    /// Connections left a room; `names` are those of theirs that are no
    /// longer there.
    Left {
        connection_ids: Vec<&'a str>,
        names: Vec<String>,
    },
}

impl<'a> Change<'a> {
    fn left(connection_id: &'a str, name: &str) -> Self {
        Self::Left {
            connection_ids: vec![connection_id],
            names: vec![name.to_owned()],
        }
    }
}

/// Names, each once, in the order first met: a person with two tabs is
/// one person.
fn people<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    names
        .filter(|name| seen.insert(*name))
        .map(str::to_owned)
        .collect()
}

/// The actions with a route of their own (API Gateway's, in
/// `template.yaml`, and chat-local's).
pub const ROUTED_ACTIONS: [&str; 4] = ["join", "sendmessage", "leave", "history"];

/// `frame`, if it came by its own route: on AWS each route's function may
/// do only what its route does, so a frame reaching another (one crafted so
/// that API Gateway's route selection and this parser read its `action`
/// differently) is refused rather than half done.
pub fn on_its_route(route: &str, frame: ClientFrame) -> Result<ClientFrame, ProtocolError> {
    let action = frame.action();
    let routed = ROUTED_ACTIONS.contains(&action);
    if (route == "$default" && !routed) || route == action {
        Ok(frame)
    } else {
        Err(ProtocolError::bad_request(format!(
            "a {action} frame came by the {route} route; send plain JSON with one \"action\""
        )))
    }
}

fn parse_membership(room: &str, name: Option<&str>) -> Result<(Room, Name), ProtocolError> {
    Ok((
        Room::parse(room)?,
        Name::parse(name.unwrap_or(DEFAULT_NAME))?,
    ))
}

fn others<'a>(members: &'a [Member], connection_id: &'a str) -> impl Iterator<Item = &'a Member> {
    members
        .iter()
        .filter(move |member| &*member.connection_id != connection_id)
}

fn not_in_room() -> ChatError {
    ProtocolError::new(ErrorCode::NotInRoom, "join a room first").into()
}

fn not_connected() -> ChatError {
    ProtocolError::new(
        ErrorCode::Internal,
        "this connection is not registered; reconnect",
    )
    .into()
}

fn response(status_code: i64, body: &str) -> ApiGatewayProxyResponse {
    let mut response = ApiGatewayProxyResponse::default();
    response.status_code = status_code;
    response.body = Some(Body::Text(body.to_owned()));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::limits::{NAME_MAX_CHARS, ROOM_MAX_LEN, SERVER_FRAME_MAX_BYTES};

    #[test]
    fn a_full_presence_frame_fits_api_gateways_frame_limit() {
        // The longest names in the widest characters, in the longest room.
        let name = "𝄞".repeat(NAME_MAX_CHARS);
        let frame = Frame::from(&ServerFrame::Presence {
            event: PresenceEvent::Leave,
            room: "r".repeat(ROOM_MAX_LEN),
            name: name.clone(),
            count: usize::MAX,
            also: vec![name; NAMES_PER_PRESENCE - 1],
        });
        assert!(
            frame.len() <= SERVER_FRAME_MAX_BYTES,
            "{} bytes",
            frame.len()
        );
    }
}
