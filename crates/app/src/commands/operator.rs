//! Operator commands: publish and tail events, inspect and replay dead letters, verify the
//! topology. They use the same configuration as the services.

use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::StreamExt;
use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::Value;

use meeting_events::config::{ConfigError, ExchangeType, MqSettings, Settings};
use meeting_events::envelope::{now_rfc3339, Envelope, EVENT_VERSION};
use meeting_events::messaging::headers;
use meeting_events::messaging::publisher::{self, Published};
use meeting_events::messaging::topology;
use meeting_events::telemetry::short;
use meeting_events::Role;

use super::Failure;

async fn connect(mq: &MqSettings) -> anyhow::Result<Connection> {
    // Each node of the cluster in turn, until one answers.
    let mut last = None;
    for i in 0..mq.url.len() {
        let (url, shown) = mq.url.node(i);
        let props = ConnectionProperties::default().with_connection_name("app-operator".into());
        match tokio::time::timeout(Duration::from_secs(10), Connection::connect(url, props)).await {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(e)) => last = Some(anyhow::anyhow!("cannot connect to {shown}: {e}")),
            Err(_) => last = Some(anyhow::anyhow!("timed out connecting to {shown}")),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("AMQP_URL names no broker")))
}

fn shared_settings() -> anyhow::Result<Settings> {
    Ok(Settings::shared_from_process_env()?)
}

