#!/usr/bin/env bash
# Benchmarks: builds `app` and `bench` in release mode and runs `bench` against AMQP_URL (or
# a throwaway RabbitMQ node on this machine) and TEST_POSTGRES_URL (or a throwaway PostgreSQL
# instance), the chain on SQLite and on PostgreSQL with one and two replicas per role. Arguments go to `bench`
# (e.g. `scripts/bench.sh chain --flows 5000`); see `target/release/bench --help`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p app -p bench
exec scripts/postgres.sh run scripts/broker.sh run target/release/bench "$@"
