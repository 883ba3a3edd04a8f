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
mod history_cache;
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

/// The time within which refusals are counted together
/// ([`Store::note_refusal`]).
pub const REFUSAL_WINDOW_MS: u64 = 60_000;

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

    /// How long until an action would be within the limit again, given
    /// the current full-again time (0 if it is now).
    pub fn retry_after_us(&self, full_again_us: u64, now_us: u64) -> u64 {
        full_again_us
            .saturating_sub(self.tolerance_us)
            .saturating_sub(now_us)
    }

    pub fn interval_us(&self) -> u64 {
        self.interval_us
    }

    pub fn tolerance_us(&self) -> u64 {
        self.tolerance_us
    }
}

/// Every rate limit the chat applies; `None` turns one off.
///
/// A person's allowance lives with their address as well as with their
/// socket: a new socket from an address that recently had one starts with
/// what that address's sockets left (a reconnect refills nothing), and the
/// address as a whole has a cap of its own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// What one connection may do: messages, joins, leaves, history pages.
    pub connection: Option<RateLimit>,
    /// The same for one client address, all its connections together.
    pub client: Option<RateLimit>,
    /// Connections one client address may open (a bucket of its own, so a
    /// reload is never refused for having chatted).
    pub handshakes: Option<RateLimit>,
}

impl Limits {
    /// No limit at all (load tests, benchmarks).
    pub const OFF: Self = Self {
        connection: None,
        client: None,
        handshakes: None,
    };

    /// Per client address, unless configured otherwise: 30 people behind
    /// one NAT address posting every few seconds each (10 a second) stay
    /// well within it; one machine cannot put more than 60 + 20 a second
    /// into a room.
    pub const DEFAULT_CLIENT: (f64, u32) = (20.0, 60);
    /// Handshakes per client address: a classroom opening the page at once,
    /// or reconnecting together after a restart, fits the burst.
    pub const DEFAULT_HANDSHAKES: (f64, u32) = (2.0, 60);

    /// The defaults with the per-connection limit given; a `per_second` of
    /// 0 turns every limit off.
    pub fn with_connection(per_second: f64, burst: u32) -> Result<Self, String> {
        let Some(connection) = RateLimit::new(per_second, burst)? else {
            return Ok(Self::OFF);
        };
        let (client_rate, client_burst) = Self::DEFAULT_CLIENT;
        let (handshake_rate, handshake_burst) = Self::DEFAULT_HANDSHAKES;
        Ok(Self {
            connection: Some(connection),
            client: RateLimit::new(client_rate, client_burst)?,
            handshakes: RateLimit::new(handshake_rate, handshake_burst)?,
        })
    }

    /// The limits from `RATE_LIMIT` and `RATE_BURST` (per connection; a
    /// rate of 0 turns every limit off), `CLIENT_RATE_LIMIT`,
    /// `CLIENT_RATE_BURST`, `HANDSHAKE_RATE_LIMIT` and
    /// `HANDSHAKE_RATE_BURST`, each defaulting to the constants here.
    pub fn from_env() -> Result<Self, String> {
        fn var<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
            match std::env::var(name) {
                Ok(value) => value
                    .trim()
                    .parse()
                    .map_err(|_| format!("{name} is not a number: {value:?}")),
                Err(_) => Ok(default),
            }
        }
        let pair = |rate: &str, burst: &str, (default_rate, default_burst): (f64, u32)| {
            RateLimit::new(var(rate, default_rate)?, var(burst, default_burst)?)
        };
        let Some(connection) = pair("RATE_LIMIT", "RATE_BURST", RateLimit::DEFAULT)? else {
            return Ok(Self::OFF);
        };
        Ok(Self {
            connection: Some(connection),
            client: pair(
                "CLIENT_RATE_LIMIT",
                "CLIENT_RATE_BURST",
                Self::DEFAULT_CLIENT,
            )?,
            handshakes: pair(
                "HANDSHAKE_RATE_LIMIT",
                "HANDSHAKE_RATE_BURST",
                Self::DEFAULT_HANDSHAKES,
            )?,
        })
    }
}

impl Default for Limits {
    fn default() -> Self {
        let (per_second, burst) = RateLimit::DEFAULT;
        Self::with_connection(per_second, burst).expect("the default limits are valid")
    }
}

/// Whom the per-client limits count: an IPv4 address, or an IPv6 /64 (one
/// host usually has a whole /64 to pick addresses from), as text; `None`
/// for a source that is not an address.
pub fn client_key(source_ip: &str) -> Option<String> {
    let ip: std::net::IpAddr = source_ip.trim().parse().ok()?;
    Some(client_of(ip).to_string())
}

