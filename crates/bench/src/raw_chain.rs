//! The limit the chain is measured against: a raw lapin 2-hop chain on the same broker —
//! publish with confirm → consume → publish with confirm (acking the first only once the
//! second is confirmed, as a service does) → consume — with no store, HTTP or envelope work.

use futures_util::future::BoxFuture;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};

use super::*;

/// Flows per second through the raw 2-hop chain: `flows` messages, at most `window` of them
/// unconfirmed at each hop.
pub(crate) async fn raw_chain(
    conn: &Connection,
    exchange: &str,
    tag: String,
    env: &Envelope,
    flows: usize,
    window: usize,
) -> anyhow::Result<f64> {
    let admin = conn.create_channel().await?;
    let (first, second) = (format!("{tag}.raw.first"), format!("{tag}.raw.second"));
    for queue in [&first, &second] {
        admin
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        admin
            .queue_bind(
                queue.as_str().into(),
                exchange.into(),
                queue.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    let body = env.to_bytes();
    let props = sample_properties(env);
    let prefetch = u16::try_from(window).unwrap_or(u16::MAX);

    // The middle hop: each delivery published on, acked once that publish is confirmed.
    let middle = {
        let input = conn.create_channel().await?;
        input
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let output = confirm_channel(conn).await?;
        let mut deliveries = input
            .basic_consume(
                first.as_str().into(),
                "raw-middle".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let (exchange, second, props) = (exchange.to_string(), second.clone(), props.clone());
        tokio::spawn(async move {
            let mut pending: FuturesUnordered<BoxFuture<'static, anyhow::Result<()>>> =
                FuturesUnordered::new();
            let mut taken = 0;
            while taken < flows || !pending.is_empty() {
                tokio::select! {
                    delivery = deliveries.next(), if taken < flows => {
                        let delivery = delivery.context("the first queue's consumer ended")??;
                        taken += 1;
                        let confirm = output
                            .basic_publish(
                                exchange.as_str().into(),
                                second.as_str().into(),
                                BasicPublishOptions { mandatory: true, immediate: false },
                                &delivery.data,
                                props.clone(),
                            )
                            .await?;
                        pending.push(Box::pin(async move {
                            confirm.await?;
                            delivery.ack(BasicAckOptions::default()).await?;
                            Ok(())
                        }));
                    }
                    Some(done) = pending.next() => done?,
                }
            }
            anyhow::Ok(())
        })
    };

    // The end: every message of the second hop taken and acked.
    let end = {
        let input = conn.create_channel().await?;
        input
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let mut deliveries = input
            .basic_consume(
                second.as_str().into(),
                "raw-end".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tokio::spawn(async move {
            for _ in 0..flows {
                let delivery = deliveries
                    .next()
                    .await
                    .context("the second queue's consumer ended")??;
                delivery.ack(BasicAckOptions::default()).await?;
            }
            anyhow::Ok(())
        })
    };

    // The first hop, `window` confirms in flight.
    let started = Instant::now();
    let producer = confirm_channel(conn).await?;
    let first_hop = RawPublish {
        exchange,
        routing_key: &first,
        body: &body,
        props: &props,
    };
    first_hop.send(&producer, flows, window).await?;
    middle.await??;
    end.await??;
    let rate = flows as f64 / started.elapsed().as_secs_f64();
    for queue in [&first, &second] {
        admin
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    let _ = producer.close(200, "done".into()).await;
    Ok(rate)
}
