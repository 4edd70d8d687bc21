//! The one task of a session. It reads the client's WebSocket frames (or takes the packets its
//! POSTs carried), writes its outbound queue, keeps the heartbeat, probes and completes an upgrade
//! from long-polling to WebSocket, runs the layer above Engine.IO, and closes the session.
//!
//! It is a hand-written future rather than a `select!` loop so that its state is exactly its
//! fields: an idle WebSocket session holds no read buffer (frames are read through a buffer on
//! the stack, and only the start of an incomplete frame is kept) and no write buffer (frames are
//! written from the shared queue, several per `writev`).
//!
//! A WebSocket on a plain TCP connection (`tcp.rs`) is written by whoever sends to it while its
//! queue is empty; this task writes only what the socket did not take at once, and its own
//! frames (the open packet, pongs, close frames) go through the same queue, so that the bytes of
//! one frame are never cut by another's.

use std::collections::VecDeque;
use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use hyper::upgrade::{OnUpgrade, Upgraded};
use tokio::time::Sleep;

use crate::engine::{Layer, LayerFactory, Message, Shared};
use crate::outbox::{CLOSE, Frame, MAX_SLICES, NOOP, Outbox, PING, PROBE_ANSWER};
use crate::proto::eio;
use crate::proto::heartbeat::{Beat, Heartbeat};
use crate::proto::ws::{self, FrameReader, Incoming};
use crate::session::{CloseReason, Session, Transport};
use crate::tcp::Io;
/// Rounds of work in one wake-up before the task yields to others.
const MAX_ROUNDS: usize = 16;
/// How long a closing session may take to finish: its handlers, flushing a WebSocket, or a
/// polling client's last GET to fetch the close packet.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a polling session the client closed, or the server's shutdown, waits for a GET
/// already on its way.
const CLIENT_CLOSE_LINGER: Duration = Duration::from_millis(500);

