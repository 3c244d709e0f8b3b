//! The typed values configuration is parsed into — the broker's URIs, secrets, the word
//! enums — and the error that names a bad variable.

use super::*;

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
    pub(crate) fn new(variable: &str, message: impl Into<String>) -> Self {
        Self {
            variable: variable.to_string(),
            message: message.into(),
        }
    }

    /// An error about the value at `key` in [`Settings`], named by its variable.
    pub(crate) fn at(key: &str, message: impl Into<String>) -> Self {
        let variable = variable_at(key).map_or(key, |v| v.name);
        Self::new(variable, message)
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

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::new(String::deserialize(d)?.trim()))
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
    pub fn parse(raw: &str) -> Result<Self, String> {
        let invalid = || {
            "not a valid AMQP URI (expected amqp://user:pass@host:port/vhost or amqps://…, \
             several separated by commas for a cluster)"
                .to_string()
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
            return Err("every node must be reached as the same broker user".to_string());
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

impl<'de> Deserialize<'de> for AmqpUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
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

/// The store a `DATABASE_URL` names, by its scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The dialect a `DATABASE_URL` selects, by its scheme.
    pub fn of_url(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Dialect::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Dialect::Postgres)
        } else {
            None
        }
    }
}

/// A role's store: `sqlite:` or `postgres://`, checked when loaded. `Debug` hides a
/// password.
#[derive(Clone)]
pub struct DatabaseUrl {
    url: Secret,
    dialect: Dialect,
}

impl DatabaseUrl {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        let dialect = Dialect::of_url(raw).ok_or_else(|| {
            "must be a sqlite: or postgres:// URL, e.g. sqlite://data/meeting.db".to_string()
        })?;
        Ok(Self {
            url: Secret::new(raw),
            dialect,
        })
    }

    /// The URL, password included: pass it to the driver only.
    pub fn expose(&self) -> &str {
        self.url.expose()
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }
}

impl<'de> Deserialize<'de> for DatabaseUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({:?}, ****)", self.dialect)
    }
}

/// One entry of `MQ_PRODUCERS`: the broker user a role publishes as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Producer {
    pub role: Role,
    pub user: String,
}

impl FromStr for Producer {
    type Err = String;

    fn from_str(pair: &str) -> Result<Self, String> {
        let (role, user) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not role=user"))?;
        Ok(Self {
            role: system::find(role.trim())?,
            user: user.trim().to_string(),
        })
    }
}

/// One entry of `LIVE_API_ORIGINS`: where the live page reaches a role's API, an origin or
/// `:port` of the page's own host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiOrigin {
    pub role: Role,
    pub origin: String,
}

impl FromStr for ApiOrigin {
    type Err = String;

    fn from_str(entry: &str) -> Result<Self, String> {
        let bad = || format!("{entry:?} is not role=origin, e.g. meeting=http://localhost:8081");
        let (role, origin) = entry.split_once('=').ok_or_else(bad)?;
        let origin = origin.trim().trim_end_matches('/');
        let port_only = origin
            .strip_prefix(':')
            .is_some_and(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
        if !(port_only || origin.starts_with("http://") || origin.starts_with("https://")) {
            return Err(bad());
        }
        Ok(Self {
            role: system::find(role.trim())?,
            origin: origin.to_string(),
        })
    }
}
