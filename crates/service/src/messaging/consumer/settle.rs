//! Settling a delivery (docs/architecture.md §5): ack it, send it to a wait queue to be
//! tried again, or park it in the dead-letter queue with its reason — a confirmed publish
//! before the original is acked, so nothing is dropped on the way.

use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::AMQPValue;

use super::incoming::Incoming;
use super::Consumer;
use crate::messaging::decision::{decide, Decision, Handled, ParkReason};
use crate::messaging::publisher::{self, Published};
use crate::messaging::{headers, topology, Session};
use crate::text::short;

impl Consumer {
    /// Ack, retry or park, as [`decide`] says.
    pub(super) async fn settle(
        &self,
        session: &Session,
        incoming: &Incoming,
        handled: Handled,
        detail: &str,
    ) -> lapin::Result<()> {
        let mq = self.broker.settings();
        let delivery = &incoming.delivery;
        match decide(handled, incoming.attempts, &mq.retry_delays) {
            Decision::Ack => delivery.ack(BasicAckOptions::default()).await.map(|_| ()),
            Decision::Retry { delay, attempt } => {
                tracing::warn!(attempt, retry_in = ?delay, reason = detail, "handler failed; retrying later");
                let props = headers::with_headers(
                    &delivery.properties,
                    &[
                        (headers::ATTEMPTS, AMQPValue::LongLongInt(attempt as i64)),
                        (headers::REASON, headers::text_value(detail)),
                        (
                            headers::ORIGINAL_ROUTING_KEY,
                            headers::text_value(&incoming.original_key),
                        ),
                    ],
                );
                let wait_queue = topology::retry_queue(&mq.queue, delay);
                self.forward(session, incoming, &wait_queue, props).await?;
                crate::metric::events_retried_total(mq.service_name.clone(), incoming.label)
                    .increment(1);
                Ok(())
            }
            Decision::Park { reason, attempts } => {
                let detail = match reason {
                    ParkReason::RetriesExhausted => {
                        format!("gave up after {attempts} attempts: {detail}")
                    }
                    _ => detail.to_string(),
                };
                self.park(session, incoming, reason, attempts, &detail)
                    .await
            }
        }
    }

    /// Park a delivery in the dead-letter queue with its reason and history.
    async fn park(
        &self,
        session: &Session,
        incoming: &Incoming,
        reason: ParkReason,
        attempts: u64,
        detail: &str,
    ) -> lapin::Result<()> {
        let mq = self.broker.settings();
        tracing::error!(service = %mq.service_name, event_id = %short(incoming.message_id()), event_type = incoming.label, correlation_id = %short(incoming.correlation_id()), %reason, detail = %short(detail), attempts, "message parked in the dead-letter queue");
        let props = headers::with_headers(
            &incoming.delivery.properties,
            &[
                (headers::ATTEMPTS, AMQPValue::LongLongInt(attempts as i64)),
                (
                    headers::REASON,
                    headers::text_value(&format!("{reason}: {detail}")),
                ),
                (
                    headers::ORIGINAL_ROUTING_KEY,
                    headers::text_value(&incoming.original_key),
                ),
                (
                    headers::PARKED_AT,
                    headers::text_value(&crate::envelope::now_rfc3339()),
                ),
                (headers::PARKED_BY, headers::text_value(&mq.service_name)),
            ],
        );
        let dlq = topology::dead_letter_queue(&mq.queue);
        self.forward(session, incoming, &dlq, props).await?;
        // The trace of a parked message ends here, failed with its reason; a retry that later
        // succeeds does not fail it.
        crate::trace::fail(
            &tracing::Span::current(),
            reason.label(),
            format!("parked: {reason}: {}", short(detail)),
        );
        crate::metric::events_parked_total(mq.service_name.clone(), incoming.label, reason.label())
            .increment(1);
        Ok(())
    }

    /// Move a delivery to one of our own queues: confirmed publish first, then ack.
    async fn forward(
        &self,
        session: &Session,
        incoming: &Incoming,
        queue: &str,
        props: lapin::BasicProperties,
    ) -> lapin::Result<()> {
        let mq = self.broker.settings();
        let delivery = &incoming.delivery;
        let props = headers::moved_by(&props, mq.url.user(), incoming.sender.as_deref());
        let confirm = publisher::send(&session.publisher, "", queue, &delivery.data, props).await?;
        match publisher::confirmed(confirm).await? {
            Published::Routed => delivery.ack(BasicAckOptions::default()).await.map(|_| ()),
            other => {
                tracing::error!(queue, outcome = ?other, "could not move the message; it goes back to the queue");
                delivery
                    .nack(BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    })
                    .await
                    .map(|_| ())
            }
        }
    }
}
