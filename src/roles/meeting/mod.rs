//! The meeting service: meetings and their agendas. It asks the election service to run an
//! election item and records the result when `election.finalized` comes back.

pub mod api;
pub mod handlers;
pub mod store;
