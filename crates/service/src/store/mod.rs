//! The role's store (docs/architecture.md §7): SQLite by default, PostgreSQL when
//! `DATABASE_URL` says `postgres://`. One codebase through sqlx's `Any` driver: the same
//! queries where the dialects agree (`$1` placeholders work in both), one migration tree
//! with a file per dialect only where the SQL differs, and the few differences — row locks, how a write transaction begins — behind this module.
//!
//! Every role gets the shared `outbox`/`inbox` tables plus its own; each migration set has
//! its own version range (common 1–49, grants 50–99, role 100+) so they can share one
//! `_sqlx_migrations` table. The sets are listed in the role's definition.

mod migrations;

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyTypeInfo, AnyValueRef};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::{Any, AnyConnection, AnyPool, Connection, Database, Decode, Encode, Transaction, Type};

pub(crate) use crate::config::Dialect;
pub(crate) use migrations::{
    migration, migrations, Migration, Migrations, Sql as MigrationSql, COMMON,
};

/// The dialect of an open connection.
fn dialect_of(conn: &AnyConnection) -> Dialect {
    if conn.backend_name().eq_ignore_ascii_case("postgresql") {
        Dialect::Postgres
    } else {
        Dialect::Sqlite
    }
}

/// Whether `e` says the store cannot be reached or written now (no connection came free or
/// could be opened in time, the connection failed, a SQLite file that cannot be written): a
/// request is answered 503 `store_unavailable`, and the consumer waits.
pub(crate) fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        // PostgreSQL: a connection exception (class 08), or the server shutting down or
        // crashing under the connection (57P01–57P03, "terminating connection due to …").
        sqlx::Error::Database(db) => {
            // SQLite: the file cannot be written — read-only (8), an I/O error (10), a full
            // disk (13), or it cannot be opened (14); extended codes carry these in their low byte.
            if let Some(lite) = db.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
                return sqlx::error::DatabaseError::code(lite)
                    .and_then(|code| code.parse::<i32>().ok())
                    .is_some_and(|code| matches!(code & 0xff, 8 | 10 | 13 | 14));
            }
            db.code().is_some_and(|code| {
                code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03")
            })
        }
        _ => false,
    }
}

/// Whether a released connection may go back to the pool: not while it is still inside a
/// transaction, which would hold SQLite's write lock and refuse every later `BEGIN`. The
/// rollback of a dropped `Transaction` is queued on the connection, so a ping (behind it)
/// settles the question; only a connection that is still in a transaction after it is
/// closed, which rolls the transaction back. [`Store::begin`] keeps this from happening;
/// this keeps any other cancelled begin from wedging the store.
async fn left_in_transaction(conn: &mut AnyConnection) -> sqlx::Result<bool> {
    if !conn.is_in_transaction() {
        return Ok(true);
    }
    conn.ping().await?;
    if conn.is_in_transaction() {
        tracing::error!("a store connection was released inside a transaction; closing it");
        return Ok(false);
    }
    Ok(true)
}

/// The role's database: a pool and its dialect.
#[derive(Clone, Debug)]
pub(crate) struct Store {
    pool: AnyPool,
    dialect: Dialect,
    url: String,
}

