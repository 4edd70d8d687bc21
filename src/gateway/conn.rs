//! The state the chat keeps for one connection: who it is in the chat, its rate limits, and its
//! place in its address's count of open connections.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::chat::TokenBucket;
use crate::clients::OpenSlot;
use crate::metrics;

/// The state of one connection, attached to its socket.
pub(super) struct Conn {
    /// The session token from the handshake `auth`, if the client sent one.
    pub auth_session: Option<String>,
    /// The transport the connection started on, for the connection gauge.
    pub transport: metrics::Transport,
    member: Mutex<Membership>,
    pub messages: Mutex<TokenBucket>,
    typing: Mutex<TokenBucket>,
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
            _slot: slot,
        }
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

    /// Marks the connection as joining; false when it has already joined or is joining.
    pub fn begin_join(&self) -> bool {
        let mut m = self.membership();
        if !matches!(*m, Membership::Anonymous) {
            return false;
        }
        *m = Membership::Joining;
        true
    }

    pub fn finish_join(&self, member: Option<Member>) {
        *self.membership() = member.map_or(Membership::Anonymous, Membership::Joined);
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
