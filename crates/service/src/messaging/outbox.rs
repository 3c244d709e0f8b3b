//! The outbox (docs/architecture.md §5): events are written in the transaction of the state
//! change that causes them ([`Work::emit`]), and a relay publishes them with confirms and deletes each one only once
//! the broker has confirmed it. While the broker is away the rows wait; nothing is lost.
//!
//! Rows are published in `seq` order; a batch's frames go out back to back and its confirms
//! are awaited together. A row the broker could not route (no queue bound yet) stays and is
//! tried again after [`UNROUTABLE_RETRY`].

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgListener;
use sqlx::{Any, AnyConnection, AnyPool, Row, Transaction};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::AmqpCarrier as _;
use crate::envelope::Envelope;
use crate::events::Event;
use crate::messaging::publisher::{self, Published};
use crate::messaging::{headers, Broker, Session};
use crate::store::{now_ms, placeholders, Dialect, Store};

/// Rows published per batch.
const BATCH: i64 = 256;
/// How long an unroutable event waits before it is tried again.
pub(crate) const UNROUTABLE_RETRY: Duration = Duration::from_secs(2);
/// The relay looks at the table at least this often, even without a wake-up.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How often the backlog gauges are refreshed.
const GAUGE_EVERY: Duration = Duration::from_secs(5);

/// The one way to emit events: a handle that knows the producer, opens units of work on
/// the role's store, and wakes the relay after a commit that added rows. HTTP handlers and
/// event handlers both go through it.
#[derive(Clone)]
pub(crate) struct Outbox {
    producer: Arc<str>,
    /// The exchange the relay publishes to, for the spans' destination.
    exchange: Arc<str>,
    store: Store,
    wake: Arc<Notify>,
}

impl Outbox {
    pub(crate) fn new(producer: &str, exchange: &str, store: Store) -> Self {
        Self {
            producer: producer.into(),
            exchange: exchange.into(),
            store,
            wake: Arc::default(),
        }
    }

    /// Begin a unit of work: a write transaction whose emitted events are committed with it.
    pub(crate) async fn begin(&self) -> sqlx::Result<Work> {
        Ok(Work {
            tx: self.store.begin().await?,
            outbox: self.clone(),
            cause: None,
            emitted: 0,
        })
    }

    /// The role's store.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    fn wake(&self) {
        self.wake.notify_one();
    }

    async fn woken(&self) {
        self.wake.notified().await
    }
}

/// A store transaction and the events it causes: both land at [`Work::commit`] or neither
/// does. It dereferences to the transaction's connection for the role's own queries.
pub(crate) struct Work {
    tx: Transaction<'static, Any>,
    outbox: Outbox,
    /// The event being handled, when this work applies one: emitted events join its chain.
    cause: Option<Cause>,
    emitted: usize,
}

struct Cause {
    event_id: String,
    chain_id: String,
}

impl Work {
    /// Events emitted from now on are caused by `envelope` (same correlation id, causation
    /// id = its event id).
    pub(crate) fn caused_by(&mut self, envelope: &Envelope) {
        self.cause = Some(Cause {
            event_id: envelope.event_id.clone(),
            chain_id: envelope.chain_id().to_string(),
        });
    }

    /// Add `event` to the outbox inside this transaction.
    pub(crate) async fn emit(&mut self, event: Event) -> sqlx::Result<()> {
        let mut envelope = Envelope::new(&event, &self.outbox.producer);
        if let Some(cause) = &self.cause {
            envelope.correlation_id = Some(cause.chain_id.clone());
            envelope.causation_id = Some(cause.event_id.clone());
        }
        // The event's PRODUCER `create` span, under the request's or the delivery's span; its
        // context goes into the row and, unchanged, into the message's headers.
        let span = create_span(&self.outbox.exchange, &envelope);
        let carrier = crate::trace::Carrier::of(&span);
        insert(&mut self.tx, &envelope, &carrier)
            .instrument(span)
            .await?;
        self.emitted += 1;
        tracing::info!(event_id = %envelope.event_id, event_type = %envelope.event_type, correlation_id = %envelope.chain_id(), "event committed to the outbox");
        Ok(())
    }

