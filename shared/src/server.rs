use std::fmt;

#[cfg(feature = "serde")]
use serde::{Deserialize, Serialize};

/// A frame from the server, tagged by its `type` field.
///
/// Read through [`ServerFields`], a flat struct: serde's derive for
/// internally tagged enums buffers every field into an intermediate tree, and
/// the browser fills it from its own `JSON.parse` without serde at all.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(
    feature = "serde",
    serde(tag = "type", rename_all = "snake_case", try_from = "ServerFields")
)]
pub enum ServerFrame {
    /// To the joiner only: who is here and what was said lately.
    Joined {
        room: String,
        name: String,
        /// Names of the members, the joiner included; cut short only when the
        /// frame would outgrow its size limit, in which case `count` still
        /// tells how many there are.
        members: Vec<String>,
        count: usize,
        /// The latest messages, oldest first.
        history: Vec<HistoryEntry>,
        /// Older messages than these remain (a `history` request gets
        /// them). Left out when false.
        #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "is_false"))]
        more: bool,
    },
    /// To every member of the room, the sender included.
    Message(ChatMessage),
    /// To the other members when someone arrives or goes.
    Presence {
        event: PresenceEvent,
        room: String,
        name: String,
        /// Members after the event.
        count: usize,
        /// More names with the same event, in the same frame: members a
        /// fan-out found gone at once are announced together. Left out
        /// when empty.
        #[cfg_attr(
            feature = "serde",
            serde(default, skip_serializing_if = "Vec::is_empty")
        )]
        also: Vec<String>,
    },
    /// To the leaver.
    Left {
        room: String,
    },
    /// How many people are in a room too big to hear each arrival and
    /// departure (at most one a minute, when it changes).
    Count {
        room: String,
        count: usize,
    },
    /// The people in the room, as a `members` request asked: as many names
    /// as fit a frame (`count` says how many there are).
    Members {
        room: String,
        members: Vec<String>,
        count: usize,
    },
    /// To the sender of anything the server cannot act on.
    Error {
        code: ErrorCode,
        message: String,
        /// The action of the request refused, when it had a known one: on
        /// AWS each route runs on its own, so answers to different kinds of
        /// requests can come in any order. Left out when unknown.
        #[cfg_attr(
            feature = "serde",
            serde(default, skip_serializing_if = "Option::is_none")
        )]
        action: Option<String>,
        /// On `rate_limited`: how long until the request would be allowed.
        #[cfg_attr(
            feature = "serde",
            serde(
                default,
                rename = "retryAfterMs",
                skip_serializing_if = "Option::is_none"
            )
        )]
        retry_after_ms: Option<u64>,
        /// The `nonce` of the `sendmessage` refused, if it had one.
        #[cfg_attr(
            feature = "serde",
            serde(default, skip_serializing_if = "Option::is_none")
        )]
        nonce: Option<String>,
    },
    Pong,
    /// To a `history` request: the messages before the one it named, oldest
    /// first, as many as fit in one frame; `more` says whether older ones
    /// remain.
    History {
        room: String,
        messages: Vec<HistoryEntry>,
        more: bool,
    },
}

/// A message as posted to a room.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct ChatMessage {
    /// Unique; sorts in the order the server stored the messages.
    pub id: String,
    pub room: String,
    pub name: String,
    pub data: String,
    /// Milliseconds since the Unix epoch.
    pub ts: u64,
    /// The sender's own id for it, as its `sendmessage` gave it.
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "Option::is_none")
    )]
    pub nonce: Option<String>,
}

/// One past message in a `joined` frame, shaped exactly like a `message` frame
/// (`type` included) so a client can render both with the same code.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(
    feature = "serde",
    serde(tag = "type", rename_all = "snake_case", from = "ChatMessage")
)]
pub enum HistoryEntry {
    Message(ChatMessage),
}

impl From<ChatMessage> for HistoryEntry {
    fn from(message: ChatMessage) -> Self {
        Self::Message(message)
    }
}

/// Every field any server frame has, each named as on the wire (`kind` is
/// `type`). A reader fills in what a frame has and [`ServerFrame::try_from`]
/// checks that its type has what it needs: serde on the server, the
/// browser's `JSON.parse` in the web app.
#[derive(Debug, Default)]
#[cfg_attr(feature = "serde", derive(Deserialize))]
pub struct ServerFields {
    #[cfg_attr(feature = "serde", serde(rename = "type"))]
    pub kind: String,
    pub room: Option<String>,
    pub name: Option<String>,
    pub members: Option<Vec<String>>,
    pub count: Option<usize>,
    pub history: Option<Vec<ChatMessage>>,
    pub id: Option<String>,
    pub data: Option<String>,
    pub ts: Option<u64>,
    pub event: Option<PresenceEvent>,
    pub code: Option<ErrorCode>,
    pub message: Option<String>,
    pub messages: Option<Vec<ChatMessage>>,
    pub more: Option<bool>,
    pub also: Option<Vec<String>>,
    pub action: Option<String>,
    #[cfg_attr(feature = "serde", serde(rename = "retryAfterMs"))]
    pub retry_after_ms: Option<u64>,
    pub nonce: Option<String>,
}

