//! Settings shared by every role, loaded in layers: built-in defaults → `config/default.toml`
//! → `config/<role>.toml` → environment variables, with the flat names of `mq.py`
//! (docs/architecture.md §8).
//!
//! Every value is parsed here, once, into a typed [`Settings`]; a bad value becomes a
//! [`ConfigError`] naming the variable, so `main` can print one line and exit with status 2.

mod layers;
mod parse;
#[cfg(test)]
mod tests;
mod values;
mod variables;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::domain::{word_enum, UnknownWord};
use crate::system::{self, Role};

use layers::layered;
pub use layers::{config_dir, process_env};
use parse::from_raw;
pub use values::*;
pub use variables::*;

/// Everything a role needs to know about the broker.
#[derive(Clone, Debug)]
pub struct MqSettings {
    pub url: AmqpUrl,
    pub exchange: String,
    pub exchange_type: ExchangeType,
    pub service_name: String,
    pub queue: String,
    pub bindings: Vec<String>,
    pub prefetch: u16,
    pub queue_type: QueueType,
    /// Quorum queues: deliveries of a message before the broker dead-letters it.
    pub delivery_limit: u32,
    /// The largest message the consumer reads.
    pub max_message_bytes: usize,
    /// How often the consumer checks that the broker still lists a consumer on its queue.
    pub consumer_check: Duration,
    /// How long ready messages may wait while the idle consumer receives nothing.
    pub consumer_watchdog: Duration,
    /// Delay before each retry of a failed handler; after the last one the message is parked.
    pub retry_delays: Vec<Duration>,
    /// Whether events are accepted only from their producers' broker users.
    pub trust: Trust,
    /// The broker users each role publishes as (`MQ_PRODUCERS`).
    pub producers: Vec<(String, String)>,
    /// Producers that publish unstamped through an ingress exchange of their own
    /// (`MQ_INGRESS`).
    pub ingress: Vec<String>,
}

impl MqSettings {
    /// The exchange only `user` may write to, bound into the shared one for the routing keys
    /// of the roles it produces for (docs/architecture.md §10).
    pub fn ingress_exchange(&self, user: &str) -> String {
        format!("{}.from.{user}", self.exchange)
    }
}

/// Typed settings of one role.
#[derive(Clone, Debug)]
pub struct Settings {
    pub role: Role,
    pub mq: MqSettings,
    pub http_addr: IpAddr,
    pub http_port: u16,
    pub database_url: String,
    /// HTTP connections open at once.
    pub http_max_connections: usize,
    /// Deadline for a request's headers.
    pub http_header_timeout: Duration,
    /// Deadline for a whole request.
    pub http_request_timeout: Duration,
    /// How long a write may wait for the client to take bytes.
    pub http_write_timeout: Duration,
    /// The largest request body.
    pub http_max_body_bytes: usize,
    /// Connections to a PostgreSQL store.
    pub database_pool_size: u32,
    /// How long a store connection may take to come free (or to open).
    pub database_acquire_timeout: Duration,
    /// `None` only where a development key is acceptable; see [`Settings::jwt_secret`].
    pub jwt_secret: Option<Secret>,
    /// Candidates one election may have.
    pub max_candidates: u32,
    /// Clock skew allowed on a token's `exp` and `nbf`.
    pub auth_leeway: Duration,
    pub cors_allowed_origins: Vec<String>,
    /// How long shutdown may take to finish deliveries in hand and flush the outbox.
    pub shutdown_grace: Duration,
    /// The live role's stream and limits.
    pub live: LiveSettings,
    /// Development mode (`app all --dev`): the development key, loopback only, and the live
    /// page's cookie without `Secure` and its sign-in by user name.
    pub development: bool,
}

/// The live role's settings (`LIVE_*`).
#[derive(Clone, Debug)]
pub struct LiveSettings {
    pub stream: String,
    pub max_age: Duration,
    pub max_bytes: u64,
    pub segment_bytes: u64,
    pub memory_events: usize,
    pub keepalive: Duration,
    pub client_buffer: usize,
    pub streams_per_user: usize,
    /// `(role, origin)`: where the page reaches each role's API; empty: its own origin.
    pub api_origins: Vec<(String, String)>,
}

impl Settings {
    /// Load a role's settings from `config_dir` and the given environment.
    pub fn load(
        role: Role,
        env: &HashMap<String, String>,
        config_dir: &Path,
    ) -> Result<Self, ConfigError> {
        let raw = layered(role, env, config_dir)?;
        from_raw(role, &raw)
    }

    /// Load from the process environment and `CONFIG_DIR` (default `config`).
    pub fn from_process_env(role: Role) -> Result<Self, ConfigError> {
        Self::load(role, &process_env(), &config_dir())
    }

    /// Settings for tools that use only the shared variables (broker, exchange, secret):
    /// loaded as the first role of the registry would load them.
    pub fn shared_from_process_env() -> Result<Self, ConfigError> {
        Self::from_process_env(system::ALL[0])
    }

    /// The signing key, or an error naming the variable when it is required and unset.
    pub fn jwt_secret(&self) -> Result<&Secret, ConfigError> {
        self.jwt_secret.as_ref().ok_or_else(|| {
            ConfigError::new(
                "AUTH_JWT_SECRET",
                "required: the HS256 key that signs bearer tokens (generate one with `openssl rand -hex 32`; for a local try, `app all --dev`)",
            )
        })
    }
}
