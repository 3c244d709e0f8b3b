//! The election service: opens nominations when the meeting asks, hands the candidates to
//! the voting service, and turns the ballot's tally into a result.

pub mod api;
pub mod handlers;
pub mod store;
