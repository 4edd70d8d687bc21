//! WebSocket (RFC 6455) server framing, sans I/O: reading a client's frames from bytes, and
//! framing what the server sends so that one encoding serves every recipient.
//!
//! Frame headers are parsed and written by tungstenite (`FrameHeader`); the accept key of the
//! handshake is tungstenite's too. What is here is the frame loop around them: unmasking, joining
//! fragments, the rules for control frames, and the close handshake. It is ours because the
//! engine needs two things tungstenite's own reader and writer do not give: buffers that hold
//! nothing while a connection is idle (and go back to nothing after a large frame), and outgoing
//! frames encoded once and shared by every socket a broadcast reaches.

use std::io::Cursor;

use bytes::Bytes;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};

/// The most header bytes a server frame needs (no mask; a 64-bit length).
pub const MAX_SERVER_HEADER: usize = 10;

/// What a client's frames amount to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Text(Bytes),
    Binary(Bytes),
    /// A ping: the server answers with a pong of the same data.
    Ping(Bytes),
    /// The client closes: the server answers with a close frame and ends the connection.
    Close(Option<u16>),
}

/// A violation of RFC 6455 by the client, with the close code to answer it with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsError {
    pub code: u16,
    pub rule: &'static str,
}

impl std::fmt::Display for WsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (close code {})", self.rule, self.code)
    }
}

impl std::error::Error for WsError {}

fn protocol(rule: &'static str) -> WsError {
    WsError {
        code: u16::from(CloseCode::Protocol),
        rule,
    }
}

/// Reads a client's frames. Holds only what an incomplete frame or message needs.
#[derive(Debug, Default)]
pub struct FrameReader {
    /// The start of a frame that has not fully arrived.
    partial: Vec<u8>,
    /// A fragmented message being joined: whether it is text, and its data so far.
    message: Option<(bool, Vec<u8>)>,
    max_message: usize,
    closed: bool,
}

impl FrameReader {
    pub fn new(max_message: usize) -> Self {
        Self {
            max_message,
            ..Self::default()
        }
    }

    /// Whether a frame or message is half read (for tests and memory accounting).
    pub fn is_idle(&self) -> bool {
        self.partial.capacity() == 0 && self.message.is_none()
    }

    /// Reads the frames in `input` (freshly received bytes, which may be modified) and hands
    /// each complete message to `on`. Stops at the client's close frame: nothing after it is
    /// read.
    pub fn read(&mut self, input: &mut [u8], on: &mut impl FnMut(Incoming)) -> Result<(), WsError> {
        if self.closed {
            return Ok(());
        }
        if self.partial.is_empty() {
            let (used, needed) = self.frames(input, on)?;
            if used < input.len() && !self.closed {
                // Room for the whole frame at once, rather than growing step by step.
                self.partial.reserve_exact(needed.max(input.len() - used));
                self.partial.extend_from_slice(&input[used..]);
            }
        } else {
            self.partial.extend_from_slice(input);
            let mut partial = std::mem::take(&mut self.partial);
            let (used, needed) = self.frames(&mut partial, on)?;
            partial.drain(..used);
            if !partial.is_empty() && !self.closed {
                partial.reserve_exact(needed.saturating_sub(partial.len()));
                self.partial = partial;
            }
            // Otherwise the buffer is dropped: an idle connection holds none, whatever size
            // the last frame was.
        }
        Ok(())
    }

