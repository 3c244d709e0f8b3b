//! Test helpers: in-process roles on port 0, the binary as a process, a bus spy, private
//! broker nodes, and polling.

#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use meeting_events::config::Settings;
use meeting_events::envelope::Envelope;
use meeting_events::role::Role;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "integration-test-secret-0123456789";

/// The broker under test.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL")
        .expect("AMQP_URL is unset: run scripts/test.sh, which starts a throwaway broker")
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// Names and files that isolate one test.
pub struct Ctx {
    pub prefix: String,
    pub exchange: String,
    pub amqp_url: String,
    pub dir: tempfile::TempDir,
    pub extra: HashMap<String, String>,
}

impl Ctx {
    pub fn new() -> Self {
        Self::on(amqp_url())
    }

    pub fn on(amqp_url: String) -> Self {
        let prefix = unique("t");
        Self {
            exchange: format!("{prefix}-events"),
            prefix,
            amqp_url,
            dir: tempfile::tempdir().expect("tempdir"),
            extra: HashMap::new(),
        }
    }

    pub fn queue(&self, role: Role) -> String {
        format!("{}-{}", self.prefix, role.service_name())
    }

    /// The environment a role of this test runs with.
    pub fn env(&self, role: Role) -> HashMap<String, String> {
        let mut env: HashMap<String, String> = [
            ("AMQP_URL", self.amqp_url.clone()),
            ("MQ_EXCHANGE", self.exchange.clone()),
            ("SERVICE_NAME", self.queue(role)),
            (
                "DATABASE_URL",
                format!(
                    "sqlite://{}/{}.db",
                    self.dir.path().display(),
                    role.as_str()
                ),
            ),
            ("AUTH_JWT_SECRET", SECRET.to_string()),
            ("MQ_RETRY_DELAYS", "200ms,400ms".to_string()),
            ("HTTP_ADDR", "127.0.0.1".to_string()),
            ("HTTP_PORT", "0".to_string()),
            ("SHUTDOWN_GRACE", "5s".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        env.extend(self.extra.clone());
        env
    }

    pub fn settings(&self, role: Role) -> Settings {
        Settings::load(role, &self.env(role), Path::new("/nonexistent")).expect("test settings")
    }
}

/// A role running inside the test process.
pub struct Running {
    pub role: Role,
    pub base: String,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn spawn(ctx: &Ctx, role: Role) -> Self {
        quiet_logs();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(meeting_events::roles::run(
            ctx.settings(role),
            listener,
            shutdown.clone(),
        ));
        let running = Self {
            role,
            base: format!("http://{addr}"),
            shutdown,
            task,
        };
        running.wait_ready().await;
        running
    }

    pub async fn wait_ready(&self) {
        let url = format!("{}/ready", self.base);
        eventually(Duration::from_secs(20), || async {
            reqwest::get(&url)
                .await
                .ok()
                .filter(|r| r.status() == 200)
                .map(|_| ())
        })
        .await
        .unwrap_or_else(|| panic!("{} did not become ready", self.role));
    }

    /// `/ready` answers 200 within `timeout`.
    pub async fn wait_ready_within(&self, timeout: Duration) -> bool {
        wait_ready_at(&self.base, timeout).await
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await.expect("role task")
    }
}

/// Where each role answers.
pub struct Urls {
    pub meeting: String,
    pub election: String,
    pub voting: String,
    pub permission: String,
}

/// All four roles of one test.
pub struct Stack {
    pub meeting: Running,
    pub election: Running,
    pub voting: Running,
    pub permission: Running,
}

impl Stack {
    pub async fn start(ctx: &Ctx) -> Self {
        // Consumers first: their queues exist before anything is published.
        let (permission, election, voting, meeting) = tokio::join!(
            Running::spawn(ctx, Role::Permission),
            Running::spawn(ctx, Role::Election),
            Running::spawn(ctx, Role::Voting),
            Running::spawn(ctx, Role::Meeting),
        );
        Self {
            meeting,
            election,
            voting,
            permission,
        }
    }

    pub fn urls(&self) -> Urls {
        Urls {
            meeting: self.meeting.base.clone(),
            election: self.election.base.clone(),
            voting: self.voting.base.clone(),
            permission: self.permission.base.clone(),
        }
    }

    pub async fn stop(self) {
        for r in [self.meeting, self.election, self.voting, self.permission] {
            r.stop().await.expect("clean stop");
        }
    }
}

pub fn quiet_logs() {
    // Silent unless asked: RUST_LOG=info cargo test …
    if std::env::var("RUST_LOG").is_ok() {
        meeting_events::telemetry::init_logs("info");
    }
}

pub fn token(user: &str) -> String {
    meeting_events::http::auth::issue(
        &meeting_events::config::Secret::new(SECRET),
        user,
        Duration::from_secs(3600),
    )
    .expect("token")
}

/// A tiny JSON client acting as one user.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    token: Option<String>,
}

impl Client {
    pub fn as_user(user: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            token: Some(token(user)),
        }
    }

