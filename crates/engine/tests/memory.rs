//! What an idle WebSocket session holds on the heap.
//!
//! RSS per connection is a benchmark's figure (`banter-bench idle`, docs/performance.md); this
//! test pins down its largest part, the heap, which is exact: every allocation of this test
//! binary is counted. Clients here are raw TCP connections that do the upgrade with a request
//! written by hand and read the open packet into a buffer on the stack, so what the count grows
//! by is the server's session, plus one tokio registration per client socket.
//!
//! A session that kept a buffer it no longer uses (hyper's 8 KiB read buffer, say) shows here,
//! and so does one that queues an answer to every WebSocket ping of a client that reads none
//! (and, beside it, that holding pongs back does not make a slow reader's pong late).
//!
//! The count is the whole binary's: the tests take turns (`serial`).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use banter_engine::Config;
use common::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Mutex, MutexGuard};

/// The system allocator, counting the bytes it has live.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is System's.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            LIVE.fetch_add(layout.size() as isize, Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
    }

    // alloc_zeroed and realloc keep their default bodies, which go through these two.
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Sessions opened for the measure.
const SESSIONS: usize = 400;

/// Heap bytes per idle session (server and client socket together) above which the test fails.
/// Measured here: 1.6-1.8 KiB in a debug build; 9.8 KiB when the session kept hyper's read
/// buffer (2026-12-05, the mistake this test was written for). 4 KiB is the engine's target for
/// the whole RSS of an idle connection (issue 11).
const BOUND: isize = 4 * 1024;

/// One test at a time: each measures what the whole binary allocates.
async fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::const_new(());
    SERIAL.lock().await
}

/// Opens a WebSocket session by hand and reads its open packet; returns the connection, which
/// holds nothing on this side but the socket.
async fn open(server: &TestServer) -> Result<TcpStream> {
    upgrade(TcpStream::connect(server.addr()).await?, server).await
}

/// Does the WebSocket handshake on `tcp` and reads the open packet.
async fn upgrade(mut tcp: TcpStream, server: &TestServer) -> Result<TcpStream> {
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        server.target(common::WEBSOCKET),
        server.addr()
    );
    tcp.write_all(request.as_bytes()).await?;
    // The 101 response, then one text frame: the open packet.
    let mut buf = [0u8; 2048];
    let mut len = 0;
    loop {
        let n = tokio::time::timeout(common::WAIT, tcp.read(&mut buf[len..]))
            .await
            .context("waiting for the open packet")??;
        ensure!(n > 0, "the server closed the connection");
        len += n;
        let seen = &buf[..len];
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            ensure!(seen.starts_with(b"HTTP/1.1 101"), "not an upgrade");
            let frame = &seen[end + 4..];
            if frame.len() >= 2 && frame.len() >= 2 + usize::from(frame[1] & 0x7f) {
                ensure!(frame[0] == 0x81 && frame[2] == b'0', "not an open packet");
                return Ok(tcp);
            }
        }
        ensure!(len < buf.len(), "a response larger than expected");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_websocket_session_holds_a_few_kib_of_heap() -> Result<()> {
    let _serial = serial().await;
    let server = TestServer::engine_with(Config {
        ping_interval: Duration::from_secs(60),
        ..Config::default()
    })
    .await?;
    // A first batch grows what is shared (the session map, the runtime's slabs) before the count.
    let mut warm = Vec::with_capacity(SESSIONS);
    for _ in 0..SESSIONS {
        warm.push(open(&server).await?);
    }
    let mut clients = Vec::with_capacity(SESSIONS);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = LIVE.load(Relaxed);
    for _ in 0..SESSIONS {
        clients.push(open(&server).await?);
    }
    // Every session has read what followed its handshake, and sits idle.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let per_session = (LIVE.load(Relaxed) - before) / SESSIONS as isize;
    eprintln!("{per_session} bytes of heap per idle session (server and client socket)");
    ensure!(
        per_session <= BOUND,
        "an idle session holds {per_session} bytes of heap (bound {BOUND})"
    );
    drop(warm);
    drop(clients);
    Ok(())
}

