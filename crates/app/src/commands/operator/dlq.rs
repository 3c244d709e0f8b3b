//! `app dlq list` and `app dlq replay`: the dead-letter queue of a service.

use super::*;

/// The id shown for a parked message: its `message_id`, else its envelope's `event_id`.
pub(super) fn message_id(m: &BasicGetMessage) -> String {
    let id = m
        .delivery
        .properties
        .message_id()
        .as_ref()
        .map(|s| s.to_string())
        .or_else(|| {
            Envelope::from_bytes(&m.delivery.data)
                .ok()
                .map(|e| e.event_id)
        })
        .unwrap_or_else(|| "-".into());
    short(&id)
}

/// Take every message of the dead-letter queue without acking: closing the channel puts back
/// whatever was not acked, in order.
pub(super) async fn take_all(ch: &Channel, dlq: &str) -> anyhow::Result<Vec<BasicGetMessage>> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let count = answered(
        format_args!("queue.declare {dlq}"),
        ch.queue_declare(dlq.into(), passive, FieldTable::default()),
    )
    .await?
    .with_context(|| format!("no dead-letter queue {dlq}"))?
    .message_count();
    let mut out = Vec::new();
    for _ in 0..count {
        match answered(
            format_args!("basic.get {dlq}"),
            ch.basic_get(dlq.into(), BasicGetOptions { no_ack: false }),
        )
        .await??
        {
            Some(m) => out.push(m),
            None => break,
        }
    }
    Ok(out)
}

/// `app dlq list --service NAME`
pub(crate) async fn dlq_list(service: &str) -> anyhow::Result<()> {
    let settings = shared_settings()?;
    let conn = connect(&settings.mq).await?;
    let ch = answered("channel.open", conn.create_channel()).await??;
    let dlq = topology::dead_letter_queue(service);
    let messages = take_all(&ch, &dlq).await?;
    println!("{} message(s) parked in {dlq}", messages.len());
    for m in &messages {
        let p = &m.delivery.properties;
        let (kind, _, _, _) = describe(&m.delivery.data);
        let kind = if kind == "-" {
            headers::text(p, headers::ORIGINAL_ROUTING_KEY).unwrap_or_else(|| "-".into())
        } else {
            kind
        };
        println!(
            "{}  {kind}  attempts={}  parked_at={}  reason={:?}  body={}",
            message_id(m),
            headers::count(p, headers::ATTEMPTS).unwrap_or(0),
            headers::text(p, headers::PARKED_AT).unwrap_or_else(|| "-".into()),
            headers::text(p, headers::REASON)
                .or_else(|| {
                    // Dead-lettered by the broker itself (a quorum queue's delivery limit).
                    headers::text(p, "x-first-death-reason").map(|r| format!("broker: {r}"))
                })
                .unwrap_or_default(),
            preview(&m.delivery.data),
        );
    }
    // Closing the connection puts every message back, in order.
    close(&conn, "done").await;
    Ok(())
}

/// `app dlq replay --service NAME (--id ID | --all)`: back to the service's queue, with its
/// retry count reset.
pub(crate) async fn dlq_replay(service: &str, id: Option<&str>, all: bool) -> anyhow::Result<()> {
    if id.is_none() && !all {
        bail!("say which: --id ID or --all");
    }
    let settings = shared_settings()?;
    let conn = connect(&settings.mq).await?;
    let ch = answered("channel.open", conn.create_channel()).await??;
    let publisher = answered("confirm.select", publisher::Publisher::open(ch.clone())).await??;
    let dlq = topology::dead_letter_queue(service);
    let messages = take_all(&ch, &dlq).await?;
    let mut replayed = 0;
    for m in &messages {
        if !all && Some(message_id(m).as_str()) != id {
            continue;
        }
        let props = headers::without_headers(
            &m.delivery.properties,
            &[
                headers::ATTEMPTS,
                headers::REASON,
                headers::PARKED_AT,
                headers::PARKED_BY,
            ],
        );
        let props = headers::with_headers(
            &props,
            &[("x-replayed-at", AMQPValue::LongString(now_rfc3339().into()))],
        );
        // Published as the operator's broker user (the broker accepts no other user_id);
        // the first publisher stays in x-producer-user. In strict mode, replay with the
        // role's own credentials, or the consumer will not believe the replayed event.
        let user = settings.mq.url.user();
        let first = headers::producer_user(&m.delivery.properties, user);
        let props = headers::moved_by(&props, user, first.as_deref());
        // A replay starts a new trace, linked to the one the message was parked in.
        let (span, props) = meeting_events::messaging::trace_carrier::replay(&props, service);
        let confirm = answered(
            "basic.publish",
            publisher::send(&publisher, "", service, &m.delivery.data, props),
        )
        .await??;
        let confirmed = publisher::confirmed(confirm).await?;
        drop(span);
        match confirmed {
            Published::Routed => {
                answered("basic.ack", m.delivery.ack(BasicAckOptions::default())).await??;
                replayed += 1;
                println!("replayed {} to {service}", message_id(m));
            }
            other => bail!(
                "could not put {} back on {service}: {other:?}",
                message_id(m)
            ),
        }
    }
    close(&conn, "done").await;
    if replayed == 0 {
        bail!("no parked message in {dlq} matched");
    }
    Ok(())
}
