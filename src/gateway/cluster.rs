//! An instance's part in a cluster: the engine's adapter, which carries broadcasts to the other
//! instances over Redis pub/sub, and the duties of an instance in a cluster: delivering what the
//! others publish (messages in id order, broadcasts, presence changes in version order),
//! heart-beating, ending grace periods, and putting its people back when Redis lost them.

use std::sync::Arc;
use std::time::Duration;

use banter_engine::socketio::{Adapter, Namespace, RemoteOp, SocketIo};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::ChatContext;
use crate::chat::{Change, LOBBY};
use crate::config::Config;
use crate::store::Committed;
use crate::store::redis::{self, PubSub, RedisHealth, RedisStore};

/// How often an instance tells Redis it is alive.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);

/// Broadcasts waiting to be published before more are dropped (and logged).
const ADAPTER_QUEUE: usize = 65_536;

/// What goes on the operations channel: who published it, and the operation.
#[derive(Serialize, Deserialize)]
struct Envelope {
    /// The publishing instance, which has delivered locally already.
    i: String,
    op: RemoteOp,
}

/// The engine's adapter: hands broadcasts to a task that publishes them in order.
pub struct RedisAdapter {
    tx: mpsc::Sender<RemoteOp>,
}

impl Adapter for RedisAdapter {
    fn publish(&self, op: RemoteOp) {
        if let Err(err) = self.tx.try_send(op) {
            tracing::warn!(%err, "too many broadcasts waiting for Redis; one was not published");
        }
    }
}

impl RedisAdapter {
    /// The adapter, and the task that publishes on `chan` for as long as the adapter lives.
    pub fn start(pubsub: PubSub, chan: String, instance: String) -> Self {
        let (tx, mut rx) = mpsc::channel::<RemoteOp>(ADAPTER_QUEUE);
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while let Some(op) = rx.recv().await {
                batch.clear();
                batch.push(op);
                while batch.len() < 256
                    && let Ok(op) = rx.try_recv()
                {
                    batch.push(op);
                }
                let payloads: Vec<Vec<u8>> = batch
                    .drain(..)
                    .filter_map(|op| {
                        serde_json::to_vec(&Envelope {
                            i: instance.clone(),
                            op,
                        })
                        .ok()
                    })
                    .collect();
                pubsub.publish_all(&chan, &payloads).await;
            }
        });
        Self { tx }
    }
}

/// An operation another instance published; `None` for this instance's own, or an unreadable
/// one.
pub fn parse_op(payload: &[u8], own_instance: &str) -> Option<RemoteOp> {
    match serde_json::from_slice::<Envelope>(payload) {
        Ok(envelope) if envelope.i == own_instance => None,
        Ok(envelope) => Some(envelope.op),
        Err(err) => {
            tracing::warn!(%err, "unreadable broadcast on the operations channel");
            None
        }
    }
}

/// What an instance of a cluster runs in the background.
pub struct Cluster {
    pub ctx: ChatContext,
    pub io: SocketIo,
    pub ns: Arc<Namespace>,
    pub store: Arc<RedisStore>,
    pub health: Arc<RedisHealth>,
    pub config: Config,
    pub instance: String,
    pub messages: mpsc::Receiver<Vec<u8>>,
    pub ops: mpsc::Receiver<Vec<u8>>,
    pub presence: mpsc::Receiver<Vec<u8>>,
    pub changes_tx: mpsc::UnboundedSender<Change>,
    pub changes: mpsc::UnboundedReceiver<Change>,
}

