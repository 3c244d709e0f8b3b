//! Settings shared by every role, loaded in layers: built-in defaults → `config/default.toml`
//! → `config/<role>.toml` → environment variables (the seed's flat names).
//!
//! Every value is parsed here, once, into a typed [`Settings`]; a bad value becomes a
//! [`ConfigError`] naming the variable, so `main` can print one line and exit with status 2.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::role::Role;

/// The variables this loader reads from the environment (and, lower-cased, from the files).
pub const VARIABLES: &[&str] = &[
    "AMQP_URL",
    "MQ_EXCHANGE",
    "MQ_EXCHANGE_TYPE",
    "SERVICE_NAME",
    "MQ_QUEUE",
    "MQ_BINDINGS",
    "MQ_PREFETCH",
    "MQ_QUEUE_TYPE",
    "MQ_RETRY_DELAYS",
    "HTTP_ADDR",
    "HTTP_PORT",
    "DATABASE_URL",
    "AUTH_JWT_SECRET",
    "CORS_ALLOWED_ORIGINS",
    "SHUTDOWN_GRACE",
];

/// Variables that name one role's own resources; `app all` ignores them in the environment
/// (four roles cannot share one queue, port or database) and takes them from
/// `config/<role>.toml` or the role's defaults instead.
pub const PER_ROLE_VARIABLES: &[&str] = &[
    "SERVICE_NAME",
    "MQ_QUEUE",
    "MQ_BINDINGS",
    "HTTP_PORT",
    "DATABASE_URL",
];

/// Key used to sign tokens when `AUTH_JWT_SECRET` is unset under `app all` (local use only).
pub const DEV_JWT_SECRET: &str = "dev-only-secret-change-me";

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

/// The broker URI. `Display` and `Debug` show it with the password masked.
#[derive(Clone)]
pub struct AmqpUrl {
    raw: Secret,
    redacted: String,
}

impl AmqpUrl {
    pub fn parse(raw: &str) -> Result<Self, ConfigError> {
        let invalid = || {
            ConfigError::new(
                "AMQP_URL",
                "not a valid AMQP URI (expected amqp://user:pass@host:port/vhost or amqps://…)",
            )
        };
        let uri = lapin::uri::AMQPUri::from_str(raw).map_err(|_| invalid())?;
        let scheme = if raw.starts_with("amqps://") {
            "amqps"
        } else {
            "amqp"
        };
        let vhost = uri.vhost.replace('/', "%2f");
        let redacted = format!(
            "{scheme}://{}:****@{}:{}/{vhost}",
            uri.authority.userinfo.username, uri.authority.host, uri.authority.port
        );
        Ok(Self {
            raw: Secret::new(raw),
            redacted,
        })
    }

    /// The full URI, password included: pass it to the client library only.
    pub fn expose(&self) -> &str {
        self.raw.expose()
    }
}

impl fmt::Display for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AmqpUrl({})", self.redacted)
    }
}

/// RabbitMQ queue type for the role's queues (main, retry and dead-letter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueType {
    Classic,
    Quorum,
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

/// Everything a role needs to know about the broker.
#[derive(Clone, Debug)]
pub struct MqSettings {
    pub url: AmqpUrl,
    pub exchange: String,
    pub exchange_type: String,
    pub service_name: String,
    pub queue: String,
    pub bindings: Vec<String>,
    pub prefetch: u16,
    pub queue_type: QueueType,
    /// Delay before each retry of a failed handler; after the last one the message is parked.
    pub retry_delays: Vec<Duration>,
}

/// Typed settings of one role.
#[derive(Clone, Debug)]
pub struct Settings {
    pub role: Role,
    pub mq: MqSettings,
    pub http_addr: IpAddr,
    pub http_port: u16,
    pub database_url: String,
    /// `None` only where a development key is acceptable; see [`Settings::jwt_secret`].
    pub jwt_secret: Option<Secret>,
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

    /// The signing key, or an error naming the variable when it is required and unset.
    pub fn jwt_secret(&self) -> Result<&Secret, ConfigError> {
        self.jwt_secret.as_ref().ok_or_else(|| {
            ConfigError::new(
                "AUTH_JWT_SECRET",
                "required: the HS256 key that signs bearer tokens (generate one with `openssl rand -hex 32`)",
            )
        })
    }
}

