//! Socket.IO v5 packets: decoding what a client sends, encoding what the server sends. Pure
//! functions; no I/O.
//!
//! A packet is `<type>[<attachments>-][<namespace>,][<ack id>][<JSON data>]`, carried in an
//! Engine.IO message. Types: `0` CONNECT, `1` DISCONNECT, `2` EVENT, `3` ACK, `4`
//! CONNECT_ERROR, `5` BINARY_EVENT, `6` BINARY_ACK. A binary packet announces how many binary
//! attachments follow it, each its own Engine.IO binary message; its JSON holds
//! `{"_placeholder":true,"num":N}` where attachment N belongs.
//!
//! An event's arguments are kept as raw JSON text (`RawValue`): the engine reads only the event
//! name, and the application parses each argument when it reads it. A hostile argument (nested
//! 400,000 deep, say) then fails only where it is read, with an error the application can answer.

use std::fmt;

use serde::Serialize;
use serde_json::value::RawValue;

/// The packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Connect = 0,
    Disconnect = 1,
    Event = 2,
    Ack = 3,
    ConnectError = 4,
    BinaryEvent = 5,
    BinaryAck = 6,
}

impl Kind {
    fn from_digit(d: u8) -> Option<Self> {
        Some(match d {
            b'0' => Self::Connect,
            b'1' => Self::Disconnect,
            b'2' => Self::Event,
            b'3' => Self::Ack,
            b'4' => Self::ConnectError,
            b'5' => Self::BinaryEvent,
            b'6' => Self::BinaryAck,
            _ => return None,
        })
    }

    fn digit(self) -> u8 {
        b'0' + self as u8
    }
}

/// Event names a client may not use: the client library emits them itself.
pub const RESERVED_EVENTS: &[&str] = &[
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// A packet received from a client. Binary packets carry the number of attachments still to
/// come; the caller collects them.
#[derive(Debug)]
pub enum Inbound {
    Connect {
        nsp: String,
        /// The `auth` object, if the client sent one.
        auth: Option<Box<RawValue>>,
    },
    Disconnect {
        nsp: String,
    },
    Event {
        nsp: String,
        /// Present when the client asks for an acknowledgement.
        id: Option<u64>,
        name: String,
        args: Vec<Box<RawValue>>,
        attachments: usize,
    },
    Ack {
        nsp: String,
        /// `None` when the id is missing or too large to be one the server gave.
        id: Option<u64>,
        args: Vec<Box<RawValue>>,
        attachments: usize,
    },
}

/// Packets compare by their JSON text (`RawValue` has no equality of its own).
impl PartialEq for Inbound {
    fn eq(&self, other: &Self) -> bool {
        fn same(a: &[Box<RawValue>], b: &[Box<RawValue>]) -> bool {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.get() == b.get())
        }
        match (self, other) {
            (Self::Connect { nsp: a, auth: x }, Self::Connect { nsp: b, auth: y }) => {
                a == b && x.as_ref().map(|v| v.get()) == y.as_ref().map(|v| v.get())
            }
            (Self::Disconnect { nsp: a }, Self::Disconnect { nsp: b }) => a == b,
            (
                Self::Event {
                    nsp,
                    id,
                    name,
                    args,
                    attachments,
                },
                Self::Event {
                    nsp: n2,
                    id: i2,
                    name: m2,
                    args: a2,
                    attachments: t2,
                },
            ) => nsp == n2 && id == i2 && name == m2 && same(args, a2) && attachments == t2,
            (
                Self::Ack {
                    nsp,
                    id,
                    args,
                    attachments,
                },
                Self::Ack {
                    nsp: n2,
                    id: i2,
                    args: a2,
                    attachments: t2,
                },
            ) => nsp == n2 && id == i2 && same(args, a2) && attachments == t2,
            _ => false,
        }
    }
}

