//! The publish benchmarks: our publisher against raw lapin at the same confirm window,
//! and `mq.py`'s connection-per-publish pattern.

use super::*;

/// A `meeting.created` envelope as the meeting service would publish it.
pub(crate) fn sample_event(i: usize) -> Event {
    Event::MeetingCreated(MeetingCreated {
        meeting_id: format!("bench-{i}"),
        title: "Benchmark meeting".into(),
        created_by: "alice".into(),
    })
}

pub(crate) async fn purge(ch: &Channel, queue: &str) -> anyhow::Result<()> {
    ch.queue_purge(queue.into(), Default::default()).await?;
    Ok(())
}

/// The properties our publisher sets for the sample event (what the relay sends).
pub(crate) fn sample_properties(env: &Envelope) -> BasicProperties {
    headers::for_event(
        &env.event_id,
        &env.event_type,
        &env.producer,
        env.correlation_id.as_deref(),
        publisher::unix_seconds(),
    )
}

/// The inputs of a publish benchmark, the same for raw lapin and ours.
pub(crate) struct PublishRun<'a> {
    pub(crate) conn: &'a Connection,
    pub(crate) mq: &'a MqSettings,
    pub(crate) env: &'a Envelope,
    pub(crate) n: usize,
    pub(crate) window: usize,
}

pub(crate) async fn confirm_channel(conn: &Connection) -> anyhow::Result<Channel> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(ch)
}

/// Raw lapin: the same body and properties, built once; persistent + mandatory, `window`
/// confirms in flight, confirms not inspected.
pub(crate) async fn raw_lapin(run: &PublishRun<'_>) -> anyhow::Result<f64> {
    let ch = confirm_channel(run.conn).await?;
    let body = run.env.to_bytes();
    let props = sample_properties(run.env);
    let started = Instant::now();
    let raw = RawPublish {
        exchange: &run.mq.exchange,
        routing_key: "meeting.created",
        body: &body,
        props: &props,
    };
    raw.send(&ch, run.n, run.window).await?;
    let rate = run.n as f64 / started.elapsed().as_secs_f64();
    let _ = ch.close(200, "done".into()).await;
    Ok(rate)
}

/// One message published `n` times by raw lapin: persistent + mandatory, the same body and
/// properties built once, confirms not inspected.
pub(crate) struct RawPublish<'a> {
    pub(crate) exchange: &'a str,
    pub(crate) routing_key: &'a str,
    pub(crate) body: &'a [u8],
    pub(crate) props: &'a BasicProperties,
}

impl RawPublish<'_> {
    /// Publish it `n` times on `ch`, at most `window` confirms in flight; return once every
    /// confirm came.
    pub(crate) async fn send(&self, ch: &Channel, n: usize, window: usize) -> anyhow::Result<()> {
        let mut inflight = FuturesUnordered::new();
        for _ in 0..n {
            if inflight.len() >= window {
                inflight.next().await.context("confirm")??;
            }
            let confirm = ch
                .basic_publish(
                    self.exchange.into(),
                    self.routing_key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    self.body,
                    self.props.clone(),
                )
                .await?;
            inflight.push(confirm);
        }
        while let Some(c) = inflight.next().await {
            c?;
        }
        Ok(())
    }
}

/// Ours, per message as the relay does per outbox row: the envelope's AMQP properties built
/// from its fields, `publisher::send` (persistent, mandatory) and the confirm classified as
/// routed, unroutable or refused. Same body, same window.
pub(crate) async fn our_publisher(run: &PublishRun<'_>) -> anyhow::Result<f64> {
    let ch = publisher::Publisher::open(run.conn.create_channel().await?).await?;
    let body = run.env.to_bytes();
    let started = Instant::now();
    let mut inflight = FuturesUnordered::new();
    for _ in 0..run.n {
        if inflight.len() >= run.window {
            check(inflight.next().await.context("confirm")??)?;
        }
        let confirm = publisher::send(
            &ch,
            &run.mq.exchange,
            &run.env.event_type,
            &body,
            sample_properties(run.env),
        )
        .await?;
        inflight.push(publisher::confirmed(confirm));
    }
    while let Some(c) = inflight.next().await {
        check(c?)?;
    }
    let rate = run.n as f64 / started.elapsed().as_secs_f64();
    let _ = ch.channel().close(200, "done".into()).await;
    Ok(rate)
}

pub(crate) fn check(p: Published) -> anyhow::Result<()> {
    match p {
        Published::Routed => Ok(()),
        other => bail!("publish not routed: {other:?}"),
    }
}

/// The pattern of `mq.py`'s `publish_event`: a new connection, a declare and an unconfirmed
/// publish per event.
pub(crate) async fn per_publish(mq: &MqSettings, body: &[u8], n: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    for _ in 0..n {
        let conn = Connection::connect(mq.url.expose(), ConnectionProperties::default()).await?;
        let ch = conn.create_channel().await?;
        topology::declare_exchange(&ch, mq).await?;
        ch.basic_publish(
            mq.exchange.as_str().into(),
            "meeting.created".into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await?;
        conn.close(200, "done".into()).await?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}
