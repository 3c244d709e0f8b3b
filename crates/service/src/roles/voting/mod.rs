//! The voting service: one ballot per election, one vote per user, a secret running tally,
//! and `voting.completed` when a manager closes the ballot.

mod api;
mod handlers;
mod store;

use super::RoleDef;
use crate::events::EventType;
use crate::store::{Migrations, COMMON};

/// The voting role's definition.
pub static ROLE: RoleDef = RoleDef {
    name: "voting",
    about: "Run the voting service: ballots, one vote per user, the tally when closed",
    default_port: 8083,
    consumes: &[
        EventType::VotingCreate,
        EventType::PermissionGranted,
        EventType::PermissionRevoked,
    ],
    publishes: &[EventType::VotingCompleted],
    router: api::router,
    handler: |work, envelope, event| Box::pin(handlers::handle(work, envelope, event)),
    migrations: &[&COMMON, &super::grants::MIGRATIONS, &MIGRATIONS],
};

/// This role's tables (versions 100 and up).
static MIGRATIONS: Migrations = Migrations {
    sqlite: sqlx::migrate!("./src/roles/voting/migrations/sqlite"),
    postgres: sqlx::migrate!("./src/roles/voting/migrations/postgres"),
};