    /// Handles every complete frame at the start of `buf`. Returns how many bytes they took,
    /// and how many the incomplete frame after them needs in all (header included), when known.
    fn frames(
        &mut self,
        buf: &mut [u8],
        on: &mut impl FnMut(Incoming),
    ) -> Result<(usize, usize), WsError> {
        let mut used = 0;
        while !self.closed {
            let mut cursor = Cursor::new(&buf[used..]);
            let (header, len) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => break,
                Err(_) => return Err(protocol("a reserved opcode")),
            };
            let head = usize::try_from(cursor.position()).unwrap_or(usize::MAX);
            if matches!(header.opcode, OpCode::Control(_)) && (!header.is_final || len > 125) {
                return Err(protocol("a fragmented or oversized control frame"));
            }
            // The limit applies before the frame is buffered: a client announcing a huge frame
            // is refused at its header.
            let joined = self.message.as_ref().map_or(0, |(_, data)| data.len());
            if len > (self.max_message.saturating_sub(joined)) as u64 {
                return Err(WsError {
                    code: u16::from(CloseCode::Size),
                    rule: "a message over the max payload",
                });
            }
            let len = len as usize;
            if buf.len() - used - head < len {
                return Ok((used, head + len));
            }
            let payload = &mut buf[used + head..used + head + len];
            used += head + len;
            self.frame(header, payload, on)?;
        }
        Ok((used, 0))
    }

    fn frame(
        &mut self,
        header: FrameHeader,
        payload: &mut [u8],
        on: &mut impl FnMut(Incoming),
    ) -> Result<(), WsError> {
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(protocol("reserved bits set without an extension"));
        }
        let Some(mask) = header.mask else {
            return Err(protocol("an unmasked frame from a client"));
        };
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= mask[i & 3];
        }
        match header.opcode {
            OpCode::Control(control) => {
                if !header.is_final || payload.len() > 125 {
                    return Err(protocol("a fragmented or oversized control frame"));
                }
                match control {
                    Control::Ping => on(Incoming::Ping(Bytes::copy_from_slice(payload))),
                    Control::Pong => {}
                    Control::Close => {
                        self.closed = true;
                        on(Incoming::Close(close_code(payload)?));
                    }
                    Control::Reserved(_) => return Err(protocol("a reserved opcode")),
                }
            }
            OpCode::Data(Data::Continue) => {
                let Some((_, data)) = &mut self.message else {
                    return Err(protocol("a continuation frame with no message to continue"));
                };
                data.extend_from_slice(payload);
                if header.is_final {
                    let (text, data) = self.message.take().unwrap_or_default();
                    on(message(text, data)?);
                }
            }
            OpCode::Data(Data::Text | Data::Binary) => {
                if self.message.is_some() {
                    return Err(protocol("a new message before the last one ended"));
                }
                let text = header.opcode == OpCode::Data(Data::Text);
                if header.is_final {
                    on(message(text, payload.to_vec())?);
                } else {
                    self.message = Some((text, payload.to_vec()));
                }
            }
            OpCode::Data(Data::Reserved(_)) => return Err(protocol("a reserved opcode")),
        }
        Ok(())
    }
}

fn message(text: bool, data: Vec<u8>) -> Result<Incoming, WsError> {
    if !text {
        return Ok(Incoming::Binary(Bytes::from(data)));
    }
    if std::str::from_utf8(&data).is_err() {
        return Err(WsError {
            code: u16::from(CloseCode::Invalid),
            rule: "a text message that is not UTF-8",
        });
    }
    Ok(Incoming::Text(Bytes::from(data)))
}