    /// Commit, and wake the relay when events were emitted: this process's, and on
    /// PostgreSQL the replica that relays (a notification delivered at commit).
    pub(crate) async fn commit(mut self) -> sqlx::Result<()> {
        if self.emitted > 0 && self.outbox.store.dialect() == Dialect::Postgres {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(NOTIFY_CHANNEL)
                .execute(&mut *self.tx)
                .await?;
        }
        self.tx.commit().await?;
        if self.emitted > 0 {
            self.outbox.wake();
        }
        Ok(())
    }
}

impl std::ops::Deref for Work {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for Work {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }
}

/// The PRODUCER `create` span of an event (none when traces are not exported).
fn create_span(exchange: &str, envelope: &Envelope) -> tracing::Span {
    use crate::trace::attr;
    if !crate::trace::enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(target: crate::trace::TARGET, "create",
        otel.name = %format_args!("create {exchange}:{}", envelope.event_type), otel.kind = "producer",
        trace_id = tracing::field::Empty, span_id = tracing::field::Empty);
    let mut attributes = crate::trace::message_attributes(
        ("create", "create"),
        format!("{exchange}:{}", envelope.event_type),
        &envelope.event_type,
        &envelope.event_id,
        envelope.chain_id(),
    );
    if let Some(cause) = &envelope.causation_id {
        attributes.push((attr::CAUSATION_ID, cause.clone()));
    }
    crate::trace::set(&span, &attributes);
    crate::trace::start(&span, None, false);
    span
}

/// Wait for a publish's confirm; its `publish` span ends there, failed when the broker did not
/// take the event.
async fn confirmed(
    confirm: lapin::PublisherConfirm,
    span: tracing::Span,
) -> lapin::Result<Published> {
    let result = publisher::confirmed(confirm).await;
    match &result {
        Ok(Published::Routed) => {}
        Ok(Published::Unroutable(why)) => crate::trace::fail(&span, "unroutable", why.clone()),
        Ok(Published::Nacked) => {
            crate::trace::fail(&span, "nacked", "the broker nacked the publish")
        }
        Ok(Published::TimedOut) => {
            crate::trace::fail(&span, "timeout", "no confirm from the broker")
        }
        Err(e) => match refusal(e) {
            Some(why) => crate::trace::fail(&span, "refused", why),
            None => crate::trace::fail(&span, "connection", e.to_string()),
        },
    }
    result
}

/// The CLIENT `publish` span of a row: parented to the context stored with it, and linked to
/// it (semantic conventions: a send after creation links to the creation context).
fn publish_span(exchange: &str, row: &OutboxRow) -> tracing::Span {
    if !crate::trace::enabled() || row.trace.traceparent.is_none() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(target: crate::trace::TARGET, "publish",
        otel.name = %format_args!("publish {exchange}:{}", row.event_type), otel.kind = "client",
        trace_id = tracing::field::Empty, span_id = tracing::field::Empty);
    let waited_ms = (now_ms() - row.created_at_ms).max(0);
    crate::trace::set(
        &span,
        &crate::trace::message_attributes(
            ("send", "publish"),
            format!("{exchange}:{}", row.event_type),
            &row.event_type,
            &row.event_id,
            row.correlation_id.as_deref().unwrap_or(&row.event_id),
        ),
    );
    crate::trace::set_int(&span, "meeting_events.outbox.waited_ms", waited_ms);
    crate::trace::start(&span, Some(&row.trace.context()), true);
    span
}

