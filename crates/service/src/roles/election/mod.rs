//! The election service: opens nominations when the meeting asks, hands the candidates to
//! the voting service, and turns the ballot's tally into a result.

mod api;
mod handlers;
mod store;

use super::Behaviour;
use crate::store::{migrations, Migrations, COMMON};

/// What the election role does.
pub(super) static BEHAVIOUR: Behaviour = Behaviour {
    role: &crate::system::ELECTION,
    start: |_, _| super::Parts::api(api::routes().split_for_parts().0),
    openapi: || api::routes().into_openapi(),
    handler: |work, envelope, event| Box::pin(handlers::handle(work, envelope, event)),
    migrations: &[&COMMON, &super::grants::MIGRATIONS, &MIGRATIONS],
};

/// This role's tables (versions 100 and up).
static MIGRATIONS: Migrations = migrations!(
    "src/roles/election/migrations",
    [
        "0100_election" => per_dialect,
        "0101_positions_unique",
        "0102_election_seats",
    ]
);
