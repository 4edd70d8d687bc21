//! `floor`: the least CPU a delivery can cost on this machine, measured the way a server pays it.
//!
//! A writer (this process) holds N loopback TCP connections (TCP_NODELAY, non-blocking, as a
//! server's) and, at the offered rate, writes one WebSocket text frame of the size a chat
//! message's is to each in turn: one `write()` per delivery, nothing else: no parsing, no
//! encoding, no scheduling. A reader (a child process, as the bench's clients are to a server)
//! reads everything. The writer's CPU per delivery is the floor under any server's, since on
//! loopback the sender's `write()` also runs the receiving side of TCP. With `--batch K`, K frames
//! go in each write: what a server saves by writing several queued frames at once.

use std::io::{ErrorKind, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::scenarios::Outcome;
use crate::stats::{cpu_seconds, own_cpu_seconds, round2};

/// The payload of a fan-out message frame, about what Banter and Node send for a short message.
fn frame(payload_bytes: usize) -> Vec<u8> {
    let mut text = String::from(r#"42["new message",{"username":"sender-1","message":""#);
    while text.len() + 3 < payload_bytes {
        text.push('x');
    }
    text.push_str(r#""}]"#);
    let mut out = vec![0x81];
    if text.len() < 126 {
        out.push(text.len() as u8);
    } else {
        out.push(126);
        out.extend_from_slice(&(text.len() as u16).to_be_bytes());
    }
    out.extend_from_slice(text.as_bytes());
    out
}

/// What the floor is measured with.
pub struct FloorParams {
    pub sockets: usize,
    /// Deliveries per second, all sockets together.
    pub rate: f64,
    pub duration: Duration,
    /// Frames per write.
    pub batch: usize,
    /// Bytes of a frame's payload.
    pub frame_bytes: usize,
    /// CPUs the reader runs on (a `taskset -c` list); the writer's are the caller's to set.
    pub reader_cpus: Option<String>,
}

/// The reader side: connects `sockets` times to `addr` and reads until every connection ends.
pub fn read_side(addr: &str, sockets: usize) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut readers = Vec::with_capacity(sockets);
        for _ in 0..sockets {
            let mut stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            // Stamped as the bench's clients' sockets are, so the kernel does the same work.
            crate::stamped::enable(std::os::fd::AsRawFd::as_raw_fd(&stream))?;
            readers.push(tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; 2048];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            }));
        }
        for r in readers {
            let _ = r.await;
        }
        anyhow::Ok(())
    })
}

/// Kills the reader when dropped, whatever happened.
struct Reader(Child);

impl Drop for Reader {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn floor(p: &FloorParams) -> anyhow::Result<Outcome> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let exe = std::env::current_exe()?;
    let mut command = match &p.reader_cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpus).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    let reader = Reader(
        command
            .args(["floor-reader", "--addr", &addr.to_string()])
            .args(["--sockets", &p.sockets.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()?,
    );
    let mut streams: Vec<TcpStream> = Vec::with_capacity(p.sockets);
    while streams.len() < p.sockets {
        let (stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        streams.push(stream);
    }
    let one = frame(p.frame_bytes);
    let batch = p.batch.max(1);
    let buf: Vec<u8> = one.repeat(batch);

    // One round writes `batch` frames to every socket; rounds are paced to the offered rate.
    let rounds_per_s = p.rate / (p.sockets * batch) as f64;
    let round_every = Duration::from_secs_f64(1.0 / rounds_per_s.max(1e-9));
    let cpu_before = own_cpu_seconds();
    let reader_cpu_before = cpu_seconds(reader.0.id());
    let started = Instant::now();
    let (mut writes, mut frames, mut short, mut blocked) = (0u64, 0u64, 0u64, 0u64);
    let mut next = started;
    while started.elapsed() < p.duration {
        for stream in &mut streams {
            match stream.write(&buf) {
                Ok(n) if n == buf.len() => frames += batch as u64,
                Ok(n) => {
                    // A partial write leaves the stream mid-frame: count it, and finish it.
                    short += 1;
                    frames += batch as u64;
                    stream.set_nonblocking(false)?;
                    stream.write_all(&buf[n..])?;
                    stream.set_nonblocking(true)?;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => blocked += 1,
                Err(e) => return Err(e.into()),
            }
            writes += 1;
        }
        next += round_every;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = own_cpu_seconds().zip(cpu_before).map(|(a, b)| a - b);
    let reader_cpu = cpu_seconds(reader.0.id())
        .zip(reader_cpu_before)
        .map(|(a, b)| a - b);
    // Let the reader drain what is in flight, then end its connections.
    std::thread::sleep(Duration::from_millis(200));
    for stream in &mut streams {
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
    drop(reader);

    let per_delivery = cpu.map(|c| c * 1e6 / frames.max(1) as f64);
    let json: Value = json!({
        "scenario": "floor",
        "label": "floor",
        // Every write went out without blocking: the floor measured what it says.
        "ok": blocked == 0,
        "sockets": p.sockets,
        "batch": batch,
        "reader_cpus": p.reader_cpus,
        "frame_bytes": one.len(),
        "offered_deliveries_per_s": p.rate,
        "delivered_per_s": round2(frames as f64 / elapsed),
        "writes": writes,
        "frames": frames,
        "would_block": blocked,
        "short_writes": short,
        "writer_cpu_s": cpu.map(round2),
        "reader_cpu_s": reader_cpu.map(round2),
        "server_cpu_us_per_delivery": per_delivery.map(round2),
    });
    eprintln!(
        "floor: {} sockets, {} frame(s) of {} bytes per write, {:.0} deliveries/s offered, {:.0} done",
        p.sockets,
        batch,
        one.len(),
        p.rate,
        frames as f64 / elapsed
    );
    eprintln!(
        "  writer CPU {} µs per delivery ({} writes would have blocked), reader CPU {} s",
        per_delivery.map_or("?".into(), |v| format!("{v:.2}")),
        blocked,
        reader_cpu.map_or("?".into(), |v| format!("{v:.2}"))
    );
    Ok(Outcome {
        ok: blocked == 0,
        json,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_websocket_text_frames_of_the_size_asked() {
        let f = frame(110);
        assert_eq!(f[0], 0x81);
        assert_eq!(usize::from(f[1]), f.len() - 2);
        assert_eq!(f.len() - 2, 110);
        let big = frame(300);
        assert_eq!(big[1], 126);
        assert_eq!(u16::from_be_bytes([big[2], big[3]]) as usize, big.len() - 4);
    }
}
