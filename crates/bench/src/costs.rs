//! What one flow of the chain costs, counted in a pass of its own so the timed runs pay for
//! none of the counting: per role, the SQL statements (sqlx's statement log, read back from
//! the role's log), the write transactions (`store_transactions_total`), the publishes
//! (`events_published_total`, `events_unrouted_total`) and the relay's wait from an event's
//! write to the broker's confirm (`outbox_publish_wait_seconds`); and the store's writes to
//! disk — on SQLite the WAL frames and syncs strace sees each role make, on PostgreSQL
//! `pg_stat_wal`'s records, syncs and bytes for the whole instance.

use std::collections::BTreeMap;
use std::io::{BufRead, Seek};

use super::*;

/// One role's costs per flow (its replicas together).
pub(crate) struct RoleCosts {
    pub(crate) name: String,
    /// Statements by their first word (BEGIN and COMMIT are not in sqlx's SQLite log, so
    /// they are left out on both stores; transactions count them).
    pub(crate) statements: BTreeMap<String, f64>,
    pub(crate) transactions: f64,
    pub(crate) publishes: f64,
    /// Mean wait from an event's write to its confirm, in milliseconds.
    pub(crate) wait_ms: f64,
    /// SQLite: WAL frames written and syncs, per flow (None without strace).
    pub(crate) disk: Option<(f64, f64)>,
}

/// PostgreSQL's WAL per flow: records, syncs, bytes.
pub(crate) struct Wal(pub(crate) f64, pub(crate) f64, pub(crate) f64);

pub(crate) struct Costs {
    pub(crate) roles: Vec<RoleCosts>,
    pub(crate) wal: Option<Wal>,
}

/// Run `flows` flows at full concurrency on roles of `setup` that log every statement, and
/// count what they cost.
pub(crate) async fn costs(
    base: &Settings,
    tag: &str,
    args: &BenchArgs,
    setup: &Setup,
    flows: usize,
) -> anyhow::Result<Costs> {
    let extra = [
        ("RUST_LOG", "warn,sqlx::query=debug".to_string()),
        ("LOG_FORMAT", "json".to_string()),
    ];
    let rig = Rig::start(base, tag, args, setup, &extra, true).await?;
    let sets = [
        ("meeting-service", &rig.meetings),
        ("permission-service", &rig.permissions),
    ];
    let logs: Vec<Vec<std::path::PathBuf>> = sets
        .iter()
        .map(|(_, ps)| {
            (ps.iter().enumerate())
                .map(|(i, p)| log_path(rig.dir(), p.role, i))
                .collect()
        })
        .collect();
    let offsets: Vec<Vec<u64>> = logs
        .iter()
        .map(|files| files.iter().map(|f| file_len(f)).collect())
        .collect();
    let http = reqwest::Client::new();
    let mut before = Vec::new();
    for (_, ps) in &sets {
        before.push(scrape_all(&http, ps).await?);
    }
    let wal_before = match &setup.postgres {
        Some(pg) => Some(pg_wal(pg).await?),
        None => None,
    };
    let traces: Vec<Vec<Strace>> = if setup.postgres.is_none() {
        sets.iter()
            .map(|(_, ps)| ps.iter().filter_map(|p| Strace::attach(&rig, p)).collect())
            .collect()
    } else {
        Vec::new()
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    rig.burst(flows, args.concurrency).await?;
    // The relays' deletes after the last confirms, and PostgreSQL's statistics, which a
    // backend flushes within ten seconds of going idle.
    let settle = if setup.postgres.is_some() {
        11_000
    } else {
        1_000
    };
    tokio::time::sleep(Duration::from_millis(settle)).await;

    let disks: Vec<Option<(f64, f64)>> = if traces.is_empty() {
        vec![None; sets.len()]
    } else {
        traces
            .into_iter()
            .map(|ts| {
                let counts: Vec<(u64, u64)> = ts.into_iter().filter_map(Strace::finish).collect();
                (!counts.is_empty()).then(|| {
                    let (frames, syncs) =
                        counts.iter().fold((0, 0), |(f, s), (a, b)| (f + a, s + b));
                    (frames as f64 / flows as f64, syncs as f64 / flows as f64)
                })
            })
            .collect()
    };
    let wal = match (&setup.postgres, wal_before) {
        (Some(pg), Some(b)) => {
            let a = pg_wal(pg).await?;
            let per = |x: f64, y: f64| (x - y) / flows as f64;
            Some(Wal(per(a.0, b.0), per(a.1, b.1), per(a.2, b.2)))
        }
        _ => None,
    };
    let mut roles = Vec::new();
    for (k, (name, ps)) in sets.iter().enumerate() {
        let after = scrape_all(&http, ps).await?;
        let delta = |metric: &str| {
            (after.get(metric).copied().unwrap_or(0.0)
                - before[k].get(metric).copied().unwrap_or(0.0))
                / flows as f64
        };
        let mut statements = BTreeMap::new();
        for (file, from) in logs[k].iter().zip(&offsets[k]) {
            for (kind, n) in count_statements(file, *from)? {
                *statements.entry(kind).or_insert(0.0) += n as f64 / flows as f64;
            }
        }
        let waits = delta("outbox_publish_wait_seconds_count");
        roles.push(RoleCosts {
            name: name.to_string(),
            statements,
            transactions: delta("store_transactions_total"),
            publishes: delta("events_published_total") + delta("events_unrouted_total"),
            wait_ms: 1000.0 * delta("outbox_publish_wait_seconds_sum") / waits.max(1e-9),
            disk: disks[k],
        });
    }
    rig.stop().await;
    Ok(Costs { roles, wal })
}

fn file_len(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The statements a role's JSON log records from byte `from` on, by their first word.
fn count_statements(path: &std::path::Path, from: u64) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut file = std::fs::File::open(path)?;
    file.seek(std::io::SeekFrom::Start(from))?;
    let mut kinds = BTreeMap::new();
    for line in std::io::BufReader::new(file).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line?) else {
            continue;
        };
        if v["target"] != "sqlx::query" {
            continue;
        }
        let kind = v["summary"]
            .as_str()
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or("?")
            .to_ascii_uppercase();
        if !matches!(kind.as_str(), "BEGIN" | "COMMIT" | "ROLLBACK") {
            *kinds.entry(kind).or_insert(0) += 1;
        }
    }
    Ok(kinds)
}