    pub fn anonymous() -> Self {
        Self {
            http: reqwest::Client::new(),
            token: None,
        }
    }

    pub fn with_token(token: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            token: Some(token.to_string()),
        }
    }

    fn auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    pub async fn get(&self, url: &str) -> (u16, Value) {
        respond(self.auth(self.http.get(url)).send().await).await
    }

    pub async fn post(&self, url: &str, body: Value) -> (u16, Value) {
        respond(self.auth(self.http.post(url)).json(&body).send().await).await
    }

    pub async fn post_raw(&self, url: &str, body: &'static str) -> (u16, Value) {
        let rb = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .body(body);
        respond(self.auth(rb).send().await).await
    }

    pub async fn delete(&self, url: &str) -> (u16, Value) {
        respond(self.auth(self.http.delete(url)).send().await).await
    }
}

async fn respond(r: reqwest::Result<reqwest::Response>) -> (u16, Value) {
    let r = r.expect("request sent");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Poll `f` until it yields `Some`, or give up after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

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
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("test connection");
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

    pub async fn publish(&self, envelope: &Envelope) {
        self.publish_raw(&envelope.event_type, &envelope.to_bytes())
            .await;
    }

    /// A durable queue of the test's own, bound to `binding` before anything is published,
    /// as the seed's `mq.py` declares its queues (durable, no arguments). It keeps every copy
    /// that reached the broker, across broker restarts.
    pub async fn durable_queue(&self, name: &str, binding: &str) {
        self.channel
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
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

/// The built `app` binary.
pub fn app_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_app"))
}

/// `app <role>` as a child process with this test's environment and the given port.
pub fn spawn_process(ctx: &Ctx, role: Role, port: u16) -> Child {
    let mut env = ctx.env(role);
    env.insert("HTTP_PORT".into(), port.to_string());
    Command::new(app_bin())
        .arg(role.as_str())
        .env_clear()
        .envs(env)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env("CONFIG_DIR", "/nonexistent")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn app")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

pub async fn wait_ready_at(base: &str, timeout: Duration) -> bool {
    let url = format!("{base}/ready");
    eventually(timeout, || async {
        reqwest::get(&url)
            .await
            .ok()
            .filter(|r| r.status() == 200)
            .map(|_| ())
    })
    .await
    .is_some()
}

pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{sig} failed");
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

    /// SIGKILL the node, as a crash.
    pub fn kill(&self) {
        broker_script(&["kill", &self.dir.path().display().to_string()]);
    }

    /// Have the node close every client connection (a connection reset).
    pub fn close_connections(&self) {
        broker_script(&["close-connections", &self.dir.path().display().to_string()]);
    }

    /// Start it again from its data directory (same name and port).
    pub fn restart(&self) {
        let url = broker_script(&["start", &self.dir.path().display().to_string()]);
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

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/broker.sh")
}

fn broker_script(args: &[&str]) -> String {
    let out = Command::new(script())
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("broker.sh");
    assert!(out.status.success(), "broker.sh {args:?} failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Create a meeting as `user` and wait until the meeting service knows its manager.
pub async fn meeting_with_manager(urls: &Urls, user: &Client, title: &str) -> String {
    let (status, body) = user
        .post(
            &format!("{}/meetings", urls.meeting),
            serde_json::json!({"title": title}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().expect("id").to_string();
    let url = format!("{}/meetings/{id}", urls.meeting);
    eventually(Duration::from_secs(10), || async {
        let (_, m) = user.get(&url).await;
        (!m["managers"].as_array()?.is_empty()).then_some(())
    })
    .await
    .expect("manager granted through permission-service");
    id
}
