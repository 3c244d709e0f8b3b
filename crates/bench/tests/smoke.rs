//! The benchmark harness runs end to end against the test broker, with the `app` binary
//! built next to it, and prints every row of its table.

use std::process::Command;

/// The table a successful run of the bench with `args` printed.
fn run(args: &[&str]) -> String {
    let out = bench().args(args).output().expect("bench runs");
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{table}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    table
}

/// The bench binary against the test broker.
fn bench() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bench"));
    command
        .env(
            "AMQP_URL",
            std::env::var("AMQP_URL").expect("AMQP_URL: run scripts/test.sh"),
        )
        .env("CONFIG_DIR", "/nonexistent")
        .env("RUST_LOG", "warn");
    command
}

#[test]
fn bench_runs_every_benchmark_and_prints_its_table() {
    let table = run(&[
        "all",
        "--messages",
        "300",
        "--flows",
        "60",
        "--concurrency",
        "8",
        "--rate",
        "50",
        "--paced-for",
        "1s",
        "--per-publish-messages",
        "5",
        "--live-streams",
        "1,40",
        "--live-requests",
        "3",
        "--keys-prefill",
        "2000",
        "--keys-rows",
        "100",
    ]);
    for row in [
        "cores",
        "publish: raw lapin",
        "publish: our publisher",
        "outbox relay",
        "flows/s",
        "raw 2-hop lapin chain",
        "p50 / p99",
        "connection per publish",
        "RSS meeting-service",
        "RSS permission-service",
        "CPU during",
        "live (HTTP/1.1): 1 open stream(s), RSS per open stream",
        "live (HTTP/1.1): 40 open stream(s), runtime tasks per open stream",
        "live (HTTP/1.1): 40 stream(s), 201 → last stream",
        "keys (SQLite): inbox of 2000 rows, 100 more in commits of 1, random ids (v4)",
        "keys (SQLite): inbox of 2000 rows, 100 more in commits of 20, time-ordered ids (v7)",
    ] {
        assert!(table.contains(row), "the table lacks {row:?}:\n{table}");
    }
    if std::env::var("TEST_POSTGRES_URL").is_ok() {
        for row in [
            "chain (PostgreSQL, 1 per role)",
            "chain (PostgreSQL, 2 per role)",
            "keys (PostgreSQL): inbox of 2000 rows, 100 more in commits of 20, time-ordered ids (v7)",
        ] {
            assert!(table.contains(row), "the table lacks {row:?}:\n{table}");
        }
    }
}

#[test]
fn bench_live_reads_streams_multiplexed_over_h2c() {
    let table = run(&[
        "live",
        "--h2c",
        "--live-streams",
        "1,1200",
        "--live-requests",
        "3",
    ]);
    for row in [
        "live (h2c): 1200 open stream(s), RSS per open stream",
        "live (h2c): 1200 open stream(s), runtime tasks per open stream",
        "live (h2c): 1200 stream(s), 201 → last stream",
    ] {
        assert!(table.contains(row), "the table lacks {row:?}:\n{table}");
    }
}
