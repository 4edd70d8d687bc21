//! The state the chat keeps for one connection: who it is in the chat, its rate limits, and its
//! place in its address's count of open connections.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use banter_engine::socketio::{Packet, Socket};

use crate::chat::TokenBucket;
use crate::http::clients::OpenSlot;
use crate::ops::metrics;

/// The state of one connection, attached to its socket.
pub(super) struct Conn {
    /// The session token from the handshake `auth`, if the client sent one.
    pub auth_session: Option<String>,
    /// The transport the connection started on, for the connection gauge.
    pub transport: metrics::Transport,
    member: Mutex<Membership>,
    pub messages: Mutex<TokenBucket>,
    typing: Mutex<TokenBucket>,
    /// The presence version of the last count this connection was sent, and the announcements
    /// held while it joins.
    count: Mutex<Count>,
    /// This connection's place in its client address's count of open connections; released
    /// when the socket is dropped.
    _slot: Option<OpenSlot>,
}

enum Membership {
    /// Connected, has not sent `add user`.
    Anonymous,
    /// An `add user` is being handled: a second one is ignored.
    Joining,
    Joined(Member),
}

/// Who a connection is in the chat.
#[derive(Clone)]
pub(super) struct Member {
    pub room: &'static str,
    pub username: Arc<str>,
    pub session: Arc<str>,
    pub typing: bool,
}

/// What a connection has been told of the count.
#[derive(Default)]
struct Count {
    /// The presence version of the count it holds: announcements of older versions would set
    /// it back, and are not sent.
    version: u64,
    /// While it joins: the announcements that came meanwhile, sent after its `login` if they
    /// are newer than the state the `login` carries.
    held: Option<Vec<(u64, Packet)>>,
}

/// The rates a connection is held to.
pub(super) struct Rates {
    pub message_rate: f64,
    pub message_burst: u32,
    pub typing_rate: f64,
}

impl Conn {
    pub fn new(
        auth_session: Option<String>,
        transport: metrics::Transport,
        rates: &Rates,
        slot: Option<OpenSlot>,
    ) -> Self {
        Self {
            auth_session,
            transport,
            member: Mutex::new(Membership::Anonymous),
            messages: Mutex::new(TokenBucket::new(rates.message_rate, rates.message_burst)),
            typing: Mutex::new(TokenBucket::new(
                rates.typing_rate,
                (rates.typing_rate * 2.0).ceil() as u32,
            )),
            count: Mutex::new(Count::default()),
            _slot: slot,
        }
    }

    fn count(&self) -> MutexGuard<'_, Count> {
        self.count.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An announcement of presence `version` for this connection's socket: sent when the
    /// connection is in the chat and holds an older count, held while it joins, else dropped.
    /// Sent under the lock, so that two announcements reach the socket in version order.
    pub fn announce(&self, socket: &Socket, version: u64, packet: &Packet) {
        let mut count = self.count();
        if let Some(held) = &mut count.held {
            held.push((version, packet.clone()));
            return;
        }
        if version > count.version && self.member().is_some() {
            count.version = version;
            let _ = socket.send_packet(packet);
        }
    }

    /// The connection was sent the count of presence `version` (a `login`, a users list).
    pub fn saw(&self, version: u64) {
        let mut count = self.count();
        count.version = count.version.max(version);
    }

    fn membership(&self) -> MutexGuard<'_, Membership> {
        // Membership is a plain value that any code path leaves consistent.
        self.member.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn member(&self) -> Option<Member> {
        match &*self.membership() {
            Membership::Joined(m) => Some(m.clone()),
            _ => None,
        }
    }

    /// Marks the connection as joining; false when it has already joined or is joining. From
    /// now until `finish_join`, announcements are held.
    pub fn begin_join(&self) -> bool {
        {
            let mut m = self.membership();
            if !matches!(*m, Membership::Anonymous) {
                return false;
            }
            *m = Membership::Joining;
        }
        // Locks are taken count first, membership second, everywhere both are held. Whatever
        // is announced before this has a version older than the join's, which the `login` has.
        self.count().held = Some(Vec::new());
        true
    }

    /// Ends a join: with the member and the presence version its `login` (already sent) carried,
    /// the announcements held meanwhile that are newer than it are sent, in order; without, they
    /// are dropped.
    pub fn finish_join(&self, socket: &Socket, joined: Option<(Member, u64)>) {
        let mut count = self.count();
        let held = count.held.take().unwrap_or_default();
        let Some((member, version)) = joined else {
            *self.membership() = Membership::Anonymous;
            return;
        };
        *self.membership() = Membership::Joined(member);
        count.version = count.version.max(version);
        for (v, packet) in held {
            if v > count.version {
                count.version = v;
                let _ = socket.send_packet(&packet);
            }
        }
    }

    /// Whether announcements concern this connection: it is in the chat, or joining it.
    pub fn in_chat(&self) -> bool {
        !matches!(*self.membership(), Membership::Anonymous)
    }

    pub fn take_member(&self) -> Option<Member> {
        match std::mem::replace(&mut *self.membership(), Membership::Anonymous) {
            Membership::Joined(m) => Some(m),
            _ => None,
        }
    }

    /// Takes a message token; on refusal, how long until the next.
    pub fn take_message_token(&self) -> Result<(), std::time::Duration> {
        let mut bucket = self.messages.lock().unwrap_or_else(PoisonError::into_inner);
        if bucket.try_take() {
            Ok(())
        } else {
            Err(bucket.retry_after())
        }
    }

    /// Records a typing state change. Returns the member to announce it for, or `None` when it is
    /// no change (a repeated `typing`) or the socket is over its typing rate.
    pub fn typing_change(&self, typing: bool) -> Option<Member> {
        let mut m = self.membership();
        let Membership::Joined(member) = &mut *m else {
            return None;
        };
        if member.typing == typing {
            return None;
        }
        if !self
            .typing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .try_take()
        {
            return None;
        }
        member.typing = typing;
        Some(member.clone())
    }
}
