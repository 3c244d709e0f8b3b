//! The four roles: the single source of their names, default queues, ports and bindings.

use std::fmt;
use std::str::FromStr;

/// One of the services this binary can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Meeting,
    Election,
    Voting,
    Permission,
}

impl Role {
    /// Every role, in the order `app all` starts them.
    pub const ALL: [Role; 4] = [
        Role::Permission,
        Role::Meeting,
        Role::Election,
        Role::Voting,
    ];

    /// Short name, used for `config/<role>.toml` and the default database file.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Meeting => "meeting",
            Role::Election => "election",
            Role::Voting => "voting",
            Role::Permission => "permission",
        }
    }

    /// Default `SERVICE_NAME`, which is also the default queue name.
    pub fn service_name(self) -> &'static str {
        match self {
            Role::Meeting => "meeting-service",
            Role::Election => "election-service",
            Role::Voting => "voting-service",
            Role::Permission => "permission-service",
        }
    }

    /// Default HTTP port.
    pub fn default_port(self) -> u16 {
        match self {
            Role::Meeting => 8081,
            Role::Election => 8082,
            Role::Voting => 8083,
            Role::Permission => 8084,
        }
    }

    /// Default `MQ_BINDINGS`: the routing keys this role consumes (design §4).
    pub fn default_bindings(self) -> &'static str {
        match self {
            Role::Meeting => "election.finalized,permission.*",
            Role::Election => "agenda.election.*,voting.completed",
            Role::Voting => "voting.create,permission.*",
            Role::Permission => "meeting.created",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown role {s:?} (expected meeting, election, voting or permission)")
            })
    }
}
