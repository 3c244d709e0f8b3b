//! The event catalogue (docs/architecture.md §3): every routing key with its payload type,
//! declared once. Which role publishes and which consume an event is declared by the roles
//! themselves ([`crate::system::RoleDef::publishes`], [`crate::system::RoleDef::consumes`]) and
//! read back here through [`EventType::producers`] and [`EventType::consumers`].

use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::versions::{self, Pins};
use super::DecodeError;
use crate::domain::{ItemKind, MeetingRole, Outcome};

/// Declares the catalogue: the `EventType` names, the typed `Event`, and the mapping
/// between routing keys, payload types and the two.
macro_rules! catalogue {
    ($($(#[$doc:meta])* $variant:ident($payload:ty) = $key:literal;)+) => {
        /// The name of an event of the catalogue, without its data.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventType {
            $($(#[$doc])* $variant),+
        }

        impl EventType {
            /// Every event of the catalogue.
            pub const ALL: &'static [EventType] = &[$(EventType::$variant),+];

            /// The routing key, which is also the envelope's `event_type`.
            pub fn routing_key(self) -> &'static str {
                match self {
                    $(EventType::$variant => $key),+
                }
            }
        }

        /// Every event of the catalogue, typed.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Event {
            $($(#[$doc])* $variant($payload)),+
        }

        impl Event {
            /// Which event this is.
            pub fn event_type(&self) -> EventType {
                match self {
                    $(Event::$variant(_) => EventType::$variant),+
                }
            }

            /// The meeting the event belongs to: every event of the catalogue names one.
            pub fn meeting_id(&self) -> &str {
                match self {
                    $(Event::$variant(d) => &d.meeting_id),+
                }
            }

            /// The `data` object of the envelope, in the type's newest version.
            pub fn data(&self) -> Value {
                let value = match self {
                    $(Event::$variant(d) => serde_json::to_value(d)),+
                };
                // Payloads are plain structs of strings, numbers and maps: they serialise.
                value.unwrap_or(Value::Null)
            }

            /// Type `data` of the newest version of `kind`.
            fn of_newest(kind: EventType, data: &Value) -> Result<Self, DecodeError> {
                Ok(match kind {
                    $(EventType::$variant => Event::$variant(typed(kind, data)?)),+
                })
            }
        }

        impl EventType {
            /// The JSON Schema of the newest version's `data`, from its Rust type.
            pub(super) fn newest_schema(self) -> schemars::Schema {
                match self {
                    $(EventType::$variant => schemars::schema_for!($payload)),+
                }
            }
        }
    };
}

impl Event {
    /// Type `data` of version `version` of `event_type` for a consumer that reads the
    /// versions `reads` pins: upcast step by step to the newest, which handlers see; a newer
    /// version than it reads is read as its own only across forward-compatible steps.
    pub fn decode(
        event_type: &str,
        version: u32,
        data: &Value,
        reads: &Pins,
    ) -> Result<Self, DecodeError> {
        let kind = EventType::from_routing_key(event_type)
            .ok_or_else(|| DecodeError::UnknownType(event_type.to_string()))?;
        let reads = reads.of(kind);
        if let Some(reason) = versions::unreadable(kind, version, reads) {
            return Err(DecodeError::UnknownVersion {
                event_type: kind.routing_key().to_string(),
                version,
                reason,
            });
        }
        let Value::Object(map) = data else {
            return Err(DecodeError::BadData {
                event_type: kind.routing_key().to_string(),
                reason: "data is not a JSON object".into(),
            });
        };
        let mut map = map.clone();
        // Newer than this consumer reads, across forward-compatible steps: read as its
        // own newest, dropping what it would not know, exactly as an older build would.
        let arrived = if version > reads {
            versions::convert(kind, &mut map, version, reads).map_err(|reason| {
                DecodeError::UnknownVersion {
                    event_type: kind.routing_key().to_string(),
                    version,
                    reason,
                }
            })?;
            reads
        } else {
            version
        };
        versions::convert(kind, &mut map, arrived, kind.newest()).map_err(|reason| {
            DecodeError::BadData {
                event_type: kind.routing_key().to_string(),
                reason,
            }
        })?;
        Self::of_newest(kind, &Value::Object(map))
    }

    /// The `data` object in version `version` of its type, or why that version cannot say
    /// this event.
    pub fn data_at(&self, version: u32) -> Result<Value, String> {
        let kind = self.event_type();
        match self.data() {
            Value::Object(mut map) if version != kind.newest() => {
                versions::convert(kind, &mut map, kind.newest(), version)
                    .map_err(|why| format!("{kind} version {version}: {why}"))?;
                Ok(Value::Object(map))
            }
            data => Ok(data),
        }
    }

    /// Type `data` of the newest version of `event_type`.
    pub fn from_parts(event_type: &str, data: &Value) -> Result<Self, DecodeError> {
        let kind = EventType::from_routing_key(event_type)
            .ok_or_else(|| DecodeError::UnknownType(event_type.to_string()))?;
        Self::decode(event_type, kind.newest(), data, &Pins::default())
    }
}

catalogue! {
    /// `meeting.created`: a meeting exists; its creator is to become its manager.
    MeetingCreated(MeetingCreated) = "meeting.created";
    /// `agenda.item.added`: an item was added to a meeting's agenda.
    AgendaItemAdded(AgendaItemAdded) = "agenda.item.added";
    /// `agenda.item.opened`: an agenda item became the meeting's current one.
    AgendaItemOpened(AgendaItemOpened) = "agenda.item.opened";
    /// `agenda.election.create`: the meeting opened an election item.
    ElectionCreate(ElectionCreate) = "agenda.election.create";
    /// `agenda.election.start`: nominations close, the vote starts.
    ElectionStart(ElectionStart) = "agenda.election.start";
    /// `election.opened`: an election item's election exists and takes nominations.
    ElectionOpened(ElectionOpened) = "election.opened";
    /// `election.nomination.accepted`: a candidate stands in an election.
    NominationAccepted(NominationAccepted) = "election.nomination.accepted";
    /// `voting.create`: open a ballot over these candidates.
    VotingCreate(VotingCreate) = "voting.create";
    /// `voting.ballot.opened`: a ballot is open for votes.
    BallotOpened(BallotOpened) = "voting.ballot.opened";
    /// `voting.vote.counted`: one more vote on a ballot (never whose, nor for whom).
    VoteCounted(VoteCounted) = "voting.vote.counted";
    /// `voting.completed`: the ballot closed with this tally.
    VotingCompleted(VotingCompleted) = "voting.completed";
    /// `election.finalized`: the election's result.
    ElectionFinalized(ElectionFinalized) = "election.finalized";
    /// `permission.granted`: a user holds a role on a meeting.
    PermissionGranted(PermissionChange) = "permission.granted";
    /// `permission.revoked`: a user no longer holds a role on a meeting.
    PermissionRevoked(PermissionChange) = "permission.revoked";
}

fn typed<T: DeserializeOwned>(kind: EventType, data: &Value) -> Result<T, DecodeError> {
    T::deserialize(data).map_err(|e| DecodeError::BadData {
        event_type: kind.routing_key().to_string(),
        reason: e.to_string(),
    })
}

impl EventType {
    /// The catalogue entry for a routing key.
    pub fn from_routing_key(key: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.routing_key() == key)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.routing_key())
    }
}

/// `meeting.created`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MeetingCreated {
    pub meeting_id: String,
    pub title: String,
    pub created_by: String,
}

