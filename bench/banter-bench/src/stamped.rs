//! A loopback TCP stream that knows when its bytes arrived.
//!
//! The bench's thousand receivers share one core, so a frame can wait in its socket while the
//! bench reads the others: the time a client reads a frame is the server's latency plus the
//! bench's own queue. The kernel can say when the bytes reached the socket instead
//! (`SO_TIMESTAMPNS`): on loopback the stamp is taken as the server's `write()` hands the segment
//! to the receiving side, so `stamp - sent_at` is the server's part alone, what a user on their own
//! device would see on a fast network. [`Stamped`] reads with `recvmsg` and keeps the stamp of the
//! newest bytes read (for TCP the kernel reports the stamp of the last segment a read took), so a
//! frame's arrival is never earlier than its last byte's.

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// A TCP stream that records the kernel's receive time of what it reads.
pub struct Stamped {
    inner: TcpStream,
    /// Unix nanos of the newest bytes read; 0 before the first stamped read.
    arrived: u64,
}

impl Stamped {
    /// Turns on the kernel's receive stamps for `stream`.
    pub fn new(stream: TcpStream) -> io::Result<Self> {
        enable(stream.as_raw_fd())?;
        Ok(Self {
            inner: stream,
            arrived: 0,
        })
    }

    /// When the newest bytes read reached the socket (Unix nanos), if the kernel said.
    pub fn arrived_nanos(&self) -> Option<u64> {
        (self.arrived > 0).then_some(self.arrived)
    }
}

/// `setsockopt(SO_TIMESTAMPNS, 1)`: every read then carries the receive time, in `CLOCK_REALTIME`,
/// the clock of the bench's `sent_at`.
pub fn enable(fd: i32) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a plain setsockopt on a socket we own, with a c_int option value and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Room for one `SCM_TIMESTAMPNS` control message, aligned as `cmsghdr` wants.
#[repr(C, align(8))]
struct ControlBuf([u8; 64]);

/// One non-blocking `recvmsg` into `buf`: bytes read and the receive stamp, if one came.
fn recv_stamped(fd: i32, buf: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = ControlBuf([0; 64]);
    // SAFETY: msghdr is plain data; all-zero is a valid empty header, filled in below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = control.0.len() as _;
    // SAFETY: iov points into `buf` and msg_control into `control`, both alive and sized as said.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut stamp = None;
    // SAFETY: the CMSG_* walk stays inside msg_controllen, as the kernel filled it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SO_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                let nanos = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
                if nanos > 0 {
                    stamp = Some(nanos);
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n as usize, stamp))
}

impl AsyncRead for Stamped {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            ready!(this.inner.poll_read_ready(cx))?;
            let fd = this.inner.as_raw_fd();
            let space = buf.initialize_unfilled();
            match this
                .inner
                .try_io(Interest::READABLE, || recv_stamped(fd, space))
            {
                Ok((n, stamp)) => {
                    if let Some(s) = stamp {
                        this.arrived = s;
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Readiness was stale: try_io cleared it, so the next poll waits again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Stamped {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::now_nanos;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The stamp is the moment the bytes came in, not the moment they were read.
    #[tokio::test]
    async fn stamps_arrival_not_read() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let mut reader = Stamped::new(client.unwrap()).unwrap();
        let (mut writer, _) = server.unwrap();
        assert_eq!(reader.arrived_nanos(), None);

        let before = now_nanos();
        writer.write_all(b"hello").await.unwrap();
        let written = now_nanos();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut buf = [0u8; 16];
        let n = reader.read(&mut buf).await.unwrap();
        let read_at = now_nanos();
        assert_eq!(&buf[..n], b"hello");
        let arrived = reader.arrived_nanos().expect("the kernel stamped the read");
        assert!(
            (before..=written).contains(&arrived),
            "arrived {arrived} outside the write [{before}, {written}]"
        );
        assert!(
            read_at - arrived >= 50_000_000,
            "the wait before the read is not counted"
        );
    }
}
