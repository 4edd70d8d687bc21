//! Announcements of people joining and leaving, coalesced during storms.
//!
//! The classic contract tells everyone about every join: N people joining at once (an instance
//! restarted, and all its clients reconnect) are N² events, which no server can deliver quickly,
//! and which no person can read. So an instance announces a change at once when it has announced
//! nothing for a moment (the normal case: exactly the classic behaviour), and otherwise collects
//! the changes of the next `window` and announces them together, one event per run of joins or
//! leaves. Each coalesced event is still a classic `user joined` / `user left` (so the classic
//! page shows a name and the right count), naming the latest person, with the others in added
//! fields. The cost of a storm becomes N × (storm duration / window) events instead of N².

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::{TokenBucket, name_key};

/// Changes announced one by one at once, before coalescing starts...
pub const BURST: u32 = 20;
/// ...and per second after that.
pub const RATE: f64 = 10.0;

/// Joined or left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Joined,
    Left,
}

/// One person joining or leaving, as presence reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: ChangeKind,
    pub username: String,
    /// The count right after this change.
    pub num_users: usize,
    /// The presence version of this change: every join and leave of a room gets a greater one
    /// than the change before it, cluster-wide (see `Presence`).
    pub version: u64,
}

/// Changes of one kind to announce in one event. The last is the latest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub kind: ChangeKind,
    pub changes: Vec<Change>,
    /// The count the event carries, and the presence version it is the count of: the latest
    /// change's, or, for the last batch of a window, the window's latest change's (a change that
    /// cancelled out still moved the count).
    pub num_users: usize,
    pub version: u64,
}

impl Batch {
    fn of(change: Change) -> Self {
        Self {
            kind: change.kind,
            num_users: change.num_users,
            version: change.version,
            changes: vec![change],
        }
    }

    pub fn latest(&self) -> &Change {
        // Never empty: built from at least one change.
        &self.changes[self.changes.len() - 1]
    }
}

/// What to do with a change just offered.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// Announce it now, on its own.
    Now(Batch),
    /// It opens a window: call [`Announcer::flush`] after each window until it returns nothing.
    OpensWindow,
    /// It waits for the window in progress.
    Queued,
}

#[derive(Debug)]
pub struct Announcer {
    window: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// A window is in progress: changes wait for its end.
    open: bool,
    pending: Vec<Change>,
    pace: TokenBucket,
}