impl Store {
    /// Open (creating a SQLite file when missing) and migrate the role's database.
    pub(crate) async fn open(
        url: &str,
        pool_size: u32,
        acquire_timeout: Duration,
        migrations: &[&'static Migrations],
    ) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let dialect = Dialect::of_url(url)
            .ok_or_else(|| anyhow::anyhow!("DATABASE_URL: not a sqlite: or postgres:// URL"))?;
        let (url, pool_size) = match dialect {
            Dialect::Sqlite => (sqlite_url(url)?, 1),
            Dialect::Postgres => (url.to_string(), pool_size),
        };
        let options: AnyConnectOptions = url
            .parse::<AnyConnectOptions>()
            .map_err(|e| anyhow::anyhow!("DATABASE_URL: {e}"))?;
        // SQLite: one connection. It has one writer anyway, and with a single connection
        // writers queue on the pool (an async wait) instead of sleeping in its busy handler.
        let pool = AnyPoolOptions::new()
            .max_connections(pool_size)
            .acquire_timeout(acquire_timeout)
            .after_release(|conn, _| Box::pin(left_in_transaction(conn)))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    if dialect_of(conn) == Dialect::Sqlite {
                        // WAL lets readers run beside the one writer; NORMAL sync in WAL
                        // keeps every commit across a process crash (only an OS crash can
                        // lose the tail).
                        for pragma in [
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA synchronous = NORMAL",
                            "PRAGMA busy_timeout = 5000",
                            "PRAGMA foreign_keys = ON",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "DATABASE_URL: cannot open the store: {}",
                    crate::text::Chain(&e)
                )
            })?;
        let store = Self { pool, dialect, url };
        store.migrate(migrations).await?;
        Ok(store)
    }

    /// Apply the role's migration sets, after checking that the database holds no
    /// migration this build does not know (a newer build ran on it).
    async fn migrate(&self, migrations: &[&'static Migrations]) -> anyhow::Result<()> {
        let known: BTreeSet<i64> = migrations
            .iter()
            .flat_map(|set| set.list.iter().map(Migration::version))
            .collect();
        if let Some(newer) = self.applied_versions().await?.difference(&known).max() {
            anyhow::bail!(
                "DATABASE_URL: the schema has migration {newer}, which this build does not know \
                 (it knows up to {}); run the newer build, or a database of this version",
                known.iter().max().copied().unwrap_or(0)
            );
        }
        for set in migrations {
            // Replicas starting together queue on the migrator's lock (PostgreSQL advisory
            // lock), so each migration runs once.
            set.migrator(self.dialect)
                .run(&self.pool)
                .await
                .map_err(|e| anyhow::anyhow!("the migrations of {}: {e}", set.dir))?;
        }
        Ok(())
    }

    async fn applied_versions(&self) -> sqlx::Result<BTreeSet<i64>> {
        let exists: Option<i64> = match self.dialect {
            Dialect::Sqlite => sqlx::query_scalar(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
            )
            .fetch_optional(&self.pool)
            .await?,
            Dialect::Postgres => {
                sqlx::query_scalar("SELECT 1 FROM pg_tables WHERE tablename = '_sqlx_migrations'")
                    .fetch_optional(&self.pool)
                    .await?
            }
        };
        if exists.is_none() {
            return Ok(BTreeSet::new());
        }
        let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations")
            .fetch_all(&self.pool)
            .await?;
        Ok(versions.into_iter().collect())
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub(crate) fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The URL the pool connects to (for a PostgreSQL listener).
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Begin a write transaction. On SQLite `BEGIN IMMEDIATE` takes the write lock up
    /// front, so two writers queue instead of one failing when it upgrades from reading.
    ///
    /// The begin runs in a task of its own, to the end, even when the caller is dropped
    /// halfway (a client that hangs up, a consumer dropping the batch of a dead
    /// connection). sqlx's SQLite begin with a custom statement awaits once more after
    /// `BEGIN` has run (`lock_handle`); a caller cancelled there never gets the
    /// `Transaction` that would roll back, and the connection goes back to the pool inside
    /// an open transaction that holds the write lock and refuses every later `BEGIN`
    /// ("attempted to call begin_with at non-zero transaction depth"). Completed in its own
    /// task, the `Transaction` exists and its drop rolls back.
    pub(crate) async fn begin(&self) -> sqlx::Result<Transaction<'static, Any>> {
        let pool = self.pool.clone();
        let dialect = self.dialect;
        crate::metric::store_transactions_total().increment(1);
        tokio::spawn(async move {
            match dialect {
                Dialect::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await,
                Dialect::Postgres => pool.begin().await,
            }
        })
        .await
        .map_err(|e| sqlx::Error::Io(std::io::Error::other(format!("begin: {e}"))))?
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await
    }
}

/// The SQLite URL with its file's folder created and `mode=rwc` (create when missing).
fn sqlite_url(url: &str) -> anyhow::Result<String> {
    let path = url
        .trim_start_matches("sqlite:")
        .trim_start_matches("//")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        anyhow::bail!("DATABASE_URL: a SQLite store needs a file, e.g. sqlite://data/meeting.db");
    }
    if let Some(parent) = std::path::Path::new(path).parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent).map_err(|e| {
                anyhow::anyhow!("DATABASE_URL: cannot create {}: {e}", parent.display())
            })?;
        }
    }
    Ok(if url.contains("mode=") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    })
}

/// ` FOR UPDATE` on PostgreSQL, nothing on SQLite (whose `BEGIN IMMEDIATE` already
/// serialises writers): appended to a `SELECT` that reads a row the transaction will change
/// or whose children it will change, so concurrent writers on other replicas queue on it.
pub(crate) fn for_update(conn: &AnyConnection) -> &'static str {
    match dialect_of(conn) {
        Dialect::Postgres => " FOR UPDATE",
        Dialect::Sqlite => "",
    }
}

/// ` FOR SHARE` on PostgreSQL, nothing on SQLite: for a row whose state must not change
/// until the transaction commits, while others may read it the same way.
pub(crate) fn for_share(conn: &AnyConnection) -> &'static str {
    match dialect_of(conn) {
        Dialect::Postgres => " FOR SHARE",
        Dialect::Sqlite => "",
    }
}

/// Whether a store error is a serialization failure or a deadlock: the transaction lost a
/// race with another replica and can simply be run again.
pub(crate) fn is_retryable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            matches!(db.code().as_deref(), Some("40001") | Some("40P01"))
        }
        _ => false,
    }
}

/// How many times a transaction that lost a race is run again before its error is shown.
pub(crate) const RACE_RETRIES: u32 = 5;

