//! Settings shared by every role, loaded in layers: built-in defaults → `config/default.toml`
//! → `config/<role>.toml` → environment variables, with the flat names of `mq.py`
//! (docs/architecture.md §8).
//!
//! Every value is parsed here, once, into a typed [`Settings`]; a bad value becomes a
//! [`ConfigError`] naming the variable, so `main` can print one line and exit with status 2.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::domain::{word_enum, UnknownWord};
use crate::system::{self, Role};

/// Where a variable's value comes from when nothing sets it.
pub enum Default {
    /// Unset means absent; the text says what that means.
    Absent(&'static str),
    /// The same for every role.
    Fixed(&'static str),
    /// Depends on the role. `shown` describes it in the docs when listing each role's
    /// value would not read well.
    PerRole {
        value: fn(Role) -> String,
        shown: Option<&'static str>,
    },
}

/// Who reads a variable.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The same for every role of a process.
    Shared,
    /// Names one role's own resources; `app all` takes it from `config/<role>.toml` or the
    /// role's default instead of the environment (four roles cannot share a queue, a port
    /// or a database).
    PerRole,
    /// Read by the log setup, not by [`Settings`].
    Logging,
}

/// One configuration variable: the single place its name, meaning and default are written.
/// The loader, `--help` and the README's table are all made from [`VARIABLES`].
pub struct Variable {
    pub name: &'static str,
    pub help: &'static str,
    pub default: Default,
    pub scope: Scope,
}

/// Every variable, in the order the docs list them.
pub const VARIABLES: &[Variable] = &[
    Variable {
        name: "AMQP_URL",
        help: "broker URI, `amqp://user:pass@host:port/vhost` (`amqps://` for TLS); for a cluster, one per node separated by commas, tried in turn",
        default: Default::Fixed("amqp://guest:guest@localhost:5672/%2f"),
        scope: Scope::Shared,
    },
    Variable {
        name: "MQ_EXCHANGE",
        help: "the shared exchange",
        default: Default::Fixed("events"),
        scope: Scope::Shared,
    },
    Variable {
        name: "MQ_EXCHANGE_TYPE",
        help: "exchange type: `topic`, `direct`, `fanout` or `headers`",
        default: Default::Fixed("topic"),
        scope: Scope::Shared,
    },
    Variable {
        name: "SERVICE_NAME",
        help: "producer name in the envelope; default queue name",
        default: Default::PerRole {
            value: |r| r.service_name(),
            shown: None,
        },
        scope: Scope::PerRole,
    },
    Variable {
        name: "MQ_QUEUE",
        help: "this service's durable queue",
        default: Default::Absent("`SERVICE_NAME`"),
        scope: Scope::PerRole,
    },
    Variable {
        name: "MQ_BINDINGS",
        help: "comma-separated routing keys bound to the queue",
        default: Default::PerRole {
            value: |r| r.default_bindings().join(","),
            shown: Some("the events the role consumes (see the event table)"),
        },
        scope: Scope::PerRole,
    },
    Variable {
        name: "MQ_TRUST",
        help: "`open`: events are believed from any broker user; `strict`: only from the broker users of each event's producers (`MQ_PRODUCERS`), checked on the broker-verified AMQP `user_id`",
        default: Default::Fixed("open"),
        scope: Scope::Shared,
    },
    Variable {
        name: "MQ_PRODUCERS",
        help: "the broker user each role publishes as, `role=user` comma-separated (a role may be listed twice)",
        default: Default::Absent("each role's default `SERVICE_NAME` (`meeting=meeting-service`, …)"),
        scope: Scope::Shared,
    },
    Variable {
        name: "MQ_INGRESS",
        help: "producers of `MQ_PRODUCERS` that cannot stamp `user_id` (the Python `mq.py`), comma-separated: each publishes to its own exchange `<MQ_EXCHANGE>.from.<user>`, which only it may write to, and is believed by that exchange (`app topology ingress` declares it)",
        default: Default::Absent("none"),
        scope: Scope::Shared,
    },
    Variable {
        name: "MQ_PREFETCH",
        help: "consumer prefetch",
        default: Default::Fixed("64"),
        scope: Scope::Shared,
    },
    Variable {
        name: "MQ_QUEUE_TYPE",
        help: "`classic` or `quorum`, for the queue, its retry queues and its dead-letter queue",
        default: Default::Fixed("classic"),
        scope: Scope::Shared,
    },
    Variable {
        name: "MQ_DELIVERY_LIMIT",
        help: "quorum queues: deliveries of one message before the broker itself parks it in the dead-letter queue, so a message that crashes its consumer cannot loop",
        default: Default::Fixed("20"),
        scope: Scope::Shared,
    },
    Variable {
        name: "MQ_MAX_MESSAGE_BYTES",
        help: "the largest message a consumer reads; a larger one is parked unread",
        default: Default::Fixed("1048576"),
        scope: Scope::Shared,
    },
    Variable {
        name: "MQ_CONSUMER_CHECK",
        help: "how often the consumer asks the broker whether it still lists a consumer on the queue (a passive declare); none listed means re-attach",
        default: Default::Fixed("5s"),
        scope: Scope::Shared,
    },
    Variable {
        name: "MQ_CONSUMER_WATCHDOG",
        help: "how long the queue may hold messages ready for delivery while the consumer receives and settles none, before the consumer is recreated",
        default: Default::Fixed("30s"),
        scope: Scope::Shared,
    },
    Variable {
        name: "MQ_RETRY_DELAYS",
        help: "delay before each retry of a failed event; after the last it is parked",
        default: Default::Fixed("1s,5s,30s"),
        scope: Scope::Shared,
    },
    Variable {
        name: "HTTP_ADDR",
        help: "listen address",
        default: Default::Fixed("0.0.0.0"),
        scope: Scope::Shared,
    },
    Variable {
        name: "HTTP_PORT",
        help: "listen port",
        default: Default::PerRole {
            value: |r| r.default_port.to_string(),
            shown: None,
        },
        scope: Scope::PerRole,
    },
    Variable {
        name: "HTTP_MAX_CONNECTIONS",
        help: "HTTP connections open at once; more wait in the listen backlog",
        default: Default::Fixed("1024"),
        scope: Scope::Shared,
    },
    Variable {
        name: "HTTP_HEADER_TIMEOUT",
        help: "how long a client may take to send a request's headers before the connection is closed",
        default: Default::Fixed("10s"),
        scope: Scope::Shared,
    },
    Variable {
        name: "HTTP_REQUEST_TIMEOUT",
        help: "how long a request may take, body included, before it is answered 408",
        default: Default::Fixed("30s"),
        scope: Scope::Shared,
    },
    Variable {
        name: "HTTP_MAX_BODY_BYTES",
        help: "the largest request body accepted (413 above it)",
        default: Default::Fixed("65536"),
        scope: Scope::Shared,
    },
    Variable {
        name: "DATABASE_URL",
        help: "the role's store: `sqlite://FILE` (embedded) or `postgres://user:pass@host/db` (one database per role, shared by its replicas)",
        default: Default::PerRole {
            value: |r| format!("sqlite://data/{}.db", r.name),
            shown: Some("`sqlite://data/<role>.db`"),
        },
        scope: Scope::PerRole,
    },
    Variable {
        name: "DATABASE_POOL_SIZE",
        help: "connections to a PostgreSQL store (SQLite always uses one)",
        default: Default::Fixed("10"),
        scope: Scope::Shared,
    },
    Variable {
        name: "MAX_CANDIDATES",
        help: "the election role: candidates one election may have",
        default: Default::Fixed("50"),
        scope: Scope::Shared,
    },
    Variable {
        name: "AUTH_JWT_SECRET",
        help: "HS256 key for bearer tokens, at least 32 bytes",
        default: Default::Absent(
            "none: required; only development mode (`app all --dev`) runs without it, on loopback",
        ),
        scope: Scope::Shared,
    },
    Variable {
        name: "AUTH_LEEWAY",
        help: "clock skew allowed on a token's `exp` and `nbf`",
        default: Default::Fixed("5s"),
        scope: Scope::Shared,
    },
    Variable {
        name: "CORS_ALLOWED_ORIGINS",
        help: "comma-separated origins of the browser front end",
        default: Default::Absent("none (no CORS headers)"),
        scope: Scope::Shared,
    },
    Variable {
        name: "SHUTDOWN_GRACE",
        help: "how long shutdown may take to finish work in hand and flush the outbox",
        default: Default::Fixed("10s"),
        scope: Scope::Shared,
    },
    Variable {
        name: "LOG_FORMAT",
        help: "`text` or `json`",
        default: Default::Fixed("text"),
        scope: Scope::Logging,
    },
    Variable {
        name: "RUST_LOG",
        help: "log level filter",
        default: Default::Fixed("info"),
        scope: Scope::Logging,
    },
];

impl Variable {
    /// The default as the docs show it, in Markdown.
    fn shown_default(&self) -> String {
        match &self.default {
            Default::Absent(text) => text.to_string(),
            Default::Fixed(value) => format!("`{value}`"),
            Default::PerRole {
                shown: Some(text), ..
            } => text.to_string(),
            Default::PerRole { value, shown: None } => system::ALL
                .iter()
                .map(|r| format!("`{}` ({r})", value(r)))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// Names of the variables [`Settings`] reads, per-role ones included.
fn settings_variables() -> impl Iterator<Item = &'static Variable> {
    VARIABLES.iter().filter(|v| v.scope != Scope::Logging)
}

/// Whether `app all` ignores `name` in the environment (see [`Scope::PerRole`]).
pub fn is_per_role(name: &str) -> bool {
    VARIABLES
        .iter()
        .any(|v| v.name == name && v.scope == Scope::PerRole)
}

/// The variables as `--help` lists them.
pub fn help() -> String {
    let mut out = String::from(
        "Configuration (environment variables; also config/default.toml and config/<role>.toml,\n\
         keys in lower case; CONFIG_DIR moves that folder):\n",
    );
    for v in VARIABLES {
        let plain = |s: &str| s.replace('`', "");
        out.push_str(&format!(
            "  {:<21} {} [default: {}]\n",
            v.name,
            plain(v.help),
            plain(&v.shown_default())
        ));
    }
    out
}

/// The variables as the README's Markdown table.
pub fn markdown_table() -> String {
    let mut out = String::from("| variable | meaning | default |\n|---|---|---|\n");
    for v in VARIABLES {
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            v.name,
            v.help,
            v.shown_default()
        ));
    }
    out
}

/// The key of development mode (`app all --dev`, `app token --dev`, `app walk --dev`), which
/// also listens on loopback only. Never used unless asked for.
pub const DEV_JWT_SECRET: &str = "development-mode-only-key-never-in-production";

/// The shortest `AUTH_JWT_SECRET` accepted.
pub const MIN_SECRET_BYTES: usize = 32;

/// A configuration problem, phrased for a one-line startup error.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct ConfigError {
    pub variable: String,
    pub message: String,
}

