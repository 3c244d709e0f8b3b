//! The rules serde's types do not say: ranges, non-empty names, and what one value requires
//! of another. Each error names the variable by its place in [`Settings`].

use super::*;

impl Settings {
    /// Check every rule; the first broken one is the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_mq()?;
        self.validate_http()?;
        self.validate_store_and_auth()?;
        self.validate_live()
    }

    fn validate_mq(&self) -> Result<(), ConfigError> {
        let mq = &self.mq;
        not_empty("mq.exchange", &mq.exchange)?;
        not_empty("mq.service_name", &mq.service_name)?;
        if mq.bindings.is_empty() {
            return fail("mq.bindings", "needs at least one routing key");
        }
        within("mq.prefetch", mq.prefetch, 1..=u16::MAX)?;
        within("mq.delivery_limit", mq.delivery_limit, 1..=u32::MAX)?;
        within(
            "mq.max_message_bytes",
            mq.max_message_bytes,
            1024..=128 * 1024 * 1024,
        )?;
        if mq.consumer_check < Duration::from_millis(100) {
            return fail("mq.consumer_check", "must be at least 100ms");
        }
        if mq.consumer_watchdog < mq.consumer_check {
            return fail("mq.consumer_watchdog", "must be at least MQ_CONSUMER_CHECK");
        }
        if mq
            .retry_delays
            .iter()
            .any(|d| d.is_zero() || d.as_millis() > u32::MAX as u128)
        {
            return fail(
                "mq.retry_delays",
                "each delay must be above zero and below 49 days",
            );
        }
        for user in &mq.ingress {
            if !mq.producers.iter().any(|p| &p.user == user) {
                return fail(
                    "mq.ingress",
                    format!("{user:?} is not a producer of MQ_PRODUCERS"),
                );
            }
            if !user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
            {
                return fail(
                    "mq.ingress",
                    format!("{user:?} cannot name an exchange (letters, digits, - _ . : only)"),
                );
            }
        }
        Ok(())
    }

    fn validate_http(&self) -> Result<(), ConfigError> {
        let http = &self.http;
        within("http.max_connections", http.max_connections, 1..=1_000_000)?;
        for (key, d) in [
            ("http.header_timeout", http.header_timeout),
            ("http.request_timeout", http.request_timeout),
            ("http.write_timeout", http.write_timeout),
        ] {
            if d.is_zero() {
                return fail(key, "must be above zero");
            }
        }
        within(
            "http.max_body_bytes",
            http.max_body_bytes,
            1024..=64 * 1024 * 1024,
        )?;
        for origin in &http.cors_allowed_origins {
            if !(origin.starts_with("http://") || origin.starts_with("https://"))
                || axum::http::HeaderValue::from_str(origin).is_err()
            {
                return fail(
                    "http.cors_allowed_origins",
                    format!("{origin:?} is not an origin such as https://app.example.com"),
                );
            }
        }
        Ok(())
    }

    fn validate_store_and_auth(&self) -> Result<(), ConfigError> {
        within("database.pool_size", self.database.pool_size, 1..=1000)?;
        if self.database.acquire_timeout.is_zero() {
            return fail("database.acquire_timeout", "must be above zero");
        }
        match &self.auth.jwt_secret {
            Some(s) if s.expose().is_empty() => {
                return fail(
                    "auth.jwt_secret",
                    "is set but blank: set the key, or unset it and ask for development mode (`app all --dev`)",
                )
            }
            Some(s) if s.expose().len() < MIN_SECRET_BYTES => {
                return fail(
                    "auth.jwt_secret",
                    format!(
                        "too short: use at least {MIN_SECRET_BYTES} bytes (`openssl rand -hex 32`)"
                    ),
                )
            }
            _ => {}
        }
        if self.auth.leeway > Duration::from_secs(300) {
            return fail("auth.leeway", "must be at most 5m");
        }
        within("max_candidates", self.max_candidates, 1..=10_000)
    }

    fn validate_live(&self) -> Result<(), ConfigError> {
        let live = &self.live;
        if live.stream.is_empty() || live.stream.len() > 200 || live.stream.starts_with("amq.") {
            return fail(
                "live.stream",
                "must be a queue name of 1 to 200 bytes, not starting with amq.",
            );
        }
        if live.max_age < Duration::from_secs(1) {
            return fail("live.max_age", "must be at least 1s");
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(300)).contains(&live.keepalive) {
            return fail("live.keepalive", "must be from 100ms to 5m");
        }
        within("live.max_bytes", live.max_bytes, 1000..=u64::MAX / 2)?;
        within(
            "live.segment_bytes",
            live.segment_bytes,
            100..=3_000_000_000,
        )?;
        within("live.memory_events", live.memory_events, 1..=1_000_000)?;
        within("live.client_buffer", live.client_buffer, 1..=100_000)?;
        within("live.streams_per_user", live.streams_per_user, 1..=10_000)
    }
}

fn fail(key: &str, message: impl Into<String>) -> Result<(), ConfigError> {
    Err(ConfigError::at(key, message))
}

fn not_empty(key: &str, value: &str) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        return fail(key, "must not be empty");
    }
    Ok(())
}

fn within<T: PartialOrd + fmt::Display>(
    key: &str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<(), ConfigError> {
    if range.contains(&value) {
        return Ok(());
    }
    fail(
        key,
        format!(
            "must be a whole number from {} to {}",
            range.start(),
            range.end()
        ),
    )
}
