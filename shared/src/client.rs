#[cfg(feature = "serde")]
use serde_json::{Map, Value};

#[cfg(feature = "serde")]
use crate::limits::{MESSAGE_ID_MAX_LEN, NONCE_MAX_LEN};
#[cfg(feature = "serde")]
use crate::{ErrorCode, ProtocolError, check_message_data};
use crate::{Name, Room};

/// A frame from a client, routed by its `action` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// Join `room` as `name`, leaving the current room first.
    Join { room: Room, name: Name },
    /// Post `data` to the room this connection has joined. `nonce`, the
    /// client's own id for the message, comes back on it (in the `message`
    /// frame, in history) and on an `error` refusing it, so a client that
    /// lost its connection can tell what was posted and never posts twice.
    SendMessage { data: String, nonce: Option<String> },
    /// Leave the current room and stay connected.
    Leave,
    /// Answered with a `pong`.
    Ping,
    /// The names of the people in the room this connection has joined,
    /// answered with a `members` frame: a room too big to hear each
    /// arrival and departure asks for them when it wants them.
    Members,
    /// Older messages of the room this connection has joined: those before
    /// the message `before` (the newest ones without it), answered with a
    /// `history` frame.
    History { before: Option<String> },
}

impl ClientFrame {
    /// Parses and validates a text frame, naming exactly what is wrong with it.
    ///
    /// Fields other than the ones an action needs are ignored: in particular a
    /// `room` on `sendmessage`, since the server decides which room a
    /// connection posts to.
    #[cfg(feature = "serde")]
    pub fn parse(text: &str) -> Result<Self, ProtocolError> {
        let fields = match serde_json::from_str::<UniqueObject>(text) {
            Ok(UniqueObject(fields)) => fields,
            // Ours (a repeated key, not an object): without serde's position.
            Err(e) if e.is_data() => {
                let message = e.to_string();
                let message = message.split(" at line ").next().unwrap_or_default();
                return Err(ProtocolError::bad_request(message.to_owned()));
            }
            Err(e) => {
                return Err(ProtocolError::bad_request(format!(
                    "frame is not valid JSON: {e}"
                )));
            }
        };
        let action = match fields.get("action") {
            Some(Value::String(action)) => action.as_str(),
            Some(_) => return Err(ProtocolError::bad_request("\"action\" must be a string")),
            None => return Err(ProtocolError::bad_request("frame has no \"action\"")),
        };
        match action {
            "join" => Ok(Self::Join {
                room: Room::parse(string_field(&fields, "room")?)?,
                name: Name::parse(string_field(&fields, "name")?)?,
            }),
            "sendmessage" => {
                let data = string_field(&fields, "data")?;
                check_message_data(data)?;
                let nonce = match fields.get("nonce") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(nonce)) if is_nonce(nonce) => Some(nonce.clone()),
                    Some(_) => {
                        return Err(ProtocolError::bad_request(format!(
                            "\"nonce\" must be 1 to {NONCE_MAX_LEN} letters, digits, '_' or '-'"
                        )));
                    }
                };
                Ok(Self::SendMessage {
                    data: data.to_owned(),
                    nonce,
                })
            }
            "leave" => Ok(Self::Leave),
            "ping" => Ok(Self::Ping),
            "members" => Ok(Self::Members),
            "history" => Ok(Self::History {
                before: match fields.get("before") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(id)) if is_message_id(id) => Some(id.clone()),
                    Some(_) => {
                        return Err(ProtocolError::bad_request(format!(
                            "\"before\" must be a message id (1 to {MESSAGE_ID_MAX_LEN} letters, digits and '-')"
                        )));
                    }
                },
            }),
            other => Err(ProtocolError::new(
                ErrorCode::UnknownAction,
                format!(
                    "unknown action {:?}; expected join, sendmessage, leave, history, members or ping",
                    truncate(other, 64)
                ),
            )),
        }
    }

    /// The frame's `action`, as on the wire.
    pub fn action(&self) -> &'static str {
        match self {
            Self::Join { .. } => "join",
            Self::SendMessage { .. } => "sendmessage",
            Self::Leave => "leave",
            Self::Ping => "ping",
            Self::Members => "members",
            Self::History { .. } => "history",
        }
    }

    /// The frame as JSON text, ready to send. Written by hand, so the web
    /// app needs no JSON library: [`ClientFrame::parse`] reads it back in
    /// the tests, and the fuzz tests hold the two together.
    pub fn to_json(&self) -> String {
        let mut json = String::from("{\"action\":");
        match self {
            Self::Join { room, name } => {
                json.push_str("\"join\",\"room\":");
                push_json_string(&mut json, room.as_str());
                json.push_str(",\"name\":");
                push_json_string(&mut json, name.as_str());
            }
            Self::SendMessage { data, nonce } => {
                json.push_str("\"sendmessage\",\"data\":");
                push_json_string(&mut json, data);
                if let Some(nonce) = nonce {
                    json.push_str(",\"nonce\":");
                    push_json_string(&mut json, nonce);
                }
            }
            Self::Leave => json.push_str("\"leave\""),
            Self::Ping => json.push_str("\"ping\""),
            Self::Members => json.push_str("\"members\""),
            Self::History { before } => {
                json.push_str("\"history\"");
                if let Some(before) = before {
                    json.push_str(",\"before\":");
                    push_json_string(&mut json, before);
                }
            }
        }
        json.push('}');
        json
    }
}

