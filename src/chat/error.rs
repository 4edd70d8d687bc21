//! The typed refusal that a client receives as `{code, message}`.

use serde::Serialize;

/// Stable machine-readable reasons for refusing a client's request. The serialized names are part
/// of the wire contract (`docs/protocol.md`): add new ones, never rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    NotJoined,
    AlreadyJoined,
    InvalidName,
    NameTaken,
    Empty,
    TooLong,
    RateLimited,
    UnknownEvent,
    Replaced,
    Unavailable,
    Unconfirmed,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::AlreadyJoined => "already_joined",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::NameTaken => "name_taken",
            ErrorCode::Empty => "empty",
            ErrorCode::TooLong => "too_long",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::UnknownEvent => "unknown_event",
            ErrorCode::Replaced => "replaced",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Unconfirmed => "unconfirmed",
        }
    }
}

/// A refusal with a stable code and a human sentence. It is what handlers return and what the
/// client receives, either as an ack `{error: {code, message}}` or as an `error message` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ChatError {
    pub code: ErrorCode,
    pub message: String,
}

impl ChatError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The store did not say in time whether it took a message: it may still be stored and
    /// broadcast (a client finds it in the history if so).
    pub fn unconfirmed() -> Self {
        Self::new(
            ErrorCode::Unconfirmed,
            "the server did not confirm this message in time; it may still arrive",
        )
    }

    /// A storage back end failed. The detail goes to the log, not to the client.
    pub fn unavailable() -> Self {
        Self::new(
            ErrorCode::Unavailable,
            "the server could not complete this right now; try again",
        )
    }
}
