//! Whether an attached consumer can still receive (docs/architecture.md §5): the monitor
//! that asks the broker about the queue, and the verdict on what it answers and what the
//! consumer itself has seen ([`judge`], pure logic).
//!
//! A consumer that looks attached can still be cut off: the broker may have dropped it (a
//! queue deleted and declared again, a cancel the client missed) while the channel stays
//! open, or deliveries may stop reaching it. The consumer's monitor asks the broker every
//! `MQ_CONSUMER_CHECK` for the queue's ready messages and consumers (a passive declare) and
//! acts on [`judge`]'s verdict; [`monitor`] is that loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lapin::Channel;

use crate::config::MqSettings;
use crate::messaging::{topology, Session};

/// What a passive declare of the queue answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct QueueCheck {
    /// Messages ready for delivery (not those delivered and awaiting an ack).
    pub(crate) ready: u32,
    /// Consumers the broker lists on the queue (this replica's and any other's).
    pub(crate) consumers: u32,
}

/// The verdict on one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Deliveries can arrive.
    Healthy,
    /// The broker lists no consumer on the queue: ours is gone whatever the client thinks.
    NotListed,
    /// Messages are ready, yet this consumer has neither received nor settled anything for
    /// `idle`, longer than the watchdog allows.
    Stalled { ready: u32, idle: Duration },
}

/// Judge one check. `idle` is the time since the consumer last received or settled a
/// delivery (or attached); `limit` is `MQ_CONSUMER_WATCHDOG`.
pub(crate) fn judge(check: QueueCheck, idle: Duration, limit: Duration) -> Verdict {
    if check.consumers == 0 {
        return Verdict::NotListed;
    }
    if check.ready > 0 && idle >= limit {
        return Verdict::Stalled {
            ready: check.ready,
            idle,
        };
    }
    Verdict::Healthy
}

/// Why a consumer was detached and replaced: a closed set, the `reason` label of
/// `consumer_restarts_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Detached {
    /// The broker connection went away or was replaced.
    Connection,
    /// Opening the channel, setting the prefetch or `basic.consume` failed.
    AttachFailed,
    /// The delivery stream ended or failed (a broker-side cancel, a channel error).
    StreamEnded,
    /// The consumer's channel is no longer open.
    ChannelClosed,
    /// The broker lists no consumer on the queue.
    NotListed,
    /// Ready messages, and nothing received for `MQ_CONSUMER_WATCHDOG`.
    Stalled,
    /// The queue does not exist any more (reconnecting declares it again).
    QueueMissing,
    /// The broker did not answer the queue check several times in a row.
    CheckFailed,
}

impl Detached {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Detached::Connection => "connection",
            Detached::AttachFailed => "attach_failed",
            Detached::StreamEnded => "stream_ended",
            Detached::ChannelClosed => "channel_closed",
            Detached::NotListed => "not_listed",
            Detached::Stalled => "stalled",
            Detached::QueueMissing => "queue_missing",
            Detached::CheckFailed => "check_failed",
        }
    }

    /// Whether a new consumer may be opened on the same connection, when it is still up.
    /// The others replace the connection: a failed attach or a missing queue needs the
    /// topology declared again, an unanswered check suggests a half-dead socket.
    pub(crate) fn keeps_connection(self) -> bool {
        matches!(
            self,
            Detached::StreamEnded
                | Detached::ChannelClosed
                | Detached::NotListed
                | Detached::Stalled
        )
    }
}

/// Unanswered queue checks in a row before the connection is presumed dead.
pub(crate) const CHECK_FAILURES: u32 = 3;

/// Why a consumer stopped receiving.
pub(crate) struct Lost {
    pub(crate) reason: Detached,
    pub(crate) detail: String,
}

