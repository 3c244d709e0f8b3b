#!/usr/bin/env bash
# A local scaled-out setup: a private PostgreSQL instance and a three-node RabbitMQ cluster,
# for trying the services with several replicas and for the scale-out tests.
#
#   scripts/cluster.sh start DIR          start it all in DIR; prints AMQP_URL (the three
#                                         nodes) and TEST_POSTGRES_URL, as shell assignments
#   scripts/cluster.sh stop DIR           stop it all (state stays in DIR)
#   scripts/cluster.sh kill-node DIR N    SIGKILL RabbitMQ node N (1–3), as a crash would
#   scripts/cluster.sh restart-node DIR N start node N again; it rejoins the cluster
#   scripts/cluster.sh leader DIR QUEUE   the node number (1–3) leading a quorum queue
#   scripts/cluster.sh database DIR NAME  create a database on the instance; prints its URL
#
# Each node is scripts/broker.sh's private node in DIR/rmqN, joined to node 1 with
# `rabbitmqctl join_cluster` (about 25 s in all); PostgreSQL is scripts/postgres.sh's in DIR/pg.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

die() { echo "cluster.sh: $*" >&2; exit 1; }

nodename() {
  # shellcheck disable=SC1091
  (. "$1/rmq$2/node.env" && echo "$RABBITMQ_NODENAME")
}

port_of() {
  # shellcheck disable=SC1091
  (. "$1/rmq$2/node.env" && echo "$RABBITMQ_NODE_PORT")
}

ctl() {
  local dir=$1 n=$2; shift 2
  rabbitmqctl -q -n "$(nodename "$dir" "$n")" "$@"
}

start() {
  local dir=${1:?usage: start DIR}
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  chmod 755 "$dir"
  local pg urls=() n
  pg=$("$here/postgres.sh" start "$dir/pg")
  for n in 1 2 3; do
    urls+=("$("$here/broker.sh" start "$dir/rmq$n")")
  done
  if [ ! -f "$dir/joined" ]; then
    for n in 2 3; do
      ctl "$dir" "$n" stop_app
      ctl "$dir" "$n" join_cluster "$(nodename "$dir" 1)"
      ctl "$dir" "$n" start_app
    done
    touch "$dir/joined"
  fi
  ctl "$dir" 1 await_online_nodes 3 >/dev/null 2>&1 || true
  local joined
  joined=$(IFS=,; echo "${urls[*]}")
  echo "export AMQP_URL='$joined'"
  echo "export TEST_POSTGRES_URL='$pg'"
}

stop() {
  local dir=${1:?usage: stop DIR} n
  for n in 3 2 1; do "$here/broker.sh" stop "$dir/rmq$n" || true; done
  "$here/postgres.sh" stop "$dir/pg" || true
}

kill_node() {
  local dir=${1:?usage: kill-node DIR N} n=${2:?usage: kill-node DIR N}
  "$here/broker.sh" kill "$dir/rmq$n"
}

restart_node() {
  local dir=${1:?usage: restart-node DIR N} n=${2:?usage: restart-node DIR N}
  "$here/broker.sh" start "$dir/rmq$n" >/dev/null
}

leader() {
  local dir=${1:?usage: leader DIR QUEUE} queue=${2:?usage: leader DIR QUEUE} n name lead
  for n in 1 2 3; do
    lead=$(ctl "$dir" "$n" list_queues name leader 2>/dev/null | awk -v q="$queue" '$1 == q { print $2 }') || continue
    [ -n "$lead" ] || continue
    for name in 1 2 3; do
      [ "$(nodename "$dir" "$name")" = "$lead" ] && { echo "$name"; return; }
    done
  done
  die "no leader found for $queue"
}

database() {
  local dir=${1:?usage: database DIR NAME} name=${2:?usage: database DIR NAME} port
  port=$(cat "$dir/pg/port")
  psql "postgres://postgres@127.0.0.1:$port/postgres" -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE $name" >/dev/null
  echo "postgres://postgres@127.0.0.1:$port/$name"
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  kill-node) shift; kill_node "$@" ;;
  restart-node) shift; restart_node "$@" ;;
  leader) shift; leader "$@" ;;
  database) shift; database "$@" ;;
  *) die "usage: $0 start DIR | stop DIR | kill-node DIR N | restart-node DIR N | leader DIR QUEUE | database DIR NAME" ;;
esac
