//! A session's outbound queue: frames waiting to be written to its client, bounded in bytes.
//!
//! Anything may push (the session's own task, another connection's handler, a broadcast); one
//! consumer at a time takes: the session's task for WebSocket, a pending GET for long-polling.
//! A frame is shared, not copied: a broadcast frames its packet once and every recipient's queue
//! holds the same bytes. The bound counts what a client has not yet been sent; a client that
//! falls that far behind is closed (its queue refuses the push, and says so), so a slow reader
//! costs bounded memory and is told nothing false: it reconnects and catches up.
//!
//! A WebSocket session on a plain TCP connection shares its socket with the queue (see
//! `tcp.rs`): a push to an empty queue writes the frames at once, in the caller's task, and
//! queues only what the socket did not take; the session's task writes the rest when the socket
//! takes more. Bytes reach the socket in the order they were pushed, from one writer at a time
//! (the queue's lock is held across the write), and never while anything is queued before them.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker, ready};

use bytes::Bytes;

use crate::tcp::TcpConnection;

/// Frames written in one `writev`.
pub(crate) const MAX_SLICES: usize = 64;

/// One Engine.IO packet, ready for either transport.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The whole WebSocket frame: header, then payload.
    ws: Bytes,
    /// Where the payload starts in `ws`.
    head: u8,
    /// A binary message (its payload is raw bytes, not a text packet).
    binary: bool,
}

impl Frame {
    pub(crate) fn new(ws: Bytes, head: usize, binary: bool) -> Self {
        debug_assert!(head <= crate::proto::ws::MAX_SERVER_HEADER);
        Self {
            ws,
            head: head as u8,
            binary,
        }
    }

    /// A short text packet known at compile time (`2`, `6`, `1`, `3probe`), framed without
    /// allocating: `ws` is the whole frame, whose header is two bytes.
    pub(crate) const fn from_static(ws: &'static [u8]) -> Self {
        Self {
            ws: Bytes::from_static(ws),
            head: 2,
            binary: false,
        }
    }

    /// A text packet (`2`, `4...`), framed.
    pub(crate) fn text(packet: &[u8]) -> Self {
        let mut b = crate::proto::ws::FrameBuilder::with_capacity(packet.len());
        b.payload().extend_from_slice(packet);
        let (ws, head) = b.finish(true);
        Self::new(ws, head, false)
    }

    /// A binary message, framed.
    pub(crate) fn binary(data: &[u8]) -> Self {
        let mut b = crate::proto::ws::FrameBuilder::with_capacity(data.len());
        b.payload().extend_from_slice(data);
        let (ws, head) = b.finish(false);
        Self::new(ws, head, true)
    }

    /// Bytes to write on a WebSocket that are not a packet of their own (the rest of a frame
    /// partly written, a WebSocket control frame).
    pub(crate) fn raw(ws: Bytes) -> Self {
        Self {
            ws,
            head: 0,
            binary: false,
        }
    }

    /// The bytes to write on a WebSocket.
    pub(crate) fn ws(&self) -> &Bytes {
        &self.ws
    }

    /// The bytes to write on a WebSocket, taken.
    pub(crate) fn into_ws(self) -> Bytes {
        self.ws
    }

    /// The packet without its WebSocket header: the text of a text packet, or the raw bytes of
    /// a binary message.
    pub(crate) fn payload(&self) -> &[u8] {
        &self.ws[usize::from(self.head)..]
    }

    pub(crate) fn is_binary(&self) -> bool {
        self.binary
    }

    /// What the frame counts against the bound.
    pub(crate) fn cost(&self) -> usize {
        self.ws.len()
    }
}

