//! The wire format (docs/architecture.md §3), the bottom floor of the crate: the envelope of
//! every message, wire-compatible with the Python `mq.py` helper, and the catalogue of the
//! events inside it. It knows nothing of roles, brokers or stores.

pub mod envelope;
pub mod events;
pub mod schemas;
pub mod versions;

/// Why a message can never be handled, whatever the number of retries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("body is not UTF-8 JSON: {0}")]
    NotJson(String),
    #[error("body is {size} bytes, over the limit of {max}; not read")]
    TooLarge { size: usize, max: usize },
    #[error("body is not an event envelope: {0}")]
    NotEnvelope(String),
    #[error("event_version {version} of {event_type} is not read here: {reason}")]
    UnknownVersion {
        event_type: String,
        version: u32,
        reason: String,
    },
    #[error("event type {0:?} is not handled here")]
    UnknownType(String),
    #[error("data of {event_type} is invalid: {reason}")]
    BadData { event_type: String, reason: String },
}
