//! The chat contract end to end, through a real Socket.IO client over each transport.

mod common;

use anyhow::Result;
use common::{RawPolling, TestClient, TestServer};
use rust_socketio::TransportType;
use serde_json::{Value, json};

#[tokio::test]
async fn classic_events_cross_every_transport() -> Result<()> {
    let server = TestServer::start().await?;
    let mut ws = TestClient::connect(&server, TransportType::Websocket).await?;
    let mut polling = TestClient::connect(&server, TransportType::Polling).await?;
    let mut upgraded = TestClient::connect(&server, TransportType::Any).await?;

    // Classic `add user` with a bare string and no ack: `login` {numUsers}.
    ws.emit("add user", json!("wendy")).await?;
    assert_eq!(ws.expect("login").await?["numUsers"], 1);
    polling.emit("add user", json!("paul")).await?;
    assert_eq!(polling.expect("login").await?["numUsers"], 2);
    let joined = ws.expect("user joined").await?;
    assert_eq!(joined, json!({"username": "paul", "numUsers": 2}));
    upgraded.emit("add user", json!("uma")).await?;
    assert_eq!(upgraded.expect("login").await?["numUsers"], 3);
    for c in [&mut ws, &mut polling] {
        assert_eq!(
            c.expect("user joined").await?,
            json!({"username": "uma", "numUsers": 3})
        );
    }
    upgraded.expect_none("user joined").await?;

    // Each message reaches the two others with the classic fields plus id and ts.
    for (sender, text) in [
        ("wendy", "over ws"),
        ("paul", "over polling"),
        ("uma", "upgraded"),
    ] {
        let from = match sender {
            "wendy" => &ws,
            "paul" => &polling,
            _ => &upgraded,
        };
        from.emit("new message", json!(text)).await?;
        for (name, c) in [
            ("wendy", &mut ws),
            ("paul", &mut polling),
            ("uma", &mut upgraded),
        ] {
            if name == sender {
                continue;
            }
            let m = c.expect("new message").await?;
            assert_eq!(m["username"], sender);
            assert_eq!(m["message"], text);
            assert!(m["id"].is_u64() && m["ts"].is_u64(), "{m}");
        }
    }
    // The sender never gets its own message back.
    ws.expect_none("new message").await?;

    ws.emit("typing", Value::Null).await?;
    assert_eq!(
        polling.expect("typing").await?,
        json!({"username": "wendy"})
    );
    ws.emit("stop typing", Value::Null).await?;
    assert_eq!(
        upgraded.expect("stop typing").await?,
        json!({"username": "wendy"})
    );

    // Leaving on purpose is reported at once.
    polling.disconnect().await?;
    assert_eq!(
        ws.expect("user left").await?,
        json!({"username": "paul", "numUsers": 2})
    );
    Ok(())
}

#[tokio::test]
async fn a_second_add_user_is_ignored() -> Result<()> {
    let server = TestServer::start().await?;
    let mut a = TestClient::connect(&server, TransportType::Websocket).await?;
    let mut b = TestClient::connect(&server, TransportType::Websocket).await?;
    a.join("alice").await?;
    b.join("bob").await?;
    a.emit("add user", json!("alice-again")).await?;
    b.expect_none("user joined").await?;
    let ack = a.call("add user", json!("alice-3")).await?;
    assert_eq!(ack["error"]["code"], "already_joined");
    let list = a.call("list users", Value::Null).await?;
    assert_eq!(list, json!({"numUsers": 2, "users": ["alice", "bob"]}));
    Ok(())
}