/// Engine.IO's ping, framed.
pub(crate) const PING: Frame = Frame::from_static(b"\x81\x012");
/// Engine.IO's noop, framed.
pub(crate) const NOOP: Frame = Frame::from_static(b"\x81\x016");
/// Engine.IO's close, framed.
pub(crate) const CLOSE: Frame = Frame::from_static(b"\x81\x011");
/// The answer to a WebSocket probe, framed.
pub(crate) const PROBE_ANSWER: Frame = Frame::from_static(b"\x81\x063probe");

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The session is closed or closing.
    Closed,
    /// The client is this far behind: the session is being closed for it.
    Overflow,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Frame>,
    /// Bytes pushed and not yet reported written (queued, or taken and being written).
    pending: usize,
    /// Bytes that ever entered `queue` (what a direct write took at once never did), and the
    /// bytes in it now: whether everything queued before a moment has left, in constant time.
    entered: u64,
    queued: usize,
    closed: bool,
    overflowed: bool,
    /// The consumer, waiting for frames.
    waker: Option<Waker>,
    /// The session's WebSocket, when pushes may write to it directly.
    direct: Option<Arc<TcpConnection>>,
    /// The front frame was partly written to `direct`: the rest must follow before anything
    /// else.
    front_partial: bool,
}

impl State {
    /// Queues `frames` after the first `written` bytes of them, which the socket took.
    fn queue_unwritten(&mut self, frames: &[Frame], mut written: usize) {
        for frame in frames {
            let len = frame.ws.len();
            if written >= len {
                written -= len;
                continue;
            }
            let rest = if written > 0 {
                self.front_partial = self.queue.is_empty();
                Frame::raw(frame.ws.slice(written..))
            } else {
                frame.clone()
            };
            written = 0;
            self.count_in(rest.cost());
            self.queue.push_back(rest);
        }
    }

    /// Counts `cost` bytes entering the queue.
    fn count_in(&mut self, cost: usize) {
        self.pending += cost;
        self.entered += cost as u64;
        self.queued += cost;
    }

    /// Drops the first `written` bytes of the queue, which the socket took.
    fn consume(&mut self, mut written: usize) {
        self.pending = self.pending.saturating_sub(written);
        self.queued = self.queued.saturating_sub(written);
        while written > 0 {
            let Some(front) = self.queue.front_mut() else {
                break;
            };
            let len = front.ws.len();
            if written >= len {
                written -= len;
                self.queue.pop_front();
                self.front_partial = false;
            } else {
                *front = Frame::raw(front.ws.slice(written..));
                self.front_partial = true;
                written = 0;
            }
        }
    }
}

#[derive(Debug)]
pub(crate) struct Outbox {
    state: Mutex<State>,
    max_bytes: usize,
}

/// What a consumer takes.
pub(crate) enum Take {
    Frames(VecDeque<Frame>),
    /// Closed, and nothing is left to send.
    Closed,
}