/// The address a per-client limit or cap counts `ip` under.
pub fn client_of(ip: std::net::IpAddr) -> std::net::IpAddr {
    use std::net::IpAddr;
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
    }
}

/// A connection to record, as `$connect` admitted it.
#[derive(Debug, Clone, Copy)]
pub struct NewConnection<'a> {
    pub connection_id: &'a str,
    /// Milliseconds since the epoch.
    pub connected_at: u64,
    /// Its [`client_key`], if the source is known.
    pub client: Option<&'a str>,
    /// Where its rate limit starts ([`ClientAdmission::Admitted`]).
    pub full_again_us: u64,
    /// The room it joins at once (`?room=`), as whom.
    pub membership: Option<(&'a Room, &'a Name)>,
}

impl<'a> NewConnection<'a> {
    /// A connection from an unknown source, with a fresh rate limit.
    pub fn new(
        connection_id: &'a str,
        connected_at: u64,
        membership: Option<(&'a Room, &'a Name)>,
    ) -> Self {
        Self {
            connection_id,
            connected_at,
            client: None,
            full_again_us: 0,
            membership,
        }
    }
}

/// Whether a client address may open another connection now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAdmission {
    /// Yes; the new connection's rate limit starts here (what the address's
    /// recent connections left, after a `?room=` join if there is one).
    Admitted { full_again_us: u64 },
    /// The address opens connections (or acts) faster than its limits.
    Limited,
}

/// Whether a connection may send a message now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Yes; the connection as recorded.
    Admitted(Connection),
    /// It is over its rate limit: this message is refused, and one would be
    /// allowed after `retry_after_ms`.
    Limited { retry_after_ms: u64 },
    /// The connection is not (or no longer) recorded.
    Unknown,
}

impl Admission {
    /// Refused for a rate limit that allows the next action in
    /// `retry_after_us` (rounded up to whole milliseconds, never 0: "now"
    /// would only be refused again).
    pub fn limited(retry_after_us: u64) -> Self {
        Self::Limited {
            retry_after_ms: retry_after_us.div_ceil(1000).max(1),
        }
    }
}

/// The persistence the chat handlers need, and nothing more.
///
/// Membership changes return the connection as it was before, so a handler
/// learns the room being left in the same round trip that leaves it.
pub trait Store: Send + Sync + 'static {
    /// Counts a new connection from `client` against the handshake limit
    /// and, when it joins a room at once (`joining`), that join against the
    /// message limits; says where the new connection's rate limit starts.
    fn admit_client(
        &self,
        client: &str,
        limits: &Limits,
        joining: bool,
        now_us: u64,
    ) -> impl Future<Output = Result<ClientAdmission, StoreError>> + Send;

    /// Records a new connection, already in its room when it names one.
    fn add_connection(
        &self,
        connection: &NewConnection<'_>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn connection(
        &self,
        connection_id: &str,
    ) -> impl Future<Output = Result<Option<Connection>, StoreError>> + Send;

    /// Looks up a message's sender and counts the message against the
    /// limits in the same step, so a rate limit costs no extra round trip.
    fn admit_message(
        &self,
        connection_id: &str,
        limits: &Limits,
        now_us: u64,
    ) -> impl Future<Output = Result<Admission, StoreError>> + Send;

    /// Counts a refused request of the connection's (a frame it could not
    /// have, or one over its rate limit) and returns how many it has had
    /// within [`REFUSAL_WINDOW_MS`] of the first of them (a count starts
    /// again with the first refusal after that). 0 when the connection is
    /// not recorded.
    fn note_refusal(
        &self,
        connection_id: &str,
        now_ms: u64,
    ) -> impl Future<Output = Result<u32, StoreError>> + Send;

    /// Counts a connection of `name` into (`delta` 1) or out of (-1)
    /// `room`, and returns how many of that name are there now: a room is
    /// told when a name's first connection arrives and when its last goes
    /// (one person's two tabs, or a reconnect whose old connection has not
    /// closed yet, are one person). One counter per name and room, updated
    /// atomically, so two connections arriving or leaving together never
    /// both stay silent, whatever an index shows.
    fn count_presence(
        &self,
        room: &str,
        name: &str,
        delta: i64,
        now_ms: u64,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;

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

    /// Whether `room`'s count may go out now: true at most once every
    /// `every_ms` per room, whoever asks (a big room's arrivals and
    /// departures are told as a count, and not on every one of them).
    fn claim_count_turn(
        &self,
        room: &str,
        now_ms: u64,
        every_ms: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

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
