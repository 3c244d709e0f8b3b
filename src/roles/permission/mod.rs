//! The permission service: the source of truth for who manages a meeting. It grants
//! `manager` to a meeting's creator and publishes every grant and revocation.

pub mod api;
pub mod handlers;
pub mod store;
