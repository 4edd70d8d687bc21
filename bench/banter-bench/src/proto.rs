//! Engine.IO v4 / Socket.IO v5 text framing, as far as the chat contract needs it.
//!
//! Engine.IO packets are one character of type followed by data: `0` open (JSON handshake),
//! `1` close, `2` ping, `3` pong, `4` message, `6` noop. A message carries a Socket.IO packet:
//! `0` connect, `1` disconnect, `2` event (`2<ack id>?[name, args...]`), `3` ack, `4` connect
//! error. Over long-polling, several Engine.IO packets in one body are separated by `\x1e`.
//!
//! Incoming packets are classified by prefix and scanned for the few fields the bench needs,
//! without building a JSON tree: a receiver sees hundreds of thousands of packets per second.

/// Separator of Engine.IO packets in a long-polling payload.
pub const RECORD_SEPARATOR: char = '\x1e';

/// The Engine.IO pong, answering the server's ping.
pub const PONG: &str = "3";

/// The Socket.IO connect packet for the default namespace, wrapped in an Engine.IO message.
pub const CONNECT: &str = "40";

/// What the client does with one Engine.IO packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Engine<'a> {
    /// The handshake (`0{...}`); carries the session id.
    Open {
        sid: &'a str,
    },
    Close,
    Ping,
    /// A Socket.IO packet (the text after the `4`).
    Message(&'a str),
    /// Pong, noop, upgrade: nothing to do.
    Other,
}

/// Splits off the Engine.IO packet type.
pub fn parse_engine(packet: &str) -> Engine<'_> {
    match packet.as_bytes().first() {
        Some(b'0') => Engine::Open {
            sid: json_str_field(packet, "sid").unwrap_or(""),
        },
        Some(b'1') => Engine::Close,
        Some(b'2') => Engine::Ping,
        Some(b'4') => Engine::Message(&packet[1..]),
        _ => Engine::Other,
    }
}

/// A Socket.IO packet from the server, classified.
#[derive(Debug, PartialEq, Eq)]
pub enum Sio<'a> {
    /// `0{...}`: connected to the namespace.
    Connected,
    /// `4{...}`: the namespace refused the connection.
    ConnectError(&'a str),
    /// `1`: the server disconnected this socket.
    Disconnected,
    /// `2[...]`: an event, with its name and the raw text of the whole packet.
    Event {
        name: &'a str,
        raw: &'a str,
    },
    /// `3<id>[...]`: the answer to one of our acks.
    Ack {
        id: u64,
        raw: &'a str,
    },
    Unknown,
}

/// Classifies a Socket.IO packet (without the Engine.IO `4`).
pub fn parse_sio(packet: &str) -> Sio<'_> {
    let bytes = packet.as_bytes();
    match bytes.first() {
        Some(b'0') => Sio::Connected,
        Some(b'1') => Sio::Disconnected,
        Some(b'4') => Sio::ConnectError(&packet[1..]),
        Some(b'2') => {
            // `2` then an optional ack id, then `["name"`.
            let rest = packet[1..].trim_start_matches(|c: char| c.is_ascii_digit());
            match rest.strip_prefix("[\"") {
                Some(after) => match after.find('"') {
                    Some(end) => Sio::Event {
                        name: &after[..end],
                        raw: packet,
                    },
                    None => Sio::Unknown,
                },
                None => Sio::Unknown,
            }
        }
        Some(b'3') => {
            let digits = packet[1..]
                .bytes()
                .take_while(|b| b.is_ascii_digit())
                .count();
            match packet[1..1 + digits].parse() {
                Ok(id) => Sio::Ack { id, raw: packet },
                Err(_) => Sio::Unknown,
            }
        }
        _ => Sio::Unknown,
    }
}

/// An Engine.IO message carrying a Socket.IO event, ready to send: `42["name",arg]`, or
/// `42<ack>["name",arg]` with an ack id.
pub fn event(name: &str, arg: &str, ack: Option<u64>) -> String {
    let arg = serde_json::to_string(arg).expect("a string always serializes");
    match ack {
        Some(id) => format!("42{id}[\"{name}\",{arg}]"),
        None => format!("42[\"{name}\",{arg}]"),
    }
}