/// Whether an endpoint may send `code` in a close frame: RFC 6455's own (7.4.1) but those only
/// for reporting (1005, 1006, 1015) and the unassigned 1004, the ones IANA registered since
/// (1012-1014), and the ranges for libraries and applications (3000-4999). As Node's `ws`.
fn may_be_sent(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

fn close_code(payload: &[u8]) -> Result<Option<u16>, WsError> {
    match payload {
        [] => Ok(None),
        [_] => Err(protocol("a close frame with a one-byte body")),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            if !may_be_sent(code) {
                return Err(protocol("a close code that may not be sent"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(WsError {
                    code: u16::from(CloseCode::Invalid),
                    rule: "a close reason that is not UTF-8",
                });
            }
            Ok(Some(code))
        }
    }
}

/// A buffer for one outgoing frame: the payload is written after room for the header, and the
/// header is put in front once the length is known, so a frame is built without a copy.
pub struct FrameBuilder {
    buf: Vec<u8>,
}

impl FrameBuilder {
    pub fn with_capacity(payload: usize) -> Self {
        let mut buf = Vec::with_capacity(MAX_SERVER_HEADER + payload);
        buf.resize(MAX_SERVER_HEADER, 0);
        Self { buf }
    }

    /// The payload written so far; append to it.
    pub fn payload(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// The finished frame, and where its payload starts in it.
    pub fn finish(self, text: bool) -> (Bytes, usize) {
        let mut buf = self.buf;
        let len = (buf.len() - MAX_SERVER_HEADER) as u64;
        let header = FrameHeader {
            opcode: OpCode::Data(if text { Data::Text } else { Data::Binary }),
            ..FrameHeader::default()
        };
        let head = header.len(len);
        let start = MAX_SERVER_HEADER - head;
        // Writing into a slice of exactly the header's size cannot fail.
        let _ = header.format(len, &mut &mut buf[start..MAX_SERVER_HEADER]);
        (Bytes::from(buf).slice(start..), head)
    }
}

/// A whole server frame for `payload`.
pub fn frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let header = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    let len = payload.len() as u64;
    let mut out = Vec::with_capacity(header.len(len) + payload.len());
    let _ = header.format(len, &mut out);
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// A close frame with `code`.
pub fn close_frame(code: u16) -> Bytes {
    frame(OpCode::Control(Control::Close), &code.to_be_bytes())
}

/// A close frame with no code: the answer to a client's close that had none.
pub fn empty_close_frame() -> Bytes {
    frame(OpCode::Control(Control::Close), &[])
}

/// A pong answering a ping's data.
pub fn pong_frame(data: &[u8]) -> Bytes {
    frame(OpCode::Control(Control::Pong), data)
}

/// The `Sec-WebSocket-Accept` value for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    tungstenite::handshake::derive_accept_key(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n < 65_536 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    fn read_all(reader: &mut FrameReader, chunks: &[Vec<u8>]) -> Result<Vec<Incoming>, WsError> {
        let mut seen = Vec::new();
        for chunk in chunks {
            let mut chunk = chunk.clone();
            reader.read(&mut chunk, &mut |m| seen.push(m))?;
        }
        Ok(seen)
    }

    #[test]
    fn whole_split_and_fragmented_messages() {
        let mut r = FrameReader::new(1_000);
        let mut both = client_frame(true, 1, b"4hello");
        both.extend(client_frame(true, 2, &[1, 2, 3]));
        assert_eq!(
            read_all(&mut r, &[both.clone()]).unwrap(),
            vec![
                Incoming::Text(Bytes::from_static(b"4hello")),
                Incoming::Binary(Bytes::from_static(&[1, 2, 3]))
            ]
        );
        // Byte by byte: the same messages, and nothing is held afterwards.
        let bytes: Vec<Vec<u8>> = both.iter().map(|b| vec![*b]).collect();
        assert_eq!(read_all(&mut r, &bytes).unwrap().len(), 2);
        assert!(r.is_idle());
        // Fragments with a ping between them.
        let mut frags = client_frame(false, 1, b"4he");
        frags.extend(client_frame(true, 9, b"p"));
        frags.extend(client_frame(false, 0, b"l"));
        frags.extend(client_frame(true, 0, b"lo"));
        assert_eq!(
            read_all(&mut r, &[frags]).unwrap(),
            vec![
                Incoming::Ping(Bytes::from_static(b"p")),
                Incoming::Text(Bytes::from_static(b"4hello"))
            ]
        );
    }

    #[test]
    fn a_large_frame_leaves_no_buffer_behind() {
        let mut r = FrameReader::new(100_000);
        let frame = client_frame(true, 1, &vec![b'4'; 50_000]);
        let (a, b) = frame.split_at(1_000);
        assert_eq!(
            read_all(&mut r, &[a.to_vec(), b.to_vec()]).unwrap().len(),
            1
        );
        assert!(r.is_idle());
    }

    #[test]
    fn violations_close_with_their_code() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (vec![0x81, 0x01, b'x'], 1002), // unmasked
            (
                {
                    let mut f = client_frame(true, 1, b"x");
                    f[0] |= 0x40;
                    f
                },
                1002,
            ), // rsv1
            (client_frame(true, 3, b"x"), 1002), // reserved data opcode
            (client_frame(true, 0xb, b"x"), 1002), // reserved control opcode
            (client_frame(false, 9, b"x"), 1002), // fragmented ping
            (client_frame(true, 9, &[0; 126]), 1002), // oversized ping
            (client_frame(true, 0, b"x"), 1002), // continuation of nothing
            (
                {
                    let mut f = client_frame(false, 1, b"a");
                    f.extend(client_frame(true, 1, b"b"));
                    f
                },
                1002,
            ),
            (client_frame(true, 1, &[0xff, 0xfe]), 1007), // not UTF-8
            (client_frame(true, 1, &[b'x'; 101]), 1009),  // over the max
            (
                {
                    let mut f = client_frame(false, 1, &[b'x'; 60]);
                    f.extend(client_frame(true, 0, &[b'x'; 60]));
                    f
                },
                1009,
            ),
            (client_frame(true, 8, &[0x03]), 1002), // one-byte close body
            (client_frame(true, 8, &1005u16.to_be_bytes()), 1002), // a code that may not be sent
        ];
        for (bytes, code) in cases {
            let mut r = FrameReader::new(100);
            let err = read_all(&mut r, std::slice::from_ref(&bytes)).unwrap_err();
            assert_eq!(err.code, code, "{bytes:x?}: {err}");
        }
    }

    #[test]
    fn a_huge_announced_frame_is_refused_at_its_header() {
        let mut r = FrameReader::new(1_000);
        let mut header = vec![0x81, 0x80 | 127];
        header.extend_from_slice(&(1u64 << 40).to_be_bytes());
        header.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(read_all(&mut r, &[header]).unwrap_err().code, 1009);
    }

    #[test]
    fn close_codes_a_client_may_send() {
        for code in [
            1000u16, 1001, 1003, 1007, 1011, 1012, 1013, 1014, 3000, 4000, 4999,
        ] {
            let mut r = FrameReader::new(100);
            let bytes = client_frame(true, 8, &code.to_be_bytes());
            assert_eq!(
                read_all(&mut r, &[bytes]).unwrap(),
                vec![Incoming::Close(Some(code))],
                "{code}"
            );
        }
        for code in [
            0u16,
            999,
            1004,
            1005,
            1006,
            1015,
            1016,
            2999,
            5000,
            u16::MAX,
        ] {
            let mut r = FrameReader::new(100);
            let bytes = client_frame(true, 8, &code.to_be_bytes());
            assert_eq!(read_all(&mut r, &[bytes]).unwrap_err().code, 1002, "{code}");
        }
    }

    #[test]
    fn close_stops_reading() {
        let mut r = FrameReader::new(100);
        let mut bytes = client_frame(true, 8, &1000u16.to_be_bytes());
        bytes.extend(client_frame(true, 1, b"4late"));
        assert_eq!(
            read_all(&mut r, &[bytes]).unwrap(),
            vec![Incoming::Close(Some(1000))]
        );
    }

    #[test]
    fn server_frames() {
        let mut b = FrameBuilder::with_capacity(5);
        b.payload().extend_from_slice(b"4hello");
        let (frame, head) = b.finish(true);
        assert_eq!(&frame[..], b"\x81\x064hello");
        assert_eq!(head, 2);
        let mut b = FrameBuilder::with_capacity(0);
        b.payload().extend(std::iter::repeat_n(b'x', 300));
        let (frame, head) = b.finish(true);
        assert_eq!(&frame[..4], &[0x81, 126, 0x01, 0x2c]);
        assert_eq!((head, frame.len()), (4, 304));
        let mut b = FrameBuilder::with_capacity(0);
        b.payload().extend(std::iter::repeat_n(b'x', 70_000));
        let (frame, head) = b.finish(false);
        assert_eq!(&frame[..2], &[0x82, 127]);
        assert_eq!(head, 10);
        assert_eq!(&close_frame(1000)[..], &[0x88, 0x02, 0x03, 0xe8]);
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    proptest::proptest! {
        /// Any bytes from a client are read as messages or refused with a close code; nothing
        /// panics, and the reader never holds more than a frame's worth.
        #[test]
        fn any_bytes_read_or_refused(chunks in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..64), 0..8)) {
            let mut r = FrameReader::new(256);
            for mut chunk in chunks {
                if r.read(&mut chunk, &mut |_| {}).is_err() { break; }
            }
        }
    }
}