/// Why a client's Socket.IO packet could not be read. The connection is closed for any of them,
/// as Node's server does on a parse error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The type digit is missing or not one of 0-6.
    UnknownType,
    /// A client may not send CONNECT_ERROR: only servers refuse connections.
    ConnectErrorFromClient,
    /// A binary packet's attachment count must be digits followed by `-`.
    BadAttachmentCount,
    /// More attachments than allowed.
    TooManyAttachments(usize),
    /// The data is not JSON.
    InvalidJson,
    /// The data is JSON of the wrong shape for the packet type (named by the string).
    InvalidPayload(&'static str),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownType => f.write_str("unknown Socket.IO packet type"),
            Self::ConnectErrorFromClient => f.write_str("a CONNECT_ERROR packet from a client"),
            Self::BadAttachmentCount => {
                f.write_str("a binary packet with an unreadable attachment count")
            }
            Self::TooManyAttachments(n) => write!(f, "a binary packet announcing {n} attachments"),
            Self::InvalidJson => f.write_str("packet data that is not JSON"),
            Self::InvalidPayload(what) => write!(f, "invalid packet data: {what}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Reads the digits at the start of `s`: their value (`None` on overflow) and how many there
/// were.
fn digits(s: &[u8]) -> (Option<u64>, usize) {
    let len = s.iter().take_while(|b| b.is_ascii_digit()).count();
    let mut value: Option<u64> = Some(0);
    for d in &s[..len] {
        value = value
            .and_then(|v| v.checked_mul(10))
            .and_then(|v| v.checked_add(u64::from(d - b'0')));
    }
    (value, len)
}

/// Decodes the text of one Engine.IO message as a Socket.IO packet.
pub fn decode(text: &str, max_attachments: usize) -> Result<Inbound, DecodeError> {
    let bytes = text.as_bytes();
    let kind = bytes
        .first()
        .and_then(|d| Kind::from_digit(*d))
        .ok_or(DecodeError::UnknownType)?;
    let mut i = 1;

    let mut attachments = 0;
    if matches!(kind, Kind::BinaryEvent | Kind::BinaryAck) {
        let (count, len) = digits(&bytes[i..]);
        if len == 0 || bytes.get(i + len) != Some(&b'-') {
            return Err(DecodeError::BadAttachmentCount);
        }
        let count = count.ok_or(DecodeError::BadAttachmentCount)?;
        attachments = usize::try_from(count).unwrap_or(usize::MAX);
        if attachments > max_attachments {
            return Err(DecodeError::TooManyAttachments(attachments));
        }
        i += len + 1;
    }

    let nsp = if bytes.get(i) == Some(&b'/') {
        let end = bytes[i..]
            .iter()
            .position(|b| *b == b',')
            .map_or(bytes.len(), |p| i + p);
        let nsp = &text[i..end];
        i = (end + 1).min(bytes.len());
        nsp.to_owned()
    } else {
        "/".to_owned()
    };

    let (id, len) = digits(&bytes[i..]);
    let id = if len > 0 {
        i += len;
        // An id too large for 64 bits cannot be one the client will match; the packet is
        // handled as if it asked for none.
        id
    } else {
        None
    };

    let data = &text[i..];
    match kind {
        Kind::ConnectError => Err(DecodeError::ConnectErrorFromClient),
        Kind::Connect => {
            let auth = if data.is_empty() {
                None
            } else {
                let raw: Box<RawValue> =
                    serde_json::from_str(data).map_err(|_| DecodeError::InvalidJson)?;
                if !raw.get().starts_with('{') {
                    return Err(DecodeError::InvalidPayload(
                        "CONNECT data must be an object",
                    ));
                }
                Some(raw)
            };
            Ok(Inbound::Connect { nsp, auth })
        }
        Kind::Disconnect => {
            if !data.is_empty() {
                return Err(DecodeError::InvalidPayload("DISCONNECT carries no data"));
            }
            Ok(Inbound::Disconnect { nsp })
        }
        Kind::Event | Kind::BinaryEvent => {
            let mut items = array(data)?;
            if items.is_empty() {
                return Err(DecodeError::InvalidPayload("an event needs a name"));
            }
            let first = items.remove(0);
            let name: String = serde_json::from_str(first.get())
                .map_err(|_| DecodeError::InvalidPayload("an event's name must be a string"))?;
            if RESERVED_EVENTS.contains(&name.as_str()) {
                return Err(DecodeError::InvalidPayload("a reserved event name"));
            }
            Ok(Inbound::Event {
                nsp,
                id,
                name,
                args: items,
                attachments,
            })
        }
        Kind::Ack | Kind::BinaryAck => Ok(Inbound::Ack {
            nsp,
            id,
            args: array(data)?,
            attachments,
        }),
    }
}

/// A JSON array's elements as raw text. Reading them as raw values scans nesting without
/// recursion, so a deeply nested argument is read here and refused only where it is parsed.
fn array(data: &str) -> Result<Vec<Box<RawValue>>, DecodeError> {
    if !data.starts_with('[') {
        return Err(if data.is_empty() {
            DecodeError::InvalidPayload("an array is required")
        } else if serde_json::from_str::<&RawValue>(data).is_ok() {
            DecodeError::InvalidPayload("the data must be an array")
        } else {
            DecodeError::InvalidJson
        });
    }
    serde_json::from_str(data).map_err(|_| DecodeError::InvalidJson)
}

/// The JSON text with every `\u` escape of a lone UTF-16 surrogate replaced by `\ufffd` (the
/// replacement character), or `None` if it has none. JavaScript strings may hold lone surrogates
/// (an emoji cut in half) and `JSON.stringify` writes them as such escapes, which Node's
/// `JSON.parse` takes; a Rust string cannot hold them, so serde refuses the whole value. Called
/// only when a value failed to parse, to read it as the browser's `TextEncoder` would.
pub fn replace_lone_surrogates(json: &str) -> Option<String> {
    let b = json.as_bytes();
    let is_high = |u: u16| (0xD800..0xDC00).contains(&u);
    let is_low = |u: u16| (0xDC00..0xE000).contains(&u);
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        // An escape: `\uXXXX`, or a backslash and one character (`\\` among them).
        let unit = if b.get(i + 1) == Some(&b'u') {
            hex4(b, i + 2)
        } else {
            None
        };
        let Some(unit) = unit else {
            i += 2;
            continue;
        };
        if is_high(unit)
            && b.get(i + 6..i + 8) == Some(b"\\u")
            && hex4(b, i + 8).is_some_and(is_low)
        {
            i += 12;
            continue;
        }
        if !is_high(unit) && !is_low(unit) {
            i += 6;
            continue;
        }
        let o = out.get_or_insert_with(|| String::with_capacity(json.len()));
        o.push_str(&json[copied..i]);
        o.push_str("\\ufffd");
        i += 6;
        copied = i;
    }
    out.map(|mut o| {
        o.push_str(&json[copied..]);
        o
    })
}

/// Four hex digits at `at`, as a UTF-16 code unit.
fn hex4(b: &[u8], at: usize) -> Option<u16> {
    let digits = b.get(at..at + 4)?;
    digits.iter().try_fold(0u16, |unit, &d| {
        let v = (d as char).to_digit(16)?;
        Some((unit << 4) | v as u16)
    })
}

/// Whether a raw argument is a binary placeholder, and for which attachment.
pub fn placeholder(arg: &RawValue) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Placeholder {
        _placeholder: bool,
        num: u64,
    }
    let p: Placeholder = serde_json::from_str(arg.get()).ok()?;
    p._placeholder.then_some(p.num)
}

