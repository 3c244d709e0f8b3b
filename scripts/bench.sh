#!/usr/bin/env bash
# Benchmarks: builds `app` in release mode and runs `app bench` against AMQP_URL, or against
# a throwaway RabbitMQ node on this machine. Arguments go to `app bench`
# (e.g. `scripts/bench.sh chain --flows 5000`); see `app bench --help`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin app
exec scripts/broker.sh run target/release/app bench "$@"
