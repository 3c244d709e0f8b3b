#!/usr/bin/env bash
# A private, throwaway RabbitMQ node from the Debian/Ubuntu `rabbitmq-server` package.
#
#   scripts/broker.sh install          install the package when missing (needs root)
#   scripts/broker.sh start DIR [PORT] start a node whose state lives in DIR; prints its AMQP URL
#                                      (with BROKER_PROMETHEUS_PORT set, rabbitmq_prometheus
#                                      serves the node's metrics on that port)
#   scripts/broker.sh stop DIR         stop that node (its data stays in DIR)
#   scripts/broker.sh kill DIR         SIGKILL the node's VM, as a crash would
#   scripts/broker.sh close-connections DIR   have the node close every client connection
#   scripts/broker.sh ctl DIR ARGS…    rabbitmqctl ARGS… against that node (users, permissions)
#   scripts/broker.sh apply DIR FILE   run the rabbitmqctl commands in FILE against that node, as
#                                      `app topology permissions > FILE` prints them (passwords
#                                      from the variables they name)
#   scripts/broker.sh run CMD [ARGS…]  run CMD with AMQP_URL set: the caller's, or a throwaway
#                                      node's that is stopped and removed afterwards
#
# A node started again on the same DIR keeps its name, port, durable queues and persistent
# messages. Nothing here touches the machine's default node.
set -euo pipefail

die() { echo "broker.sh: $*" >&2; exit 1; }

# A free port below the kernel's ephemeral range (32768-60999): a port the kernel handed out
# could be taken again, before the node binds it, by any client socket or by a rabbitmqctl
# CLI node's own distribution port (seen: dist_port_already_used).
free_port() {
  python3 -c '
import random, socket
for _ in range(500):
    p = random.randint(20000, 32000)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        s.close()
    print(p)
    break
else:
    raise SystemExit("no free port in 20000-32000")
'
}

install() {
  command -v rabbitmq-server >/dev/null 2>&1 && return 0
  [ "$(id -u)" = 0 ] || die "rabbitmq-server is not installed; run as root or install it (apt-get install rabbitmq-server)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends rabbitmq-server >/dev/null 2>&1 ||
    { apt-get update >/dev/null && apt-get install -y --no-install-recommends rabbitmq-server >/dev/null; }
  # The package may start the machine's default node; it is not ours to keep running.
  if command -v service >/dev/null 2>&1; then service rabbitmq-server stop >/dev/null 2>&1 || true; fi
}

node_env() {
  local dir=$1
  # A node made by scripts/cluster.sh start-netns also names its network namespace (NETNS),
  # the address its clients reach it on (NODE_HOST) and RABBITMQ_USE_LONGNAME.
  NETNS="" NODE_HOST=127.0.0.1 RABBITMQ_USE_LONGNAME=false
  # shellcheck disable=SC1091
  . "$dir/node.env"
  export RABBITMQ_NODENAME RABBITMQ_NODE_PORT RABBITMQ_DIST_PORT RABBITMQ_USE_LONGNAME
  export RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log"
  export RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
  export RABBITMQ_PID_FILE="$dir/rabbit.pid"
  [ -f "$dir/advanced.config" ] && export RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
  in_ns=()
  [ -n "$NETNS" ] && in_ns=(ip netns exec "$NETNS")
  ctl_args=(-q -n "$RABBITMQ_NODENAME")
  [ "$RABBITMQ_USE_LONGNAME" = true ] && ctl_args+=(-l)
  return 0
}

# rabbitmqctl against the node whose environment node_env loaded, from its namespace.
node_ctl() { "${in_ns[@]}" rabbitmqctl "${ctl_args[@]}" "$@"; }