/// The text of a server packet, as an Engine.IO message (with its `4`), written into `out`
/// after whatever is there already (the caller may have reserved room for a frame header).
pub struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    /// Starts a packet of `kind` in namespace `nsp`, with `attachments` binary attachments to
    /// follow (binary kinds only) and an ack id.
    pub fn start(
        out: &'a mut Vec<u8>,
        kind: Kind,
        nsp: &str,
        attachments: usize,
        id: Option<u64>,
    ) -> Self {
        out.push(b'4');
        out.push(kind.digit());
        if matches!(kind, Kind::BinaryEvent | Kind::BinaryAck) {
            out.extend_from_slice(attachments.to_string().as_bytes());
            out.push(b'-');
        }
        if nsp != "/" {
            out.extend_from_slice(nsp.as_bytes());
            out.push(b',');
        }
        if let Some(id) = id {
            out.extend_from_slice(id.to_string().as_bytes());
        }
        Self { out }
    }

    /// Appends the packet's JSON data.
    pub fn json<T: Serialize + ?Sized>(self, data: &T) -> serde_json::Result<()> {
        serde_json::to_writer(&mut *self.out, data)
    }

    /// Appends `[name, arg]`, the data of an event with one argument.
    pub fn event<T: Serialize + ?Sized>(self, name: &str, arg: &T) -> serde_json::Result<()> {
        self.out.push(b'[');
        serde_json::to_writer(&mut *self.out, name)?;
        self.out.push(b',');
        serde_json::to_writer(&mut *self.out, arg)?;
        self.out.push(b']');
        Ok(())
    }

    /// Appends `[arg]`, the data of an ack with one argument.
    pub fn single<T: Serialize + ?Sized>(self, arg: &T) -> serde_json::Result<()> {
        self.out.push(b'[');
        serde_json::to_writer(&mut *self.out, arg)?;
        self.out.push(b']');
        Ok(())
    }

    /// Appends `[name, args...]` from raw arguments.
    pub fn event_raw(self, name: &str, args: &[Box<RawValue>]) -> serde_json::Result<()> {
        self.out.push(b'[');
        serde_json::to_writer(&mut *self.out, name)?;
        for arg in args {
            self.out.push(b',');
            self.out.extend_from_slice(arg.get().as_bytes());
        }
        self.out.push(b']');
        Ok(())
    }

    /// Appends `[args...]` from raw arguments (an ack's data).
    pub fn args_raw(self, args: &[Box<RawValue>]) {
        self.out.push(b'[');
        for (i, arg) in args.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            self.out.extend_from_slice(arg.get().as_bytes());
        }
        self.out.push(b']');
    }

    /// Ends a packet without data.
    pub fn finish(self) {}
}