impl Announcer {
    /// `window` zero turns coalescing off: every change is announced on its own, at once.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            state: Mutex::new(State {
                open: false,
                pending: Vec::new(),
                pace: TokenBucket::new(RATE, BURST),
            }),
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    pub fn offer(&self, change: Change) -> Offer {
        let batch = Batch::of;
        if self.window.is_zero() {
            return Offer::Now(batch(change));
        }
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.open {
            state.pending.push(change);
            return Offer::Queued;
        }
        if state.pace.try_take() {
            return Offer::Now(batch(change));
        }
        state.open = true;
        state.pending.push(change);
        Offer::OpensWindow
    }

    /// At the end of a window: the changes that waited, in runs of one kind, oldest first. Empty
    /// when nothing waited: the window is then closed, and the next change is announced at once.
    pub fn flush(&self) -> Vec<Batch> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let pending = std::mem::take(&mut state.pending);
        if pending.is_empty() {
            state.open = false;
            return Vec::new();
        }
        drop(state);
        let newest = pending
            .iter()
            .max_by_key(|c| c.version)
            .map(|c| (c.num_users, c.version));
        // Someone who left and came back within one window is, for everyone else, still there:
        // both changes go. (Announced, the leave would also reach their new connection, which
        // never receives its own join, and set its count one too low.)
        let mut pending: Vec<Option<Change>> = pending.into_iter().map(Some).collect();
        for i in 0..pending.len() {
            let Some(left) = pending[i].as_ref().filter(|c| c.kind == ChangeKind::Left) else {
                continue;
            };
            let key = name_key(&left.username);
            let back = pending[i + 1..].iter().position(|c| {
                c.as_ref()
                    .is_some_and(|c| c.kind == ChangeKind::Joined && name_key(&c.username) == key)
            });
            if let Some(offset) = back {
                pending[i] = None;
                pending[i + 1 + offset] = None;
            }
        }
        let mut batches: Vec<Batch> = Vec::new();
        for change in pending.into_iter().flatten() {
            match batches.last_mut() {
                Some(batch) if batch.kind == change.kind => {
                    batch.num_users = change.num_users;
                    batch.version = change.version;
                    batch.changes.push(change);
                }
                _ => batches.push(Batch::of(change)),
            }
        }
        // The last event of the window leaves everyone with the window's final count.
        if let (Some(last), Some((num_users, version))) = (batches.last_mut(), newest) {
            last.num_users = num_users;
            last.version = version;
        }
        batches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(kind: ChangeKind, name: &str, n: usize) -> Change {
        static VERSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Change {
            kind,
            username: name.to_owned(),
            num_users: n,
            version: VERSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn changes_go_at_once_at_a_human_pace_and_are_gathered_beyond_it() {
        let a = Announcer::new(Duration::from_millis(250));
        for n in 0..BURST as usize {
            assert!(matches!(
                a.offer(change(ChangeKind::Joined, "early", n)),
                Offer::Now(_)
            ));
        }
        assert_eq!(
            a.offer(change(ChangeKind::Joined, "b", 2)),
            Offer::OpensWindow
        );
        assert_eq!(a.offer(change(ChangeKind::Joined, "c", 3)), Offer::Queued);
        // While the window is open, everything waits, in order, whatever the pace.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(a.offer(change(ChangeKind::Left, "b", 2)), Offer::Queued);
        assert_eq!(a.offer(change(ChangeKind::Joined, "d", 3)), Offer::Queued);
        let batches = a.flush();
        let shape: Vec<_> = batches
            .iter()
            .map(|b| {
                (
                    b.kind,
                    b.changes
                        .iter()
                        .map(|c| c.username.as_str())
                        .collect::<Vec<_>>(),
                    b.num_users,
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                (ChangeKind::Joined, vec!["b", "c"], 3),
                (ChangeKind::Left, vec!["b"], 2),
                (ChangeKind::Joined, vec!["d"], 3),
            ]
        );
        // The window stays open while changes keep coming; a quiet window closes it, and with
        // the pace back, changes go at once again.
        assert_eq!(a.offer(change(ChangeKind::Joined, "e", 4)), Offer::Queued);
        assert_eq!(a.flush().len(), 1);
        assert!(a.flush().is_empty());
        assert!(matches!(
            a.offer(change(ChangeKind::Left, "e", 3)),
            Offer::Now(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn leaving_and_coming_back_within_a_window_cancels_out() {
        let a = Announcer::new(Duration::from_millis(250));
        for n in 0..BURST as usize {
            a.offer(change(ChangeKind::Joined, "early", n));
        }
        assert_eq!(
            a.offer(change(ChangeKind::Left, "Xena", 4)),
            Offer::OpensWindow
        );
        assert_eq!(a.offer(change(ChangeKind::Joined, "y", 5)), Offer::Queued);
        assert_eq!(
            a.offer(change(ChangeKind::Joined, "xena", 6)),
            Offer::Queued
        );
        let batches = a.flush();
        let names: Vec<_> = batches
            .iter()
            .flat_map(|b| b.changes.iter().map(|c| (b.kind, c.username.as_str())))
            .collect();
        assert_eq!(names, vec![(ChangeKind::Joined, "y")]);
        // y's event carries the count after xena came back, the window's last: 6, not 5.
        assert_eq!(batches[0].num_users, 6);
        assert!(batches[0].version > batches[0].latest().version);
    }

    #[test]
    fn a_zero_window_announces_every_change_alone() {
        let a = Announcer::new(Duration::ZERO);
        for n in 0..(BURST as usize * 3) {
            assert!(matches!(
                a.offer(change(ChangeKind::Joined, "x", n)),
                Offer::Now(_)
            ));
        }
        assert!(a.flush().is_empty());
    }
}
