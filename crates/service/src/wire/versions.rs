//! Versions per event type (docs/architecture.md §3, "Changing an event"): each type's steps
//! from one version of its `data` to the next, the pure functions that carry data across a
//! step, and the pins a deployment sets (`EVENT_EMIT_VERSIONS`, `EVENT_READ_VERSIONS`).
//!
//! A consumer upcasts what arrives, step by step, to the newest version before its handler
//! runs, so handlers see one type. A producer emits, per type, the version its pin says
//! (the newest when unpinned), downcasting the event; an event the pinned version cannot say
//! is refused, never sent half-meant.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};

use super::events::EventType;

/// A `data` object, as it travels.
pub type Data = Map<String, Value>;

/// The step from version `n` to `n + 1` of one event type.
pub struct Step {
    /// A reader of version `n` may read version `n + 1` as its own: the step only adds
    /// optional fields an old reader may ignore without misreading the event.
    pub forward_compatible: bool,
    /// Version `n` data made version `n + 1` data; `None` when version `n` data is already
    /// valid version `n + 1` data (the new fields are optional).
    pub up: Option<fn(&mut Data)>,
    /// Version `n + 1` data said as version `n`, or why it cannot be (what the older
    /// version has no way to say).
    pub down: fn(&mut Data) -> Result<(), String>,
}

impl EventType {
    /// The steps of this type's versions, oldest first: version 1 is the first, and step
    /// `i` goes from version `i + 1` to `i + 2`.
    pub fn steps(self) -> &'static [Step] {
        match self {
            EventType::ElectionCreate => ELECTION_CREATE,
            EventType::ElectionOpened => ELECTION_OPENED,
            _ => &[],
        }
    }

    /// The newest version of this type's data: the one handlers see.
    pub fn newest(self) -> u32 {
        1 + self.steps().len() as u32
    }

    /// Every version of this type, oldest first.
    pub fn versions(self) -> std::ops::RangeInclusive<u32> {
        1..=self.newest()
    }
}

/// `agenda.election.create`: v2 carries `seats`, the number to elect. Not forward-compatible:
/// a reader of v1 would elect one where three were meant.
const ELECTION_CREATE: &[Step] = &[Step {
    forward_compatible: false,
    up: Some(|data| {
        data.entry("seats").or_insert(Value::from(1));
    }),
    down: |data| match data.remove("seats") {
        None => Ok(()),
        Some(n) if n == 1 => Ok(()),
        Some(n) => Err(format!(
            "seats = {n} cannot be said in version 1, which elects one"
        )),
    },
}];

/// `election.opened`: v2 adds `seats`, optional (absent means one). Forward-compatible: a
/// reader of v1 only shows the election, it elects no one.
const ELECTION_OPENED: &[Step] = &[Step {
    forward_compatible: true,
    up: None,
    down: |data| {
        data.remove("seats");
        Ok(())
    },
}];

/// Carry `data` of `event_type` from version `from` to version `to`, step by step: up with
/// the upcasters, down with the downcasters. `Err` says why it cannot be said in `to`.
pub fn convert(event_type: EventType, data: &mut Data, from: u32, to: u32) -> Result<(), String> {
    let steps = event_type.steps();
    let step = |version: u32| &steps[version as usize - 1];
    if from < to {
        for version in from..to {
            if let Some(up) = step(version).up {
                up(data);
            }
        }
    } else {
        for version in (to..from).rev() {
            (step(version).down)(data)?;
        }
    }
    Ok(())
}

/// Why a consumer that reads up to `reads` cannot take version `version`, or `None` when
/// it can: versions it reads, and newer ones whose every step up from `reads` is declared
/// forward-compatible (read as `reads`).
pub fn unreadable(event_type: EventType, version: u32, reads: u32) -> Option<String> {
    let newest = event_type.newest();
    if version == 0 {
        return Some("versions start at 1".into());
    }
    if version > newest {
        return Some(format!(
            "this build knows versions 1 to {newest} of {event_type}"
        ));
    }
    if version <= reads {
        return None;
    }
    let steps = &event_type.steps()[reads as usize - 1..version as usize - 1];
    match steps.iter().position(|s| !s.forward_compatible) {
        None => None,
        Some(i) => {
            let from = reads + i as u32;
            Some(format!(
                "this consumer reads versions 1 to {reads} of {event_type}, and the step {from} → {} is not forward-compatible",
                from + 1
            ))
        }
    }
}

/// Per event type, a version a deployment pins: the one producers emit
/// (`EVENT_EMIT_VERSIONS`) or the newest consumers read (`EVENT_READ_VERSIONS`). A type not
/// pinned uses its newest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pins(BTreeMap<EventType, u32>);