/// `<packet>` as a `String`, for tests and small packets.
pub fn to_text(kind: Kind, nsp: &str, id: Option<u64>, data: Option<&str>) -> String {
    let mut out = Vec::new();
    let w = Writer::start(&mut out, kind, nsp, 0, id);
    if let Some(data) = data {
        w.out.extend_from_slice(data.as_bytes());
    }
    // Every part written is text.
    String::from_utf8(out).unwrap_or_default()
}

/// A packet with its binary attachments, once they have all arrived.
#[derive(Debug, PartialEq)]
pub struct Complete {
    pub packet: Inbound,
    pub attachments: Vec<bytes::Bytes>,
}

/// Why the messages of a connection do not make Socket.IO packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssembleError {
    Decode(DecodeError),
    /// A text packet arrived while the attachments of a binary packet were still due: they must
    /// follow it at once.
    TextWhileAttachmentsDue,
    /// A binary message arrived with no binary packet waiting for it.
    UnexpectedBinary,
    /// The attachments of one packet add up to more than the max payload.
    AttachmentsTooLarge,
}

impl fmt::Display for AssembleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Decode(e) => e.fmt(f),
            Self::TextWhileAttachmentsDue => {
                f.write_str("a text packet while binary attachments were due")
            }
            Self::UnexpectedBinary => {
                f.write_str("a binary message with no binary packet waiting for it")
            }
            Self::AttachmentsTooLarge => f.write_str("attachments over the max payload"),
        }
    }
}