/// The known variables present in the process environment.
pub fn process_env() -> HashMap<String, String> {
    VARIABLES
        .iter()
        .filter_map(|name| std::env::var(name).ok().map(|v| (name.to_string(), v)))
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

    let service = role.service_name();
    let defaults: [(&str, String); 13] = [
        ("amqp_url", "amqp://guest:guest@localhost:5672/%2f".into()),
        ("mq_exchange", "events".into()),
        ("mq_exchange_type", "topic".into()),
        ("service_name", service.into()),
        ("mq_bindings", role.default_bindings().into()),
        ("mq_prefetch", "64".into()),
        ("mq_queue_type", "classic".into()),
        ("mq_retry_delays", "1s,5s,30s".into()),
        ("http_addr", "0.0.0.0".into()),
        ("http_port", role.default_port().to_string()),
        ("database_url", format!("sqlite://data/{role}.db")),
        ("cors_allowed_origins", String::new()),
        ("shutdown_grace", "10s".into()),
    ];
    let mut builder = Config::builder();
    for (key, value) in defaults {
        builder = builder
            .set_default(key, value)
            .map_err(|e| ConfigError::new(key, e.to_string()))?;
    }
    for file in ["default".to_string(), role.as_str().to_string()] {
        let path = config_dir.join(format!("{file}.toml"));
        builder = builder.add_source(File::from(path).format(FileFormat::Toml).required(false));
    }
    let env: HashMap<String, String> = env
        .iter()
        .filter(|(k, _)| VARIABLES.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    builder = builder.add_source(Environment::default().source(Some(env)));
    let cfg = builder.build().map_err(|e| {
        // A file that does not parse; the message names the file, never a value from the env.
        ConfigError::new("CONFIG_DIR", format!("{}: {e}", config_dir.display()))
    })?;

    let mut out = HashMap::new();
    for name in VARIABLES {
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
    if !["topic", "direct", "fanout", "headers"].contains(&exchange_type.as_str()) {
        return Err(ConfigError::new(
            "MQ_EXCHANGE_TYPE",
            format!("{exchange_type:?} is not one of topic, direct, fanout, headers"),
        ));
    }
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
    let queue_type = match get("MQ_QUEUE_TYPE").as_str() {
        "classic" => QueueType::Classic,
        "quorum" => QueueType::Quorum,
        other => {
            return Err(ConfigError::new(
                "MQ_QUEUE_TYPE",
                format!("{other:?} is not classic or quorum"),
            ))
        }
    };
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
    let database_url = non_empty("DATABASE_URL")?;
    if !database_url.starts_with("sqlite:") {
        return Err(ConfigError::new(
            "DATABASE_URL",
            "must be a sqlite: URL, e.g. sqlite://data/meeting.db",
        ));
    }
    let jwt_secret = match get("AUTH_JWT_SECRET") {
        s if s.is_empty() => None,
        s if s.len() < 16 => {
            return Err(ConfigError::new(
                "AUTH_JWT_SECRET",
                "too short: use at least 16 characters",
            ))
        }
        s => Some(Secret::new(s)),
    };
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
            retry_delays,
        },
        http_addr,
        http_port,
        database_url,
        jwt_secret,
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

    fn load(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let env = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load(Role::Election, &env, Path::new("/nonexistent"))
    }

    #[test]
    fn defaults_follow_the_role() {
        let s = load(&[]).unwrap();
        assert_eq!(s.mq.service_name, "election-service");
        assert_eq!(s.mq.queue, "election-service");
        assert_eq!(s.mq.bindings, ["agenda.election.*", "voting.completed"]);
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
            ("MQ_QUEUE_TYPE", "stream"),
            ("MQ_RETRY_DELAYS", "1s,soon"),
            ("AMQP_URL", "http://nope"),
            ("HTTP_ADDR", "localhost:80"),
            ("AUTH_JWT_SECRET", "short"),
            ("CORS_ALLOWED_ORIGINS", "example.com"),
            ("DATABASE_URL", "postgres://x"),
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
        let s = Settings::load(Role::Election, &env, dir.path()).unwrap();
        assert_eq!(s.mq.exchange, "from-role");
        assert_eq!(s.mq.prefetch, 9);
    }
}
