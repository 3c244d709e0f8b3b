//! What the order of new ids costs a store that has grown: rows keyed by random ids
//! (UUID v4) against rows keyed by time-ordered ids (UUID v7, what `domain::new_id`
//! mints), written into the shared `inbox` table (the roles' own migration) after it
//! already holds `--keys-prefill` rows, one `INSERT` a row as a role writes them, in
//! commits of one row (a request) and of 20 (a consumer batch). Counted: on SQLite the WAL
//! frames a row (the `-wal` file's growth, checkpoints off), on PostgreSQL the WAL bytes a
//! row after a checkpoint (full-page images included, as in production), and the CPU a row
//! of the process that does the writing (this one on SQLite, the server's backend on
//! PostgreSQL).

use sqlx::{AnyConnection, Connection, Executor};

use super::*;

/// The inbox's schema, as the roles migrate it.
const SQLITE_SCHEMA: [&str; 3] = [
    include_str!("../../service/migrations/sqlite/0001_outbox_inbox.sql"),
    include_str!("../../service/migrations/0002_inbox_body_hash.sql"),
    include_str!("../../service/migrations/0004_inbox_event_version.sql"),
];
const POSTGRES_SCHEMA: [&str; 3] = [
    include_str!("../../service/migrations/postgres/0001_outbox_inbox.sql"),
    include_str!("../../service/migrations/0002_inbox_body_hash.sql"),
    include_str!("../../service/migrations/0004_inbox_event_version.sql"),
];

const INSERT: &str = "INSERT INTO inbox (event_id, event_type, applied_at_ms, body_hash, event_version) VALUES ($1, 'meeting.created', $2, $3, 1)";
/// Rows a multi-row `INSERT` of the prefill carries.
const PREFILL_CHUNK: usize = 500;
/// Commit sizes measured: a request's, and a consumer batch's.
const COMMITS: [usize; 2] = [1, 20];

#[derive(Clone, Copy)]
enum Ids {
    Random,
    Ordered,
}

impl Ids {
    fn next(self) -> String {
        match self {
            Ids::Random => uuid::Uuid::new_v4().to_string(),
            Ids::Ordered => meeting_events::domain::new_id(),
        }
    }
    fn file(self) -> &'static str {
        match self {
            Ids::Random => "v4",
            Ids::Ordered => "v7",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Ids::Random => "random ids (v4)",
            Ids::Ordered => "time-ordered ids (v7)",
        }
    }
}

/// What writing `rows` rows cost, per row.
struct Cost {
    disk: f64,
    cpu_us: f64,
}

/// The `keys` benchmark's rows: SQLite always, PostgreSQL when `postgres` is given.
pub(crate) async fn keys(args: &BenchArgs) -> anyhow::Result<Vec<Row>> {
    sqlx::any::install_default_drivers();
    let mut rows = Vec::new();
    let dir = tempdir("bench-keys")?;
    for commit in COMMITS {
        let mut per = Vec::new();
        for ids in [Ids::Random, Ids::Ordered] {
            let path = dir.join(format!("{}-{commit}.db", ids.file()));
            let cost = sqlite(&path, ids, args.keys_prefill, args.keys_rows, commit).await?;
            per.push((ids, cost));
        }
        rows.extend(table_rows("SQLite", "WAL frames", commit, args, &per));
    }
    if let Some(url) = &args.postgres {
        for commit in COMMITS {
            let mut per = Vec::new();
            for ids in [Ids::Random, Ids::Ordered] {
                let cost = postgres(url, ids, args.keys_prefill, args.keys_rows, commit).await?;
                per.push((ids, cost));
            }
            rows.extend(table_rows("PostgreSQL", "WAL bytes", commit, args, &per));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rows)
}

/// The table's rows for one store and commit size: each id order, as a ratio to random ids.
fn table_rows(
    store: &str,
    disk: &str,
    commit: usize,
    args: &BenchArgs,
    per: &[(Ids, Cost)],
) -> Vec<Row> {
    let random = &per[0].1;
    per.iter()
        .map(|(ids, c)| Row {
            name: format!(
                "keys ({store}): inbox of {} rows, {} more in commits of {commit}, {}",
                args.keys_prefill,
                args.keys_rows,
                ids.label()
            ),
            result: format!("{:.2} {disk}, {:.1} µs CPU a row", c.disk, c.cpu_us),
            ratio: Some(c.disk / random.disk.max(1e-9)),
            target: "profile".into(),
        })
        .collect()
}

/// `VALUES ($1, …), (…)` for `n` rows of the prefill.
fn prefill_sql(n: usize) -> String {
    let values: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "(${}, 'meeting.created', ${}, ${}, 1)",
                3 * i + 1,
                3 * i + 2,
                3 * i + 3
            )
        })
        .collect();
    format!(
        "INSERT INTO inbox (event_id, event_type, applied_at_ms, body_hash, event_version) VALUES {}",
        values.join(", ")
    )
}

