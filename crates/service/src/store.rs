//! The role's store: a SQLite database opened with sqlx, migrated on start
//! (docs/architecture.md §7).
//!
//! Every role gets the shared `outbox`/`inbox` tables plus its own; each migration set has
//! its own version range (common 1–49, grants 50–99, role 100+) so they can share one
//! `_sqlx_migrations` table. The sets are listed in the role's definition.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};

use crate::roles::Role;

/// Open (creating when missing) and migrate the role's database.
pub(crate) async fn open(database_url: &str, role: Role) -> anyhow::Result<SqlitePool> {
    let options = SqliteConnectOptions::from_str(database_url)
        .map_err(|e| anyhow::anyhow!("DATABASE_URL: {e}"))?
        .create_if_missing(true)
        // WAL lets readers run beside the one writer; NORMAL sync in WAL keeps every
        // committed transaction across a process crash (only an OS crash can lose the tail).
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(true);
    if let Some(parent) = options.get_filename().parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent).map_err(|e| {
                anyhow::anyhow!("DATABASE_URL: cannot create {}: {e}", parent.display())
            })?;
        }
    }
    // One connection: SQLite has one writer anyway, and with a single connection writers
    // queue on the pool (an async wait) instead of sleeping in SQLite's busy handler.
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .map_err(|e| anyhow::anyhow!("DATABASE_URL: cannot open the store: {e}"))?;
    for migrator in role.migrations {
        let mut migrator = Migrator {
            migrations: migrator.migrations.clone(),
            ..Migrator::DEFAULT
        };
        // The other sets' versions are in the same table; they are not "missing".
        migrator.set_ignore_missing(true);
        migrator.run(&pool).await?;
    }
    Ok(pool)
}

/// Begin a write transaction. `BEGIN IMMEDIATE` takes the write lock up front, so two
/// writers queue on the busy timeout instead of one failing when it upgrades from reading.
pub(crate) async fn begin(pool: &SqlitePool) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
    pool.begin_with("BEGIN IMMEDIATE").await
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000
}
