use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ErrorCode;
use crate::limits::{DATA_MAX_BYTES, NAME_MAX_CHARS, ROOM_MAX_LEN};

/// Why a frame or a value was refused: the code and the human-readable message
/// of the `error` frame that answers it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
}

/// A room id: 1 to 64 of `A-Z a-z 0-9 _ . : -`.
///
/// Kept to a URL- and key-safe alphabet so a room can sit in a link's fragment,
/// a query string and a DynamoDB key without escaping.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Room(String);

impl Room {
    pub fn parse(raw: &str) -> Result<Self, ProtocolError> {
        let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-');
        if raw.is_empty() || raw.len() > ROOM_MAX_LEN || !raw.bytes().all(allowed) {
            return Err(ProtocolError::new(
                ErrorCode::InvalidRoom,
                format!(
                    "room must be 1 to {ROOM_MAX_LEN} characters of letters, digits, '_', '.', ':' or '-'"
                ),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A display name: 1 to 32 characters after trimming, any script, no control
/// characters. Stored trimmed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

impl Name {
    pub fn parse(raw: &str) -> Result<Self, ProtocolError> {
        let trimmed = raw.trim();
        let chars = trimmed.chars().count();
        if chars == 0 || chars > NAME_MAX_CHARS {
            return Err(ProtocolError::new(
                ErrorCode::InvalidName,
                format!("name must be 1 to {NAME_MAX_CHARS} characters"),
            ));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(ProtocolError::new(
                ErrorCode::InvalidName,
                "name must not contain control characters",
            ));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks a message body: 1 to 4096 bytes of UTF-8, delivered verbatim.
pub fn check_message_data(data: &str) -> Result<(), ProtocolError> {
    if data.is_empty() {
        return Err(ProtocolError::bad_request("data must not be empty"));
    }
    if data.len() > DATA_MAX_BYTES {
        return Err(ProtocolError::new(
            ErrorCode::TooLarge,
            format!(
                "data is {} bytes; the limit is {DATA_MAX_BYTES} bytes",
                data.len()
            ),
        ));
    }
    Ok(())
}

macro_rules! string_newtype {
    ($ty:ident) => {
        impl TryFrom<String> for $ty {
            type Error = ProtocolError;
            fn try_from(raw: String) -> Result<Self, Self::Error> {
                Self::parse(&raw)
            }
        }

        impl From<$ty> for String {
            fn from(value: $ty) -> String {
                value.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_newtype!(Room);
string_newtype!(Name);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_follow_the_documented_alphabet_and_length() {
        for good in ["a", "chat:1", "Team_A.b-c", &"x".repeat(64)] {
            assert_eq!(Room::parse(good).unwrap().as_str(), good);
        }
        for bad in ["", " lobby", "a b", "späti", "a/b", "a#b", &"x".repeat(65)] {
            assert_eq!(Room::parse(bad).unwrap_err().code, ErrorCode::InvalidRoom);
        }
    }

    #[test]
    fn names_are_trimmed_counted_in_characters_and_free_of_controls() {
        assert_eq!(Name::parse("  Ada  ").unwrap().as_str(), "Ada");
        assert_eq!(Name::parse("Zoë 李").unwrap().as_str(), "Zoë 李");
        // 32 four-byte characters are 128 bytes but still 32 characters.
        let emoji = "😀".repeat(32);
        assert_eq!(Name::parse(&emoji).unwrap().as_str(), emoji);
        for bad in [
            "",
            "   ",
            "a\u{0}b",
            "tab\tname",
            "bell\u{7}",
            &"n".repeat(33),
        ] {
            assert_eq!(Name::parse(bad).unwrap_err().code, ErrorCode::InvalidName);
        }
    }

    #[test]
    fn message_data_is_between_one_and_4096_bytes() {
        assert!(check_message_data("hi").is_ok());
        assert!(check_message_data(&"é".repeat(2048)).is_ok());
        assert_eq!(
            check_message_data("").unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            check_message_data(&"é".repeat(2049)).unwrap_err().code,
            ErrorCode::TooLarge
        );
    }
}
