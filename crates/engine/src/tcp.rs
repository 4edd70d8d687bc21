//! Plain TCP connections that a broadcast may write to directly.
//!
//! A frame for a WebSocket session normally waits in the session's queue until the session's
//! task wakes and writes it: a wake-up, a poll and a queue per delivery, which costs as much CPU
//! as the write itself (docs/performance.md, "Where the CPU goes"). When the HTTP server hands
//! hyper a [`TcpConnection`], the engine recognises it after the upgrade and shares the socket
//! between the session's task (which reads it, and writes what could not be written at once) and
//! whoever sends to the session: a frame for a session with nothing queued is written by the
//! sender, in a non-blocking `writev`, and only what the socket does not take is queued. That is
//! how Node's server writes a broadcast: in the loop that walks the room.
//!
//! Any other connection (TLS, a test's duplex pipe) works as before, through the session's task.

use std::any::Any;
use std::fmt;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Bytes read from a WebSocket at once, into a buffer on the stack.
pub(crate) const READ_CHUNK: usize = 8 * 1024;

/// A plain TCP connection for hyper to serve (as `TokioIo<TcpConnection>`), with anything that
/// must live as long as the connection does (a place in a per-address count, say).
pub struct TcpConnection {
    tcp: TcpStream,
    _holds: Option<Box<dyn Any + Send + Sync>>,
}

impl TcpConnection {
    pub fn new(tcp: TcpStream) -> Self {
        Self { tcp, _holds: None }
    }

    /// Keeps `value` until the connection is closed, after an upgrade as before it.
    pub fn holding(mut self, value: impl Any + Send + Sync) -> Self {
        self._holds = Some(Box::new(value));
        self
    }

    pub fn stream(&self) -> &TcpStream {
        &self.tcp
    }

    /// Writes what the socket takes now, without waiting; `WouldBlock` when it takes nothing.
    pub(crate) fn try_write_vectored(&self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        // One buffer goes by write(2), which skips writev's import of the iovec array (perf
        // put vfs_writev's own time at 6% of a broadcast's CPU; the difference is within the
        // noise of a fan-out run).
        match slices {
            [one] => self.tcp.try_write(one),
            _ => self.tcp.try_write_vectored(slices),
        }
    }

    /// Writes what the socket takes, once it takes something.
    pub(crate) fn poll_write_vectored(
        &self,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            match self.try_write_vectored(slices) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    /// Ends the sending direction (the peer reads the end of the stream).
    pub(crate) fn shutdown(&self) -> io::Result<()> {
        socket2::SockRef::from(&self.tcp).shutdown(std::net::Shutdown::Write)
    }
}

impl fmt::Debug for TcpConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpConnection")
            .field("tcp", &self.tcp)
            .finish_non_exhaustive()
    }
}

impl AsyncRead for TcpConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for TcpConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// The connection of a WebSocket, as hyper handed it over.
pub(crate) enum Io {
    /// A plain TCP connection, shared with the session's senders; and what hyper had read past
    /// the handshake, to be read first.
    Tcp(std::sync::Arc<TcpConnection>, Bytes),
    /// Any other connection: only the session's task touches it.
    Hyper(TokioIo<Upgraded>),
}

impl Io {
    pub(crate) fn new(upgraded: Upgraded) -> Self {
        match upgraded.downcast::<TokioIo<TcpConnection>>() {
            // What hyper read past the handshake is a view into its whole read buffer (8 KiB
            // and more): keep a copy of those bytes, not the buffer, or every idle connection
            // holds one for its life.
            Ok(parts) => {
                let ahead = if parts.read_buf.is_empty() {
                    Bytes::new()
                } else {
                    Bytes::copy_from_slice(&parts.read_buf)
                };
                Io::Tcp(std::sync::Arc::new(parts.io.into_inner()), ahead)
            }
            Err(upgraded) => Io::Hyper(TokioIo::new(upgraded)),
        }
    }

    /// Reads what has arrived, into a buffer on the stack, and hands it to `on_data`;
    /// `Ok(None)` at the end of the stream. The buffer is not zeroed for a wake-up that finds
    /// nothing to read.
    pub(crate) fn poll_read<R>(
        &mut self,
        cx: &mut Context<'_>,
        on_data: impl FnOnce(&mut [u8]) -> R,
    ) -> Poll<io::Result<Option<R>>> {
        match self {
            Io::Tcp(tcp, ahead) => loop {
                if ahead.is_empty() {
                    ready!(tcp.tcp.poll_read_ready(cx))?;
                }
                let mut buf = [0u8; READ_CHUNK];
                let n = if ahead.is_empty() {
                    match tcp.tcp.try_read(&mut buf) {
                        Ok(n) => n,
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(err) => return Poll::Ready(Err(err)),
                    }
                } else {
                    let n = ahead.len().min(READ_CHUNK);
                    buf[..n].copy_from_slice(&ahead[..n]);
                    ahead.advance(n);
                    if ahead.is_empty() {
                        *ahead = Bytes::new();
                    }
                    n
                };
                if n == 0 {
                    return Poll::Ready(Ok(None));
                }
                return Poll::Ready(Ok(Some(on_data(&mut buf[..n]))));
            },
            Io::Hyper(io) => {
                let mut buf = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
                let mut read = ReadBuf::uninit(&mut buf);
                ready!(Pin::new(io).poll_read(cx, &mut read))?;
                let filled = read.filled_mut();
                if filled.is_empty() {
                    return Poll::Ready(Ok(None));
                }
                Poll::Ready(Ok(Some(on_data(filled))))
            }
        }
    }

    pub(crate) fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self {
            Io::Tcp(tcp, _) => tcp.poll_write_vectored(cx, slices),
            Io::Hyper(io) => Pin::new(io).poll_write_vectored(cx, slices),
        }
    }

    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Io::Tcp(..) => Poll::Ready(Ok(())),
            Io::Hyper(io) => Pin::new(io).poll_flush(cx),
        }
    }

    pub(crate) fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Io::Tcp(tcp, _) => Poll::Ready(tcp.shutdown()),
            Io::Hyper(io) => Pin::new(io).poll_shutdown(cx),
        }
    }

    /// The shared socket, when it is one.
    pub(crate) fn tcp(&self) -> Option<&std::sync::Arc<TcpConnection>> {
        match self {
            Io::Tcp(tcp, _) => Some(tcp),
            Io::Hyper(_) => None,
        }
    }
}
