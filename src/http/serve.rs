//! The HTTP server loop: accepts connections, serves each with hyper (HTTP/1.1, with upgrades to
//! WebSocket), and stops gracefully.
//!
//! `axum::serve` would do, except that it cannot be given a timer, so hyper applies no
//! header-read timeout: a client that opens a TCP connection and sends nothing, or half a
//! request, holds a task and a file descriptor for as long as it likes. Here every connection has
//! `header_timeout` to deliver each request head (the first, and each next one on a kept-alive
//! connection, counted from when the server starts waiting for it); then hyper closes it.
//! Upgraded connections (WebSocket) are the engine's, with its own heartbeat.
//!
//! HTTP/1.1 only, as Socket.IO clients use it (and our TLS offers only `http/1.1` by ALPN).
//! hyper-util's auto (HTTP/1 or 2) builder would not do: it first waits, without a timeout, for
//! enough bytes to tell the versions apart, so a silent connection would never time out.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tower::ServiceExt;

use banter_engine::TcpConnection;

use crate::config::net::TrustedProxies;
use crate::http::clients::{AddressLimits, OpenSlot};

/// The bound on TCP connections per peer address. Proxies are not counted (every client behind
/// one shares its address; the per-client bounds of `clients` apply to them).
pub struct PeerLimit {
    pub limits: Arc<AddressLimits>,
    pub trusted: TrustedProxies,
}

/// Serves `router` on `listener` until `stop` completes; then stops accepting, asks every open
/// connection to finish its request in flight and close, and returns once they have. Each
/// request carries the peer's address as `ConnectInfo<SocketAddr>`.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    header_timeout: Duration,
    peers: PeerLimit,
    stop: impl Future<Output = ()>,
) where
    L: Listener<Addr = SocketAddr>,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);

    // Every connection task holds a receiver: when all are dropped, all connections are done.
    let (closing_tx, closing_rx) = watch::channel(false);
    let (open_tx, open_rx) = watch::channel(());
    let mut stop = pin!(stop);
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        // A peer over its bound is closed at once, before any byte is read: nothing else stops
        // an address from holding open connections (WebSockets that left the namespace, idle
        // keep-alives) until the process runs out of file descriptors.
        let slot = if peers.trusted.trusts(peer.ip()) {
            None
        } else {
            match peers.limits.open(peer.ip()) {
                Ok(slot) => Some(slot),
                Err(refusal) => {
                    crate::ops::metrics::METRICS
                        .address_refused(matches!(refusal, crate::http::clients::Refusal::Open));
                    crate::http::advice::refused(peer.ip(), refusal, peers.limits.bounds());
                    tracing::debug!(%peer, "too many connections from this address; closed");
                    continue;
                }
            }
        };
        let service = router
            .clone()
            .map_request(move |request: hyper::Request<Incoming>| {
                let mut request: Request = request.map(Body::new);
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            });
        let service = TowerToHyperService::new(service);
        let connection = Connection {
            builder: builder.clone(),
            closing: closing_rx.clone(),
            open: open_rx.clone(),
            peer,
        };
        // A plain TCP connection goes to hyper as the engine's own type, so that once it is a
        // WebSocket, broadcasts write to it directly (banter_engine::TcpConnection).
        match into_tcp(io) {
            Ok(tcp) => {
                let mut tcp = TcpConnection::new(tcp);
                if let Some(slot) = slot {
                    tcp = tcp.holding(slot);
                }
                tokio::spawn(connection.serve(tcp, service));
            }
            Err(io) => {
                tokio::spawn(connection.serve(Counted { io, _slot: slot }, service));
            }
        }
    }
    drop(listener);
    let _ = closing_tx.send(true);
    drop(open_rx);
    open_tx.closed().await;
}

/// What serving one connection needs besides the connection.
struct Connection {
    builder: http1::Builder,
    /// Becomes true when the server stops.
    closing: watch::Receiver<bool>,
    /// Held until the connection is done.
    open: watch::Receiver<()>,
    peer: SocketAddr,
}

impl Connection {
    async fn serve<I, S>(mut self, io: I, service: S)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: hyper::service::HttpService<Incoming> + Send,
        S::Future: Send + 'static,
        S::ResBody: Send + 'static,
        <S::ResBody as hyper::body::Body>::Data: Send,
        <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let peer = self.peer;
        let mut connection = pin!(
            self.builder
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades()
        );
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::trace!(%peer, %err, "connection ended with an error");
                }
                return;
            }
            _ = self.closing.wait_for(|closing| *closing) => {}
        }
        connection.as_mut().graceful_shutdown();
        if let Err(err) = connection.await {
            tracing::trace!(%peer, %err, "connection ended with an error while closing");
        }
        drop(self.open);
    }
}

/// The accepted connection as a plain TCP stream, when it is one (the listener is generic:
/// plain TCP, or TLS).
fn into_tcp<T: 'static>(io: T) -> Result<tokio::net::TcpStream, T> {
    let mut io = Some(io);
    let any: &mut dyn std::any::Any = &mut io;
    if let Some(tcp) = any.downcast_mut::<Option<tokio::net::TcpStream>>()
        && let Some(tcp) = tcp.take()
    {
        return Ok(tcp);
    }
    match io {
        Some(io) => Err(io),
        None => unreachable!("taken only when it is a TcpStream"),
    }
}

/// A connection that holds its peer's place in the per-address count for as long as it is open,
/// including after an upgrade, when hyper hands the stream over to the WebSocket.
struct Counted<T> {
    io: T,
    _slot: Option<OpenSlot>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