start() {
  local dir=${1:?usage: start DIR [PORT]} port=${2:-}
  install
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if [ ! -f "$dir/node.env" ]; then
    [ -n "$port" ] || port=$(free_port)
    local name="rmq-$(basename "$dir" | tr -c 'a-zA-Z0-9\n' '-')-$$"
    cat >"$dir/node.env" <<ENV
RABBITMQ_NODENAME=$name@localhost
RABBITMQ_NODE_PORT=$port
RABBITMQ_DIST_PORT=$(free_port)
ENV
    mkdir -p "$dir/mnesia" "$dir/log"
    printf 'listeners.tcp.default = %s\ndisk_free_limit.absolute = 50MB\nlog.console = false\n' "$port" >"$dir/rabbitmq.conf"
    echo '[].' >"$dir/enabled_plugins"
    if [ -n "${BROKER_PROMETHEUS_PORT:-}" ]; then
      # The broker's own metrics (rabbitmq_prometheus) on this port, for a live Prometheus.
      printf 'prometheus.tcp.port = %s\nprometheus.tcp.ip = 127.0.0.1\n' "$BROKER_PROMETHEUS_PORT" >>"$dir/rabbitmq.conf"
      echo '[rabbitmq_prometheus].' >"$dir/enabled_plugins"
    fi
  fi
  node_env "$dir"
  if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1; then
    # The package's script drops to the rabbitmq user: the node's files must be its own.
    chown -R rabbitmq:rabbitmq "$dir"
    chmod 755 "$dir"
    su rabbitmq -s /bin/sh -c "test -w '$dir/mnesia'" ||
      die "the rabbitmq user cannot reach $dir: every folder above it must be searchable (chmod o+x)"
  fi
  rm -f "$RABBITMQ_PID_FILE"
  # Its own session: signals to the caller's process group never reach the node, nor the reverse.
  setsid nohup "${in_ns[@]}" rabbitmq-server >"$dir/log/stdout.log" 2>&1 < /dev/null &
  if ! timeout 90 "${in_ns[@]}" rabbitmqctl "${ctl_args[@]}" wait --timeout 90 "$RABBITMQ_PID_FILE" >/dev/null 2>&1; then
    tail -n 30 "$dir/log/stdout.log" >&2 || true
    die "node $RABBITMQ_NODENAME did not start (logs in $dir/log)"
  fi
  echo "amqp://guest:guest@$NODE_HOST:$RABBITMQ_NODE_PORT/%2f"
}

stop() {
  local dir=${1:?usage: stop DIR}
  [ -f "$dir/node.env" ] || return 0
  node_env "$dir"
  # Bounded: a node stuck in its boot (seen after a partition healed, in global:sync) never
  # answers a stop, and a throwaway node is as well killed.
  "${in_ns[@]}" timeout -k 5 60 rabbitmqctl "${ctl_args[@]}" stop "$RABBITMQ_PID_FILE" \
    >/dev/null 2>&1 || kill_node "$dir"
}

kill_node() {
  local dir=${1:?usage: kill DIR}
  node_env "$dir"
  [ -f "$RABBITMQ_PID_FILE" ] && kill -9 "$(cat "$RABBITMQ_PID_FILE")" 2>/dev/null || true
  # wait until the port is free again, so a restart can bind it
  for _ in $(seq 1 100); do
    python3 -c "import socket,sys; s=socket.socket(); s.settimeout(1); sys.exit(0 if s.connect_ex(('$NODE_HOST',$RABBITMQ_NODE_PORT)) else 1)" && return 0
    sleep 0.1
  done
}

close_connections() {
  local dir=${1:?usage: close-connections DIR}
  node_env "$dir"
  node_ctl close_all_connections "closed by broker.sh" >/dev/null
}

apply_commands() {
  local dir=${1:?usage: apply DIR FILE} file=${2:?usage: apply DIR FILE}
  [ -f "$file" ] || die "no such file: $file"
  node_env "$dir"
  # Every `rabbitmqctl …` line of FILE, aimed at this node.
  # shellcheck disable=SC2317
  rabbitmqctl() {
    if [ ${#in_ns[@]} -gt 0 ]; then "${in_ns[@]}" rabbitmqctl "${ctl_args[@]}" "$@"; else command rabbitmqctl "${ctl_args[@]}" "$@"; fi
  }
  # shellcheck disable=SC1090
  . "$file"
}

run_with_broker() {
  [ $# -gt 0 ] || die "usage: run CMD [ARGS…]"
  if [ -n "${AMQP_URL:-}" ]; then
    "$@"
    return
  fi
  local dir
  dir=$(mktemp -d /tmp/meeting-events-broker.XXXXXX)
  # shellcheck disable=SC2064
  trap "stop '$dir'; rm -rf '$dir'" EXIT
  echo "starting a throwaway RabbitMQ node in $dir" >&2
  AMQP_URL=$(start "$dir")
  export AMQP_URL
  "$@"
}

case "${1:-}" in
  install) install ;;
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  kill) shift; kill_node "$@" ;;
  close-connections) shift; close_connections "$@" ;;
  apply) shift; apply_commands "$@" ;;
  ctl) shift; dir=${1:?usage: ctl DIR ARGS…}; shift; node_env "$dir"; node_ctl "$@" ;;
  run) shift; run_with_broker "$@" ;;
  *) die "usage: $0 install | start DIR [PORT] | stop DIR | kill DIR | close-connections DIR | ctl DIR ARGS… | apply DIR FILE | run CMD…" ;;
esac