impl Outbox {
    pub(crate) fn new(max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            max_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is left consistent at every step; a panic elsewhere cannot corrupt it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a frame. On `Overflow`, the queue closes itself and wakes its consumer; the
    /// caller closes the session.
    #[cfg(test)]
    pub(crate) fn push(&self, frame: Frame) -> Result<(), PushError> {
        self.push_all(std::slice::from_ref(&frame))
    }

    /// Queues frames one after the other, with nothing between them (a binary packet and its
    /// attachments).
    pub(crate) fn push_all(&self, frames: &[Frame]) -> Result<(), PushError> {
        let cost: usize = frames.iter().map(Frame::cost).sum();
        let waker = {
            let mut s = self.lock();
            if s.closed {
                return Err(if s.overflowed {
                    PushError::Overflow
                } else {
                    PushError::Closed
                });
            }
            if s.pending + cost > self.max_bytes {
                s.closed = true;
                s.overflowed = true;
                // A frame partly written stays, so that the client reads whole frames up to
                // the end of the connection.
                if s.front_partial {
                    s.queue.truncate(1);
                    s.pending = s.queue.iter().map(Frame::cost).sum();
                } else {
                    s.queue = VecDeque::new();
                }
                s.queued = s.queue.iter().map(Frame::cost).sum();
                let waker = s.waker.take();
                drop(s);
                if let Some(w) = waker {
                    w.wake();
                }
                return Err(PushError::Overflow);
            }
            if s.queue.is_empty()
                && let Some(tcp) = &s.direct
                && frames.len() <= MAX_SLICES
            {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                for (slot, frame) in slices.iter_mut().zip(frames) {
                    *slot = IoSlice::new(&frame.ws);
                }
                // Nothing written (the socket is full, or broken) queues it all: the session's
                // task writes it when the socket takes more, or finds the error.
                let written = tcp.try_write_vectored(&slices[..frames.len()]).unwrap_or(0);
                if written == cost {
                    return Ok(());
                }
                s.queue_unwritten(frames, written);
            } else {
                s.count_in(cost);
                s.queue.extend(frames.iter().cloned());
            }
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Takes every queued frame, or registers the consumer's waker when there is none.
    pub(crate) fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Take> {
        let mut s = self.lock();
        if !s.queue.is_empty() {
            s.queued = 0;
            return Poll::Ready(Take::Frames(std::mem::take(&mut s.queue)));
        }
        if s.closed {
            return Poll::Ready(Take::Closed);
        }
        match &mut s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Moves every queued frame into `into` (a WebSocket's write queue); or registers the
    /// consumer's waker when there is none.
    /// `Ready(false)` once closed with nothing left.
    pub(crate) fn poll_drain_into(
        &self,
        cx: &mut Context<'_>,
        into: &mut VecDeque<(Bytes, usize)>,
    ) -> Poll<bool> {
        let mut s = self.lock();
        if !s.queue.is_empty() {
            s.queued = 0;
            // The queue's allocation goes with its frames when the writer has none; an idle
            // session keeps no room for frames (both queues are freed once empty).
            if into.is_empty() {
                *into = std::mem::take(&mut s.queue)
                    .into_iter()
                    .map(|f| {
                        let cost = f.cost();
                        (f.into_ws(), cost)
                    })
                    .collect();
            } else {
                into.extend(s.queue.drain(..).map(|f| {
                    let cost = f.cost();
                    (f.into_ws(), cost)
                }));
                s.queue = VecDeque::new();
            }
            return Poll::Ready(true);
        }
        if s.closed {
            return Poll::Ready(false);
        }
        match &mut s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Lets pushes write to `tcp` directly while nothing is queued (`None`: no more).
    pub(crate) fn set_direct(&self, tcp: Option<Arc<TcpConnection>>) {
        self.lock().direct = tcp;
    }

    /// Writes the queue to `tcp` (the session's task, for frames pushes could not write), as
    /// far as the socket takes them; `Ready(Ok)` once everything is written, with the consumer's
    /// waker registered for what comes next.
    pub(crate) fn poll_flush_to(
        &self,
        cx: &mut Context<'_>,
        tcp: &TcpConnection,
    ) -> Poll<io::Result<()>> {
        let mut s = self.lock();
        loop {
            if s.queue.is_empty() {
                match &mut s.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    slot => *slot = Some(cx.waker().clone()),
                }
                return Poll::Ready(Ok(()));
            }
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let n = s.queue.len().min(MAX_SLICES);
            for (slot, frame) in slices.iter_mut().zip(s.queue.iter()) {
                *slot = IoSlice::new(&frame.ws);
            }
            let written = match ready!(tcp.poll_write_vectored(cx, &slices[..n])) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(written) => written,
                Err(err) => return Poll::Ready(Err(err)),
            };
            s.consume(written);
        }
    }

    /// Drops what is queued and not yet begun (a session closing for a client that is gone
    /// or broken); a frame partly written is kept, so that a close frame after it is still one.
    pub(crate) fn clear_unsent(&self) {
        let mut s = self.lock();
        let keep = if s.front_partial { 1 } else { 0 };
        s.queue.truncate(keep);
        s.pending = s.queue.iter().map(Frame::cost).sum();
        s.queued = s.pending;
    }

    /// Queues a frame before everything else (what must reach a WebSocket first, when the
    /// session's task hands its socket to the queue); `partial`: the rest of a frame partly
    /// written, which nothing may go before or inside. Nothing may have been written directly.
    pub(crate) fn push_first(&self, frame: Frame, partial: bool) {
        self.queue_one(frame, |s, frame| {
            debug_assert!(!s.front_partial);
            s.front_partial = partial;
            s.queue.push_front(frame);
        });
    }

    /// Counts `frame` in, lets `place` put it in the queue, and wakes the consumer.
    fn queue_one(&self, frame: Frame, place: impl FnOnce(&mut State, Frame)) {
        let waker = {
            let mut s = self.lock();
            s.count_in(frame.cost());
            place(&mut s, frame);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Takes every queued frame without waiting.
    pub(crate) fn take_now(&self) -> VecDeque<Frame> {
        let mut s = self.lock();
        s.queued = 0;
        std::mem::take(&mut s.queue)
    }

    /// Wakes the consumer waiting now, if any (a GET to release after an upgrade).
    pub(crate) fn wake_consumer(&self) {
        let waker = self.lock().waker.take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Forgets the consumer's waker (a GET that ended).
    pub(crate) fn unregister(&self) {
        self.lock().waker = None;
    }

    /// Reports `bytes` of taken frames as written.
    pub(crate) fn written(&self, bytes: usize) {
        let mut s = self.lock();
        s.pending = s.pending.saturating_sub(bytes);
    }

    /// Refuses further pushes; what is queued can still be taken.
    pub(crate) fn close(&self) {
        let waker = {
            let mut s = self.lock();
            s.closed = true;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.lock().queue.is_empty()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Queues a frame even when closed (the close packet a polling client is owed).
    pub(crate) fn push_final(&self, frame: Frame) {
        self.queue_one(frame, |s, frame| s.queue.push_back(frame));
    }

    /// Queues a WebSocket control frame (a pong) ahead of every whole frame queued: RFC 6455
    /// lets one go between any two frames, not inside one, so a frame partly written goes
    /// first.
    pub(crate) fn push_control(&self, frame: Frame) {
        self.queue_one(frame, |s, frame| {
            let at = usize::from(s.front_partial).min(s.queue.len());
            s.queue.insert(at, frame);
        });
    }

    /// A mark of this moment in the queue, for `has_left`.
    pub(crate) fn mark(&self) -> u64 {
        self.lock().entered
    }

    /// Everything that was queued at `mark` has left the queue (written, taken or dropped).
    pub(crate) fn has_left(&self, mark: u64) -> bool {
        let s = self.lock();
        debug_assert_eq!(s.queued, s.queue.iter().map(Frame::cost).sum::<usize>());
        s.entered - s.queued as u64 >= mark
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn frames_are_taken_in_order_and_the_bound_closes() {
        let frame = Frame::text(b"4hello"); // 8 bytes framed
        let out = Outbox::new(20);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(out.poll_take(&mut cx).is_pending());
        out.push(frame.clone()).unwrap();
        assert_eq!(
            count.0.load(Ordering::Relaxed),
            1,
            "the waiting consumer is woken"
        );
        out.push(Frame::text(b"2")).unwrap();
        let Poll::Ready(Take::Frames(frames)) = out.poll_take(&mut cx) else {
            panic!()
        };
        assert_eq!(
            frames
                .iter()
                .map(|f| f.payload().to_vec())
                .collect::<Vec<_>>(),
            vec![b"4hello".to_vec(), b"2".to_vec()]
        );
        // Taken but not written still counts: 11 of 20 bytes.
        assert_eq!(out.push(frame.clone()), Ok(()));
        assert_eq!(out.push(frame.clone()), Err(PushError::Overflow));
        assert!(out.is_closed());
        assert_eq!(out.push(frame), Err(PushError::Overflow));
    }

    #[test]
    fn written_bytes_free_room() {
        let out = Outbox::new(10);
        let f = Frame::text(b"4hello");
        out.push(f.clone()).unwrap();
        let _ = out.take_now();
        out.written(f.cost());
        out.push(f).unwrap();
    }

    #[test]
    fn static_frames_are_framed_like_built_ones() {
        for text in [&b"2"[..], b"6", b"1", b"3probe"] {
            let built = Frame::text(text);
            let mut ws = vec![0x81, text.len() as u8];
            ws.extend_from_slice(text);
            assert_eq!(&built.ws()[..], &ws[..]);
        }
        assert_eq!(PING.payload(), b"2");
        assert_eq!(NOOP.payload(), b"6");
        assert_eq!(CLOSE.payload(), b"1");
        assert_eq!(PROBE_ANSWER.payload(), b"3probe");
    }

    /// Reads unmasked text frames (a server's) off `bytes`, leaving an incomplete one.
    fn take_frames(bytes: &mut Vec<u8>) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            if bytes.len() < 2 {
                return out;
            }
            assert_eq!(bytes[0], 0x81, "a whole text frame starts here");
            let (len, head) = match bytes[1] {
                126 if bytes.len() >= 4 => {
                    (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4)
                }
                127 if bytes.len() >= 10 => {
                    let mut len = [0; 8];
                    len.copy_from_slice(&bytes[2..10]);
                    (u64::from_be_bytes(len) as usize, 10)
                }
                126 | 127 => return out,
                n => (usize::from(n), 2),
            };
            if bytes.len() < head + len {
                return out;
            }
            out.push(String::from_utf8(bytes[head..head + len].to_vec()).unwrap());
            bytes.drain(..head + len);
        }
    }

    /// Pushes from several threads to a socket that a slow reader empties (so that writes are
    /// partial and the queue fills and drains over and over) reach the reader as whole frames,
    /// each pusher's in the order it pushed them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn direct_writes_keep_frames_whole_and_in_order() {
        use tokio::io::AsyncReadExt;

        const PUSHERS: usize = 4;
        const EACH: usize = 400;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        socket2::SockRef::from(&server)
            .set_send_buffer_size(4096)
            .unwrap();
        let tcp = Arc::new(TcpConnection::new(server));
        let out = Arc::new(Outbox::new(usize::MAX));
        out.set_direct(Some(Arc::clone(&tcp)));

        // The session's task: writes what the pushes left queued.
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flusher = {
            let (out, tcp, done) = (Arc::clone(&out), Arc::clone(&tcp), Arc::clone(&done));
            tokio::spawn(std::future::poll_fn(move |cx| {
                match out.poll_flush_to(cx, &tcp) {
                    Poll::Ready(Ok(())) if done.load(Ordering::Acquire) => Poll::Ready(()),
                    Poll::Ready(Err(err)) => panic!("{err}"),
                    _ => Poll::Pending,
                }
            }))
        };
        let pushers: Vec<_> = (0..PUSHERS)
            .map(|p| {
                let out = Arc::clone(&out);
                std::thread::spawn(move || {
                    for seq in 0..EACH {
                        // Sizes from a few bytes to more than the send buffer.
                        let pad = "x".repeat((seq * 37 + p * 11) % 9_000);
                        out.push(Frame::text(format!("{p}:{seq}:{pad}").as_bytes()))
                            .unwrap();
                    }
                })
            })
            .collect();

        let mut next = [0usize; PUSHERS];
        let mut bytes = Vec::new();
        let mut buf = vec![0; 16 * 1024];
        while next.iter().sum::<usize>() < PUSHERS * EACH {
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "the connection ended early");
            bytes.extend_from_slice(&buf[..n]);
            for text in take_frames(&mut bytes) {
                let mut parts = text.splitn(3, ':');
                let p: usize = parts.next().unwrap().parse().unwrap();
                let seq: usize = parts.next().unwrap().parse().unwrap();
                assert_eq!(seq, next[p], "pusher {p}'s frames in order");
                assert_eq!(parts.next().unwrap().len(), (seq * 37 + p * 11) % 9_000);
                next[p] += 1;
            }
        }
        for pusher in pushers {
            pusher.join().unwrap();
        }
        assert!(bytes.is_empty());
        assert!(out.is_empty());
        done.store(true, Ordering::Release);
        out.wake_consumer();
        flusher.await.unwrap();
    }

    #[test]
    fn payloads_for_polling() {
        assert_eq!(Frame::text(b"40").payload(), b"40");
        let b = Frame::binary(&[1, 2, 3]);
        assert!(b.is_binary());
        assert_eq!(b.payload(), &[1, 2, 3]);
        assert_eq!(&b.ws()[..2], &[0x82, 3]);
    }
}
