//! The permission service: the source of truth for who manages a meeting. It grants
//! `manager` to a meeting's creator and publishes every grant and revocation.

mod api;
mod handlers;
mod store;

use super::RoleDef;
use crate::events::EventType;
use crate::store::{Migrations, COMMON};

/// The permission role's definition.
pub static ROLE: RoleDef = RoleDef {
    name: "permission",
    about: "Run the permission service: who manages each meeting",
    default_port: 8084,
    consumes: &[EventType::MeetingCreated],
    publishes: &[EventType::PermissionGranted, EventType::PermissionRevoked],
    router: api::router,
    handler: |work, envelope, event| Box::pin(handlers::handle(work, envelope, event)),
    migrations: &[&COMMON, &MIGRATIONS],
};

/// This role's tables (versions 100 and up).
static MIGRATIONS: Migrations = Migrations {
    sqlite: sqlx::migrate!("./src/roles/permission/migrations/sqlite"),
    postgres: sqlx::migrate!("./src/roles/permission/migrations/postgres"),
};
