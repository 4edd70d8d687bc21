//! Property tests over Banter's own input handling: what a client can send (nicknames, messages,
//! `add user` and handshake `auth` payloads, `lastId`), what a proxy or a client can put in
//! `X-Forwarded-For` / `X-Forwarded-Proto`, and the bookkeeping those inputs drive (nickname
//! variants, users lists, history pages, per-address connection caps).
//!
//! Each property states what the code promises (its doc comments and `docs/protocol.md`), checked
//! against a plain reference computation or a model, on inputs chosen to be hostile: control
//! characters, NUL, combining marks, bidirectional controls, huge strings, arbitrary JSON,
//! arbitrary header bytes, arbitrary interleavings of calls.
//!
//! Bounded for CI: each property runs a fixed number of cases (256 or 1,000, see `config`), about
//! 10 s for the whole file in a debug build on two cores. To search longer, set `PROPTEST_CASES`,
//! which then applies to every property here:
//!
//! ```text
//! PROPTEST_CASES=100000 cargo nextest run --test properties
//! ```
//!
//! Failures persist nothing (`failure_persistence: None`): proptest prints the shrunk input, and
//! a real failure becomes a named regular test next to the code it is about, where a reader sees
//! what it means, rather than an opaque seed file under `tests/`.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use axum::http::{HeaderMap, HeaderValue};
use banter::chat::{
    ErrorCode, History, JoinRequest, Joined, Limits, MAX_VARIANTS, Presence, StoredMessage,
    name_key, next_id, select_page, sort_users, variant,
};
use banter::config::net::{AddressBounds, IpNet, TrustedProxies};
use banter::gateway::protocol::{AddUser, Auth};
use banter::http::clients::{AddressLimits, OpenSlot, Refusal};
use banter::store::{MemoryHistory, MemoryPresence, SqliteHistory, SqliteOptions};
use futures::executor::block_on;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;
use serde_json::{Map, Value, json};

/// `cases` cases, unless `PROPTEST_CASES` says otherwise (proptest's default config reads it,
/// and `with_cases` would override it).
fn config(cases: u32) -> ProptestConfig {
    let base = ProptestConfig::default();
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() {
        base.cases
    } else {
        cases
    };
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..base
    }
}

// ---------------------------------------------------------------------------------------------
// Text
// ---------------------------------------------------------------------------------------------

/// Characters that break naive text handling: white space of several kinds (U+0085 is both white
/// space and a control character; U+FEFF and U+200B are neither), control characters and NUL,
/// combining marks, bidirectional and zero-width controls, characters whose lowercase has another
/// length (İ, K as the Kelvin sign), astral-plane and private-use characters, and the ASCII that
/// nickname variants are made of.
const TRICKY: &str = "aZx02 (),:\t\n\r\0\x07\x1b\x7f\u{85}\u{a0}\u{ad}\u{300}\u{301}\u{200b}\u{200d}\
    \u{200e}\u{200f}\u{202e}\u{2028}\u{2029}\u{3000}\u{feff}\u{fffd}\
    éßİ\u{212a}Σςǅ日\u{1f600}\u{e000}\u{10ffff}";

/// Every character `char::is_whitespace` knows, which is what `str::trim` removes.
const WHITE_SPACE: &[char] = &[
    ' ', '\t', '\n', '\x0b', '\x0c', '\r', '\u{85}', '\u{a0}', '\u{1680}', '\u{2000}', '\u{2001}',
    '\u{2002}', '\u{2003}', '\u{2004}', '\u{2005}', '\u{2006}', '\u{2007}', '\u{2008}', '\u{2009}',
    '\u{200a}', '\u{2028}', '\u{2029}', '\u{202f}', '\u{205f}', '\u{3000}',
];

fn tricky_char() -> impl Strategy<Value = char> {
    prop_oneof![3 => select(TRICKY.chars().collect::<Vec<_>>()), 1 => any::<char>()]
}

/// Short text, mostly of tricky characters.
fn short_text(max_chars: usize) -> impl Strategy<Value = String> {
    vec(tricky_char(), 0..=max_chars).prop_map(String::from_iter)
}

/// A short piece repeated into tens of thousands of characters.
fn huge_text() -> impl Strategy<Value = String> {
    (vec(tricky_char(), 1..=4), 1_000..20_000usize)
        .prop_map(|(piece, times)| String::from_iter(piece).repeat(times))
}

fn white_space(max_chars: usize) -> impl Strategy<Value = String> {
    vec(select(WHITE_SPACE), 0..=max_chars).prop_map(String::from_iter)
}

/// Any text a client could send: short tricky text, blank text, arbitrary Unicode, huge text.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => short_text(48),
        1 => white_space(8),
        2 => any::<String>(),
        1 => huge_text(),
    ]
}

/// Limits as configured, or small ones so that the length boundary is crossed often.
fn limits() -> impl Strategy<Value = Limits> {
    let name = prop_oneof![Just(32usize), 0..=40usize];
    let message = prop_oneof![Just(2_000usize), 0..=64usize];
    (name, message).prop_map(|(max_name_chars, max_message_chars)| Limits {
        max_name_chars,
        max_message_chars,
    })
}

/// A nickname as `Limits::nickname` returns it, for `max_chars`. (Built from characters that are
/// not control characters, so that few candidates are thrown away.)
fn valid_nickname(max_chars: usize) -> impl Strategy<Value = String> {
    let limits = Limits {
        max_name_chars: max_chars,
        max_message_chars: 1,
    };
    let name_char = tricky_char().prop_map(|c| if c.is_control() { 'x' } else { c });
    vec(name_char, 1..=max_chars).prop_filter_map("not a valid nickname", move |chars| {
        limits.nickname(&String::from_iter(chars)).ok()
    })
}

