//! What the consumer does with a delivery, decided from the outcome of handling it and the
//! attempts already made — a pure function, so every branch is unit-tested without a broker
//! (docs/architecture.md §5).

use std::fmt;
use std::time::Duration;

use crate::envelope::DecodeError;

/// Why a message was parked in the dead-letter queue. Its [`label`](Self::label) is the
/// `reason` label of `events_parked_total` and the first word of the `x-reason` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParkReason {
    /// The body is not UTF-8 JSON.
    NotJson,
    /// The body is over `MQ_MAX_MESSAGE_BYTES`: parked without being parsed.
    TooLarge,
    /// JSON, but not an event envelope.
    NotEnvelope,
    /// An `event_version` this consumer does not read (docs/architecture.md §3).
    UnknownVersion,
    /// An `event_type` that is not in the catalogue.
    UnknownType,
    /// The `data` does not fit the event's payload type.
    BadData,
    /// The handler refused the event: it contradicts what this role knows.
    Rejected,
    /// The handler kept failing until the last retry delay was used up.
    RetriesExhausted,
    /// The event's id was applied before with another body.
    Conflict,
    /// Strict mode: the event came from a broker user that is not among its producers.
    UntrustedProducer,
}

impl ParkReason {
    /// Every reason.
    #[cfg(test)]
    pub const ALL: [ParkReason; 10] = [
        ParkReason::NotJson,
        ParkReason::TooLarge,
        ParkReason::NotEnvelope,
        ParkReason::UnknownVersion,
        ParkReason::UnknownType,
        ParkReason::BadData,
        ParkReason::Rejected,
        ParkReason::RetriesExhausted,
        ParkReason::Conflict,
        ParkReason::UntrustedProducer,
    ];

    /// A short, stable label for metrics and headers.
    pub fn label(self) -> &'static str {
        match self {
            ParkReason::NotJson => "not_json",
            ParkReason::TooLarge => "too_large",
            ParkReason::NotEnvelope => "not_envelope",
            ParkReason::UnknownVersion => "unknown_version",
            ParkReason::UnknownType => "unknown_type",
            ParkReason::BadData => "bad_data",
            ParkReason::Rejected => "rejected",
            ParkReason::RetriesExhausted => "retries_exhausted",
            ParkReason::Conflict => "conflict",
            ParkReason::UntrustedProducer => "untrusted_producer",
        }
    }
}

impl fmt::Display for ParkReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl From<&DecodeError> for ParkReason {
    fn from(e: &DecodeError) -> Self {
        match e {
            DecodeError::NotJson(_) => ParkReason::NotJson,
            DecodeError::TooLarge { .. } => ParkReason::TooLarge,
            DecodeError::NotEnvelope(_) => ParkReason::NotEnvelope,
            DecodeError::UnknownVersion { .. } => ParkReason::UnknownVersion,
            DecodeError::UnknownType(_) => ParkReason::UnknownType,
            DecodeError::BadData { .. } => ParkReason::BadData,
        }
    }
}

/// How handling one delivery went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handled {
    /// Applied now, or found in the inbox (a duplicate): either way it is done.
    Done,
    /// Can never succeed: the message did not decode, or the handler refused it.
    Impossible(ParkReason),
    /// May succeed later: a predecessor has not arrived, the store was busy.
    Failed,
}

/// What the consumer does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Acknowledge: the delivery is finished.
    Ack,
    /// Send it to the wait queue of `delay`; this was attempt number `attempt`.
    Retry { delay: Duration, attempt: u64 },
    /// Park it in the dead-letter queue after `attempts` attempts.
    Park { reason: ParkReason, attempts: u64 },
}

/// Decide from the outcome, the attempts the message made before (`x-attempts`, 0 when
/// new) and the configured retry delays.
pub fn decide(handled: Handled, previous_attempts: u64, delays: &[Duration]) -> Decision {
    let attempt = previous_attempts.saturating_add(1);
    match handled {
        Handled::Done => Decision::Ack,
        Handled::Impossible(reason) => Decision::Park {
            reason,
            attempts: attempt,
        },
        Handled::Failed => match usize::try_from(previous_attempts)
            .ok()
            .and_then(|i| delays.get(i))
        {
            Some(delay) => Decision::Retry {
                delay: *delay,
                attempt,
            },
            None => Decision::Park {
                reason: ParkReason::RetriesExhausted,
                attempts: attempt,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAYS: [Duration; 2] = [Duration::from_millis(200), Duration::from_millis(400)];

    #[test]
    fn each_outcome_leads_to_its_decision() {
        let cases = [
            (Handled::Done, 0, Decision::Ack),
            (Handled::Done, 5, Decision::Ack),
            (
                Handled::Impossible(ParkReason::NotJson),
                0,
                Decision::Park {
                    reason: ParkReason::NotJson,
                    attempts: 1,
                },
            ),
            (
                Handled::Impossible(ParkReason::Rejected),
                1,
                Decision::Park {
                    reason: ParkReason::Rejected,
                    attempts: 2,
                },
            ),
            (
                Handled::Failed,
                0,
                Decision::Retry {
                    delay: DELAYS[0],
                    attempt: 1,
                },
            ),
            (
                Handled::Failed,
                1,
                Decision::Retry {
                    delay: DELAYS[1],
                    attempt: 2,
                },
            ),
            (
                Handled::Failed,
                2,
                Decision::Park {
                    reason: ParkReason::RetriesExhausted,
                    attempts: 3,
                },
            ),
            (
                Handled::Failed,
                u64::MAX,
                Decision::Park {
                    reason: ParkReason::RetriesExhausted,
                    attempts: u64::MAX,
                },
            ),
        ];
        for (handled, before, expected) in cases {
            assert_eq!(
                decide(handled, before, &DELAYS),
                expected,
                "{handled:?} after {before}"
            );
        }
    }

    #[test]
    fn without_delays_a_failure_is_parked_at_once() {
        assert_eq!(
            decide(Handled::Failed, 0, &[]),
            Decision::Park {
                reason: ParkReason::RetriesExhausted,
                attempts: 1
            }
        );
    }

    #[test]
    fn labels_are_distinct() {
        let mut labels: Vec<_> = ParkReason::ALL.iter().map(|r| r.label()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), ParkReason::ALL.len());
    }
}
