//! Meeting, election, voting and permission services that cooperate only through events on
//! RabbitMQ, with an outbox, an inbox, retries and dead-lettering so that no event is lost,
//! doubled or looped on.
//!
//! Map: [`config`] loads settings, [`envelope`] is the wire format, [`messaging`] talks to
//! the broker, [`store`] holds state, [`http`] serves the APIs, [`roles`] holds each
//! service's business, [`cli`] and [`commands`] are the `app` binary's commands.

pub mod cli;
pub mod commands;
pub mod config;
pub mod envelope;
pub mod http;
pub mod messaging;
pub mod role;
pub mod roles;
pub mod shutdown;
pub mod store;
pub mod telemetry;
