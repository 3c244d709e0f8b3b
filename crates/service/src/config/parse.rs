//! From raw layered strings to typed [`Settings`]: every value parsed and checked once.

use super::*;

pub(super) fn from_raw(role: Role, raw: &HashMap<String, String>) -> Result<Settings, ConfigError> {
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
    let http_write_timeout = parse_duration("HTTP_WRITE_TIMEOUT", &get("HTTP_WRITE_TIMEOUT"))?;
    for (name, d) in [
        ("HTTP_HEADER_TIMEOUT", http_header_timeout),
        ("HTTP_REQUEST_TIMEOUT", http_request_timeout),
        ("HTTP_WRITE_TIMEOUT", http_write_timeout),
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
    if Dialect::of_url(&database_url).is_none() {
        return Err(ConfigError::new(
            "DATABASE_URL",
            "must be a sqlite: or postgres:// URL, e.g. sqlite://data/meeting.db",
        ));
    }
    let database_acquire_timeout =
        parse_duration("DATABASE_ACQUIRE_TIMEOUT", &get("DATABASE_ACQUIRE_TIMEOUT"))?;
    if database_acquire_timeout.is_zero() {
        return Err(ConfigError::new(
            "DATABASE_ACQUIRE_TIMEOUT",
            "must be above zero",
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
    let live = live_settings(&get)?;

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
        http_write_timeout,
        http_max_body_bytes,
        database_pool_size,
        database_acquire_timeout,
        jwt_secret,
        max_candidates,
        auth_leeway,
        cors_allowed_origins,
        shutdown_grace,
        live,
        development: false,
    })
}

/// A whole number in `range`, or an error naming `variable`.
fn number<T>(
    variable: &str,
    value: &str,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + fmt::Display,
{
    value
        .parse::<T>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            ConfigError::new(
                variable,
                format!(
                    "must be a whole number from {} to {}",
                    range.start(),
                    range.end()
                ),
            )
        })
}

fn live_settings(get: &dyn Fn(&str) -> String) -> Result<LiveSettings, ConfigError> {
    let stream = get("LIVE_STREAM").trim().to_string();
    if stream.is_empty() || stream.len() > 200 || stream.starts_with("amq.") {
        return Err(ConfigError::new(
            "LIVE_STREAM",
            "must be a queue name of 1 to 200 bytes, not starting with amq.",
        ));
    }
    let max_age = parse_duration("LIVE_STREAM_MAX_AGE", &get("LIVE_STREAM_MAX_AGE"))?;
    if max_age < Duration::from_secs(1) {
        return Err(ConfigError::new(
            "LIVE_STREAM_MAX_AGE",
            "must be at least 1s",
        ));
    }
    let keepalive = parse_duration("LIVE_KEEPALIVE", &get("LIVE_KEEPALIVE"))?;
    if !(Duration::from_millis(100)..=Duration::from_secs(300)).contains(&keepalive) {
        return Err(ConfigError::new(
            "LIVE_KEEPALIVE",
            "must be from 100ms to 5m",
        ));
    }
    let mut api_origins = Vec::new();
    for entry in list(&get("LIVE_API_ORIGINS")) {
        let bad = || {
            ConfigError::new(
                "LIVE_API_ORIGINS",
                format!("{entry:?} is not role=origin, e.g. meeting=http://localhost:8081"),
            )
        };
        let (role, origin) = entry.split_once('=').ok_or_else(bad)?;
        let (role, origin) = (role.trim(), origin.trim().trim_end_matches('/'));
        system::find(role).map_err(|e| ConfigError::new("LIVE_API_ORIGINS", e))?;
        let port_only = origin
            .strip_prefix(':')
            .is_some_and(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
        if !(port_only || origin.starts_with("http://") || origin.starts_with("https://")) {
            return Err(bad());
        }
        api_origins.push((role.to_string(), origin.to_string()));
    }
    Ok(LiveSettings {
        stream,
        max_age,
        max_bytes: number(
            "LIVE_STREAM_MAX_BYTES",
            &get("LIVE_STREAM_MAX_BYTES"),
            1000..=u64::MAX / 2,
        )?,
        segment_bytes: number(
            "LIVE_STREAM_SEGMENT_BYTES",
            &get("LIVE_STREAM_SEGMENT_BYTES"),
            100..=3_000_000_000,
        )?,
        memory_events: number(
            "LIVE_MEMORY_EVENTS",
            &get("LIVE_MEMORY_EVENTS"),
            1..=1_000_000,
        )?,
        keepalive,
        client_buffer: number(
            "LIVE_CLIENT_BUFFER",
            &get("LIVE_CLIENT_BUFFER"),
            1..=100_000,
        )?,
        streams_per_user: number(
            "LIVE_STREAMS_PER_USER",
            &get("LIVE_STREAMS_PER_USER"),
            1..=10_000,
        )?,
        api_origins,
    })
}

pub(super) fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

pub(super) fn parse_duration(variable: &str, value: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value).map_err(|_| {
        ConfigError::new(
            variable,
            format!("{value:?} is not a duration such as 500ms, 5s or 2m"),
        )
    })
}