proptest! {
    #![proptest_config(config(1_000))]

    /// A nickname that, trimmed and composed (NFC), is empty, has more than `max_name_chars`
    /// characters or has control characters is refused; what is accepted is the trimmed name,
    /// composed, and is accepted again as is. (Which invisible and direction-changing characters
    /// are refused besides is in the unit tests of `src/chat/limits.rs`.) A refusal is always
    /// `invalid_name`, never a panic. The same input always gives the same result.
    #[test]
    fn nickname_is_the_trimmed_composed_name_within_limits(limits in limits(), raw in any_text()) {
        use unicode_normalization::UnicodeNormalization;
        let got = limits.nickname(&raw);
        let composed: String = raw.trim().nfc().collect();
        let within = !composed.trim().is_empty()
            && composed.chars().count() <= limits.max_name_chars
            && !composed.chars().any(char::is_control);
        match &got {
            Ok(name) => {
                prop_assert!(within, "accepted {:?}", name);
                prop_assert_eq!(name, &composed);
                prop_assert_eq!(limits.nickname(name), Ok(name.clone()));
            }
            Err(err) => prop_assert_eq!(err.code, ErrorCode::InvalidName),
        }
        if !within {
            prop_assert!(got.is_err(), "accepted {:?}", raw);
        }
        prop_assert_eq!(limits.nickname(&raw), got);
    }

    /// A name of letters, digits, spaces and emoji of any script, within the limit, is accepted
    /// as written (composed): the refusals are for what shows nothing or something else.
    #[test]
    fn visible_names_are_accepted(
        chars in vec(proptest::sample::select(vec![
            'a', 'Z', '0', '9', ' ', '-', '_', '.', 'é', 'ß', 'Ω', 'ж', '李', 'م', 'ש', 'अ', '😀', '👍',
        ]), 1..=32)
    ) {
        let limits = Limits::default();
        let raw = String::from_iter(chars);
        prop_assume!(!raw.trim().is_empty());
        prop_assert_eq!(limits.nickname(&raw), Ok(raw.trim().to_owned()));
    }

    /// White space around a nickname, of any kind, changes nothing.
    #[test]
    fn nickname_ignores_surrounding_white_space(
        limits in limits(),
        raw in short_text(40),
        before in white_space(4),
        after in white_space(4),
    ) {
        let padded = format!("{before}{raw}{after}");
        prop_assert_eq!(limits.nickname(&padded), limits.nickname(&raw));
    }

    /// A message is accepted exactly when it is not blank and has at most `max_message_chars`
    /// characters, counted as sent (white space included, since it is stored as sent). A blank
    /// message is `empty` whatever its length; an over-long one is `too_long`.
    #[test]
    fn message_is_accepted_when_not_blank_and_within_limit(
        limits in limits(),
        text in prop_oneof![any_text(), white_space(80), huge_text()],
    ) {
        let blank = text.trim().is_empty();
        let chars = text.chars().count();
        let expected = if blank {
            Some(ErrorCode::Empty)
        } else if chars > limits.max_message_chars {
            Some(ErrorCode::TooLong)
        } else {
            None
        };
        let got = limits.message(&text);
        prop_assert_eq!(got.as_ref().err().map(|e| e.code), expected, "{} chars", chars);
        prop_assert_eq!(limits.message(&text), got);
    }

    /// Around the configured limit: exactly 2,000 characters pass and 2,001 do not, whatever
    /// their byte length (multi-byte characters must not count as several).
    #[test]
    fn message_limit_counts_characters_not_bytes(
        c in tricky_char().prop_map(|c| if c.is_whitespace() { 'x' } else { c }),
        extra in 0..3usize,
    ) {
        let limits = Limits::default();
        let text = c.to_string().repeat(limits.max_message_chars - 1 + extra);
        let expected = (extra == 2).then_some(ErrorCode::TooLong);
        prop_assert_eq!(limits.message(&text).err().map(|e| e.code), expected);
    }
}

// ---------------------------------------------------------------------------------------------
// Nickname variants, keys and users lists
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(1_000))]

    /// `variant` never panics, whatever it is given.
    #[test]
    fn variant_never_panics(name in any_text(), n in any::<u32>(), max in 0..100usize) {
        let v = variant(&name, n, max);
        let suffix = format!(" ({n})");
        prop_assert!(v.ends_with(&suffix));
        if max >= suffix.chars().count() {
            prop_assert!(v.chars().count() <= max, "{:?} is longer than {}", v, max);
        }
    }

    /// For a valid nickname and a limit that leaves room for the suffix (the configuration
    /// requires at least 8 characters; " (99)" takes 5), every variant is itself a valid
    /// nickname within the limit, ends with " (n)", and keeps the start of the name.
    #[test]
    fn variants_are_valid_nicknames(
        (max, name) in (6..=40usize).prop_flat_map(|max| (Just(max), valid_nickname(max))),
        n in 2..=MAX_VARIANTS,
    ) {
        let limits = Limits { max_name_chars: max, max_message_chars: 1 };
        let v = variant(&name, n, max);
        prop_assert_eq!(limits.nickname(&v), Ok(v.clone()));
        let suffix = format!(" ({n})");
        let base = v.strip_suffix(&suffix).expect("ends with the suffix");
        prop_assert!(name.starts_with(base), "{:?} is not a start of {:?}", base, name);
        // A variant is another person's name, unless the name already ends with that suffix:
        // then its variant may be the name itself (`variant("x…x (2)", 2, 32)` with 28 x's),
        // which `join` skips as taken like any other.
        if !name.ends_with(&suffix) {
            prop_assert_ne!(name_key(&v), name_key(&name));
        }
    }

    /// The variants of one name are all different people: `join` has 98 distinct candidates.
    #[test]
    fn variants_are_distinct(
        (max, name) in (6..=40usize).prop_flat_map(|max| (Just(max), valid_nickname(max))),
        a in 2..=MAX_VARIANTS,
        offset in 1..MAX_VARIANTS - 1,
    ) {
        // Another n in 2..=MAX_VARIANTS.
        let b = 2 + (a - 2 + offset) % (MAX_VARIANTS - 1);
        prop_assert_ne!(name_key(&variant(&name, a, max)), name_key(&variant(&name, b, max)));
    }

    /// Names that differ only in ASCII case are the same person.
    #[test]
    fn ascii_case_does_not_make_another_person(name in short_text(20)) {
        prop_assert_eq!(name_key(&name.to_ascii_uppercase()), name_key(&name));
        prop_assert_eq!(name_key(&name.to_ascii_lowercase()), name_key(&name));
    }

    /// A users list is sorted case-insensitively with ties by exact spelling, keeps every name,
    /// and comes out the same whatever order the names were in (every instance shows the same
    /// list).
    #[test]
    fn users_list_order_is_canonical(
        (names, shuffled) in vec(short_text(6), 0..12)
            .prop_flat_map(|names| (Just(names.clone()), Just(names).prop_shuffle())),
    ) {
        let mut sorted = names.clone();
        sort_users(&mut sorted);
        let mut other = shuffled;
        sort_users(&mut other);
        prop_assert_eq!(&sorted, &other);
        for pair in sorted.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            prop_assert!((name_key(a), a) <= (name_key(b), b), "{:?} before {:?}", a, b);
        }
        let mut expected = names;
        expected.sort();
        let mut got = sorted;
        got.sort();
        prop_assert_eq!(got, expected);
    }
}