/// WebSocket pings the flooding client sends: 10 MB of frames, whose pongs (6 MB) are more than
/// the kernel buffers of a loopback connection hold.
const PINGS: usize = 1_000_000;

/// A client ping frame with a 4-byte payload, masked as a client's must be.
const PING: [u8; 10] = {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let data = *b"beat";
    [
        0x89,
        0x84,
        mask[0],
        mask[1],
        mask[2],
        mask[3],
        data[0] ^ mask[0],
        data[1] ^ mask[1],
        data[2] ^ mask[2],
        data[3] ^ mask[3],
    ]
};

/// The frames a server sent: (opcode, payload), for unmasked frames of under 64 KiB; and how
/// many bytes they took.
fn frames(mut bytes: &[u8]) -> (Vec<(u8, Vec<u8>)>, usize) {
    let mut out = Vec::new();
    let mut used = 0;
    while bytes.len() >= 2 {
        let (len, head) = match bytes[1] & 0x7f {
            126 if bytes.len() >= 4 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            126 => break,
            127 => panic!("a frame of 64 KiB or more"),
            len => (usize::from(len), 2),
        };
        if bytes.len() < head + len {
            break;
        }
        out.push((bytes[0] & 0x0f, bytes[head..head + len].to_vec()));
        bytes = &bytes[head + len..];
        used += head + len;
    }
    (out, used)
}

