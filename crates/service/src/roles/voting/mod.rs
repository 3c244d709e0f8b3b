//! The voting service: one ballot per election, one vote per user, a secret running tally,
//! and `voting.completed` when a manager closes the ballot.

mod api;
mod handlers;
mod store;

use super::Behaviour;
use crate::store::{migrations, Migrations, COMMON};

/// What the voting role does.
pub(super) static BEHAVIOUR: Behaviour = Behaviour {
    role: &crate::system::VOTING,
    start: |_, _| super::Parts::api(api::routes().split_for_parts().0),
    openapi: || api::routes().into_openapi(),
    handler: |work, envelope, event| Box::pin(handlers::handle(work, envelope, event)),
    migrations: &[&COMMON, &super::grants::MIGRATIONS, &MIGRATIONS],
};

/// This role's tables (versions 100 and up).
static MIGRATIONS: Migrations = migrations!("src/roles/voting/migrations", ["0100_voting"]);
