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

#[cfg(test)]
mod tests;

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

/// How fast one connection may send messages: `burst` at once, then
/// `per_second` on average (a token bucket).
///
/// Kept as GCRA (the generic cell rate algorithm): one timestamp per
/// connection, the moment its bucket would be full again, instead of a token
/// count and a refill time. Both adapters use it; DynamoDB can evaluate it in
/// a condition expression.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Microseconds one message uses up.
    interval_us: u64,
    /// How far ahead of now a connection's full-again time may be before its
    /// next message is refused: `burst - 1` messages' worth.
    tolerance_us: u64,
}

impl RateLimit {
    /// `None` for a `per_second` of 0 (no limit).
    pub fn new(per_second: f64, burst: u32) -> Result<Option<Self>, String> {
        if per_second == 0.0 {
            return Ok(None);
        }
        if !(per_second.is_finite() && per_second > 0.0) {
            return Err(format!(
                "the rate limit must be a number of messages per second, 0 for none, not {per_second}"
            ));
        }
        if burst == 0 {
            return Err("the burst must be at least 1 message".into());
        }
        // At most a day per message: beyond that the arithmetic would only
        // approach overflow, not limit anything more.
        let interval_us = (1_000_000.0 / per_second).round().clamp(1.0, 86_400e6) as u64;
        Ok(Some(Self {
            interval_us,
            tolerance_us: interval_us.saturating_mul(u64::from(burst) - 1),
        }))
    }

    /// The limit from `RATE_LIMIT` (messages per second, 0 for none) and
    /// `RATE_BURST`, each defaulting to [`RateLimit::DEFAULT`]'s.
    pub fn from_env() -> Result<Option<Self>, String> {
        fn var<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
            match std::env::var(name) {
                Ok(value) => value
                    .trim()
                    .parse()
                    .map_err(|_| format!("{name} is not a number: {value:?}")),
                Err(_) => Ok(default),
            }
        }
        let (per_second, burst) = Self::DEFAULT;
        Self::new(var("RATE_LIMIT", per_second)?, var("RATE_BURST", burst)?)
    }

    /// Messages per second and burst, unless configured otherwise: enough
    /// for anyone typing, far too little for a flood.
    pub const DEFAULT: (f64, u32) = (2.0, 10);

    /// The connection's next full-again time if a message sent at `now_us`
    /// is within the limit, given the current one (0 for a fresh
    /// connection); `None` if it is over.
    pub fn admit(&self, full_again_us: u64, now_us: u64) -> Option<u64> {
        let full_again = full_again_us.max(now_us);
        (full_again - now_us <= self.tolerance_us)
            .then(|| full_again.saturating_add(self.interval_us))
    }

    pub fn interval_us(&self) -> u64 {
        self.interval_us
    }

    pub fn tolerance_us(&self) -> u64 {
        self.tolerance_us
    }
}

/// Whether a connection may send a message now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Yes; the connection as recorded.
    Admitted(Connection),
    /// It is over its rate limit: this message is refused.
    Limited,
    /// The connection is not (or no longer) recorded.
    Unknown,
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

    /// Looks up a message's sender and counts the message against `limit`
    /// in the same step, so a rate limit costs no extra round trip.
    fn admit_message(
        &self,
        connection_id: &str,
        limit: Option<&RateLimit>,
        now_us: u64,
    ) -> impl Future<Output = Result<Admission, StoreError>> + Send;

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

    /// Forgets a connection a push found gone, unless it connected at or
    /// after `connected_before` (ms): API Gateway answers 410 Gone for a
    /// connection whose `$connect` is still running, and that one is not
    /// gone. `None` when nothing was forgotten.
    fn forget_gone(
        &self,
        connection_id: &str,
        connected_before: u64,
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

    /// The latest `limit` messages of `room` older than the message with id
    /// `before` (ids sort by time), oldest first: a page of a `history`
    /// request.
    fn messages_before(
        &self,
        room: &str,
        before: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<ChatMessage>, StoreError>> + Send;
}
