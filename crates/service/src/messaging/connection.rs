//! One long-lived connection per role, kept alive by a supervisor task.
//!
//! The supervisor connects with backoff, declares the topology, opens the publishing
//! channel (confirm mode) and hands out the live [`Session`] through a watch channel. When
//! the connection fails — broker restart, reset socket, a channel error reported by a user
//! of the session — it withdraws the session and starts again. Publishers and the consumer
//! wait for the next session instead of holding their own connections.
//!
//! lapin's own recovery is not used: re-declaring the topology and re-attaching the
//! consumer ourselves is one code path that the fault suite exercises end to end.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::MqSettings;
use crate::messaging::publisher::Publisher;
use crate::messaging::topology;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// A live connection with its confirm-mode publishing channel.
#[derive(Clone)]
pub(crate) struct Session {
    /// Increases with every connect, so users can tell a new session from the old one.
    pub(crate) id: u64,
    pub(crate) connection: Arc<Connection>,
    /// The channel every publish of this role goes through (confirms pipelined on it).
    pub(crate) publisher: Publisher,
}

struct Inner {
    mq: MqSettings,
    session: watch::Sender<Option<Session>>,
    broken: tokio::sync::Notify,
    /// The id of the session a user last reported broken; a wake-up for an older one is stale.
    broken_id: AtomicU64,
    consumer: Mutex<Attachment>,
    next_id: AtomicU64,
    /// Which of the broker's nodes to connect to next (`AMQP_URL` lists them).
    node: AtomicUsize,
    /// Set while the broker blocks this connection's publishes (a memory or disk alarm):
    /// its reason and since when.
    blocked: Mutex<Option<(String, std::time::Instant)>>,
}

/// Where the consumer stands, for `/ready`.
enum Attachment {
    /// Not consuming, and why.
    Detached(String),
    /// Consuming on this channel; attached only while it is open.
    Attached(Channel),
}

/// Handle to the role's broker connection. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Broker {
    inner: Arc<Inner>,
}

impl Broker {
    /// Start the supervisor; it runs until `shutdown` is cancelled.
    pub(crate) fn start(mq: MqSettings, shutdown: CancellationToken) -> Self {
        let (session, _) = watch::channel(None);
        let broker = Self {
            inner: Arc::new(Inner {
                mq,
                session,
                broken: tokio::sync::Notify::new(),
                broken_id: AtomicU64::new(0),
                consumer: Mutex::new(Attachment::Detached("not attached yet".into())),
                next_id: AtomicU64::new(1),
                node: AtomicUsize::new(0),
                blocked: Mutex::new(None),
            }),
        };
        tokio::spawn(broker.clone().supervise(shutdown));
        broker
    }

    /// Why and since when the broker blocks this role's publishes, if it does: the role
    /// stays ready (requests still commit to the outbox) and `/ready` says so.
    pub(crate) fn blocked(&self) -> Option<String> {
        let blocked = self.inner.blocked.lock().unwrap_or_else(|e| e.into_inner());
        blocked.as_ref().map(|(reason, since)| {
            format!(
                "broker: publishing blocked by the broker ({reason}) for {}s; events wait in the outbox",
                since.elapsed().as_secs()
            )
        })
    }

    /// Record the broker's `connection.blocked` (with its reason) or `connection.unblocked`.
    fn set_blocked(&self, reason: Option<String>) {
        let mq = &self.inner.mq;
        let mut blocked = self.inner.blocked.lock().unwrap_or_else(|e| e.into_inner());
        match (&*blocked, reason) {
            (None, Some(reason)) => {
                tracing::warn!(service = %mq.service_name, reason = %reason, "the broker blocks this connection's publishes (a resource alarm: memory or disk); requests still commit, and their events wait in the outbox until it clears");
                *blocked = Some((reason, std::time::Instant::now()));
            }
            (Some((_, since)), None) => {
                tracing::info!(service = %mq.service_name, blocked_for = ?since.elapsed(), "the broker unblocked this connection; the outbox drains");
                *blocked = None;
            }
            _ => return,
        }
        crate::metric::broker_blocked(mq.service_name.clone()).set(if blocked.is_some() {
            1.0
        } else {
            0.0
        });
    }

    pub(crate) fn settings(&self) -> &MqSettings {
        &self.inner.mq
    }

