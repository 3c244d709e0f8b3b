//! The permission service: the source of truth for who manages a meeting. It grants
//! `manager` to a meeting's creator and publishes every grant and revocation.

mod api;
mod handlers;
mod store;

use super::Behaviour;
use crate::store::{migrations, Migrations, COMMON};

/// What the permission role does.
pub(super) static BEHAVIOUR: Behaviour = Behaviour {
    role: &crate::system::PERMISSION,
    start: |_, _| super::Parts::api(api::routes().split_for_parts().0),
    openapi: || api::routes().into_openapi(),
    handler: |work, envelope, event| Box::pin(handlers::handle(work, envelope, event)),
    migrations: &[&COMMON, &MIGRATIONS],
};

/// This role's tables (versions 100 and up).
static MIGRATIONS: Migrations = migrations!(
    "src/roles/permission/migrations",
    ["0100_permission", "0101_permission_versions"]
);
