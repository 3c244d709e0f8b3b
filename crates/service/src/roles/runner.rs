//! The runner: wires one role to the shared parts — store, broker connection, consumer,
//! outbox relay and HTTP server — and stops them in order (docs/architecture.md §6).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::http::{self, AppState, Auth};
use crate::messaging::consumer::Consumer;
use crate::messaging::outbox::{self, Outbox};
use crate::messaging::Broker;
use crate::store::Store;

/// How long the store's connections may take to come back at shutdown.
const STORE_CLOSE: Duration = Duration::from_secs(5);

/// Run the role of `settings` until `shutdown` is cancelled, serving HTTP on `listener`.
pub(crate) async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let role = super::behaviour(settings.role)?;
    let service = settings.mq.service_name.clone();
    // Install the recorder before anything records: metrics sent earlier would be lost.
    crate::telemetry::prometheus();
    let auth = Auth::new(settings.jwt_secret()?, settings.auth.leeway);
    let store = Store::open(
        settings.database.url.expose(),
        settings.database.pool_size,
        settings.database.acquire_timeout,
        role.migrations,
    )
    .await?;

    // Two stages: intake (HTTP and consumer) stops first; the relay and the connection
    // stay up until what intake committed has been flushed.
    let intake = CancellationToken::new();
    let drain = CancellationToken::new();
    let broker = Broker::start(settings.mq.clone(), drain.clone());
    let outbox = Outbox::new(
        &service,
        &settings.mq.exchange,
        &settings.mq.emit_versions,
        store.clone(),
    );
    let consumer = tokio::spawn(
        Consumer {
            broker: broker.clone(),
            outbox: outbox.clone(),
            handler: role.handler,
        }
        .run(intake.clone()),
    );
    let mut relay = tokio::spawn(outbox::run_relay(
        broker.clone(),
        outbox.clone(),
        drain.clone(),
        settings.shutdown_grace,
    ));
    let state = AppState {
        service: service.clone().into(),
        pool: store.pool().clone(),
        broker: broker.clone(),
        auth: Arc::new(auth),
        outbox,
        settings: Arc::new(settings.clone()),
        role_ready: Arc::default(),
    };
    let parts = (role.start)(&state, &intake)?;
    let contract = super::openapi_json(&[role.role])?;
    let app = http::app(state, parts.api, parts.open, contract, &settings);
    let addr = listener.local_addr()?;
    let limits = http::Limits {
        max_connections: settings.http.max_connections,
        header_timeout: settings.http.header_timeout,
        write_timeout: settings.http.write_timeout,
    };
    let mut server = tokio::spawn(http::serve(listener, app, limits, intake.clone()));
    tracing::info!(%service, %addr, queue = %settings.mq.queue, exchange = %settings.mq.exchange, broker_user = settings.mq.url.user(), trust = %settings.mq.trust, "serving");

    let mut failure = None;
    tokio::select! {
        _ = shutdown.cancelled() => {}
        r = &mut server => {
            let why = match r { Ok(Ok(())) => "HTTP server stopped".to_string(), Ok(Err(e)) => format!("HTTP server failed: {e}"), Err(e) => format!("HTTP server task failed: {e}") };
            tracing::error!(%service, why, "stopping");
            failure = Some(why);
        }
    }
    intake.cancel();
    let bound = settings.shutdown_grace;
    if tokio::time::timeout(bound, async {
        let _ = (&mut server).await;
        let _ = consumer.await;
        for task in parts.tasks {
            let _ = task.await;
        }
    })
    .await
    .is_err()
    {
        tracing::warn!(%service, "requests or deliveries still in hand after {bound:?}; stopping anyway");
        server.abort();
    }
    drain.cancel();
    if tokio::time::timeout(bound + Duration::from_secs(1), &mut relay)
        .await
        .is_err()
    {
        tracing::warn!(%service, "the outbox relay did not stop within {bound:?}; stopping it");
        relay.abort();
    }
    broker.close().await;
    // A connection still held (a statement stuck behind a lock) must not keep the process
    // from exiting: the pool's close waits for every connection to come back.
    if tokio::time::timeout(STORE_CLOSE, store.close())
        .await
        .is_err()
    {
        tracing::warn!(%service, "store connections still in use after {STORE_CLOSE:?}; stopping anyway");
    }
    tracing::info!(%service, "stopped");
    match failure {
        Some(why) => Err(anyhow::anyhow!(why)),
        None => Ok(()),
    }
}
