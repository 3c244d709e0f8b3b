//! Everything that talks to RabbitMQ: the connection and its topology, publishing with
//! confirms, the consumer loop with retries and parking, the outbox relay and the inbox.

pub mod connection;
pub mod consumer;
pub mod headers;
pub mod inbox;
pub mod outbox;
pub mod publisher;
pub mod topology;

pub use connection::{Broker, Session};
pub use consumer::{EventHandler, HandleError};
pub use outbox::OutboxWaker;