const HASH: &str = "5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";

/// Put `prefill` rows in the inbox, in one transaction.
async fn fill(conn: &mut AnyConnection, ids: Ids, prefill: usize) -> anyhow::Result<()> {
    let mut tx = conn.begin().await?;
    let mut left = prefill;
    while left > 0 {
        let n = left.min(PREFILL_CHUNK);
        let sql = prefill_sql(n);
        let mut q = sqlx::query(&sql);
        for i in 0..n {
            q = q.bind(ids.next()).bind(i as i64).bind(HASH);
        }
        q.execute(&mut *tx).await?;
        left -= n;
    }
    tx.commit().await?;
    Ok(())
}

/// Write `rows` rows, one `INSERT` each, `commit` to a transaction.
async fn write_rows(
    conn: &mut AnyConnection,
    ids: Ids,
    rows: usize,
    commit: usize,
) -> anyhow::Result<()> {
    let mut written = 0;
    while written < rows {
        let mut tx = conn.begin().await?;
        for i in written..(written + commit).min(rows) {
            sqlx::query(INSERT)
                .bind(ids.next())
                .bind(i as i64)
                .bind(HASH)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        written += commit;
    }
    Ok(())
}

async fn sqlite(
    path: &std::path::Path,
    ids: Ids,
    prefill: usize,
    rows: usize,
    commit: usize,
) -> anyhow::Result<Cost> {
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let mut conn = AnyConnection::connect(&url).await?;
    for sql in [
        "PRAGMA journal_mode = WAL",
        "PRAGMA synchronous = NORMAL",
        "PRAGMA wal_autocheckpoint = 0",
    ] {
        conn.execute(sql).await?;
    }
    for sql in SQLITE_SCHEMA {
        conn.execute(sql).await?;
    }
    fill(&mut conn, ids, prefill).await?;
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").await?;
    let wal = path.with_extension("db-wal");
    let me = std::process::id();
    let cpu = cpu_seconds(me);
    write_rows(&mut conn, ids, rows, commit).await?;
    let cpu_us = (cpu_seconds(me) - cpu) * 1e6 / rows as f64;
    // A frame is a page (4,096 bytes) and its 24-byte header; the file has a 32-byte header.
    let frames = (std::fs::metadata(&wal)?.len().saturating_sub(32)) as f64 / 4_120.0;
    conn.close().await?;
    Ok(Cost {
        disk: frames / rows as f64,
        cpu_us,
    })
}

async fn postgres(
    url: &str,
    ids: Ids,
    prefill: usize,
    rows: usize,
    commit: usize,
) -> anyhow::Result<Cost> {
    let db = format!("bench_keys_{}", uuid::Uuid::new_v4().simple());
    let target = new_database(url, &db).await?;
    let result = async {
        let mut conn = AnyConnection::connect(&target).await?;
        for sql in POSTGRES_SCHEMA {
            conn.execute(sql).await?;
        }
        fill(&mut conn, ids, prefill).await?;
        // A checkpoint, as production has every few minutes: the first change to each page
        // after it writes the whole page to the WAL.
        conn.execute("CHECKPOINT").await?;
        let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut conn)
            .await?;
        let backend = u32::try_from(backend)?;
        const LSN: &str = "SELECT (pg_current_wal_lsn() - '0/0')::bigint";
        let before: i64 = sqlx::query_scalar(LSN).fetch_one(&mut conn).await?;
        let cpu = cpu_seconds(backend);
        write_rows(&mut conn, ids, rows, commit).await?;
        let cpu_us = (cpu_seconds(backend) - cpu) * 1e6 / rows as f64;
        let after: i64 = sqlx::query_scalar(LSN).fetch_one(&mut conn).await?;
        conn.close().await?;
        anyhow::Ok(Cost {
            disk: (after - before) as f64 / rows as f64,
            cpu_us,
        })
    }
    .await;
    let mut admin = AnyConnection::connect(url).await?;
    admin
        .execute(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)").as_str())
        .await?;
    result
}
