//! One relay batch (docs/architecture.md §5): due rows read from the table, or handed off
//! by a commit; published with confirms, frames back to back and confirms awaited together;
//! unroutable rows tried again later (or, when no role consumes them from a queue, handed
//! to the unrouted queue); refused ones set aside; the confirmed ones returned, to delete.

use futures_util::future::{join_all, BoxFuture};
use futures_util::FutureExt;
use sqlx::Row;

use super::unrouted;
use super::{OutboxRow, SET_ASIDE, UNROUTABLE_RETRY};
use crate::messaging::publisher::{self, Published};
use crate::messaging::AmqpCarrier as _;
use crate::messaging::{headers, Broker, Session};
use crate::store::{now_ms, placeholders, Store};

#[derive(Debug, thiserror::Error)]
pub(super) enum RelayError {
    #[error("store")]
    Store(#[from] sqlx::Error),
    /// The connection failed while sending; the rows confirmed before it are given.
    #[error("broker")]
    Broker(#[source] lapin::Error, Vec<i64>),
}

/// What one relay round did.
#[derive(Default)]
pub(super) struct Batch {
    /// Rows read.
    pub(super) fetched: usize,
    /// The broker refused a publish for good (403 access refused, 406 precondition failed:
    /// a routing key the user may not write, a message over its size limit).
    pub(super) refused: bool,
    /// A single row it refused was set aside.
    pub(super) set_aside: bool,
    /// The rows the broker confirmed (or the unrouted queue holds): to delete.
    pub(super) done: Vec<i64>,
    /// Some rows were not confirmed: they stay in the table, for the relay to read.
    pub(super) left: bool,
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

/// Up to `limit` due rows of the table, in `seq` order.
pub(super) async fn fetch(store: &Store, limit: i64) -> sqlx::Result<Vec<OutboxRow>> {
    sqlx::query(
        "SELECT seq, event_id, event_type, producer, correlation_id, body, created_at_ms, traceparent, tracestate
         FROM outbox WHERE next_attempt_ms <= $1 ORDER BY seq LIMIT $2",
    )
    .bind(now_ms())
    .bind(limit)
    .fetch_all(store.pool())
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
    .collect()
}

/// Publish `rows`, frames back to back and confirms awaited together, with nothing else in
/// flight on the channel. A row the broker refuses for good closes the channel, and with it
/// every publish in flight — this batch's and any other's — so it cannot be told from its
/// neighbours: the caller then sends rows one at a time, and only a row refused while it
/// was alone on the channel is set aside — kept in the outbox with its reason, never
/// retried, counted — so the rows behind it flow. Unroutable rows are marked for a later try here;
/// the confirmed ones are returned in [`Batch::done`], for the caller to delete.
pub(super) async fn publish(
    broker: &Broker,
    store: &Store,
    session: &Session,
    rows: Vec<OutboxRow>,
) -> Result<Batch, RelayError> {
    let mut sent = send(broker, session, rows).await;
    sent.alone = true;
    settle(broker.clone(), store.clone(), sent).await
}

/// A batch whose frames are written, its confirms still to come: [`settle`] awaits them.
pub(super) struct Sent {
    rows: Vec<OutboxRow>,
    /// Each sent row's index and its confirm.
    pending: Vec<(usize, BoxFuture<'static, lapin::Result<Published>>)>,
    send_error: Option<lapin::Error>,
    session: Session,
    /// Nothing else was in flight on the channel: a refusal is this batch's own. A batch
    /// pipelined behind or ahead of others may fail with a neighbour's refusal.
    alone: bool,
}

/// Write a batch's frames, in order, without waiting for the confirms.
pub(super) async fn send(broker: &Broker, session: &Session, rows: Vec<OutboxRow>) -> Sent {
    let exchange = &broker.settings().exchange;
    let mut pending = Vec::with_capacity(rows.len());
    let mut send_error = None;
    let spans: Vec<tracing::Span> = rows.iter().map(|row| publish_span(exchange, row)).collect();
    let sent = publisher::send_all(
        &session.publisher,
        exchange,
        rows.iter().map(|row| {
            (
                row.event_type.as_str(),
                row.body.as_slice(),
                properties(broker, row),
            )
        }),
    )
    .await;
    for (i, (span, result)) in spans.into_iter().zip(sent).enumerate() {
        let row = &rows[i];
        match result {
            Ok(confirm) => pending.push((i, confirmed(confirm, span).boxed())),
            Err(e) => {
                crate::trace::fail(&span, "send_failed", e.to_string());
                tracing::warn!(event_id = %row.event_id, event_type = %row.event_type, error = %e, kind = ?e.kind(), "publishing this event failed; it stays in the outbox");
                send_error.get_or_insert(e);
            }
        }
    }
    Sent {
        rows,
        pending,
        send_error,
        session: session.clone(),
        alone: false,
    }
}

/// Await a sent batch's confirms: the confirmed rows returned in [`Batch::done`], unroutable
/// ones marked for a later try (or handed to the unrouted queue), a refused one set aside.
pub(super) async fn settle(broker: Broker, store: Store, sent: Sent) -> Result<Batch, RelayError> {
    let Sent {
        rows,
        pending,
        send_error,
        session,
        alone,
    } = sent;
    if rows.is_empty() {
        return Ok(Batch::default());
    }
    let (broker, session, pool) = (&broker, &session, store.pool());
    let exchange = &broker.settings().exchange;
    let (indices, confirms): (Vec<usize>, Vec<_>) = pending.into_iter().unzip();
    let results = join_all(confirms).await;
    let rows_sent = indices.into_iter().map(|i| &rows[i]);

    let mut done = Vec::new();
    let mut unroutable = Vec::new();
    let mut unwatched = Vec::new();
    let mut broken = send_error.is_some();
    let mut refused = send_error.as_ref().and_then(refusal).is_some();
    let mut aside = None;
    // Only a row alone on the channel is known to be the one refused.
    let single = alone && rows.len() == 1;
    for (row, result) in rows_sent.into_iter().zip(results) {
        match result {
            Ok(Published::Routed) => {
                crate::metric::events_published_total(row.producer.clone(), row.event_type.clone())
                    .increment(1);
                crate::metric::outbox_publish_wait_seconds(row.producer.clone())
                    .record((now_ms() - row.created_at_ms).max(0) as f64 / 1000.0);
                tracing::debug!(event_id = %row.event_id, event_type = %row.event_type, correlation_id = row.correlation_id.as_deref().unwrap_or(""), "event published");
                done.push(row.seq);
            }
            Ok(Published::Unroutable(why)) if unrouted::watched_only(&row.event_type) => {
                unwatched.push((row, properties(broker, row), why));
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
    // Events only the live role watches, and it is not deployed: the broker holds them.
    let unwatched_seqs: Vec<i64> = unwatched.iter().map(|(row, ..)| row.seq).collect();
    match unrouted::hold(session, exchange, unwatched).await {
        Ok(held) => {
            unroutable.extend(unwatched_seqs.iter().filter(|s| !held.contains(s)));
            done.extend(held);
        }
        Err(e) => {
            tracing::warn!(error = %e, "the unrouted queue did not take the events no queue consumes; they stay in the outbox");
            unroutable.extend(unwatched_seqs);
            broken = true;
        }
    }
    if !unroutable.is_empty() {
        let retry_at = now_ms() + UNROUTABLE_RETRY.as_millis() as i64;
        let mut tx = store.begin().await?;
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
    let left = done.len() < rows.len();
    if broken {
        broker.report_broken(session.id);
        if let Some(e) = send_error {
            if !refused {
                return Err(RelayError::Broker(e, done));
            }
        }
    }
    Ok(Batch {
        fetched: rows.len(),
        refused,
        set_aside,
        done,
        left,
    })
}

/// Delete published rows, in one transaction.
pub(super) async fn delete(store: &Store, seqs: &[i64]) -> sqlx::Result<()> {
    if seqs.is_empty() {
        return Ok(());
    }
    let mut tx = store.begin().await?;
    for chunk in seqs.chunks(500) {
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
    tx.commit().await
}

/// The AMQP properties a row is published with.
fn properties(broker: &Broker, row: &OutboxRow) -> lapin::BasicProperties {
    let props = headers::for_event(
        &row.event_id,
        &row.event_type,
        &row.producer,
        row.correlation_id.as_deref(),
        (row.created_at_ms / 1000) as u64,
    )
    // Our identity on the bus: the broker checks it is the connection's user.
    .with_user_id(broker.settings().url.user().into());
    row.trace.onto_amqp(props)
}

/// Wait for a publish's confirm; its `publish` span ends there, failed when the broker did not
/// take the event.
async fn confirmed(confirm: publisher::Pending, span: tracing::Span) -> lapin::Result<Published> {
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
