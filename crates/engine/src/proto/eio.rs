//! Engine.IO v4 packets and HTTP long-polling payloads: decoding what a client sends, encoding
//! what the server sends. Pure functions over bytes; no I/O.
//!
//! A packet is one type digit and its data: `0` open, `1` close, `2` ping, `3` pong, `4`
//! message, `5` upgrade, `6` noop. Binary messages have no type digit: over WebSocket they are
//! binary frames, over long-polling a `b` followed by base64. A polling payload is packets
//! separated by the record separator `\x1e`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;

/// The record separator between packets of a long-polling payload.
pub const SEPARATOR: u8 = 0x1e;

/// A packet received from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// `1`: the client closes the session.
    Close,
    /// `2` with its data: clients send `2probe` to test a WebSocket during an upgrade.
    Ping(Bytes),
    /// `3` with its data: the answer to the server's ping.
    Pong(Bytes),
    /// `4`: a text message.
    Message(Bytes),
    /// A binary message.
    Binary(Bytes),
    /// `5`: the client completes an upgrade to WebSocket.
    Upgrade,
    /// `6`: nothing.
    Noop,
}

/// Why a client's packet could not be read. Each names the rule it broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// A text packet must start with a type digit.
    Empty,
    /// The type digit is not one of 0-6, or is `0` (open), which only a server sends.
    UnknownType(u8),
    /// A text message must be valid UTF-8.
    NotUtf8,
    /// A polling `b` packet must be base64.
    BadBase64,
    /// A polling payload may not contain an empty packet.
    EmptyPacket,
    /// The payload is larger than the max payload.
    TooLarge,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Empty => f.write_str("an empty Engine.IO packet"),
            Self::UnknownType(t) => write!(f, "unknown Engine.IO packet type {:?}", *t as char),
            Self::NotUtf8 => f.write_str("a text packet that is not UTF-8"),
            Self::BadBase64 => f.write_str("a binary polling packet that is not base64"),
            Self::EmptyPacket => f.write_str("an empty packet in a polling payload"),
            Self::TooLarge => f.write_str("a payload over the max payload"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes one text packet (a WebSocket text frame, or one packet of a polling payload that is
/// not base64). `text` must be the bytes of a UTF-8 string: `Bytes` so that a message's data is
/// a slice of the frame, not a copy.
pub fn decode_text(text: Bytes) -> Result<Inbound, DecodeError> {
    let Some(&kind) = text.first() else {
        return Err(DecodeError::Empty);
    };
    let data = || text.slice(1..);
    Ok(match kind {
        b'1' => Inbound::Close,
        b'2' => Inbound::Ping(data()),
        b'3' => Inbound::Pong(data()),
        b'4' => Inbound::Message(data()),
        b'5' => Inbound::Upgrade,
        b'6' => Inbound::Noop,
        other => return Err(DecodeError::UnknownType(other)),
    })
}

/// Decodes a long-polling POST body into its packets. `max_payload` bounds the body, which the
/// caller has usually checked already against `Content-Length`.
pub fn decode_payload(body: Bytes, max_payload: usize) -> Result<Vec<Inbound>, DecodeError> {
    if body.len() > max_payload {
        return Err(DecodeError::TooLarge);
    }
    if body.is_empty() {
        return Ok(Vec::new());
    }
    if std::str::from_utf8(&body).is_err() {
        return Err(DecodeError::NotUtf8);
    }
    let mut packets = Vec::new();
    let mut start = 0;
    loop {
        let end = body[start..]
            .iter()
            .position(|b| *b == SEPARATOR)
            .map_or(body.len(), |i| start + i);
        let part = body.slice(start..end);
        if part.is_empty() {
            return Err(DecodeError::EmptyPacket);
        }
        packets.push(if part[0] == b'b' {
            let raw = BASE64
                .decode(&part[1..])
                .map_err(|_| DecodeError::BadBase64)?;
            Inbound::Binary(Bytes::from(raw))
        } else {
            decode_text(part)?
        });
        if end == body.len() {
            return Ok(packets);
        }
        start = end + 1;
    }
}

/// The handshake's settings, sent in the open packet.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Open<'a> {
    pub sid: &'a str,
    pub upgrades: &'a [&'a str],
    pub ping_interval: u64,
    pub ping_timeout: u64,
    pub max_payload: u64,
}