/// How long a probe given up has to take its close frame.
const PROBE_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Closes a probe WebSocket that will not be the transport (a bad probe, an upgrade that timed
/// out): what it still had to send, a close frame, then the end of the stream, as Node's server
/// does; not a bare end of the stream, which a client reports as an abnormal closure.
async fn close_probe(mut ws: Ws) {
    // One that broke the protocol has its close frame, with the rule's code, queued already.
    if !ws.closing {
        ws.queue.push_back((ws::close_frame(1000), 0));
    }
    let closed = std::future::poll_fn(|cx| {
        ws.poll_write(cx, |_| {});
        if ws.broken {
            return Poll::Ready(());
        }
        if !ws.queue.is_empty() {
            return Poll::Pending;
        }
        if ws.io.poll_flush(cx).is_pending() {
            return Poll::Pending;
        }
        ws.io.poll_shutdown(cx).map(|_| ())
    });
    let _ = tokio::time::timeout(PROBE_CLOSE_TIMEOUT, closed).await;
}

/// Now, on tokio's clock (which tests may pause), as the engine's deadlines count time.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// A WebSocket of the session: the transport, or one being probed.
struct Ws {
    io: Io,
    reader: FrameReader,
    /// Bytes to write, and what each counts against the outbound bound. Unused once `shared`.
    queue: VecDeque<(Bytes, usize)>,
    /// The session's transport on a plain TCP connection: everything it sends goes through the
    /// session's outbox, whose pushes write to the socket directly.
    shared: bool,
    /// The sending direction was shut down.
    shut: bool,
    unflushed: bool,
    /// No more frames will be read (the client closed, or broke the rules).
    read_done: bool,
    /// A write failed: nothing more can be sent.
    broken: bool,
    /// Shut down after the queue is written.
    closing: bool,
    /// The payload of the latest ping, whose pong waits for what was sent before it (see
    /// `answer_ping`).
    pong_owed: Option<Bytes>,
    /// With the shared queue: the queue's mark when the first unanswered ping came.
    pong_after: u64,
    /// The front of `queue` is the rest of a frame partly written.
    front_partial: bool,
}

impl Ws {
    fn new(upgraded: Upgraded, max_payload: usize) -> Self {
        Self {
            io: Io::new(upgraded),
            reader: FrameReader::new(max_payload),
            queue: VecDeque::new(),
            shared: false,
            shut: false,
            unflushed: false,
            read_done: false,
            broken: false,
            closing: false,
            pong_owed: None,
            pong_after: 0,
            front_partial: false,
        }
    }

    /// Reads what has arrived: the messages, and how the stream ended if it did. A violation of
    /// RFC 6455 queues the close frame that answers it and ends reading.
    fn poll_read(&mut self, cx: &mut Context<'_>, outbox: &Outbox) -> Poll<Read> {
        let reader = &mut self.reader;
        let read = self.io.poll_read(cx, |filled| {
            let mut messages = Vec::new();
            let broken = reader.read(filled, &mut |m| messages.push(m)).err();
            (messages, broken)
        });
        match read {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(_)) => {
                self.read_done = true;
                Poll::Ready(Read::end(CloseReason::TransportError))
            }
            Poll::Ready(Ok(None)) => {
                self.read_done = true;
                Poll::Ready(Read::end(CloseReason::TransportClose))
            }
            Poll::Ready(Ok(Some((messages, broken)))) => {
                let mut end = None;
                if let Some(err) = broken {
                    tracing::debug!(%err, "closing a WebSocket that broke the protocol");
                    self.read_done = true;
                    self.send_control(ws::close_frame(err.code), outbox);
                    self.closing = true;
                    end = Some(CloseReason::TransportError);
                }
                Poll::Ready(Read { messages, end })
            }
        }
    }

    /// Sends a frame of the WebSocket's own (a pong, a close frame) after what is queued.
    fn send_control(&mut self, frame: Bytes, outbox: &Outbox) {
        if self.shared {
            outbox.push_final(Frame::raw(frame));
        } else {
            self.queue.push_back((frame, 0));
        }
    }

    /// Answers a ping. While anything sent before it is still unwritten, the pong waits, and
    /// a later ping replaces it: RFC 6455 (5.5.3) lets an endpoint that has not yet answered a
    /// ping answer only the latest. So a client that sends pings and reads nothing costs one
    /// pong, not one per ping (its broadcasts still count against the outbound bound). The
    /// pong leaves once what was queued before the first unanswered ping is written, ahead of
    /// what was queued since: a client that reads a little slower than its room sends gets
    /// its pong as soon as it has read up to its ping, not when it has caught up.
    fn answer_ping(&mut self, data: Bytes, outbox: &Outbox) {
        if self.closing {
            return;
        }
        if let Some(owed) = &mut self.pong_owed {
            // Only writing can release it, and `write` looks: nothing to check per ping (a
            // flood of pings costs no more than reading them).
            *owed = data;
            return;
        }
        self.pong_after = if self.shared { outbox.mark() } else { 0 };
        self.pong_owed = Some(data);
        self.release_pong(outbox);
    }

    /// Queues the pong that `answer_ping` held back, once everything before its ping is
    /// written; `true` when it did.
    fn release_pong(&mut self, outbox: &Outbox) -> bool {
        if self.pong_owed.is_none() || self.closing {
            return false;
        }
        let ready = match self.shared {
            true => outbox.has_left(self.pong_after),
            // The task's own queue holds what was taken before the ping; the pong goes
            // before anything taken from the outbox after it is written.
            false => self.queue.is_empty(),
        };
        if !ready {
            return false;
        }
        if let Some(data) = self.pong_owed.take() {
            let pong = ws::pong_frame(&data);
            match self.shared {
                true => outbox.push_control(Frame::raw(pong)),
                false => self.queue.push_back((pong, 0)),
            }
        }
        true
    }

    /// Hands the socket to `outbox` (a plain TCP connection that became the session's
    /// transport), with what this WebSocket still had to write in front of what is queued.
    fn share(&mut self, outbox: &Outbox) {
        let Some(tcp) = self.io.tcp() else {
            return;
        };
        let queue = std::mem::take(&mut self.queue);
        for (i, (bytes, _)) in queue.into_iter().enumerate().rev() {
            outbox.push_first(Frame::raw(bytes), i == 0 && self.front_partial);
        }
        outbox.set_direct(Some(Arc::clone(tcp)));
        self.shared = true;
        // A pong owed waits for all that is queued now, as for a ping that came now.
        self.pong_after = outbox.mark();
    }

    /// Writes what pushes left queued on a shared socket (marking it broken on an error), and
    /// shuts a closing one down once everything is written.
    fn flush_shared(&mut self, cx: &mut Context<'_>, outbox: &Outbox) {
        let Some(tcp) = self.io.tcp() else {
            return;
        };
        if !self.broken && matches!(outbox.poll_flush_to(cx, tcp), Poll::Ready(Err(_))) {
            self.broken = true;
        }
        if self.closing && !self.broken && !self.shut && outbox.is_empty() {
            self.shut = true;
            let _ = tcp.shutdown();
        }
    }

    /// Writes as much of the queue as the connection takes; `true` when it wrote something.
    fn poll_write(&mut self, cx: &mut Context<'_>, mut done: impl FnMut(usize)) -> bool {
        let mut wrote = false;
        while !self.queue.is_empty() && !self.broken {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let n = self.queue.len().min(MAX_SLICES);
            for (slot, (bytes, _)) in slices.iter_mut().zip(self.queue.iter()) {
                *slot = IoSlice::new(bytes);
            }
            match self.io.poll_write_vectored(cx, &slices[..n]) {
                Poll::Pending => return wrote,
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    self.broken = true;
                    return wrote;
                }
                Poll::Ready(Ok(mut written)) => {
                    wrote = true;
                    self.unflushed = true;
                    while written > 0 {
                        let Some((front, cost)) = self.queue.front_mut() else {
                            break;
                        };
                        if written >= front.len() {
                            written -= front.len();
                            done(*cost);
                            self.queue.pop_front();
                            self.front_partial = false;
                        } else {
                            front.advance(written);
                            self.front_partial = true;
                            written = 0;
                        }
                    }
                }
            }
        }
        if self.unflushed && !self.broken {
            match self.io.poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(_)) => self.broken = true,
                Poll::Pending => {}
            }
        }
        if self.closing && self.queue.is_empty() && !self.broken {
            let _ = self.io.poll_shutdown(cx);
        }
        wrote
    }

    fn idle(&self, outbox: &Outbox) -> bool {
        if self.shared {
            return outbox.is_empty();
        }
        self.queue.is_empty() && !self.unflushed
    }
}