/// `agenda.item.added`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AgendaItemAdded {
    pub meeting_id: String,
    pub agenda_item_id: String,
    pub position: i64,
    pub title: String,
    pub kind: ItemKind,
}

/// `agenda.item.opened`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AgendaItemOpened {
    pub meeting_id: String,
    pub agenda_item_id: String,
    pub kind: ItemKind,
    /// The item that was current before and is now done, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_item_id: Option<String>,
}

/// `agenda.election.create`, version 2 (version 1 has no `seats`: one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ElectionCreate {
    pub meeting_id: String,
    pub agenda_item_id: String,
    pub title: String,
    /// How many the election fills, at least 1.
    #[schemars(range(min = 1))]
    pub seats: u32,
}

/// `agenda.election.start`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ElectionStart {
    pub meeting_id: String,
    pub agenda_item_id: String,
}

/// `election.opened`, version 2 (version 1 has no `seats`: one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ElectionOpened {
    pub election_id: String,
    pub meeting_id: String,
    pub agenda_item_id: String,
    pub title: String,
    /// How many the election fills; absent means one.
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub seats: u32,
}

fn one() -> u32 {
    1
}

/// `election.nomination.accepted`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NominationAccepted {
    pub election_id: String,
    pub meeting_id: String,
    pub candidate: String,
    pub nominated_by: String,
}

/// `voting.create`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct VotingCreate {
    pub election_id: String,
    pub meeting_id: String,
    pub agenda_item_id: String,
    pub candidates: Vec<String>,
}

/// `voting.completed`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct VotingCompleted {
    pub ballot_id: String,
    pub election_id: String,
    pub meeting_id: String,
    pub tally: BTreeMap<String, u64>,
    pub votes_cast: u64,
}

/// `voting.ballot.opened`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BallotOpened {
    pub ballot_id: String,
    pub election_id: String,
    pub meeting_id: String,
    pub options: Vec<String>,
}

/// `voting.vote.counted`: how many votes the ballot holds now; never who voted or for whom.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct VoteCounted {
    pub ballot_id: String,
    pub meeting_id: String,
    pub votes_cast: u64,
}

/// `election.finalized`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ElectionFinalized {
    pub election_id: String,
    pub meeting_id: String,
    pub agenda_item_id: String,
    pub winners: Vec<String>,
    pub tally: BTreeMap<String, u64>,
    pub outcome: Outcome,
}

/// `permission.granted` / `permission.revoked`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PermissionChange {
    pub meeting_id: String,
    pub user_id: String,
    pub role: MeetingRole,
    /// The order of the changes to this user's role on this meeting (1, 2, …); 0 when the
    /// producer does not version its changes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys_round_trip_and_are_unique() {
        for t in EventType::ALL {
            assert_eq!(EventType::from_routing_key(t.routing_key()), Some(*t));
        }
        let mut keys: Vec<_> = EventType::ALL.iter().map(|t| t.routing_key()).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), EventType::ALL.len());
    }

    #[test]
    fn every_event_has_one_producer_and_a_consumer() {
        for t in EventType::ALL {
            assert_eq!(t.producers().count(), 1, "{t} needs exactly one producer");
            assert!(t.consumers().count() >= 1, "{t} has no consumer");
        }
    }

    #[test]
    fn an_unknown_type_is_named() {
        let err = Event::from_parts("meeting.deleted", &Value::Null).unwrap_err();
        assert_eq!(err, DecodeError::UnknownType("meeting.deleted".into()));
    }
}