/// A frame's top-level object, refused if a key repeats: readers disagree
/// on which of two `action`s counts (API Gateway's route selection and
/// serde would not pick the same), so neither is taken.
#[cfg(feature = "serde")]
struct UniqueObject(Map<String, Value>);

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for UniqueObject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UniqueObject;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("frame must be a JSON object")
            }

            // Anything but an object: said plainly, never echoing the input
            // (serde's own message would quote all of it).
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<UniqueObject, E> {
                Err(E::custom("frame must be a JSON object"))
            }

            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<UniqueObject, E> {
                Err(E::custom("frame must be a JSON object"))
            }

            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<UniqueObject, E> {
                Err(E::custom("frame must be a JSON object"))
            }

            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<UniqueObject, E> {
                Err(E::custom("frame must be a JSON object"))
            }

            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<UniqueObject, E> {
                Err(E::custom("frame must be a JSON object"))
            }

            fn visit_unit<E: serde::de::Error>(self) -> Result<UniqueObject, E> {
                Err(E::custom("frame must be a JSON object"))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                _: A,
            ) -> Result<UniqueObject, A::Error> {
                Err(serde::de::Error::custom("frame must be a JSON object"))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut access: A,
            ) -> Result<UniqueObject, A::Error> {
                let mut fields = Map::new();
                while let Some(key) = access.next_key::<String>()? {
                    let value: Value = access.next_value()?;
                    if fields.contains_key(&key) {
                        return Err(serde::de::Error::custom(format_args!(
                            "the key {:?} appears more than once",
                            truncate(&key, 64)
                        )));
                    }
                    fields.insert(key, value);
                }
                Ok(UniqueObject(fields))
            }
        }
        // `any`, not `map`: serde_json answers a non-object asked for as a map
        // with an error quoting all of it.
        deserializer.deserialize_any(Visitor)
    }
}

/// Appends `text` as a JSON string: quotes, backslashes and control
/// characters escaped, everything else as it is (JSON is UTF-8).
fn push_json_string(json: &mut String, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    json.push('"');
    for c in text.chars() {
        match c {
            '"' => json.push_str("\\\""),
            '\\' => json.push_str("\\\\"),
            '\n' => json.push_str("\\n"),
            '\r' => json.push_str("\\r"),
            '\t' => json.push_str("\\t"),
            c if c < ' ' => {
                json.push_str("\\u00");
                json.push(HEX[c as usize >> 4] as char);
                json.push(HEX[c as usize & 0xf] as char);
            }
            c => json.push(c),
        }
    }
    json.push('"');
}

#[cfg(feature = "serde")]
fn string_field<'a>(fields: &'a Map<String, Value>, key: &str) -> Result<&'a str, ProtocolError> {
    match fields.get(key) {
        Some(Value::String(value)) => Ok(value),
        Some(_) => Err(ProtocolError::bad_request(format!(
            "\"{key}\" must be a string"
        ))),
        None => Err(ProtocolError::bad_request(format!("missing \"{key}\""))),
    }
}