/// What one read of a WebSocket brought.
struct Read {
    messages: Vec<Incoming>,
    /// The stream ended, or must: the client's close frame comes as a message instead.
    end: Option<CloseReason>,
}

impl Read {
    fn end(reason: CloseReason) -> Self {
        Self {
            messages: Vec::new(),
            end: Some(reason),
        }
    }
}

enum Probe {
    /// The 101 answer is out; waiting for hyper to hand the connection over.
    Upgrading(OnUpgrade),
    /// Open; `probed` once the client's `2probe` was answered.
    Open { ws: Ws, probed: bool },
}

struct Closing {
    reason: CloseReason,
    deadline: Instant,
    /// A polling client that closed: its GET on the way is waited for until then.
    linger_until: Instant,
}

/// Everything of the task but its timer.
struct State<F: LayerFactory> {
    shared: Arc<Shared<F>>,
    session: Arc<Session>,
    layer: F::Layer,
    heartbeat: Heartbeat,
    /// A session opened over WebSocket: the upgrade to wait for, and the open packet. (Boxed,
    /// as `probe` is: a moment of a session's life should not cost every session its size.)
    opening: Option<Box<(OnUpgrade, Frame)>>,
    ws: Option<Ws>,
    probe: Option<Box<(Probe, Instant)>>,
    /// Packets read, waiting for the layer to take them.
    inbox: VecDeque<eio::Inbound>,
    /// The client ended the transport after the packets in `inbox`: the session closes for
    /// this reason once they are handled.
    end_after_inbox: Option<CloseReason>,
    closing: Option<Closing>,
}

