//! Validation of nicknames and messages against the configured limits.

use super::{ChatError, ErrorCode};

/// Size limits for what people type. Characters are Unicode scalar values, as a person counts
/// them, not bytes.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_name_chars: usize,
    pub max_message_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_name_chars: 32,
            max_message_chars: 2_000,
        }
    }
}

impl Limits {
    /// Returns the nickname as it will be shown: trimmed, 1 to `max_name_chars` characters, with
    /// no control characters (they would let one name impersonate another or break layouts).
    pub fn nickname(&self, raw: &str) -> Result<String, ChatError> {
        let name = raw.trim();
        if name.is_empty() {
            return Err(ChatError::new(
                ErrorCode::InvalidName,
                "the nickname is empty",
            ));
        }
        if exceeds_chars(name, self.max_name_chars) {
            return Err(ChatError::new(
                ErrorCode::InvalidName,
                format!(
                    "the nickname is longer than {} characters",
                    self.max_name_chars
                ),
            ));
        }
        if name.chars().any(char::is_control) {
            return Err(ChatError::new(
                ErrorCode::InvalidName,
                "the nickname contains control characters",
            ));
        }
        Ok(name.to_owned())
    }

    /// Checks a chat message. It is stored as sent (white space included); only a message that is
    /// nothing but white space is refused.
    pub fn message(&self, text: &str) -> Result<(), ChatError> {
        if text.trim().is_empty() {
            return Err(ChatError::new(ErrorCode::Empty, "the message is empty"));
        }
        if exceeds_chars(text, self.max_message_chars) {
            return Err(ChatError::new(
                ErrorCode::TooLong,
                format!(
                    "the message is longer than {} characters",
                    self.max_message_chars
                ),
            ));
        }
        Ok(())
    }
}

/// True when `text` has more than `max` characters, without counting past `max + 1`.
fn exceeds_chars(text: &str, max: usize) -> bool {
    // Every character takes at least one byte, so a short byte length settles it at once.
    text.len() > max && text.chars().nth(max).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(r: Result<impl std::fmt::Debug, ChatError>) -> Option<ErrorCode> {
        r.err().map(|e| e.code)
    }

    #[test]
    fn nicknames() {
        let l = Limits::default();
        assert_eq!(l.nickname("  alice ").unwrap(), "alice");
        assert_eq!(l.nickname(&"é".repeat(32)).unwrap(), "é".repeat(32));
        assert_eq!(code(l.nickname("")), Some(ErrorCode::InvalidName));
        assert_eq!(code(l.nickname(" \t ")), Some(ErrorCode::InvalidName));
        assert_eq!(
            code(l.nickname(&"a".repeat(33))),
            Some(ErrorCode::InvalidName)
        );
        assert_eq!(code(l.nickname("bob\u{7}")), Some(ErrorCode::InvalidName));
        assert_eq!(code(l.nickname("bo\nb")), Some(ErrorCode::InvalidName));
    }

    #[test]
    fn messages() {
        let l = Limits::default();
        assert!(l.message("hi").is_ok());
        assert!(l.message(&"ü".repeat(2_000)).is_ok());
        assert_eq!(
            code(l.message(&"a".repeat(2_001))),
            Some(ErrorCode::TooLong)
        );
        assert_eq!(code(l.message("")), Some(ErrorCode::Empty));
        assert_eq!(code(l.message("  \n ")), Some(ErrorCode::Empty));
    }
}
