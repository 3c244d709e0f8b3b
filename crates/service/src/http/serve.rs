//! The HTTP server loop (docs/architecture.md §4): hyper serves every connection of every
//! role — HTTP/1.1, HTTP/1.0 and HTTP/2 with prior knowledge (h2c), long-lived event streams
//! included — with limits a hostile client cannot get around: a cap on open connections, a
//! deadline for a request's headers, a deadline for a write that makes no progress, and a
//! graceful stop that lets requests in hand finish.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;
use tokio_util::sync::CancellationToken;

/// The most a request head may take in hyper's read buffer. Heads up to
/// [`super::MAX_HEAD_BYTES`] are served; larger ones up to this ceiling are answered 431 with
/// the JSON reason by [`super::app`]; beyond it hyper answers a bare 431 itself.
const READ_BUFFER_CEILING: usize = 4 * super::MAX_HEAD_BYTES;
/// HTTP/2 streams one connection may carry at once (an ingress multiplexes browsers' event
/// streams over a few upstream connections).
const H2_MAX_STREAMS: u32 = 1_000;

/// What one role's server allows.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Connections open at once; the next waits in the kernel's backlog.
    pub(crate) max_connections: usize,
    /// How long a client may take to send a request's headers.
    pub(crate) header_timeout: Duration,
    /// How long a write may wait for the client to take bytes: a reader that stopped (an
    /// event stream's, say) cannot hold its connection.
    pub(crate) write_timeout: Duration,
}

/// Serve `app` on `listener` until `stop` is cancelled, then wait for the connections in
/// hand to finish their requests.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(READ_BUFFER_CEILING);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(READ_BUFFER_CEILING as u32)
        .keep_alive_interval(Some(Duration::from_secs(20)));
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = stop.cancelled() => break,
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let mut stream = TimeoutStream::new(stream);
        stream.set_write_timeout(Some(limits.write_timeout));
        let io = TokioIo::new(Box::pin(stream));
        let service = TowerToHyperService::new(app.clone());
        let connection = builder
            .serve_connection_with_upgrades(io, service)
            .into_owned();
        let watched = graceful.watch(connection);
        tokio::spawn(async move {
            let _permit = permit;
            let _ = watched.await;
        });
    }
    graceful.shutdown().await;
    Ok(())
}