/// One step of the presence model. Every `join` comes from a new connection (socket ids are never
/// reused, and a socket that has joined cannot join again); the others name any connection seen
/// so far, including replaced and departed ones.
#[derive(Debug, Clone)]
enum PresenceOp {
    Join { name: usize, session: Option<usize> },
    Leave(usize),
    Suspend(usize, u64),
    Reap(u64),
}

fn presence_op() -> impl Strategy<Value = PresenceOp> {
    prop_oneof![
        4 => (any::<usize>(), prop::option::of(any::<usize>()))
            .prop_map(|(name, session)| PresenceOp::Join { name, session }),
        1 => any::<usize>().prop_map(PresenceOp::Leave),
        2 => (any::<usize>(), 0..100u64).prop_map(|(c, at)| PresenceOp::Suspend(c, at)),
        1 => (0..100u64).prop_map(PresenceOp::Reap),
    ]
}

/// Checks what every users list must satisfy: one entry per person, each a valid nickname, no two
/// the same person, in canonical order, counted right.
fn check_users(limits: &Limits, num_users: usize, users: &[String]) -> Result<(), TestCaseError> {
    prop_assert_eq!(num_users, users.len());
    let mut canonical = users.to_vec();
    sort_users(&mut canonical);
    prop_assert_eq!(&canonical, users);
    let keys: HashSet<String> = users.iter().map(|u| name_key(u)).collect();
    prop_assert_eq!(
        keys.len(),
        users.len(),
        "two people share a name: {:?}",
        users
    );
    for user in users {
        prop_assert_eq!(limits.nickname(user), Ok(user.clone()));
    }
    Ok(())
}

