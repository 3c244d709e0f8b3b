//! `bench`: numbers, not pass/fail. Measures our publisher against a raw lapin loop at
//! the same confirm window, the outbox relay, the meeting → permission event chain (flows/s
//! at full concurrency and latency at a paced rate), `mq.py`'s connection-per-publish
//! pattern, and the roles' memory. Everything is measured in one run against one broker, so
//! the ratios hold on a noisy machine even when the absolute numbers move.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::stream::{FuturesUnordered, StreamExt};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::json;
use tokio::sync::Mutex;

use clap::Parser;
use meeting_events::config::{MqSettings, Secret, Settings};
use meeting_events::envelope::Envelope;
use meeting_events::events::{Event, MeetingCreated};
use meeting_events::messaging::publisher::{self, Published};
use meeting_events::messaging::{headers, topology};
use meeting_events::roles::{Role, MEETING, PERMISSION};

/// Benchmarks of the meeting system against the configured broker: our publisher vs raw
/// lapin, the outbox relay, the meeting → permission chain, the connection-per-publish
/// pattern of mq.py, and memory. Roles run as `app` processes (next to this binary, or
/// APP_BIN).
#[derive(Debug, Parser)]
#[command(name = "bench")]
pub struct BenchArgs {
    /// publish, relay, chain, per-publish, or all.
    #[arg(default_value = "all")]
    pub which: String,
    /// Messages per publish run.
    #[arg(long, default_value_t = 20_000)]
    pub messages: usize,
    /// Unconfirmed publishes in flight (the confirm window), for raw lapin and ours alike.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// Flows in the full-concurrency chain run.
    #[arg(long, default_value_t = 3_000)]
    pub flows: usize,
    /// Concurrent HTTP clients in the full-concurrency chain run.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Flows per second in the paced chain run.
    #[arg(long, default_value_t = 100)]
    pub rate: u32,
    /// Length of the paced chain run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub paced_for: Duration,
    /// A PostgreSQL instance (URL of any database on it): the chain also runs with the
    /// roles' stores there, with one and with two replicas per role.
    #[arg(long, env = "TEST_POSTGRES_URL")]
    pub postgres: Option<String>,
    /// Publishes in the per-publish run (each opens its own connection).
    #[arg(long, default_value_t = 300)]
    pub per_publish_messages: usize,
}

const SECRET: &str = "benchmark-secret-not-for-production";