pin_project_lite::pin_project! {
    /// The task of one session.
    pub(crate) struct Driver<F: LayerFactory> {
        #[pin]
        timer: Sleep,
        timer_at: Instant,
        state: State<F>,
        done: bool,
    }
}

impl<F: LayerFactory> Driver<F> {
    pub(crate) fn new(
        shared: Arc<Shared<F>>,
        session: Arc<Session>,
        layer: F::Layer,
        opening: Option<(OnUpgrade, Frame)>,
    ) -> Self {
        let now = now();
        let config = &shared.config;
        let heartbeat = Heartbeat::new(now, config.ping_interval, config.ping_timeout);
        let at = heartbeat.deadline();
        Self {
            timer: tokio::time::sleep_until(at.into()),
            timer_at: at,
            state: State {
                shared,
                session,
                layer,
                heartbeat,
                opening: opening.map(Box::new),
                ws: None,
                probe: None,
                inbox: VecDeque::new(),
                end_after_inbox: None,
                closing: None,
            },
            done: false,
        }
    }
}

impl<F: LayerFactory> Future for Driver<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        if *this.done {
            return Poll::Ready(());
        }
        for _ in 0..MAX_ROUNDS {
            let fired = this.timer.as_mut().poll(cx).is_ready();
            match this.state.step(cx) {
                Step::Done => {
                    *this.done = true;
                    this.state.finish();
                    return Poll::Ready(());
                }
                Step::Again => {}
                Step::Wait(deadline) => {
                    if deadline == *this.timer_at && !fired {
                        return Poll::Pending;
                    }
                    *this.timer_at = deadline;
                    this.timer.as_mut().reset(deadline.into());
                    // Registers the new deadline; one that has passed already means more work.
                    if this.timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
            }
        }
        // Much to do: let other tasks run, and come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

enum Step {
    /// Nothing more can happen before a wake-up or this deadline.
    Wait(Instant),
    /// Progress was made; go round again.
    Again,
    /// The session is over.
    Done,
}

impl<F: LayerFactory> State<F> {
    fn step(&mut self, cx: &mut Context<'_>) -> Step {
        // A session that starts closing in this step lets its layer see it first.
        let was_closing = self.closing.is_some();
        let mut busy = false;
        busy |= self.take_control(cx);
        busy |= self.open(cx);
        let mut read_waiting = false;
        busy |= self.read(cx, &mut read_waiting);
        busy |= self.probe(cx);
        busy |= self.feed();
        let layer_idle = self.layer.poll_work(cx).is_ready();
        // Packets left for a layer that takes more again.
        busy |= !self.inbox.is_empty() && self.layer.accepting();
        busy |= self.timers();
        busy |= self.write(cx);
        // The inbox emptied, or the layer took more again, after this round's read was skipped:
        // nothing would wake the task for what the client sends next (a write that needed no
        // wake-up, as a direct one does, is no longer there to cover for it).
        busy |= !read_waiting && self.wants_read();
        if was_closing
            && let Some(closing) = &self.closing
            && (now() >= closing.deadline || self.closed(layer_idle))
        {
            return Step::Done;
        }
        if busy {
            return Step::Again;
        }
        Step::Wait(self.deadline())
    }

    fn deadline(&self) -> Instant {
        if let Some(closing) = &self.closing {
            if matches!(
                closing.reason,
                CloseReason::TransportClose | CloseReason::ServerShutdown
            ) && closing.linger_until > now()
            {
                return closing.linger_until;
            }
            return closing.deadline;
        }
        let mut at = self.heartbeat.deadline();
        if let Some(layer) = self.layer.deadline() {
            at = at.min(layer);
        }
        if let Some(probe) = &self.probe {
            at = at.min(probe.1);
        }
        at
    }

    /// Takes what other tasks handed over; registers for more.
    fn take_control(&mut self, cx: &mut Context<'_>) -> bool {
        let mut c = self.session.control();
        match &c.driver {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => c.driver = Some(cx.waker().clone()),
        }
        if let Some(reason) = c.close.take() {
            drop(c);
            self.close(reason);
            return true;
        }
        // What is taken here is handled later in this same round.
        if !c.inbox.is_empty() && self.inbox.is_empty() {
            self.inbox = std::mem::take(&mut c.inbox);
            if let Some(w) = c.post_waiter.take() {
                w.wake();
            }
        }
        if let Some(upgrade) = c.probe.take() {
            if self.probe.is_none() && self.closing.is_none() {
                let deadline = now() + self.shared.config.upgrade_timeout;
                self.probe = Some(Box::new((Probe::Upgrading(upgrade), deadline)));
            } else {
                // A second probe while one is under way, or a probe of a session that is
                // closing: accepted and closed, as `Engine::probe` does when it can tell.
                tokio::spawn(crate::engine::close_at_once(upgrade));
            }
        }
        false
    }

    /// A session opened over WebSocket: waits for the connection, then sends the open packet.
    fn open(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(opening) = &mut self.opening else {
            return false;
        };
        let result = match Pin::new(&mut opening.0).poll(cx) {
            Poll::Pending => return false,
            Poll::Ready(result) => result,
        };
        let Some(opening) = self.opening.take() else {
            return false;
        };
        let (_, open) = *opening;
        match result {
            Ok(upgraded) => {
                let mut ws = Ws::new(upgraded, self.shared.config.max_payload);
                ws.queue.push_back((open.ws().clone(), 0));
                ws.share(&self.session.outbox);
                self.ws = Some(ws);
            }
            Err(err) => {
                tracing::debug!(%err, "a WebSocket handshake did not complete");
                self.close(CloseReason::TransportError);
            }
        }
        true
    }

    /// Whether the transport WebSocket is to be read now: open for reading, and the layer takes
    /// more.
    fn wants_read(&self) -> bool {
        self.ws.as_ref().is_some_and(|ws| !ws.read_done)
            && self.inbox.is_empty()
            && self.layer.accepting()
    }

    /// Reads the transport WebSocket, while the layer takes more. `read_waiting` says whether
    /// the task is now registered to be woken when more arrives.
    fn read(&mut self, cx: &mut Context<'_>, read_waiting: &mut bool) -> bool {
        if !self.wants_read() {
            return false;
        }
        let Some(ws) = &mut self.ws else {
            return false;
        };
        match ws.poll_read(cx, &self.session.outbox) {
            Poll::Pending => {
                *read_waiting = true;
                false
            }
            Poll::Ready(read) => {
                self.take_incoming(read);
                true
            }
        }
    }

    /// Queues what the transport WebSocket brought for the layer, and answers its control
    /// frames.
    fn take_incoming(&mut self, read: Read) {
        let mut end = read.end;
        for message in read.messages {
            match message {
                Incoming::Text(text) => match eio::decode_text(text) {
                    Ok(packet) => self.inbox.push_back(packet),
                    Err(err) => {
                        tracing::debug!(sid = %self.session.sid(), %err, "unreadable packet");
                        end = Some(CloseReason::ParseError);
                        break;
                    }
                },
                Incoming::Binary(data) => self.inbox.push_back(eio::Inbound::Binary(data)),
                Incoming::Ping(data) => {
                    if let Some(ws) = &mut self.ws {
                        ws.answer_ping(data, &self.session.outbox);
                    }
                }
                Incoming::Close(code) => {
                    if let Some(ws) = &mut self.ws
                        && !ws.closing
                    {
                        // The answer echoes the client's code (RFC 6455 5.5.1), or has none when
                        // the client's had none, as Node's does.
                        let answer = code.map_or_else(ws::empty_close_frame, ws::close_frame);
                        ws.send_control(answer, &self.session.outbox);
                        ws.closing = true;
                    }
                    end = end.or(Some(CloseReason::TransportClose));
                    break;
                }
            }
        }
        if let Some(reason) = end {
            if let Some(ws) = &mut self.ws {
                ws.read_done = true;
            }
            self.end_after_inbox = self.end_after_inbox.or(Some(reason));
        }
    }

    /// Gives read packets to the layer, as far as it takes them; then applies an end of the
    /// transport that came after them.
    fn feed(&mut self) -> bool {
        let mut busy = false;
        while let Some(packet) = self.inbox.front() {
            if self.closing.is_some() {
                self.inbox.clear();
                break;
            }
            let urgent = matches!(packet, eio::Inbound::Pong(_) | eio::Inbound::Noop);
            if !urgent && !self.layer.accepting() {
                break;
            }
            let Some(packet) = self.inbox.pop_front() else {
                break;
            };
            if !matches!(packet, eio::Inbound::Pong(_)) && self.heartbeat.awaiting_pong() {
                self.heartbeat.on_activity(now());
                self.session.set_pong_due(self.heartbeat.pong_due());
            }
            let result = match packet {
                eio::Inbound::Close => Err(CloseReason::TransportClose),
                eio::Inbound::Pong(_) => {
                    self.heartbeat.on_pong(now());
                    self.session.set_pong_due(None);
                    Ok(())
                }
                eio::Inbound::Noop => Ok(()),
                // In Engine.IO v4 only the server pings (probes come on the probe WebSocket).
                eio::Inbound::Ping(_) => Err(CloseReason::TransportError),
                // An upgrade packet belongs on a WebSocket being probed, not on the transport.
                eio::Inbound::Upgrade => Err(CloseReason::ParseError),
                eio::Inbound::Message(text) => self.layer.message(Message::Text(text)),
                eio::Inbound::Binary(data) => self.layer.message(Message::Binary(data)),
            };
            if let Err(reason) = result {
                self.close(reason);
                busy = true;
            }
        }
        if self.inbox.is_empty() && self.inbox.capacity() > 0 {
            // An idle session keeps no room for packets.
            self.inbox = VecDeque::new();
        }
        if self.inbox.is_empty()
            && let Some(reason) = self.end_after_inbox.take()
        {
            self.close(reason);
            busy = true;
        }
        busy
    }

    /// Drives an upgrade in progress.
    fn probe(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(boxed) = &mut self.probe else {
            return false;
        };
        let (probe, deadline) = &mut **boxed;
        if now() >= *deadline {
            tracing::debug!(sid = %self.session.sid(), "upgrade timed out");
            self.drop_probe();
            return true;
        }
        if let Probe::Upgrading(upgrade) = probe {
            match Pin::new(upgrade).poll(cx) {
                Poll::Pending => return false,
                Poll::Ready(Err(_)) => {
                    self.drop_probe();
                    return true;
                }
                Poll::Ready(Ok(upgraded)) => {
                    *probe = Probe::Open {
                        ws: Ws::new(upgraded, self.shared.config.max_payload),
                        probed: false,
                    };
                }
            }
        }
        let Probe::Open { ws, probed } = probe else {
            return false;
        };
        let mut busy = ws.poll_write(cx, |_| {});
        if ws.release_pong(&self.session.outbox) {
            busy |= ws.poll_write(cx, |_| {});
        }
        if ws.broken {
            self.drop_probe();
            return true;
        }
        let read = match ws.poll_read(cx, &self.session.outbox) {
            Poll::Pending => return busy,
            Poll::Ready(read) => read,
        };
        let mut messages = read.messages.into_iter();
        let mut upgrade = false;
        let mut abort = read.end.is_some();
        for message in messages.by_ref() {
            let packet = match message {
                Incoming::Text(text) => eio::decode_text(text),
                Incoming::Ping(data) => {
                    ws.answer_ping(data, &self.session.outbox);
                    continue;
                }
                Incoming::Binary(_) | Incoming::Close(_) => {
                    abort = true;
                    break;
                }
            };
            match packet {
                Ok(eio::Inbound::Ping(data)) if &data[..] == b"probe" && !*probed => {
                    *probed = true;
                    ws.queue.push_back((PROBE_ANSWER.ws().clone(), 0));
                    // A pending GET is answered with a noop, so that the client can pause
                    // polling; so is every GET until the upgrade completes.
                    self.session.set_probed(true);
                    self.session.outbox.wake_consumer();
                }
                // Node's server takes an upgrade packet without a probe before it, too.
                Ok(eio::Inbound::Upgrade) => {
                    upgrade = true;
                    break;
                }
                _ => {
                    abort = true;
                    break;
                }
            }
        }
        if upgrade
            && let Some(probe) = self.probe.take()
            && let (Probe::Open { mut ws, .. }, _) = *probe
        {
            ws.share(&self.session.outbox);
            self.ws = Some(ws);
            self.session.set_upgraded();
            // A GET still waiting is answered with a noop.
            self.session.outbox.wake_consumer();
            tracing::trace!(sid = %self.session.sid(), "upgraded to WebSocket");
            // Whatever came after the upgrade packet is the transport's now.
            self.take_incoming(Read {
                messages: messages.collect(),
                end: read.end,
            });
            return true;
        }
        if abort {
            tracing::debug!(sid = %self.session.sid(), "upgrade aborted");
            self.drop_probe();
        }
        true
    }

    /// Gives up an upgrade: polling goes on.
    fn drop_probe(&mut self) {
        if let Some(probe) = self.probe.take()
            && let (Probe::Open { ws, .. }, _) = *probe
            && !ws.broken
        {
            tokio::spawn(close_probe(ws));
        }
        if self.session.probed() {
            self.session.set_probed(false);
        }
    }

    fn timers(&mut self) -> bool {
        let now = now();
        let mut busy = false;
        if self.closing.is_none() && now >= self.heartbeat.deadline() {
            match self.heartbeat.on_timer(now) {
                // Written later in this same round.
                Beat::Ping => {
                    let _ = self.session.send(PING);
                    self.session.set_pong_due(self.heartbeat.pong_due());
                }
                Beat::TimedOut => {
                    self.close(CloseReason::PingTimeout);
                    busy = true;
                }
                Beat::Wait => {}
            }
        }
        if self.closing.is_none()
            && self.layer.deadline().is_some_and(|at| now >= at)
            && let Some(reason) = self.layer.on_timer(now)
        {
            self.close(reason);
            busy = true;
        }
        busy
    }

    /// Writes the transport WebSocket: its own frames, then the outbound queue.
    fn write(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(ws) = &mut self.ws else {
            return false;
        };
        let outbox = &self.session.outbox;
        if ws.shared {
            ws.flush_shared(cx, outbox);
            if ws.release_pong(outbox) {
                ws.flush_shared(cx, outbox);
            }
            if ws.broken && self.closing.is_none() {
                self.close(CloseReason::TransportError);
                return true;
            }
            return false;
        }
        loop {
            if ws.queue.is_empty() && !ws.closing && !ws.broken {
                ws.release_pong(outbox);
            }
            if ws.queue.is_empty() && !ws.closing && !ws.broken {
                let _ = outbox.poll_drain_into(cx, &mut ws.queue);
            }
            if !ws.poll_write(cx, |cost| {
                if cost > 0 {
                    outbox.written(cost);
                }
            }) {
                break;
            }
        }
        if ws.queue.is_empty() && ws.queue.capacity() > 0 {
            // An idle session keeps no room for frames.
            ws.queue = VecDeque::new();
        }
        // Everything written, or the connection full: either way the task is registered to
        // be woken, and another round now would find nothing to do.
        if ws.broken && self.closing.is_none() {
            self.close(CloseReason::TransportError);
            return true;
        }
        false
    }

    /// Begins closing the session; `step` finishes it.
    fn close(&mut self, reason: CloseReason) {
        if self.closing.is_some() {
            return;
        }
        tracing::debug!(sid = %self.session.sid(), %reason, "session closing");
        {
            let mut c = self.session.control();
            c.ended = true;
            c.closing = Some(reason);
            c.close = None;
            if let Some(w) = c.post_waiter.take() {
                w.wake();
            }
        }
        self.drop_probe();
        let transport = self.session.transport();
        match reason {
            // The server ends the session: what is queued goes out first, then the close.
            CloseReason::ForcedClose | CloseReason::ServerShutdown => {
                if transport == Transport::Polling {
                    self.session.outbox.close();
                    self.session.outbox.push_final(CLOSE);
                } else {
                    self.session.outbox.close();
                    if let Some(ws) = &mut self.ws
                        && ws.shared
                    {
                        ws.send_control(ws::close_frame(1001), &self.session.outbox);
                        ws.closing = true;
                    } else if let Some(ws) = &mut self.ws {
                        ws.queue.extend(
                            self.session
                                .outbox
                                .take_now()
                                .into_iter()
                                .map(|f| (f.ws().clone(), f.cost())),
                        );
                        ws.queue.push_back((ws::close_frame(1001), 0));
                        ws.closing = true;
                    }
                }
            }
            // The client is gone or broken: nothing more is sent but a close frame.
            _ => {
                self.session.outbox.close();
                if transport == Transport::Polling {
                    // A client that closed (a close packet in a POST) gets its pending GET back
                    // with a noop, as from Node; any other end is a close packet.
                    self.session
                        .outbox
                        .push_final(if reason == CloseReason::TransportClose {
                            NOOP
                        } else {
                            CLOSE
                        });
                }
                if let Some(ws) = &mut self.ws
                    && !ws.closing
                {
                    if ws.shared {
                        self.session.outbox.clear_unsent();
                    } else {
                        // A frame partly written is finished, so that the close frame is one.
                        ws.queue.truncate(usize::from(ws.front_partial));
                    }
                    // A client that closed its side hears nothing more; one that sent Engine.IO's
                    // close packet gets the WebSocket's closing handshake (RFC 6455 7.1.2).
                    let gone = reason == CloseReason::TransportClose && ws.read_done;
                    if reason != CloseReason::TooSlow && !gone {
                        ws.send_control(ws::close_frame(1000), &self.session.outbox);
                    }
                    ws.closing = true;
                }
            }
        }
        self.layer.close(reason);
        let now = now();
        self.closing = Some(Closing {
            reason,
            deadline: now + CLOSE_TIMEOUT,
            linger_until: now + CLIENT_CLOSE_LINGER,
        });
    }

    /// Whether a closing session is done: the layer has finished, the WebSocket is flushed, and
    /// a polling client has had its close packet (or is not waiting for it).
    fn closed(&self, layer_idle: bool) -> bool {
        let Some(closing) = &self.closing else {
            return false;
        };
        if !layer_idle {
            return false;
        }
        if let Some(ws) = &self.ws
            && !ws.broken
            && !ws.idle(&self.session.outbox)
        {
            return false;
        }
        if self.session.transport() == Transport::Polling {
            match closing.reason {
                // The client's next GET fetches the close packet, unless it is gone.
                CloseReason::ForcedClose => return self.session.outbox.is_empty(),
                // A GET on its way gets the noop (the client closed) or the close packet (the
                // server stops, and takes no new connections); not long after that nobody is
                // coming.
                CloseReason::TransportClose | CloseReason::ServerShutdown => {
                    return self.session.outbox.is_empty() || now() >= closing.linger_until;
                }
                _ => {}
            }
        }
        true
    }

    fn finish(&mut self) {
        self.shared.forget(self.session.sid());
        self.session.outbox.close();
        // The socket closes with this task, not with the last handle on the session.
        self.session.outbox.set_direct(None);
        {
            let mut c = self.session.control();
            c.ended = true;
            c.driver = None;
            if let Some(w) = c.post_waiter.take() {
                w.wake();
            }
        }
        // A GET still waiting gets what is left, or the close packet.
        self.session.outbox.wake_consumer();
        self.ws = None;
        self.shared.task_ended();
    }
}
