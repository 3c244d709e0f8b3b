//! Everything that talks to RabbitMQ (docs/architecture.md §5): the connection and its
//! topology, publishing with confirms, the consumer loop with its retry/park decision, the
//! outbox relay and the inbox.

pub(crate) mod confirms;
pub(crate) mod connection;
pub(crate) mod consumer;
pub(crate) mod decision;
pub mod headers;
pub(crate) mod inbox;
pub(crate) mod outbox;
pub mod publisher;
pub mod topology;
pub mod trace_carrier;
pub mod trust;
pub(crate) mod watchdog;

pub(crate) use connection::{Broker, Session};
pub(crate) use consumer::{EventHandler, HandleError, HandlerResult};
pub(crate) use outbox::{EmitError, Outbox, Work};
pub use publisher::unix_seconds;
pub use trace_carrier::AmqpCarrier;
