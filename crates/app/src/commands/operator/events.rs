//! `app events publish` and `app events tail`.

use super::*;

/// `app events publish [--raw] ROUTING_KEY DATA`
pub(crate) async fn publish(
    raw: bool,
    event_version: Option<u32>,
    routing_key: &str,
    data: &str,
) -> anyhow::Result<()> {
    let settings = shared_settings()?;
    let mq = &settings.mq;
    let conn = connect(mq).await?;
    let channel = answered("channel.open", conn.create_channel()).await??;
    let publisher = answered("confirm.select", publisher::Publisher::open(channel)).await??;
    let (id, outcome) = if raw {
        let id = meeting_events::domain::new_id();
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(id.as_str().into());
        let confirm = answered(
            "basic.publish",
            publisher::send(
                &publisher,
                &mq.exchange,
                routing_key,
                data.as_bytes(),
                props,
            ),
        )
        .await??;
        (id, publisher::confirmed(confirm).await?)
    } else {
        let data: Value = serde_json::from_str(data)
            .context("DATA must be JSON (use --raw to send bytes as they are)")?;
        if !data.is_object() {
            bail!("DATA must be a JSON object");
        }
        let producer = std::env::var(meeting_events::config::name_of("mq.service_name"))
            .unwrap_or_else(|_| "operator".into());
        let id = meeting_events::domain::new_id();
        let envelope = Envelope {
            event_type: routing_key.to_string(),
            event_version: event_version.unwrap_or_else(|| {
                EventType::from_routing_key(routing_key).map_or(1, EventType::newest)
            }),
            correlation_id: Some(id.clone()),
            event_id: id.clone(),
            timestamp: now_rfc3339(),
            producer,
            data,
            causation_id: None,
        };
        (
            id,
            answered(
                "basic.publish",
                publisher::publish_envelope(&publisher, &mq.exchange, &envelope),
            )
            .await??,
        )
    };
    close(&conn, "done").await;
    match outcome {
        Published::Routed => {
            println!(
                "published {id} to {} with routing key {routing_key}",
                mq.exchange
            );
            Ok(())
        }
        Published::Unroutable(why) => {
            bail!("the broker returned {id}: no queue is bound for {routing_key} ({why})")
        }
        Published::Nacked => bail!("the broker refused {id}"),
        Published::TimedOut => bail!(
            "no confirm for {id} within {:?}",
            publisher::CONFIRM_TIMEOUT
        ),
    }
}

/// One line for a message: an envelope's fields, or a preview of the bytes.
pub(super) fn describe(body: &[u8]) -> (String, String, String, String) {
    match Envelope::from_bytes(body) {
        // Text from the bus is escaped: it cannot forge or break an output line.
        Ok(e) => (
            short(&e.event_type),
            short(&e.producer),
            short(&e.event_id),
            e.data.to_string(),
        ),
        Err(_) => ("-".into(), "-".into(), "-".into(), preview(body)),
    }
}

pub(super) fn preview(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut p: String = text.chars().take(80).collect();
    if text.chars().count() > 80 {
        p.push('…');
    }
    format!("{p:?}")
}

/// `app events tail [BINDING…]`
pub(crate) async fn tail(bindings: &[String]) -> anyhow::Result<()> {
    let settings = shared_settings()?;
    let mq = &settings.mq;
    let conn = connect(mq).await?;
    let ch = answered("channel.open", conn.create_channel()).await??;
    answered("exchange.declare", topology::declare_exchange(&ch, mq)).await??;
    let bindings: Vec<String> = if bindings.is_empty() {
        vec!["#".into()]
    } else {
        bindings.to_vec()
    };
    let keys: Vec<&str> = bindings.iter().map(String::as_str).collect();
    let mut consumer = answered("the tap queue", topology::tap(&ch, &mq.exchange, &keys)).await??;
    eprintln!(
        "tailing exchange {} for {} (Ctrl-C to stop)",
        mq.exchange,
        bindings.join(",")
    );
    let shutdown = meeting_events::shutdown::on_signal();
    loop {
        let next = tokio::select! {
            n = consumer.next() => n,
            _ = shutdown.cancelled() => break,
        };
        match next {
            Some(Ok(d)) => {
                let (kind, producer, id, data) = describe(&d.data);
                let kind = if kind == "-" {
                    d.routing_key.to_string()
                } else {
                    kind
                };
                println!("{} {kind} {producer} {id} {data}", now_rfc3339());
            }
            Some(Err(e)) => bail!("lost the broker: {e}"),
            None => bail!("the broker ended the tail"),
        }
    }
    close(&conn, "done").await;
    Ok(())
}
