//! The outbox (docs/architecture.md §5): events are written in the transaction of the state
//! change that causes them ([`Work::emit`]), and a relay publishes them with confirms and deletes each one only once
//! the broker has confirmed it. While the broker is away the rows wait; nothing is lost.
//!
//! Rows are published in `seq` order; a batch's frames go out back to back and its confirms
//! are awaited together. A row the broker could not route (no queue bound yet) stays and is
//! tried again after [`UNROUTABLE_RETRY`] — unless no role consumes its event from a queue
//! (only the live role watches it): then the broker holds it in `<exchange>.unrouted`.
//!
//! Here the table; the unit of work that writes it in `work.rs`, the relay in `relay.rs`,
//! and which replica relays (the leader lock, LISTEN/NOTIFY) in `leader.rs`.

mod leader;
mod relay;
mod unrouted;
mod work;

use std::sync::Arc;
use std::time::Duration;

use sqlx::{AnyConnection, AnyPool, Row};
use tokio::sync::Notify;

use crate::envelope::Envelope;
use crate::store::{now_ms, Store};
use crate::wire::versions::Pins;

pub(crate) use relay::run_relay;
pub(crate) use work::{EmitError, Work};

/// Rows published per batch.
pub(super) const BATCH: i64 = 256;
/// How long an unroutable event waits before it is tried again.
pub(crate) const UNROUTABLE_RETRY: Duration = Duration::from_secs(2);
/// The relay looks at the table at least this often, even without a wake-up.
pub(super) const IDLE_POLL: Duration = Duration::from_secs(1);
/// How often the backlog gauges are refreshed.
pub(super) const GAUGE_EVERY: Duration = Duration::from_secs(5);

/// The one way to emit events: a handle that knows the producer, opens units of work on
/// the role's store, and wakes the relay after a commit that added rows. HTTP handlers and
/// event handlers both go through it.
#[derive(Clone)]
pub(crate) struct Outbox {
    pub(super) producer: Arc<str>,
    /// The exchange the relay publishes to, for the spans' destination.
    pub(super) exchange: Arc<str>,
    pub(super) store: Store,
    /// The version of each event type this role emits (`EVENT_EMIT_VERSIONS`).
    pub(super) emit: Arc<Pins>,
    wake: Arc<Notify>,
}

impl Outbox {
    pub(crate) fn new(producer: &str, exchange: &str, emit: &Pins, store: Store) -> Self {
        Self {
            producer: producer.into(),
            exchange: exchange.into(),
            store,
            emit: Arc::new(emit.clone()),
            wake: Arc::default(),
        }
    }

    /// Begin a unit of work: a write transaction whose emitted events are committed with it.
    pub(crate) async fn begin(&self) -> sqlx::Result<Work> {
        Work::begin(self.clone()).await
    }

    /// The role's store.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    pub(super) fn wake(&self) {
        self.wake.notify_one();
    }

    pub(super) async fn woken(&self) {
        self.wake.notified().await
    }
}

/// `next_attempt_ms` of a row set aside: never due again.
pub(super) const SET_ASIDE: i64 = i64::MAX;

pub(super) async fn insert(
    tx: &mut AnyConnection,
    envelope: &Envelope,
    trace: &crate::trace::Carrier,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO outbox (event_id, event_type, producer, correlation_id, body, created_at_ms, traceparent, tracestate)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&envelope.event_id)
    .bind(&envelope.event_type)
    .bind(&envelope.producer)
    .bind(&envelope.correlation_id)
    .bind(envelope.to_bytes())
    .bind(now_ms())
    .bind(&trace.traceparent)
    .bind(&trace.tracestate)
    .execute(tx)
    .await?;
    Ok(())
}

pub(super) struct OutboxRow {
    seq: i64,
    event_id: String,
    event_type: String,
    producer: String,
    correlation_id: Option<String>,
    body: Vec<u8>,
    created_at_ms: i64,
    /// The `create` span's context, sent as the message's trace headers.
    trace: crate::trace::Carrier,
}

/// Events waiting in the outbox and the age of the oldest, in seconds.
pub(crate) async fn backlog(pool: &AnyPool) -> sqlx::Result<(i64, f64)> {
    let row =
        sqlx::query("SELECT COUNT(*), MIN(created_at_ms) FROM outbox WHERE next_attempt_ms < $1")
            .bind(SET_ASIDE)
            .fetch_one(pool)
            .await?;
    let count: i64 = row.try_get(0)?;
    let oldest: Option<i64> = row.try_get(1)?;
    let age = oldest.map_or(0.0, |t| (now_ms() - t).max(0) as f64 / 1000.0);
    Ok((count, age))
}
