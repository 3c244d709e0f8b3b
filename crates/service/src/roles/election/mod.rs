//! The election service: opens nominations when the meeting asks, hands the candidates to
//! the voting service, and turns the ballot's tally into a result.

mod api;
mod handlers;
mod store;

use super::RoleDef;
use crate::events::EventType;
use crate::store::{Migrations, COMMON};

/// The election role's definition.
pub static ROLE: RoleDef = RoleDef {
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
    publishes: &[EventType::VotingCreate, EventType::ElectionFinalized],
    router: api::router,
    handler: |work, envelope, event| Box::pin(handlers::handle(work, envelope, event)),
    migrations: &[&COMMON, &super::grants::MIGRATIONS, &MIGRATIONS],
};

/// This role's tables (versions 100 and up).
static MIGRATIONS: Migrations = Migrations {
    sqlite: sqlx::migrate!("./src/roles/election/migrations/sqlite"),
    postgres: sqlx::migrate!("./src/roles/election/migrations/postgres"),
};
