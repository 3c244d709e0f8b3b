//! Events nobody deployed takes (docs/architecture.md §5, "Unroutable events"): an event that
//! no role consumes from a queue — only the live role watches it, from its stream — has no
//! consumer that would take it later from a queue when the broker finds nothing bound for it.
//! Keeping it in the outbox would hold it for ever in a deployment without the live role; so
//! the relay hands it to the broker's bounded `<exchange>.unrouted` queue (by length and age),
//! counts it (`events_unrouted_total`), and deletes its row. An event with a queue consumer
//! that is not bound yet (start-up order) stays in the outbox and is tried again.

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};

use super::OutboxRow;
use crate::events::EventType;
use crate::messaging::headers;
use crate::messaging::publisher::{self, Published};
use crate::messaging::topology::unrouted_queue;
use crate::messaging::Session;

/// The most events the unrouted queue holds; the oldest go first past it.
const MAX_LENGTH: i64 = 100_000;
/// How long the unrouted queue holds an event.
const MAX_AGE_MS: i64 = 7 * 24 * 3600 * 1000;

/// Whether an event of this routing key is only watched (no role consumes it from a queue):
/// unroutable, it waits for nobody.
pub(super) fn watched_only(routing_key: &str) -> bool {
    EventType::from_routing_key(routing_key).is_some_and(|t| t.queue_consumers().next().is_none())
}

/// Hand `rows` (returned unroutable, watched only) to the unrouted queue, each with `props`
/// of its own and the broker's reason; the `seq` of each the broker confirmed it holds.
pub(super) async fn hold(
    session: &Session,
    exchange: &str,
    rows: Vec<(&OutboxRow, lapin::BasicProperties, String)>,
) -> lapin::Result<Vec<i64>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let queue = unrouted_queue(exchange);
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(MAX_LENGTH));
    args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(MAX_AGE_MS));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from("drop-head")),
    );
    session
        .publisher
        .channel()
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    let mut confirms = Vec::with_capacity(rows.len());
    for (row, props, why) in &rows {
        let props = headers::with_headers(
            props,
            &[
                (headers::REASON, headers::text_value(why)),
                (
                    headers::ORIGINAL_ROUTING_KEY,
                    headers::text_value(&row.event_type),
                ),
            ],
        );
        // The default exchange routes by queue name: always to the unrouted queue.
        let confirm = publisher::send(&session.publisher, "", &queue, &row.body, props).await?;
        confirms.push((row, confirm));
    }
    let mut held = Vec::with_capacity(confirms.len());
    for (row, confirm) in confirms {
        if publisher::confirmed(confirm).await? == Published::Routed {
            crate::metric::events_unrouted_total(row.producer.clone(), row.event_type.clone())
                .increment(1);
            tracing::info!(event_id = %row.event_id, event_type = %row.event_type, queue, "no deployed role consumes this event from a queue; the broker holds it in the unrouted queue");
            held.push(row.seq);
        }
    }
    Ok(held)
}
