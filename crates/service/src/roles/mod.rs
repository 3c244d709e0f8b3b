//! The roles' behaviour (docs/architecture.md §2). The facts of each role — name, port,
//! what it publishes and consumes — are in [`crate::system`], beneath everything; here each
//! role's folder attaches its HTTP router, its event handler and its migrations to them in
//! a [`Behaviour`], listed once in [`REGISTRY`]. The runner starts a role from the two.

mod election;
mod grants;
mod live;
mod meeting;
mod permission;
mod runner;
mod voting;

use axum::Router;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::http::AppState;
use crate::messaging::EventHandler;
use crate::store::Migrations;

pub use crate::system::{find, Role, RoleDef, ALL, ELECTION, LIVE, MEETING, PERMISSION, VOTING};
pub(crate) use runner::run;

/// What a role does, attached to its facts.
pub(crate) struct Behaviour {
    /// The role's facts.
    pub(crate) role: Role,
    /// The role's routes and the work it runs beside its consumer, given the shared state
    /// and the token that stops intake (auth, probes and fallbacks are added by
    /// [`crate::http::app`]).
    pub(crate) start: fn(&AppState, &CancellationToken) -> anyhow::Result<Parts>,
    /// The description of the routes `start` serves, from the same routers
    /// (docs/architecture.md §4, "The HTTP contract").
    pub(crate) openapi: fn() -> utoipa::openapi::OpenApi,
    /// The role's event handler.
    pub(crate) handler: EventHandler,
    /// Migration sets applied in order on start (each with its own version range).
    pub(crate) migrations: &'static [&'static Migrations],
}

/// What a role adds to the shared parts when it starts.
pub(crate) struct Parts {
    /// Routes behind the bearer token.
    pub(crate) api: Router<AppState>,
    /// Routes that check their own credential, or need none (the live role's stream, which a
    /// browser opens with a cookie, and its page).
    pub(crate) open: Router<AppState>,
    /// Tasks that run until intake stops; shutdown waits for them like for the consumer.
    pub(crate) tasks: Vec<JoinHandle<()>>,
}

impl Parts {
    /// Only routes behind the bearer token.
    pub(crate) fn api(api: Router<AppState>) -> anyhow::Result<Self> {
        Ok(Self {
            api,
            open: Router::new(),
            tasks: Vec::new(),
        })
    }
}

/// Every role's behaviour. Adding a role: its facts in `system.rs`, a folder with its
/// `BEHAVIOUR`, a `mod` line above and an entry here.
pub(crate) static REGISTRY: &[&Behaviour] = &[
    &permission::BEHAVIOUR,
    &live::BEHAVIOUR,
    &meeting::BEHAVIOUR,
    &election::BEHAVIOUR,
    &voting::BEHAVIOUR,
];

/// The OpenAPI 3.1 document of `roles`' HTTP APIs, from the routers they serve: one role's
/// (its `/openapi.json`), or every role's as one origin serves them (`app openapi`).
pub fn openapi(roles: &[Role]) -> anyhow::Result<utoipa::openapi::OpenApi> {
    let docs = roles
        .iter()
        .map(|&role| behaviour(role).map(|b| (b.openapi)()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(crate::http::openapi::document(docs))
}

/// [`openapi`] as pretty-printed JSON.
pub fn openapi_json(roles: &[Role]) -> anyhow::Result<String> {
    Ok(openapi(roles)?.to_pretty_json()?)
}

/// The behaviour of `role`.
pub(crate) fn behaviour(role: Role) -> anyhow::Result<&'static Behaviour> {
    REGISTRY
        .iter()
        .copied()
        .find(|b| b.role == role)
        .ok_or_else(|| anyhow::anyhow!("role {role} has no behaviour in the registry"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_has_one_behaviour() {
        for role in ALL {
            assert_eq!(
                REGISTRY.iter().filter(|b| b.role == *role).count(),
                1,
                "{role}"
            );
        }
        assert_eq!(REGISTRY.len(), ALL.len());
    }

    #[test]
    fn every_role_starts_with_the_shared_migrations() {
        for b in REGISTRY {
            assert!(
                std::ptr::eq(b.migrations[0], &crate::store::COMMON),
                "{}",
                b.role
            );
        }
    }
}
