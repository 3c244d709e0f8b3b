//! The consumer loop (docs/architecture.md §5): deliveries applied in a unit of work together
//! with their inbox records, acked only after it committed.
//!
//! A failing handler is retried through the broker-held wait queues (`MQ_RETRY_DELAYS`);
//! after the last delay, or at once when the message can never succeed, it is parked in the
//! dead-letter queue with its reason. Retry and park publishes are confirmed before the
//! original is acked, so nothing is dropped on the way.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Channel;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::envelope::{DecodeError, Envelope};
use crate::events::{Event, EventType};
use crate::messaging::decision::{decide, Decision, Handled, ParkReason};
use crate::messaging::inbox::Recorded;
use crate::messaging::outbox::{Outbox, Work};
use crate::messaging::publisher::{self, Published};
use crate::messaging::watchdog::{connection_state, monitor, Detached, Lost, Progress};
use crate::messaging::{headers, inbox, topology, Broker, Session};
use crate::store::{is_retryable, race_backoff, RACE_RETRIES};
use crate::text::{short, Chain};

/// The longest wait between two probes of a store that is out.
const MAX_PAUSE: Duration = Duration::from_secs(2);

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

/// The metric label for an event type read off the wire (bounded to the catalogue).
fn type_label(event_type: &str) -> &'static str {
    EventType::from_routing_key(event_type).map_or("other", EventType::routing_key)
}