fn check_joined(
    limits: &Limits,
    asked: &str,
    joined: &Joined,
    holders: &HashMap<String, String>,
) -> Result<(), TestCaseError> {
    check_users(limits, joined.num_users, &joined.users)?;
    prop_assert!(joined.users.contains(&joined.username));
    if joined.resumed {
        prop_assert_eq!(joined.renamed_from.as_deref(), None);
    } else {
        // A newcomer gets the name asked for, or a variant of it when it was taken.
        prop_assert_eq!(joined.replaced.as_deref(), None);
        match &joined.renamed_from {
            None => prop_assert_eq!(joined.username.as_str(), asked),
            Some(from) => {
                prop_assert_eq!(from.as_str(), asked);
                prop_assert!(holders.contains_key(&name_key(asked)), "renamed but free");
                let n_is_variant = (2..=MAX_VARIANTS)
                    .any(|n| variant(asked, n, limits.max_name_chars) == joined.username);
                prop_assert!(n_is_variant, "{:?} is no variant", joined.username);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    /// Under any sequence of joins (with real or forged session tokens), leaves, drops and grace
    /// period expiries, two people never hold the same nickname, every name shown is a valid
    /// nickname, lists are canonical and counts match, and a join is refused only as `name_taken`.
    #[test]
    fn presence_keeps_names_unique_and_valid(
        (max, names) in (8..=24usize)
            .prop_flat_map(|max| (Just(max), vec(valid_nickname(max), 1..5))),
        case_flips in vec(any::<bool>(), 8),
        ops in vec(presence_op(), 1..60),
    ) {
        let limits = Limits { max_name_chars: max, max_message_chars: 1 };
        // The name pool: each name, and its ASCII-uppercase twin (the same person).
        let pool: Vec<String> = names
            .iter()
            .zip(case_flips.iter().cycle())
            .flat_map(|(n, flip)| {
                let twin = if *flip { n.to_ascii_uppercase() } else { n.clone() };
                [n.clone(), twin]
            })
            .collect();
        let presence = MemoryPresence::default();
        let mut conns: Vec<String> = Vec::new();
        let mut sessions: Vec<String> = vec!["forged".into()];
        // Who holds which key, as far as the test has been told.
        let mut holders: HashMap<String, String> = HashMap::new();
        for op in ops {
            match op {
                PresenceOp::Join { name, session } => {
                    let asked = &pool[name % pool.len()];
                    let conn = format!("c{}", conns.len());
                    conns.push(conn.clone());
                    let session = session.map(|i| sessions[i % sessions.len()].clone());
                    let result = block_on(presence.join(JoinRequest {
                        room: "r",
                        nickname: asked,
                        session: session.as_deref(),
                        conn: &conn,
                        max_name_chars: max,
                    }));
                    match result {
                        Ok(joined) => {
                            check_joined(&limits, asked, &joined, &holders)?;
                            sessions.push(joined.session.clone());
                            holders.insert(name_key(&joined.username), joined.username.clone());
                        }
                        Err(err) => prop_assert_eq!(err.code, ErrorCode::NameTaken),
                    }
                }
                PresenceOp::Leave(c) if !conns.is_empty() => {
                    let conn = &conns[c % conns.len()];
                    let left = block_on(presence.leave("r", conn)).expect("memory store");
                    if let Some(left) = left {
                        holders.remove(&name_key(&left.username));
                        let n = block_on(presence.users("r")).expect("memory store").num_users;
                        prop_assert_eq!(left.num_users, n);
                    }
                }
                PresenceOp::Suspend(c, at) if !conns.is_empty() => {
                    let conn = &conns[c % conns.len()];
                    block_on(presence.suspend("r", conn, at)).expect("memory store");
                }
                PresenceOp::Reap(now) => {
                    let left = block_on(presence.reap("r", now)).expect("memory store");
                    for l in &left {
                        holders.remove(&name_key(&l.username));
                    }
                    let n = block_on(presence.users("r")).expect("memory store").num_users;
                    if let Some(last) = left.last() {
                        prop_assert_eq!(last.num_users, n);
                    }
                }
                PresenceOp::Leave(_) | PresenceOp::Suspend(..) => {}
            }
            let roster = block_on(presence.users("r")).expect("memory store");
            let (n, users) = (roster.num_users, roster.users);
            check_users(&limits, n, &users)?;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// History
// ---------------------------------------------------------------------------------------------

fn stored(id: u64) -> StoredMessage {
    StoredMessage {
        id,
        ts: 0,
        username: "u".into(),
        message: "m".into(),
    }
}

/// A room's history as a store holds it: `log` is every id ever assigned (increasing, all above
/// `epoch`, the store's start), `held` the last `capacity` of them, `floor` the id of the last one
/// dropped (or `epoch` when none was).
#[derive(Debug, Clone)]
struct RoomModel {
    epoch: u64,
    log: Vec<u64>,
    held: Vec<StoredMessage>,
    floor: u64,
}

fn room_model() -> impl Strategy<Value = RoomModel> {
    (0..u64::MAX / 2, vec(1..5u64, 0..40), 1..20usize).prop_map(|(epoch, gaps, capacity)| {
        let log: Vec<u64> = gaps
            .iter()
            .scan(epoch, |id, gap| {
                *id += gap;
                Some(*id)
            })
            .collect();
        let dropped = log.len().saturating_sub(capacity);
        let floor = if dropped == 0 {
            epoch
        } else {
            log[dropped - 1]
        };
        let held = log[dropped..].iter().copied().map(stored).collect();
        RoomModel {
            epoch,
            log,
            held,
            floor,
        }
    })
}

/// A client's `lastId`: one it was sent, one from before the store began (a restart), one
/// between or beyond the ids, or anything at all.
fn last_id_for(room: &RoomModel) -> impl Strategy<Value = Option<u64>> + use<> {
    let mut near = vec![0, 1, room.epoch, room.epoch.saturating_sub(1), u64::MAX];
    for id in &room.log {
        near.extend([*id, id + 1, id.saturating_sub(1)]);
    }
    prop::option::of(prop_oneof![4 => select(near), 1 => any::<u64>()])
}

proptest! {
    #![proptest_config(config(1_000))]

    /// `select_page` returns ids greater than `lastId`, increasing, at most `limit` of them, the
    /// newest ones; `complete` is true exactly when nothing the client missed is left out (ids at
    /// or below the store's floor may be gone; ids from before the store began are unknown).
    /// Without `lastId` the client missed nothing and the page is the last `limit` messages.
    #[test]
    fn history_page_is_the_newest_after_last_id_and_complete_is_exact(
        (room, last_id) in room_model().prop_flat_map(|room| {
            let last = last_id_for(&room);
            (Just(room), last)
        }),
        limit in prop_oneof![0..30usize, Just(usize::MAX)],
    ) {
        let page = select_page(&room.held, room.floor, last_id, limit);
        let after = last_id.unwrap_or(0);
        let ids: Vec<u64> = page.messages.iter().map(|m| m.id).collect();
        prop_assert!(ids.len() <= limit);
        prop_assert!(ids.iter().all(|id| *id > after), "{:?} not after {}", ids, after);
        prop_assert!(ids.windows(2).all(|w| w[0] < w[1]), "not increasing: {:?}", ids);
        let held_after: Vec<u64> =
            room.held.iter().map(|m| m.id).filter(|id| *id > after).collect();
        let newest = &held_after[held_after.len() - ids.len()..];
        prop_assert_eq!(&ids[..], newest);
        prop_assert_eq!(ids.len(), held_after.len().min(limit));
        let expected_complete = match last_id {
            None => true,
            Some(last) => {
                let missed: Vec<u64> = room.log.iter().copied().filter(|id| *id > last).collect();
                last >= room.epoch && ids == missed
            }
        };
        prop_assert_eq!(page.complete, expected_complete);
    }

    /// Ids never go backwards, whatever the clock does: each is above the last, and no less than
    /// the clock-derived id, and the least such. (`last_id` stops short of `u64::MAX`, which is
    /// 5,000 centuries of clock-derived ids away.)
    #[test]
    fn next_id_increases_whatever_the_clock(
        start in prop_oneof![0..u64::MAX / 2, Just(u64::MAX - 1)],
        clock in vec(prop_oneof![any::<u64>(), 0..2_000_000_000_000u64], 1..20),
    ) {
        let mut last = start;
        for now in clock {
            if last == u64::MAX {
                break;
            }
            let id = next_id(last, now);
            prop_assert!(id > last);
            prop_assert!(id >= now.saturating_mul(1_000));
            prop_assert!(id == last + 1 || id == now.saturating_mul(1_000));
            last = id;
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// The in-process store end to end: ids increase, it holds the last `capacity` messages, and a
    /// page after any id it gave out, or after an id from before it began, is complete exactly
    /// when it holds everything after that id.
    #[test]
    fn memory_history_pages_agree_with_what_was_sent(
        capacity in 1..10usize,
        count in 0..30usize,
        pick in any::<prop::sample::Index>(),
        limit in 0..40usize,
    ) {
        let history = MemoryHistory::new(capacity);
        let sent: Vec<u64> = (0..count)
            .map(|i| {
                block_on(history.append("r", "c", "u", &format!("m{i}")))
                    .expect("memory store")
                    .message
                    .id
            })
            .collect();
        prop_assert!(sent.windows(2).all(|w| w[0] < w[1]));
        let len = block_on(history.len("r")).expect("memory store");
        prop_assert_eq!(len, count.min(capacity));
        let last_id = if sent.is_empty() { 1 } else { sent[pick.index(sent.len())] };
        for asked in [last_id, 1] {
            let page = block_on(history.page("r", Some(asked), limit)).expect("memory store");
            let ids: Vec<u64> = page.messages.iter().map(|m| m.id).collect();
            let missed: Vec<u64> = sent.iter().copied().filter(|id| *id > asked).collect();
            // Id 1 is from long before the store began: what came after it is unknown.
            let expected = asked != 1 && ids == missed;
            prop_assert_eq!(page.complete, expected, "after {}: {:?} of {:?}", asked, ids, missed);
        }
    }
}

proptest! {
    #![proptest_config(config(48))]

    /// The SQLite store end to end, with a restart (close, open again on the same file) before or
    /// after any message and retention by count: ids keep increasing across the restart, and a page after
    /// any id it gave out is complete exactly when it holds everything sent after that id, what
    /// retention deleted included.
    #[test]
    fn sqlite_history_pages_agree_with_what_was_sent_across_a_restart(
        window in 1..8usize,
        extra_kept in 0..6u64,
        count in 0..24usize,
        restart_after in any::<prop::sample::Index>(),
        pick in any::<prop::sample::Index>(),
        limit in 0..12usize,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let options = SqliteOptions {
            data_dir: dir.path().to_owned(),
            recent_len: window,
            retain_messages: window as u64 + extra_kept,
            retain_age: None,
            sync: banter::config::SyncMode::Full,
        };
        let restart_at = restart_after.index(count + 1);
        let (sent, pages) = runtime.block_on(async {
            let (mut history, mut _committed) = SqliteHistory::open(&options).expect("open");
            let mut sent = Vec::new();
            for i in 0..=count {
                if i == restart_at {
                    history.close().await;
                    drop(history);
                    (history, _committed) = SqliteHistory::open(&options).expect("open again");
                }
                if i == count {
                    break;
                }
                let id = history
                    .append("r", "c", "u", &format!("m{i}"))
                    .await
                    .expect("stored")
                    .message
                    .id;
                sent.push(id);
            }
            let asked = if sent.is_empty() { 1 } else { sent[pick.index(sent.len())] };
            let mut pages = Vec::new();
            for asked in [asked, 1] {
                pages.push((asked, history.page("r", Some(asked), limit).await.expect("page")));
            }
            (sent, pages)
        });
        prop_assert!(sent.windows(2).all(|w| w[0] < w[1]), "ids increase: {:?}", sent);
        for (asked, page) in pages {
            let ids: Vec<u64> = page.messages.iter().map(|m| m.id).collect();
            let missed: Vec<u64> = sent.iter().copied().filter(|id| *id > asked).collect();
            prop_assert!(ids.len() <= limit.min(window));
            prop_assert_eq!(&ids[..], &missed[missed.len() - ids.len()..], "the newest missed");
            // Id 1 is from long before the database existed: what came after it is unknown.
            let expected = asked != 1 && ids == missed;
            prop_assert_eq!(page.complete, expected, "after {}: {:?} of {:?}", asked, ids, missed);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Wire payloads
// ---------------------------------------------------------------------------------------------

const KEYS: &[&str] = &[
    "username", "lastId", "session", "last_id", "Username", "name", "",
];

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        select(vec![
            json!(0),
            json!(42),
            json!(-1),
            json!(1.5),
            json!(42.0),
            json!(1e300)
        ]),
        short_text(12).prop_map(Value::String),
    ]
}

/// Arbitrary JSON, with object keys mostly the ones the payloads know.
fn any_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![4 => select(KEYS).prop_map(str::to_owned), 1 => short_text(8)];
    json_leaf().prop_recursive(3, 32, 6, move |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec((key.clone(), inner), 0..5)
                .prop_map(|fields| Value::Object(fields.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Objects close to the documented shapes: the known fields, mostly of the right type but of any
/// type too, plus perhaps another field.
fn near_payload() -> impl Strategy<Value = Value> {
    let field = |name: &'static str, right: BoxedStrategy<Value>| {
        prop::option::of(prop_oneof![2 => right, 1 => json_leaf()]).prop_map(move |v| (name, v))
    };
    let string = short_text(12).prop_map(Value::String).boxed();
    let id = prop_oneof![Just(Value::Null), any::<u64>().prop_map(Value::from)].boxed();
    (
        field("username", string.clone()),
        field("lastId", id),
        field("session", string),
        prop::option::of((short_text(6), json_leaf())),
    )
        .prop_map(|(a, b, c, extra)| {
            let mut map = Map::new();
            for (name, value) in [a, b, c] {
                if let Some(value) = value {
                    map.insert(name.to_owned(), value);
                }
            }
            if let Some((name, value)) = extra {
                map.entry(name).or_insert(value);
            }
            Value::Object(map)
        })
}

fn payload() -> impl Strategy<Value = Value> {
    prop_oneof![any_json(), near_payload()]
}

/// Objects only: near the documented shapes, or with arbitrary fields.
fn object_payload() -> impl Strategy<Value = Value> {
    let key = prop_oneof![4 => select(KEYS).prop_map(str::to_owned), 1 => short_text(8)];
    prop_oneof![
        near_payload(),
        vec((key, any_json()), 0..5)
            .prop_map(|fields| Value::Object(fields.into_iter().collect::<Map<_, _>>())),
    ]
}

/// `add user` as `docs/protocol.md` defines it: a nickname string, or an object with a string
/// `username` and an optional `lastId` that is a non-negative integer (`null` counts as absent;
/// other fields are ignored).
fn expected_add_user(value: &Value) -> Option<(String, Option<u64>)> {
    match value {
        Value::String(name) => Some((name.clone(), None)),
        Value::Object(fields) => {
            let username = fields.get("username")?.as_str()?.to_owned();
            let last_id = match fields.get("lastId") {
                None | Some(Value::Null) => None,
                Some(id) => Some(id.as_u64()?),
            };
            Some((username, last_id))
        }
        _ => None,
    }
}

/// The handshake `auth` as `docs/protocol.md` defines it: an object whose `session`, when present
/// and not `null`, is a string (other fields are ignored). `None` when refused.
fn expected_auth(value: &Value) -> Option<Option<String>> {
    let Value::Object(fields) = value else {
        return None;
    };
    match fields.get("session") {
        None | Some(Value::Null) => Some(None),
        Some(Value::String(token)) => Some(Some(token.clone())),
        Some(_) => None,
    }
}

proptest! {
    #![proptest_config(config(1_000))]

    /// `add user` accepts exactly the documented shapes and reads them right; anything else is an
    /// error (the handler's `bad_request`), never a panic. A bare string is the classic form.
    #[test]
    fn add_user_accepts_exactly_the_documented_shapes(value in payload()) {
        let got = serde_json::from_value::<AddUser>(value.clone());
        let read = got.as_ref().ok().map(|a| (a.username().to_owned(), a.last_id()));
        prop_assert_eq!(read, expected_add_user(&value), "{}", value);
        if let Ok(add_user) = got {
            prop_assert_eq!(matches!(add_user, AddUser::Name(_)), value.is_string());
        }
    }

    /// The handshake `auth`, which the gateway reads from the CONNECT packet's text: any text
    /// is read without a panic, and JSON text reads the same as the value it encodes.
    #[test]
    fn auth_from_packet_text_never_panics(
        text in prop_oneof![any_text(), payload().prop_map(|v| v.to_string())],
    ) {
        let from_text = serde_json::from_str::<Auth>(&text);
        if let Ok(value) = serde_json::from_str::<Value>(&text) {
            let from_value = serde_json::from_value::<Auth>(value);
            prop_assert_eq!(
                from_text.ok().map(|a| a.session),
                from_value.ok().map(|a| a.session)
            );
        }
    }

    /// An `auth` object is read as documented: its `session` string, or none.
    #[test]
    fn auth_objects_are_read_as_documented(value in object_payload()) {
        let got = serde_json::from_value::<Auth>(value.clone()).ok().map(|a| a.session);
        prop_assert_eq!(got, expected_auth(&value), "{}", value);
    }

    /// Only an object is an `auth`. (serde's derived `Deserialize` would also read a struct from
    /// a JSON array, taking the CONNECT packet `40["tok"]` as `{"session": "tok"}`; `Auth` has
    /// its own `Deserialize` for that reason.)
    #[test]
    fn auth_is_only_an_object(value in payload().prop_filter("an object", |v| !v.is_object())) {
        let got = serde_json::from_value::<Auth>(value.clone()).ok().map(|a| a.session);
        prop_assert_eq!(got, None, "{}", value);
    }
}

// ---------------------------------------------------------------------------------------------
// Networks, forwarding headers, per-address bounds
// ---------------------------------------------------------------------------------------------

/// Addresses of every kind, IPv4-mapped IPv6 included (which must count as the IPv4 address).
fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        3 => any::<Ipv4Addr>().prop_map(IpAddr::V4),
        3 => any::<Ipv6Addr>().prop_map(IpAddr::V6),
        2 => any::<Ipv4Addr>().prop_map(|v4| IpAddr::V6(v4.to_ipv6_mapped())),
        1 => select(vec![
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V4(Ipv4Addr::BROADCAST),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ]),
    ]
}

fn max_prefix(addr: IpAddr) -> u8 {
    if addr.to_canonical().is_ipv4() {
        32
    } else {
        128
    }
}

/// The address's bits, most significant first.
fn bits(addr: IpAddr) -> Vec<bool> {
    let octets = match addr {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    octets
        .iter()
        .flat_map(|byte| (0..8).rev().map(move |i| byte >> i & 1 == 1))
        .collect()
}

/// The reference: `ip` is in `addr/prefix` when both are of one family once IPv4-mapped
/// addresses count as IPv4, and their first `prefix` bits agree.
fn reference_contains(addr: IpAddr, prefix: u8, ip: IpAddr) -> bool {
    let (net, ip) = (addr.to_canonical(), ip.to_canonical());
    net.is_ipv4() == ip.is_ipv4()
        && bits(net)[..usize::from(prefix)] == bits(ip)[..usize::from(prefix)]
}

/// An address near `addr`: one bit flipped, so that it is in some of its networks and not others.
fn flip_bit(addr: IpAddr, bit: usize) -> IpAddr {
    match addr.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4) ^ (1 << (31 - bit % 32)))),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) ^ (1 << (127 - bit % 128)))),
    }
}

/// A valid network with its address and prefix.
fn net() -> impl Strategy<Value = (IpAddr, u8, IpNet)> {
    ip().prop_flat_map(|addr| (Just(addr), 0..=max_prefix(addr)))
        .prop_map(|(addr, prefix)| {
            let net = format!("{addr}/{prefix}")
                .parse::<IpNet>()
                .expect("valid network");
            (addr, prefix, net)
        })
}

/// Text that looks like addresses and networks, to get close to the parser's edges.
fn ip_like_text() -> impl Strategy<Value = String> {
    let alphabet: Vec<char> = "0123456789abcdefABCDEF:./[]%+- \tf".chars().collect();
    prop_oneof![
        vec(select(alphabet), 0..40).prop_map(String::from_iter),
        (ip(), any::<i32>(), white_space(2)).prop_map(|(a, p, ws)| format!("{ws}{a}/{p}{ws}")),
    ]
}

proptest! {
    #![proptest_config(config(1_000))]

    /// Parsing a network never panics, whatever the text.
    #[test]
    fn network_parsing_never_panics(text in prop_oneof![any_text(), ip_like_text()]) {
        if let Ok(net) = text.parse::<IpNet>() {
            prop_assert_eq!(net.to_string().parse::<IpNet>(), Ok(net));
        }
    }

    /// `a/n` parses exactly when `n` fits the address family (after IPv4-mapped addresses become
    /// IPv4), white space around it is ignored, and what it prints parses back to itself.
    #[test]
    fn networks_parse_when_the_prefix_fits(
        addr in ip(),
        prefix in 0..300u16,
        ws in white_space(2),
    ) {
        let parsed = format!("{ws}{addr}/{prefix}{ws}").parse::<IpNet>();
        prop_assert_eq!(parsed.is_ok(), prefix <= u16::from(max_prefix(addr)), "{:?}", parsed);
        if let Ok(net) = parsed {
            prop_assert_eq!(net.to_string().parse::<IpNet>(), Ok(net));
        }
    }

    /// `contains` agrees with a bit-by-bit comparison, for addresses inside, at the edge of, and
    /// outside the network, of both families.
    #[test]
    fn network_contains_agrees_with_the_reference(
        (addr, prefix, net) in net(),
        bit in 0..128usize,
        other in ip(),
        mapped in any::<bool>(),
    ) {
        let near = flip_bit(addr, bit);
        for probe in [addr, near, other] {
            // The same address written IPv4-mapped must give the same answer.
            let probe = match (probe.to_canonical(), mapped) {
                (IpAddr::V4(v4), true) => IpAddr::V6(v4.to_ipv6_mapped()),
                (canonical, _) => canonical,
            };
            prop_assert_eq!(
                net.contains(probe),
                reference_contains(addr, prefix, probe),
                "{} in {}", probe, net
            );
        }
        prop_assert!(net.contains(addr));
    }

    /// A bare address is the network of that one address.
    #[test]
    fn a_bare_address_is_one_host((addr, other) in (ip(), ip())) {
        let net: IpNet = addr.to_string().parse().expect("an address");
        prop_assert!(net.contains(addr));
        prop_assert_eq!(net.contains(other), addr.to_canonical() == other.to_canonical());
    }
}

/// One `X-Forwarded-For` entry as proxies write it: `a.b.c.d`, `a.b.c.d:port`, `::1`, `[::1]`,
/// `[::1]:port`, IPv4-mapped, with or without spaces around.
fn hop_text(addr: IpAddr) -> impl Strategy<Value = String> {
    let forms: Vec<String> = match addr {
        IpAddr::V4(v4) => vec![
            v4.to_string(),
            format!("{v4}:443"),
            format!("{v4}:0"),
            v4.to_ipv6_mapped().to_string(),
            format!("[{}]:8080", v4.to_ipv6_mapped()),
        ],
        IpAddr::V6(v6) => vec![v6.to_string(), format!("[{v6}]"), format!("[{v6}]:65535")],
    };
    (select(forms), white_space(1), white_space(1))
        .prop_map(|(hop, a, b)| format!("{}{hop}{}", ascii_only(&a), ascii_only(&b)))
}

/// The white space a header value can hold (HTTP allows spaces and tabs only).
fn ascii_only(ws: &str) -> String {
    ws.chars().filter(|c| *c == ' ' || *c == '\t').collect()
}

/// Bytes a client may put in a header value: visible ASCII, space, tab, and obs-text (0x80 to
/// 0xFF), which HTTP allows and proxies pass on.
fn header_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        4 => select(b"0123456789abcdef.:[], \t".to_vec()),
        2 => 0x20u8..0x7f,
        1 => 0x80u8..=0xff,
        1 => Just(b'\t'),
    ];
    vec(byte, 0..=max)
}

fn header_value(bytes: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(bytes).expect("only bytes a header value may hold")
}

/// The header lines as sent: `lines` one after another under `name`.
fn headers(name: &'static str, lines: &[Vec<u8>]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in lines {
        map.append(name, header_value(line));
    }
    map
}