/// `0{...}`: the open packet.
pub fn encode_open(open: &Open<'_>) -> String {
    let mut out = String::from("0");
    // A struct of strings and numbers always serialises.
    out.push_str(&serde_json::to_string(open).unwrap_or_default());
    out
}

/// A binary message as a polling packet: `b` and base64.
pub fn encode_binary_for_polling(raw: &[u8], out: &mut Vec<u8>) {
    out.push(b'b');
    let start = out.len();
    out.resize(start + base64::encoded_len(raw.len(), true).unwrap_or(0), 0);
    let written = BASE64.encode_slice(raw, &mut out[start..]).unwrap_or(0);
    out.truncate(start + written);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Result<Inbound, DecodeError> {
        decode_text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn text_packets() {
        let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
        let cases: &[(&str, Result<Inbound, DecodeError>)] = &[
            ("1", Ok(Inbound::Close)),
            ("2", Ok(Inbound::Ping(b("")))),
            ("2probe", Ok(Inbound::Ping(b("probe")))),
            ("3", Ok(Inbound::Pong(b("")))),
            ("3probe", Ok(Inbound::Pong(b("probe")))),
            ("4hello", Ok(Inbound::Message(b("hello")))),
            ("4", Ok(Inbound::Message(b("")))),
            ("5", Ok(Inbound::Upgrade)),
            ("6", Ok(Inbound::Noop)),
            ("", Err(DecodeError::Empty)),
            ("0{}", Err(DecodeError::UnknownType(b'0'))),
            ("7", Err(DecodeError::UnknownType(b'7'))),
            (
                "9{\"not\":\"a packet\"}",
                Err(DecodeError::UnknownType(b'9')),
            ),
            ("garbage", Err(DecodeError::UnknownType(b'g'))),
        ];
        for (input, expected) in cases {
            assert_eq!(&text(input), expected, "{input:?}");
        }
    }

    #[test]
    fn payloads() {
        let max = 1_000;
        let decode = |s: &[u8]| decode_payload(Bytes::copy_from_slice(s), max);
        assert_eq!(decode(b""), Ok(vec![]));
        assert_eq!(
            decode(b"4hello\x1e2\x1e4\xc3\xa9"),
            Ok(vec![
                Inbound::Message(Bytes::from_static(b"hello")),
                Inbound::Ping(Bytes::new()),
                Inbound::Message(Bytes::from_static("é".as_bytes())),
            ])
        );
        assert_eq!(
            decode(b"bAQID\x1e4x"),
            Ok(vec![
                Inbound::Binary(Bytes::from_static(&[1, 2, 3])),
                Inbound::Message(Bytes::from_static(b"x")),
            ])
        );
        assert_eq!(decode(b"\x1e\x1e\x1e"), Err(DecodeError::EmptyPacket));
        assert_eq!(decode(b"4a\x1e"), Err(DecodeError::EmptyPacket));
        assert_eq!(decode(b"b!!!not base64!!!"), Err(DecodeError::BadBase64));
        assert_eq!(decode(&[0xff, 0x00, 0x13, 0x37]), Err(DecodeError::NotUtf8));
        assert_eq!(decode(b"garbage"), Err(DecodeError::UnknownType(b'g')));
        assert_eq!(decode(&vec![b'4'; max + 1]), Err(DecodeError::TooLarge));
        assert!(decode(&vec![b'4'; max]).is_ok());
    }

    #[test]
    fn open_and_binary_encodings() {
        let open = Open {
            sid: "abc",
            upgrades: &["websocket"],
            ping_interval: 25_000,
            ping_timeout: 20_000,
            max_payload: 1_000_000,
        };
        assert_eq!(
            encode_open(&open),
            r#"0{"sid":"abc","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#
        );
        let mut out = Vec::new();
        encode_binary_for_polling(&[1, 2, 3, 4], &mut out);
        assert_eq!(out, b"bAQIDBA==");
    }

    proptest::proptest! {
        /// Whatever a client posts, decoding returns packets or an error; it never panics, and a
        /// payload it accepts re-joins to the same number of parts.
        #[test]
        fn any_body_decodes_or_fails_cleanly(body in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let parts = body.split(|b| *b == SEPARATOR).count();
            if let Ok(packets) = decode_payload(Bytes::from(body.clone()), 1_000) {
                proptest::prop_assert!(body.is_empty() || packets.len() == parts);
            }
        }
    }
}