    /// The live session, if connected.
    pub(crate) fn current(&self) -> Option<Session> {
        self.inner.session.borrow().clone()
    }

    /// Follow session changes (connects and disconnects).
    pub(crate) fn watch(&self) -> watch::Receiver<Option<Session>> {
        self.inner.session.subscribe()
    }

    /// Wait for a live session; `None` once `shutdown` is cancelled first.
    pub(crate) async fn wait_session(&self, shutdown: &CancellationToken) -> Option<Session> {
        let mut rx = self.watch();
        tokio::select! {
            r = rx.wait_for(Option::is_some) => r.ok().and_then(|s| s.clone()),
            _ = shutdown.cancelled() => None,
        }
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.current()
            .is_some_and(|s| s.connection.status().connected())
    }

    /// Whether deliveries can reach the consumer: attached, and its channel still open;
    /// otherwise why not.
    pub(crate) fn consumer_status(&self) -> Result<(), String> {
        match &*self.lock_consumer() {
            Attachment::Detached(why) => Err(why.clone()),
            Attachment::Attached(channel) if !channel.status().connected() => {
                Err("the consumer's channel is closed".into())
            }
            Attachment::Attached(_) => Ok(()),
        }
    }

    /// The consumer consumes on `channel`.
    pub(crate) fn consumer_attached(&self, channel: &Channel) {
        *self.lock_consumer() = Attachment::Attached(channel.clone());
        self.consumer_gauge(1.0);
    }

    /// The consumer stopped consuming, for `why`.
    pub(crate) fn consumer_detached(&self, why: &str) {
        *self.lock_consumer() = Attachment::Detached(why.to_string());
        self.consumer_gauge(0.0);
    }

    fn consumer_gauge(&self, value: f64) {
        crate::metric::consumer_attached(self.inner.mq.service_name.clone()).set(value);
    }

    fn lock_consumer(&self) -> std::sync::MutexGuard<'_, Attachment> {
        self.inner
            .consumer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A user of session `id` saw it fail (a closed channel, say): replace it.
    pub(crate) fn report_broken(&self, id: u64) {
        if self.current().is_some_and(|s| s.id == id) {
            self.inner.broken_id.store(id, Ordering::SeqCst);
            self.inner.broken.notify_one();
        }
    }

    /// Close the connection cleanly (end of shutdown).
    pub(crate) async fn close(&self) {
        if let Some(session) = self.inner.session.send_replace(None) {
            close_quietly(&session.connection, 200, "shutdown").await;
        }
        crate::metric::broker_connected(self.inner.mq.service_name.clone()).set(0.0);
    }

