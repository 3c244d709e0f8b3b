//! `app topology verify`, `ingress` and `permissions`: the broker's exchange, queues and
//! users against what the roles declare.

use super::*;

/// Settings to verify: one role with the full environment, or every role as `app all` runs
/// them.
pub(super) fn verify_targets(role: Option<Role>) -> Result<Vec<Settings>, ConfigError> {
    match role {
        Some(role) => Ok(vec![Settings::from_process_env(role)?]),
        None => crate::commands::all_settings(&meeting_events::config::process_env()),
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
pub(super) async fn verify(all: &[Settings]) -> anyhow::Result<bool> {
    let first = all.first().context("no roles")?;
    let conn = connect(&first.mq).await?;
    let mut ok = true;
    let mq0 = &first.mq;
    let exchange_check = match exchange_exists(&conn, &mq0.exchange, mq0.exchange_type).await? {
        Err(missing) => Err(missing),
        Ok(()) => {
            // Same name, same arguments: a no-op. Different ones: the broker says which.
            let ch = answered("channel.open", conn.create_channel()).await??;
            answered(
                format_args!("exchange.declare {}", mq0.exchange),
                topology::declare_exchange(&ch, mq0),
            )
            .await?
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
    close(&conn, "verified").await;
    Ok(ok)
}

pub(super) async fn check_queue(
    conn: &Connection,
    name: &str,
    args: FieldTable,
) -> anyhow::Result<Result<(), String>> {
    let ch = answered("channel.open", conn.create_channel()).await??;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let what = format!("queue.declare {name}");
    if let Err(e) = answered(
        &what,
        ch.queue_declare(name.into(), passive, FieldTable::default()),
    )
    .await?
    {
        return Ok(Err(format!("missing: {e}")));
    }
    // Same name, same arguments: a no-op. Different arguments: the broker says which.
    let ch = answered("channel.open", conn.create_channel()).await??;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    Ok(
        answered(&what, ch.queue_declare(name.into(), durable, args))
            .await?
            .map(|_| ())
            .map_err(|e| format!("differs: {e}")),
    )
}

/// Whether an exchange of that name exists (a passive declare; `Err` says why not).
pub(super) async fn exchange_exists(
    conn: &Connection,
    name: &str,
    kind: ExchangeType,
) -> anyhow::Result<Result<(), String>> {
    let ch = answered("channel.open", conn.create_channel()).await??;
    let passive = lapin::options::ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    Ok(answered(
        format_args!("exchange.declare {name}"),
        ch.exchange_declare(name.into(), kind.kind(), passive, FieldTable::default()),
    )
    .await?
    .map_err(|e| format!("missing: {e}")))
}

pub(super) fn report(what: &str, check: Result<(), String>) -> bool {
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
    let ch = answered("channel.open", conn.create_channel())
        .await?
        .context("channel")?;
    answered("exchange.declare", topology::declare_exchange(&ch, mq))
        .await?
        .with_context(|| format!("declaring {}", mq.exchange))?;
    for user in &mq.ingress {
        let ingress = answered(
            format_args!("the ingress of {user}"),
            topology::declare_ingress(&ch, mq, user),
        )
        .await?
        .with_context(|| format!("declaring the ingress of {user}"))?;
        let keys: Vec<&str> = topology::ingress_keys(mq, user).collect();
        println!("ok    {ingress} -> {}: {}", mq.exchange, keys.join(", "));
        println!("ok    {} -> {ingress}: #", mq.exchange);
    }
    close(&conn, "declared").await;
    Ok(())
}

/// `app topology permissions`: one broker user per role, its rights derived from the role
/// registry and the event catalogue, as rabbitmqctl commands.
pub(crate) fn permissions(vhost: &str) -> Result<String, Failure> {
    let all = crate::commands::all_settings(&meeting_events::config::process_env())?;
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
            .find(|p| p.role.name == role.name)
            .map_or_else(|| role.service_name(), |p| p.user.clone());
        let (ex, q) = (regex_escape(&mq.exchange), regex_escape(&mq.queue));
        let mut own = format!("{q}|{q}\\.retry\\..+|{q}\\.dlq");
        if !role.watches.is_empty() {
            // The live role declares, binds and reads the shared stream too.
            own.push('|');
            own.push_str(&regex_escape(&s.live.stream));
        }
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
pub(super) fn regex_escape(name: &str) -> String {
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