impl TryFrom<ServerFields> for ServerFrame {
    type Error = String;

    fn try_from(wire: ServerFields) -> Result<Self, String> {
        let kind = wire.kind;
        let missing = |field: &str| format!("{kind} frame without {field}");
        macro_rules! take {
            ($field:ident) => {
                wire.$field.ok_or_else(|| missing(stringify!($field)))?
            };
        }
        Ok(match kind.as_str() {
            "joined" => Self::Joined {
                room: take!(room),
                name: take!(name),
                members: take!(members),
                count: take!(count),
                history: take!(history)
                    .into_iter()
                    .map(HistoryEntry::Message)
                    .collect(),
                more: wire.more.unwrap_or(false),
            },
            "message" => Self::Message(ChatMessage {
                id: take!(id),
                room: take!(room),
                name: take!(name),
                data: take!(data),
                ts: take!(ts),
                nonce: wire.nonce,
            }),
            "presence" => Self::Presence {
                event: take!(event),
                room: take!(room),
                name: take!(name),
                count: take!(count),
                also: wire.also.unwrap_or_default(),
            },
            "left" => Self::Left { room: take!(room) },
            "error" => Self::Error {
                code: take!(code),
                message: take!(message),
                action: wire.action,
                retry_after_ms: wire.retry_after_ms,
                nonce: wire.nonce,
            },
            "pong" => Self::Pong,
            "count" => Self::Count {
                room: take!(room),
                count: take!(count),
            },
            "members" => Self::Members {
                room: take!(room),
                members: take!(members),
                count: take!(count),
            },
            "history" => Self::History {
                room: take!(room),
                messages: take!(messages)
                    .into_iter()
                    .map(HistoryEntry::Message)
                    .collect(),
                more: take!(more),
            },
            _ => return Err(format!("unknown frame type {kind:?}")),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum PresenceEvent {
    Join,
    Leave,
}

impl PresenceEvent {
    /// The event named as on the wire (`join`, `leave`).
    pub fn from_wire(name: &str) -> Option<Self> {
        match name {
            "join" => Some(Self::Join),
            "leave" => Some(Self::Leave),
            _ => None,
        }
    }
}

/// What went wrong, as a stable, machine-readable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum ErrorCode {
    /// Not JSON, not an object, missing or mistyped fields, binary frames,
    /// invalid UTF-8 or lone surrogates.
    BadRequest,
    UnknownAction,
    /// `sendmessage` or `leave` from a connection that has joined no room.
    NotInRoom,
    InvalidRoom,
    InvalidName,
    /// A message body or a frame over its size limit.
    TooLarge,
    /// Messages sent faster than the server's rate limit allows; this one was
    /// not delivered. Sending works again after a short wait.
    RateLimited,
    /// The server failed; the request may be retried.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::UnknownAction => "unknown_action",
            Self::NotInRoom => "not_in_room",
            Self::InvalidRoom => "invalid_room",
            Self::InvalidName => "invalid_name",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::Internal => "internal",
        }
    }

    /// Every code, in the order they are declared.
    pub const ALL: [Self; 8] = [
        Self::BadRequest,
        Self::UnknownAction,
        Self::NotInRoom,
        Self::InvalidRoom,
        Self::InvalidName,
        Self::TooLarge,
        Self::RateLimited,
        Self::Internal,
    ];

    /// The code named as on the wire; `None` for a code this build does not
    /// know (a newer server).
    pub fn from_wire(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|code| code.as_str() == name)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(feature = "serde")]
fn is_false(value: &bool) -> bool {
    !value
}

impl ServerFrame {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error {
            code,
            message: message.into(),
            action: None,
            retry_after_ms: None,
            nonce: None,
        }
    }

    /// The frame as JSON text; serialized once and shared by every recipient.
    #[cfg(feature = "serde")]
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialize")
    }

    #[cfg(feature = "serde")]
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

impl From<crate::ProtocolError> for ServerFrame {
    fn from(error: crate::ProtocolError) -> Self {
        Self::error(error.code, error.message)
    }
}

#[cfg(all(test, feature = "serde"))]
mod tests {
    use super::*;
    use serde_json::json;

    fn message() -> ChatMessage {
        ChatMessage {
            id: "0001-a".into(),
            room: "r".into(),
            name: "Ada".into(),
            data: "<script>".into(),
            ts: 1_700_000_000_000,
            nonce: None,
        }
    }

