//! A session's outbound queue: frames waiting to be written to its client, bounded in bytes.
//!
//! Anything may push (the session's own task, another connection's handler, a broadcast); one
//! consumer at a time takes: the session's task for WebSocket, a pending GET for long-polling.
//! A frame is shared, not copied: a broadcast frames its packet once and every recipient's queue
//! holds the same bytes. The bound counts what a client has not yet been sent; a client that
//! falls that far behind is closed (its queue refuses the push, and says so), so a slow reader
//! costs bounded memory and is told nothing false: it reconnects and catches up.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

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
    closed: bool,
    overflowed: bool,
    /// The consumer, waiting for frames.
    waker: Option<Waker>,
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
                s.queue = VecDeque::new();
                let waker = s.waker.take();
                drop(s);
                if let Some(w) = waker {
                    w.wake();
                }
                return Err(PushError::Overflow);
            }
            s.pending += cost;
            s.queue.extend(frames.iter().cloned());
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

    /// Takes every queued frame without waiting.
    pub(crate) fn take_now(&self) -> VecDeque<Frame> {
        std::mem::take(&mut self.lock().queue)
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
        let waker = {
            let mut s = self.lock();
            s.pending += frame.cost();
            s.queue.push_back(frame);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
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

    #[test]
    fn payloads_for_polling() {
        assert_eq!(Frame::text(b"40").payload(), b"40");
        let b = Frame::binary(&[1, 2, 3]);
        assert!(b.is_binary());
        assert_eq!(b.payload(), &[1, 2, 3]);
        assert_eq!(&b.ws()[..2], &[0x82, 3]);
    }
}
