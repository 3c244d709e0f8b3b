//! The consumer (docs/architecture.md §5): its supervision and its delivery loop here; a
//! delivery decoded once in `incoming.rs`, applied in batches in `apply.rs`, settled in
//! `settle.rs`. Deliveries are applied in a unit of work together with their inbox records,
//! acked only after it committed.
//!
//! A failing handler is retried through the broker-held wait queues (`MQ_RETRY_DELAYS`);
//! after the last delay, or at once when the message can never succeed, it is parked in the
//! dead-letter queue with its reason. Retry and park publishes are confirmed before the
//! original is acked, so nothing is dropped on the way.

mod apply;
mod incoming;
mod settle;

use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use tokio_util::sync::CancellationToken;

use crate::envelope::Envelope;
use crate::events::Event;
use crate::messaging::decision::{Handled, ParkReason};
use crate::messaging::outbox::{EmitError, Outbox, Work};
use crate::messaging::watchdog::{connection_state, monitor, Detached, Lost, Progress};
use crate::messaging::{topology, Broker, Session};

/// Why a handler did not apply an event.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandleError {
    /// May succeed later (a predecessor has not arrived yet): retry.
    #[error("{0}")]
    Retry(String),
    /// Will never succeed (contradicts what this role knows): park at once.
    #[error("{0}")]
    Reject(String),
    /// The event's id was applied before with another body: park it, never apply it.
    #[error("{0}")]
    Conflict(String),
    /// The store failed (busy, I/O): retry; the source is kept for the log.
    #[error("store")]
    Store(#[from] sqlx::Error),
}

impl From<EmitError> for HandleError {
    fn from(e: EmitError) -> Self {
        match e {
            // Parked with its reason: replayed once the gate is lifted.
            unsayable @ EmitError::Unsayable(_) => HandleError::Reject(unsayable.to_string()),
            EmitError::Store(e) => HandleError::Store(e),
        }
    }
}

impl HandleError {
    fn handled(&self) -> Handled {
        match self {
            HandleError::Reject(_) => Handled::Impossible(ParkReason::Rejected),
            HandleError::Conflict(_) => Handled::Impossible(ParkReason::Conflict),
            HandleError::Retry(_) | HandleError::Store(_) => Handled::Failed,
        }
    }
}

/// A role's business logic for the events it consumes.
///
/// It runs inside the unit of work that also records the event in the inbox; it writes the
/// role's tables through `work` and emits the events it causes with [`Work::emit`], which
/// links them to the envelope being handled.
pub(crate) type EventHandler =
    for<'a> fn(&'a mut Work, &'a Envelope, Event) -> BoxFuture<'a, HandlerResult>;

/// What an [`EventHandler`] returns.
pub(crate) type HandlerResult = Result<(), HandleError>;

/// Everything the consumer needs.
pub(crate) struct Consumer {
    pub(crate) broker: Broker,
    pub(crate) outbox: Outbox,
    pub(crate) handler: EventHandler,
}

/// Most deliveries applied in one store transaction.
const MAX_BATCH: usize = 32;

/// The longest the broker may take to open the consumer's channel and attach it.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
/// A new consumer after a lost one waits this long.
const REATTACH_PAUSE: Duration = Duration::from_millis(500);

enum Ended {
    Shutdown,
    Lost(Lost),
}

enum Applied {
    Applied,
    Duplicate,
}

/// The delivery stream ended: the consumer alone when its channel is still open, or the
/// channel with it.
fn stream_ended(channel: &Channel, detail: &str) -> Ended {
    let reason = if channel.status().connected() {
        Detached::StreamEnded
    } else {
        Detached::ChannelClosed
    };
    Ended::Lost(Lost::new(reason, detail))
}

impl Consumer {
    /// Consume until `shutdown`. A consumer that is lost is replaced: on the same connection
    /// when only the consumer was cut off and the connection is still up, otherwise on the
    /// session the supervisor opens next.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut sessions = self.broker.watch();
        while let Some(session) = self.broker.wait_session(&shutdown).await {
            tracing::debug!(session = session.id, "consumer: attaching on this session");
            let lost = match self.consume(&session, &shutdown).await {
                Ok(Ended::Shutdown) => break,
                Ok(Ended::Lost(lost)) => lost,
                Err(e) => Lost::new(Detached::AttachFailed, e.to_string()),
            };
            self.detached(&session, &lost);
            let same_session = self.broker.current().is_some_and(|s| s.id == session.id);
            if lost.reason.keeps_connection()
                && same_session
                && session.connection.status().connected()
            {
                // Only the consumer was cut off: open a new one on this connection, after a
                // pause so that a consumer the broker keeps refusing cannot spin.
                tokio::select! {
                    _ = tokio::time::sleep(REATTACH_PAUSE) => continue,
                    _ = shutdown.cancelled() => break,
                }
            }
            self.broker.report_broken(session.id);
            // Wait for the supervisor to replace the session we lost.
            let old = session.id;
            tracing::debug!(session = old, current = ?self.broker.current().map(|s| s.id), "consumer: waiting for the session to be replaced");
            tokio::select! {
                _ = sessions.wait_for(|s| s.as_ref().map(|s| s.id) != Some(old)) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        self.broker.consumer_detached("stopped");
    }

    fn detached(&self, session: &Session, lost: &Lost) {
        let mq = self.broker.settings();
        self.broker
            .consumer_detached(&format!("{} ({})", lost.detail, lost.reason.label()));
        crate::metric::consumer_restarts_total(mq.service_name.clone(), lost.reason.label())
            .increment(1);
        tracing::warn!(service = %mq.service_name, session = session.id, reason = lost.reason.label(), detail = %lost.detail,
            connection = connection_state(&session.connection), "consumer detached; replacing it");
    }

    /// Attach to the queue and consume until the consumer ends, its session goes away, the
    /// monitor finds it cut off, or `shutdown`.
    async fn consume(
        &self,
        session: &Session,
        shutdown: &CancellationToken,
    ) -> lapin::Result<Ended> {
        let mq = self.broker.settings();
        // Bounded: a broker that never answers the channel open or the consume must not
        // leave the consumer waiting, unattached, with no monitor to notice.
        let (channel, tag, deliveries) = tokio::select! {
            attached = tokio::time::timeout(ATTACH_TIMEOUT, self.attach(session)) => match attached {
                Ok(attached) => attached?,
                Err(_) => {
                    return Ok(Ended::Lost(Lost::new(
                        Detached::AttachFailed,
                        format!("the broker did not answer the attach within {ATTACH_TIMEOUT:?}"),
                    )))
                }
            },
            _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
        };
        self.broker.consumer_attached(&channel);
        tracing::info!(service = %mq.service_name, queue = %mq.queue, prefetch = mq.prefetch, session = session.id, channel = channel.id(), consumer = %tag, "consumer attached");
        let progress = Progress::new();
        let ended = tokio::select! {
            ended = self.deliver(session, &channel, &tag, deliveries, shutdown, &progress) => ended,
            lost = monitor(mq, session, &channel, &progress) => Ok(Ended::Lost(lost)),
        };
        if !matches!(ended, Ok(Ended::Shutdown)) && channel.status().connected() {
            // Deliveries this consumer held and did not settle go back to the queue with
            // its channel; on a connection that is still up the channel must be closed.
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                channel.close(200, "consumer replaced".into()),
            )
            .await;
        }
        ended
    }