impl ConfigError {
    fn new(variable: &str, message: impl Into<String>) -> Self {
        Self {
            variable: variable.to_string(),
            message: message.into(),
        }
    }
}

/// A string that never shows itself in `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself; call only where it is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

/// The broker's URIs: one node, or several nodes of a cluster (comma-separated), tried in
/// turn. `Display` and `Debug` show them with the passwords masked.
#[derive(Clone)]
pub struct AmqpUrl {
    nodes: Vec<(Secret, String)>,
    user: String,
}

impl AmqpUrl {
    pub fn parse(raw: &str) -> Result<Self, ConfigError> {
        let invalid = || {
            ConfigError::new(
                "AMQP_URL",
                "not a valid AMQP URI (expected amqp://user:pass@host:port/vhost or amqps://…, \
                 several separated by commas for a cluster)",
            )
        };
        let mut nodes = Vec::new();
        for one in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let uri = lapin::uri::AMQPUri::from_str(one).map_err(|_| invalid())?;
            let scheme = if one.starts_with("amqps://") {
                "amqps"
            } else {
                "amqp"
            };
            let vhost = uri.vhost.replace('/', "%2f");
            let redacted = format!(
                "{scheme}://{}:****@{}:{}/{vhost}",
                uri.authority.userinfo.username, uri.authority.host, uri.authority.port
            );
            nodes.push((Secret::new(one), redacted));
        }
        if nodes.is_empty() {
            return Err(invalid());
        }
        let users: std::collections::BTreeSet<String> = raw
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .filter_map(|one| lapin::uri::AMQPUri::from_str(one).ok())
            .map(|uri| uri.authority.userinfo.username)
            .collect();
        if users.len() != 1 {
            return Err(ConfigError::new(
                "AMQP_URL",
                "every node must be reached as the same broker user",
            ));
        }
        let user = users.into_iter().next().unwrap_or_default();
        Ok(Self { nodes, user })
    }

    /// The first node's full URI, password included: pass it to the client library only.
    pub fn expose(&self) -> &str {
        self.nodes[0].0.expose()
    }

    /// The broker user the role connects as: its identity on the bus.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// How many nodes there are.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a URL has at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i` (modulo the count): its full URI, and how to show it.
    pub fn node(&self, i: usize) -> (&str, &str) {
        let (raw, shown) = &self.nodes[i % self.nodes.len()];
        (raw.expose(), shown)
    }
}