/// The text of a timed bench message: `{"t":<unix nanos>,"s":<seq>}`.
pub fn timed_text(nanos: u64, seq: u64) -> String {
    format!("{{\"t\":{nanos},\"s\":{seq}}}")
}

/// The send timestamp of a timed bench message, found in a raw `new message` packet. The text
/// is a JSON string inside the packet, so its quotes arrive escaped: `{\"t\":123,...}`.
pub fn timed_nanos(raw: &str) -> Option<u64> {
    let start = raw.find("\\\"t\\\":")? + 6;
    leading_u64(&raw[start..])
}

/// The value of `"numUsers":<n>` in a raw packet (a key, never a match inside a string value,
/// because quotes inside strings are escaped).
pub fn num_users(raw: &str) -> Option<u64> {
    let start = raw.find("\"numUsers\":")? + 11;
    leading_u64(&raw[start..])
}

/// True when an ack's payload is a refusal (`{error: {...}}`).
pub fn ack_is_error(raw: &str) -> bool {
    raw.contains("\"error\":")
}

fn leading_u64(s: &str) -> Option<u64> {
    let digits = s.bytes().take_while(|b| b.is_ascii_digit()).count();
    s[..digits].parse().ok()
}

/// The value of a plain string field `"name":"value"` (no escapes expected: session ids).
fn json_str_field<'a>(s: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("\"{name}\":\"");
    let start = s.find(&key)? + key.len();
    let len = s[start..].find('"')?;
    Some(&s[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_packets() {
        assert_eq!(
            parse_engine(r#"0{"sid":"abc","upgrades":[],"pingInterval":25000}"#),
            Engine::Open { sid: "abc" }
        );
        assert_eq!(parse_engine("2"), Engine::Ping);
        assert_eq!(parse_engine("1"), Engine::Close);
        assert_eq!(parse_engine("6"), Engine::Other);
        assert_eq!(parse_engine("40"), Engine::Message("0"));
    }

    #[test]
    fn socketio_packets() {
        assert_eq!(parse_sio(r#"0{"sid":"x"}"#), Sio::Connected);
        let raw = r#"2["user joined",{"username":"a","numUsers":7}]"#;
        assert_eq!(
            parse_sio(raw),
            Sio::Event {
                name: "user joined",
                raw
            }
        );
        assert_eq!(num_users(raw), Some(7));
        let raw = r#"312[{"id":5,"ts":6}]"#;
        assert_eq!(parse_sio(raw), Sio::Ack { id: 12, raw });
        assert!(!ack_is_error(raw));
        assert!(ack_is_error(r#"31[{"error":{"code":"rate_limited"}}]"#));
        assert_eq!(
            parse_sio(r#"4{"message":"no"}"#),
            Sio::ConnectError(r#"{"message":"no"}"#)
        );
    }

    #[test]
    fn timed_message_round_trip() {
        let text = timed_text(1_764_108_000_123_456_789, 42);
        let packet = event("new message", &text, Some(3));
        assert_eq!(
            packet,
            r#"423["new message","{\"t\":1764108000123456789,\"s\":42}"]"#
        );
        // As the server broadcasts it.
        let raw = format!(
            r#"2["new message",{{"username":"s-1","message":{},"id":1,"ts":2}}]"#,
            serde_json::to_string(&text).unwrap()
        );
        assert_eq!(timed_nanos(&raw), Some(1_764_108_000_123_456_789));
        assert!(matches!(
            parse_sio(&raw),
            Sio::Event {
                name: "new message",
                ..
            }
        ));
    }

    #[test]
    fn num_users_ignores_strings() {
        let raw = r#"2["login",{"history":[{"message":"\"numUsers\":9"}],"numUsers":3}]"#;
        assert_eq!(num_users(raw), Some(3));
    }
}