/// An instance's duties in a cluster, for as long as it runs: deliver published messages and
/// presence changes in order, carry out other instances' broadcasts, heart-beat, end grace
/// periods, and put its people back when Redis lost them.
pub async fn cluster_forever(cluster: Cluster) {
    let Cluster {
        ctx,
        io,
        ns,
        store,
        health,
        config,
        instance,
        mut messages,
        mut ops,
        mut presence,
        changes_tx,
        changes,
    } = cluster;
    let announce = super::announce_forever(changes, Arc::clone(&ns), config.announce_window());
    let presence = async move {
        while let Some(payload) = presence.recv().await {
            match redis::parse_change(&payload) {
                Some(change) => {
                    let _ = changes_tx.send(change);
                }
                None => tracing::warn!("unreadable change on the presence channel"),
            }
        }
        tracing::error!("the presence channel closed; announcements stop here");
    };
    let deliver = {
        let ns = Arc::clone(&ns);
        let store = Arc::clone(&store);
        async move {
            // As on a single instance: what has arrived by the time the task looks goes out
            // together, each socket's share in one write.
            let mut batch = Vec::new();
            let mut pacer = super::Pacer::default();
            loop {
                let Some(payload) = pacer.wait(messages.recv()).await else {
                    break;
                };
                let mut next = Some(payload);
                while let Some(payload) = next.take() {
                    match redis::parse_published(&payload) {
                        Some(p) => {
                            store.confirm_published(&p);
                            batch.push(Committed {
                                room: LOBBY.to_owned(),
                                sender: p.sender,
                                message: p.message,
                            });
                        }
                        None => tracing::warn!("unreadable message on the message channel"),
                    }
                    if batch.len() < super::MAX_BATCH {
                        next = messages.try_recv().ok();
                    }
                }
                pacer.round(batch.len(), || super::deliver_batch(&ns, &batch));
                batch.clear();
            }
            tracing::error!("the message channel closed; cross-instance messages stop here");
        }
    };
    let remote = async move {
        while let Some(payload) = ops.recv().await {
            if let Some(op) = parse_op(&payload, &instance) {
                io.apply_remote(&op);
            }
        }
        tracing::error!("the broadcast channel closed; cross-instance broadcasts stop here");
    };
    let duties = async move {
        let mut reap_ticks = tokio::time::interval(super::reap_interval(config.reconnect_grace()));
        reap_ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beat_ticks = tokio::time::interval(HEARTBEAT_EVERY);
        beat_ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut must_restore = false;
        let mut outages_seen = health.reconnects();
        loop {
            tokio::select! {
                _ = reap_ticks.tick() => super::reap(&ctx).await,
                _ = beat_ticks.tick() => {
                    let unknown = store.heartbeat(LOBBY, config.instance_timeout_ms).await;
                    must_restore |= matches!(unknown, Ok(true));
                    // Back from an outage: what happened meanwhile was not recorded.
                    must_restore |= health.reconnects() != outages_seen;
                    outages_seen = health.reconnects();
                    if must_restore {
                        must_restore = !restore_members(&store, &ns).await;
                    }
                }
            }
        }
    };
    tokio::join!(deliver, remote, presence, announce, duties);
}

/// Puts this instance's people back into Redis after it lost them. False when Redis failed
/// meanwhile (the caller tries again).
async fn restore_members(store: &RedisStore, ns: &Arc<Namespace>) -> bool {
    let members = super::local_members(ns);
    let mut restored = 0;
    for m in &members {
        match store
            .register(m.room, &m.conn, &m.username, &m.session)
            .await
        {
            Ok(true) => restored += 1,
            Ok(false) => {
                tracing::warn!("a nickname was taken by someone else while Redis was away")
            }
            Err(err) => {
                tracing::warn!(%err, "could not restore presence; will retry");
                return false;
            }
        }
    }
    let live: Vec<String> = members.iter().map(|m| m.conn.clone()).collect();
    match store.reconcile(LOBBY, &live).await {
        Ok(0) => {}
        Ok(dropped) => tracing::info!(
            dropped,
            "people who left during the outage now start their grace period"
        ),
        Err(err) => {
            tracing::warn!(%err, "could not reconcile presence; will retry");
            return false;
        }
    }
    tracing::info!(
        restored,
        of = members.len(),
        "restored this instance's people in Redis"
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use banter_engine::socketio::RemoteAction;

    #[test]
    fn operations_round_trip_and_our_own_are_skipped() {
        let op = RemoteOp {
            nsp: "/".into(),
            rooms: vec!["lobby".into()],
            except: vec!["abc".into()],
            action: RemoteAction::Emit {
                packet: r#"42["typing",{"username":"a"}]"#.into(),
                attachments: vec![],
            },
        };
        let payload = serde_json::to_vec(&Envelope {
            i: "one".into(),
            op: op.clone(),
        })
        .unwrap();
        assert_eq!(parse_op(&payload, "two"), Some(op));
        assert_eq!(parse_op(&payload, "one"), None);
        assert_eq!(parse_op(b"garbage", "two"), None);
    }
}
