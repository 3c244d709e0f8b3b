//! The meeting service: meetings and their agendas. It asks the election service to run an
//! election item and records the result when `election.finalized` comes back.

mod api;
mod handlers;
mod store;

use super::RoleDef;
use crate::events::EventType;
use crate::store::{Migrations, COMMON};

/// The meeting role's definition.
pub static ROLE: RoleDef = RoleDef {
    name: "meeting",
    about: "Run the meeting service: meetings and their agendas; asks for elections and records their results",
    default_port: 8081,
    consumes: &[EventType::ElectionFinalized, EventType::PermissionGranted, EventType::PermissionRevoked],
    publishes: &[EventType::MeetingCreated, EventType::ElectionCreate, EventType::ElectionStart],
    router: api::router,
    handler: |work, envelope, event| Box::pin(handlers::handle(work, envelope, event)),
    migrations: &[&COMMON, &super::grants::MIGRATIONS, &MIGRATIONS],
};

/// This role's tables (versions 100 and up).
static MIGRATIONS: Migrations = Migrations {
    sqlite: sqlx::migrate!("./src/roles/meeting/migrations/sqlite"),
    postgres: sqlx::migrate!("./src/roles/meeting/migrations/postgres"),
};