async fn insert(
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

struct OutboxRow {
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

/// The PostgreSQL notification channel a commit with events signals.
const NOTIFY_CHANNEL: &str = "outbox";
/// The advisory lock key of the relay: one replica of a role relays at a time.
const RELAY_LOCK: i64 = 0x6f75_7462_6f78; // "outbox"

/// Which replica relays. On SQLite the process owns its store and always does. On
/// PostgreSQL every replica commits to the one outbox, but only the replica holding the
/// role's advisory lock publishes, so the outbox leaves in commit order and each row is
/// published once in the normal case. The lock is held by a session, not a transaction: no
/// row is locked while confirms are awaited. When the holder dies its session ends, the
/// lock is released, and a survivor takes over within [`IDLE_POLL`]; rows the dead relay
/// had published but not yet deleted go out again (the consumers' inboxes absorb them).
enum Lead {
    Always,
    Lock(Option<PoolConnection<Any>>),
}

impl Lead {
    fn for_store(store: &Store) -> Self {
        match store.dialect() {
            Dialect::Sqlite => Lead::Always,
            Dialect::Postgres => Lead::Lock(None),
        }
    }

    /// Whether this replica relays now: the lock is still held (its session answers), or
    /// was free and is taken.
    async fn hold(&mut self, store: &Store, service: &str) -> bool {
        let Lead::Lock(held) = self else {
            return true;
        };
        if let Some(conn) = held {
            if sqlx::query("SELECT 1").execute(&mut **conn).await.is_ok() {
                return true;
            }
            tracing::warn!(
                service,
                "lost the outbox relay lock's session; trying to take it again"
            );
            if let Some(conn) = held.take() {
                drop(conn.detach());
            }
        }
        let Ok(mut conn) = store.pool().acquire().await else {
            return false;
        };
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(RELAY_LOCK)
            .fetch_one(&mut *conn)
            .await
            .unwrap_or(false);
        if taken {
            tracing::info!(service, "this replica relays the outbox");
            *held = Some(conn);
        }
        taken
    }

    async fn release(self) {
        if let Lead::Lock(Some(mut conn)) = self {
            let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(RELAY_LOCK)
                .execute(&mut *conn)
                .await;
        }
    }
}

/// Notifications of commits on other replicas (PostgreSQL), when listening works.
async fn listen(store: &Store) -> Option<PgListener> {
    if store.dialect() != Dialect::Postgres {
        return None;
    }
    let mut listener = PgListener::connect(store.url()).await.ok()?;
    listener.listen(NOTIFY_CHANNEL).await.ok()?;
    Some(listener)
}

async fn notified(listener: &mut Option<PgListener>) {
    match listener {
        Some(l) => {
            if l.recv().await.is_err() {
                // The listener reconnects on its next call; poll meanwhile.
                tokio::time::sleep(IDLE_POLL).await;
            }
        }
        None => std::future::pending().await,
    }
}

/// The relay task. Runs until `shutdown`; then publishes what it can within `grace`.
pub(crate) async fn run_relay(
    broker: Broker,
    outbox: Outbox,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let service = broker.settings().service_name.clone();
    let store = &outbox.store;
    let pool = store.pool();
    let mut lead = Lead::for_store(store);
    // Rows still to publish one by one to find one the broker refuses for good.
    let mut probing: i64 = 0;
    let mut listener = listen(store).await;
    // The backlog gauges on their own timer: a relay waiting for confirms (a broker that
    // blocks publishes during a resource alarm) must not freeze them.
    let gauges = {
        let (pool, service, stop) = (pool.clone(), service.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                record_backlog(&pool, &service).await;
                tokio::select! {
                    _ = tokio::time::sleep(GAUGE_EVERY) => {}
                    _ = stop.cancelled() => return,
                }
            }
        })
    };
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let Some(session) = broker.wait_session(&shutdown).await else {
            break;
        };
        let mut full = false;
        // While the broker blocks the connection (a resource alarm), a publish would only wait:
        // the rows stay in the outbox until it is unblocked.
        let blocked = session.connection.status().blocked();
        if !blocked && lead.hold(store, &service).await {
            // After a refusal, rows go one at a time until the refused one is found.
            let limit = if probing > 0 { 1 } else { BATCH };
            full = match relay_batch(&broker, store, &session, limit).await {
                Ok(batch) => {
                    probing = match (probing, batch.refused, batch.set_aside) {
                        (_, _, true) => 0,
                        (0, true, _) => BATCH,
                        // Never below zero: a batch that was not probing must not keep the
                        // next refusal from starting a probe.
                        (n, _, _) => (n - batch.fetched as i64).max(0),
                    };
                    batch.fetched == limit as usize || probing > 0
                }
                Err(e) => {
                    tracing::warn!(service, error = %crate::text::Chain(&e), "outbox relay paused");
                    false
                }
            };
        }
        if full {
            continue; // more rows are waiting
        }
        // A commit since the batch was read left a wake-up permit: nothing is missed.
        tokio::select! {
            _ = outbox.woken() => {}
            _ = notified(&mut listener) => {}
            _ = tokio::time::sleep(IDLE_POLL) => {}
            _ = shutdown.cancelled() => {}
        }
    }
    // Shutdown: flush what the broker takes within the grace period.
    let flush = async {
        if !lead.hold(store, &service).await {
            return;
        }
        while let Some(session) = broker.current() {
            match relay_batch(&broker, store, &session, BATCH).await {
                Ok(batch) if batch.fetched > 0 && !batch.refused => continue,
                _ => break,
            }
        }
    };
    if tokio::time::timeout(grace, flush).await.is_err() {
        tracing::warn!(service, "outbox flush did not finish within the shutdown grace period; the rest is sent on next start");
    }
    lead.release().await;
    let _ = gauges.await;
    record_backlog(pool, &service).await;
}

