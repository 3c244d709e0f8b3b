//! Whether an attached consumer can still receive (docs/architecture.md §5): the verdict on
//! what the broker says of the queue and what the consumer itself has seen, as pure logic.
//!
//! A consumer that looks attached can still be cut off: the broker may have dropped it (a
//! queue deleted and declared again, a cancel the client missed) while the channel stays
//! open, or deliveries may stop reaching it. The consumer's monitor asks the broker every
//! `MQ_CONSUMER_CHECK` for the queue's ready messages and consumers (a passive declare) and
//! acts on [`judge`]'s verdict.

use std::time::Duration;

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
