//! The event envelope (docs/architecture.md §3), wire-compatible with the Python `mq.py`
//! helper our users started from. The typed events inside it are in [`crate::events`].
//!
//! Decoding sorts failures into the ones that can never succeed ([`DecodeError`]): those
//! messages are parked at once instead of being retried.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::versions::Pins;
pub use super::DecodeError;
use crate::events::Event;

/// The JSON body of every message: the six fields of `mq.py` plus the two tracing fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub event_type: String,
    pub event_version: u32,
    pub event_id: String,
    pub timestamp: String,
    pub producer: String,
    pub data: Value,
    /// The `event_id` of the first event of the chain this one belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The `event_id` of the event whose handling produced this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
}

impl Envelope {
    /// A new envelope for `event` in its type's newest version, starting a new chain (its
    /// own id is the correlation id).
    pub fn new(event: &Event, producer: &str) -> Self {
        Self::with_data(event, producer, event.event_type().newest(), event.data())
    }

    /// A new envelope for `event` in the version `emit` pins for its type, or why that
    /// version cannot say it.
    pub fn pinned(event: &Event, producer: &str, emit: &Pins) -> Result<Self, String> {
        let version = emit.of(event.event_type());
        let data = event.data_at(version)?;
        Ok(Self::with_data(event, producer, version, data))
    }

    fn with_data(event: &Event, producer: &str, version: u32, data: Value) -> Self {
        let event_id = crate::domain::new_id();
        Self {
            event_type: event.event_type().routing_key().to_string(),
            event_version: version,
            correlation_id: Some(event_id.clone()),
            event_id,
            timestamp: now_rfc3339(),
            producer: producer.to_string(),
            data,
            causation_id: None,
        }
    }

    /// A new envelope for `event`, caused by handling `cause`: same chain, cause recorded.
    pub fn caused_by(cause: &Envelope, event: &Event, producer: &str) -> Self {
        let mut env = Self::new(event, producer);
        env.correlation_id = Some(cause.chain_id().to_string());
        env.causation_id = Some(cause.event_id.clone());
        env
    }

    /// The chain this event belongs to: its correlation id, or its own id for the first.
    pub fn chain_id(&self) -> &str {
        self.correlation_id.as_deref().unwrap_or(&self.event_id)
    }

    /// Parse a message body. Unknown extra fields are ignored, as the contract says.
    pub fn from_bytes(body: &[u8]) -> Result<Self, DecodeError> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| DecodeError::NotJson(e.to_string()))?;
        let env: Envelope =
            serde_json::from_value(value).map_err(|e| DecodeError::NotEnvelope(e.to_string()))?;
        if env.event_id.trim().is_empty() {
            return Err(DecodeError::NotEnvelope("event_id is empty".into()));
        }
        Ok(env)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising a struct of strings and a `Value` cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The typed event inside, upcast to its type's newest version.
    pub fn event(&self) -> Result<Event, DecodeError> {
        self.event_reading(&Pins::default())
    }

    /// The typed event inside, for a consumer reading the versions `reads` pins (its
    /// `EVENT_READ_VERSIONS`), upcast to its type's newest version.
    pub fn event_reading(&self, reads: &Pins) -> Result<Event, DecodeError> {
        Event::decode(&self.event_type, self.event_version, &self.data, reads)
    }
}

/// The current time in RFC 3339, UTC.
pub fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{ElectionCreate, ElectionStart, VotingCreate};
    use crate::messaging::decision::ParkReason;

    #[test]
    fn the_mq_py_format_decodes() {
        // Exactly what mq.py's publish_event writes (Python isoformat timestamp).
        let body = br#"{"event_type": "agenda.election.create", "event_version": 1,
            "event_id": "6f1c1a8e-3f55-4f0e-9a55-4c1b4b1c2d3e",
            "timestamp": "2026-11-28T11:00:00.123456+00:00", "producer": "meeting-service",
            "data": {"meeting_id": "m1", "agenda_item_id": "a1", "title": "Chair"}}"#;
        let env = Envelope::from_bytes(body).unwrap();
        assert_eq!(env.correlation_id, None);
        assert_eq!(env.chain_id(), env.event_id);
        assert_eq!(
            env.event().unwrap(),
            Event::ElectionCreate(ElectionCreate {
                meeting_id: "m1".into(),
                agenda_item_id: "a1".into(),
                title: "Chair".into(),
                seats: 1,
            })
        );
    }

    #[test]
    fn ours_carry_exactly_the_mq_py_fields_plus_tracing() {
        let cause = Envelope::new(
            &Event::ElectionStart(ElectionStart {
                meeting_id: "m".into(),
                agenda_item_id: "a".into(),
            }),
            "meeting-service",
        );
        let event = Event::VotingCreate(VotingCreate {
            election_id: "e".into(),
            meeting_id: "m".into(),
            agenda_item_id: "a".into(),
            candidates: vec!["ada".into()],
        });
        let env = Envelope::caused_by(&cause, &event, "election-service");
        let json: Value = serde_json::from_slice(&env.to_bytes()).unwrap();
        let mut keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "causation_id",
                "correlation_id",
                "data",
                "event_id",
                "event_type",
                "event_version",
                "producer",
                "timestamp"
            ]
        );
        assert_eq!(env.correlation_id.as_deref(), Some(cause.event_id.as_str()));
        assert_eq!(env.causation_id.as_deref(), Some(cause.event_id.as_str()));
        assert!(OffsetDateTime::parse(&env.timestamp, &Rfc3339).is_ok());
        assert_eq!(Envelope::from_bytes(&env.to_bytes()).unwrap(), env);
    }

    #[test]
    fn what_can_never_succeed_is_classified() {
        let cases: [(&[u8], ParkReason); 5] = [
            (b"\xff\xfe", ParkReason::NotJson),
            (b"{\"hello\": 1}", ParkReason::NotEnvelope),
            (
                br#"{"event_type":"voting.create","event_version":2,"event_id":"x","timestamp":"t","producer":"p","data":{}}"#,
                ParkReason::UnknownVersion,
            ),
            (
                br#"{"event_type":"voting.create","event_version":1,"event_id":"","timestamp":"t","producer":"p","data":{}}"#,
                ParkReason::NotEnvelope,
            ),
            (
                br#"{"event_type":"voting.create","event_version":1,"event_id":"x","timestamp":"t","producer":"p","data":{"meeting_id":"m"}}"#,
                ParkReason::BadData,
            ),
        ];
        for (body, kind) in cases {
            let err = Envelope::from_bytes(body).and_then(|e| e.event().map(|_| ()));
            assert_eq!(ParkReason::from(&err.unwrap_err()), kind);
        }
    }
}