async fn record_backlog(pool: &AnyPool, service: &str) {
    let aside: sqlx::Result<i64> =
        sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE next_attempt_ms = $1")
            .bind(SET_ASIDE)
            .fetch_one(pool)
            .await;
    if let Ok(n) = aside {
        crate::metric::outbox_set_aside(service.to_string()).set(n as f64);
    }
    if let Ok((count, age)) = backlog(pool).await {
        crate::metric::outbox_backlog(service.to_string()).set(count as f64);
        crate::metric::outbox_oldest_age_seconds(service.to_string()).set(age);
    }
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("store")]
    Store(#[from] sqlx::Error),
    #[error("broker")]
    Broker(#[from] lapin::Error),
}

/// `next_attempt_ms` of a row set aside: never due again.
const SET_ASIDE: i64 = i64::MAX;

/// What one relay round did.
struct Batch {
    /// Rows read.
    fetched: usize,
    /// The broker refused a publish for good (403 access refused, 406 precondition failed:
    /// a routing key the user may not write, a message over its size limit).
    refused: bool,
    /// A single row it refused was set aside.
    set_aside: bool,
}

/// Whether the broker refused a publish for good, and how it said so.
fn refusal(e: &lapin::Error) -> Option<String> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) if matches!(amqp.get_id(), 403 | 406) => {
            Some(format!(
                "refused by the broker: {} {}",
                amqp.get_id(),
                amqp.get_message()
            ))
        }
        _ => None,
    }
}

