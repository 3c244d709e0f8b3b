//! The roles (docs/architecture.md §2). Each is defined once, in its own folder, by a
//! [`Role`] value — name, default port, the events it consumes and publishes, its HTTP
//! router, its event handler and its migrations — and listed once in [`ALL`]. Everything
//! else (the runner, `app all`, the walk, the topology check, the configuration defaults)
//! reads that definition.

mod election;
mod grants;
mod meeting;
mod permission;
mod runner;
mod voting;

use std::fmt;

use axum::Router;

use crate::events::EventType;
use crate::http::AppState;
use crate::messaging::EventHandler;
use crate::store::Migrations;

pub(crate) use runner::run;

/// The roles by name, for tools that script a flow across them (the walk, the tests).
pub use election::ROLE as ELECTION;
pub use meeting::ROLE as MEETING;
pub use permission::ROLE as PERMISSION;
pub use voting::ROLE as VOTING;

/// Every role, in the order `app all` starts them (consumers of the first events first).
/// Adding a role: a folder with its `ROLE`, a `mod` line above and an entry here.
pub static ALL: &[Role] = &[
    &permission::ROLE,
    &meeting::ROLE,
    &election::ROLE,
    &voting::ROLE,
];

/// One of the services this binary can run.
pub type Role = &'static RoleDef;

/// A role's definition. Only the fields other crates need are public.
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
    /// The role's routes (auth, probes and fallbacks are added by [`crate::http::app`]).
    pub(crate) router: fn() -> Router<AppState>,
    /// The role's event handler.
    pub(crate) handler: EventHandler,
    /// Migration sets applied in order on start (each with its own version range).
    pub(crate) migrations: &'static [&'static Migrations],
}

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
    fn every_role_starts_with_the_shared_migrations() {
        for role in ALL {
            assert!(
                std::ptr::eq(role.migrations[0], &crate::store::COMMON),
                "{role}"
            );
        }
    }
}
