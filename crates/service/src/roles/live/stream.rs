//! The live stream on the broker (docs/architecture.md §12): a RabbitMQ stream queue bound
//! to the exchange for the events a meeting's participants watch, shared by every replica.
//! [`read`] follows it into the replica's [`Hub`]; [`Replay`] reads it from an older offset
//! for one connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Consumer};
use tokio_util::sync::CancellationToken;

use super::hub::{Hub, Item};
use crate::config::{LiveSettings, MqSettings};
use crate::messaging::{headers, topology, Broker};

/// Deliveries in flight on a stream consumer (a stream needs `basic.qos`).
const PREFETCH: u16 = 500;

/// The stream's arguments: its type and its retention.
pub(super) fn stream_args(live: &LiveSettings) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("stream")),
    );
    args.insert(
        "x-max-age".into(),
        AMQPValue::LongString(LongString::from(format!("{}s", live.max_age.as_secs()))),
    );
    args.insert(
        "x-max-length-bytes".into(),
        AMQPValue::LongLongInt(i64::try_from(live.max_bytes).unwrap_or(i64::MAX)),
    );
    args.insert(
        "x-stream-max-segment-size-bytes".into(),
        AMQPValue::LongLongInt(i64::try_from(live.segment_bytes).unwrap_or(i64::MAX)),
    );
    args
}

/// Declare the exchange, the stream and its bindings: the routing keys the live role watches.
pub(super) async fn declare(
    channel: &Channel,
    mq: &MqSettings,
    live: &LiveSettings,
) -> lapin::Result<()> {
    topology::declare_exchange(channel, mq).await?;
    channel
        .queue_declare(
            live.stream.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            stream_args(live),
        )
        .await?;
    for t in crate::system::LIVE.watches {
        channel
            .queue_bind(
                live.stream.as_str().into(),
                mq.exchange.as_str().into(),
                t.routing_key().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Where a consumer of the stream starts.
enum From {
    /// The last chunk: a replica starting fills its memory with what was just written.
    Last,
    Offset(u64),
}

/// Open a consumer of the stream on a channel of its own.
async fn consume(
    channel: &Channel,
    stream: &str,
    from: From,
    tag: &str,
) -> lapin::Result<Consumer> {
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let mut args = FieldTable::default();
    let offset = match from {
        From::Last => AMQPValue::LongString(LongString::from("last")),
        From::Offset(n) => AMQPValue::LongLongInt(i64::try_from(n).unwrap_or(i64::MAX)),
    };
    args.insert("x-stream-offset".into(), offset);
    channel
        .basic_consume(
            stream.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await
}

/// The stream offset RabbitMQ stamps on a delivery.
fn offset_of(delivery: &Delivery) -> Option<u64> {
    let value = delivery
        .properties
        .headers()
        .as_ref()?
        .inner()
        .get("x-stream-offset")?;
    let n = match value {
        AMQPValue::LongLongInt(n) => *n,
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::LongUInt(n) => i64::from(*n),
        AMQPValue::Timestamp(n) => i64::try_from(*n).unwrap_or(-1),
        _ => return None,
    };
    u64::try_from(n).ok()
}

/// The item for a delivery: shown only if its sender may publish the event it carries.
fn item(mq: &MqSettings, offset: u64, delivery: &Delivery) -> Item {
    let sender = headers::sender(mq, delivery.exchange.as_str(), &delivery.properties);
    Item::new(offset, &delivery.data, &mq.read_versions, |event| {
        crate::messaging::trust::trusts(mq, event.event_type(), sender.as_deref())
    })
}

/// Follow the stream into `hub` until `stop`: from its last chunk at first, then from where
/// the hub left off after each reconnect.
pub(super) async fn read(
    broker: Broker,
    live: LiveSettings,
    hub: Arc<Hub>,
    status: Arc<super::Status>,
    stop: CancellationToken,
) {
    let mq = broker.settings().clone();
    loop {
        let Some(session) = broker.wait_session(&stop).await else {
            return;
        };
        let outcome = async {
            let channel = session.connection.create_channel().await?;
            declare(&channel, &mq, &live).await?;
            let from = hub.next_offset().map_or(From::Last, From::Offset);
            let tag = format!("{}-live-{}", mq.service_name, uuid::Uuid::new_v4().simple());
            let mut deliveries = consume(&channel, &live.stream, from, &tag).await?;
            status.attached(true);
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => break,
                    next = deliveries.next() => next,
                };
                let delivery = match next {
                    Some(Ok(d)) => d,
                    Some(Err(e)) => return Err(e),
                    None => break,
                };
                if let Some(offset) = offset_of(&delivery) {
                    let item = item(&mq, offset, &delivery);
                    record_lag(&delivery);
                    crate::metric::live_stream_offset().set(offset as f64);
                    hub.push(item);
                } else {
                    tracing::warn!(
                        "a delivery from the live stream has no x-stream-offset; skipped"
                    );
                }
                // On a stream an ack only returns credit: the offset is read again by anyone.
                delivery.acker.ack(BasicAckOptions::default()).await?;
            }
            let _ = channel.close(200, "stopping".into()).await;
            Ok::<(), lapin::Error>(())
        }
        .await;
        status.attached(false);
        if stop.is_cancelled() {
            return;
        }
        match outcome {
            Ok(()) => tracing::warn!("the live stream's consumer ended; attaching again"),
            Err(e) => {
                tracing::warn!(error = %e, "the live stream's consumer failed; attaching again");
                broker.report_broken(session.id);
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// How far behind its publication this replica read the event, from the AMQP timestamp.
fn record_lag(delivery: &Delivery) {
    if let Some(sent) = delivery.properties.timestamp() {
        let now = crate::messaging::unix_seconds();
        crate::metric::live_stream_lag_seconds().set(now.saturating_sub(*sent) as f64);
    }
}

/// Reading the stream from an older offset for one connection, on a channel of its own.
pub(super) struct Replay {
    channel: Channel,
    deliveries: Consumer,
    mq: MqSettings,
    started: Instant,
}

impl Replay {
    /// Start reading at `offset` (RabbitMQ may start a little earlier, at the chunk that
    /// holds it, or later, at the stream's first offset when it no longer holds it).
    pub(super) async fn start(
        broker: &Broker,
        live: &LiveSettings,
        offset: u64,
    ) -> anyhow::Result<Self> {
        let session = broker
            .current()
            .ok_or_else(|| anyhow::anyhow!("not connected to the broker"))?;
        let channel = session.connection.create_channel().await?;
        let tag = format!(
            "{}-replay-{}",
            broker.settings().service_name,
            uuid::Uuid::new_v4().simple()
        );
        let deliveries = consume(&channel, &live.stream, From::Offset(offset), &tag).await?;
        Ok(Self {
            channel,
            deliveries,
            mq: broker.settings().clone(),
            started: Instant::now(),
        })
    }

    /// The next item, `Ok(None)` when the consumer ended.
    pub(super) async fn next(&mut self) -> anyhow::Result<Option<Item>> {
        loop {
            let Some(delivery) = self.deliveries.next().await else {
                return Ok(None);
            };
            let delivery = delivery?;
            delivery.acker.ack(BasicAckOptions::default()).await?;
            let Some(offset) = offset_of(&delivery) else {
                continue;
            };
            return Ok(Some(item(&self.mq, offset, &delivery)));
        }
    }

    pub(super) async fn close(self) {
        let _ = self.channel.close(200, "replayed".into()).await;
        crate::metric::live_replay_seconds().record(self.started.elapsed().as_secs_f64());
    }
}