/// Publish up to `limit` due rows. A row the broker refuses for good closes the channel, and
/// with it every publish in flight, so it cannot be told from its neighbours in a batch: the
/// caller then sends rows one at a time, and the one refused alone is set aside — kept in the
/// outbox with its reason, never retried, counted — so the rows behind it flow.
async fn relay_batch(
    broker: &Broker,
    store: &Store,
    session: &Session,
    limit: i64,
) -> Result<Batch, RelayError> {
    let pool = store.pool();
    let rows: Vec<OutboxRow> = sqlx::query(
        "SELECT seq, event_id, event_type, producer, correlation_id, body, created_at_ms, traceparent, tracestate
         FROM outbox WHERE next_attempt_ms <= $1 ORDER BY seq LIMIT $2",
    )
    .bind(now_ms())
    .bind(limit)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| {
        Ok(OutboxRow {
            seq: r.try_get(0)?,
            event_id: r.try_get(1)?,
            event_type: r.try_get(2)?,
            producer: r.try_get(3)?,
            correlation_id: r.try_get(4)?,
            body: r.try_get(5)?,
            created_at_ms: r.try_get(6)?,
            trace: crate::trace::Carrier {
                traceparent: r.try_get(7)?,
                tracestate: r.try_get(8)?,
            },
        })
    })
    .collect::<sqlx::Result<_>>()?;
    if rows.is_empty() {
        return Ok(Batch {
            fetched: 0,
            refused: false,
            set_aside: false,
        });
    }

    let exchange = &broker.settings().exchange;
    let mut pending = Vec::with_capacity(rows.len());
    let mut send_error = None;
    for row in &rows {
        let props = headers::for_event(
            &row.event_id,
            &row.event_type,
            &row.producer,
            row.correlation_id.as_deref(),
            (row.created_at_ms / 1000) as u64,
        )
        // Our identity on the bus: the broker checks it is the connection's user.
        .with_user_id(broker.settings().url.user().into());
        let props = row.trace.onto_amqp(props);
        let span = publish_span(exchange, row);
        match publisher::send(
            &session.publisher,
            exchange,
            &row.event_type,
            &row.body,
            props,
        )
        .await
        {
            Ok(confirm) => pending.push((row, confirmed(confirm, span))),
            Err(e) => {
                crate::trace::fail(&span, "send_failed", e.to_string());
                tracing::warn!(event_id = %row.event_id, event_type = %row.event_type, error = %e, kind = ?e.kind(), "publishing this event failed; it stays in the outbox");
                send_error = Some(e);
                break;
            }
        }
    }
    let (rows_sent, confirms): (Vec<_>, Vec<_>) = pending.into_iter().unzip();
    let results = join_all(confirms).await;

    let mut done = Vec::new();
    let mut unroutable = Vec::new();
    let mut broken = send_error.is_some();
    let mut refused = send_error.as_ref().and_then(refusal).is_some();
    let mut aside = None;
    let single = rows.len() == 1;
    for (row, result) in rows_sent.into_iter().zip(results) {
        match result {
            Ok(Published::Routed) => {
                crate::metric::events_published_total(row.producer.clone(), row.event_type.clone())
                    .increment(1);
                tracing::debug!(event_id = %row.event_id, event_type = %row.event_type, correlation_id = row.correlation_id.as_deref().unwrap_or(""), "event published");
                done.push(row.seq);
            }
            Ok(Published::Unroutable(why)) => {
                tracing::warn!(event_id = %row.event_id, event_type = %row.event_type, correlation_id = row.correlation_id.as_deref().unwrap_or(""), reason = %why, "no queue is bound for this event yet; it stays in the outbox");
                crate::metric::events_unroutable_total(
                    row.producer.clone(),
                    row.event_type.clone(),
                )
                .increment(1);
                unroutable.push(row.seq);
            }
            Err(e) if refusal(&e).is_some() => {
                broken = true;
                refused = true;
                if single {
                    aside = refusal(&e).map(|why| (row, why));
                }
            }
            Ok(Published::TimedOut) if session.connection.status().blocked() => {
                // Blocked by a resource alarm, not dead: the row stays and goes again once
                // the broker unblocks the connection.
                tracing::debug!(event_id = %row.event_id, "no confirm while the broker blocks the connection; the event stays in the outbox");
            }
            Ok(other @ (Published::Nacked | Published::TimedOut)) => {
                tracing::warn!(event_id = %row.event_id, event_type = %row.event_type, outcome = ?other, "the broker did not confirm this event; it stays in the outbox");
                broken = true;
            }
            Err(e) => {
                tracing::warn!(event_id = %row.event_id, event_type = %row.event_type, error = %e, kind = ?e.kind(), "publishing this event failed; it stays in the outbox");
                broken = true;
            }
        }
    }

    if single && aside.is_none() && refused {
        // Refused on sending, before a confirm: the same verdict.
        aside = rows.first().zip(send_error.as_ref().and_then(refusal));
    }
    let set_aside = aside.is_some();
    if let Some((row, why)) = &aside {
        tracing::error!(event_id = %row.event_id, event_type = %row.event_type, reason = %why, "the broker refuses this event for good; it is set aside in the outbox and the rows behind it go on");
        crate::metric::events_set_aside_total(row.producer.clone(), row.event_type.clone())
            .increment(1);
        sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, next_attempt_ms = $1, last_error = $2 WHERE seq = $3",
        )
        .bind(SET_ASIDE)
        .bind(why)
        .bind(row.seq)
        .execute(pool)
        .await?;
    }
    if !done.is_empty() || !unroutable.is_empty() {
        let mut tx = store.begin().await?;
        for chunk in done.chunks(500) {
            let sql = format!(
                "DELETE FROM outbox WHERE seq IN ({})",
                placeholders(chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for seq in chunk {
                q = q.bind(seq);
            }
            q.execute(&mut *tx).await?;
        }
        let retry_at = now_ms() + UNROUTABLE_RETRY.as_millis() as i64;
        for seq in &unroutable {
            sqlx::query(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_ms = $1, last_error = 'unroutable' WHERE seq = $2",
            )
            .bind(retry_at)
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
    }
    if broken {
        broker.report_broken(session.id);
        if let Some(e) = send_error {
            if !refused {
                return Err(e.into());
            }
        }
    }
    Ok(Batch {
        fetched: rows.len(),
        refused,
        set_aside,
    })
}