    #[test]
    fn frames_have_the_documented_shape() {
        let as_json = |frame: &ServerFrame| serde_json::to_value(frame).unwrap();
        assert_eq!(
            as_json(&ServerFrame::Message(message())),
            json!({"type":"message","id":"0001-a","room":"r","name":"Ada","data":"<script>","ts":1_700_000_000_000u64})
        );
        assert_eq!(
            as_json(&ServerFrame::Joined {
                room: "r".into(),
                name: "Ada".into(),
                members: vec!["Ada".into()],
                count: 1,
                history: vec![HistoryEntry::Message(message())],
                more: false,
            }),
            json!({"type":"joined","room":"r","name":"Ada","members":["Ada"],"count":1,
                   "history":[{"type":"message","id":"0001-a","room":"r","name":"Ada","data":"<script>","ts":1_700_000_000_000u64}]})
        );
        assert_eq!(
            as_json(&ServerFrame::Presence {
                event: PresenceEvent::Leave,
                room: "r".into(),
                name: "Ada".into(),
                count: 0,
                also: vec![],
            }),
            json!({"type":"presence","event":"leave","room":"r","name":"Ada","count":0})
        );
        assert_eq!(
            as_json(&ServerFrame::Presence {
                event: PresenceEvent::Leave,
                room: "r".into(),
                name: "Ada".into(),
                count: 3,
                also: vec!["Bo".into(), "Cy".into()],
            }),
            json!({"type":"presence","event":"leave","room":"r","name":"Ada","count":3,"also":["Bo","Cy"]})
        );
        assert_eq!(
            as_json(&ServerFrame::Left { room: "r".into() }),
            json!({"type":"left","room":"r"})
        );
        assert_eq!(
            as_json(&ServerFrame::error(ErrorCode::NotInRoom, "join first")),
            json!({"type":"error","code":"not_in_room","message":"join first"})
        );
        assert_eq!(
            as_json(&ServerFrame::Message(ChatMessage {
                nonce: Some("k1".into()),
                ..message()
            })),
            json!({"type":"message","id":"0001-a","room":"r","name":"Ada","data":"<script>","ts":1_700_000_000_000u64,"nonce":"k1"})
        );
        assert_eq!(
            as_json(&ServerFrame::Error {
                code: ErrorCode::RateLimited,
                message: "slow down".into(),
                action: Some("sendmessage".into()),
                retry_after_ms: Some(420),
                nonce: Some("k1".into()),
            }),
            json!({"type":"error","code":"rate_limited","message":"slow down",
                   "action":"sendmessage","retryAfterMs":420,"nonce":"k1"})
        );
        assert_eq!(as_json(&ServerFrame::Pong), json!({"type":"pong"}));
        assert_eq!(
            as_json(&ServerFrame::Count {
                room: "r".into(),
                count: 1200,
            }),
            json!({"type":"count","room":"r","count":1200})
        );
        assert_eq!(
            as_json(&ServerFrame::Members {
                room: "r".into(),
                members: vec!["Ada".into(), "Bo".into()],
                count: 1200,
            }),
            json!({"type":"members","room":"r","members":["Ada","Bo"],"count":1200})
        );
        assert_eq!(
            as_json(&ServerFrame::History {
                room: "r".into(),
                messages: vec![HistoryEntry::Message(message())],
                more: true,
            }),
            json!({"type":"history","room":"r","more":true,
                   "messages":[{"type":"message","id":"0001-a","room":"r","name":"Ada","data":"<script>","ts":1_700_000_000_000u64}]})
        );
    }

    #[test]
    fn error_codes_and_events_read_as_serde_writes_them() {
        for code in ErrorCode::ALL {
            let wire = serde_json::to_value(code).unwrap();
            assert_eq!(wire, serde_json::Value::String(code.to_string()));
            assert_eq!(ErrorCode::from_wire(wire.as_str().unwrap()), Some(code));
        }
        assert_eq!(ErrorCode::from_wire("teapot"), None);
        for event in [PresenceEvent::Join, PresenceEvent::Leave] {
            let wire = serde_json::to_value(event).unwrap();
            assert_eq!(
                PresenceEvent::from_wire(wire.as_str().unwrap()),
                Some(event)
            );
        }
    }

    #[test]
    fn parses_its_own_frames() {
        let frame = ServerFrame::Joined {
            room: "r".into(),
            name: "Ada".into(),
            members: vec!["Ada".into(), "Bo".into()],
            count: 2,
            history: vec![HistoryEntry::Message(message())],
            more: true,
        };
        assert_eq!(ServerFrame::parse(&frame.to_json()).unwrap(), frame);
        let refusal = ServerFrame::Error {
            code: ErrorCode::RateLimited,
            message: "slow down".into(),
            action: Some("sendmessage".into()),
            retry_after_ms: Some(420),
            nonce: Some("k1".into()),
        };
        assert_eq!(ServerFrame::parse(&refusal.to_json()).unwrap(), refusal);
        let mine = ServerFrame::Message(ChatMessage {
            nonce: Some("k1".into()),
            ..message()
        });
        assert_eq!(ServerFrame::parse(&mine.to_json()).unwrap(), mine);
        for frame in [
            ServerFrame::Count {
                room: "r".into(),
                count: 101,
            },
            ServerFrame::Members {
                room: "r".into(),
                members: vec!["Ada".into()],
                count: 101,
            },
        ] {
            assert_eq!(ServerFrame::parse(&frame.to_json()).unwrap(), frame);
        }
    }
}
