//! Serving HTTP/1.1 with the bounds axum's `serve` does not set: hyper's
//! header read timeout (from a request's first byte, and on a kept-alive
//! connection from the end of the previous request), a bounded read buffer
//! (so a request head is at most [`MAX_HEAD_BYTES`]), and a graceful close.
//!
//! A request refused before its body was read (401, 413, 429, 503) leaves
//! that body on the wire. Closing a socket with unread bytes makes the
//! kernel send a reset, which can destroy the answer before the client
//! reads it, and a client still sending sees its write fail instead of the
//! answer. So once hyper is done with a connection its write side is shut
//! down (the answer is followed by a FIN) and what the client still sends
//! is read and dropped, up to [`LINGER_BYTES`] or [`LINGER`], before the
//! socket is closed.
//!
//! On shutdown the listener closes (new connections are refused), kept-alive
//! connections close after their request in flight, and [`serve`] returns
//! once every connection has ended.

use crate::http::completions::Completions;
use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::Service;

/// Largest request head (request line and headers): a longer one is
/// answered 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Longest time a closing connection's unread bytes are read and dropped.
pub const LINGER: Duration = Duration::from_secs(5);

/// Most bytes a closing connection's client may still send before it is
/// closed anyway.
pub const LINGER_BYTES: u64 = 8 << 20;

/// Serves `app` on `listener` until `shutdown` resolves, then waits for the
/// connections to end. Each request carries its peer's
/// [`ConnectInfo<SocketAddr>`].
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let (stop, stopping) = watch::channel(false);
    let connections = Completions::default();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, say: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let conn = connection(stream, peer, app.clone(), header_timeout, stopping.clone());
        drop(connections.spawn(conn));
    }
    drop(listener);
    let _ = stop.send(true);
    connections.idle().await;
}

/// Serves one connection, then closes it gracefully.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    header_timeout: Duration,
    mut stopping: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        Box::pin(async move { app.call(req).await }) as Pin<Box<dyn Future<Output = _> + Send>>
    });
    let mut conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(stream), service);
    let first = tokio::select! {
        r = poll_fn(|cx| conn.poll_without_shutdown(cx)) => Some(r),
        _ = stopping.wait_for(|s| *s) => None,
    };
    let ended = match first {
        Some(r) => r,
        None => {
            Pin::new(&mut conn).graceful_shutdown();
            poll_fn(|cx| conn.poll_without_shutdown(cx)).await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
    linger(conn.into_parts().io.into_inner()).await;
}

/// Shuts the write side down, then reads and drops what the peer still
/// sends, up to [`LINGER_BYTES`] or [`LINGER`], so that closing does not
/// reset the connection under an answer the peer has not read yet.
async fn linger(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let deadline = tokio::time::Instant::now() + LINGER;
    let mut buf = vec![0u8; 16 * 1024];
    let mut read = 0u64;
    while read < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => read += n as u64,
            _ => break,
        }
    }
}
