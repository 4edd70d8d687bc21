//! A minimal HTTP/1.1 accept loop (hyper, with upgrades), for the examples and tests of this
//! crate. An application serves the engine from its own server; this one has no timeouts or
//! bounds of its own and is not meant to face the internet.

use std::convert::Infallible;
use std::future::Future;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::{ResponseBody, TcpConnection};

/// Serves every connection `listener` accepts with `handle`, until the task is dropped. Plain
/// TCP goes to hyper as [`TcpConnection`], so that broadcasts write WebSockets directly.
pub async fn serve<H, F>(listener: TcpListener, handle: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ResponseBody>> + Send + 'static,
{
    serve_as(listener, handle, TcpConnection::new).await
}

/// As [`serve`], with each accepted stream handed to hyper as `into_io` makes it (the tests
/// serve the bare `TcpStream` too, to cover the path of any other connection).
pub async fn serve_as<H, F, I>(listener: TcpListener, handle: H, into_io: fn(TcpStream) -> I)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ResponseBody>> + Send + 'static,
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let handle = handle.clone();
        let io = into_io(tcp);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let handle = handle.clone();
                async move { Ok::<_, Infallible>(handle(req).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades()
                .await;
        });
    }
}

/// A 404 for paths the examples do not serve.
pub fn not_found() -> Response<ResponseBody> {
    Response::builder()
        .status(404)
        .body(ResponseBody::default())
        .unwrap_or_default()
}
