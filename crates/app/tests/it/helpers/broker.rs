//! RabbitMQ from the test's side: a raw connection to publish odd messages and watch the
//! bus ([`Bus`], [`Spy`]), and private nodes for destructive tests ([`PrivateBroker`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use meeting_events::envelope::Envelope;

use super::Ctx;

/// A raw AMQP connection for the test itself: publish odd messages, watch the bus.
pub struct Bus {
    pub conn: Connection,
    pub channel: lapin::Channel,
    pub exchange: String,
}

impl Bus {
    pub async fn connect(ctx: &Ctx) -> Self {
        Self::connect_to(&ctx.amqp_url, &ctx.exchange).await
    }

    pub async fn connect_to(url: &str, exchange: &str) -> Self {
        let conn = connect(url).await;
        let channel = conn.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        channel
            .exchange_declare(
                exchange.into(),
                lapin::ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("exchange");
        Self {
            conn,
            channel,
            exchange: exchange.to_string(),
        }
    }

    /// Publish bytes to the exchange with a routing key, confirmed.
    pub async fn publish_raw(&self, routing_key: &str, body: &[u8]) {
        self.channel
            .basic_publish(
                self.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }

    /// Publish an envelope stamped with `user` as its AMQP `user_id` (the broker refuses it
    /// unless `user` is this connection's).
    pub async fn publish_as(&self, envelope: &Envelope, user: &str) {
        self.publish_with(
            envelope,
            BasicProperties::default().with_user_id(user.into()),
        )
        .await;
    }

    /// Publish an envelope with the given properties, confirmed.
    pub async fn publish_with(&self, envelope: &Envelope, props: BasicProperties) {
        self.channel
            .basic_publish(
                self.exchange.as_str().into(),
                envelope.event_type.as_str().into(),
                BasicPublishOptions::default(),
                &envelope.to_bytes(),
                props.with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }

    pub async fn publish(&self, envelope: &Envelope) {
        self.publish_raw(&envelope.event_type, &envelope.to_bytes())
            .await;
    }

    /// A durable queue of the test's own, bound to `binding` before anything is published,
    /// as `mq.py` declares its queues (durable, no arguments). It keeps every copy
    /// that reached the broker, across broker restarts.
    pub async fn durable_queue(&self, name: &str, binding: &str) {
        self.bound_queue(name, binding, FieldTable::default()).await
    }

    /// A durable quorum queue of the test's own bound to `binding`: it keeps every copy
    /// that reached the cluster, whichever node is lost.
    pub async fn quorum_queue(&self, name: &str, binding: &str) {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            lapin::types::AMQPValue::LongString("quorum".into()),
        );
        self.bound_queue(name, binding, args).await
    }

    async fn bound_queue(&self, name: &str, binding: &str, args: FieldTable) {
        self.channel
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await
            .expect("queue");
        self.channel
            .queue_bind(
                name.into(),
                self.exchange.as_str().into(),
                binding.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
    }

    /// A spy queue bound to `binding`, collecting envelopes from now on.
    pub async fn spy(&self, binding: &str) -> Spy {
        let ch = self.conn.create_channel().await.expect("channel");
        let consumer = meeting_events::messaging::topology::tap(&ch, &self.exchange, &[binding])
            .await
            .expect("spy queue");
        Spy {
            _channel: ch,
            consumer,
            seen: Vec::new(),
        }
    }

    /// Messages in a queue right now, taken off it (acked).
    pub async fn drain(&self, queue: &str) -> Vec<lapin::message::BasicGetMessage> {
        let mut out = Vec::new();
        while let Some(m) = self
            .channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            out.push(m);
        }
        out
    }

    /// Wait until `count` messages are parked in `dlq`, take them off it and return each
    /// one's `x-reason`.
    pub async fn parked_reasons(&self, dlq: &str, count: u32) -> Vec<String> {
        super::eventually(Duration::from_secs(15), || async {
            (self.queue_len(dlq).await >= count).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("fewer than {count} parked in {dlq}"));
        let parked = self.drain(dlq).await;
        assert_eq!(parked.len() as u32, count, "messages parked in {dlq}");
        parked
            .iter()
            .map(|m| {
                meeting_events::messaging::headers::text(
                    &m.delivery.properties,
                    meeting_events::messaging::headers::REASON,
                )
                .unwrap_or_default()
            })
            .collect()
    }

    pub async fn queue_len(&self, queue: &str) -> u32 {
        let ch = self.conn.create_channel().await.expect("channel");
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("queue exists");
        q.message_count()
    }
}

/// What the broker says when `url`'s user publishes `routing_key` to `exchange` (confirmed),
/// `None` when it takes the message.
pub async fn publish_refusal(url: &str, exchange: &str, routing_key: &str) -> Option<String> {
    let conn = connect(url).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let outcome = async {
        ch.basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default(),
        )
        .await?
        .await
    }
    .await;
    let _ = conn.close(200, "done".into()).await;
    match outcome {
        Ok(confirm) if confirm.is_ack() => None,
        Ok(confirm) => Some(format!("{confirm:?}")),
        Err(e) => Some(e.to_string()),
    }
}

/// What the broker says when `url`'s user reads from `queue`, `None` when it may.
pub async fn read_refusal(url: &str, queue: &str) -> Option<String> {
    let conn = connect(url).await;
    let ch = conn.create_channel().await.expect("channel");
    let outcome = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await;
    let _ = conn.close(200, "done".into()).await;
    outcome.err().map(|e| e.to_string())
}

pub struct Spy {
    _channel: lapin::Channel,
    consumer: lapin::Consumer,
    pub seen: Vec<Envelope>,
}

impl Spy {
    /// Wait until `pred` holds for what has been seen, or `timeout`.
    pub async fn until(&mut self, timeout: Duration, pred: impl Fn(&[Envelope]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !pred(&self.seen) {
            match tokio::time::timeout_at(deadline, self.consumer.next()).await {
                Ok(Some(Ok(d))) => {
                    if let Ok(env) = Envelope::from_bytes(&d.data) {
                        self.seen.push(env);
                    }
                }
                _ => return pred(&self.seen),
            }
        }
        true
    }

    /// Keep collecting for `period`.
    pub async fn collect_for(&mut self, period: Duration) {
        self.until(period, |_| false).await;
    }

    pub fn of_type(&self, event_type: &str) -> Vec<&Envelope> {
        self.seen
            .iter()
            .filter(|e| e.event_type == event_type)
            .collect()
    }
}

/// A private RabbitMQ node for a destructive test, from `scripts/broker.sh`.
pub struct PrivateBroker {
    pub dir: tempfile::TempDir,
    pub url: String,
}

impl PrivateBroker {
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("rmq")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let url = broker_script(&["start", &dir.path().display().to_string()]);
        Self { dir, url }
    }

    /// SIGKILL the node, as a crash. Async, like every script run while roles serve: the
    /// roles under test share the test's runtime, and a blocking wait here would freeze
    /// them too (their timers then all fire at once when it returns).
    pub async fn kill(&self) {
        run_script(script(), &["kill", &self.dir.path().display().to_string()]).await;
    }

    /// rabbitmqctl against the node.
    pub fn ctl(&self, args: &[&str]) {
        let mut all = vec!["ctl", self.dir.path().to_str().expect("a path")];
        all.extend_from_slice(args);
        broker_script(&all);
    }

    /// Run the `rabbitmqctl` commands of `file` against the node (`scripts/broker.sh apply`),
    /// with `env` (the passwords the commands name).
    pub fn apply(&self, file: &Path, env: &[(String, String)]) {
        let status = Command::new(script())
            .args(["apply", self.dir.path().to_str().expect("a path")])
            .arg(file)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .status()
            .expect("broker.sh");
        assert!(status.success(), "broker.sh apply {}", file.display());
    }

    /// The node's URL as broker user `user` with password `password`.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        self.url
            .replacen("guest:guest", &format!("{user}:{password}"), 1)
    }

    /// Have the node close every client connection (a connection reset).
    pub async fn close_connections(&self) {
        run_script(
            script(),
            &["close-connections", &self.dir.path().display().to_string()],
        )
        .await;
    }

    /// rabbitmqctl against the node, without blocking the roles that share the runtime.
    pub async fn ctl_async(&self, args: &[&str]) -> String {
        let mut all = vec!["ctl", self.dir.path().to_str().expect("a path")];
        all.extend_from_slice(args);
        run_script(script(), &all).await
    }

    /// Start it again from its data directory (same name and port).
    pub async fn restart(&self) {
        let url = run_script(script(), &["start", &self.dir.path().display().to_string()]).await;
        assert_eq!(url, self.url);
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .args(["stop", &self.dir.path().display().to_string()])
            .status();
    }
}

pub(super) fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts")
}

