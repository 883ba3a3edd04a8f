//! The chat wire protocol, shared by the browser app and the server so the two
//! cannot drift apart.
//!
//! Every frame is a JSON text frame. Clients send [`ClientFrame`]s, routed by
//! their `action` field (API Gateway's `$request.body.action`); the server
//! answers with [`ServerFrame`]s, tagged by their `type` field. The limits that
//! both sides enforce live in [`limits`], and the validated values in
//! [`Room`] and [`Name`].

mod client;
mod server;
mod validate;

pub use client::{ClientFrame, is_nonce};
pub use server::{ChatMessage, ErrorCode, HistoryEntry, PresenceEvent, ServerFields, ServerFrame};
pub use validate::{Name, ProtocolError, Room, check_message_data};

/// The protocol's limits, in one place so the UI can show them as well.
pub mod limits {
    /// Longest room id, in bytes (rooms are ASCII).
    pub const ROOM_MAX_LEN: usize = 64;
    /// Longest display name, in characters after trimming.
    pub const NAME_MAX_CHARS: usize = 32;
    /// Largest message body, in bytes of UTF-8.
    pub const DATA_MAX_BYTES: usize = 4096;
    /// Largest frame the server sends: API Gateway's frame size limit, which
    /// applies to posts through its Management API too. `joined` and
    /// `history` carry fewer messages when more would not fit.
    pub const SERVER_FRAME_MAX_BYTES: usize = 32 * 1024;
    /// Largest message a client may send (in one or more frames): API
    /// Gateway's message size limit.
    pub const CLIENT_MESSAGE_MAX_BYTES: usize = 128 * 1024;
    /// How many past messages a joiner receives at most, and how many one
    /// `history` request returns at most.
    pub const HISTORY_LEN: usize = 50;
    /// Longest message id a `history` request may name.
    pub const MESSAGE_ID_MAX_LEN: usize = 64;
    /// Longest `nonce` a client may put on a message.
    pub const NONCE_MAX_LEN: usize = 32;
}
