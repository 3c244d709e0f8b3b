//! The meeting service: meetings and their agendas. It asks the election service to run an
//! election item and records the result when `election.finalized` comes back.

mod api;
mod handlers;
mod store;

use super::Behaviour;
use crate::store::{migrations, Migrations, COMMON};

/// What the meeting role does.
pub(super) static BEHAVIOUR: Behaviour = Behaviour {
    role: &crate::system::MEETING,
    start: |_, _| super::Parts::api(api::routes().split_for_parts().0),
    openapi: || api::routes().into_openapi(),
    handler: |work, envelope, event| Box::pin(handlers::handle(work, envelope, event)),
    migrations: &[&COMMON, &super::grants::MIGRATIONS, &MIGRATIONS],
};

/// This role's tables (versions 100 and up).
static MIGRATIONS: Migrations = migrations!(
    "src/roles/meeting/migrations",
    [
        "0100_meeting" => per_dialect,
        "0101_positions_unique",
        "0102_item_seats",
    ]
);
