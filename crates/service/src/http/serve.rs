//! The HTTP server loop (docs/architecture.md §4): hyper with limits a hostile client cannot
//! get around — a cap on open connections, a deadline for a request's headers — and a
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
use tokio_util::sync::CancellationToken;

use super::streams::{self, First, Streams};

/// What one role's server allows.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Connections open at once; the next waits in the kernel's backlog.
    pub(crate) max_connections: usize,
    /// How long a client may take to send a request's headers.
    pub(crate) header_timeout: Duration,
    /// The role's long-lived event streams, served beside hyper (`http::streams`).
    pub(crate) streams: Option<Streams>,
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
        .header_read_timeout(limits.header_timeout);
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
        let (app, builder, watcher) = (app.clone(), builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(streams) = limits.streams {
                // Which server a connection gets depends on its first request: look before
                // hyper takes it.
                let deadline = tokio::time::Instant::now() + limits.header_timeout;
                match streams::first_request(&stream, streams.prefix, deadline).await {
                    First::Stream => return streams::serve(stream, app, streams, deadline).await,
                    First::Gone => return,
                    First::Other => {}
                }
            }
            let service = TowerToHyperService::new(app);
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            let _ = watcher.watch(connection).await;
        });
    }
    graceful.shutdown().await;
    // Streams served beside hyper end when the role stops them; each holds its permit.
    let _ = permits
        .acquire_many(u32::try_from(limits.max_connections.max(1)).unwrap_or(u32::MAX))
        .await;
    Ok(())
}
