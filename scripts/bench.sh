#!/usr/bin/env bash
# Benchmarks: builds `app` and `bench` in release mode and runs `bench` against AMQP_URL, or
# against a throwaway RabbitMQ node on this machine. Arguments go to `bench`
# (e.g. `scripts/bench.sh chain --flows 5000`); see `target/release/bench --help`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p app -p bench
exec scripts/broker.sh run target/release/bench "$@"