/// Whether `nonce` is one a client may put on a message: short, and of a
/// URL- and key-safe alphabet.
pub fn is_nonce(nonce: &str) -> bool {
    (1..=crate::limits::NONCE_MAX_LEN).contains(&nonce.len())
        && nonce
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// Message ids are the server's own (`ids::message_id`): digits, letters and
/// `-`, so any id a client names is short and printable.
#[cfg(feature = "serde")]
fn is_message_id(id: &str) -> bool {
    (1..=MESSAGE_ID_MAX_LEN).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Keeps error messages small when a client echoes something huge back at us.
#[cfg(feature = "serde")]
fn truncate(text: &str, max_chars: usize) -> &str {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

#[cfg(all(test, feature = "serde"))]
mod tests {
    use super::*;

    fn code_of(text: &str) -> ErrorCode {
        ClientFrame::parse(text).unwrap_err().code
    }

    #[test]
    fn parses_every_action() {
        assert_eq!(
            ClientFrame::parse(r#"{"action":"join","room":"chat:1","name":" Ada "}"#).unwrap(),
            ClientFrame::Join {
                room: Room::parse("chat:1").unwrap(),
                name: Name::parse("Ada").unwrap()
            }
        );
        assert_eq!(
            ClientFrame::parse(r#"{"action":"sendmessage","data":"<b>hi</b>"}"#).unwrap(),
            ClientFrame::SendMessage {
                data: "<b>hi</b>".into(),
                nonce: None
            }
        );
        assert_eq!(
            ClientFrame::parse(r#"{"action":"sendmessage","data":"hi","nonce":"k3_x-9"}"#).unwrap(),
            ClientFrame::SendMessage {
                data: "hi".into(),
                nonce: Some("k3_x-9".into())
            }
        );
        assert_eq!(
            ClientFrame::parse(r#"{"action":"leave"}"#).unwrap(),
            ClientFrame::Leave
        );
        assert_eq!(
            ClientFrame::parse(r#"{"action":"ping"}"#).unwrap(),
            ClientFrame::Ping
        );
    }

    #[test]
    fn refuses_a_nonce_that_is_not_short_and_plain() {
        for nonce in [r#""""#, r#""a b""#, r#""é""#, "7", r#"{}"#] {
            let frame = format!(r#"{{"action":"sendmessage","data":"x","nonce":{nonce}}}"#);
            let error = ClientFrame::parse(&frame).unwrap_err();
            assert_eq!(error.code, ErrorCode::BadRequest, "{nonce}");
            assert!(error.message.contains("nonce"), "{}", error.message);
        }
        let long = "n".repeat(crate::limits::NONCE_MAX_LEN + 1);
        let frame = format!(r#"{{"action":"sendmessage","data":"x","nonce":"{long}"}}"#);
        assert!(ClientFrame::parse(&frame).is_err());
    }

    #[test]
    fn ignores_a_room_in_sendmessage() {
        assert_eq!(
            ClientFrame::parse(r#"{"action":"sendmessage","room":"other","data":"x"}"#).unwrap(),
            ClientFrame::SendMessage {
                data: "x".into(),
                nonce: None
            }
        );
    }

    #[test]
    fn round_trips_what_the_browser_sends() {
        let frames = [
            ClientFrame::Join {
                room: Room::parse("r").unwrap(),
                name: Name::parse("n").unwrap(),
            },
            ClientFrame::SendMessage {
                data: "line\n\"quoted\" ✓".into(),
                nonce: None,
            },
            ClientFrame::SendMessage {
                data: "\\ \u{0}\u{1f}\u{7f}\t\r</script>\u{2028}😀".into(),
                nonce: Some("Zz09_-".into()),
            },
            ClientFrame::Leave,
            ClientFrame::Ping,
            ClientFrame::Members,
            ClientFrame::History { before: None },
            ClientFrame::History {
                before: Some("1700000000000-00000000000000ff".into()),
            },
        ];
        for frame in frames {
            assert_eq!(ClientFrame::parse(&frame.to_json()).unwrap(), frame);
        }
        assert_eq!(ClientFrame::Leave.to_json(), r#"{"action":"leave"}"#);
        assert_eq!(ClientFrame::Ping.to_json(), r#"{"action":"ping"}"#);
        // What serde_json makes of it is what was meant.
        let text = "a\u{1}b\"c\\d\ne";
        let json = ClientFrame::SendMessage {
            data: text.into(),
            nonce: None,
        }
        .to_json();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"action": "sendmessage", "data": text})
        );
        assert!(
            ClientFrame::SendMessage {
                data: "x".into(),
                nonce: None
            }
            .to_json()
            .contains(r#""action":"sendmessage""#)
        );
    }

    #[test]
    fn names_each_kind_of_bad_frame() {
        assert_eq!(code_of("not json"), ErrorCode::BadRequest);
        assert_eq!(code_of(""), ErrorCode::BadRequest);
        assert_eq!(code_of("[1,2]"), ErrorCode::BadRequest);
        assert_eq!(code_of("\"join\""), ErrorCode::BadRequest);
        assert_eq!(code_of("{}"), ErrorCode::BadRequest);
        assert_eq!(code_of(r#"{"action":7}"#), ErrorCode::BadRequest);
        assert_eq!(code_of(r#"{"action":"dance"}"#), ErrorCode::UnknownAction);
        assert_eq!(
            code_of(r#"{"action":"history","before":7}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code_of(r#"{"action":"history","before":"a\"b"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code_of(r#"{"action":"history","before":""}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code_of(r#"{"action":"join","name":"a"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code_of(r#"{"action":"join","room":1,"name":"a"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code_of(r#"{"action":"join","room":"a b","name":"a"}"#),
            ErrorCode::InvalidRoom
        );
        assert_eq!(
            code_of(r#"{"action":"join","room":"a","name":"  "}"#),
            ErrorCode::InvalidName
        );
        assert_eq!(
            code_of(r#"{"action":"sendmessage"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code_of(r#"{"action":"sendmessage","data":""}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code_of(r#"{"action":"sendmessage","data":null}"#),
            ErrorCode::BadRequest
        );
        let big = format!(
            r#"{{"action":"sendmessage","data":"{}"}}"#,
            "x".repeat(4097)
        );
        assert_eq!(code_of(&big), ErrorCode::TooLarge);
    }

    #[test]
    fn refuses_lone_surrogates() {
        assert_eq!(
            code_of(r#"{"action":"sendmessage","data":"\ud800"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code_of(r#"{"action":"join","room":"a","name":"\udc00x"}"#),
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn keeps_error_messages_short() {
        let long = format!(r#"{{"action":"{}"}}"#, "z".repeat(10_000));
        assert!(ClientFrame::parse(&long).unwrap_err().message.len() < 200);
    }
}
