//! The outbox (docs/architecture.md §5): events are written in the transaction of the state
//! change that causes them ([`Work::emit`]), and a relay publishes them with confirms and deletes each one only once
//! the broker has confirmed it. While the broker is away the rows wait; nothing is lost.
//!
//! Rows are published in `seq` order; a batch's frames go out back to back and its confirms
//! are awaited together. A row the broker could not route (no queue bound yet) stays and is
//! tried again after [`UNROUTABLE_RETRY`] — unless no role consumes its event from a queue
//! (only the live role watches it): then the broker holds it in `<exchange>.unrouted`.
//!
//! A commit hands its rows to the relay of its own process, which publishes them without
//! reading the table; the table is read only at start, on the idle poll, after another
//! replica's commit or a failure, and when the hand-off overflows.
//!
//! Here the table and the hand-off; the unit of work that writes it in `work.rs`, the relay
//! in `relay.rs`, one batch's publishing in `batch.rs`, and which replica relays (the
//! leader lock, LISTEN/NOTIFY) in `leader.rs`.

mod batch;
mod deletes;
mod leader;
mod relay;
mod unrouted;
mod work;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
/// Rows the hand-off holds at most; beyond it the relay reads the table instead.
const HANDOFF_MAX: usize = 4 * BATCH as usize;
/// Published rows are deleted together once this many are confirmed…
pub(super) const DELETE_EVERY: usize = BATCH as usize;
/// …or once the oldest of them was confirmed this long ago.
pub(super) const DELETE_AFTER: Duration = Duration::from_millis(50);

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
    handoff: Arc<Mutex<Handoff>>,
    /// Whether this process's relay publishes (on PostgreSQL, holds the relay lock).
    leading: Arc<AtomicBool>,
}

/// Rows committed in this process and not yet taken by its relay.
#[derive(Default)]
struct Handoff {
    rows: Vec<OutboxRow>,
    /// Rows were dropped for want of room: the relay reads the table.
    overflowed: bool,
}

impl Outbox {
    pub(crate) fn new(producer: &str, exchange: &str, emit: &Pins, store: Store) -> Self {
        // A SQLite store is its process's own: its relay always relays.
        let sqlite = store.dialect() == crate::store::Dialect::Sqlite;
        Self {
            producer: producer.into(),
            exchange: exchange.into(),
            store,
            emit: Arc::new(emit.clone()),
            wake: Arc::default(),
            handoff: Arc::default(),
            leading: Arc::new(AtomicBool::new(sqlite)),
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

    /// Hand committed rows to this process's relay, and wake it.
    pub(super) fn hand_off(&self, rows: Vec<OutboxRow>) {
        if let Ok(mut handoff) = self.handoff.lock() {
            if handoff.rows.len() + rows.len() > HANDOFF_MAX {
                handoff.rows.clear();
                handoff.overflowed = true;
            } else if !handoff.overflowed {
                handoff.rows.extend(rows);
            }
        }
        self.wake();
    }

    /// The rows handed off since the last call, and whether some were dropped (then the
    /// table holds what is missing).
    pub(super) fn take_handed(&self) -> (Vec<OutboxRow>, bool) {
        match self.handoff.lock() {
            Ok(mut handoff) => {
                let overflowed = std::mem::take(&mut handoff.overflowed);
                (std::mem::take(&mut handoff.rows), overflowed)
            }
            Err(_) => (Vec::new(), true),
        }
    }

    pub(super) fn leading(&self) -> bool {
        self.leading.load(Ordering::Relaxed)
    }

    pub(super) fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::Relaxed);
    }

    pub(super) async fn woken(&self) {
        self.wake.notified().await
    }
}

/// `next_attempt_ms` of a row set aside: never due again.
pub(super) const SET_ASIDE: i64 = i64::MAX;

/// Write `envelope` to the outbox in `tx`: the row, as the relay will read it.
pub(super) async fn insert(
    tx: &mut AnyConnection,
    envelope: &Envelope,
    trace: crate::trace::Carrier,
) -> sqlx::Result<OutboxRow> {
    let body = envelope.to_bytes();
    let created_at_ms = now_ms();
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO outbox (event_id, event_type, producer, correlation_id, body, created_at_ms, traceparent, tracestate)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING seq",
    )
    .bind(&envelope.event_id)
    .bind(&envelope.event_type)
    .bind(&envelope.producer)
    .bind(&envelope.correlation_id)
    .bind(&body)
    .bind(created_at_ms)
    .bind(&trace.traceparent)
    .bind(&trace.tracestate)
    .fetch_one(tx)
    .await?;
    Ok(OutboxRow {
        seq,
        event_id: envelope.event_id.clone(),
        event_type: envelope.event_type.clone(),
        producer: envelope.producer.clone(),
        correlation_id: envelope.correlation_id.clone(),
        body,
        created_at_ms,
        trace,
    })
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