impl Pins {
    /// The version `event_type` is pinned to, or its newest.
    pub fn of(&self, event_type: EventType) -> u32 {
        self.0
            .get(&event_type)
            .copied()
            .unwrap_or(event_type.newest())
    }
}

impl FromIterator<Pin> for Pins {
    fn from_iter<I: IntoIterator<Item = Pin>>(pins: I) -> Self {
        Self(
            pins.into_iter()
                .map(|p| (p.event_type, p.version))
                .collect(),
        )
    }
}

/// One entry of a pin list: `agenda.election.create=1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pin {
    pub event_type: EventType,
    pub version: u32,
}

impl FromStr for Pin {
    type Err = String;

    fn from_str(entry: &str) -> Result<Self, String> {
        let (key, version) = entry
            .split_once('=')
            .ok_or_else(|| format!("{entry:?} is not event_type=version"))?;
        let key = key.trim();
        let event_type = EventType::from_routing_key(key)
            .ok_or_else(|| format!("{key:?} is not an event type of the catalogue"))?;
        let version: u32 = version
            .trim()
            .parse()
            .map_err(|_| format!("{entry:?}: the version is not a whole number"))?;
        if !event_type.versions().contains(&version) {
            return Err(format!(
                "{entry:?}: {event_type} has versions 1 to {}",
                event_type.newest()
            ));
        }
        Ok(Self {
            event_type,
            version,
        })
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.event_type, self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data(value: Value) -> Data {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn an_election_create_of_v1_upcasts_to_one_seat() {
        let mut d = data(json!({"meeting_id": "m", "agenda_item_id": "a", "title": "Chair"}));
        convert(EventType::ElectionCreate, &mut d, 1, 2).unwrap();
        assert_eq!(d["seats"], 1);
    }

    #[test]
    fn an_election_create_downcasts_only_what_v1_can_say() {
        let v2 = json!({"meeting_id": "m", "agenda_item_id": "a", "title": "Board", "seats": 1});
        let mut one = data(v2.clone());
        convert(EventType::ElectionCreate, &mut one, 2, 1).unwrap();
        assert!(!one.contains_key("seats"));
        let mut three =
            data(json!({"meeting_id": "m", "agenda_item_id": "a", "title": "Board", "seats": 3}));
        let why = convert(EventType::ElectionCreate, &mut three, 2, 1).unwrap_err();
        assert!(why.contains("seats = 3"), "{why}");
    }

    #[test]
    fn an_election_opened_steps_both_ways_without_loss_of_meaning() {
        let mut d = data(
            json!({"election_id": "e", "meeting_id": "m", "agenda_item_id": "a", "title": "t", "seats": 3}),
        );
        convert(EventType::ElectionOpened, &mut d, 2, 1).unwrap();
        assert!(!d.contains_key("seats"));
        convert(EventType::ElectionOpened, &mut d, 1, 2).unwrap();
        assert!(
            !d.contains_key("seats"),
            "absent means one; the reader's default"
        );
    }

    #[test]
    fn a_newer_version_is_read_only_across_forward_compatible_steps() {
        assert_eq!(unreadable(EventType::ElectionOpened, 2, 1), None);
        let why = unreadable(EventType::ElectionCreate, 2, 1).unwrap();
        assert!(why.contains("reads versions 1 to 1"), "{why}");
        assert!(why.contains("1 → 2 is not forward-compatible"), "{why}");
        assert_eq!(unreadable(EventType::ElectionCreate, 1, 1), None);
        assert_eq!(unreadable(EventType::ElectionCreate, 1, 2), None);
        let why = unreadable(EventType::MeetingCreated, 2, 1).unwrap();
        assert!(why.contains("knows versions 1 to 1"), "{why}");
        assert!(unreadable(EventType::MeetingCreated, 0, 1).is_some());
    }

    #[test]
    fn a_pin_names_a_type_and_one_of_its_versions() {
        let pin: Pin = "agenda.election.create=1".parse().unwrap();
        assert_eq!(pin.event_type, EventType::ElectionCreate);
        let pins: Pins = [pin].into_iter().collect();
        assert_eq!(pins.of(EventType::ElectionCreate), 1);
        assert_eq!(pins.of(EventType::ElectionOpened), 2);
        assert!("agenda.election.create=3"
            .parse::<Pin>()
            .unwrap_err()
            .contains("versions 1 to 2"));
        assert!("meeting.deleted=1".parse::<Pin>().is_err());
        assert!("agenda.election.create".parse::<Pin>().is_err());
        assert!("agenda.election.create=x".parse::<Pin>().is_err());
    }
}
