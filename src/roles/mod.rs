//! The roles, and the runner that wires one of them to the shared parts: store, broker
//! connection, consumer, outbox relay and HTTP server, with an orderly shutdown.

pub mod election;
pub mod grants;
pub mod meeting;
pub mod permission;
pub mod voting;

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::http::{self, AppState, Auth};
use crate::messaging::consumer::Consumer;
use crate::messaging::{outbox, Broker, EventHandler, OutboxWaker};
use crate::role::Role;

/// Run one role until `shutdown` is cancelled, serving HTTP on `listener`.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let producer = settings.mq.service_name.clone();
    match settings.role {
        Role::Meeting => {
            serve(
                settings,
                listener,
                shutdown,
                meeting::api::router(),
                meeting::handlers::Handler,
            )
            .await
        }
        Role::Election => {
            serve(
                settings,
                listener,
                shutdown,
                election::api::router(),
                election::handlers::Handler::new(producer),
            )
            .await
        }
        Role::Voting => {
            serve(
                settings,
                listener,
                shutdown,
                voting::api::router(),
                voting::handlers::Handler,
            )
            .await
        }
        Role::Permission => {
            serve(
                settings,
                listener,
                shutdown,
                permission::api::router(),
                permission::handlers::Handler::new(producer),
            )
            .await
        }
    }
}

async fn serve<H: EventHandler>(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
    api: Router<AppState>,
    handler: H,
) -> anyhow::Result<()> {
    let service = settings.mq.service_name.clone();
    // Install the recorder before anything records: metrics sent earlier would be lost.
    crate::telemetry::prometheus();
    let auth = Auth::new(settings.jwt_secret()?);
    let pool = crate::store::open(&settings.database_url, settings.role).await?;

    // Two stages: intake (HTTP and consumer) stops first; the relay and the connection
    // stay up until what intake committed has been flushed.
    let intake = CancellationToken::new();
    let drain = CancellationToken::new();
    let broker = Broker::start(settings.mq.clone(), drain.clone());
    let waker = OutboxWaker::default();
    let consumer = tokio::spawn(
        Consumer {
            broker: broker.clone(),
            pool: pool.clone(),
            handler: Arc::new(handler),
            waker: waker.clone(),
        }
        .run(intake.clone()),
    );
    let relay = tokio::spawn(outbox::run_relay(
        broker.clone(),
        pool.clone(),
        waker.clone(),
        drain.clone(),
        settings.shutdown_grace,
    ));
    let state = AppState {
        service: service.clone().into(),
        pool: pool.clone(),
        broker: broker.clone(),
        auth: Arc::new(auth),
        outbox: waker,
    };
    let app = http::app(state, api, &settings.cors_allowed_origins);
    let addr = listener.local_addr()?;
    let mut server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(intake.clone().cancelled_owned())
            .into_future(),
    );
    tracing::info!(%service, %addr, queue = %settings.mq.queue, exchange = %settings.mq.exchange, "serving");

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
    })
    .await
    .is_err()
    {
        tracing::warn!(%service, "requests or deliveries still in hand after {bound:?}; stopping anyway");
        server.abort();
    }
    drain.cancel();
    let _ = tokio::time::timeout(bound + Duration::from_secs(1), relay).await;
    broker.close().await;
    pool.close().await;
    tracing::info!(%service, "stopped");
    match failure {
        Some(why) => Err(anyhow::anyhow!(why)),
        None => Ok(()),
    }
}