    async fn supervise(self, shutdown: CancellationToken) {
        let mq = &self.inner.mq;
        let connected_gauge = crate::metric::broker_connected(mq.service_name.clone());
        connected_gauge.set(0.0);
        let mut backoff = BACKOFF_MIN;
        loop {
            let attempt = tokio::select! {
                r = tokio::time::timeout(CONNECT_TIMEOUT, self.connect()) => r.unwrap_or_else(|_| Err(ConnectError::Timeout)),
                _ = shutdown.cancelled() => return,
            };
            match attempt {
                Ok(session) => {
                    backoff = BACKOFF_MIN;
                    let (_, node) = mq.url.node(self.inner.node.load(Ordering::Relaxed));
                    tracing::info!(service = %mq.service_name, broker = node, session = session.id, "connected to the broker");
                    let events = session.connection.events_listener();
                    self.inner.session.send_replace(Some(session.clone()));
                    connected_gauge.set(1.0);
                    tokio::select! {
                        why = self.until_broken(&session, events) => {
                            tracing::warn!(service = %mq.service_name, session = session.id, reason = %why, "broker connection lost; reconnecting");
                        }
                        // The session stays published: shutdown still flushes the outbox
                        // through it before `close`.
                        _ = shutdown.cancelled() => return,
                    }
                    self.inner.session.send_replace(None);
                    connected_gauge.set(0.0);
                    // A new connection starts unblocked; the broker blocks it again if its
                    // alarm still holds.
                    self.set_blocked(None);
                    // The node may be the one that went away: start with the next.
                    self.inner.node.fetch_add(1, Ordering::Relaxed);
                    close_quietly(&session.connection, 320, "reconnecting").await;
                }
                Err(e) => {
                    tracing::warn!(service = %mq.service_name, broker = %mq.url, error = %e, retry_in = ?backoff, "cannot attach to the broker (connect, or declare the topology)");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn connect(&self) -> Result<Session, ConnectError> {
        let mq = &self.inner.mq;
        let props =
            ConnectionProperties::default().with_connection_name(mq.service_name.as_str().into());
        let (url, shown) = mq.url.node(self.inner.node.load(Ordering::Relaxed));
        tracing::debug!(service = %mq.service_name, broker = shown, "connecting");
        let connection = match Connection::connect(url, props).await {
            Ok(c) => c,
            Err(e) => {
                // This node is away: the next attempt goes to the next one.
                self.inner.node.fetch_add(1, Ordering::Relaxed);
                return Err(e.into());
            }
        };
        let setup = connection.create_channel().await?;
        topology::declare(&setup, mq).await?;
        let _ = setup.close(200, "topology declared".into()).await;
        let publisher = Publisher::open(connection.create_channel().await?).await?;
        Ok(Session {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            connection: Arc::new(connection),
            publisher,
        })
    }

    /// Resolves when the session can no longer be used, with the reason.
    async fn until_broken(
        &self,
        session: &Session,
        mut events: impl futures_util::Stream<Item = lapin::Event> + Unpin,
    ) -> String {
        let mut poll = tokio::time::interval(Duration::from_secs(1));
        let mut ticks: u64 = 0;
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(lapin::Event::Error(e)) => return e.to_string(),
                    Some(lapin::Event::ConnectionBlocked(reason)) => self.set_blocked(Some(reason)),
                    Some(lapin::Event::ConnectionUnblocked) => self.set_blocked(None),
                    Some(_) => {}
                    None => return "event stream ended".into(),
                },
                _ = self.inner.broken.notified() => {
                    // A report about an earlier session can leave a wake-up behind (the
                    // supervisor had already seen that one fail): only this session's counts.
                    let reported = self.inner.broken_id.load(Ordering::SeqCst);
                    tracing::debug!(session = session.id, reported, "supervisor: a user reported a session broken");
                    if reported == session.id {
                        return "a channel of this connection failed".into();
                    }
                }
                _ = poll.tick() => {
                    ticks += 1;
                    if ticks % DLQ_POLL_TICKS == 1 {
                        // Bounded: on a half-dead socket the broker may never answer, and a
                        // supervisor waiting here would not see the connection fail.
                        if tokio::time::timeout(Duration::from_secs(5), self.record_dead_letters(session)).await.is_err() {
                            tracing::debug!(session = session.id, "supervisor: the dead-letter depth check got no answer");
                        }
                    }
                    if !session.connection.status().connected() {
                        return "connection is no longer connected".into();
                    }
                    // A block that came before the listener did is still in the status.
                    let known = self.inner.blocked.lock().unwrap_or_else(|e| e.into_inner()).is_some();
                    if session.connection.status().blocked() && !known {
                        self.set_blocked(Some("reason not received".into()));
                    }
                    if !session.publisher.channel().status().connected() {
                        return "publishing channel closed".into();
                    }
                }
            }
        }
    }
}

/// Close a connection, but never wait long: on a half-dead socket the broker's Close-Ok
/// may never come, and a supervisor stuck here would never reconnect.
async fn close_quietly(connection: &Connection, code: u16, reason: &str) {
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        connection.close(code, reason.into()),
    )
    .await;
}

/// How often (in 1 s ticks) the dead-letter queue's depth is read for the metrics.
const DLQ_POLL_TICKS: u64 = 15;

impl Broker {
    /// Read the dead-letter queue's depth (a passive declare) into a gauge.
    async fn record_dead_letters(&self, session: &Session) {
        let mq = &self.inner.mq;
        let dlq = topology::dead_letter_queue(&mq.queue);
        if let Ok((messages, _)) = topology::inspect_queue(&session.connection, &dlq).await {
            crate::metric::dead_letter_queue_messages(mq.service_name.clone(), dlq)
                .set(messages as f64);
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("{0}")]
    Amqp(#[from] lapin::Error),
    #[error("timed out after {CONNECT_TIMEOUT:?}")]
    Timeout,
}
