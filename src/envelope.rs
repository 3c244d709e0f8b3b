//! The event envelope (design §3), wire-compatible with the seed's Python `mq.py`, and the
//! typed events of the catalogue (design §4).
//!
//! Decoding sorts failures into the ones that can never succeed ([`DecodeError`]): those
//! messages are parked at once instead of being retried.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

/// The only `event_version` this build understands.
pub const EVENT_VERSION: u32 = 1;

/// The JSON body of every message: the seed's six fields plus the two tracing fields.
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

/// Why a message can never be handled, whatever the number of retries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("body is not UTF-8 JSON: {0}")]
    NotJson(String),
    #[error("body is not an event envelope: {0}")]
    NotEnvelope(String),
    #[error("event_version {0} is not supported (this build knows {EVENT_VERSION})")]
    UnknownVersion(u32),
    #[error("event type {0:?} is not handled here")]
    UnknownType(String),
    #[error("data of {event_type} is invalid: {reason}")]
    BadData { event_type: String, reason: String },
}

impl DecodeError {
    /// A short, stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::NotJson(_) => "not_json",
            DecodeError::NotEnvelope(_) => "not_envelope",
            DecodeError::UnknownVersion(_) => "unknown_version",
            DecodeError::UnknownType(_) => "unknown_type",
            DecodeError::BadData { .. } => "bad_data",
        }
    }
}

impl Envelope {
    /// A new envelope for `event`, starting a new chain (its own id is the correlation id).
    pub fn new(event: &Event, producer: &str) -> Self {
        let event_id = Uuid::new_v4().to_string();
        Self {
            event_type: event.event_type().to_string(),
            event_version: EVENT_VERSION,
            correlation_id: Some(event_id.clone()),
            event_id,
            timestamp: now_rfc3339(),
            producer: producer.to_string(),
            data: event.data(),
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
        if env.event_version != EVENT_VERSION {
            return Err(DecodeError::UnknownVersion(env.event_version));
        }
        Ok(env)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising a struct of strings and a `Value` cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The typed event inside.
    pub fn event(&self) -> Result<Event, DecodeError> {
        Event::from_parts(&self.event_type, &self.data)
    }
}

/// The current time in RFC 3339, UTC.
pub fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// `meeting.created`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeetingCreated {
    pub meeting_id: String,
    pub title: String,
    pub created_by: String,
}

/// `agenda.election.create`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ElectionCreate {
    pub meeting_id: String,
    pub agenda_item_id: String,
    pub title: String,
}

/// `agenda.election.start`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ElectionStart {
    pub meeting_id: String,
    pub agenda_item_id: String,
}

/// `voting.create`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VotingCreate {
    pub election_id: String,
    pub meeting_id: String,
    pub agenda_item_id: String,
    pub candidates: Vec<String>,
}

/// `voting.completed`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VotingCompleted {
    pub ballot_id: String,
    pub election_id: String,
    pub meeting_id: String,
    pub tally: BTreeMap<String, u64>,
    pub votes_cast: u64,
}

/// How an election ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// One candidate has the most votes.
    Elected,
    /// Several candidates share the most votes; all of them are winners.
    Tie,
    /// The ballot closed without a vote.
    NoVotes,
    /// Started with no candidates: no ballot was held.
    Cancelled,
}

/// `election.finalized`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ElectionFinalized {
    pub election_id: String,
    pub meeting_id: String,
    pub agenda_item_id: String,
    pub winners: Vec<String>,
    pub tally: BTreeMap<String, u64>,
    pub outcome: Outcome,
}

/// `permission.granted` / `permission.revoked`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PermissionChange {
    pub meeting_id: String,
    pub user_id: String,
    pub role: String,
}

/// Every event of the catalogue, typed.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    MeetingCreated(MeetingCreated),
    ElectionCreate(ElectionCreate),
    ElectionStart(ElectionStart),
    VotingCreate(VotingCreate),
    VotingCompleted(VotingCompleted),
    ElectionFinalized(ElectionFinalized),
    PermissionGranted(PermissionChange),
    PermissionRevoked(PermissionChange),
}