/// Networks for `TrustedProxies`: mostly narrow ones, so that most addresses are not trusted.
fn trusted_nets() -> impl Strategy<Value = Vec<(IpAddr, u8)>> {
    let narrow = ip().prop_flat_map(|addr| {
        let max = max_prefix(addr);
        (Just(addr), (max / 2)..=max)
    });
    vec(narrow, 0..3)
}

fn proxies(nets: &[(IpAddr, u8)]) -> TrustedProxies {
    TrustedProxies::new(
        nets.iter()
            .map(|(addr, prefix)| format!("{addr}/{prefix}").parse().expect("valid network"))
            .collect(),
    )
}

fn trusts(nets: &[(IpAddr, u8)], ip: IpAddr) -> bool {
    nets.iter()
        .any(|(addr, prefix)| reference_contains(*addr, *prefix, ip))
}

/// A request's path through proxies: the client `client`, then proxies `chain` (each appending
/// the address it received the request from), then `peer`, the proxy that connects to us. The
/// proxies are trusted; the client is not.
#[derive(Debug, Clone)]
struct Forwarded {
    nets: Vec<(IpAddr, u8)>,
    client: IpAddr,
    client_hop: String,
    chain: Vec<(IpAddr, String)>,
    peer: IpAddr,
}

fn forwarded() -> impl Strategy<Value = Forwarded> {
    let hop = || ip().prop_flat_map(|addr| (Just(addr), hop_text(addr)));
    (trusted_nets(), hop(), vec(hop(), 0..3), ip()).prop_map(
        |(mut nets, (client, client_hop), chain, peer)| {
            for addr in chain.iter().map(|(a, _)| *a).chain([peer]) {
                nets.push((addr, max_prefix(addr)));
            }
            Forwarded {
                nets,
                client,
                client_hop,
                chain,
                peer,
            }
        },
    )
}

