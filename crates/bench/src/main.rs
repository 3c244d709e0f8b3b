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
use meeting_events::roles::{Role, LIVE, MEETING, PERMISSION};

/// Benchmarks of the meeting system against the configured broker: our publisher vs raw
/// lapin, the outbox relay, the meeting → permission chain, the connection-per-publish
/// pattern of mq.py, and memory. Roles run as `app` processes (next to this binary, or
/// APP_BIN).
mod chain;
mod costs;
mod keys;
mod live;
mod live_h2;
mod procs;
mod publish;
mod raw_chain;
mod relay;
mod table;

use chain::*;
use costs::*;
use live::*;
use procs::*;
use publish::*;
use raw_chain::*;
use relay::*;
use table::*;

#[derive(Debug, Parser)]
#[command(name = "bench")]
pub struct BenchArgs {
    /// publish, relay, chain, per-publish, live, keys, or all.
    #[arg(default_value = "all")]
    pub which: String,
    /// Messages per publish run.
    #[arg(long, default_value_t = 20_000)]
    pub messages: usize,
    /// Unconfirmed publishes in flight (the confirm window), for raw lapin and ours alike.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// Flows in the full-concurrency chain run (and in each raw chain run beside it): at
    /// 10,000 the raw chain runs for about 1.5 s and ours for 4–5 s, where 3,000 lasted half
    /// a second raw. The machine's own load still moves a ratio between runs.
    #[arg(long, default_value_t = 10_000)]
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
    /// Open streams on one live replica, one run per number (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 1_000, 10_000])]
    pub live_streams: Vec<usize>,
    /// Requests per live run, each waited for on every stream.
    #[arg(long, default_value_t = 50)]
    pub live_requests: usize,
    /// The live runs' readers speak h2c, many streams per connection, instead of one
    /// HTTP/1.1 connection per stream.
    #[arg(long)]
    pub h2c: bool,
    /// Rows the inbox holds before the keys run writes into it.
    #[arg(long, default_value_t = 200_000)]
    pub keys_prefill: usize,
    /// Rows each keys run writes and measures.
    #[arg(long, default_value_t = 10_000)]
    pub keys_rows: usize,
}

