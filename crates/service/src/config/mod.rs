//! Settings shared by every role, loaded in layers by the `config` crate: each role's
//! defaults → `config/default.toml` → `config/<role>.toml` → environment variables, with the
//! flat names of `mq.py` (docs/architecture.md §8).
//!
//! [`VARIABLES`] is the one place a variable is named: it says where the value lands in the
//! nested [`Settings`], which serde then reads, typed; [`Settings::validate`] holds the rules
//! about ranges and between fields. A bad value becomes a [`ConfigError`] naming the
//! variable, so `main` can print one line and exit with status 2.

mod de;
mod layers;
#[cfg(test)]
mod tests;
mod validate;
mod values;
mod variables;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::domain::{word_enum, UnknownWord};
use crate::system::{self, Role};
use crate::wire::versions::{Pin, Pins};

pub use layers::{config_dir, process_env};
pub use values::*;
pub use variables::*;

/// Everything a role needs to know about the broker (`AMQP_URL`, `MQ_*`, `SERVICE_NAME`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqSettings {
    pub url: AmqpUrl,
    pub exchange: String,
    #[serde(with = "de::word")]
    pub exchange_type: ExchangeType,
    pub service_name: String,
    /// Empty in the sources means [`MqSettings::service_name`].
    #[serde(default)]
    pub queue: String,
    #[serde(with = "de::list")]
    pub bindings: Vec<String>,
    pub prefetch: u16,
    #[serde(with = "de::word")]
    pub queue_type: QueueType,
    /// Quorum queues: deliveries of a message before the broker dead-letters it.
    pub delivery_limit: u32,
    /// The largest message the consumer reads.
    pub max_message_bytes: usize,
    /// How often the consumer checks that the broker still lists a consumer on its queue.
    #[serde(with = "humantime_serde")]
    pub consumer_check: Duration,
    /// How long ready messages may wait while the idle consumer receives nothing.
    #[serde(with = "humantime_serde")]
    pub consumer_watchdog: Duration,
    /// Delay before each retry of a failed handler; after the last one the message is parked.
    #[serde(with = "de::durations")]
    pub retry_delays: Vec<Duration>,
    /// Whether events are accepted only from their producers' broker users.
    #[serde(with = "de::word")]
    pub trust: Trust,
    /// The broker users each role publishes as; unset, each role's default `SERVICE_NAME`.
    #[serde(default, with = "de::list")]
    pub producers: Vec<Producer>,
    /// Producers that publish unstamped through an ingress exchange of their own.
    #[serde(default, with = "de::list")]
    pub ingress: Vec<String>,
    /// The version this role publishes of each event type (docs/architecture.md §3).
    #[serde(default, with = "de::pins")]
    pub emit_versions: Pins,
    /// The newest version this role reads of each event type.
    #[serde(default, with = "de::pins")]
    pub read_versions: Pins,
}

impl MqSettings {
    /// The exchange only `user` may write to, bound into the shared one for the routing keys
    /// of the roles it produces for (docs/architecture.md §10).
    pub fn ingress_exchange(&self, user: &str) -> String {
        format!("{}.from.{user}", self.exchange)
    }
}

/// The HTTP server (`HTTP_*`, `CORS_ALLOWED_ORIGINS`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub addr: IpAddr,
    pub port: u16,
    /// HTTP connections open at once.
    pub max_connections: usize,
    /// Deadline for a request's headers.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Deadline for a whole request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long a write may wait for the client to take bytes.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// The largest request body.
    pub max_body_bytes: usize,
    #[serde(default, with = "de::list")]
    pub cors_allowed_origins: Vec<String>,
}

/// The role's store (`DATABASE_*`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: DatabaseUrl,
    /// Connections to a PostgreSQL store.
    pub pool_size: u32,
    /// How long a store connection may take to come free (or to open).
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
}

/// Bearer tokens (`AUTH_*`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// `None` only where a development key is acceptable; see [`Settings::jwt_secret`].
    #[serde(default)]
    pub jwt_secret: Option<Secret>,
    /// Clock skew allowed on a token's `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
}

/// The live role's stream and limits (`LIVE_*`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveSettings {
    pub stream: String,
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    pub max_bytes: u64,
    pub segment_bytes: u64,
    pub memory_events: usize,
    #[serde(with = "humantime_serde")]
    pub keepalive: Duration,
    pub client_buffer: usize,
    pub streams_per_user: usize,
    /// Where the page reaches each role's API; empty: its own origin.
    #[serde(default, with = "de::list")]
    pub api_origins: Vec<ApiOrigin>,
}

/// What the sources hold, typed; [`Settings`] adds the role and the development switch.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Sections {
    mq: MqSettings,
    http: HttpSettings,
    database: DatabaseSettings,
    auth: AuthSettings,
    live: LiveSettings,
    max_candidates: u32,
    #[serde(with = "humantime_serde")]
    shutdown_grace: Duration,
}

/// Typed settings of one role.
#[derive(Clone, Debug)]
pub struct Settings {
    pub role: Role,
    pub mq: MqSettings,
    pub http: HttpSettings,
    pub database: DatabaseSettings,
    pub auth: AuthSettings,
    pub live: LiveSettings,
    /// Candidates one election may have.
    pub max_candidates: u32,
    /// How long shutdown may take to finish deliveries in hand and flush the outbox.
    pub shutdown_grace: Duration,
    /// Development mode (`app all --dev`): the development key, loopback only, and the live
    /// page's cookie without `Secure` and its sign-in by user name.
    pub development: bool,
}

impl Settings {
    /// Load a role's settings from `config_dir` and the given environment.
    pub fn load(
        role: Role,
        env: &HashMap<String, String>,
        config_dir: &Path,
    ) -> Result<Self, ConfigError> {
        let s: Sections = layers::load(role, env, config_dir)?;
        let mut settings = Settings {
            role,
            mq: s.mq,
            http: s.http,
            database: s.database,
            auth: s.auth,
            live: s.live,
            max_candidates: s.max_candidates,
            shutdown_grace: s.shutdown_grace,
            development: false,
        };
        settings.fill_in();
        settings.validate()?;
        Ok(settings)
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

    /// Defaults that follow other values: the queue is named after the service, and each
    /// role publishes as its default service name.
    fn fill_in(&mut self) {
        let mq = &mut self.mq;
        if mq.queue.trim().is_empty() {
            mq.queue = mq.service_name.clone();
        }
        if mq.producers.is_empty() {
            mq.producers = system::ALL
                .iter()
                .map(|r| Producer {
                    role: r,
                    user: r.service_name(),
                })
                .collect();
        }
    }

    /// The signing key, or an error naming the variable when it is required and unset.
    pub fn jwt_secret(&self) -> Result<&Secret, ConfigError> {
        self.auth.jwt_secret.as_ref().ok_or_else(|| {
            ConfigError::at(
                "auth.jwt_secret",
                "required: the HS256 key that signs bearer tokens (generate one with `openssl rand -hex 32`; for a local try, `app all --dev`)",
            )
        })
    }
}
