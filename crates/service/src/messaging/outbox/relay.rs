//! The outbox relay (docs/architecture.md §5): rows published in `seq` order with confirms,
//! a batch's frames back to back and its confirms awaited together, each row deleted only
//! once the broker confirmed it; unroutable rows tried again (or, when no role consumes them
//! from a queue, handed to the unrouted queue), refused ones set aside.

use std::time::Duration;

use futures_util::future::join_all;
use sqlx::{AnyPool, Row};
use tokio_util::sync::CancellationToken;

use super::leader::{listen, notified, Lead};
use super::unrouted;
use super::{
    backlog, Outbox, OutboxRow, BATCH, GAUGE_EVERY, IDLE_POLL, SET_ASIDE, UNROUTABLE_RETRY,
};
use crate::messaging::publisher::{self, Published};
use crate::messaging::AmqpCarrier as _;
use crate::messaging::{headers, Broker, Session};
use crate::store::{now_ms, placeholders, Store};

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
        let props = properties(broker, row);
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
    let mut unwatched = Vec::new();
    let mut broken = send_error.is_some();
    let mut refused = send_error.as_ref().and_then(refusal).is_some();
    let mut aside = None;
    let single = rows.len() == 1;
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