const SECRET: &str = "benchmark-secret-not-for-production";

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
    if ![
        "all",
        "publish",
        "relay",
        "chain",
        "per-publish",
        "live",
        "keys",
    ]
    .contains(&args.which.as_str())
    {
        bail!(
            "unknown benchmark {:?}: publish, relay, chain, per-publish, live, keys or all",
            args.which
        );
    }
    if args.which == "keys" {
        // The store alone: no broker.
        print_table(&keys::keys(&args).await?);
        return Ok(());
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
        // SQLite without and with trace export, one after the other: the cost of tracing.
        let receiver = Receiver::start().await?;
        let mut setups = vec![
            Setup {
                label: "SQLite",
                postgres: None,
                replicas: 1,
                traced: None,
            },
            Setup {
                label: "SQLite, traced",
                postgres: None,
                replicas: 1,
                traced: Some(receiver.url.clone()),
            },
        ];
        if let Some(pg) = &args.postgres {
            for replicas in [1, 2] {
                setups.push(Setup {
                    label: "PostgreSQL",
                    postgres: Some(pg.clone()),
                    replicas,
                    traced: None,
                });
            }
        }
        let mut untraced: Option<(f64, f64)> = None;
        let mut notes = Vec::new();
        // The limit: a raw 2-hop lapin chain with as many flows in flight as the chain has
        // clients, measured before and after the chains and averaged, like raw publishing.
        let limit = |n: usize| {
            raw_chain(
                &conn,
                &mq.exchange,
                format!("{tag}-r{n}"),
                &sample,
                args.flows,
                args.concurrency,
            )
        };
        // Its CPU too: what a flow costs the broker and a client that does nothing else.
        let (limit_before, raw_cpu) = broker_and_client_cpu(limit(0)).await?;
        let mut chain_rows = Vec::new();
        for (i, setup) in setups.iter().enumerate() {
            let chain = chain(&base, &format!("{tag}-c{i}"), &args, setup).await?;
            let what = format!("{}, {} per role", setup.label, setup.replicas);
            chain_rows.push((rows.len(), chain.flows_per_sec));
            rows.push(Row {
                name: format!(
                    "chain ({what}): POST /meetings → permission.granted, {} clients",
                    args.concurrency
                ),
                result: format!("{:.0} flows/s", chain.flows_per_sec),
                ratio: None,
                target: match (
                    setup.postgres.is_some(),
                    setup.traced.is_some(),
                    setup.replicas,
                ) {
                    (false, false, _) => "≥ 0.50 of the raw chain".into(),
                    (true, _, 1) => "≥ 0.40 of the raw chain".into(),
                    _ => "—".into(),
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
            let cpu_per_flow_ms = 1000.0 * used / args.flows as f64;
            if setup.traced.is_none() && untraced.is_none() {
                untraced = Some((chain.flows_per_sec, cpu_per_flow_ms));
            }
            if let (Some(_), Some((rate, cpu))) = (&setup.traced, untraced) {
                rows.push(Row {
                    name: "chain traced (every span exported, sampling 1.0) / untraced: flows/s"
                        .into(),
                    result: format!(
                        "{:.0} / {rate:.0} flows/s ({} export requests, {} KB)",
                        chain.flows_per_sec,
                        receiver.requests.load(std::sync::atomic::Ordering::Relaxed),
                        receiver.bytes.load(std::sync::atomic::Ordering::Relaxed) / 1024
                    ),
                    ratio: Some(chain.flows_per_sec / rate),
                    target: "≥ 0.90".into(),
                });
                rows.push(Row {
                    name: "chain traced / untraced: CPU per flow (all processes)".into(),
                    result: format!("{cpu_per_flow_ms:.2} / {cpu:.2} ms"),
                    ratio: Some(cpu_per_flow_ms / cpu),
                    target: "profile".into(),
                });
            }
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
            let waits: Vec<String> = (chain.relay_wait_ms.iter())
                .map(|(n, ms)| format!("{n} {ms:.1} ms"))
                .collect();
            rows.push(Row {
                name: format!("chain ({what}) relay wait, write to confirm, mean (full run)"),
                result: waits.join(", "),
                ratio: None,
                target: "profile".into(),
            });
            rows.push(cpu_per_flow_row(
                format!("chain ({what}) CPU ms per flow (full-concurrency run)"),
                &chain.cpu,
                args.flows,
            ));
            if setup.traced.is_none() {
                let flows = args.flows.min(1_000);
                let costs = costs(&base, &format!("{tag}-k{i}"), &args, setup, flows).await?;
                rows.extend(cost_rows(&what, &costs));
            }
            notes.push(format!("{what}: {}", parts.join(", ")));
            if i == 0 {
                memory = chain.memory;
            }
        }
        let raw_chain_rate = (limit_before + limit(1).await?) / 2.0;
        for (row, rate) in chain_rows {
            rows[row].ratio = Some(rate / raw_chain_rate);
        }
        rows.push(Row {
            name: format!(
                "raw 2-hop lapin chain: publish → consume → publish → consume, {} in flight",
                args.concurrency
            ),
            result: format!("{raw_chain_rate:.0} flows/s"),
            ratio: Some(raw_chain_rate / raw),
            target: "reference".into(),
        });
        rows.push(cpu_per_flow_row(
            "raw 2-hop lapin chain CPU ms per flow (first run)".into(),
            &raw_cpu,
            args.flows,
        ));
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
    if want("live") {
        let mut one = None;
        let transport = if args.h2c {
            Transport::H2c
        } else {
            Transport::Http1
        };
        let how = transport.name();
        for (i, &n) in args.live_streams.iter().enumerate() {
            let r = live(
                &base,
                &format!("{tag}-l{i}"),
                n,
                args.live_requests,
                transport,
            )
            .await?;
            let baseline = *one.get_or_insert(r.p99_ms);
            rows.push(Row {
                name: format!("live ({how}): {n} open stream(s), RSS per open stream"),
                result: format!("{:.1} KB", r.kb_per_stream),
                ratio: None,
                target: "≤ 24 KB".into(),
            });
            rows.push(Row {
                name: format!("live ({how}): {n} open stream(s), runtime tasks per open stream"),
                result: format!("{:.2}", r.tasks_per_stream),
                ratio: None,
                target: "1".into(),
            });
            rows.push(Row {
                name: format!(
                    "live ({how}): {n} stream(s), 201 → last stream has the event, p50 / p99 / max ({} requests)",
                    r.requests
                ),
                result: format!("{:.1} / {:.1} / {:.1} ms", r.p50_ms, r.p99_ms, r.max_ms),
                ratio: Some(r.p99_ms / baseline.max(1e-9)),
                target: "p99 ≤ 100 ms".into(),
            });
            eprintln!("live: {} streams measured", r.streams);
        }
    }
    if all {
        rows.extend(keys::keys(&args).await?);
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