/// A short, growing, jittered pause before running a lost transaction again.
pub(crate) async fn race_backoff(attempt: u32) {
    let base = 5u64 << attempt.min(6);
    let jitter = u64::from(uuid::Uuid::new_v4().as_u128() as u16) % base.max(1);
    tokio::time::sleep(Duration::from_millis(base + jitter)).await;
}

/// The row of `table` with this `id`; `lock` is appended to the query (see [`for_update`]).
pub(crate) async fn row_by_id<T>(
    db: impl sqlx::any::AnyExecutor<'_>,
    table: &str,
    id: &str,
    lock: &str,
) -> sqlx::Result<Option<T>>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> + Send + Unpin,
{
    let sql = format!("SELECT * FROM {table} WHERE id = $1{lock}");
    sqlx::query_as(&sql).bind(id).fetch_optional(db).await
}

/// `$1, $2, …` for an `IN (…)` list of `n` values.
pub(crate) fn placeholders(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One page of the rows of `table` whose two filter columns equal the values given (a
/// `None` does not filter), oldest first.
pub(crate) async fn page_of<T>(
    pool: &AnyPool,
    table: &str,
    [(a, value_a), (b, value_b)]: [(&str, Option<&str>); 2],
    limit: i64,
    offset: i64,
) -> sqlx::Result<Vec<T>>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> + Send + Unpin,
{
    let sql = format!(
        "SELECT * FROM {table} WHERE ($1 IS NULL OR {a} = $1) AND ($2 IS NULL OR {b} = $2)
         ORDER BY created_at, id LIMIT $3 OFFSET $4"
    );
    sqlx::query_as(&sql)
        .bind(value_a)
        .bind(value_b)
        .bind(limit)
        .bind(offset)
        .fetch_all(pool)
        .await
}

/// A value stored as JSON text (the same `TEXT` column on both dialects).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct Json<T>(pub(crate) T);

impl<T> Type<Any> for Json<T> {
    fn type_info() -> AnyTypeInfo {
        <String as Type<Any>>::type_info()
    }
    fn compatible(ty: &AnyTypeInfo) -> bool {
        <String as Type<Any>>::compatible(ty)
    }
}

impl<'q, T: Serialize> Encode<'q, Any> for Json<T> {
    fn encode_by_ref(
        &self,
        buf: &mut <Any as Database>::ArgumentBuffer<'q>,
    ) -> Result<IsNull, BoxDynError> {
        let text = serde_json::to_string(&self.0)?;
        <String as Encode<'q, Any>>::encode(text, buf)
    }
}

impl<'r, T: serde::de::DeserializeOwned> Decode<'r, Any> for Json<T> {
    fn decode(value: AnyValueRef<'r>) -> Result<Self, BoxDynError> {
        let text = <String as Decode<'r, Any>>::decode(value)?;
        Ok(Json(serde_json::from_str(&text)?))
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_scheme_chooses_the_dialect() {
        assert_eq!(Dialect::of_url("sqlite://data/m.db"), Some(Dialect::Sqlite));
        assert_eq!(Dialect::of_url("sqlite:m.db"), Some(Dialect::Sqlite));
        assert_eq!(
            Dialect::of_url("postgres://u:p@h/db"),
            Some(Dialect::Postgres)
        );
        assert_eq!(
            Dialect::of_url("postgresql://h/db"),
            Some(Dialect::Postgres)
        );
        assert_eq!(Dialect::of_url("mysql://h/db"), None);
    }

    #[test]
    fn a_sqlite_url_is_opened_in_create_mode() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/sub/m.db", dir.path().display());
        assert_eq!(sqlite_url(&url).unwrap(), format!("{url}?mode=rwc"));
        assert!(dir.path().join("sub").is_dir());
        assert!(sqlite_url("sqlite::memory:").is_err());
    }

    /// A unit of work dropped at any point of its begin — a client hanging up, a consumer
    /// dropping the batch of a dead connection — leaves the store usable: the next begin
    /// and commit succeed at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_begin_cancelled_at_any_point_leaves_the_store_usable() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/c.db", dir.path().display());
        let store = Store::open(&url, 1, Duration::from_secs(3), &[&COMMON])
            .await
            .unwrap();
        for round in 0..2000u64 {
            // Poll the begin a few times, the worker thread running between polls for a
            // few microseconds more each round, and drop it: cancelled across its whole
            // course (pool, BEGIN, the lock check after it).
            let mut begin = Box::pin(store.begin());
            let gap = Duration::from_micros(round % 100);
            for _ in 0..4 {
                if futures_util::poll!(&mut begin).is_ready() {
                    break;
                }
                let start = std::time::Instant::now();
                while start.elapsed() < gap {
                    std::hint::spin_loop();
                }
            }
            drop(begin);
            let next = tokio::time::timeout(Duration::from_secs(5), store.begin())
                .await
                .unwrap_or_else(|_| panic!("round {round}: the next begin waited 5 s"))
                .unwrap_or_else(|e| panic!("round {round}: the next begin failed: {e}"));
            next.commit().await.unwrap();
        }
    }
}
