//! The live service (docs/architecture.md §12): each meeting's changes pushed to browsers over
//! server-sent events. Every replica reads one RabbitMQ stream into memory and fans it out;
//! an event's SSE id is its stream position, so a browser resumes on any replica. It publishes
//! nothing; its queue keeps its copy of the grants, which decide who sees `permission.*`.

mod api;
mod hub;
mod page;
mod stream;
mod subscriber;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::Extension;
use tokio_util::sync::CancellationToken;

use super::{grants, Behaviour, Parts};
use crate::envelope::Envelope;
use crate::events::Event;
use crate::http::AppState;
use crate::messaging::{HandleError, HandlerResult, Work};
use crate::store::COMMON;

/// What the live role does.
pub(super) static BEHAVIOUR: Behaviour = Behaviour {
    role: &crate::system::LIVE,
    start,
    openapi: || {
        api::session_routes()
            .merge(api::open_routes())
            .into_openapi()
    },
    handler: |work, envelope, event| Box::pin(handle(work, envelope, event)),
    migrations: &[&COMMON, &grants::MIGRATIONS],
};

/// The live role's queue carries only `permission.*`: its copy of the grants.
async fn handle(tx: &mut Work, _cause: &Envelope, event: Event) -> HandlerResult {
    match event {
        Event::PermissionGranted(change) => grants::apply(tx, &change, true).await,
        Event::PermissionRevoked(change) => grants::apply(tx, &change, false).await,
        other => Err(HandleError::Reject(format!(
            "the live role's queue does not handle {} (it reads it from the stream)",
            other.event_type()
        ))),
    }
}

/// Whether the stream reader is attached, for `/ready`.
pub(super) struct Status(AtomicBool);

impl Status {
    fn attached(&self, yes: bool) {
        self.0.store(yes, Ordering::Relaxed);
        crate::metric::live_stream_attached().set(if yes { 1.0 } else { 0.0 });
    }
}

/// Start the stream reader and answer the routes.
fn start(state: &AppState, intake: &CancellationToken) -> anyhow::Result<Parts> {
    let settings = state.settings.live.clone();
    let hub = Arc::new(hub::Hub::new(
        settings.memory_events,
        settings.client_buffer,
    ));
    let status = Arc::new(Status(AtomicBool::new(false)));
    let reader = tokio::spawn(stream::read(
        state.broker.clone(),
        settings,
        hub.clone(),
        status.clone(),
        intake.clone(),
    ));
    let probe = status.clone();
    let _ = state.role_ready.set(Arc::new(move || {
        (!probe.0.load(Ordering::Relaxed)).then(|| "live stream: not attached".to_string())
    }));
    let live = Arc::new(api::Live::new(state, hub, intake.clone()));
    Ok(Parts {
        api: api::session_routes()
            .split_for_parts()
            .0
            .layer(Extension(live.clone())),
        open: api::open_routes()
            .split_for_parts()
            .0
            .layer(Extension(live)),
        tasks: vec![reader],
    })
}