/// Each metric of the processes' `/metrics`, summed over their series and processes.
pub(crate) async fn scrape_all(
    http: &reqwest::Client,
    ps: &[RoleProcess],
) -> anyhow::Result<HashMap<String, f64>> {
    let mut sums = HashMap::new();
    for p in ps {
        let text = http
            .get(format!("{}/metrics", p.base))
            .send()
            .await?
            .text()
            .await?;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            let value = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
            if let Some(v) = value {
                *sums.entry(name.to_string()).or_insert(0.0) += v;
            }
        }
    }
    Ok(sums)
}

/// PostgreSQL's WAL so far: records, syncs, bytes.
async fn pg_wal(url: &str) -> anyhow::Result<Wal> {
    use sqlx::Row;
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(url).await?;
    let row = sqlx::query(
        "SELECT wal_records::float8, wal_sync::float8, wal_bytes::float8 FROM pg_stat_wal",
    )
    .fetch_one(&mut conn)
    .await?;
    Ok(Wal(row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
}

/// strace attached to a role's process, recording its WAL writes and syncs.
struct Strace {
    child: Child,
    out: std::path::PathBuf,
}

impl Strace {
    /// None when strace is not installed or cannot attach.
    fn attach(rig: &Rig, p: &RoleProcess) -> Option<Self> {
        let out = rig
            .dir()
            .join(format!("{}-{}.strace", p.role.name, p.child.id()));
        let child = Command::new("strace")
            .args([
                "-f",
                // Only the traced calls stop the process, not every call.
                "--seccomp-bpf",
                "-qq",
                "-y",
                "-e",
                "trace=pwrite64,fsync,fdatasync",
                "-o",
            ])
            .arg(&out)
            .arg("-p")
            .arg(p.child.id().to_string())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        Some(Self { child, out })
    }

    /// Detach; the WAL frames written (page-sized writes to `-wal`) and the syncs.
    fn finish(mut self) -> Option<(u64, u64)> {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        self.child.wait().ok()?;
        let text = std::fs::read_to_string(&self.out).ok()?;
        let (mut frames, mut syncs) = (0, 0);
        for line in text.lines() {
            if line.contains("fsync(") || line.contains("fdatasync(") {
                syncs += 1;
            } else if line.contains("pwrite64(") && line.contains("-wal>") {
                let written = line.rsplit("= ").next().and_then(|n| n.parse::<u64>().ok());
                if written.is_some_and(|n| n >= 512) {
                    frames += 1;
                }
            }
        }
        Some((frames, syncs))
    }
}

/// The rows of a cost count: each role's statements, transactions, publishes and relay
/// wait per flow (and SQLite's WAL frames and syncs), and PostgreSQL's WAL per flow.
pub(crate) fn cost_rows(what: &str, costs: &Costs) -> Vec<Row> {
    let mut rows = Vec::new();
    for role in &costs.roles {
        let total: f64 = role.statements.values().sum();
        let kinds: Vec<String> = role
            .statements
            .iter()
            .map(|(k, n)| format!("{n:.2} {k}"))
            .collect();
        let disk = match role.disk {
            Some((frames, syncs)) => format!(", {frames:.2} WAL frames, {syncs:.3} syncs"),
            None => String::new(),
        };
        rows.push(Row {
            name: format!("chain ({what}) per flow, {}", role.name),
            result: format!(
                "{total:.2} statements ({}), {:.2} transactions, {:.2} publishes, relay wait {:.1} ms{disk}",
                kinds.join(", "),
                role.transactions,
                role.publishes,
                role.wait_ms
            ),
            ratio: None,
            target: "profile".into(),
        });
    }
    if let Some(Wal(records, syncs, bytes)) = costs.wal {
        rows.push(Row {
            name: format!("chain ({what}) per flow, PostgreSQL WAL (whole instance)"),
            result: format!("{records:.1} records, {syncs:.2} syncs, {bytes:.0} bytes"),
            ratio: None,
            target: "profile".into(),
        });
    }
    rows
}
