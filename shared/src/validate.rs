use std::fmt;

#[cfg(feature = "serde")]
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

/// A room: 1 to 64 of `A-Z a-z 0-9 _ . : -`.
///
/// Kept to a URL- and key-safe alphabet so a room can sit in a link's fragment,
/// a query string and a DynamoDB key without escaping. Names that differ only
/// in case are one room (`#General` is `#general`: a link and a name typed
/// from memory must meet): its id, used on the wire and as the key, is the
/// name in lower case. The alphabet is ASCII, so there is nothing to
/// normalize beyond that. [`Room::shown`] keeps the spelling given, for
/// display.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "serde", serde(try_from = "String", into = "String"))]
pub struct Room {
    id: String,
    shown: String,
}

impl PartialEq for Room {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for Room {}

impl std::hash::Hash for Room {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

impl PartialOrd for Room {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Room {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.id.cmp(&other.id)
    }
}

impl TryFrom<String> for Room {
    type Error = ProtocolError;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

impl From<Room> for String {
    fn from(room: Room) -> String {
        room.id
    }
}

impl fmt::Display for Room {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

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
        Ok(Self {
            id: raw.to_ascii_lowercase(),
            shown: raw.to_owned(),
        })
    }

    /// The room's id: what the server knows it by.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The spelling it was given.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

/// A display name: 1 to 32 characters after trimming, any script, no control
/// or format characters (zero-width, bidi controls), no line or paragraph
/// separators, and at least one visible character. Stored trimmed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "serde", serde(try_from = "String", into = "String"))]
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
        if trimmed.chars().any(is_format_or_separator) {
            return Err(ProtocolError::new(
                ErrorCode::InvalidName,
                "name must not contain invisible formatting characters (zero-width, direction controls) or line separators",
            ));
        }
        if !trimmed.chars().any(is_visible) {
            return Err(ProtocolError::new(
                ErrorCode::InvalidName,
                "name must contain a visible character",
            ));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Unicode's format characters (category Cf: invisible, and the bidi
/// controls can reorder the text around a name) and its line and paragraph
/// separators (Zl, Zp). The zero-width joiner and non-joiner stay allowed
/// (emoji sequences, Persian and Indic scripts need them), and so do the
/// tag characters that spell subdivision flags after a black flag.
fn is_format_or_separator(c: char) -> bool {
    use unicode_general_category::GeneralCategory::*;
    !matches!(c, '\u{200C}' | '\u{200D}' | '\u{E0020}'..='\u{E007F}')
        && matches!(
            unicode_general_category::get_general_category(c),
            Format | LineSeparator | ParagraphSeparator
        )
}

/// Whether `c` shows anything by itself, by its Unicode general category:
/// a letter, digit, punctuation or symbol; not a space, mark (combining,
/// like U+17B4), control, format, private-use or unassigned character.
/// A few letters and symbols are drawn as nothing at all and are used for
/// invisible names: the Hangul fillers, the blank Braille pattern, the
/// musical null notehead.
fn is_visible(c: char) -> bool {
    use unicode_general_category::GeneralCategory::*;
    let shows = matches!(
        unicode_general_category::get_general_category(c),
        UppercaseLetter
            | LowercaseLetter
            | TitlecaseLetter
            | ModifierLetter
            | OtherLetter
            | DecimalNumber
            | LetterNumber
            | OtherNumber
            | ConnectorPunctuation
            | DashPunctuation
            | OpenPunctuation
            | ClosePunctuation
            | InitialPunctuation
            | FinalPunctuation
            | OtherPunctuation
            | MathSymbol
            | CurrencySymbol
            | ModifierSymbol
            | OtherSymbol
    );
    shows
        && !matches!(
            c,
            '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}' | '\u{2800}' | '\u{1D159}'
        )
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

string_newtype!(Name);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_follow_the_documented_alphabet_and_length() {
        for good in ["a", "chat:1", "team_a.b-c", &"x".repeat(64)] {
            assert_eq!(Room::parse(good).unwrap().as_str(), good);
        }
        for bad in ["", " lobby", "a b", "späti", "a/b", "a#b", &"x".repeat(65)] {
            assert_eq!(Room::parse(bad).unwrap_err().code, ErrorCode::InvalidRoom);
        }
    }

    #[test]
    fn rooms_differing_only_in_case_are_one_room_shown_as_given() {
        let typed = Room::parse("Team_A.B-c").unwrap();
        assert_eq!(typed.as_str(), "team_a.b-c");
        assert_eq!(typed.shown(), "Team_A.B-c");
        assert_eq!(typed, Room::parse("team_A.b-C").unwrap());
        assert_eq!(String::from(typed), "team_a.b-c");
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
    fn names_are_visible_and_cannot_reorder_the_text_around_them() {
        let lone_marks = "\u{301}".repeat(32);
        for bad in [
            "\u{200b}",
            "\u{feff}",
            "\u{202e}",
            "Alice\u{200b}",
            "\u{202e}ecilA",
            "Bob\u{2066}",
            "A\u{2028}B",
            "A\u{2029}B",
            "\u{3164}",
            "\u{2800}\u{2800}",
            "\u{200d}",
            "\u{200c}",
            // Marks, fillers and blank symbols that a hand-kept list missed.
            "\u{17B4}",
            "\u{17B5}\u{17B5}",
            "\u{16FE4}",
            "\u{1D159}",
            "\u{E000}",
            lone_marks.as_str(),
        ] {
            assert_eq!(
                Name::parse(bad).unwrap_err().code,
                ErrorCode::InvalidName,
                "{bad:?}"
            );
        }
        // Scripts, accents and emoji sequences (joined with U+200D) are fine.
        for good in [
            "Zoë",
            "e\u{301}",
            "👩\u{200d}💻 Ada",
            "محمد",
            "שלום",
            "❤\u{fe0f}",
            "مهر\u{200c}داد",
            "क्\u{200d}ष",
            // The flag of Scotland: a black flag and tag characters.
            "🏴\u{e0067}\u{e0062}\u{e0073}\u{e0063}\u{e0074}\u{e007f}",
        ] {
            assert_eq!(Name::parse(good).unwrap().as_str(), good, "{good:?}");
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
