//! Test helpers, by concern: [`roles`] runs roles in this process and as `app` processes,
//! [`broker`] talks to RabbitMQ (publish, spy, count, private nodes), [`client`] is the HTTP
//! client acting as a user, [`wait`] polls and asserts. `Ctx` isolates one test: its own
//! exchange, queues, stores and port.

#![allow(dead_code)]

mod broker;
mod client;
mod roles;
mod wait;

use std::collections::HashMap;
use std::path::Path;

pub use broker::*;
pub use client::*;
pub use meeting_events::roles::{Role, ELECTION, MEETING, PERMISSION, VOTING};
use meeting_events::Settings;
pub use roles::*;
pub use wait::*;

pub const SECRET: &str = "integration-test-secret-0123456789";

/// The broker under test.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL")
        .expect("AMQP_URL is unset: run scripts/test.sh, which starts a throwaway broker")
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// Names and files that isolate one test.
pub struct Ctx {
    pub prefix: String,
    pub exchange: String,
    pub amqp_url: String,
    pub dir: tempfile::TempDir,
    pub extra: HashMap<String, String>,
}

impl Ctx {
    pub fn new() -> Self {
        Self::on(amqp_url())
    }

    pub fn on(amqp_url: String) -> Self {
        let prefix = unique("t");
        Self {
            exchange: format!("{prefix}-events"),
            prefix,
            amqp_url,
            dir: tempfile::tempdir().expect("tempdir"),
            extra: HashMap::new(),
        }
    }

    pub fn queue(&self, role: Role) -> String {
        format!("{}-{}", self.prefix, role.service_name())
    }

    /// The environment a role of this test runs with.
    pub fn env(&self, role: Role) -> HashMap<String, String> {
        let mut env: HashMap<String, String> = [
            ("AMQP_URL", self.amqp_url.clone()),
            ("MQ_EXCHANGE", self.exchange.clone()),
            ("SERVICE_NAME", self.queue(role)),
            (
                "DATABASE_URL",
                format!("sqlite://{}/{}.db", self.dir.path().display(), role.name),
            ),
            ("AUTH_JWT_SECRET", SECRET.to_string()),
            ("MQ_RETRY_DELAYS", "200ms,400ms".to_string()),
            ("HTTP_ADDR", "127.0.0.1".to_string()),
            ("HTTP_PORT", "0".to_string()),
            ("SHUTDOWN_GRACE", "5s".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        env.extend(self.extra.clone());
        env
    }

    pub fn settings(&self, role: Role) -> Settings {
        Settings::load(role, &self.env(role), Path::new("/nonexistent")).expect("test settings")
    }
}

pub fn quiet_logs() {
    // Silent unless asked: RUST_LOG=info cargo test …
    if std::env::var("RUST_LOG").is_ok() {
        meeting_events::telemetry::init_logs("info");
    }
}
