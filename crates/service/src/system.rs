//! The map of the system (docs/architecture.md §2): which roles there are — name, default
//! port, what each publishes and consumes — as plain facts, beneath everything that needs
//! them (configuration defaults, the event catalogue's producers and consumers, topology,
//! trust). It knows no role's behaviour: the role folders attach their routes, handlers and
//! migrations to these facts in `roles`, above.

use std::fmt;

use crate::events::EventType;

/// One of the services this binary can run.
pub type Role = &'static RoleDef;

/// A role's facts.
pub struct RoleDef {
    /// Short name: the subcommand, `config/<name>.toml`, the default database file.
    pub name: &'static str,
    /// What the role does, for `--help`.
    pub about: &'static str,
    /// Default HTTP port.
    pub default_port: u16,
    /// Events this role consumes: its queue's default bindings.
    pub consumes: &'static [EventType],
    /// Events this role publishes.
    pub publishes: &'static [EventType],
    /// Events this role reads from the shared live stream rather than its queue (the live
    /// role: what a meeting's participants watch).
    pub watches: &'static [EventType],
}

pub static PERMISSION: RoleDef = RoleDef {
    name: "permission",
    about: "Run the permission service: who manages each meeting",
    default_port: 8084,
    consumes: &[EventType::MeetingCreated],
    publishes: &[EventType::PermissionGranted, EventType::PermissionRevoked],
    watches: &[],
};

pub static MEETING: RoleDef = RoleDef {
    name: "meeting",
    about: "Run the meeting service: meetings and their agendas; asks for elections and records their results",
    default_port: 8081,
    consumes: &[
        EventType::ElectionFinalized,
        EventType::PermissionGranted,
        EventType::PermissionRevoked,
    ],
    publishes: &[
        EventType::MeetingCreated,
        EventType::AgendaItemAdded,
        EventType::AgendaItemOpened,
        EventType::ElectionCreate,
        EventType::ElectionStart,
    ],
    watches: &[],
};

pub static ELECTION: RoleDef = RoleDef {
    name: "election",
    about: "Run the election service: nominations, and the result of each ballot",
    default_port: 8082,
    consumes: &[
        EventType::ElectionCreate,
        EventType::ElectionStart,
        EventType::VotingCompleted,
        EventType::PermissionGranted,
        EventType::PermissionRevoked,
    ],
    publishes: &[
        EventType::ElectionOpened,
        EventType::NominationAccepted,
        EventType::VotingCreate,
        EventType::ElectionFinalized,
    ],
    watches: &[],
};

pub static VOTING: RoleDef = RoleDef {
    name: "voting",
    about: "Run the voting service: ballots, one vote per user, the tally when closed",
    default_port: 8083,
    consumes: &[
        EventType::VotingCreate,
        EventType::PermissionGranted,
        EventType::PermissionRevoked,
    ],
    publishes: &[
        EventType::BallotOpened,
        EventType::VoteCounted,
        EventType::VotingCompleted,
    ],
    watches: &[],
};

pub static LIVE: RoleDef = RoleDef {
    name: "live",
    about: "Run the live service: each meeting's changes pushed to browsers over SSE, resumable on any replica",
    default_port: 8085,
    // Its queue keeps its copy of the grants, which decides who sees `permission.*`.
    consumes: &[EventType::PermissionGranted, EventType::PermissionRevoked],
    publishes: &[],
    watches: &[
        EventType::MeetingCreated,
        EventType::AgendaItemAdded,
        EventType::AgendaItemOpened,
        EventType::ElectionStart,
        EventType::ElectionOpened,
        EventType::NominationAccepted,
        EventType::BallotOpened,
        EventType::VoteCounted,
        EventType::VotingCompleted,
        EventType::ElectionFinalized,
        EventType::PermissionGranted,
        EventType::PermissionRevoked,
    ],
};

/// Every role, in the order `app all` starts them (consumers of the first events first).
/// Adding a role: its facts here, and its folder under `roles/` with one registry line.
pub static ALL: &[Role] = &[&PERMISSION, &LIVE, &MEETING, &ELECTION, &VOTING];

impl RoleDef {
    /// Default `SERVICE_NAME`, which is also the default queue name.
    pub fn service_name(&self) -> String {
        format!("{}-service", self.name)
    }

    /// Default `MQ_BINDINGS`: the routing keys of the events the role consumes.
    pub fn default_bindings(&self) -> Vec<&'static str> {
        self.consumes.iter().map(|t| t.routing_key()).collect()
    }
}

impl fmt::Display for RoleDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl fmt::Debug for RoleDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Role({})", self.name)
    }
}

impl PartialEq for RoleDef {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for RoleDef {}

/// The role called `name`.
pub fn find(name: &str) -> Result<Role, String> {
    ALL.iter().copied().find(|r| r.name == name).ok_or_else(|| {
        let names: Vec<_> = ALL.iter().map(|r| r.name).collect();
        format!(
            "unknown role {name:?} (expected one of {})",
            names.join(", ")
        )
    })
}

impl EventType {
    /// The roles that publish this event.
    pub fn producers(self) -> impl Iterator<Item = Role> {
        ALL.iter()
            .copied()
            .filter(move |r| r.publishes.contains(&self))
    }

    /// The roles that consume this event from their queue: without them, nobody would take
    /// it later from a queue.
    pub fn queue_consumers(self) -> impl Iterator<Item = Role> {
        ALL.iter()
            .copied()
            .filter(move |r| r.consumes.contains(&self))
    }

    /// The roles that consume this event, from their queue or from the live stream.
    pub fn consumers(self) -> impl Iterator<Item = Role> {
        ALL.iter()
            .copied()
            .filter(move |r| r.consumes.contains(&self) || r.watches.contains(&self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message a role moved without knowing its sender reads as the role's own
    /// (`messaging::headers::producer_user`); that is safe only while no role consumes an
    /// event type it publishes.
    #[test]
    fn no_role_consumes_what_it_publishes() {
        for role in ALL {
            for t in role.consumes {
                assert!(
                    !role.publishes.contains(t),
                    "{} consumes its own {t:?}",
                    role.name
                );
            }
        }
    }

    #[test]
    fn names_ports_and_queues_are_distinct() {
        let mut names: Vec<_> = ALL.iter().map(|r| r.name).collect();
        let mut ports: Vec<_> = ALL.iter().map(|r| r.default_port).collect();
        names.sort();
        names.dedup();
        ports.sort();
        ports.dedup();
        assert_eq!(names.len(), ALL.len());
        assert_eq!(ports.len(), ALL.len());
    }

    #[test]
    fn every_role_is_found_by_name_and_only_those() {
        for role in ALL {
            assert_eq!(find(role.name).unwrap(), *role);
        }
        assert!(find("treasury").unwrap_err().contains("meeting"));
    }

    #[test]
    fn the_documented_event_table_follows_the_catalogue() {
        let doc = include_str!("../../../docs/events.md");
        for t in EventType::ALL {
            let start = format!("| `{}` |", t.routing_key());
            let row = doc
                .lines()
                .find(|l| l.starts_with(&start))
                .unwrap_or_else(|| panic!("docs/events.md has no row for {t}"));
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let names =
                |roles: Vec<Role>| roles.iter().map(|r| r.name).collect::<Vec<_>>().join(", ");
            let mut consumers: Vec<Role> = t.consumers().collect();
            consumers.sort_by_key(|r| r.name);
            assert_eq!(cells[2], names(t.producers().collect()), "producer of {t}");
            assert_eq!(cells[3], names(consumers), "consumers of {t}");
        }
    }
}
