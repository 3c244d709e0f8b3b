#!/usr/bin/env bash
# The test command: runs every test against a real RabbitMQ.
#
# With AMQP_URL set, that broker is used. Without it, a throwaway node from the Debian/Ubuntu
# `rabbitmq-server` package (installed when missing, as root) is started in a temporary
# directory on free ports and stopped afterwards. Extra arguments go to the test runner.
set -euo pipefail
cd "$(dirname "$0")/.."

# The wire-compatibility test runs the Python mq.py helper.
if ! python3 -c 'import pika' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check pika==1.3.2
fi

if cargo nextest --version >/dev/null 2>&1; then
  exec scripts/broker.sh run cargo nextest run --workspace --no-fail-fast "$@"
else
  exec scripts/broker.sh run cargo test --workspace --no-fail-fast "$@"
fi
