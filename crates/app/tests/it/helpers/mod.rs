//! Test helpers, by concern: [`roles`] runs roles in this process and as `app` processes,
//! [`broker`] talks to RabbitMQ (publish, spy, count, private nodes), [`cluster`] brings a
//! three-node cluster, [`client`] is the HTTP client acting as a user, [`wait`] polls and
//! asserts. `Ctx` isolates one test: its own exchange, queues, stores and port.

#![allow(dead_code)]

mod broker;
mod browser;
mod client;
mod cluster;
pub mod otlp;
mod roles;
mod sse;
mod wait;

use std::collections::HashMap;
use std::path::Path;

pub use broker::*;
pub use browser::*;
pub use client::*;
pub use cluster::*;
pub use meeting_events::roles::{Role, ELECTION, LIVE, MEETING, PERMISSION, VOTING};
use meeting_events::Settings;
pub use roles::*;
pub use sse::*;
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
    /// Variables for one role only, by role name (applied after `extra`).
    pub per_role: HashMap<&'static str, HashMap<String, String>>,
    /// The PostgreSQL instance holding the roles' stores, if not SQLite.
    pub postgres: Option<String>,
}

impl Ctx {
    pub fn new() -> Self {
        Self::on(amqp_url())
    }

    pub fn on(amqp_url: String) -> Self {
        Self::with_stores(amqp_url, postgres_base())
    }

    /// A context whose roles keep their stores on the PostgreSQL instance at `postgres`
    /// (its URL without a database), or on SQLite files when `None`.
    pub fn with_stores(amqp_url: String, postgres: Option<String>) -> Self {
        let prefix = unique("t");
        let ctx = Self {
            exchange: format!("{prefix}-events"),
            prefix,
            amqp_url,
            dir: tempfile::tempdir().expect("tempdir"),
            extra: HashMap::new(),
            per_role: HashMap::new(),
            postgres,
        };
        if let Some(base) = &ctx.postgres {
            for role in meeting_events::roles::ALL {
                create_database(base, &ctx.database_name(role));
            }
        }
        ctx
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
            ("DATABASE_URL", self.database_url(role)),
            ("AUTH_JWT_SECRET", SECRET.to_string()),
            ("MQ_RETRY_DELAYS", "200ms,400ms".to_string()),
            ("HTTP_ADDR", "127.0.0.1".to_string()),
            ("HTTP_PORT", "0".to_string()),
            ("SHUTDOWN_GRACE", "5s".to_string()),
            ("LIVE_STREAM", format!("{}-live", self.prefix)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        env.extend(self.extra.clone());
        env.extend(self.per_role.get(role.name).cloned().unwrap_or_default());
        env
    }

    /// The role's store: a SQLite file in the test's folder, or with `TEST_STORE=postgres`
    /// a database of its own on `TEST_POSTGRES_URL`'s instance (created with the context).
    pub fn database_url(&self, role: Role) -> String {
        match &self.postgres {
            Some(base) => format!("{}/{}", base, self.database_name(role)),
            None => format!("sqlite://{}/{}.db", self.dir.path().display(), role.name),
        }
    }

    fn database_name(&self, role: Role) -> String {
        format!("{}_{}", self.prefix.replace('-', "_"), role.name)
    }

    /// A connection pool on the role's store, to look at what it holds.
    pub async fn store(&self, role: Role) -> sqlx::AnyPool {
        sqlx::any::install_default_drivers();
        sqlx::any::AnyPoolOptions::new()
            .max_connections(2)
            .connect(&self.database_url(role))
            .await
            .expect("the role's store")
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

/// With `TEST_STORE=postgres`, the instance the roles' databases are created on (the URL
/// without its database).
pub fn postgres_base() -> Option<String> {
    if std::env::var("TEST_STORE").ok()?.as_str() != "postgres" {
        return None;
    }
    let url = std::env::var("TEST_POSTGRES_URL")
        .expect("TEST_STORE=postgres needs TEST_POSTGRES_URL: run scripts/test.sh");
    let cut = url.rfind('/').expect("TEST_POSTGRES_URL has a database");
    Some(url[..cut].to_string())
}

pub fn create_database(base: &str, name: &str) {
    let status = std::process::Command::new("psql")
        .args([
            &format!("{base}/postgres"),
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            &format!("CREATE DATABASE {name}"),
        ])
        .status()
        .expect("psql runs");
    assert!(status.success(), "CREATE DATABASE {name} failed");
}
