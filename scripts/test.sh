#!/usr/bin/env bash
# The test command: every test against a real RabbitMQ, and the integration suite a second
# time with the roles' stores on PostgreSQL.
#
# With AMQP_URL set, that broker is used; without it, a throwaway node from the Debian
# `rabbitmq-server` package (installed when missing, as root) runs on free ports and is
# removed afterwards. TEST_POSTGRES_URL works the same way for PostgreSQL (scripts/postgres.sh).
# Extra arguments go to the test runner (a filter, for example).
set -euo pipefail
cd "$(dirname "$0")/.."

# The wire-compatibility test runs the Python mq.py helper.
if ! python3 -c 'import pika' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check pika==1.3.2
fi

if [ "${1:-}" != "--suites" ]; then
  # The page test drives Debian's headless Chromium.
  scripts/browser.sh install
  exec scripts/postgres.sh run scripts/broker.sh run "$0" --suites "$@"
fi
shift

# The scale-out test brings its own cluster and PostgreSQL, and takes the machine's cores
# for its eleven processes: it runs once, alone, after the two passes.
if cargo nextest --version >/dev/null 2>&1; then
  runner=(cargo nextest run --no-fail-fast --no-tests=pass)
  not_scale=(-E 'not test(/^scale::/)')
  only_scale=(-E 'test(/^scale::/)')
  broker_kills=(-E 'test(/^faults::broker_killed/)')
else
  runner=(cargo test --no-fail-fast)
  not_scale=(-- --skip scale::)
  only_scale=(-- scale::)
  broker_kills=(-- faults::broker_killed)
fi
status=0
# The broker-kill tests run a second time in each pass: a rare failure there (a consumer
# that stops after a crash) shows twice as often.
echo "== every test; stores on SQLite" >&2
"${runner[@]}" --workspace "$@" "${not_scale[@]}" || status=$?
echo "== the broker-kill tests again; stores on SQLite" >&2
"${runner[@]}" -p app --test it "$@" "${broker_kills[@]}" || status=$?
echo "== the integration suite; stores on PostgreSQL" >&2
TEST_STORE=postgres "${runner[@]}" -p app --test it "$@" "${not_scale[@]}" || status=$?
echo "== the broker-kill tests again; stores on PostgreSQL" >&2
TEST_STORE=postgres "${runner[@]}" -p app --test it "$@" "${broker_kills[@]}" || status=$?
echo "== scaled out: two replicas per role, PostgreSQL, a three-node cluster" >&2
"${runner[@]}" -p app --test it "$@" "${only_scale[@]}" || status=$?
exit $status