/// How the proxies wrote the header: all on one line (nginx's `$proxy_add_x_forwarded_for`
/// appends to the line the client sent), or one line each (RFC 9110: the same list).
fn xff_lines(client_part: &[u8], hops: &[String], one_line: bool) -> Vec<Vec<u8>> {
    if one_line {
        let mut line = client_part.to_vec();
        for hop in hops {
            line.extend_from_slice(b", ");
            line.extend_from_slice(hop.as_bytes());
        }
        vec![line]
    } else {
        let mut lines = vec![client_part.to_vec()];
        lines.extend(hops.iter().map(|h| h.as_bytes().to_vec()));
        lines
    }
}

proptest! {
    #![proptest_config(config(1_000))]

    /// From a peer that is not a trusted proxy, the client is the peer and the scheme is our own,
    /// whatever the forwarding headers say; and no header makes `client` panic.
    #[test]
    fn untrusted_peers_are_taken_at_their_word(
        nets in trusted_nets(),
        peer in ip(),
        xff in vec(header_bytes(60), 0..3),
        proto in vec(header_bytes(12), 0..2),
        own_tls in any::<bool>(),
    ) {
        let mut map = headers("x-forwarded-for", &xff);
        for line in &proto {
            map.append("x-forwarded-proto", header_value(line));
        }
        let client = proxies(&nets).client(peer, &map, own_tls);
        if !trusts(&nets, peer) {
            prop_assert_eq!(client.addr, peer.to_canonical());
            prop_assert_eq!(client.https, own_tls);
        } else if xff.is_empty() {
            prop_assert_eq!(client.addr, peer.to_canonical());
        }
    }

    /// Behind trusted proxies, the client is the address the first trusted proxy received the
    /// request from: whatever the client wrote into the header itself (any bytes, on its own line
    /// or on the line the proxies append to) changes nothing.
    #[test]
    fn what_a_client_writes_into_x_forwarded_for_is_ignored(
        path in forwarded().prop_filter("the client is trusted", |p| !trusts(&p.nets, p.client)),
        client_part in header_bytes(40),
        one_line in any::<bool>(),
    ) {
        let mut hops = vec![path.client_hop.clone()];
        hops.extend(path.chain.iter().map(|(_, text)| text.clone()));
        let map = headers("x-forwarded-for", &xff_lines(&client_part, &hops, one_line));
        let client = proxies(&path.nets).client(path.peer, &map, false);
        prop_assert_eq!(client.addr, path.client.to_canonical(), "{:?}", map);
    }

    /// When every address in the header is a trusted proxy, the leftmost one is the client.
    #[test]
    fn an_all_trusted_chain_gives_its_first_address(
        path in forwarded(),
        one_line in any::<bool>(),
    ) {
        let hops: Vec<String> = path.chain.iter().map(|(_, text)| text.clone()).collect();
        let Some((first, _)) = path.chain.first() else {
            return Ok(());
        };
        let lines = if one_line {
            vec![hops.join(",").into_bytes()]
        } else {
            hops.iter().map(|h| h.clone().into_bytes()).collect()
        };
        let map = headers("x-forwarded-for", &lines);
        let client = proxies(&path.nets).client(path.peer, &map, false);
        prop_assert_eq!(client.addr, first.to_canonical());
    }

    /// Behind a trusted proxy, the scheme is the last entry of `X-Forwarded-Proto` (the proxy
    /// closest to us, which terminated TLS), however the client's own entries before it were
    /// written: on the same line or on lines of their own, with any bytes.
    #[test]
    fn the_scheme_is_the_last_proxys(
        path in forwarded(),
        client_lines in vec(header_bytes(12), 0..3),
        scheme in select(vec!["http", "https", "HTTPS", " https ", "\thttp"]),
        one_line in any::<bool>(),
        own_tls in any::<bool>(),
    ) {
        let mut lines = client_lines;
        match lines.last_mut() {
            Some(last) if one_line => last.extend_from_slice(format!(",{scheme}").as_bytes()),
            _ => lines.push(scheme.as_bytes().to_vec()),
        }
        let map = headers("x-forwarded-proto", &lines);
        let client = proxies(&path.nets).client(path.peer, &map, own_tls);
        prop_assert_eq!(client.https, scheme.trim().eq_ignore_ascii_case("https"), "{:?}", map);
    }
}