/// `app events publish [--raw] ROUTING_KEY DATA`
pub(crate) async fn publish(raw: bool, routing_key: &str, data: &str) -> anyhow::Result<()> {
    let settings = shared_settings()?;
    let mq = &settings.mq;
    let conn = connect(mq).await?;
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let (id, outcome) = if raw {
        let id = uuid::Uuid::new_v4().to_string();
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(id.as_str().into());
        let confirm =
            publisher::send(&channel, &mq.exchange, routing_key, data.as_bytes(), props).await?;
        (id, publisher::confirmed(confirm).await?)
    } else {
        let data: Value = serde_json::from_str(data)
            .context("DATA must be JSON (use --raw to send bytes as they are)")?;
        if !data.is_object() {
            bail!("DATA must be a JSON object");
        }
        let producer = std::env::var("SERVICE_NAME").unwrap_or_else(|_| "operator".into());
        let id = uuid::Uuid::new_v4().to_string();
        let envelope = Envelope {
            event_type: routing_key.to_string(),
            event_version: EVENT_VERSION,
            correlation_id: Some(id.clone()),
            event_id: id.clone(),
            timestamp: now_rfc3339(),
            producer,
            data,
            causation_id: None,
        };
        (
            id,
            publisher::publish_envelope(&channel, &mq.exchange, &envelope).await?,
        )
    };
    let _ = conn.close(200, "done".into()).await;
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
fn describe(body: &[u8]) -> (String, String, String, String) {
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

fn preview(body: &[u8]) -> String {
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
    let ch = conn.create_channel().await?;
    topology::declare_exchange(&ch, mq).await?;
    let bindings: Vec<String> = if bindings.is_empty() {
        vec!["#".into()]
    } else {
        bindings.to_vec()
    };
    let keys: Vec<&str> = bindings.iter().map(String::as_str).collect();
    let mut consumer = topology::tap(&ch, &mq.exchange, &keys).await?;
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
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

/// The id shown for a parked message: its `message_id`, else its envelope's `event_id`.
fn message_id(m: &BasicGetMessage) -> String {
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
async fn take_all(ch: &Channel, dlq: &str) -> anyhow::Result<Vec<BasicGetMessage>> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let count = ch
        .queue_declare(dlq.into(), passive, FieldTable::default())
        .await
        .with_context(|| format!("no dead-letter queue {dlq}"))?
        .message_count();
    let mut out = Vec::new();
    for _ in 0..count {
        match ch
            .basic_get(dlq.into(), BasicGetOptions { no_ack: false })
            .await?
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
    let ch = conn.create_channel().await?;
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
    let _ = conn.close(200, "done".into()).await;
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
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
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
        let confirm = publisher::send(&ch, "", service, &m.delivery.data, props).await?;
        match publisher::confirmed(confirm).await? {
            Published::Routed => {
                m.delivery.ack(BasicAckOptions::default()).await?;
                replayed += 1;
                println!("replayed {} to {service}", message_id(m));
            }
            other => bail!(
                "could not put {} back on {service}: {other:?}",
                message_id(m)
            ),
        }
    }
    let _ = conn.close(200, "done".into()).await;
    if replayed == 0 {
        bail!("no parked message in {dlq} matched");
    }
    Ok(())
}

/// Settings to verify: one role with the full environment, or every role as `app all` runs
/// them.
fn verify_targets(role: Option<Role>) -> Result<Vec<Settings>, ConfigError> {
    match role {
        Some(role) => Ok(vec![Settings::from_process_env(role)?]),
        None => super::all_settings(&meeting_events::config::process_env()),
    }
}

/// `app topology verify [--role ROLE]`
pub(crate) async fn verify_command(role: Option<Role>) -> Result<(), Failure> {
    let targets = verify_targets(role)?;
    if verify(&targets).await? {
        Ok(())
    } else {
        Err(Failure::Other(anyhow::anyhow!(
            "the topology differs from what the roles declare"
        )))
    }
}

/// `app topology verify`: each queue and the exchange exist with the arguments the roles
/// declare. Returns whether everything matched.
async fn verify(all: &[Settings]) -> anyhow::Result<bool> {
    let first = all.first().context("no roles")?;
    let conn = connect(&first.mq).await?;
    let mut ok = true;
    let mq0 = &first.mq;
    let exchange_check = match exchange_exists(&conn, &mq0.exchange, mq0.exchange_type).await? {
        Err(missing) => Err(missing),
        Ok(()) => {
            // Same name, same arguments: a no-op. Different ones: the broker says which.
            let ch = conn.create_channel().await?;
            topology::declare_exchange(&ch, mq0)
                .await
                .map_err(|e| format!("differs: {e}"))
        }
    };
    ok &= report(
        &format!("exchange {} ({}, durable)", mq0.exchange, mq0.exchange_type),
        exchange_check,
    );
    for user in &mq0.ingress {
        let ingress = mq0.ingress_exchange(user);
        let check = exchange_exists(&conn, &ingress, ExchangeType::Topic)
            .await?
            .map_err(|e| format!("{e} (app topology ingress declares it)"));
        ok &= report(&format!("exchange {ingress} (ingress of {user})"), check);
    }
    for s in all {
        let mq = &s.mq;
        let mut queues = vec![(mq.queue.clone(), topology::main_queue_args(mq))];
        for d in &mq.retry_delays {
            queues.push((
                topology::retry_queue(&mq.queue, *d),
                topology::retry_queue_args(mq, *d),
            ));
        }
        queues.push((
            topology::dead_letter_queue(&mq.queue),
            topology::dead_letter_queue_args(mq),
        ));
        for (name, args) in queues {
            let check = check_queue(&conn, &name, args).await?;
            ok &= report(&format!("queue {name} ({})", mq.queue_type.as_str()), check);
        }
        println!("note  bindings of {} ({}) are re-asserted by the service on every connect; AMQP 0-9-1 cannot list them", mq.queue, mq.bindings.join(","));
    }
    let _ = conn.close(200, "verified".into()).await;
    Ok(ok)
}

async fn check_queue(
    conn: &Connection,
    name: &str,
    args: FieldTable,
) -> anyhow::Result<Result<(), String>> {
    let ch = conn.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    if let Err(e) = ch
        .queue_declare(name.into(), passive, FieldTable::default())
        .await
    {
        return Ok(Err(format!("missing: {e}")));
    }
    // Same name, same arguments: a no-op. Different arguments: the broker says which.
    let ch = conn.create_channel().await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    Ok(ch
        .queue_declare(name.into(), durable, args)
        .await
        .map(|_| ())
        .map_err(|e| format!("differs: {e}")))
}

/// Whether an exchange of that name exists (a passive declare; `Err` says why not).
async fn exchange_exists(
    conn: &Connection,
    name: &str,
    kind: ExchangeType,
) -> anyhow::Result<Result<(), String>> {
    let ch = conn.create_channel().await?;
    let passive = lapin::options::ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    Ok(ch
        .exchange_declare(name.into(), kind.kind(), passive, FieldTable::default())
        .await
        .map_err(|e| format!("missing: {e}")))
}

fn report(what: &str, check: Result<(), String>) -> bool {
    match check {
        Ok(()) => {
            println!("ok    {what}");
            true
        }
        Err(why) => {
            println!("FAIL  {what}: {why}");
            false
        }
    }
}

/// `app topology ingress`: declare each `MQ_INGRESS` producer's exchange and bindings.
pub(crate) async fn ingress() -> Result<(), Failure> {
    let settings = shared_settings()?;
    let mq = &settings.mq;
    if mq.ingress.is_empty() {
        return Err(Failure::Other(anyhow::anyhow!(
            "MQ_INGRESS names no producer; nothing to declare"
        )));
    }
    if mq.exchange_type != ExchangeType::Topic {
        return Err(Failure::Other(anyhow::anyhow!(
            "ingress exchanges route by topic; MQ_EXCHANGE_TYPE is {}",
            mq.exchange_type
        )));
    }
    let conn = connect(mq).await?;
    let ch = conn.create_channel().await.context("channel")?;
    topology::declare_exchange(&ch, mq)
        .await
        .with_context(|| format!("declaring {}", mq.exchange))?;
    for user in &mq.ingress {
        let ingress = topology::declare_ingress(&ch, mq, user)
            .await
            .with_context(|| format!("declaring the ingress of {user}"))?;
        let keys: Vec<&str> = topology::ingress_keys(mq, user).collect();
        println!("ok    {ingress} -> {}: {}", mq.exchange, keys.join(", "));
        println!("ok    {} -> {ingress}: #", mq.exchange);
    }
    let _ = conn.close(200, "declared".into()).await;
    Ok(())
}

/// `app topology permissions`: one broker user per role, its rights derived from the role
/// registry and the event catalogue, as rabbitmqctl commands.
pub(crate) fn permissions(vhost: &str) -> Result<String, Failure> {
    let all = super::all_settings(&meeting_events::config::process_env())?;
    let mut out = vec![
        "set -eu  # a password variable left unset stops here".to_string(),
        "# One broker user per role (MQ_TRUST=strict). Configure and read: the shared exchange"
            .to_string(),
        "# and the role's own queues; write: the exchange, the default exchange (retries and"
            .to_string(),
        "# parking) and its queues; topic write: only the routing keys the role publishes."
            .to_string(),
    ];
    for s in &all {
        let role = s.role;
        let mq = &s.mq;
        let user = mq
            .producers
            .iter()
            .find(|(r, _)| r == role.name)
            .map_or_else(|| role.service_name(), |(_, u)| u.clone());
        let (ex, q) = (regex_escape(&mq.exchange), regex_escape(&mq.queue));
        let own = format!("{q}|{q}\\.retry\\..+|{q}\\.dlq");
        let keys: Vec<String> = role
            .publishes
            .iter()
            .map(|t| regex_escape(t.routing_key()))
            .collect();
        let password = format!("${}_BROKER_PASSWORD", role.name.to_uppercase());
        out.push(format!(
            "# {role}: publishes {}",
            keys.join(", ").replace('\\', "")
        ));
        out.push(format!("rabbitmqctl add_user '{user}' \"{password}\""));
        out.push(format!(
            "rabbitmqctl set_permissions -p '{vhost}' '{user}' '^({ex}|{own})$' '^({ex}|amq\\.default|{own})$' '^({ex}|{own})$'"
        ));
        out.push(format!(
            "rabbitmqctl set_topic_permissions -p '{vhost}' '{user}' '{}' '^({})$' '.*'",
            mq.exchange,
            keys.join("|")
        ));
    }
    let mq = &all.first().context("no roles")?.mq;
    for user in &mq.ingress {
        let ingress = regex_escape(&mq.ingress_exchange(user));
        let own = format!("{u}|{u}\\..+", u = regex_escape(user));
        let keys: Vec<String> = topology::ingress_keys(mq, user).map(regex_escape).collect();
        let password = format!(
            "${}_BROKER_PASSWORD",
            user.to_uppercase()
                .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        );
        out.push(format!(
            "# {user} (MQ_INGRESS): publishes {} through its own exchange {}, no rights on {}; its queues are named {user} or {user}.<name>",
            keys.join(", ").replace('\\', ""),
            mq.ingress_exchange(user),
            mq.exchange
        ));
        out.push(format!("rabbitmqctl add_user '{user}' \"{password}\""));
        out.push(format!(
            "rabbitmqctl set_permissions -p '{vhost}' '{user}' '^({ingress}|{own})$' '^({ingress}|{own})$' '^({ingress}|{own})$'"
        ));
        out.push(format!(
            "rabbitmqctl set_topic_permissions -p '{vhost}' '{user}' '{}' '^({})$' '.*'",
            mq.ingress_exchange(user),
            keys.join("|")
        ));
    }
    if !mq.ingress.is_empty() {
        out.push("# Then, as an administrator: app topology ingress".to_string());
    }
    Ok(out.join("\n"))
}

/// A name as a literal in a regular expression.
fn regex_escape(name: &str) -> String {
    name.chars()
        .flat_map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                vec![c]
            } else {
                vec!['\\', c]
            }
        })
        .collect()
}