impl fmt::Display for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<&str> = self.nodes.iter().map(|(_, s)| s.as_str()).collect();
        f.write_str(&shown.join(","))
    }
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AmqpUrl({self})")
    }
}

word_enum! {
    /// RabbitMQ queue type for the role's queues (main, retry and dead-letter).
    QueueType {
        Classic = "classic",
        Quorum = "quorum",
    }
}

word_enum! {
    /// Whom a consumer believes: anyone who can publish (`open`, for a laptop with one
    /// broker user), or only each event's producers, by their broker user (`strict`).
    Trust {
        Open = "open",
        Strict = "strict",
    }
}

word_enum! {
    /// The kind of the shared exchange.
    ExchangeType {
        Topic = "topic",
        Direct = "direct",
        Fanout = "fanout",
        Headers = "headers",
    }
}

impl ExchangeType {
    /// The client library's name for it.
    pub fn kind(self) -> lapin::ExchangeKind {
        match self {
            ExchangeType::Topic => lapin::ExchangeKind::Topic,
            ExchangeType::Direct => lapin::ExchangeKind::Direct,
            ExchangeType::Fanout => lapin::ExchangeKind::Fanout,
            ExchangeType::Headers => lapin::ExchangeKind::Headers,
        }
    }
}

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
    /// Whether `user` may publish `event_type` here: always in `open` mode; in `strict`
    /// mode only a broker user of a role the catalogue names as its producer.
    pub fn trusts(&self, event_type: crate::events::EventType, user: Option<&str>) -> bool {
        match self.trust {
            Trust::Open => true,
            Trust::Strict => user.is_some_and(|user| {
                event_type.producers().any(|role| {
                    self.producers
                        .iter()
                        .any(|(r, u)| r == role.name && u == user)
                })
            }),
        }
    }

    /// The exchange only `user` may write to, bound into the shared one for the routing keys
    /// of the roles it produces for (docs/architecture.md §10).
    pub fn ingress_exchange(&self, user: &str) -> String {
        format!("{}.from.{user}", self.exchange)
    }

    /// The ingress producer whose exchange a message was first published to, if any.
    pub fn ingress_sender(&self, exchange: &str) -> Option<&str> {
        self.ingress
            .iter()
            .find(|user| self.ingress_exchange(user) == exchange)
            .map(String::as_str)
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
    /// The largest request body.
    pub http_max_body_bytes: usize,
    /// Connections to a PostgreSQL store.
    pub database_pool_size: u32,
    /// `None` only where a development key is acceptable; see [`Settings::jwt_secret`].
    pub jwt_secret: Option<Secret>,
    /// Candidates one election may have.
    pub max_candidates: u32,
    /// Clock skew allowed on a token's `exp` and `nbf`.
    pub auth_leeway: Duration,
    pub cors_allowed_origins: Vec<String>,
    /// How long shutdown may take to finish deliveries in hand and flush the outbox.
    pub shutdown_grace: Duration,
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

/// The known variables present in the process environment.
pub fn process_env() -> HashMap<String, String> {
    settings_variables()
        .filter_map(|v| std::env::var(v.name).ok().map(|s| (v.name.to_string(), s)))
        .collect()
}

/// `CONFIG_DIR`, or `config` relative to the working directory.
pub fn config_dir() -> PathBuf {
    std::env::var_os("CONFIG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("config"))
}

fn layered(
    role: Role,
    env: &HashMap<String, String>,
    config_dir: &Path,
) -> Result<HashMap<String, String>, ConfigError> {
    use config::{Config, Environment, File, FileFormat};

    let mut builder = Config::builder();
    for v in settings_variables() {
        let value = match &v.default {
            Default::Absent(_) => continue,
            Default::Fixed(value) => value.to_string(),
            Default::PerRole { value, .. } => value(role),
        };
        builder = builder
            .set_default(v.name.to_lowercase(), value)
            .map_err(|e| ConfigError::new(v.name, e.to_string()))?;
    }
    for file in ["default", role.name] {
        let path = config_dir.join(format!("{file}.toml"));
        builder = builder.add_source(File::from(path).format(FileFormat::Toml).required(false));
    }
    let env: HashMap<String, String> = env
        .iter()
        .filter(|(k, _)| settings_variables().any(|v| v.name == k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    builder = builder.add_source(Environment::default().source(Some(env)));
    let cfg = builder.build().map_err(|_| file_error(role, config_dir))?;

    let mut out = HashMap::new();
    for name in settings_variables().map(|v| v.name) {
        let key = name.to_lowercase();
        match cfg.get_string(&key) {
            Ok(value) => {
                out.insert(name.to_string(), value);
            }
            Err(config::ConfigError::NotFound(_)) => {}
            Err(_) => return Err(ConfigError::new(name, "must be a string or a number")),
        }
    }
    Ok(out)
}

/// Which configuration file does not parse, and where: one line that names the file and the
/// line, never the file's contents (they may hold secrets).
fn file_error(role: Role, config_dir: &Path) -> ConfigError {
    use config::{Config, File, FileFormat};
    for name in ["default", role.name] {
        let path = config_dir.join(format!("{name}.toml"));
        let parsed = Config::builder()
            .add_source(
                File::from(path.clone())
                    .format(FileFormat::Toml)
                    .required(false),
            )
            .build();
        if let Err(e) = parsed {
            let text = e.to_string();
            let line = text
                .split("line ")
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .filter(|n| !n.is_empty())
                .map(|n| format!(" at line {n}"))
                .unwrap_or_default();
            return ConfigError::new(
                "CONFIG_DIR",
                format!(
                    "{}: not valid TOML{line} (contents not shown)",
                    path.display()
                ),
            );
        }
    }
    ConfigError::new(
        "CONFIG_DIR",
        format!(
            "{}: the configuration files do not load",
            config_dir.display()
        ),
    )
}

fn from_raw(role: Role, raw: &HashMap<String, String>) -> Result<Settings, ConfigError> {
    let get = |name: &str| {
        raw.get(name)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let non_empty = |name: &str| {
        let v = get(name);
        if v.is_empty() {
            Err(ConfigError::new(name, "must not be empty"))
        } else {
            Ok(v)
        }
    };

    let url = AmqpUrl::parse(&non_empty("AMQP_URL")?)?;
    let exchange = non_empty("MQ_EXCHANGE")?;
    let exchange_type = non_empty("MQ_EXCHANGE_TYPE")?;
    let exchange_type: ExchangeType = exchange_type.parse().map_err(|e: UnknownWord| {
        ConfigError::new(
            "MQ_EXCHANGE_TYPE",
            format!("{exchange_type:?} is not {}", e.choices()),
        )
    })?;
    let service_name = non_empty("SERVICE_NAME")?;
    let queue = match get("MQ_QUEUE") {
        q if q.is_empty() => service_name.clone(),
        q => q,
    };
    let bindings = list(&get("MQ_BINDINGS"));
    if bindings.is_empty() {
        return Err(ConfigError::new(
            "MQ_BINDINGS",
            "needs at least one routing key",
        ));
    }
    let prefetch = get("MQ_PREFETCH")
        .parse::<u16>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ConfigError::new("MQ_PREFETCH", "must be a whole number from 1 to 65535"))?;
    let queue_type = get("MQ_QUEUE_TYPE");
    let queue_type: QueueType = queue_type.parse().map_err(|e: UnknownWord| {
        ConfigError::new(
            "MQ_QUEUE_TYPE",
            format!("{queue_type:?} is not {}", e.choices()),
        )
    })?;
    let trust = get("MQ_TRUST");
    let trust: Trust = trust.parse().map_err(|e: UnknownWord| {
        ConfigError::new("MQ_TRUST", format!("{trust:?} is not {}", e.choices()))
    })?;
    let producers = match get("MQ_PRODUCERS") {
        p if p.is_empty() => system::ALL
            .iter()
            .map(|r| (r.name.to_string(), r.service_name()))
            .collect(),
        p => list(&p)
            .iter()
            .map(|pair| {
                let (role, user) = pair.split_once('=').ok_or_else(|| {
                    ConfigError::new("MQ_PRODUCERS", format!("{pair:?} is not role=user"))
                })?;
                let role =
                    system::find(role.trim()).map_err(|e| ConfigError::new("MQ_PRODUCERS", e))?;
                Ok((role.name.to_string(), user.trim().to_string()))
            })
            .collect::<Result<Vec<_>, ConfigError>>()?,
    };
    let ingress = list(&get("MQ_INGRESS"));
    for user in &ingress {
        if !producers.iter().any(|(_, u)| u == user) {
            return Err(ConfigError::new(
                "MQ_INGRESS",
                format!("{user:?} is not a producer of MQ_PRODUCERS"),
            ));
        }
        if !user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        {
            return Err(ConfigError::new(
                "MQ_INGRESS",
                format!(
                    "{:?} cannot name an exchange (letters, digits, - _ . : only)",
                    user
                ),
            ));
        }
    }
    let delivery_limit = get("MQ_DELIVERY_LIMIT")
        .parse::<u32>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ConfigError::new("MQ_DELIVERY_LIMIT", "must be a whole number above 0"))?;
    let max_message_bytes = get("MQ_MAX_MESSAGE_BYTES")
        .parse::<usize>()
        .ok()
        .filter(|n| (1024..=128 * 1024 * 1024).contains(n))
        .ok_or_else(|| {
            ConfigError::new(
                "MQ_MAX_MESSAGE_BYTES",
                "must be a number of bytes from 1024 to 134217728",
            )
        })?;
    let consumer_check = parse_duration("MQ_CONSUMER_CHECK", &get("MQ_CONSUMER_CHECK"))?;
    let consumer_watchdog = parse_duration("MQ_CONSUMER_WATCHDOG", &get("MQ_CONSUMER_WATCHDOG"))?;
    if consumer_check < Duration::from_millis(100) {
        return Err(ConfigError::new(
            "MQ_CONSUMER_CHECK",
            "must be at least 100ms",
        ));
    }
    if consumer_watchdog < consumer_check {
        return Err(ConfigError::new(
            "MQ_CONSUMER_WATCHDOG",
            "must be at least MQ_CONSUMER_CHECK",
        ));
    }
    let retry_delays = list(&get("MQ_RETRY_DELAYS"))
        .iter()
        .map(|d| parse_duration("MQ_RETRY_DELAYS", d))
        .collect::<Result<Vec<_>, _>>()?;
    if retry_delays
        .iter()
        .any(|d| d.is_zero() || d.as_millis() > u32::MAX as u128)
    {
        return Err(ConfigError::new(
            "MQ_RETRY_DELAYS",
            "each delay must be above zero and below 49 days",
        ));
    }
    let http_addr = get("HTTP_ADDR").parse::<IpAddr>().map_err(|_| {
        ConfigError::new(
            "HTTP_ADDR",
            "must be an IP address such as 0.0.0.0 or 127.0.0.1",
        )
    })?;
    let http_port = get("HTTP_PORT")
        .parse::<u16>()
        .map_err(|_| ConfigError::new("HTTP_PORT", "must be a port number from 0 to 65535"))?;
    let http_max_connections = get("HTTP_MAX_CONNECTIONS")
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=1_000_000).contains(n))
        .ok_or_else(|| {
            ConfigError::new(
                "HTTP_MAX_CONNECTIONS",
                "must be a whole number from 1 to 1000000",
            )
        })?;
    let http_header_timeout = parse_duration("HTTP_HEADER_TIMEOUT", &get("HTTP_HEADER_TIMEOUT"))?;
    let http_request_timeout =
        parse_duration("HTTP_REQUEST_TIMEOUT", &get("HTTP_REQUEST_TIMEOUT"))?;
    for (name, d) in [
        ("HTTP_HEADER_TIMEOUT", http_header_timeout),
        ("HTTP_REQUEST_TIMEOUT", http_request_timeout),
    ] {
        if d.is_zero() {
            return Err(ConfigError::new(name, "must be above zero"));
        }
    }
    let http_max_body_bytes = get("HTTP_MAX_BODY_BYTES")
        .parse::<usize>()
        .ok()
        .filter(|n| (1024..=64 * 1024 * 1024).contains(n))
        .ok_or_else(|| {
            ConfigError::new(
                "HTTP_MAX_BODY_BYTES",
                "must be a number of bytes from 1024 to 67108864",
            )
        })?;
    let database_url = non_empty("DATABASE_URL")?;
    if crate::store::Dialect::of_url(&database_url).is_none() {
        return Err(ConfigError::new(
            "DATABASE_URL",
            "must be a sqlite: or postgres:// URL, e.g. sqlite://data/meeting.db",
        ));
    }
    let database_pool_size = get("DATABASE_POOL_SIZE")
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=1000).contains(n))
        .ok_or_else(|| {
            ConfigError::new(
                "DATABASE_POOL_SIZE",
                "must be a whole number from 1 to 1000",
            )
        })?;
    let jwt_secret = match raw.get("AUTH_JWT_SECRET") {
        None => None,
        Some(s) if s.trim().is_empty() => {
            return Err(ConfigError::new(
                "AUTH_JWT_SECRET",
                "is set but blank: set the key, or unset it and ask for development mode (`app all --dev`)",
            ))
        }
        Some(s) if s.trim().len() < MIN_SECRET_BYTES => {
            return Err(ConfigError::new(
                "AUTH_JWT_SECRET",
                format!("too short: use at least {MIN_SECRET_BYTES} bytes (`openssl rand -hex 32`)"),
            ))
        }
        Some(s) => Some(Secret::new(s.trim())),
    };
    let max_candidates = get("MAX_CANDIDATES")
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=10_000).contains(n))
        .ok_or_else(|| {
            ConfigError::new("MAX_CANDIDATES", "must be a whole number from 1 to 10000")
        })?;
    let auth_leeway = parse_duration("AUTH_LEEWAY", &get("AUTH_LEEWAY"))?;
    if auth_leeway > Duration::from_secs(300) {
        return Err(ConfigError::new("AUTH_LEEWAY", "must be at most 5m"));
    }
    let cors_allowed_origins = list(&get("CORS_ALLOWED_ORIGINS"));
    for origin in &cors_allowed_origins {
        if !(origin.starts_with("http://") || origin.starts_with("https://"))
            || axum::http::HeaderValue::from_str(origin).is_err()
        {
            return Err(ConfigError::new(
                "CORS_ALLOWED_ORIGINS",
                format!("{origin:?} is not an origin such as https://app.example.com"),
            ));
        }
    }
    let shutdown_grace = parse_duration("SHUTDOWN_GRACE", &get("SHUTDOWN_GRACE"))?;

    Ok(Settings {
        role,
        mq: MqSettings {
            url,
            exchange,
            exchange_type,
            service_name,
            queue,
            bindings,
            prefetch,
            queue_type,
            delivery_limit,
            max_message_bytes,
            consumer_check,
            consumer_watchdog,
            retry_delays,
            trust,
            producers,
            ingress,
        },
        http_addr,
        http_port,
        database_url,
        http_max_connections,
        http_header_timeout,
        http_request_timeout,
        http_max_body_bytes,
        database_pool_size,
        jwt_secret,
        max_candidates,
        auth_leeway,
        cors_allowed_origins,
        shutdown_grace,
    })
}

fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

fn parse_duration(variable: &str, value: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value).map_err(|_| {
        ConfigError::new(
            variable,
            format!("{value:?} is not a duration such as 500ms, 5s or 2m"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn election() -> Role {
        system::find("election").unwrap()
    }

    fn load(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let env = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load(election(), &env, Path::new("/nonexistent"))
    }

    #[test]
    fn defaults_follow_the_role() {
        let s = load(&[]).unwrap();
        assert_eq!(s.mq.service_name, "election-service");
        assert_eq!(s.mq.queue, "election-service");
        assert_eq!(
            s.mq.bindings,
            [
                "agenda.election.create",
                "agenda.election.start",
                "voting.completed",
                "permission.granted",
                "permission.revoked"
            ]
        );
        assert_eq!(s.http_port, 8082);
        assert_eq!(s.database_url, "sqlite://data/election.db");
        assert_eq!(s.mq.queue_type, QueueType::Classic);
        assert!(s.jwt_secret.is_none());
    }

    #[test]
    fn environment_overrides_defaults() {
        let s = load(&[
            ("SERVICE_NAME", "el-2"),
            ("MQ_BINDINGS", " a.b , c.* ,"),
            ("HTTP_PORT", "9000"),
            ("MQ_RETRY_DELAYS", "100ms,2s"),
        ])
        .unwrap();
        assert_eq!(s.mq.queue, "el-2", "queue defaults to SERVICE_NAME");
        assert_eq!(s.mq.bindings, ["a.b", "c.*"]);
        assert_eq!(s.http_port, 9000);
        assert_eq!(
            s.mq.retry_delays,
            [Duration::from_millis(100), Duration::from_secs(2)]
        );
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (var, value) in [
            ("HTTP_PORT", "eighty"),
            ("MQ_PREFETCH", "0"),
            ("MQ_DELIVERY_LIMIT", "0"),
            ("MQ_TRUST", "trusting"),
            ("MQ_QUEUE_TYPE", "stream"),
            ("MQ_EXCHANGE_TYPE", "x-delayed"),
            ("MQ_EXCHANGE", " "),
            ("SHUTDOWN_GRACE", "later"),
            ("MQ_RETRY_DELAYS", "1s,soon"),
            ("AMQP_URL", "http://nope"),
            ("HTTP_ADDR", "localhost:80"),
            ("AUTH_JWT_SECRET", "short"),
            ("AUTH_JWT_SECRET", "   "),
            ("AUTH_JWT_SECRET", "0123456789012345678901234567890"),
            ("AUTH_LEEWAY", "1h"),
            ("CORS_ALLOWED_ORIGINS", "example.com"),
            ("DATABASE_URL", "mysql://x"),
            ("DATABASE_POOL_SIZE", "0"),
            ("HTTP_MAX_CONNECTIONS", "0"),
            ("HTTP_HEADER_TIMEOUT", "0s"),
            ("HTTP_MAX_BODY_BYTES", "12"),
        ] {
            let err = load(&[(var, value)]).unwrap_err();
            assert_eq!(err.variable, var, "{err}");
            assert!(!err.to_string().contains('\n'));
        }
    }

    #[test]
    fn the_amqp_password_never_shows() {
        let s = load(&[("AMQP_URL", "amqp://bob:hunter2@rabbit:5673/prod")]).unwrap();
        let shown = format!("{} {:?} {:?}", s.mq.url, s.mq.url, s);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("amqp://bob:****@rabbit:5673/prod"),
            "{shown}"
        );
        let err = load(&[("AMQP_URL", "amqp://bob:hunter2@rabbit:notaport/x")]).unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
    }

    #[test]
    fn strict_mode_believes_only_each_events_producers() {
        use crate::events::EventType;
        let open = load(&[]).unwrap();
        assert!(open.mq.trusts(EventType::PermissionGranted, None));
        let strict = load(&[
            ("MQ_TRUST", "strict"),
            (
                "MQ_PRODUCERS",
                "permission=perm-user,meeting=meet-user,permission=py-helper",
            ),
        ])
        .unwrap();
        let t = EventType::PermissionGranted;
        assert!(strict.mq.trusts(t, Some("perm-user")));
        assert!(
            strict.mq.trusts(t, Some("py-helper")),
            "a role listed twice"
        );
        assert!(
            !strict.mq.trusts(t, Some("meet-user")),
            "meeting does not publish grants"
        );
        assert!(!strict.mq.trusts(t, None), "no user_id, no trust");
        assert!(strict
            .mq
            .trusts(EventType::MeetingCreated, Some("meet-user")));
        let defaults = load(&[("MQ_TRUST", "strict")]).unwrap();
        assert!(defaults.mq.trusts(t, Some("permission-service")));
        assert_eq!(
            load(&[("MQ_PRODUCERS", "treasury=x")])
                .unwrap_err()
                .variable,
            "MQ_PRODUCERS"
        );
    }

    #[test]
    fn an_ingress_producer_is_known_by_its_own_exchange() {
        let s = load(&[
            ("MQ_EXCHANGE", "events"),
            ("MQ_PRODUCERS", "meeting=meeting-service,meeting=py-meeting"),
            ("MQ_INGRESS", "py-meeting"),
        ])
        .unwrap();
        assert_eq!(
            s.mq.ingress_exchange("py-meeting"),
            "events.from.py-meeting"
        );
        assert_eq!(
            s.mq.ingress_sender("events.from.py-meeting"),
            Some("py-meeting")
        );
        assert_eq!(s.mq.ingress_sender("events"), None);
        assert_eq!(s.mq.ingress_sender("events.from.meeting-service"), None);
        let not_a_producer = load(&[("MQ_INGRESS", "stranger")]).unwrap_err();
        assert_eq!(not_a_producer.variable, "MQ_INGRESS");
        let unnamable = load(&[
            ("MQ_PRODUCERS", "meeting=py meeting"),
            ("MQ_INGRESS", "py meeting"),
        ])
        .unwrap_err();
        assert_eq!(unnamable.variable, "MQ_INGRESS");
    }

    #[test]
    fn a_cluster_is_several_nodes_tried_in_turn() {
        let s = load(&[(
            "AMQP_URL",
            "amqp://bob:hunter2@r1:5672/%2f, amqp://bob:hunter2@r2:5672/%2f,amqp://bob:hunter2@r3:5673/%2f",
        )])
        .unwrap();
        assert_eq!(s.mq.url.len(), 3);
        assert_eq!(s.mq.url.node(4).0, "amqp://bob:hunter2@r2:5672/%2f");
        let shown = s.mq.url.to_string();
        assert_eq!(
            shown,
            "amqp://bob:****@r1:5672/%2f,amqp://bob:****@r2:5672/%2f,amqp://bob:****@r3:5673/%2f"
        );
        let err = load(&[("AMQP_URL", "amqp://a@r1/%2f,http://r2")]).unwrap_err();
        assert_eq!(err.variable, "AMQP_URL");
    }

    #[test]
    fn a_broken_file_is_named_with_its_line_never_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("election.toml"),
            "mq_exchange = \"ok\"\namqp_url = \"amqp://u:hunter2@h/%2f\nauth_jwt_secret = \"s3cr3t",
        )
        .unwrap();
        let err = Settings::load(election(), &HashMap::new(), dir.path()).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.variable, "CONFIG_DIR");
        assert!(
            text.contains("election.toml") && text.contains("line 2"),
            "{text}"
        );
        assert!(
            !text.contains("hunter2") && !text.contains("s3cr3t"),
            "{text}"
        );
        assert!(!text.contains('\n'), "{text}");
    }

    #[test]
    fn files_are_layered_under_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("default.toml"),
            "mq_exchange = \"from-default\"\nmq_prefetch = 7\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("election.toml"),
            "mq_exchange = \"from-role\"\n",
        )
        .unwrap();
        let env = HashMap::from([("MQ_PREFETCH".to_string(), "9".to_string())]);
        let s = Settings::load(election(), &env, dir.path()).unwrap();
        assert_eq!(s.mq.exchange, "from-role");
        assert_eq!(s.mq.prefetch, 9);
    }

    #[test]
    fn help_lists_every_variable_with_its_default() {
        let help = help();
        for v in VARIABLES {
            let line = help
                .lines()
                .find(|l| l.trim_start().starts_with(v.name))
                .unwrap_or_else(|| panic!("{} missing from --help", v.name));
            assert!(line.contains("[default: "), "{line}");
        }
        assert!(help.contains("[default: 8081 (meeting)") || help.contains("8081"));
    }

    #[test]
    fn every_default_parses() {
        for role in system::ALL {
            let s = Settings::load(role, &HashMap::new(), Path::new("/nonexistent")).unwrap();
            assert_eq!(s.http_port, role.default_port);
            assert_eq!(s.mq.service_name, role.service_name());
        }
    }

    #[test]
    fn the_readme_table_is_the_generated_one() {
        let readme = include_str!("../../../README.md");
        let table = markdown_table();
        assert!(
            readme.contains(&table),
            "README.md's configuration table is out of date; replace it with:\n{table}"
        );
    }
}