/// The envelope and its typed event, or why the message can never be handled.
fn decode(body: &[u8], max: usize) -> Result<(Envelope, Event), DecodeError> {
    if body.len() > max {
        return Err(DecodeError::TooLarge {
            size: body.len(),
            max,
        });
    }
    let envelope = Envelope::from_bytes(body)?;
    let event = envelope.event()?;
    Ok((envelope, event))
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

    /// Handle one delivery to the end: acked after commit, or retried, or parked.
    async fn process(
        &self,
        session: &Session,
        progress: &Progress,
        delivery: Delivery,
    ) -> lapin::Result<()> {
        let span = self.process_span(&delivery);
        self.process_in(session, progress, delivery)
            .instrument(span)
            .await
    }

    /// The CONSUMER `process` span of a delivery: parented to the context the message carries
    /// (its `create` span) and linked to it; a new trace when it carries none. Its fields name
    /// the event in every log line written while it is handled.
    fn process_span(&self, delivery: &Delivery) -> tracing::Span {
        use crate::trace::attr;
        let mq = self.broker.settings();
        let props = &delivery.properties;
        let event_id = props
            .message_id()
            .as_ref()
            .map(|s| s.as_str())
            .unwrap_or("");
        let correlation_id = props
            .correlation_id()
            .as_ref()
            .map(|s| s.as_str())
            .unwrap_or(event_id);
        let routing_key = original_routing_key(delivery);
        let span = tracing::info_span!(target: crate::trace::TARGET, "event",
            otel.name = %format_args!("process {}", mq.queue), otel.kind = "consumer",
            event_id = %short(event_id), event_type = %short(&routing_key),
            correlation_id = %short(correlation_id),
            trace_id = tracing::field::Empty, span_id = tracing::field::Empty);
        if !crate::trace::enabled() {
            return span;
        }
        let attempt = headers::count(props, headers::ATTEMPTS).unwrap_or(0) + 1;
        let mut attributes = crate::trace::message_attributes(
            ("process", "process"),
            format!("{}:{routing_key}:{}", mq.exchange, mq.queue),
            &routing_key,
            event_id,
            correlation_id,
        );
        attributes.push((attr::CONSUMER_GROUP, mq.queue.clone()));
        crate::trace::set(&span, &attributes);
        crate::trace::set_int(&span, attr::DELIVERY_TAG, delivery.delivery_tag as i64);
        crate::trace::set_int(&span, attr::ATTEMPT, attempt as i64);
        let parent = <crate::trace::Carrier as super::AmqpCarrier>::from_amqp(props).context();
        crate::trace::start(&span, Some(&parent), true);
        span
    }

    async fn process_in(
        &self,
        session: &Session,
        progress: &Progress,
        delivery: Delivery,
    ) -> lapin::Result<()> {
        let (envelope, event) =
            match decode(&delivery.data, self.broker.settings().max_message_bytes) {
                Ok(decoded) => decoded,
                Err(e) => {
                    let label = match e {
                        DecodeError::TooLarge { .. } => "other",
                        _ => Envelope::from_bytes(&delivery.data)
                            .map_or("other", |env| type_label(&env.event_type)),
                    };
                    let handled = Handled::Impossible(ParkReason::from(&e));
                    return self
                        .settle(session, &delivery, label, handled, &e.to_string())
                        .await;
                }
            };
        name_the_event(&tracing::Span::current(), &delivery, &envelope);
        let label = type_label(&envelope.event_type);
        if let Err(detail) = self.trusted(&delivery, &event, label) {
            let handled = Handled::Impossible(ParkReason::UntrustedProducer);
            return self
                .settle(session, &delivery, label, handled, &detail)
                .await;
        }
        {
            let service = &self.broker.settings().service_name;
            let started = Instant::now();
            let outcome = self.apply(&envelope, event, progress).await;
            crate::metric::event_handler_duration_seconds(service.clone(), label)
                .record(started.elapsed().as_secs_f64());
            let (handled, detail) = match outcome {
                Ok(applied) => {
                    self.record_applied(&envelope, label, &applied);
                    (Handled::Done, String::new())
                }
                Err(e) => {
                    crate::metric::events_failed_total(service.clone(), label).increment(1);
                    (e.handled(), Chain(&e).to_string())
                }
            };
            self.settle(session, &delivery, label, handled, &detail)
                .await
        }
    }

    /// Whether the delivery's sender may publish `event` here (always in open mode); the
    /// reason to park it when not.
    fn trusted(&self, delivery: &Delivery, event: &Event, label: &str) -> Result<(), String> {
        let mq = self.broker.settings();
        let sender = headers::sender(mq, delivery.exchange.as_str(), &delivery.properties);
        if super::trust::trusts(mq, event.event_type(), sender.as_deref()) {
            return Ok(());
        }
        Err(format!(
            "{label} from broker user {:?}, which is not among its producers",
            sender
                .as_deref()
                .map(short)
                .unwrap_or_else(|| "(none)".into())
        ))
    }

    /// Ack, retry or park, as [`decide`] says.
    async fn settle(
        &self,
        session: &Session,
        delivery: &Delivery,
        label: &'static str,
        handled: Handled,
        detail: &str,
    ) -> lapin::Result<()> {
        let mq = self.broker.settings();
        let before = headers::count(&delivery.properties, headers::ATTEMPTS).unwrap_or(0);
        match decide(handled, before, &mq.retry_delays) {
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
                            headers::text_value(&original_routing_key(delivery)),
                        ),
                    ],
                );
                let wait_queue = topology::retry_queue(&mq.queue, delay);
                self.forward(session, delivery, &wait_queue, props).await?;
                crate::metric::events_retried_total(mq.service_name.clone(), label).increment(1);
                Ok(())
            }
            Decision::Park { reason, attempts } => {
                let detail = match reason {
                    ParkReason::RetriesExhausted => {
                        format!("gave up after {attempts} attempts: {detail}")
                    }
                    _ => detail.to_string(),
                };
                self.park(session, delivery, label, reason, attempts, &detail)
                    .await
            }
        }
    }

    /// Several deliveries at once: decoded ones applied in one transaction and acked after
    /// its commit. If any handler fails, nothing of the batch is kept and each delivery
    /// goes through [`Self::process`] alone, so only the failing one is retried or parked.
    async fn process_batch(
        &self,
        session: &Session,
        progress: &Progress,
        mut batch: Vec<Delivery>,
    ) -> lapin::Result<()> {
        if batch.len() == 1 {
            return self.process(session, progress, batch.remove(0)).await;
        }
        let mut ready = Vec::with_capacity(batch.len());
        let max = self.broker.settings().max_message_bytes;
        for delivery in batch {
            match decode(&delivery.data, max) {
                Ok((envelope, event))
                    if self
                        .trusted(&delivery, &event, type_label(&envelope.event_type))
                        .is_ok() =>
                {
                    let span = self.process_span(&delivery);
                    name_the_event(&span, &delivery, &envelope);
                    ready.push((delivery, envelope, event, span))
                }
                // Can never succeed, or not from this sender: parked, with its reason, by
                // the one-at-a-time path.
                _ => self.process(session, progress, delivery).await?,
            }
        }
        let started = Instant::now();
        let items = ready
            .iter()
            .map(|(_, env, event, span)| (env, event.clone(), span.clone()))
            .collect();
        match self.apply_all(items, progress).await {
            Ok(outcomes) => {
                let service = &self.broker.settings().service_name;
                let each = started.elapsed().as_secs_f64() / ready.len().max(1) as f64;
                for ((delivery, envelope, _, span), applied) in ready.iter().zip(outcomes) {
                    let label = type_label(&envelope.event_type);
                    crate::metric::event_handler_duration_seconds(service.clone(), label)
                        .record(each);
                    async {
                        self.record_applied(envelope, label, &applied);
                        delivery.ack(BasicAckOptions::default()).await
                    }
                    .instrument(span.clone())
                    .await?;
                }
                Ok(())
            }
            Err(_) => {
                for (delivery, _, _, _) in ready {
                    self.process(session, progress, delivery).await?;
                }
                Ok(())
            }
        }
    }

    fn record_applied(&self, envelope: &Envelope, label: &'static str, applied: &Applied) {
        let outcome = match applied {
            Applied::Applied => {
                tracing::info!(event_id = %short(&envelope.event_id), event_type = type_label(&envelope.event_type), correlation_id = %short(envelope.chain_id()), producer = %short(&envelope.producer), "event applied");
                "applied"
            }
            Applied::Duplicate => {
                tracing::info!(event_id = %short(&envelope.event_id), event_type = type_label(&envelope.event_type), correlation_id = %short(envelope.chain_id()), "event already applied; duplicate acked");
                "duplicate"
            }
        };
        crate::metric::events_consumed_total(
            self.broker.settings().service_name.clone(),
            label,
            outcome,
        )
        .increment(1);
    }

    async fn apply(
        &self,
        envelope: &Envelope,
        event: Event,
        progress: &Progress,
    ) -> Result<Applied, HandleError> {
        let mut outcomes = self
            .apply_all(vec![(envelope, event, tracing::Span::current())], progress)
            .await?;
        Ok(outcomes.pop().unwrap_or(Applied::Duplicate))
    }

    /// Apply events in order in one unit of work, each recorded in the inbox with its
    /// effect. An event already in the inbox (redelivered, or twice in this batch) changes
    /// nothing. While the store cannot be reached the deliveries stay in hand and the unit
    /// runs again once it answers: nothing is wrong with the events, so no retry is spent
    /// and nothing is parked for it.
    async fn apply_all(
        &self,
        items: Vec<(&Envelope, Event, tracing::Span)>,
        progress: &Progress,
    ) -> Result<Vec<Applied>, HandleError> {
        let mut attempt = 0;
        // The wait before the next try while the store is out; it grows across tries, since
        // a store that answers `SELECT 1` may still refuse writes (a full disk).
        let mut outage: Option<Duration> = None;
        loop {
            match self.apply_once(&items).await {
                Err(HandleError::Store(e)) if crate::store::is_unavailable(&e) => {
                    outage = Some(self.wait_for_store(&e, progress, outage).await);
                }
                // Lost a race with another replica (serialization failure, deadlock): run
                // the whole unit again here; the broker's retry queue is for failures that
                // need time, not for this.
                Err(HandleError::Store(e)) if is_retryable(&e) && attempt < RACE_RETRIES => {
                    tracing::debug!(attempt, error = %e, "store transaction lost a race; running it again");
                    race_backoff(attempt).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Hold the consumer until the store answers a `SELECT 1` again, polling with backoff
    /// from `previous` (the wait of the try before, within one outage); the watchdog is kept
    /// from taking the pause for a stall. Returns the last wait.
    async fn wait_for_store(
        &self,
        error: &sqlx::Error,
        progress: &Progress,
        previous: Option<Duration>,
    ) -> Duration {
        let service = &self.broker.settings().service_name;
        if previous.is_none() {
            tracing::warn!(service = %service, error = %Chain(error), "the store cannot be reached or written; the consumer holds its deliveries until it can (no retry is spent)");
        }
        let paused = crate::metric::consumer_paused(service.clone());
        paused.set(1.0);
        let started = Instant::now();
        let mut wait = previous.map_or(Duration::from_millis(200), |w| (w * 2).min(MAX_PAUSE));
        loop {
            progress.touch();
            tokio::time::sleep(wait).await;
            progress.touch();
            let probe = tokio::time::timeout(
                Duration::from_secs(5),
                sqlx::query("SELECT 1").execute(self.outbox.store().pool()),
            )
            .await;
            if matches!(probe, Ok(Ok(_))) {
                break;
            }
            wait = (wait * 2).min(MAX_PAUSE);
        }
        paused.set(0.0);
        tracing::info!(service = %service, paused_for = ?started.elapsed(), "the store answers again; the consumer tries its deliveries again");
        wait
    }

    /// Each item is applied inside its own `process` span, so what its handler emits
    /// continues that message's trace.
    async fn apply_once(
        &self,
        items: &[(&Envelope, Event, tracing::Span)],
    ) -> Result<Vec<Applied>, HandleError> {
        let mut work = self.outbox.begin().await?;
        let mut outcomes = Vec::with_capacity(items.len());
        for (envelope, event, span) in items {
            let applied = async {
                match inbox::record(&mut work, envelope).await? {
                    Recorded::New => {}
                    Recorded::Duplicate => return Ok(Applied::Duplicate),
                    Recorded::Conflict => {
                        return Err(HandleError::Conflict(format!(
                            "event {} was applied before with another body",
                            crate::text::short(&envelope.event_id)
                        )))
                    }
                }
                work.caused_by(envelope);
                AssertUnwindSafe((self.handler)(&mut work, envelope, event.clone()))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| Err(HandleError::Retry("handler panicked".into())))?;
                Ok(Applied::Applied)
            }
            .instrument(span.clone())
            .await?;
            outcomes.push(applied);
        }
        work.commit().await?;
        Ok(outcomes)
    }

    /// Park a delivery in the dead-letter queue with its reason and history.
    async fn park(
        &self,
        session: &Session,
        delivery: &Delivery,
        label: &'static str,
        reason: ParkReason,
        attempts: u64,
        detail: &str,
    ) -> lapin::Result<()> {
        let mq = self.broker.settings();
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        tracing::error!(service = %mq.service_name, event_id = %short(&message_id), event_type = label, correlation_id = %short(delivery.properties.correlation_id().as_ref().map(|s| s.as_str()).unwrap_or("")), %reason, detail = %short(detail), attempts, "message parked in the dead-letter queue");
        let props = headers::with_headers(
            &delivery.properties,
            &[
                (headers::ATTEMPTS, AMQPValue::LongLongInt(attempts as i64)),
                (
                    headers::REASON,
                    headers::text_value(&format!("{reason}: {detail}")),
                ),
                (
                    headers::ORIGINAL_ROUTING_KEY,
                    headers::text_value(&original_routing_key(delivery)),
                ),
                (
                    headers::PARKED_AT,
                    headers::text_value(&crate::envelope::now_rfc3339()),
                ),
                (headers::PARKED_BY, headers::text_value(&mq.service_name)),
            ],
        );
        let dlq = topology::dead_letter_queue(&mq.queue);
        self.forward(session, delivery, &dlq, props).await?;
        // The trace of a parked message ends here, failed with its reason; a retry that later
        // succeeds does not fail it.
        crate::trace::fail(
            &tracing::Span::current(),
            reason.label(),
            format!("parked: {reason}: {}", short(detail)),
        );
        crate::metric::events_parked_total(mq.service_name.clone(), label, reason.label())
            .increment(1);
        Ok(())
    }

    /// Move a delivery to one of our own queues: confirmed publish first, then ack.
    async fn forward(
        &self,
        session: &Session,
        delivery: &Delivery,
        queue: &str,
        props: lapin::BasicProperties,
    ) -> lapin::Result<()> {
        let mq = self.broker.settings();
        let first = headers::sender(mq, delivery.exchange.as_str(), &delivery.properties);
        let props = headers::moved_by(&props, mq.url.user(), first.as_deref());
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

/// A message published without AMQP `message_id`/`correlation_id` (the seed's mq.py sets
/// neither) is named in its span by its envelope, once decoded.
fn name_the_event(span: &tracing::Span, delivery: &Delivery, envelope: &Envelope) {
    use crate::trace::attr;
    if delivery.properties.message_id().is_some() {
        return;
    }
    span.record(
        "event_id",
        tracing::field::display(short(&envelope.event_id)),
    );
    span.record(
        "correlation_id",
        tracing::field::display(short(envelope.chain_id())),
    );
    crate::trace::set(
        span,
        &[
            (attr::MESSAGE_ID, envelope.event_id.clone()),
            (attr::CONVERSATION_ID, envelope.chain_id().to_string()),
        ],
    );
}

/// The routing key the message was first published with.
fn original_routing_key(delivery: &Delivery) -> String {
    headers::text(&delivery.properties, headers::ORIGINAL_ROUTING_KEY)
        .unwrap_or_else(|| delivery.routing_key.to_string())
}
