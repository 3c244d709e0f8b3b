#!/usr/bin/env bash
# The main job in one command: a broker, the five services (`app all`), and a walk through
# one meeting — create, open the election item, nominate, start, three votes, close, result —
# printing each step and each event on the bus. The services keep running afterwards;
# Ctrl-C stops them (and the throwaway broker, if this script started one).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

echo "building app…" >&2
cargo build --quiet --bin app
app="$repo/target/debug/app"

work=$(mktemp -d /tmp/meeting-events-demo.XXXXXX)
broker_dir=""
app_pid=""
cleanup() {
  [ -n "$app_pid" ] && kill -TERM "$app_pid" 2>/dev/null && wait "$app_pid" 2>/dev/null || true
  [ -n "$broker_dir" ] && scripts/broker.sh stop "$broker_dir" && rm -rf "$broker_dir"
  true
}
trap cleanup EXIT
trap 'exit 0' INT TERM

if [ -z "${AMQP_URL:-}" ]; then
  # Its own folder: the node runs as the rabbitmq user, who cannot enter $work (mode 700).
  broker_dir=$(mktemp -d /tmp/meeting-events-demo-broker.XXXXXX)
  echo "starting a throwaway RabbitMQ node in $broker_dir…" >&2
  AMQP_URL=$(scripts/broker.sh start "$broker_dir")
fi
export AMQP_URL

# Fresh stores in the work directory; config from the repository.
(cd "$work" && CONFIG_DIR="$repo/config" exec "$app" all --dev >"$work/app.log" 2>&1) &
app_pid=$!

CONFIG_DIR="$repo/config" "$app" walk --dev || { echo "the walk failed; service logs: $work/app.log" >&2; exit 1; }

cat <<MSG

The five services are running (logs: $work/app.log):
  meeting     http://localhost:8081    election    http://localhost:8082
  voting      http://localhost:8083    permission  http://localhost:8084
  live        http://localhost:8085
Open the meeting page, sign in as alice and follow a meeting live:
  http://127.0.0.1:8085/live/
Try:
  TOKEN=\$($app token --dev --user alice)
  curl -H "Authorization: Bearer \$TOKEN" http://localhost:8081/meetings
  curl http://localhost:8081/metrics
Press Ctrl-C to stop.
MSG
wait "$app_pid"