impl Lost {
    pub(crate) fn new(reason: Detached, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// When the consumer last received or settled a delivery (or attached).
pub(crate) struct Progress {
    since: Instant,
    last_ms: AtomicU64,
}

impl Progress {
    pub(crate) fn new() -> Self {
        Self {
            since: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    pub(crate) fn touch(&self) {
        self.last_ms
            .store(self.since.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub(crate) fn idle(&self) -> Duration {
        self.since
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// Ready messages and consumers of `queue`, as the broker counts them.
async fn check_queue(session: &Session, queue: &str) -> lapin::Result<QueueCheck> {
    let (ready, consumers) = topology::inspect_queue(&session.connection, queue).await?;
    Ok(QueueCheck { ready, consumers })
}

/// Whether the broker answered 404 NOT_FOUND (the queue does not exist).
fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 404)
}

/// Ask the broker every `MQ_CONSUMER_CHECK` whether this consumer can still receive
/// ([`judge`]); resolves with the reason once it cannot.
pub(crate) async fn monitor(
    mq: &MqSettings,
    session: &Session,
    channel: &Channel,
    progress: &Progress,
) -> Lost {
    let mut tick = tokio::time::interval(mq.consumer_check);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut failures = 0;
    loop {
        tick.tick().await;
        if !channel.status().connected() {
            return Lost::new(Detached::ChannelClosed, "the consumer's channel is closed");
        }
        let answer = tokio::time::timeout(
            mq.consumer_check.max(Duration::from_secs(2)),
            check_queue(session, &mq.queue),
        )
        .await;
        let check = match answer {
            Ok(Ok(check)) => check,
            Ok(Err(e)) if is_not_found(&e) => {
                return Lost::new(Detached::QueueMissing, format!("the queue is gone: {e}"));
            }
            Ok(Err(e)) => {
                failures += 1;
                tracing::debug!(session = session.id, failures, error = %e, "consumer: queue check failed");
                if failures >= CHECK_FAILURES {
                    return Lost::new(
                        Detached::CheckFailed,
                        format!("{failures} queue checks failed, the last: {e}"),
                    );
                }
                continue;
            }
            Err(_) => {
                failures += 1;
                tracing::debug!(
                    session = session.id,
                    failures,
                    "consumer: queue check got no answer"
                );
                if failures >= CHECK_FAILURES {
                    return Lost::new(
                        Detached::CheckFailed,
                        format!("{failures} queue checks got no answer"),
                    );
                }
                continue;
            }
        };
        failures = 0;
        let idle = progress.idle();
        tracing::debug!(session = session.id, ready = check.ready, consumers = check.consumers, idle = ?idle,
            connection = connection_state(&session.connection), channel = channel_state(channel), "consumer: queue checked");
        match judge(check, idle, mq.consumer_watchdog) {
            Verdict::Healthy => {}
            Verdict::NotListed => {
                return Lost::new(
                    Detached::NotListed,
                    "the broker lists no consumer on the queue",
                );
            }
            Verdict::Stalled { ready, idle } => {
                crate::metric::consumer_stalls_total(mq.service_name.clone()).increment(1);
                return Lost::new(
                    Detached::Stalled,
                    format!("{ready} messages ready on the queue and nothing received or settled for {:.0}s", idle.as_secs_f64()),
                );
            }
        }
    }
}

/// A connection's state, for the logs.
pub(crate) fn connection_state(connection: &lapin::Connection) -> &'static str {
    let status = connection.status();
    match () {
        _ if status.connected() => "connected",
        _ if status.connecting() => "connecting",
        _ if status.reconnecting() => "reconnecting",
        _ if status.closing() => "closing",
        _ if status.errored() => "errored",
        _ => "closed",
    }
}

/// A channel's state, for the logs.
pub(crate) fn channel_state(channel: &lapin::Channel) -> &'static str {
    let status = channel.status();
    match () {
        _ if status.connected() => "connected",
        _ if status.initializing() => "initializing",
        _ if status.reconnecting() => "reconnecting",
        _ if status.closing() => "closing",
        _ => "closed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(30);

    fn check(ready: u32, consumers: u32) -> QueueCheck {
        QueueCheck { ready, consumers }
    }

    #[test]
    fn a_queue_without_consumers_means_ours_is_gone() {
        assert_eq!(
            judge(check(0, 0), Duration::ZERO, LIMIT),
            Verdict::NotListed
        );
        assert_eq!(
            judge(check(9, 0), Duration::ZERO, LIMIT),
            Verdict::NotListed
        );
    }

    #[test]
    fn an_idle_consumer_on_an_empty_queue_is_healthy_however_long() {
        assert_eq!(
            judge(check(0, 1), Duration::from_secs(3600), LIMIT),
            Verdict::Healthy
        );
    }

    #[test]
    fn ready_messages_are_a_stall_only_after_the_watchdog_time() {
        assert_eq!(
            judge(check(5, 1), Duration::from_secs(29), LIMIT),
            Verdict::Healthy
        );
        assert_eq!(
            judge(check(5, 2), LIMIT, LIMIT),
            Verdict::Stalled {
                ready: 5,
                idle: LIMIT
            }
        );
    }

    #[test]
    fn only_consumer_level_losses_keep_the_connection() {
        for (d, keeps) in [
            (Detached::Connection, false),
            (Detached::AttachFailed, false),
            (Detached::QueueMissing, false),
            (Detached::CheckFailed, false),
            (Detached::StreamEnded, true),
            (Detached::ChannelClosed, true),
            (Detached::NotListed, true),
            (Detached::Stalled, true),
        ] {
            assert_eq!(d.keeps_connection(), keeps, "{d:?}");
        }
    }
}