/// One step against `AddressLimits`.
#[derive(Debug, Clone)]
enum AddressOp {
    /// A Socket.IO connection from the address with this index in `ADDRESSES`.
    Open(usize),
    /// One of the open connections ends.
    Close(prop::sample::Index),
    /// An Engine.IO handshake from the address with this index.
    Admit(usize),
    /// Handshakes from enough other addresses to make the table sweep its idle entries.
    Flood,
}

/// Addresses that test the per-address key: an IPv4 address and the same one IPv4-mapped (one
/// key), two addresses in one IPv6 /64 (one key), and others.
const ADDRESSES: &[&str] = &[
    "192.0.2.1",
    "::ffff:192.0.2.1",
    "192.0.2.2",
    "2001:db8::1",
    "2001:db8::ffff:2",
    "2001:db8:0:1::1",
    "::1",
];

/// The key an address is counted under, as documented: IPv4 (mapped or not) per address, IPv6
/// per /64.
fn reference_key(addr: IpAddr) -> IpAddr {
    match addr.to_canonical() {
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        v4 => v4,
    }
}

fn address_op() -> impl Strategy<Value = AddressOp> {
    let n = ADDRESSES.len();
    prop_oneof![
        6 => (0..n).prop_map(AddressOp::Open),
        4 => any::<prop::sample::Index>().prop_map(AddressOp::Close),
        3 => (0..n).prop_map(AddressOp::Admit),
        1 => Just(AddressOp::Flood),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    /// Under any interleaving of connections opening and closing, handshakes, and table sweeps,
    /// an address never holds more than `max_open` connections, and a connection is refused
    /// exactly when its address already holds `max_open`. A closed connection frees its place.
    #[test]
    fn no_address_holds_more_than_max_open(
        max_open in 0..=4u32,
        connect_rate in prop_oneof![Just(0.0), 0.5..1_000.0f64],
        connect_burst in 0..5u32,
        ops in vec(address_op(), 1..80),
    ) {
        let limits = AddressLimits::new(AddressBounds { connect_rate, connect_burst, max_open });
        let addresses: Vec<IpAddr> =
            ADDRESSES.iter().map(|a| a.parse().expect("an address")).collect();
        let mut open: Vec<(IpAddr, OpenSlot)> = Vec::new();
        let mut flooded = 0u32;
        let held = |open: &[(IpAddr, OpenSlot)], key: IpAddr| {
            open.iter().filter(|(k, _)| *k == key).count() as u32
        };
        for op in ops {
            match op {
                AddressOp::Open(i) => {
                    let addr = addresses[i];
                    let key = reference_key(addr);
                    let before = held(&open, key);
                    let result = limits.open(addr);
                    let allowed = max_open == 0 || before < max_open;
                    prop_assert_eq!(result.is_ok(), allowed, "{} holds {}", addr, before);
                    match result {
                        Ok(slot) => open.push((key, slot)),
                        Err(refusal) => prop_assert_eq!(refusal, Refusal::Open),
                    }
                }
                AddressOp::Close(index) if !open.is_empty() => {
                    open.swap_remove(index.index(open.len()));
                }
                AddressOp::Close(_) => {}
                AddressOp::Admit(i) => {
                    let addr = addresses[i];
                    let full = max_open > 0 && held(&open, reference_key(addr)) >= max_open;
                    match limits.admit(addr) {
                        Ok(()) => prop_assert!(!full, "admitted {} over its cap", addr),
                        Err(Refusal::Open) => prop_assert!(full),
                        Err(Refusal::Rate(_)) => {
                            prop_assert!(!full && connect_rate > 0.0);
                        }
                    }
                }
                AddressOp::Flood => {
                    for _ in 0..1_100 {
                        flooded += 1;
                        let other = IpAddr::V4(Ipv4Addr::from(0x6440_0000 | flooded));
                        let _ = limits.admit(other);
                    }
                }
            }
            if max_open > 0 {
                for addr in &addresses {
                    prop_assert!(held(&open, reference_key(*addr)) <= max_open);
                }
            }
            if max_open == 0 && connect_rate <= 0.0 {
                prop_assert_eq!(limits.tracked(), 0, "unbounded, yet tracking addresses");
            }
        }
        // Everything closed: every address has its full allowance again.
        drop(open);
        if max_open > 0 {
            let mut again = Vec::new();
            for addr in &addresses {
                let key = reference_key(*addr);
                while again.iter().filter(|(k, _)| *k == key).count() < max_open as usize {
                    let slot = limits.open(*addr);
                    prop_assert!(slot.is_ok(), "{} did not get its places back", addr);
                    again.push((key, slot.expect("checked")));
                }
                prop_assert_eq!(limits.open(*addr).err(), Some(Refusal::Open));
            }
        }
    }
}
