//! Scale-out: several real `banter` processes sharing a `redis-server` that each test starts on a
//! port of its own. One chat whichever instance a client is on; no ghosts when an instance dies;
//! recovery when Redis restarts; TLS and a password.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use common::{BanterProcess, TestCerts, TestClient, TestRedis};
use rust_socketio::TransportType;
use serde_json::{Value, json};

async fn instances(n: usize, redis_url: &str, extra: &[&str]) -> Result<Vec<BanterProcess>> {
    let mut args = vec!["--redis-url", redis_url];
    args.extend_from_slice(extra);
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(BanterProcess::start(&args).await?);
    }
    Ok(out)
}

fn ids(history: &Value) -> Vec<Value> {
    history
        .as_array()
        .map(|h| h.iter().map(|m| m["id"].clone()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn three_instances_are_one_chat() -> Result<()> {
    let Some(redis) = TestRedis::start().await? else {
        return Ok(());
    };
    let nodes = instances(3, &redis.url(), &["--message-burst", "50"]).await?;
    let [a, b, c] = [nodes[0].server(), nodes[1].server(), nodes[2].server()];
    let mut ws = TestClient::connect(&a, TransportType::Websocket).await?;
    let mut polling = TestClient::connect(&b, TransportType::Polling).await?;
    let mut upgraded = TestClient::connect(&c, TransportType::Any).await?;

    ws.emit("add user", json!("wendy")).await?;
    assert_eq!(ws.expect("login").await?["numUsers"], 1);
    polling.emit("add user", json!("paul")).await?;
    assert_eq!(polling.expect("login").await?["numUsers"], 2);
    assert_eq!(
        ws.expect("user joined").await?,
        json!({"username": "paul", "numUsers": 2})
    );
    let login = upgraded.join("uma").await?;
    assert_eq!(login["numUsers"], 3);
    assert_eq!(login["users"], json!(["paul", "uma", "wendy"]));
    for other in [&mut ws, &mut polling] {
        assert_eq!(
            other.expect("user joined").await?,
            json!({"username": "uma", "numUsers": 3})
        );
    }

    // Every message reaches the two others, whichever instance they are on.
    let clients = [("wendy", &ws), ("paul", &polling), ("uma", &upgraded)];
    for (name, sender) in clients {
        sender
            .emit("new message", json!(format!("hello from {name}")))
            .await?;
    }
    for (me, client) in [
        ("wendy", &mut ws),
        ("paul", &mut polling),
        ("uma", &mut upgraded),
    ] {
        let mut got = Vec::new();
        for _ in 0..2 {
            let m = client.expect("new message").await?;
            assert!(m["id"].is_u64());
            got.push(m["username"].as_str().unwrap_or_default().to_owned());
        }
        got.sort();
        let mut expected: Vec<String> = ["paul", "uma", "wendy"]
            .iter()
            .filter(|n| **n != me)
            .map(|n| n.to_string())
            .collect();
        expected.sort();
        assert_eq!(got, expected, "{me}");
        client.expect_none("new message").await?;
    }

    ws.emit("typing", Value::Null).await?;
    assert_eq!(
        polling.expect("typing").await?,
        json!({"username": "wendy"})
    );
    assert_eq!(
        upgraded.expect("typing").await?,
        json!({"username": "wendy"})
    );

    // A nickname held on another instance is not handed out twice.
    let mut dup = TestClient::connect(&c, TransportType::Websocket).await?;
    let login = dup.join("WENDY").await?;
    assert_eq!(login["username"], "WENDY (2)");
    assert_eq!(login["numUsers"], 4);
    dup.disconnect().await?;
    assert_eq!(ws.expect("user left").await?["numUsers"], 3);

    // Reconnecting to another instance with lastId gets exactly what was missed.
    polling.emit("new message", json!("seen by uma")).await?;
    let last_id = upgraded.expect("new message").await?["id"].clone();
    upgraded.disconnect().await?;
    assert_eq!(
        ws.expect("user left").await?,
        json!({"username": "uma", "numUsers": 2})
    );
    let mut missed = Vec::new();
    for text in ["one", "two", "three"] {
        missed.push(ws.call("new message", json!(text)).await?["id"].clone());
    }
    let back = TestClient::connect(&a, TransportType::Polling).await?;
    let login = back
        .call("add user", json!({"username": "uma", "lastId": last_id}))
        .await?;
    assert_eq!(ids(&login["history"]), missed);
    assert_eq!(login["historyComplete"], true);
    assert_eq!(login["numUsers"], 3);
    Ok(())
}

#[tokio::test]
async fn messages_from_many_senders_arrive_in_id_order_everywhere() -> Result<()> {
    let Some(redis) = TestRedis::start().await? else {
        return Ok(());
    };
    let nodes = instances(2, &redis.url(), &["--message-burst", "100"]).await?;
    let mut watchers = Vec::new();
    for node in &nodes {
        let mut w = TestClient::connect(&node.server(), TransportType::Websocket).await?;
        w.join("watcher").await?;
        watchers.push(w);
    }
    let mut senders = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut s = TestClient::connect(&node.server(), TransportType::Websocket).await?;
        s.join(&format!("sender{i}")).await?;
        senders.push(s);
    }
    for round in 0..20 {
        for s in &senders {
            s.emit("new message", json!(format!("m{round}"))).await?;
        }
    }
    for w in &mut watchers {
        let mut last = 0;
        for _ in 0..40 {
            let id = w.expect("new message").await?["id"].as_u64().unwrap_or(0);
            assert!(id > last, "ids must arrive in increasing order");
            last = id;
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_killed_instance_leaves_no_ghosts_and_its_clients_miss_nothing() -> Result<()> {
    let Some(redis) = TestRedis::start().await? else {
        return Ok(());
    };
    let args = [
        "--instance-timeout-ms",
        "1000",
        "--reconnect-grace-ms",
        "3000",
    ];
    let mut nodes = instances(2, &redis.url(), &args).await?;
    let survivor = nodes[0].server();
    let mut watcher = TestClient::connect(&survivor, TransportType::Websocket).await?;
    watcher.join("watcher").await?;

    let doomed = nodes[1].server();
    let mut gone = TestClient::connect(&doomed, TransportType::Websocket).await?;
    gone.join("gone").await?;
    watcher.expect("user joined").await?;
    let mut movers = TestClient::connect(&doomed, TransportType::Polling).await?;
    let login = movers.join("mover").await?;
    let session = login["session"].clone();
    watcher.expect("user joined").await?;
    watcher.emit("new message", json!("before")).await?;
    let last_id = movers.expect("new message").await?["id"].clone();

    let killed = Instant::now();
    nodes[1].kill9().await?;
    // Sent while the mover is between instances.
    let mut missed = Vec::new();
    for text in ["while", "moving"] {
        missed.push(watcher.call("new message", json!(text)).await?["id"].clone());
    }
    // The mover comes back on the survivor with its session and lastId: same name, nothing lost,
    // and nobody is told it left or joined.
    let back = TestClient::connect_with_auth(
        &survivor,
        TransportType::Websocket,
        Some(json!({"session": session})),
    )
    .await?;
    let login = back
        .call("add user", json!({"username": "mover", "lastId": last_id}))
        .await?;
    assert_eq!(login["username"], "mover");
    assert_eq!(ids(&login["history"]), missed);

    // The one who did not come back is reported left within instance timeout + grace period.
    let left = watcher
        .expect_within("user left", Duration::from_secs(10))
        .await?;
    assert_eq!(left, json!({"username": "gone", "numUsers": 2}));
    let after = killed.elapsed();
    assert!(after >= Duration::from_secs(3), "left too early: {after:?}");
    watcher.expect_none("user left").await?;
    let list = watcher.call("list users", Value::Null).await?;
    assert_eq!(list, json!({"numUsers": 2, "users": ["mover", "watcher"]}));
    Ok(())
}

#[tokio::test]
async fn redis_restart_is_survived_and_recovered() -> Result<()> {
    let Some(mut redis) = TestRedis::start().await? else {
        return Ok(());
    };
    let nodes = instances(2, &redis.url(), &[]).await?;
    let (a, b) = (nodes[0].server(), nodes[1].server());
    let mut a1 = TestClient::connect(&a, TransportType::Websocket).await?;
    let mut a2 = TestClient::connect(&a, TransportType::Polling).await?;
    let mut b1 = TestClient::connect(&b, TransportType::Websocket).await?;
    a1.join("a1").await?;
    a2.join("a2").await?;
    b1.join("b1").await?;

    redis.stop().await?;
    wait_ready(&a.url, false).await?;
    // Clients on one instance keep chatting with each other.
    let ack = a1.call("new message", json!("during the outage")).await?;
    assert!(ack["id"].is_u64(), "{ack}");
    assert_eq!(
        ack["localOnly"], true,
        "the sender is told it reached this instance only"
    );
    assert_eq!(
        a2.expect("new message").await?["message"],
        "during the outage"
    );
    let health = reqwest::get(format!("{}/healthz", a.url)).await?;
    assert_eq!(health.status(), 200);

    redis.restart().await?;
    wait_ready(&a.url, true).await?;
    wait_ready(&b.url, true).await?;
    // Cross-instance delivery resumes, and presence was put back.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = b1.call("list users", Value::Null).await?;
        if list == json!({"numUsers": 3, "users": ["a1", "a2", "b1"]}) {
            break;
        }
        if Instant::now() > deadline {
            bail!("presence not restored: {list}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    a1.emit("new message", json!("after, from a")).await?;
    assert_eq!(b1.expect("new message").await?["message"], "after, from a");
    b1.emit("new message", json!("after, from b")).await?;
    assert_eq!(a1.expect("new message").await?["message"], "after, from b");
    assert_eq!(a2.expect("new message").await?["message"], "after, from a");
    Ok(())
}

/// A Redis that stalls past the 2 s command timeout (`DEBUG SLEEP`, as a slow disk, a fork or an
/// overloaded managed cache would) runs what it was sent once it wakes: each message is then
/// delivered once, everywhere, under the id its sender's ack gives, in id order; nothing is
/// delivered under an id of the instance's own.
#[tokio::test]
async fn a_stalled_redis_delays_messages_without_doubling_or_losing_them() -> Result<()> {
    let Some(redis) = TestRedis::start_debuggable().await? else {
        return Ok(());
    };
    let nodes = instances(2, &redis.url(), &[]).await?;
    let (a, b) = (nodes[0].server(), nodes[1].server());
    let mut a1 = TestClient::connect(&a, TransportType::Websocket).await?;
    let mut a2 = TestClient::connect(&a, TransportType::Websocket).await?;
    let mut b1 = TestClient::connect(&b, TransportType::Websocket).await?;
    a1.join("a1").await?;
    a2.join("a2").await?;
    b1.join("b1").await?;
    let before = send_all(&b1, &["before"]).await?;
    a1.expect("new message").await?;
    a2.expect("new message").await?;

    let _stall = redis.stall(3).await?;
    // One message early in the stall (its command times out after 2 s), one after that timeout,
    // when the instance already counts Redis as away.
    let (early, late) = tokio::join!(
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            a1.call("new message", json!("early")).await
        },
        async {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            a2.call("new message", json!("late")).await
        }
    );
    let (early, late) = (early?, late?);
    assert!(early["id"].is_u64(), "early: {early}");
    assert!(late["id"].is_u64(), "late: {late}");
    assert!(early.get("localOnly").is_none() && late.get("localOnly").is_none());
    assert!(early["id"].as_u64() < late["id"].as_u64(), "{early} {late}");
    assert!(before[0].as_u64() < early["id"].as_u64());

    // Each of the others has each message once, with the acked id, in order.
    let got = a2.expect("new message").await?;
    assert_eq!(
        (&got["message"], &got["id"]),
        (&json!("early"), &early["id"])
    );
    let got = a1.expect("new message").await?;
    assert_eq!((&got["message"], &got["id"]), (&json!("late"), &late["id"]));
    for (text, ack) in [("early", &early), ("late", &late)] {
        let got = b1.expect("new message").await?;
        assert_eq!((&got["message"], &got["id"]), (&json!(text), &ack["id"]));
    }
    for client in [&mut a1, &mut a2, &mut b1] {
        client.expect_none("new message").await?;
    }
    // And both are in the history, once.
    let mut c1 = TestClient::connect(&b, TransportType::Websocket).await?;
    let login = c1.join("c1").await?;
    assert_eq!(
        ids(&login["history"]),
        vec![before[0].clone(), early["id"].clone(), late["id"].clone()],
        "{login}"
    );
    Ok(())
}

/// Waits until `/readyz` says ready (or not ready).
async fn wait_ready(url: &str, ready: bool) -> Result<()> {
    let want = if ready { 200 } else { 503 };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = reqwest::get(format!("{url}/readyz")).await?.status();
        if status == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("/readyz stayed {status}, wanted {want}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn rediss_with_a_password_and_a_private_ca() -> Result<()> {
    let Some(certs) = TestCerts::generate()? else {
        return Ok(());
    };
    let Some(redis) = TestRedis::start_tls(&certs, "s3cret-pass").await? else {
        return Ok(());
    };
    assert!(redis.url().starts_with("rediss://:s3cret-pass@"));
    let ca = certs.ca_cert.display().to_string();
    let nodes = instances(2, &redis.url(), &["--redis-ca-file", &ca]).await?;
    let mut a = TestClient::connect(&nodes[0].server(), TransportType::Websocket).await?;
    let mut b = TestClient::connect(&nodes[1].server(), TransportType::Websocket).await?;
    a.join("alice").await?;
    let login = b.join("bob").await?;
    assert_eq!(login["numUsers"], 2);
    b.emit("new message", json!("over TLS")).await?;
    assert_eq!(a.expect("new message").await?["message"], "over TLS");
    Ok(())
}

#[tokio::test]
async fn a_redis_cluster_with_sharded_pub_sub_is_one_chat() -> Result<()> {
    let Some(redis) = common::TestRedisCluster::start().await? else {
        return Ok(());
    };
    let urls = redis.urls();
    let nodes = instances(2, &urls, &["--redis-cluster"]).await?;
    let (a, b) = (nodes[0].server(), nodes[1].server());
    let mut alice = TestClient::connect(&a, TransportType::Websocket).await?;
    let mut bob = TestClient::connect(&b, TransportType::Polling).await?;
    alice.join("alice").await?;
    let login = bob.join("bob").await?;
    assert_eq!(login["numUsers"], 2);
    assert_eq!(login["users"], json!(["alice", "bob"]));
    assert_eq!(
        alice.expect("user joined").await?,
        json!({"username": "bob", "numUsers": 2})
    );
    bob.emit("new message", json!("sharded")).await?;
    let m = alice.expect("new message").await?;
    assert_eq!(m["message"], "sharded");
    alice.emit("typing", Value::Null).await?;
    assert_eq!(bob.expect("typing").await?, json!({"username": "alice"}));

    let last_id = m["id"].clone();
    bob.disconnect().await?;
    assert_eq!(alice.expect("user left").await?["numUsers"], 1);
    let missed = alice.call("new message", json!("while away")).await?["id"].clone();
    let back = TestClient::connect(&a, TransportType::Websocket).await?;
    let login = back
        .call("add user", json!({"username": "bob", "lastId": last_id}))
        .await?;
    assert_eq!(ids(&login["history"]), vec![missed]);
    Ok(())
}

/// Sends `texts` from `client`; returns their acks' ids.
async fn send_all(client: &TestClient, texts: &[&str]) -> Result<Vec<Value>> {
    let mut ids = Vec::new();
    for text in texts {
        let ack = client.call("new message", json!(text)).await?;
        if !ack["id"].is_u64() {
            bail!("refused: {ack}");
        }
        ids.push(ack["id"].clone());
    }
    Ok(ids)
}

#[tokio::test]
async fn with_redis_the_history_survives_every_banter_restart() -> Result<()> {
    let Some(redis) = TestRedis::start().await? else {
        return Ok(());
    };
    let mut first = instances(1, &redis.url(), &[]).await?;
    let mut alice = TestClient::connect(&first[0].server(), TransportType::Websocket).await?;
    alice.join("alice").await?;
    let seen = send_all(&alice, &["seen"]).await?;
    let missed = send_all(&alice, &["one", "two"]).await?;
    first[0].kill9().await?;

    let second = instances(1, &redis.url(), &[]).await?;
    let back = TestClient::connect(&second[0].server(), TransportType::Websocket).await?;
    let login = back
        .call("add user", json!({"username": "bob", "lastId": seen[0]}))
        .await?;
    assert_eq!(ids(&login["history"]), missed);
    assert_eq!(login["historyComplete"], true);
    Ok(())
}

#[tokio::test]
async fn with_aof_the_history_survives_a_redis_restart() -> Result<()> {
    let Some(mut redis) = TestRedis::start_with_aof().await? else {
        return Ok(());
    };
    let nodes = instances(1, &redis.url(), &[]).await?;
    let server = nodes[0].server();
    let mut alice = TestClient::connect(&server, TransportType::Websocket).await?;
    alice.join("alice").await?;
    let seen = send_all(&alice, &["seen"]).await?;
    let missed = send_all(&alice, &["one", "two"]).await?;

    // A crash of Redis (SIGKILL): only what its append-only file holds comes back.
    redis.stop().await?;
    wait_ready(&server.url, false).await?;
    redis.restart().await?;
    wait_ready(&server.url, true).await?;
    let back = TestClient::connect(&server, TransportType::Websocket).await?;
    let login = back
        .call("add user", json!({"username": "bob", "lastId": seen[0]}))
        .await?;
    assert_eq!(ids(&login["history"]), missed);
    assert_eq!(login["historyComplete"], true);
    let after = send_all(&back, &["after"]).await?;
    assert!(after[0].as_u64() > missed[1].as_u64());
    Ok(())
}
