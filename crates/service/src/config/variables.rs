//! The variable table: each configuration variable's name, meaning and default, written
//! once; `--help` and docs/configuration.md's table are made from it.

use super::*;

/// Where a variable's value comes from when nothing sets it.
pub enum Fallback {
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

/// Who reads a variable, and where [`Settings`] keeps it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The same for every role of a process; the path of its field in [`Settings`].
    Shared(&'static str),
    /// Names one role's own resources; `app all` takes it from `config/<role>.toml` or the
    /// role's default instead of the environment (five roles cannot share a queue, a port
    /// or a database).
    PerRole(&'static str),
    /// Read by the log and trace setup, not by [`Settings`].
    Logging,
}

/// One configuration variable: the single place its name, meaning and default are written.
/// The loader, `--help` and docs/configuration.md's table are all made from [`VARIABLES`].
pub struct Variable {
    pub name: &'static str,
    pub help: &'static str,
    pub default: Fallback,
    pub scope: Scope,
}

/// The log and trace variables, read before any role's [`Settings`] (their names are the
/// standard ones; `telemetry` and `trace` read them through these constants).
pub const LOG_FORMAT: &str = "LOG_FORMAT";
pub const RUST_LOG: &str = "RUST_LOG";
pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
pub const OTEL_EXPORTER_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
pub const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
pub const OTEL_TRACES_SAMPLER: &str = "OTEL_TRACES_SAMPLER";
pub const OTEL_TRACES_SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
pub const OTEL_RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";

/// Every variable, in the order the docs list them.
pub const VARIABLES: &[Variable] = &[
    Variable {
        name: "AMQP_URL",
        help: "broker URI, `amqp://user:pass@host:port/vhost` (`amqps://` for TLS); for a cluster, one per node separated by commas, tried in turn",
        default: Fallback::Fixed("amqp://guest:guest@localhost:5672/%2f"),
        scope: Scope::Shared("mq.url"),
    },
    Variable {
        name: "MQ_EXCHANGE",
        help: "the shared exchange",
        default: Fallback::Fixed("events"),
        scope: Scope::Shared("mq.exchange"),
    },
    Variable {
        name: "MQ_EXCHANGE_TYPE",
        help: "exchange type: `topic`, `direct`, `fanout` or `headers`",
        default: Fallback::Fixed("topic"),
        scope: Scope::Shared("mq.exchange_type"),
    },
    Variable {
        name: "SERVICE_NAME",
        help: "producer name in the envelope; default queue name",
        default: Fallback::PerRole {
            value: |r| r.service_name(),
            shown: None,
        },
        scope: Scope::PerRole("mq.service_name"),
    },
    Variable {
        name: "MQ_QUEUE",
        help: "this service's durable queue",
        default: Fallback::Absent("`SERVICE_NAME`"),
        scope: Scope::PerRole("mq.queue"),
    },
    Variable {
        name: "MQ_BINDINGS",
        help: "comma-separated routing keys bound to the queue",
        default: Fallback::PerRole {
            value: |r| r.default_bindings().join(","),
            shown: Some("the events the role consumes (see the event table)"),
        },
        scope: Scope::PerRole("mq.bindings"),
    },
    Variable {
        name: "MQ_TRUST",
        help: "`open`: events are believed from any broker user; `strict`: only from the broker users of each event's producers (`MQ_PRODUCERS`), checked on the broker-verified AMQP `user_id`",
        default: Fallback::Fixed("open"),
        scope: Scope::Shared("mq.trust"),
    },
    Variable {
        name: "MQ_PRODUCERS",
        help: "the broker user each role publishes as, `role=user` comma-separated (a role may be listed twice)",
        default: Fallback::Absent("each role's default `SERVICE_NAME` (`meeting=meeting-service`, …)"),
        scope: Scope::Shared("mq.producers"),
    },
    Variable {
        name: "MQ_INGRESS",
        help: "producers of `MQ_PRODUCERS` that cannot stamp `user_id` (the Python `mq.py`), comma-separated: each publishes to its own exchange `<MQ_EXCHANGE>.from.<user>`, which only it may write to, and is believed by that exchange (`app topology ingress` declares it)",
        default: Fallback::Absent("none"),
        scope: Scope::Shared("mq.ingress"),
    },
    Variable {
        name: "EVENT_EMIT_VERSIONS",
        help: "the version this role publishes of an event type, `event_type=version` comma-separated (`agenda.election.create=1` while some consumer reads only version 1); an event the pinned version cannot say is refused (409), never sent half-meant",
        default: Fallback::Absent("each type's newest version"),
        scope: Scope::Shared("mq.emit_versions"),
    },
    Variable {
        name: "EVENT_READ_VERSIONS",
        help: "the newest version this role reads of an event type, `event_type=version` comma-separated: a newer one is read as that version only across forward-compatible steps, or parked as `unknown_version` (for running as an older build would, in a rolling deploy)",
        default: Fallback::Absent("each type's newest version"),
        scope: Scope::Shared("mq.read_versions"),
    },
    Variable {
        name: "MQ_PREFETCH",
        help: "consumer prefetch",
        default: Fallback::Fixed("64"),
        scope: Scope::Shared("mq.prefetch"),
    },
    Variable {
        name: "MQ_QUEUE_TYPE",
        help: "`classic` or `quorum`, for the queue, its retry queues and its dead-letter queue",
        default: Fallback::Fixed("classic"),
        scope: Scope::Shared("mq.queue_type"),
    },
    Variable {
        name: "MQ_DELIVERY_LIMIT",
        help: "quorum queues: deliveries of one message before the broker itself parks it in the dead-letter queue, so a message that crashes its consumer cannot loop",
        default: Fallback::Fixed("20"),
        scope: Scope::Shared("mq.delivery_limit"),
    },
    Variable {
        name: "MQ_MAX_MESSAGE_BYTES",
        help: "the largest message a consumer reads; a larger one is parked unread",
        default: Fallback::Fixed("1048576"),
        scope: Scope::Shared("mq.max_message_bytes"),
    },
    Variable {
        name: "MQ_CONSUMER_CHECK",
        help: "how often the consumer asks the broker whether it still lists a consumer on the queue (a passive declare); none listed means re-attach",
        default: Fallback::Fixed("5s"),
        scope: Scope::Shared("mq.consumer_check"),
    },
    Variable {
        name: "MQ_CONSUMER_WATCHDOG",
        help: "how long the queue may hold messages ready for delivery while the consumer receives and settles none, before the consumer is recreated",
        default: Fallback::Fixed("30s"),
        scope: Scope::Shared("mq.consumer_watchdog"),
    },
    Variable {
        name: "MQ_RETRY_DELAYS",
        help: "delay before each retry of a failed event; after the last it is parked",
        default: Fallback::Fixed("1s,5s,30s"),
        scope: Scope::Shared("mq.retry_delays"),
    },
    Variable {
        name: "HTTP_ADDR",
        help: "listen address",
        default: Fallback::Fixed("0.0.0.0"),
        scope: Scope::Shared("http.addr"),
    },
    Variable {
        name: "HTTP_PORT",
        help: "listen port",
        default: Fallback::PerRole {
            value: |r| r.default_port.to_string(),
            shown: None,
        },
        scope: Scope::PerRole("http.port"),
    },
    Variable {
        name: "HTTP_MAX_CONNECTIONS",
        help: "HTTP connections open at once; more wait in the listen backlog",
        default: Fallback::Fixed("1024"),
        scope: Scope::Shared("http.max_connections"),
    },
    Variable {
        name: "HTTP_HEADER_TIMEOUT",
        help: "how long a client may take to send a request's headers before the connection is closed",
        default: Fallback::Fixed("10s"),
        scope: Scope::Shared("http.header_timeout"),
    },
    Variable {
        name: "HTTP_REQUEST_TIMEOUT",
        help: "how long a request may take, body included, before it is answered 408",
        default: Fallback::Fixed("30s"),
        scope: Scope::Shared("http.request_timeout"),
    },
    Variable {
        name: "HTTP_WRITE_TIMEOUT",
        help: "how long a write may wait for the client to take bytes (a reader that stopped, an event stream's say) before the connection is closed",
        default: Fallback::Fixed("30s"),
        scope: Scope::Shared("http.write_timeout"),
    },
    Variable {
        name: "HTTP_MAX_BODY_BYTES",
        help: "the largest request body accepted (413 above it)",
        default: Fallback::Fixed("65536"),
        scope: Scope::Shared("http.max_body_bytes"),
    },
    Variable {
        name: "DATABASE_URL",
        help: "the role's store: `sqlite://FILE` (embedded) or `postgres://user:pass@host/db` (one database per role, shared by its replicas)",
        default: Fallback::PerRole {
            value: |r| format!("sqlite://data/{}.db", r.name),
            shown: Some("`sqlite://data/<role>.db`"),
        },
        scope: Scope::PerRole("database.url"),
    },
    Variable {
        name: "DATABASE_POOL_SIZE",
        help: "connections to a PostgreSQL store (SQLite always uses one)",
        default: Fallback::Fixed("10"),
        scope: Scope::Shared("database.pool_size"),
    },
    Variable {
        name: "DATABASE_ACQUIRE_TIMEOUT",
        help: "how long a request waits for a store connection before it is answered 503 `store_unavailable` (a delivery is held until the store answers)",
        default: Fallback::Fixed("3s"),
        scope: Scope::Shared("database.acquire_timeout"),
    },
    Variable {
        name: "MAX_CANDIDATES",
        help: "the election role: candidates one election may have",
        default: Fallback::Fixed("50"),
        scope: Scope::Shared("max_candidates"),
    },
    Variable {
        name: "AUTH_JWT_SECRET",
        help: "HS256 key for bearer tokens, at least 32 bytes",
        default: Fallback::Absent(
            "none: required; only development mode (`app all --dev`) runs without it, on loopback",
        ),
        scope: Scope::Shared("auth.jwt_secret"),
    },
    Variable {
        name: "AUTH_LEEWAY",
        help: "clock skew allowed on a token's `exp` and `nbf`",
        default: Fallback::Fixed("5s"),
        scope: Scope::Shared("auth.leeway"),
    },
    Variable {
        name: "CORS_ALLOWED_ORIGINS",
        help: "comma-separated origins of the browser front end",
        default: Fallback::Absent("none (no CORS headers)"),
        scope: Scope::Shared("http.cors_allowed_origins"),
    },
    Variable {
        name: "LIVE_STREAM",
        help: "the live role: the RabbitMQ stream all its replicas read (one per deployment, not per replica)",
        default: Fallback::Fixed("live-events"),
        scope: Scope::Shared("live.stream"),
    },
    Variable {
        name: "LIVE_STREAM_MAX_AGE",
        help: "the live role: how long the stream keeps an event (a resume from an older id is told to `resync`)",
        default: Fallback::Fixed("24h"),
        scope: Scope::Shared("live.max_age"),
    },
    Variable {
        name: "LIVE_STREAM_MAX_BYTES",
        help: "the live role: the most the stream keeps, in bytes",
        default: Fallback::Fixed("1000000000"),
        scope: Scope::Shared("live.max_bytes"),
    },
    Variable {
        name: "LIVE_STREAM_SEGMENT_BYTES",
        help: "the live role: the size of one stream segment; retention drops whole segments",
        default: Fallback::Fixed("50000000"),
        scope: Scope::Shared("live.segment_bytes"),
    },
    Variable {
        name: "LIVE_MEMORY_EVENTS",
        help: "the live role: the latest events each replica keeps in memory to resume from; older ids are read from the stream",
        default: Fallback::Fixed("10000"),
        scope: Scope::Shared("live.memory_events"),
    },
    Variable {
        name: "LIVE_KEEPALIVE",
        help: "the live role: how often an idle stream gets a keep-alive comment (keep proxy read timeouts above it)",
        default: Fallback::Fixed("15s"),
        scope: Scope::Shared("live.keepalive"),
    },
    Variable {
        name: "LIVE_CLIENT_BUFFER",
        help: "the live role: events a client may fall behind before it is disconnected (it resumes by id)",
        default: Fallback::Fixed("256"),
        scope: Scope::Shared("live.client_buffer"),
    },
    Variable {
        name: "LIVE_STREAMS_PER_USER",
        help: "the live role: streams one user may hold open on one replica",
        default: Fallback::Fixed("16"),
        scope: Scope::Shared("live.streams_per_user"),
    },
    Variable {
        name: "LIVE_API_ORIGINS",
        help: "the live role's page: where it reaches each role's API, `role=origin` separated by commas (`meeting=https://api.example.com`, or `meeting=:8081` for the page's host on that port)",
        default: Fallback::Absent("the page's own origin (one Ingress in front of every role)"),
        scope: Scope::Shared("live.api_origins"),
    },
    Variable {
        name: "SHUTDOWN_GRACE",
        help: "how long shutdown may take to finish work in hand and flush the outbox",
        default: Fallback::Fixed("10s"),
        scope: Scope::Shared("shutdown_grace"),
    },
    Variable {
        name: LOG_FORMAT,
        help: "`text` or `json`",
        default: Fallback::Fixed("text"),
        scope: Scope::Logging,
    },
    Variable {
        name: RUST_LOG,
        help: "log level filter",
        default: Fallback::Fixed("info"),
        scope: Scope::Logging,
    },
    Variable {
        name: OTEL_EXPORTER_OTLP_ENDPOINT,
        help: "traces: the OpenTelemetry collector's OTLP/HTTP base URL (`/v1/traces` is appended), e.g. `http://otel-collector:4318`; unset, no spans are exported",
        default: Fallback::Absent("traces off"),
        scope: Scope::Logging,
    },
    Variable {
        name: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
        help: "traces: the full OTLP/HTTP traces URL, used as is; wins over `OTEL_EXPORTER_OTLP_ENDPOINT`",
        default: Fallback::Absent("from `OTEL_EXPORTER_OTLP_ENDPOINT`"),
        scope: Scope::Logging,
    },
    Variable {
        name: OTEL_EXPORTER_OTLP_PROTOCOL,
        help: "traces: `http/protobuf` (the only one; also read as `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`)",
        default: Fallback::Fixed("http/protobuf"),
        scope: Scope::Logging,
    },
    Variable {
        name: OTEL_SERVICE_NAME,
        help: "traces: the `service.name` of the spans",
        default: Fallback::PerRole {
            value: |r| r.service_name(),
            shown: Some("`SERVICE_NAME`; `meeting-system` for `app all`"),
        },
        scope: Scope::Logging,
    },
    Variable {
        name: OTEL_TRACES_SAMPLER,
        help: "traces: `parentbased_traceidratio` (a caller's sampled flag wins, else the ratio), `parentbased_always_on`, `parentbased_always_off`, `traceidratio`, `always_on` or `always_off`",
        default: Fallback::Fixed("parentbased_always_on"),
        scope: Scope::Logging,
    },
    Variable {
        name: OTEL_TRACES_SAMPLER_ARG,
        help: "traces: the ratio of new traces sampled, 0 to 1, for the `…traceidratio` samplers",
        default: Fallback::Fixed("1.0"),
        scope: Scope::Logging,
    },
    Variable {
        name: OTEL_RESOURCE_ATTRIBUTES,
        help: "traces: resource attributes, `key=value,…` (percent-encoded values), e.g. `deployment.environment=prod`",
        default: Fallback::Absent("none"),
        scope: Scope::Logging,
    },
];

impl Variable {
    /// The default as the docs show it, in Markdown.
    fn shown_default(&self) -> String {
        match &self.default {
            Fallback::Absent(text) => text.to_string(),
            Fallback::Fixed(value) => format!("`{value}`"),
            Fallback::PerRole {
                shown: Some(text), ..
            } => text.to_string(),
            Fallback::PerRole { value, shown: None } => system::ALL
                .iter()
                .map(|r| format!("`{}` ({r})", value(r)))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

impl Variable {
    /// The path of the variable's field in [`Settings`]; `None` for the log and trace ones.
    pub fn key(&self) -> Option<&'static str> {
        match self.scope {
            Scope::Shared(key) | Scope::PerRole(key) => Some(key),
            Scope::Logging => None,
        }
    }
}

/// The variables [`Settings`] reads, per-role ones included.
pub(super) fn settings_variables() -> impl Iterator<Item = &'static Variable> {
    VARIABLES.iter().filter(|v| v.key().is_some())
}

/// The variable whose value lands at `key` in [`Settings`].
pub(super) fn variable_at(key: &str) -> Option<&'static Variable> {
    settings_variables().find(|v| v.key() == Some(key))
}

/// The name of the variable whose value lands at `key` in [`Settings`], such as
/// `"mq.service_name"`: for code that looks at the environment itself.
pub fn name_of(key: &str) -> &'static str {
    variable_at(key).map_or("", |v| v.name)
}

/// Whether `app all` ignores `name` in the environment (see [`Scope::PerRole`]).
pub fn is_per_role(name: &str) -> bool {
    VARIABLES
        .iter()
        .any(|v| v.name == name && matches!(v.scope, Scope::PerRole(_)))
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

/// The variables as docs/configuration.md's Markdown table.
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
