//! The service library: meeting, election, voting and permission roles that cooperate only
//! through events on RabbitMQ, with an outbox, an inbox, retries and dead-lettering so that
//! no event is lost, doubled or looped on. docs/architecture.md describes the design and
//! where each part lives.
//!
//! The public surface is small: [`run`] a [`Role`] from its [`Settings`]; the [`system`]'s
//! map of the roles (re-exported by [`roles`]); the [`envelope`] and [`events`] of the wire contract with the [`domain`] words
//! they carry; and, for the operator commands and tools that speak to the broker the way
//! the services do, [`messaging`]'s names, headers and publisher. Everything else is private
//! to the crate.

pub mod config;
pub mod domain;
mod http;
pub mod messaging;
mod metric;
pub mod roles;
pub mod shutdown;
mod store;
pub mod system;
pub mod telemetry;
pub mod text;
pub mod trace;
pub mod wire;

pub use config::Settings;
pub use system::Role;
pub use wire::{envelope, events};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Run the role of `settings` until `shutdown` is cancelled, serving its HTTP API on
/// `listener` (bind port 0 in tests).
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    roles::run(settings, listener, shutdown).await
}

/// Sign a bearer token for `user`, valid for `ttl`, with the key the services verify.
pub fn issue_token(
    secret: &config::Secret,
    user: &str,
    ttl: std::time::Duration,
) -> anyhow::Result<String> {
    http::auth::issue(secret, user, ttl)
}
