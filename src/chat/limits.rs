//! Validation of nicknames and messages against the configured limits.

use unicode_normalization::UnicodeNormalization;

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
    /// Returns the nickname as it will be shown: trimmed, in Unicode's composed form (NFC), 1
    /// to `max_name_chars` characters, with something visible in it, and with no control
    /// characters, no characters that change the direction text is shown in, no line breaks
    /// and no characters that show nothing (they would let one name impersonate another, or
    /// break layouts). Joiners and variation selectors, which emoji and some scripts need,
    /// stay; names are compared without them ([`super::name_key`]).
    pub fn nickname(&self, raw: &str) -> Result<String, ChatError> {
        let name: String = raw.trim().nfc().collect();
        if !name.chars().any(|c| !c.is_whitespace() && !is_ignorable(c)) {
            return Err(ChatError::new(
                ErrorCode::InvalidName,
                "the nickname is empty",
            ));
        }
        if exceeds_chars(&name, self.max_name_chars) {
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
        if name.chars().any(is_hidden) || stray_tag(&name) {
            return Err(ChatError::new(
                ErrorCode::InvalidName,
                "the nickname contains invisible, line-breaking or direction-changing characters",
            ));
        }
        Ok(name)
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

/// Characters a nickname may not hold: those that reorder how text is shown (bidirectional
/// marks, embeddings, overrides, isolates: "\u{202e}ecila" shows as "alice"), line and
/// paragraph separators, and those that show nothing and mean nothing in a name (zero-width
/// space, word joiner, invisible operators, byte order mark, soft hyphen, blank fillers).
fn is_hidden(c: char) -> bool {
    matches!(
        c,
        '\u{061c}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{00ad}'
            | '\u{115f}'
            | '\u{1160}'
            | '\u{17b4}'
            | '\u{17b5}'
            | '\u{200b}'
            | '\u{2060}'..='\u{2065}'
            | '\u{206a}'..='\u{206f}'
            | '\u{2800}'
            | '\u{3164}'
            | '\u{feff}'
            | '\u{ffa0}'
            | '\u{fff0}'..='\u{fffb}'
            | '\u{1bca0}'..='\u{1bca3}'
            | '\u{1d173}'..='\u{1d17a}'
            | '\u{e0000}'..='\u{e001f}'
            | '\u{e0080}'..='\u{e0fff}'
    )
}

/// Tag characters (U+E0020-E007F) show nothing unless they spell a flag after a black flag
/// (the flags of England, Scotland, Wales): anywhere else they are hidden characters.
fn stray_tag(name: &str) -> bool {
    let is_tag = |c: char| ('\u{e0020}'..='\u{e007f}').contains(&c);
    let mut before = None;
    for c in name.chars() {
        if is_tag(c) && !before.is_some_and(|b: char| b == '\u{1f3f4}' || is_tag(b)) {
            return true;
        }
        before = Some(c);
    }
    false
}

/// Characters with no glyph of their own that a nickname may hold because emoji sequences and
/// some scripts need them (joiners, variation selectors, the combining grapheme joiner,
/// Mongolian selectors), but that do not tell two names apart. (Tags do: they tell the flag of
/// Scotland from England's.)
pub(crate) fn is_ignorable(c: char) -> bool {
    matches!(
        c,
        '\u{034f}'
            | '\u{180b}'..='\u{180f}'
            | '\u{200c}'
            | '\u{200d}'
            | '\u{fe00}'..='\u{fe0f}'
            | '\u{e0100}'..='\u{e01ef}'
    )
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
    fn nicknames_that_show_nothing_or_something_else_are_refused() {
        let l = Limits::default();
        for name in [
            "\u{200b}",
            "\u{2800}",
            "\u{3164}",
            "\u{feff}",
            "\u{00ad}",
            "\u{2066}\u{2069}",
            "\u{200d}",
            " \u{fe0f} ",
            "alice\u{200b}",
            "\u{202e}ecila",
            "a\u{200f}b",
            "x\u{2028}y",
            "x\u{2029}y",
            "alice\u{2065}",
            "alice\u{fff9}",
            "alice\u{e0061}",
            "alice\u{e0010}",
        ] {
            assert_eq!(
                code(l.nickname(name)),
                Some(ErrorCode::InvalidName),
                "{name:?}"
            );
        }
    }

    #[test]
    fn nicknames_are_composed_and_keep_what_emoji_and_scripts_need() {
        let l = Limits::default();
        // "e" + combining acute is "é", one character.
        assert_eq!(l.nickname("alice\u{301}").unwrap(), "alic\u{e9}");
        assert_eq!(
            l.nickname("alice\u{301}").unwrap(),
            l.nickname("alic\u{e9}").unwrap()
        );
        // A family emoji (joined with ZWJ), a heart with its variation selector, a Persian
        // name with a zero-width non-joiner, the flag of England (tag characters).
        for name in [
            "\u{1f468}\u{200d}\u{1f469}\u{200d}\u{1f467} dad",
            "\u{2764}\u{fe0f} ana",
            "\u{645}\u{6cc}\u{200c}\u{62e}\u{648}\u{627}\u{647}\u{645}",
            "\u{1f3f4}\u{e0067}\u{e0062}\u{e0065}\u{e006e}\u{e0067}\u{e007f}",
        ] {
            assert_eq!(l.nickname(name).unwrap(), name, "{name:?}");
        }
        // 32 characters after composition, not 64 before.
        assert!(l.nickname(&"e\u{301}".repeat(32)).is_ok());
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