#[tokio::test]
async fn login_carries_users_history_and_a_session() -> Result<()> {
    let server = TestServer::with_args(&["--history-len", "3"]).await?;
    let mut a = TestClient::connect(&server, TransportType::Websocket).await?;
    a.join("alice").await?;
    let mut ids = Vec::new();
    for i in 0..5 {
        let ack = a.call("new message", json!(format!("m{i}"))).await?;
        ids.push(ack["id"].as_u64().expect("numeric id"));
        assert!(ack["ts"].is_u64());
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

    let mut b = TestClient::connect(&server, TransportType::Polling).await?;
    let login = b.join("bob").await?;
    assert_eq!(login["numUsers"], 2);
    assert_eq!(login["users"], json!(["alice", "bob"]));
    assert_eq!(login["room"], "lobby");
    assert_eq!(login["historyComplete"], true);
    let texts: Vec<&str> = login["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|m| m["message"].as_str().expect("text"))
        .collect();
    assert_eq!(texts, ["m2", "m3", "m4"]);
    assert_eq!(login["session"].as_str().map(str::len), Some(32));
    // The `login` event carries the same as the ack.
    assert_eq!(b.expect("login").await?, login);
    Ok(())
}

#[tokio::test]
async fn reconnecting_with_last_id_gets_exactly_what_was_missed() -> Result<()> {
    let server = TestServer::with_args(&["--history-len", "5"]).await?;
    let mut a = TestClient::connect(&server, TransportType::Websocket).await?;
    let mut b = TestClient::connect(&server, TransportType::Websocket).await?;
    a.join("alice").await?;
    b.join("bob").await?;
    b.emit("new message", json!("seen")).await?;
    let last_id = a.expect("new message").await?["id"].as_u64().expect("id");
    a.disconnect().await?;

    let mut missed = Vec::new();
    for text in ["one", "two", "three"] {
        missed.push(b.call("new message", json!(text)).await?["id"].clone());
    }
    let back = TestClient::connect(&server, TransportType::Polling).await?;
    let login = back
        .call("add user", json!({"username": "alice", "lastId": last_id}))
        .await?;
    let got: Vec<Value> = login["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(got, missed);
    assert_eq!(login["historyComplete"], true);

    // Missed more than the store holds: told so.
    for i in 0..6 {
        b.call("new message", json!(format!("flood {i}"))).await?;
    }
    let late = TestClient::connect(&server, TransportType::Websocket).await?;
    let login = late
        .call("add user", json!({"username": "late", "lastId": last_id}))
        .await?;
    assert_eq!(login["historyComplete"], false);
    assert_eq!(login["history"].as_array().map(Vec::len), Some(5));
    Ok(())
}

#[tokio::test]
async fn taken_nicknames_get_a_variant() -> Result<()> {
    let server = TestServer::start().await?;
    let mut a = TestClient::connect(&server, TransportType::Websocket).await?;
    let mut b = TestClient::connect(&server, TransportType::Polling).await?;
    a.join("Alice").await?;
    let login = b.join("alice").await?;
    assert_eq!(login["username"], "alice (2)");
    assert_eq!(login["renamedFrom"], "alice");
    assert_eq!(
        a.expect("user joined").await?,
        json!({"username": "alice (2)", "numUsers": 2})
    );
    Ok(())
}

/// A name that looks like a name in the chat is that name: the same letters composed or not,
/// or with a joiner that shows nothing, get a variant; invisible and direction-changing
/// characters are refused.
#[tokio::test]
async fn look_alike_nicknames_are_the_same_name() -> Result<()> {
    let server = TestServer::start().await?;
    let mut a = TestClient::connect(&server, TransportType::Websocket).await?;
    a.join("Zo\u{e9}").await?;
    let mut others = Vec::new();
    for (look_alike, given) in [
        ("zoe\u{301}", "zo\u{e9} (2)"),
        ("zo\u{e9}\u{200d}", "zo\u{e9}\u{200d} (3)"),
    ] {
        let mut b = TestClient::connect(&server, TransportType::Websocket).await?;
        let login = b.join(look_alike).await?;
        assert_eq!(login["username"], given, "{look_alike:?}");
        others.push(b);
    }
    // Case folded as Unicode folds it (final sigma, sharp s), compatibility forms (full
    // width, mathematical bold) and runs of white space.
    for (held, other) in [
        ("ΟΔΥΣΣΕΥΣ", "οδυσσευς"),
        ("STRASSE", "Straße"),
        ("alice", "\u{ff41}\u{ff4c}\u{ff49}\u{ff43}\u{ff45}"),
        ("bob", "\u{1d41b}\u{1d428}\u{1d41b}"),
        ("al ice", "al\u{a0}ice"),
        ("j d", "j  d"),
    ] {
        let mut first = TestClient::connect(&server, TransportType::Websocket).await?;
        first.join(held).await?;
        let mut second = TestClient::connect(&server, TransportType::Websocket).await?;
        let login = second.join(other).await?;
        assert_eq!(
            login["username"],
            format!("{other} (2)"),
            "{held} / {other}"
        );
        others.extend([first, second]);
    }
    // The flags of England and Scotland are two names.
    for flag in [
        "\u{1f3f4}\u{e0067}\u{e0062}\u{e0065}\u{e006e}\u{e0067}\u{e007f} fan",
        "\u{1f3f4}\u{e0067}\u{e0062}\u{e0073}\u{e0063}\u{e0074}\u{e007f} fan",
    ] {
        let mut c = TestClient::connect(&server, TransportType::Websocket).await?;
        let login = c.join(flag).await?;
        assert_eq!(login["username"], flag);
        others.push(c);
    }
    for hidden in [
        "\u{202e}eoz",
        "zo\u{e9}\u{200b}",
        "\u{2800}",
        "eve\u{e0061}",
    ] {
        let c = TestClient::connect(&server, TransportType::Websocket).await?;
        let ack = c.call("add user", json!(hidden)).await?;
        assert_eq!(ack["error"]["code"], "invalid_name", "{hidden:?}");
    }
    Ok(())
}

#[tokio::test]
async fn refusals_carry_stable_codes_and_broadcast_nothing() -> Result<()> {
    let server = TestServer::with_args(&["--message-burst", "3", "--message-rate", "0.5"]).await?;
    let mut a = TestClient::connect(&server, TransportType::Websocket).await?;
    let mut b = TestClient::connect(&server, TransportType::Websocket).await?;

    // Before joining.
    let ack = a.call("new message", json!("hi")).await?;
    assert_eq!(ack["error"]["code"], "not_joined");
    a.emit("new message", json!("hi")).await?;
    assert_eq!(a.expect("error message").await?["code"], "not_joined");

    for (arg, code) in [
        (json!(42), "bad_request"),
        (json!({"username": 5}), "bad_request"),
        (Value::Null, "bad_request"),
        (json!("   "), "invalid_name"),
        (json!("x".repeat(33)), "invalid_name"),
        (json!("bell\u{7}"), "invalid_name"),
    ] {
        let ack = a.call("add user", arg.clone()).await?;
        assert_eq!(ack["error"]["code"], code, "add user {arg}");
    }
    a.join("alice").await?;
    b.join("bob").await?;
    a.expect("user joined").await?;

    for (arg, code) in [
        (json!(42), "bad_request"),
        (json!(["a"]), "bad_request"),
        (json!({"text": "a"}), "bad_request"),
        (Value::Null, "bad_request"),
        (json!(" \n "), "empty"),
        (json!("y".repeat(2_001)), "too_long"),
    ] {
        let ack = a.call("new message", arg.clone()).await?;
        assert_eq!(ack["error"]["code"], code, "new message {arg}");
    }
    a.emit("new message", json!(17)).await?;
    assert_eq!(a.expect("error message").await?["code"], "bad_request");
    a.emit("no such event", json!(1)).await?;
    assert_eq!(a.expect("error message").await?["code"], "unknown_event");
    b.expect_none("new message").await?;

    // The burst of 3 passes (2,000 characters is within the limit), then the rate applies.
    for _ in 0..3 {
        let ack = a.call("new message", json!("z".repeat(2_000))).await?;
        assert!(ack["id"].is_u64(), "{ack}");
        b.expect("new message").await?;
    }
    let ack = a.call("new message", json!("one too many")).await?;
    assert_eq!(ack["error"]["code"], "rate_limited");
    b.expect_none("new message").await?;

    // The server is unaffected: others still chat.
    b.call("new message", json!("still here")).await?;
    assert_eq!(a.expect("new message").await?["message"], "still here");
    Ok(())
}

#[tokio::test]
async fn a_silent_connection_is_reported_left_after_the_grace_period() -> Result<()> {
    let server = TestServer::with_args(&[
        "--ping-interval-ms",
        "200",
        "--ping-timeout-ms",
        "200",
        "--reconnect-grace-ms",
        "500",
    ])
    .await?;
    let mut watcher = TestClient::connect(&server, TransportType::Websocket).await?;
    watcher.join("watcher").await?;
    let ghost = RawPolling::connect(&server, None).await?;
    ghost.emit("add user", json!("ghost")).await?;
    watcher.expect("user joined").await?;
    // The raw peer never answers a ping: the server drops it, waits the grace period, then
    // reports it left.
    let started = std::time::Instant::now();
    let left = watcher.expect("user left").await?;
    assert_eq!(left, json!({"username": "ghost", "numUsers": 1}));
    assert!(started.elapsed() >= std::time::Duration::from_millis(500));
    Ok(())
}

/// A polling client whose pending GET is aborted (a tab closed) is dropped at once: the others
/// hear it left as soon as the grace period ends, not a heartbeat timeout later.
#[tokio::test]
async fn a_polling_client_that_aborts_its_get_is_dropped_at_once() -> Result<()> {
    let server = TestServer::with_args(&["--reconnect-grace-ms", "300"]).await?;
    let mut watcher = TestClient::connect(&server, TransportType::Websocket).await?;
    watcher.join("watcher").await?;
    let leaver = RawPolling::connect(&server, None).await?;
    leaver.emit("add user", json!("leaver")).await?;
    watcher.expect("user joined").await?;
    leaver.poll().await?; // its login
    // A GET that waits for data, dropped after a moment as a closing tab drops it.
    let aborted = tokio::time::timeout(std::time::Duration::from_millis(200), leaver.poll()).await;
    assert!(aborted.is_err(), "the GET was still waiting");
    let started = std::time::Instant::now();
    let left = watcher
        .expect_within("user left", std::time::Duration::from_secs(3))
        .await?;
    assert_eq!(left, json!({"username": "leaver", "numUsers": 1}));
    // The default heartbeat (25 s + 20 s) would have taken far longer.
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    assert_eq!(
        leaver.poll().await?,
        r#"{"code":1,"message":"Session ID unknown"}"#
    );
    Ok(())
}

#[tokio::test]
async fn a_session_comes_back_without_left_or_joined() -> Result<()> {
    let server = TestServer::with_args(&["--reconnect-grace-ms", "5000"]).await?;
    let mut watcher = TestClient::connect(&server, TransportType::Websocket).await?;
    watcher.join("watcher").await?;

    // A person on a connection that will look alive but never answer again.
    let first = RawPolling::connect(&server, None).await?;
    first
        .post(&format!(
            "420{}",
            json!(["add user", {"username": "alice"}])
        ))
        .await?;
    let body = first.poll().await?;
    let ack = body
        .split('\u{1e}')
        .find_map(|p| p.strip_prefix("430"))
        .expect("ack packet");
    let login: Vec<Value> = serde_json::from_str(ack)?;
    let session = login[0]["session"].as_str().expect("session").to_owned();
    watcher.expect("user joined").await?;

    // The same person reconnects with the token: same name, nobody told anything.
    let mut back = TestClient::connect_with_auth(
        &server,
        TransportType::Websocket,
        Some(json!({"session": session})),
    )
    .await?;
    let login = back.join("whatever").await?;
    assert_eq!(login["username"], "alice");
    assert_eq!(login["numUsers"], 2);
    watcher.expect_none("user left").await?;
    watcher.expect_none("user joined").await?;
    // The old connection was told it was replaced.
    let body = first.poll().await?;
    assert!(body.contains("replaced"), "{body:?}");
    Ok(())
}

#[tokio::test]
async fn malformed_engine_io_input_harms_nobody_else() -> Result<()> {
    let server = TestServer::start().await?;
    let mut a = TestClient::connect(&server, TransportType::Websocket).await?;
    let mut b = TestClient::connect(&server, TransportType::Polling).await?;
    a.join("alice").await?;
    b.join("bob").await?;

    for garbage in [
        "",
        "garbage",
        "4",
        "42[",
        "42[1,2]",
        "42{\"a\":1}",
        "9999",
        "\u{1e}\u{1e}",
        "45-[\"x\"]",
    ] {
        let raw = RawPolling::connect(&server, None).await?;
        let _ = raw.post(garbage).await?;
    }
    let raw = RawPolling::connect(&server, None).await?;
    raw.emit("add user", json!({"username": ["not", "a", "string"]}))
        .await?;
    raw.emit("new message", json!("before joining")).await?;

    b.emit("new message", json!("still fine")).await?;
    assert_eq!(a.expect("new message").await?["message"], "still fine");
    b.expect_none("user joined").await?;
    Ok(())
}

#[tokio::test]
async fn oversized_payloads_close_only_that_connection() -> Result<()> {
    let server = TestServer::with_args(&["--max-payload-bytes", "10000"]).await?;
    let mut a = TestClient::connect(&server, TransportType::Websocket).await?;
    let mut b = TestClient::connect(&server, TransportType::Websocket).await?;
    a.join("alice").await?;
    b.join("bob").await?;
    let raw = RawPolling::connect(&server, None).await?;
    let status = raw.emit("new message", json!("x".repeat(20_000))).await?;
    assert!(!status.is_success(), "{status}");
    b.emit("new message", json!("after")).await?;
    assert_eq!(a.expect("new message").await?["message"], "after");
    Ok(())
}

#[tokio::test]
async fn events_from_one_socket_are_handled_in_order() -> Result<()> {
    let server = TestServer::with_args(&["--message-burst", "50"]).await?;
    let mut watcher = TestClient::connect(&server, TransportType::Websocket).await?;
    watcher.join("watcher").await?;
    let sender = TestClient::connect(&server, TransportType::Websocket).await?;
    // No waiting between events: `add user` then a burst, as a fast client sends them.
    sender.emit("add user", json!("fast")).await?;
    for i in 0..30 {
        sender
            .emit("new message", json!(format!("burst {i}")))
            .await?;
    }
    let mut last_id = 0;
    for i in 0..30 {
        let m = watcher.expect("new message").await?;
        assert_eq!(m["message"], format!("burst {i}"));
        let id = m["id"].as_u64().expect("id");
        assert!(id > last_id, "ids must follow the order of sending");
        last_id = id;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_room_gets_every_message_of_a_burst_in_order() -> Result<()> {
    // Many receivers and several senders sending as fast as they can: the delivery task's rounds
    // of writes come back to back, so it paces them and each write carries several messages.
    // Nothing may be lost, doubled or reordered by that.
    const RECEIVERS: usize = 150;
    const SENDERS: usize = 3;
    const EACH: usize = 80;
    let server =
        TestServer::with_args(&["--message-burst", "100", "--connect-burst-per-ip", "1000"])
            .await?;
    let mut receivers = Vec::new();
    for i in 0..RECEIVERS {
        let mut c = TestClient::connect(&server, TransportType::Websocket).await?;
        c.join(&format!("r{i}")).await?;
        receivers.push(c);
    }
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let mut c = TestClient::connect(&server, TransportType::Websocket).await?;
        c.join(&format!("s{s}")).await?;
        senders.push(c);
    }
    let bursts = senders.iter().enumerate().map(|(s, c)| async move {
        for i in 0..EACH {
            c.emit("new message", json!(format!("{s}:{i}"))).await?;
        }
        anyhow::Ok(())
    });
    for burst in futures::future::join_all(bursts).await {
        burst?;
    }
    for r in &mut receivers {
        let mut next = [0usize; SENDERS];
        let mut last_id = 0;
        for _ in 0..SENDERS * EACH {
            let m = r.expect("new message").await?;
            let text = m["message"].as_str().expect("text");
            let (s, i) = text.split_once(':').expect("sender:index");
            let (s, i): (usize, usize) = (s.parse()?, i.parse()?);
            assert_eq!(i, next[s], "sender {s}'s messages out of order: {text}");
            next[s] += 1;
            let id = m["id"].as_u64().expect("id");
            assert!(id > last_id, "ids must rise: {id} after {last_id}");
            last_id = id;
        }
    }
    // Nothing doubled: no message after the last one expected.
    receivers[0].expect_none("new message").await?;
    receivers[RECEIVERS - 1].expect_none("new message").await?;
    Ok(())
}

/// Joins `n` clients at once and returns them with the `user joined` events an observer, who
/// joined before them, received until every one of them was announced.
async fn join_storm(server: &TestServer, n: usize) -> Result<(Vec<TestClient>, Vec<Value>)> {
    let mut observer = TestClient::connect(server, TransportType::Websocket).await?;
    observer.join("observer").await?;
    let mut clients = Vec::new();
    for _ in 0..n {
        clients.push(TestClient::connect(server, TransportType::Websocket).await?);
    }
    let joins = clients
        .iter()
        .enumerate()
        .map(|(i, c)| c.call("add user", json!(format!("storm{i}"))));
    for login in futures::future::join_all(joins).await {
        assert!(login?["username"].is_string());
    }
    let mut events = Vec::new();
    let mut announced = 0;
    while announced < n {
        let event = observer.expect("user joined").await?;
        announced += event["count"].as_u64().unwrap_or(1) as usize;
        events.push(event);
    }
    observer.expect_none("user joined").await?;
    // The last announcement carries the count of everyone.
    assert_eq!(events.last().unwrap()["numUsers"], n + 1);
    clients.push(observer);
    Ok((clients, events))
}

#[tokio::test]
async fn a_join_storm_is_announced_in_a_few_gathered_events() -> Result<()> {
    let server = TestServer::start().await?;
    let n = 60;
    let (clients, events) = join_storm(&server, n).await?;
    // Gathered: far fewer events than joins, each a classic `user joined` (a name and the
    // count) plus `count` and `usernames` when it stands for several people.
    assert!(
        events.len() < n / 2,
        "{} events for {n} joins",
        events.len()
    );
    let mut names = Vec::new();
    let mut last_count = 0;
    for event in &events {
        let count = event["count"].as_u64().unwrap_or(1) as usize;
        let listed: Vec<String> = match event["usernames"].as_array() {
            Some(list) => list
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect(),
            None => vec![event["username"].as_str().unwrap().to_owned()],
        };
        assert_eq!(listed.len(), count, "{event}");
        assert_eq!(listed.last().unwrap(), event["username"].as_str().unwrap());
        let num_users = event["numUsers"].as_u64().unwrap() as usize;
        assert!(num_users >= last_count, "counts never go back: {events:?}");
        last_count = num_users;
        names.extend(listed);
    }
    names.sort();
    let mut expected: Vec<String> = (0..n).map(|i| format!("storm{i}")).collect();
    expected.sort();
    assert_eq!(names, expected, "every joiner announced exactly once");
    for c in clients {
        c.disconnect().await?;
    }
    server.shutdown().await
}

#[tokio::test]
async fn with_a_zero_window_every_join_is_announced_alone() -> Result<()> {
    let server = TestServer::with_args(&["--announce-window-ms", "0"]).await?;
    let n = 12;
    let (clients, events) = join_storm(&server, n).await?;
    assert_eq!(events.len(), n);
    for event in &events {
        assert!(event.get("count").is_none() && event.get("usernames").is_none());
    }
    for c in clients {
        c.disconnect().await?;
    }
    server.shutdown().await
}

#[tokio::test]
async fn a_join_that_races_the_connection_closing_leaves_no_ghost() -> Result<()> {
    let server = TestServer::with_args(&["--reconnect-grace-ms", "200"]).await?;
    let mut observer = TestClient::connect(&server, TransportType::Websocket).await?;
    observer.join("observer").await?;
    // `add user` and the Engine.IO close in one payload: the join is still being handled when
    // the connection is gone.
    for i in 0..10 {
        let raw = RawPolling::connect(&server, None).await?;
        raw.post(&format!("42[\"add user\",\"ghost{i}\"]\x1e1"))
            .await?;
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let list = observer.call("list users", json!(null)).await?;
        if list["users"] == json!(["observer"]) {
            assert_eq!(list["numUsers"], 1);
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "ghosts stay after the grace period: {list}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    observer.disconnect().await?;
    server.shutdown().await
}

/// JavaScript strings can hold half an emoji (a lone UTF-16 surrogate), and `JSON.stringify`
/// sends it as an escape that Node's server takes. Banter takes it too: the half becomes U+FFFD.
#[tokio::test]
async fn half_an_emoji_is_taken_as_a_replacement_character() -> Result<()> {
    let server = TestServer::start().await?;
    let mut a = TestClient::connect(&server, TransportType::Websocket).await?;
    a.join("alice").await?;
    let raw = RawPolling::connect(&server, None).await?;
    raw.post(r#"420["add user","cut \ud83d"]"#).await?;
    let login = raw.poll().await?;
    assert!(login.contains("\"username\":\"cut \u{fffd}\""), "{login}");
    assert_eq!(a.expect("user joined").await?["username"], "cut \u{fffd}");
    raw.post(r#"421["new message","a \ud83d\ude00 and a \ude00 half"]"#)
        .await?;
    let got = a.expect("new message").await?;
    assert_eq!(got["message"], "a \u{1f600} and a \u{fffd} half");
    Ok(())
}
