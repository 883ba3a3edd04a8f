use serde::Serialize;
use serde_json::{Map, Value};

use crate::{ErrorCode, Name, ProtocolError, Room, check_message_data};

/// A frame from a client, routed by its `action` field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum ClientFrame {
    /// Join `room` as `name`, leaving the current room first.
    Join { room: Room, name: Name },
    /// Post `data` to the room this connection has joined.
    SendMessage { data: String },
    /// Leave the current room and stay connected.
    Leave,
    /// Answered with a `pong`.
    Ping,
}

impl ClientFrame {
    /// Parses and validates a text frame, naming exactly what is wrong with it.
    ///
    /// Fields other than the ones an action needs are ignored: in particular a
    /// `room` on `sendmessage`, since the server decides which room a
    /// connection posts to.
    pub fn parse(text: &str) -> Result<Self, ProtocolError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| ProtocolError::bad_request(format!("frame is not valid JSON: {e}")))?;
        let Value::Object(fields) = value else {
            return Err(ProtocolError::bad_request("frame must be a JSON object"));
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
                Ok(Self::SendMessage {
                    data: data.to_owned(),
                })
            }
            "leave" => Ok(Self::Leave),
            "ping" => Ok(Self::Ping),
            other => Err(ProtocolError::new(
                ErrorCode::UnknownAction,
                format!(
                    "unknown action {:?}; expected join, sendmessage, leave or ping",
                    truncate(other, 64)
                ),
            )),
        }
    }

    /// The frame as JSON text, ready to send.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("client frames always serialize")
    }
}

fn string_field<'a>(fields: &'a Map<String, Value>, key: &str) -> Result<&'a str, ProtocolError> {
    match fields.get(key) {
        Some(Value::String(value)) => Ok(value),
        Some(_) => Err(ProtocolError::bad_request(format!(
            "\"{key}\" must be a string"
        ))),
        None => Err(ProtocolError::bad_request(format!("missing \"{key}\""))),
    }
}

/// Keeps error messages small when a client echoes something huge back at us.
fn truncate(text: &str, max_chars: usize) -> &str {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

#[cfg(test)]
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
                data: "<b>hi</b>".into()
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
    fn ignores_a_room_in_sendmessage() {
        assert_eq!(
            ClientFrame::parse(r#"{"action":"sendmessage","room":"other","data":"x"}"#).unwrap(),
            ClientFrame::SendMessage { data: "x".into() }
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
            },
            ClientFrame::Leave,
            ClientFrame::Ping,
        ];
        for frame in frames {
            assert_eq!(ClientFrame::parse(&frame.to_json()).unwrap(), frame);
        }
        assert_eq!(ClientFrame::Leave.to_json(), r#"{"action":"leave"}"#);
        assert!(
            ClientFrame::SendMessage { data: "x".into() }
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
