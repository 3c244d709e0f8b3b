//! The exchange, queues and bindings a role declares on every (re)connect.
//!
//! For a queue `Q` the role owns:
//! - `Q`, bound to the shared exchange with `MQ_BINDINGS`;
//! - `Q.retry.<ms>ms`, one per `MQ_RETRY_DELAYS` entry: no consumer, a message TTL of that
//!   delay, and dead-lettering back to `Q` through the default exchange, so the broker
//!   holds a failed message for its delay, not a sleeping consumer;
//! - `Q.dlq`, where messages that will never succeed are parked with their reason.
//!
//! And, declared by an operator (`app topology ingress`), one exchange per `MQ_INGRESS`
//! producer: `<exchange>.from.<user>`, bound into the shared exchange for the routing keys
//! of the roles that producer publishes for, and bound back from it with `#`.

use std::time::Duration;

use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::Channel;

use crate::config::{ExchangeType, MqSettings, QueueType};

/// Name of the wait queue that holds a message for `delay` before it returns to `queue`.
pub fn retry_queue(queue: &str, delay: Duration) -> String {
    format!("{queue}.retry.{}ms", delay.as_millis())
}

/// Name of the dead-letter (parking) queue of `queue`.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dlq")
}

/// Name of the queue that holds the events of `exchange` no deployed role consumes from a
/// queue (docs/architecture.md §5, "Unroutable events").
pub fn unrouted_queue(exchange: &str) -> String {
    format!("{exchange}.unrouted")
}

/// Declare the shared exchange: durable, as `mq.py` declares it (same arguments,
/// so either side may declare it first).
pub async fn declare_exchange(channel: &Channel, mq: &MqSettings) -> lapin::Result<()> {
    channel
        .exchange_declare(
            mq.exchange.as_str().into(),
            mq.exchange_type.kind(),
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
}

/// The routing keys `user` may bring in through its ingress exchange: those of every role
/// `MQ_PRODUCERS` lists it for.
pub fn ingress_keys<'a>(
    mq: &'a MqSettings,
    user: &'a str,
) -> impl Iterator<Item = &'static str> + 'a {
    crate::system::ALL
        .iter()
        .filter(move |role| {
            mq.producers
                .iter()
                .any(|p| p.role.name == role.name && p.user == user)
        })
        .flat_map(|role| role.publishes.iter().map(|t| t.routing_key()))
}

/// Declare `user`'s ingress exchange (a topic exchange, as mq.py declares one) and its
/// bindings: into the shared exchange for [`ingress_keys`] only, so nothing else it
/// publishes leaves its exchange, and from the shared exchange with `#`, so a consumer
/// bound to the ingress exchange (mq.py binds to the exchange it publishes to) sees the bus.
/// The broker routes each message once per queue even through the cycle.
pub async fn declare_ingress(
    channel: &Channel,
    mq: &MqSettings,
    user: &str,
) -> lapin::Result<String> {
    let ingress = mq.ingress_exchange(user);
    channel
        .exchange_declare(
            ingress.as_str().into(),
            ExchangeType::Topic.kind(),
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    for key in ingress_keys(mq, user) {
        channel
            .exchange_bind(
                mq.exchange.as_str().into(),
                ingress.as_str().into(),
                key.into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    channel
        .exchange_bind(
            ingress.as_str().into(),
            mq.exchange.as_str().into(),
            "#".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(ingress)
}

/// Arguments of a queue of the role's type, plus `extra`.
fn queue_args(queue_type: QueueType, extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut args = FieldTable::default();
    if queue_type == QueueType::Quorum {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("quorum")),
        );
    }
    for (key, value) in extra {
        args.insert((*key).into(), value.clone());
    }
    args
}

/// Arguments the main queue is declared with (also checked by `topology verify`). A quorum
/// queue counts the deliveries of each message; past `MQ_DELIVERY_LIMIT` — a message whose
/// handling keeps crashing the consumer before it can ack, retry or park it — the broker
/// dead-letters it to the dead-letter queue itself.
pub fn main_queue_args(mq: &MqSettings) -> FieldTable {
    match mq.queue_type {
        QueueType::Classic => queue_args(mq.queue_type, &[]),
        QueueType::Quorum => queue_args(
            mq.queue_type,
            &[
                (
                    "x-delivery-limit",
                    AMQPValue::LongLongInt(i64::from(mq.delivery_limit)),
                ),
                ("x-dead-letter-exchange", AMQPValue::LongString("".into())),
                (
                    "x-dead-letter-routing-key",
                    AMQPValue::LongString(dead_letter_queue(&mq.queue).as_str().into()),
                ),
            ],
        ),
    }
}

/// Arguments the dead-letter queue is declared with.
pub fn dead_letter_queue_args(mq: &MqSettings) -> FieldTable {
    queue_args(mq.queue_type, &[])
}

/// Arguments a retry queue is declared with.
pub fn retry_queue_args(mq: &MqSettings, delay: Duration) -> FieldTable {
    queue_args(
        mq.queue_type,
        &[
            // Milliseconds; validated to fit in 32 bits by the config loader.
            (
                "x-message-ttl",
                AMQPValue::LongLongInt(delay.as_millis() as i64),
            ),
            // Back through the default exchange, straight to the main queue.
            ("x-dead-letter-exchange", AMQPValue::LongString("".into())),
            (
                "x-dead-letter-routing-key",
                AMQPValue::LongString(mq.queue.as_str().into()),
            ),
        ],
    )
}

/// Declare the exchange, the role's queue with its bindings, its retry queues and its
/// dead-letter queue. Idempotent: run on every connect.
pub(crate) async fn declare(channel: &Channel, mq: &MqSettings) -> lapin::Result<()> {
    let durable = QueueDeclareOptions {
        // Survive a broker restart, with the persistent messages in them.
        durable: true,
        ..Default::default()
    };
    declare_exchange(channel, mq).await?;
    channel
        .queue_declare(mq.queue.as_str().into(), durable, main_queue_args(mq))
        .await?;
    for key in &mq.bindings {
        channel
            .queue_bind(
                mq.queue.as_str().into(),
                mq.exchange.as_str().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    for delay in &mq.retry_delays {
        channel
            .queue_declare(
                retry_queue(&mq.queue, *delay).as_str().into(),
                durable,
                retry_queue_args(mq, *delay),
            )
            .await?;
    }
    channel
        .queue_declare(
            dead_letter_queue(&mq.queue).as_str().into(),
            durable,
            dead_letter_queue_args(mq),
        )
        .await?;
    Ok(())
}

/// Ready messages and consumers of `queue`, by a passive declare on a channel of its own,
/// closed afterwards (a missing queue closes the channel it is asked on: `Err` 404).
pub(crate) async fn inspect_queue(
    connection: &lapin::Connection,
    queue: &str,
) -> lapin::Result<(u32, u32)> {
    let channel = connection.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let answer = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await;
    if channel.status().connected() {
        let _ = channel.close(200, "inspected".into()).await;
    }
    let q = answer?;
    Ok((q.message_count(), q.consumer_count()))
}

/// A temporary tap on the exchange: an exclusive, auto-deleted queue bound to `bindings`,
/// consumed without acks. It disappears with its channel. Used by `events tail`, `walk` and
/// `bench` to watch the bus without disturbing any service's queue.
pub async fn tap(
    channel: &Channel,
    exchange: &str,
    bindings: &[&str],
) -> lapin::Result<lapin::Consumer> {
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    for key in bindings {
        channel
            .queue_bind(
                queue.name().clone(),
                exchange.into(),
                (*key).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            lapin::options::BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
}