impl std::error::Error for AssembleError {}

/// Turns a connection's Engine.IO messages into whole Socket.IO packets: a binary packet is held
/// until its attachments have come, bounded in number and in bytes.
#[derive(Debug)]
pub struct Assembler {
    max_attachments: usize,
    max_bytes: usize,
    /// A binary packet, how many attachments it announced, and those that came. Boxed: most
    /// connections never send one.
    waiting: Option<Box<(Inbound, usize, Vec<bytes::Bytes>)>>,
    bytes: usize,
}

impl Assembler {
    pub fn new(max_attachments: usize, max_bytes: usize) -> Self {
        Self {
            max_attachments,
            max_bytes,
            waiting: None,
            bytes: 0,
        }
    }

    /// A text message: a packet, or `None` when it is a binary packet whose attachments follow.
    pub fn text(&mut self, text: &str) -> Result<Option<Complete>, AssembleError> {
        if self.waiting.is_some() {
            return Err(AssembleError::TextWhileAttachmentsDue);
        }
        let packet = decode(text, self.max_attachments).map_err(AssembleError::Decode)?;
        let due = match &packet {
            Inbound::Event { attachments, .. } | Inbound::Ack { attachments, .. } => *attachments,
            _ => 0,
        };
        if due == 0 {
            return Ok(Some(Complete {
                packet,
                attachments: Vec::new(),
            }));
        }
        self.waiting = Some(Box::new((packet, due, Vec::with_capacity(due))));
        self.bytes = 0;
        Ok(None)
    }