    /// A channel with the prefetch set, consuming the queue (declared again with its
    /// bindings first).
    async fn attach(&self, session: &Session) -> lapin::Result<(Channel, String, lapin::Consumer)> {
        let mq = self.broker.settings();
        let channel = session.connection.create_channel().await?;
        // The queue and its bindings, again: when the consumer is replaced on the same
        // connection, the queue may have been deleted and declared anew without them.
        topology::declare(&channel, mq).await?;
        channel
            .basic_qos(mq.prefetch, BasicQosOptions::default())
            .await?;
        let tag = format!(
            "{}-{}",
            mq.service_name,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let deliveries = channel
            .basic_consume(
                mq.queue.as_str().into(),
                tag.as_str().into(),
                // Manual acknowledgement: a delivery is acked only after it was handled.
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok((channel, tag, deliveries))
    }

    /// The delivery loop: take what arrives, in batches of what the prefetch already holds.
    async fn deliver(
        &self,
        session: &Session,
        channel: &Channel,
        tag: &str,
        mut deliveries: lapin::Consumer,
        shutdown: &CancellationToken,
        progress: &Progress,
    ) -> lapin::Result<Ended> {
        // The supervisor replacing the session also ends this consumer, whether or not the
        // old channel's stream ever reports its end.
        let mut sessions = self.broker.watch();
        let mut received: u64 = 0;
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    // Stop taking deliveries; what was prefetched but not handled goes back
                    // to the queue when the channel closes.
                    let stop = async {
                        let _ = channel.basic_cancel(tag.into(), BasicCancelOptions::default()).await;
                        let _ = channel.close(200, "shutdown".into()).await;
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(2), stop).await;
                    return Ok(Ended::Shutdown);
                }
                _ = async { let _ = sessions.wait_for(|s| s.as_ref().map(|s| s.id) != Some(session.id)).await; } => {
                    return Ok(Ended::Lost(Lost::new(Detached::Connection, "the connection was replaced")));
                }
                next = deliveries.next() => next,
            };
            let first = match next {
                None => return Ok(stream_ended(channel, "the broker ended the consumer")),
                Some(Err(e)) => return Ok(stream_ended(channel, &e.to_string())),
                Some(Ok(delivery)) => delivery,
            };
            // Take what the prefetch has already delivered, without waiting for more.
            let mut batch = vec![first];
            let mut ended = None;
            while batch.len() < MAX_BATCH {
                match deliveries.next().now_or_never() {
                    Some(Some(Ok(delivery))) => batch.push(delivery),
                    Some(Some(Err(e))) => {
                        ended = Some(stream_ended(channel, &e.to_string()));
                        break;
                    }
                    Some(None) => {
                        ended = Some(stream_ended(channel, "the broker ended the consumer"));
                        break;
                    }
                    None => break,
                }
            }
            progress.touch();
            received += batch.len() as u64;
            tracing::debug!(
                session = session.id,
                deliveries = batch.len(),
                received,
                "consumer: batch in hand"
            );
            // A delivery in hand must not outlive its connection: an ack or a confirm on a
            // connection that died can wait forever. When the supervisor withdraws or
            // replaces the session, the batch is dropped — its transaction rolls back, or
            // its deliveries come again and the inbox absorbs what was already applied.
            let replaced = async {
                let _ = sessions
                    .wait_for(|s| s.as_ref().map(|s| s.id) != Some(session.id))
                    .await;
            };
            tokio::select! {
                r = self.process_batch(session, progress, batch) => {
                    tracing::debug!(session = session.id, ok = r.is_ok(), "consumer: batch settled");
                    r?;
                    progress.touch();
                }
                _ = replaced => {
                    return Ok(Ended::Lost(Lost::new(Detached::Connection, "the connection went away with deliveries in hand")));
                }
            }
            if let Some(ended) = ended {
                return Ok(ended);
            }
        }
    }
}
