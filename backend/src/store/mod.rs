//! Where connections and messages live.
//!
//! Two adapters:
//! - [`dynamodb::DynamoStore`]: everything in DynamoDB, what Lambda runs (and
//!   chat-local with `--store dynamodb`), against the real service or the
//!   `dynoxide` engine chat-local embeds.
//! - [`local::LocalStore`]: chat-local's own. Its sockets live and die with
//!   the process, so connections and rooms are kept in memory; messages still
//!   go to DynamoDB, several at a time ([`group_commit`]), and recent history
//!   is served from memory.

pub mod dynamodb;
pub mod group_commit;
pub mod local;

use std::future::Future;
use std::sync::Arc;

use shared::{ChatMessage, Name, Room};

/// A connection as the store records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub connection_id: String,
    /// The room this connection has joined, if any.
    pub room: Option<String>,
    /// The name it joined under (kept after leaving, for the next join).
    pub name: Option<String>,
    /// Milliseconds since the epoch.
    pub connected_at: u64,
}

/// A room member, as fan-out and the member list need it. Shared strings:
/// an in-memory member list is copied on every join and leave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub connection_id: Arc<str>,
    pub name: Arc<str>,
}

/// A room's members at one moment, shared rather than copied: a fan-out holds
/// it without allocating anything per recipient.
pub type Members = Arc<[Member]>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("DynamoDB {operation} failed: {message}")]
    Backend {
        operation: &'static str,
        message: String,
    },
    #[error("malformed item in {table}: {message}")]
    Malformed { table: String, message: String },
}

/// The persistence the chat handlers need, and nothing more.
///
/// Membership changes return the connection as it was before, so a handler
/// learns the room being left in the same round trip that leaves it.
pub trait Store: Send + Sync + 'static {
    /// Records a new connection, already in `membership`'s room when given.
    fn add_connection(
        &self,
        connection_id: &str,
        connected_at: u64,
        membership: Option<(&Room, &Name)>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn connection(
        &self,
        connection_id: &str,
    ) -> impl Future<Output = Result<Option<Connection>, StoreError>> + Send;

    /// Puts the connection in `room` as `name`; `None` when the connection is
    /// not (or no longer) recorded.
    fn join_room(
        &self,
        connection_id: &str,
        room: &Room,
        name: &Name,
    ) -> impl Future<Output = Result<Option<Connection>, StoreError>> + Send;

    /// Takes the connection out of its room; `None` when it is not recorded.
    fn leave_room(
        &self,
        connection_id: &str,
    ) -> impl Future<Output = Result<Option<Connection>, StoreError>> + Send;

    /// Forgets the connection; `None` when it was already gone.
    fn remove_connection(
        &self,
        connection_id: &str,
    ) -> impl Future<Output = Result<Option<Connection>, StoreError>> + Send;

    /// Every member of `room`, across as many pages as it takes.
    fn room_members(&self, room: &str) -> impl Future<Output = Result<Members, StoreError>> + Send;

    fn save_message(
        &self,
        message: &ChatMessage,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The latest `limit` messages of `room`, oldest first.
    fn recent_messages(
        &self,
        room: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<ChatMessage>, StoreError>> + Send;
}