/// Every routing key of the catalogue.
pub const EVENT_TYPES: [&str; 8] = [
    "meeting.created",
    "agenda.election.create",
    "agenda.election.start",
    "voting.create",
    "voting.completed",
    "election.finalized",
    "permission.granted",
    "permission.revoked",
];

impl Event {
    /// The routing key, which is also the envelope's `event_type`.
    pub fn event_type(&self) -> &'static str {
        match self {
            Event::MeetingCreated(_) => EVENT_TYPES[0],
            Event::ElectionCreate(_) => EVENT_TYPES[1],
            Event::ElectionStart(_) => EVENT_TYPES[2],
            Event::VotingCreate(_) => EVENT_TYPES[3],
            Event::VotingCompleted(_) => EVENT_TYPES[4],
            Event::ElectionFinalized(_) => EVENT_TYPES[5],
            Event::PermissionGranted(_) => EVENT_TYPES[6],
            Event::PermissionRevoked(_) => EVENT_TYPES[7],
        }
    }

    /// The `data` object of the envelope.
    pub fn data(&self) -> Value {
        let v = match self {
            Event::MeetingCreated(d) => serde_json::to_value(d),
            Event::ElectionCreate(d) => serde_json::to_value(d),
            Event::ElectionStart(d) => serde_json::to_value(d),
            Event::VotingCreate(d) => serde_json::to_value(d),
            Event::VotingCompleted(d) => serde_json::to_value(d),
            Event::ElectionFinalized(d) => serde_json::to_value(d),
            Event::PermissionGranted(d) | Event::PermissionRevoked(d) => serde_json::to_value(d),
        };
        v.unwrap_or(Value::Null)
    }

    /// Type `data` according to `event_type`.
    pub fn from_parts(event_type: &str, data: &Value) -> Result<Self, DecodeError> {
        fn typed<T: DeserializeOwned>(event_type: &str, data: &Value) -> Result<T, DecodeError> {
            T::deserialize(data).map_err(|e| DecodeError::BadData {
                event_type: event_type.to_string(),
                reason: e.to_string(),
            })
        }
        Ok(match event_type {
            "meeting.created" => Event::MeetingCreated(typed(event_type, data)?),
            "agenda.election.create" => Event::ElectionCreate(typed(event_type, data)?),
            "agenda.election.start" => Event::ElectionStart(typed(event_type, data)?),
            "voting.create" => Event::VotingCreate(typed(event_type, data)?),
            "voting.completed" => Event::VotingCompleted(typed(event_type, data)?),
            "election.finalized" => Event::ElectionFinalized(typed(event_type, data)?),
            "permission.granted" => Event::PermissionGranted(typed(event_type, data)?),
            "permission.revoked" => Event::PermissionRevoked(typed(event_type, data)?),
            other => return Err(DecodeError::UnknownType(other.to_string())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_format_decodes() {
        // Exactly what the seed's publish_event writes (Python isoformat timestamp).
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
                title: "Chair".into()
            })
        );
    }

    #[test]
    fn ours_carry_exactly_the_seed_fields_plus_tracing() {
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
        let cases: [(&[u8], &str); 5] = [
            (b"\xff\xfe", "not_json"),
            (b"{\"hello\": 1}", "not_envelope"),
            (
                br#"{"event_type":"voting.create","event_version":2,"event_id":"x","timestamp":"t","producer":"p","data":{}}"#,
                "unknown_version",
            ),
            (
                br#"{"event_type":"voting.create","event_version":1,"event_id":"","timestamp":"t","producer":"p","data":{}}"#,
                "not_envelope",
            ),
            (
                br#"{"event_type":"voting.create","event_version":1,"event_id":"x","timestamp":"t","producer":"p","data":{"meeting_id":"m"}}"#,
                "bad_data",
            ),
        ];
        for (body, kind) in cases {
            let err = Envelope::from_bytes(body).and_then(|e| e.event().map(|_| ()));
            assert_eq!(err.unwrap_err().kind(), kind);
        }
        let unknown = Event::from_parts("meeting.deleted", &Value::Null).unwrap_err();
        assert_eq!(unknown.kind(), "unknown_type");
    }
}