struct Row {
    name: String,
    result: String,
    ratio: Option<f64>,
    target: String,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    meeting_events::telemetry::init_logs("warn");
    match run(BenchArgs::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The `app` binary the roles run as.
fn app_bin() -> anyhow::Result<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("APP_BIN") {
        return Ok(path.into());
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the bench binary has no folder")?;
    Ok(dir.join("app"))
}

async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let base = Settings::shared_from_process_env()?;
    let tag = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut mq = base.mq.clone();
    mq.exchange = format!("{tag}-events");
    mq.queue = format!("{tag}-sink");
    let all = args.which == "all";
    let want = |name: &str| all || args.which == name;
    if !["all", "publish", "relay", "chain", "per-publish"].contains(&args.which.as_str()) {
        bail!(
            "unknown benchmark {:?}: publish, relay, chain, per-publish or all",
            args.which
        );
    }
    let sample = Envelope::new(&sample_event(0), "meeting-service");
    let mut rows = Vec::new();
    eprintln!("benchmarking against {} (exchange {})", mq.url, mq.exchange);

    let conn = Connection::connect(mq.url.expose(), ConnectionProperties::default())
        .await
        .context("cannot reach the broker")?;
    let admin = conn.create_channel().await?;
    topology::declare_exchange(&admin, &mq).await?;
    // A durable sink bound to everything, so publishes are routed and stored as in production.
    admin
        .queue_declare(
            mq.queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    admin
        .queue_bind(
            mq.queue.as_str().into(),
            mq.exchange.as_str().into(),
            "meeting.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    // Raw lapin is measured before and after ours and averaged, so drift in the machine's
    // load affects both sides alike.
    let mut raw_rate = None;
    if want("publish") || want("chain") || want("relay") || want("per-publish") {
        let run = PublishRun {
            conn: &conn,
            mq: &mq,
            env: &sample,
            n: args.messages,
            window: args.window,
        };
        let r1 = raw_lapin(&run).await?;
        let ours = if want("publish") {
            Some(our_publisher(&run).await?)
        } else {
            None
        };
        let r2 = raw_lapin(&run).await?;
        let raw = (r1 + r2) / 2.0;
        raw_rate = Some(raw);
        rows.push(Row {
            name: format!("publish: raw lapin, window {}", args.window),
            result: format!("{raw:.0} msg/s"),
            ratio: None,
            target: "reference".into(),
        });
        if let Some(ours) = ours {
            rows.push(Row {
                name: format!("publish: our publisher, window {}", args.window),
                result: format!("{ours:.0} msg/s"),
                ratio: Some(ours / raw),
                target: "≥ 0.90".into(),
            });
        }
        purge(&admin, &mq.queue).await?;
    }
    let raw = raw_rate.unwrap_or(f64::NAN);

    if want("relay") {
        let rate = relay(&base, &conn, &tag, args.messages).await?;
        rows.push(Row {
            name: "outbox relay (an app process): committed → on the bus".into(),
            result: format!("{rate:.0} msg/s"),
            ratio: Some(rate / raw),
            target: "—".into(),
        });
        purge(&admin, &mq.queue).await?;
    }

    let mut memory = Vec::new();
    let mut cpu_note = None;
    if want("chain") {
        let mut setups = vec![Setup {
            label: "SQLite",
            postgres: None,
            replicas: 1,
        }];
        if let Some(pg) = &args.postgres {
            for replicas in [1, 2] {
                setups.push(Setup {
                    label: "PostgreSQL",
                    postgres: Some(pg.clone()),
                    replicas,
                });
            }
        }
        let mut notes = Vec::new();
        for (i, setup) in setups.iter().enumerate() {
            let chain = chain(&base, &format!("{tag}-c{i}"), &args, setup).await?;
            let what = format!("{}, {} per role", setup.label, setup.replicas);
            rows.push(Row {
                name: format!(
                    "chain ({what}): POST /meetings → permission.granted, {} clients",
                    args.concurrency
                ),
                result: format!("{:.0} flows/s", chain.flows_per_sec),
                ratio: Some(chain.flows_per_sec / raw),
                target: if i == 0 {
                    "≥ 0.40".into()
                } else {
                    "—".into()
                },
            });
            rows.push(Row {
                name: format!(
                    "chain ({what}) latency at {} flows/s: p50 / p99 / max",
                    args.rate
                ),
                result: format!(
                    "{:.1} / {:.1} / {:.1} ms",
                    chain.p50_ms, chain.p99_ms, chain.max_ms
                ),
                ratio: None,
                target: "p99 ≤ 50 ms".into(),
            });
            let CpuSplit(split, wall) = &chain.cpu;
            let used: f64 = split.iter().map(|(_, s)| s).sum();
            let parts: Vec<String> = split
                .iter()
                .map(|(n, s)| format!("{n} {:.0}%", 100.0 * s / used.max(1e-9)))
                .collect();
            rows.push(Row {
                name: format!("chain ({what}) CPU split (full-concurrency run)"),
                result: format!("{used:.1} CPU-s in {wall:.1} s"),
                ratio: None,
                target: "profile".into(),
            });
            notes.push(format!("{what}: {}", parts.join(", ")));
            if i == 0 {
                memory = chain.memory;
            }
        }
        cpu_note = Some(notes.join("\n  "));
    }

    if want("per-publish") {
        let rate = per_publish(&mq, &sample.to_bytes(), args.per_publish_messages).await?;
        rows.push(Row {
            name: "mq.py pattern: connection per publish, no confirm".into(),
            result: format!("{rate:.0} msg/s"),
            ratio: Some(rate / raw),
            target: "reference".into(),
        });
    }
    for (role, idle, after) in memory {
        rows.push(Row {
            name: format!("RSS {role}: idle / after the run"),
            result: format!("{:.1} / {:.1} MB", idle, after),
            ratio: None,
            target: "≤ 20 / ≤ 64 MB".into(),
        });
    }

    let _ = admin
        .queue_delete(mq.queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = admin
        .exchange_delete(
            mq.exchange.as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await;
    let _ = conn.close(200, "bench done".into()).await;
    print_table(&rows);
    if let Some(note) = cpu_note {
        println!("\nCPU during the full-concurrency chain runs:\n  {note}");
    }
    Ok(())
}

fn print_table(rows: &[Row]) {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("\nmachine: {cores} cores; broker and services on the same machine; ratio = result / raw lapin msg/s\n");
    let w = rows
        .iter()
        .map(|r| r.name.chars().count())
        .max()
        .unwrap_or(10);
    println!(
        "| {:w$} | {:>22} | {:>6} | {:>15} |",
        "benchmark", "result", "ratio", "target"
    );
    println!(
        "|{}|{}|{}|{}|",
        "-".repeat(w + 2),
        "-".repeat(24),
        "-".repeat(8),
        "-".repeat(17)
    );
    for r in rows {
        let ratio = r.ratio.map(|x| format!("{x:.3}")).unwrap_or_default();
        println!(
            "| {:w$} | {:>22} | {:>6} | {:>15} |",
            r.name, r.result, ratio, r.target
        );
    }
}

/// A `meeting.created` envelope as the meeting service would publish it.
fn sample_event(i: usize) -> Event {
    Event::MeetingCreated(MeetingCreated {
        meeting_id: format!("bench-{i}"),
        title: "Benchmark meeting".into(),
        created_by: "alice".into(),
    })
}

async fn purge(ch: &Channel, queue: &str) -> anyhow::Result<()> {
    ch.queue_purge(queue.into(), Default::default()).await?;
    Ok(())
}

/// The properties our publisher sets for the sample event (what the relay sends).
fn sample_properties(env: &Envelope) -> BasicProperties {
    headers::for_event(
        &env.event_id,
        &env.event_type,
        &env.producer,
        env.correlation_id.as_deref(),
        publisher::unix_seconds(),
    )
}

/// The inputs of a publish benchmark, the same for raw lapin and ours.
struct PublishRun<'a> {
    conn: &'a Connection,
    mq: &'a MqSettings,
    env: &'a Envelope,
    n: usize,
    window: usize,
}

async fn confirm_channel(conn: &Connection) -> anyhow::Result<Channel> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(ch)
}

/// Raw lapin: the same body and properties, built once; persistent + mandatory, `window`
/// confirms in flight, confirms not inspected.
async fn raw_lapin(run: &PublishRun<'_>) -> anyhow::Result<f64> {
    let ch = confirm_channel(run.conn).await?;
    let body = run.env.to_bytes();
    let props = sample_properties(run.env);
    let started = Instant::now();
    let mut inflight = FuturesUnordered::new();
    for _ in 0..run.n {
        if inflight.len() >= run.window {
            inflight.next().await.context("confirm")??;
        }
        let confirm = ch
            .basic_publish(
                run.mq.exchange.as_str().into(),
                "meeting.created".into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &body,
                props.clone(),
            )
            .await?;
        inflight.push(confirm);
    }
    while let Some(c) = inflight.next().await {
        c?;
    }
    let rate = run.n as f64 / started.elapsed().as_secs_f64();
    let _ = ch.close(200, "done".into()).await;
    Ok(rate)
}

/// Ours, per message as the relay does per outbox row: the envelope's AMQP properties built
/// from its fields, `publisher::send` (persistent, mandatory) and the confirm classified as
/// routed, unroutable or refused. Same body, same window.
async fn our_publisher(run: &PublishRun<'_>) -> anyhow::Result<f64> {
    let ch = confirm_channel(run.conn).await?;
    let body = run.env.to_bytes();
    let started = Instant::now();
    let mut inflight = FuturesUnordered::new();
    for _ in 0..run.n {
        if inflight.len() >= run.window {
            check(inflight.next().await.context("confirm")??)?;
        }
        let confirm = publisher::send(
            &ch,
            &run.mq.exchange,
            &run.env.event_type,
            &body,
            sample_properties(run.env),
        )
        .await?;
        inflight.push(publisher::confirmed(confirm));
    }
    while let Some(c) = inflight.next().await {
        check(c?)?;
    }
    let rate = run.n as f64 / started.elapsed().as_secs_f64();
    let _ = ch.close(200, "done".into()).await;
    Ok(rate)
}

fn check(p: Published) -> anyhow::Result<()> {
    match p {
        Published::Routed => Ok(()),
        other => bail!("publish not routed: {other:?}"),
    }
}

/// The outbox relay as it ships, in an `app meeting` process: `n` rows committed to its
/// outbox while it was stopped, timed from the first to the last of them arriving on a tap
/// of the exchange (so process start-up is not counted).
async fn relay(base: &Settings, conn: &Connection, tag: &str, n: usize) -> anyhow::Result<f64> {
    let dir = tempdir(&format!("{tag}-relay"))?;
    // A first start creates and migrates the store; the role is stopped before the rows go in.
    drop(spawn_role(base, &MEETING, tag, &dir).await?);
    let url = format!("sqlite://{}/{}.db", dir.display(), MEETING.name);
    let pool = sqlx::SqlitePool::connect(&url).await?;
    let mut tx = pool.begin().await?;
    for i in 0..n {
        let env = Envelope::new(&sample_event(i), &MEETING.service_name());
        sqlx::query(
            "INSERT INTO outbox (event_id, event_type, producer, correlation_id, body, created_at_ms)
             VALUES (?, ?, ?, ?, ?, 0)",
        )
        .bind(&env.event_id)
        .bind(&env.event_type)
        .bind(&env.producer)
        .bind(&env.correlation_id)
        .bind(env.to_bytes())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    pool.close().await;

    let ch = conn.create_channel().await?;
    let mut tap = topology::tap(&ch, &format!("{tag}-events"), &["meeting.created"]).await?;
    let role = spawn_role(base, &MEETING, tag, &dir).await?;
    let mut first = None;
    let mut seen = 0;
    while seen < n {
        let next = tokio::time::timeout(Duration::from_secs(60), tap.next())
            .await
            .context("the relay stalled")?;
        match next {
            Some(Ok(_)) => {
                first.get_or_insert_with(Instant::now);
                seen += 1;
            }
            _ => bail!("the tap ended after {seen} of {n} events"),
        }
    }
    let elapsed = first.map_or(Duration::ZERO, |t| t.elapsed());
    drop(role);
    let _ = ch.close(200, "done".into()).await;
    Ok(n as f64 / elapsed.as_secs_f64().max(1e-9))
}

fn tempdir(tag: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("{tag}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The pattern of `mq.py`'s `publish_event`: a new connection, a declare and an unconfirmed
/// publish per event.
async fn per_publish(mq: &MqSettings, body: &[u8], n: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    for _ in 0..n {
        let conn = Connection::connect(mq.url.expose(), ConnectionProperties::default()).await?;
        let ch = conn.create_channel().await?;
        topology::declare_exchange(&ch, mq).await?;
        ch.basic_publish(
            mq.exchange.as_str().into(),
            "meeting.created".into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await?;
        conn.close(200, "done".into()).await?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// CPU seconds (user + system) a process has used, from /proc (USER_HZ is 100 on Linux).
fn cpu_seconds(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0)
}

/// The processes whose command is `comm` (the broker's Erlang VM, PostgreSQL's backends).
fn pids_of(comm: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|c| c.trim() == comm)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Where the CPU went during a run: (who, seconds).
struct CpuSplit(Vec<(String, f64)>, f64);

/// Whose CPU is counted: these processes, or every process of a command (read again at each
/// sample, so processes started during the run count too — PostgreSQL's backends).
enum Procs {
    Fixed(Vec<u32>),
    Named(&'static str),
}

impl CpuSplit {
    /// CPU seconds so far of each process of each entry.
    fn sample(who: &[(String, Procs)]) -> Vec<HashMap<u32, f64>> {
        who.iter()
            .map(|(_, procs)| {
                let pids = match procs {
                    Procs::Fixed(pids) => pids.clone(),
                    Procs::Named(comm) => pids_of(comm),
                };
                pids.into_iter().map(|p| (p, cpu_seconds(p))).collect()
            })
            .collect()
    }

    /// The CPU each entry used between two samples.
    fn between(
        who: &[(String, Procs)],
        before: &[HashMap<u32, f64>],
        after: &[HashMap<u32, f64>],
        wall: f64,
    ) -> Self {
        let used = who
            .iter()
            .zip(before.iter().zip(after))
            .map(|((name, _), (b, a))| {
                let secs = a
                    .iter()
                    .map(|(pid, s)| s - b.get(pid).copied().unwrap_or(0.0))
                    .sum();
                (name.clone(), secs)
            })
            .collect();
        CpuSplit(used, wall)
    }
}

struct ChainResult {
    cpu: CpuSplit,
    flows_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    memory: Vec<(String, f64, f64)>,
}

/// A role running as its own process for the chain benchmark.
struct RoleProcess {
    role: Role,
    child: Child,
    base: String,
}

impl Drop for RoleProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

async fn spawn_role(
    base: &Settings,
    role: Role,
    tag: &str,
    dir: &std::path::Path,
) -> anyhow::Result<RoleProcess> {
    let database = format!("sqlite://{}/{}.db", dir.display(), role.name);
    spawn_role_on(base, role, tag, &database).await
}

/// A role as an `app` process with its store at `database`.
async fn spawn_role_on(
    base: &Settings,
    role: Role,
    tag: &str,
    database: &str,
) -> anyhow::Result<RoleProcess> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new(app_bin()?)
        .arg(role.name)
        .env("AMQP_URL", base.mq.url.expose())
        .env("MQ_EXCHANGE", format!("{tag}-events"))
        .env("SERVICE_NAME", format!("{tag}-{}", role.service_name()))
        .env("DATABASE_URL", database)
        .env("AUTH_JWT_SECRET", SECRET)
        .env("HTTP_ADDR", "127.0.0.1")
        .env("HTTP_PORT", port.to_string())
        .env("RUST_LOG", "warn")
        .env("CONFIG_DIR", "/nonexistent")
        .stdout(Stdio::null())
        .spawn()?;
    let p = RoleProcess {
        role,
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if http
            .get(format!("{}/ready", p.base))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return Ok(p);
        }
        if Instant::now() > deadline {
            bail!("{role} did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// POST /meetings → meeting.created → permission-service → permission.granted on the bus.
/// Where the chain's roles keep their stores, and how many replicas of each run.
struct Setup {
    label: &'static str,
    postgres: Option<String>,
    replicas: usize,
}

/// The store URL of `role` in `setup`: a SQLite file in `dir`, or a new database.
async fn store_for(
    setup: &Setup,
    dir: &std::path::Path,
    tag: &str,
    role: Role,
) -> anyhow::Result<String> {
    let Some(pg) = &setup.postgres else {
        return Ok(format!("sqlite://{}/{}.db", dir.display(), role.name));
    };
    sqlx::any::install_default_drivers();
    let name = format!("{}_{}", tag.replace('-', "_"), role.name);
    let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(pg).await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    let base = &pg[..pg
        .rfind('/')
        .context("the PostgreSQL URL names a database")?];
    Ok(format!("{base}/{name}"))
}

async fn chain(
    base: &Settings,
    tag: &str,
    args: &BenchArgs,
    setup: &Setup,
) -> anyhow::Result<ChainResult> {
    let dir = tempdir(tag)?;
    let mut permissions = Vec::new();
    let mut meetings = Vec::new();
    let (permission_db, meeting_db) = (
        store_for(setup, &dir, tag, &PERMISSION).await?,
        store_for(setup, &dir, tag, &MEETING).await?,
    );
    for _ in 0..setup.replicas {
        permissions.push(spawn_role_on(base, &PERMISSION, tag, &permission_db).await?);
        meetings.push(spawn_role_on(base, &MEETING, tag, &meeting_db).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (meeting, permission) = (&meetings[0], &permissions[0]);
    let idle: Vec<f64> = [meeting, permission]
        .iter()
        .map(|p| rss_mb(p.child.id()))
        .collect();

    // Watch permission.granted: meeting_id → when it was seen.
    let conn = Connection::connect(base.mq.url.expose(), ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let mut consumer =
        topology::tap(&ch, &format!("{tag}-events"), &["permission.granted"]).await?;
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let notify = Arc::new(tokio::sync::Notify::new());
    let watcher = {
        let (seen, notify) = (seen.clone(), notify.clone());
        tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                let at = Instant::now();
                if let Ok(env) = Envelope::from_bytes(&d.data) {
                    if let Some(id) = env.data["meeting_id"].as_str() {
                        seen.lock().await.insert(id.to_string(), at);
                        notify.notify_waiters();
                    }
                }
            }
        })
    };

    let token =
        meeting_events::issue_token(&Secret::new(SECRET), "alice", Duration::from_secs(3600))?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let post = {
        let (http, token) = (http.clone(), token.clone());
        let urls: Vec<String> = meetings
            .iter()
            .map(|m| format!("{}/meetings", m.base))
            .collect();
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        move || {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (http, token, url) = (http.clone(), token.clone(), urls[i % urls.len()].clone());
            async move {
                let started = Instant::now();
                let r = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({"title": "bench"}))
                    .send()
                    .await?;
                if r.status() != 201 {
                    bail!("POST /meetings answered {}", r.status());
                }
                let v: serde_json::Value = r.json().await?;
                Ok::<_, anyhow::Error>((v["id"].as_str().unwrap_or_default().to_string(), started))
            }
        }
    };
    let wait_all = |ids: Vec<String>| {
        let (seen, notify) = (seen.clone(), notify.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let notified = notify.notified();
                if ids
                    .iter()
                    .all(|id| seen.try_lock().map(|s| s.contains_key(id)).unwrap_or(false))
                {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    bail!("timed out waiting for permission.granted");
                }
                let _ = tokio::time::timeout(Duration::from_millis(20), notified).await;
            }
        }
    };

    // Full concurrency.
    let mut who: Vec<(String, Procs)> = vec![
        ("broker".into(), Procs::Named("beam.smp")),
        (
            "meeting-service".into(),
            Procs::Fixed(meetings.iter().map(|m| m.child.id()).collect()),
        ),
        (
            "permission-service".into(),
            Procs::Fixed(permissions.iter().map(|p| p.child.id()).collect()),
        ),
        (
            "bench client".into(),
            Procs::Fixed(vec![std::process::id()]),
        ),
    ];
    if setup.postgres.is_some() {
        who.push(("PostgreSQL".into(), Procs::Named("postgres")));
    }
    let cpu_before = CpuSplit::sample(&who);
    let started = Instant::now();
    let mut tasks = FuturesUnordered::new();
    let mut ids = Vec::with_capacity(args.flows);
    let mut issued = 0;
    while issued < args.flows || !tasks.is_empty() {
        while issued < args.flows && tasks.len() < args.concurrency {
            tasks.push(tokio::spawn(post()));
            issued += 1;
        }
        if let Some(r) = tasks.next().await {
            ids.push(r??.0);
        }
    }
    wait_all(ids.clone()).await?;
    let last = {
        seen.lock()
            .await
            .iter()
            .filter(|(k, _)| ids.contains(k))
            .map(|(_, t)| *t)
            .max()
            .unwrap_or_else(Instant::now)
    };
    let flows_per_sec = args.flows as f64 / (last - started).as_secs_f64();
    let wall = started.elapsed().as_secs_f64();
    let cpu_after = CpuSplit::sample(&who);
    let cpu = CpuSplit::between(&who, &cpu_before, &cpu_after, wall);

    // Paced.
    let total = (args.rate as f64 * args.paced_for.as_secs_f64()).round() as usize;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut handles = Vec::with_capacity(total);
    for _ in 0..total {
        ticker.tick().await;
        handles.push(tokio::spawn(post()));
    }
    let mut starts = Vec::with_capacity(total);
    for h in handles {
        starts.push(h.await??);
    }
    wait_all(starts.iter().map(|(id, _)| id.clone()).collect()).await?;
    let seen_now = seen.lock().await;
    let mut lat: Vec<f64> = starts
        .iter()
        .filter_map(|(id, t)| seen_now.get(id).map(|s| (*s - *t).as_secs_f64() * 1000.0))
        .collect();
    drop(seen_now);
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];

    let after: Vec<f64> = [meeting, permission]
        .iter()
        .map(|p| rss_mb(p.child.id()))
        .collect();
    watcher.abort();
    let _ = conn.close(200, "bench done".into()).await;
    let memory = [meeting, permission]
        .iter()
        .zip(idle.iter().zip(after))
        .map(|(p, (i, a))| (p.role.service_name().to_string(), *i, a))
        .collect();
    let result = ChainResult {
        cpu,
        flows_per_sec,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: *lat.last().unwrap_or(&f64::NAN),
        memory,
    };
    drop(meetings);
    drop(permissions);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(result)
}