    /// A binary message: the packet it completes, if it is the last attachment due.
    pub fn binary(&mut self, data: bytes::Bytes) -> Result<Option<Complete>, AssembleError> {
        let Some(waiting) = &mut self.waiting else {
            return Err(AssembleError::UnexpectedBinary);
        };
        let (_, due, got) = &mut **waiting;
        self.bytes += data.len();
        if self.bytes > self.max_bytes {
            return Err(AssembleError::AttachmentsTooLarge);
        }
        got.push(data);
        if got.len() < *due {
            return Ok(None);
        }
        let (packet, _, attachments) = *self.waiting.take().unwrap_or_else(|| unreachable!());
        Ok(Some(Complete {
            packet,
            attachments,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    fn event(nsp: &str, id: Option<u64>, name: &str, args: &[&str], attachments: usize) -> Inbound {
        Inbound::Event {
            nsp: nsp.into(),
            id,
            name: name.into(),
            args: args.iter().map(|a| raw(a)).collect(),
            attachments,
        }
    }

    #[test]
    fn decodes_what_clients_send() {
        use DecodeError as E;
        let cases: Vec<(&str, Result<Inbound, DecodeError>)> = vec![
            (
                "0",
                Ok(Inbound::Connect {
                    nsp: "/".into(),
                    auth: None,
                }),
            ),
            (
                "0/admin,",
                Ok(Inbound::Connect {
                    nsp: "/admin".into(),
                    auth: None,
                }),
            ),
            (
                "0/admin",
                Ok(Inbound::Connect {
                    nsp: "/admin".into(),
                    auth: None,
                }),
            ),
            (
                r#"0{"token":"123"}"#,
                Ok(Inbound::Connect {
                    nsp: "/".into(),
                    auth: Some(raw(r#"{"token":"123"}"#)),
                }),
            ),
            (
                r#"0/admin,{"token":"123"}"#,
                Ok(Inbound::Connect {
                    nsp: "/admin".into(),
                    auth: Some(raw(r#"{"token":"123"}"#)),
                }),
            ),
            (
                "0\"string\"",
                Err(E::InvalidPayload("CONNECT data must be an object")),
            ),
            (
                "0[1]",
                Err(E::InvalidPayload("CONNECT data must be an object")),
            ),
            (
                "0null",
                Err(E::InvalidPayload("CONNECT data must be an object")),
            ),
            ("0{bad", Err(E::InvalidJson)),
            ("1", Ok(Inbound::Disconnect { nsp: "/".into() })),
            (
                "1/admin,",
                Ok(Inbound::Disconnect {
                    nsp: "/admin".into(),
                }),
            ),
            ("1{}", Err(E::InvalidPayload("DISCONNECT carries no data"))),
            (r#"2["hello",1]"#, Ok(event("/", None, "hello", &["1"], 0))),
            (
                r#"2/admin,["hello"]"#,
                Ok(event("/admin", None, "hello", &[], 0)),
            ),
            (
                r#"212["hello",{"a":[1,2]}]"#,
                Ok(event("/", Some(12), "hello", &[r#"{"a":[1,2]}"#], 0)),
            ),
            (
                r#"2/admin,456["x","y"]"#,
                Ok(event("/admin", Some(456), "x", &[r#""y""#], 0)),
            ),
            (
                r#"51-["hello",{"_placeholder":true,"num":0}]"#,
                Ok(event(
                    "/",
                    None,
                    "hello",
                    &[r#"{"_placeholder":true,"num":0}"#],
                    1,
                )),
            ),
            (
                r#"52-/admin,7["a",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#,
                Ok(event(
                    "/admin",
                    Some(7),
                    "a",
                    &[
                        r#"{"_placeholder":true,"num":0}"#,
                        r#"{"_placeholder":true,"num":1}"#,
                    ],
                    2,
                )),
            ),
            (
                r#"2"hello""#,
                Err(E::InvalidPayload("the data must be an array")),
            ),
            (
                r#"2{"event":"x"}"#,
                Err(E::InvalidPayload("the data must be an array")),
            ),
            ("2[]", Err(E::InvalidPayload("an event needs a name"))),
            (
                "2[42]",
                Err(E::InvalidPayload("an event's name must be a string")),
            ),
            (
                "2[null]",
                Err(E::InvalidPayload("an event's name must be a string")),
            ),
            (
                r#"2[["x"]]"#,
                Err(E::InvalidPayload("an event's name must be a string")),
            ),
            (
                r#"2["connect"]"#,
                Err(E::InvalidPayload("a reserved event name")),
            ),
            (
                r#"2["disconnecting"]"#,
                Err(E::InvalidPayload("a reserved event name")),
            ),
            (r#"2["x""#, Err(E::InvalidJson)),
            ("2", Err(E::InvalidPayload("an array is required"))),
            (r#"2-5["x"]"#, Err(E::InvalidJson)),
            (
                r#"3["late"]"#,
                Ok(Inbound::Ack {
                    nsp: "/".into(),
                    id: None,
                    args: vec![raw(r#""late""#)],
                    attachments: 0,
                }),
            ),
            (
                r#"35["x"]"#,
                Ok(Inbound::Ack {
                    nsp: "/".into(),
                    id: Some(5),
                    args: vec![raw(r#""x""#)],
                    attachments: 0,
                }),
            ),
            (
                r#"299999999999999999999999["x"]"#,
                Ok(event("/", None, "x", &[], 0)),
            ),
            (r#"4{"message":"x"}"#, Err(E::ConnectErrorFromClient)),
            ("7", Err(E::UnknownType)),
            ("9[]", Err(E::UnknownType)),
            ("", Err(E::UnknownType)),
            ("x", Err(E::UnknownType)),
            (r#"5-["x"]"#, Err(E::BadAttachmentCount)),
            (r#"5x-["x"]"#, Err(E::BadAttachmentCount)),
            (r#"51["x"]"#, Err(E::BadAttachmentCount)),
            (
                r#"599999999999999999999999-["x"]"#,
                Err(E::BadAttachmentCount),
            ),
            (r#"511-["x"]"#, Err(E::TooManyAttachments(11))),
        ];
        for (input, expected) in cases {
            assert_eq!(decode(input, 10), expected, "{input:?}");
        }
    }

    #[test]
    fn deep_arguments_are_kept_raw_and_a_deep_payload_is_refused() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let Ok(Inbound::Event { args, .. }) = decode(&format!(r#"2["x",{deep}]"#), 10) else {
            panic!("a deep argument is still an event");
        };
        assert!(serde_json::from_str::<serde_json::Value>(args[0].get()).is_err());
        assert!(decode(&format!("2{deep}"), 10).is_err());
    }

    #[test]
    fn placeholders() {
        assert_eq!(
            placeholder(&raw(r#"{"_placeholder":true,"num":3}"#)),
            Some(3)
        );
        assert_eq!(placeholder(&raw(r#"{"_placeholder":false,"num":3}"#)), None);
        assert_eq!(placeholder(&raw(r#""x""#)), None);
    }

    #[test]
    fn encodes_what_servers_send() {
        let enc = |kind, nsp, atts, id, f: &dyn Fn(Writer<'_>)| {
            let mut out = Vec::new();
            f(Writer::start(&mut out, kind, nsp, atts, id));
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            enc(Kind::Connect, "/", 0, None, &|w| w
                .json(&serde_json::json!({"sid": "a"}))
                .unwrap()),
            r#"40{"sid":"a"}"#
        );
        assert_eq!(
            enc(Kind::Connect, "/x", 0, None, &|w| w
                .json(&serde_json::json!({"sid": "a"}))
                .unwrap()),
            r#"40/x,{"sid":"a"}"#
        );
        assert_eq!(enc(Kind::Disconnect, "/", 0, None, &|w| w.finish()), "41");
        assert_eq!(
            enc(Kind::Disconnect, "/x", 0, None, &|w| w.finish()),
            "41/x,"
        );
        assert_eq!(
            enc(Kind::Event, "/", 0, None, &|w| w.event("hi", &1).unwrap()),
            r#"42["hi",1]"#
        );
        assert_eq!(
            enc(Kind::Event, "/x", 0, Some(3), &|w| w
                .event("hi", "a\"b")
                .unwrap()),
            r#"42/x,3["hi","a\"b"]"#
        );
        assert_eq!(
            enc(Kind::Ack, "/", 0, Some(9), &|w| w
                .args_raw(&[raw("1"), raw("\"a\"")])),
            r#"439[1,"a"]"#
        );
        assert_eq!(
            enc(Kind::Ack, "/", 0, Some(9), &|w| w.args_raw(&[])),
            "439[]"
        );
        assert_eq!(
            enc(Kind::BinaryEvent, "/x", 2, None, &|w| w
                .event_raw("b", &[raw("1")])
                .unwrap()),
            r#"452-/x,["b",1]"#
        );
        assert_eq!(
            to_text(
                Kind::ConnectError,
                "/nope",
                None,
                Some(r#"{"message":"Invalid namespace"}"#)
            ),
            r#"44/nope,{"message":"Invalid namespace"}"#
        );
    }

    #[test]
    fn attachments_are_collected_in_order_and_bounded() {
        let mut a = Assembler::new(10, 8);
        assert!(
            a.text(r#"52-["x",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#)
                .unwrap()
                .is_none()
        );
        assert!(
            a.binary(bytes::Bytes::from_static(b"ab"))
                .unwrap()
                .is_none()
        );
        let done = a.binary(bytes::Bytes::from_static(b"cd")).unwrap().unwrap();
        assert_eq!(
            done.attachments,
            vec![
                bytes::Bytes::from_static(b"ab"),
                bytes::Bytes::from_static(b"cd")
            ]
        );
        assert!(a.text(r#"2["plain"]"#).unwrap().is_some());
        assert_eq!(
            a.binary(bytes::Bytes::from_static(b"x")),
            Err(AssembleError::UnexpectedBinary)
        );
        assert!(
            a.text(r#"51-["x",{"_placeholder":true,"num":0}]"#)
                .unwrap()
                .is_none()
        );
        assert_eq!(
            a.text(r#"2["x"]"#),
            Err(AssembleError::TextWhileAttachmentsDue)
        );
        let mut a = Assembler::new(10, 8);
        assert!(a.text(r#"52-["x",1]"#).unwrap().is_none());
        assert!(
            a.binary(bytes::Bytes::from_static(b"12345"))
                .unwrap()
                .is_none()
        );
        assert_eq!(
            a.binary(bytes::Bytes::from_static(b"6789")),
            Err(AssembleError::AttachmentsTooLarge)
        );
    }

    #[test]
    fn lone_surrogates_become_replacement_characters() {
        let fix = |json: &str| replace_lone_surrogates(json);
        assert_eq!(fix(r#""a\ud800b""#).as_deref(), Some(r#""a\ufffdb""#));
        assert_eq!(fix(r#""\udc00""#).as_deref(), Some(r#""\ufffd""#));
        // A high surrogate followed by something else than a low one.
        assert_eq!(
            fix(r#""\ud83d\u0041""#).as_deref(),
            Some(r#""\ufffd\u0041""#)
        );
        assert_eq!(fix(r#""\uD83D""#).as_deref(), Some(r#""\ufffd""#));
        // Pairs, other escapes and an escaped backslash before "ud800" are left alone.
        assert_eq!(fix(r#""\ud83d\ude00 \u00e9 \n \"""#), None);
        assert_eq!(fix(r#""\\ud800""#), None);
        assert_eq!(
            fix(r#"{"k":"\ud800","n":[1,"\udfff"]}"#).as_deref(),
            Some(r#"{"k":"\ufffd","n":[1,"\ufffd"]}"#)
        );
        // Truncated escapes are left for the parser to refuse.
        assert_eq!(fix(r#""\ud8"#), None);
    }

    proptest::proptest! {
        /// Any sequence of UTF-16 code units, written as JSON escapes (as `JSON.stringify` does
        /// for lone surrogates), reads as the lossy UTF-8 of those units once repaired.
        #[test]
        fn any_utf16_reads_as_its_lossy_utf8(units in proptest::collection::vec(proptest::num::u16::ANY, 0..12)) {
            let escaped: String = units.iter().map(|u| format!("\\u{u:04x}")).collect();
            let json = format!("\"{escaped}\"");
            let fixed = replace_lone_surrogates(&json).unwrap_or(json);
            let read: String = serde_json::from_str(&fixed).unwrap();
            proptest::prop_assert_eq!(read, String::from_utf16_lossy(&units));
        }
    }

    proptest::proptest! {
        /// Any text decodes to a packet or an error; nothing panics.
        #[test]
        fn any_text_decodes_or_fails_cleanly(text in ".{0,80}") {
            let _ = decode(&text, 10);
        }

        /// An event the server writes is read back by the decoder as the same event.
        #[test]
        fn events_round_trip(nsp in "(/[a-z]{1,8})?", id in proptest::option::of(0u64..u64::MAX), name in "[a-z ]{1,12}", arg in ".{0,40}") {
            proptest::prop_assume!(!RESERVED_EVENTS.contains(&name.as_str()));
            let nsp = if nsp.is_empty() { "/".to_owned() } else { nsp };
            let mut out = Vec::new();
            Writer::start(&mut out, Kind::Event, &nsp, 0, id).event(&name, &arg).unwrap();
            let text = std::str::from_utf8(&out[1..]).unwrap();
            let decoded = decode(text, 10).unwrap();
            let arg_json = serde_json::to_string(&arg).unwrap();
            proptest::prop_assert_eq!(decoded, event(&nsp, id, &name, &[&arg_json], 0));
        }
    }
}
