//! Every event name and payload shape on the wire. The classic names and fields are frozen (see
//! `docs/protocol.md`); only additions are allowed. Only this module and `socket.rs` know them.

use serde::{Deserialize, Serialize};

use crate::chat::{ChatError, StoredMessage};

/// Events a client sends.
pub mod inbound {
    pub const ADD_USER: &str = "add user";
    pub const NEW_MESSAGE: &str = "new message";
    pub const TYPING: &str = "typing";
    pub const STOP_TYPING: &str = "stop typing";
    pub const LIST_USERS: &str = "list users";
}

/// Events the server sends.
pub mod outbound {
    pub const LOGIN: &str = "login";
    pub const USER_JOINED: &str = "user joined";
    pub const USER_LEFT: &str = "user left";
    pub const NEW_MESSAGE: &str = "new message";
    pub const TYPING: &str = "typing";
    pub const STOP_TYPING: &str = "stop typing";
    pub const ERROR_MESSAGE: &str = "error message";
}

/// The argument of `add user`: the classic bare nickname, or the extended object.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum AddUser {
    Name(String),
    Extended {
        username: String,
        #[serde(default, rename = "lastId")]
        last_id: Option<u64>,
    },
}

impl AddUser {
    pub fn username(&self) -> &str {
        match self {
            AddUser::Name(name) | AddUser::Extended { username: name, .. } => name,
        }
    }

    pub fn last_id(&self) -> Option<u64> {
        match self {
            AddUser::Name(_) => None,
            AddUser::Extended { last_id, .. } => *last_id,
        }
    }
}

/// The handshake `auth` object: the session token of a reconnecting client, if any.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    pub session: Option<String>,
}

impl<'de> Deserialize<'de> for Auth {
    /// Only a JSON object: serde's derive would also read the struct from an array
    /// (`["token"]`), which is not the documented shape.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Fields {
            #[serde(default)]
            session: Option<String>,
        }
        let map = serde_json::Map::<String, serde_json::Value>::deserialize(deserializer)?;
        let fields: Fields = serde_json::from_value(serde_json::Value::Object(map))
            .map_err(serde::de::Error::custom)?;
        Ok(Self {
            session: fields.session,
        })
    }
}

/// `login`, and the ack of `add user`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Login<'a> {
    pub num_users: usize,
    pub username: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renamed_from: Option<&'a str>,
    pub users: &'a [String],
    pub history: &'a [StoredMessage],
    pub history_complete: bool,
    pub session: &'a str,
    pub room: &'a str,
}

/// `user joined` and `user left`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserChange<'a> {
    pub username: &'a str,
    pub num_users: usize,
    /// Coalesced announcements only: how many people joined (or left) in this one event...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    /// ...and their names, oldest first, at most `MAX_ANNOUNCED_NAMES` (the latest ones).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usernames: Option<Vec<&'a str>>,
}

/// The most names a coalesced `user joined` / `user left` lists; `count` says how many there were.
pub const MAX_ANNOUNCED_NAMES: usize = 50;

/// `typing` and `stop typing`.
#[derive(Debug, Clone, Serialize)]
pub struct Typing<'a> {
    pub username: &'a str,
}

/// The ack of an accepted `new message`.
#[derive(Debug, Clone, Serialize)]
pub struct MessageAck {
    pub id: u64,
    pub ts: u64,
    /// Only when true: the message reached this instance's sockets only and is not in the
    /// history (Redis unreachable; docs/scaling.md).
    #[serde(rename = "localOnly", skip_serializing_if = "std::ops::Not::not")]
    pub local_only: bool,
}

/// The ack of `list users`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserList<'a> {
    pub num_users: usize,
    pub users: &'a [String],
}

/// The ack of a refused request: `{error: {code, message}}`.
#[derive(Debug, Clone, Serialize)]
pub struct Refusal<'a> {
    pub error: &'a ChatError,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn add_user_accepts_both_shapes() {
        let classic: AddUser = serde_json::from_value(json!("alice")).unwrap();
        assert_eq!((classic.username(), classic.last_id()), ("alice", None));
        let ext: AddUser =
            serde_json::from_value(json!({"username": "bob", "lastId": 42})).unwrap();
        assert_eq!((ext.username(), ext.last_id()), ("bob", Some(42)));
        for bad in [json!(1), json!(null), json!({"name": "x"}), json!(["a"])] {
            assert!(serde_json::from_value::<AddUser>(bad).is_err());
        }
    }

    #[test]
    fn refusal_shape() {
        let err = ChatError::new(crate::chat::ErrorCode::TooLong, "too long");
        let v = serde_json::to_value(Refusal { error: &err }).unwrap();
        assert_eq!(
            v,
            json!({"error": {"code": "too_long", "message": "too long"}})
        );
    }
}