fn script() -> PathBuf {
    scripts().join("broker.sh")
}

/// A connection for the test itself. Bounded and tried again: lapin's connect was seen to
/// wait forever without reaching the broker (once in a 40-round soak of the fault tests on
/// a loaded machine); the roles bound theirs the same way, in the supervisor.
pub async fn connect(url: &str) -> Connection {
    for _ in 0..5 {
        let attempt = Connection::connect(url, ConnectionProperties::default());
        match tokio::time::timeout(Duration::from_secs(10), attempt).await {
            Ok(Ok(conn)) => return conn,
            Ok(Err(e)) => panic!("test connection: {e}"),
            Err(_) => eprintln!("test connection: no answer within 10 s; trying again"),
        }
    }
    panic!("test connection: five connects without an answer")
}

/// Run a script to its end without blocking the runtime; its trimmed output.
pub(super) async fn run_script(script: PathBuf, args: &[&str]) -> String {
    let out = tokio::process::Command::new(&script)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .await
        .expect("script");
    assert!(out.status.success(), "{} {args:?} failed", script.display());
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn broker_script(args: &[&str]) -> String {
    script_output("broker.sh", args)
}

/// Run one of `scripts/` to its end; its trimmed output.
pub(super) fn script_output(name: &str, args: &[&str]) -> String {
    let out = Command::new(scripts().join(name))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(out.status.success(), "{name} {args:?} failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
