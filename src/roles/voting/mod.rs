//! The voting service: one ballot per election, one vote per user, a secret running tally,
//! and `voting.completed` when a manager closes the ballot.

pub mod api;
pub mod handlers;
pub mod store;