/// A client's text frame (mask 0) with the Engine.IO message `4` + `fill` repeated to `len`
/// bytes, whose first bytes say `tag` and `n`.
fn message(tag: u8, n: usize, len: usize) -> Vec<u8> {
    let mut text = format!("4{}{n:05}", char::from(tag)).into_bytes();
    text.resize(len, b'.');
    let mut frame = vec![0x81, 0x80 | 126];
    frame.extend_from_slice(&u16::try_from(len).expect("under 64 KiB").to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(&text);
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_from_a_client_that_reads_nothing_cost_one_pong() -> Result<()> {
    let _serial = serial().await;
    let server = TestServer::engine_with(Config {
        ping_interval: Duration::from_secs(60),
        ..Config::default()
    })
    .await?;
    // A small receive buffer: the client's side of the connection fills up at once.
    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let mut tcp = upgrade(socket.connect(server.addr()).await?, &server).await?;
    let flood: Vec<u8> = PING.repeat(PINGS);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = LIVE.load(Relaxed);
    tcp.write_all(&flood).await?;
    // The server has read every ping once it answers a message sent after them.
    tcp.write_all(&[0x81, 0x86, 0, 0, 0, 0, b'4', b'h', b'e', b'l', b'l', b'o'])
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let grown = LIVE.load(Relaxed) - before;
    eprintln!("{grown} bytes of heap after {PINGS} pings that were not read");
    // Read everything now: pongs (as many as the sockets' buffers held, and the latest ping's),
    // then the echo.
    let mut buf = vec![0u8; 64 * 1024];
    let (mut len, mut pongs) = (0, 0);
    let echoed = loop {
        let n = tokio::time::timeout(common::WAIT, tcp.read(&mut buf[len..]))
            .await
            .context("waiting for the echo after the pongs")??;
        ensure!(n > 0, "the server closed the connection");
        len += n;
        let (seen, used) = frames(&buf[..len]);
        buf.copy_within(used..len, 0);
        len -= used;
        let mut echo = None;
        for (opcode, payload) in seen {
            match opcode {
                0xa => {
                    ensure!(payload == b"beat", "a pong must carry its ping's data");
                    pongs += 1;
                }
                0x1 => echo = Some(payload),
                other => anyhow::bail!("unexpected opcode {other}"),
            }
        }
        if let Some(echo) = echo {
            break echo;
        }
    };
    eprintln!("{pongs} pongs for {PINGS} pings");
    ensure!(echoed == b"4hello", "the session must still echo");
    // When every ping had its pong queued, this grew by 24 MB (2026-12-05, debug build), and
    // the client read a pong for every ping; now 0 bytes, and 2,500 pongs (what the kernel's
    // buffers took while the outbound queue was empty).
    ensure!(
        grown < 256 * 1024,
        "{grown} bytes of heap grew with pings nobody read"
    );
    ensure!(pongs < PINGS / 2, "{pongs} pongs: one queued per ping");
    Ok(())
}

/// Echoed messages queued before the client's ping, and after it.
const BEFORE: usize = 150;
const AFTER: usize = 100;
/// Bytes of each message: the 150 echoes before the ping (9 MB) are more than the kernel's
/// buffers of a loopback connection take (here up to 4 MiB on the sending side), so most of
/// them wait in the server's queue.
const MESSAGE: usize = 60_000;

/// A client that reads a little slower than its server sends must still get the pong to its
/// ping once it has read what came before the ping, not only once it has read everything
/// (a WebSocket client with a ping timeout of its own would give up on a busy room).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pong_waits_for_what_was_sent_before_its_ping_not_for_what_came_after() -> Result<()> {
    let _serial = serial().await;
    let server = TestServer::engine_with(Config {
        ping_interval: Duration::from_secs(60),
        // Room for all the echoes: this client is slow, not stuck.
        max_buffered_bytes: 64 << 20,
        ..Config::default()
    })
    .await?;
    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let mut tcp = upgrade(socket.connect(server.addr()).await?, &server).await?;
    // Not reading yet: the echoes fill the sockets' buffers, and the rest waits in the server.
    for n in 0..BEFORE {
        tcp.write_all(&message(b'a', n, MESSAGE)).await?;
    }
    // The server has echoed them (its handler answers a batch read after the batch's pings).
    tokio::time::sleep(Duration::from_millis(100)).await;
    tcp.write_all(&PING).await?;
    for n in 0..AFTER {
        tcp.write_all(&message(b'b', n, MESSAGE)).await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Now read it all, noting where the pong came.
    let mut order = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut len = 0;
    while order.iter().filter(|seen| **seen != "pong").count() < BEFORE + AFTER {
        let n = tokio::time::timeout(common::WAIT, tcp.read(&mut buf[len..]))
            .await
            .context("waiting for the echoes")??;
        ensure!(n > 0, "the server closed the connection");
        len += n;
        let (seen, used) = frames(&buf[..len]);
        buf.copy_within(used..len, 0);
        len -= used;
        for (opcode, payload) in seen {
            match opcode {
                0xa => {
                    ensure!(payload == b"beat", "a pong must carry its ping's data");
                    order.push("pong".to_string());
                }
                0x1 => order.push(String::from_utf8_lossy(&payload[..7]).into_owned()),
                other => anyhow::bail!("unexpected opcode {other}"),
            }
        }
    }
    let expected: Vec<String> = (0..BEFORE)
        .map(|n| format!("4a{n:05}"))
        .chain((0..AFTER).map(|n| format!("4b{n:05}")))
        .collect();
    let echoes: Vec<&String> = order.iter().filter(|seen| *seen != "pong").collect();
    ensure!(
        echoes.iter().copied().eq(expected.iter()),
        "the echoes out of order"
    );
    let pongs: Vec<usize> = (0..order.len()).filter(|i| order[*i] == "pong").collect();
    ensure!(pongs.len() == 1, "{} pongs for one ping", pongs.len());
    let at = pongs[0];
    eprintln!("the pong came after {at} of {} echoes", BEFORE + AFTER);
    // Before: the pong waited until the queue was empty, after every echo (2026-12-06).
    ensure!(
        at < BEFORE + AFTER / 2,
        "the pong waited for what was queued after its ping (after {at} echoes)"
    );
    if common::Conn::from_env() == common::Conn::Shared {
        // One queue, written in order: the pong leaves right after what preceded its ping.
        // (On the task path the session's task takes the queue's frames in batches, and the
        // pong may overtake some of those queued before the ping, which RFC 6455 allows.)
        ensure!(
            at >= BEFORE,
            "the pong overtook what was sent before its ping"
        );
    }
    Ok(())
}
