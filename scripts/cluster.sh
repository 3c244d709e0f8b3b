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
#   scripts/cluster.sh start-netns DIR    like start, but each node in its own network namespace
#                                         (needs root): see below
#   scripts/cluster.sh partition DIR N    cut node N off from the other two nodes (its clients
#                                         still reach it)
#   scripts/cluster.sh heal DIR N         join node N's cluster link again
#   scripts/cluster.sh running DIR N      true when node N serves (false while it is paused)
#   scripts/cluster.sh boot-state DIR N   node N's boot state and, while it boots, where its
#                                         boot waits (module:function, innermost first)
#   scripts/cluster.sh connections DIR N  the named client connections node N's cluster lists,
#                                         one line each: the address they reached, their name
#
# Each node is scripts/broker.sh's private node in DIR/rmqN, joined to node 1 with
# `rabbitmqctl join_cluster` (about 25 s in all); PostgreSQL is scripts/postgres.sh's in DIR/pg.
#
# start-netns: a node per network namespace, with two links made of veth pairs from iproute2.
# Its cluster link (10.X.1.N, the address in its node name rabbit@10.X.1.N) joins the other
# nodes' on one bridge; its client link (10.X.2.N, where AMQP_URL points) joins a second bridge
# that this host reaches at 10.X.2.254. Both bridges live in a fourth namespace, so nothing is
# added to the host but one veth end. Cutting a node's cluster link is a partition the clients
# do not see: the node is alive and they stay connected to it, until, with
# cluster_partition_handling = pause_minority, it finds itself in the minority and pauses.
# Erlang's net_ticktime is 4 s, so that takes seconds, not a minute.
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
  "$here/broker.sh" ctl "$dir/rmq$n" "$@"
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
  [ -f "$dir/netns.env" ] && netns_down "$dir"
  return 0
}

# The names of DIR's namespaces and links, and its network 10.X: from a checksum of DIR.
netns_names() {
  local dir=$1 sum
  sum=$(printf '%s' "$dir" | cksum | cut -d' ' -f1)
  ns_id=$((sum % 10000))
  net="10.$((sum % 150 + 100))"
  switch="mev${ns_id}sw"
  host_link="mev${ns_id}h"
}

node_ns() { echo "mev${ns_id}n$1"; }

netns_up() {
  local dir=$1 n ns
  [ "$(id -u)" = 0 ] || die "start-netns needs root (ip netns)"
  command -v ip >/dev/null || die "start-netns needs iproute2"
  netns_names "$dir"
  ip -br addr | grep -q " $net\." && die "$net.0.0/16 is already in use on this host"
  ip netns add "$switch"
  ip -n "$switch" link set lo up
  ip -n "$switch" link add cluster type bridge
  ip -n "$switch" link add clients type bridge
  ip -n "$switch" link set cluster up
  ip -n "$switch" link set clients up
  for n in 1 2 3; do
    ns=$(node_ns "$n")
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip link add "c$n" netns "$switch" type veth peer name c0 netns "$ns"
    ip link add "k$n" netns "$switch" type veth peer name k0 netns "$ns"
    ip -n "$switch" link set "c$n" master cluster up
    ip -n "$switch" link set "k$n" master clients up
    ip -n "$ns" addr add "$net.1.$n/24" dev c0
    ip -n "$ns" addr add "$net.2.$n/24" dev k0
    ip -n "$ns" link set c0 up
    ip -n "$ns" link set k0 up
  done
  ip link add "$host_link" type veth peer name host netns "$switch"
  ip -n "$switch" link set host master clients up
  ip addr add "$net.2.254/24" dev "$host_link"
  ip link set "$host_link" up
  printf 'ns_id=%s\nnet=%s\n' "$ns_id" "$net" >"$dir/netns.env"
}

netns_down() {
  local dir=$1 n ns
  netns_names "$dir"
  for n in 1 2 3 sw; do
    ns="mev${ns_id}n$n"
    [ "$n" = sw ] && ns=$switch
    # epmd and anything else the nodes left running there
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  ip link del "$host_link" 2>/dev/null || true
  rm -f "$dir/netns.env"
}

start_netns() {
  local dir=${1:?usage: start-netns DIR}
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  chmod 755 "$dir"
  [ -f "$dir/netns.env" ] || netns_up "$dir"
  netns_names "$dir"
  local n node
  for n in 1 2 3; do
    node="$dir/rmq$n"
    [ -f "$node/node.env" ] && continue
    mkdir -p "$node/mnesia" "$node/log"
    cat >"$node/node.env" <<ENV
RABBITMQ_NODENAME=rabbit@$net.1.$n
RABBITMQ_USE_LONGNAME=true
RABBITMQ_NODE_PORT=5672
RABBITMQ_DIST_PORT=25672
NETNS=$(node_ns "$n")
NODE_HOST=$net.2.$n
ENV
    # guest may connect from beyond loopback: the clients are on another host's address.
    printf '%s\n' 'listeners.tcp.default = 5672' 'loopback_users = none' \
      'cluster_partition_handling = pause_minority' 'disk_free_limit.absolute = 50MB' \
      'log.console = false' >"$node/rabbitmq.conf"
    echo '[{kernel, [{net_ticktime, 4}]}].' >"$node/advanced.config"
    echo '[].' >"$node/enabled_plugins"
  done
  start "$dir"
}

partition() {
  local dir=${1:?usage: partition DIR N} n=${2:?usage: partition DIR N}
  netns_names "$dir"
  ip -n "$switch" link set "c$n" nomaster
}

heal() {
  local dir=${1:?usage: heal DIR N} n=${2:?usage: heal DIR N}
  netns_names "$dir"
  ip -n "$switch" link set "c$n" master cluster
}

running() {
  local dir=${1:?usage: running DIR N} n=${2:?usage: running DIR N}
  ctl "$dir" "$n" eval 'rabbit:is_running().'
}

boot_state() {
  local dir=${1:?usage: boot-state DIR N} n=${2:?usage: boot-state DIR N} out
  out=$(timeout -k 5 30 "$here/broker.sh" ctl "$dir/rmq$n" eval '
    Where = case whereis(rabbit) of
      undefined -> [];
      P -> case erlang:process_info(P, current_stacktrace) of
             {current_stacktrace, S} -> [io_lib:format("~s:~s", [M, F]) || {M, F, _, _} <- S, M =/= gen, M =/= gen_server];
             _ -> []
           end
    end,
    io:format("~s ~s~n", [rabbit_boot_state:get(), lists:join(" < ", lists:sublist(Where, 3))]).' 2>&1) ||
    out="not answering: $out"
  printf '%s\n' "${out%%$'\n'*}"
}

connections() {
  local dir=${1:?usage: connections DIR N} n=${2:?usage: connections DIR N}
  ctl "$dir" "$n" list_connections host client_properties --no-table-headers 2>/dev/null |
    sed -n 's/^\([^[:space:]]*\).*{"connection_name","\([^"]*\)"}.*/\1 \2/p'
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
  start-netns) shift; start_netns "$@" ;;
  partition) shift; partition "$@" ;;
  heal) shift; heal "$@" ;;
  connections) shift; connections "$@" ;;
  running) shift; running "$@" ;;
  boot-state) shift; boot_state "$@" ;;
  *) die "usage: $0 start DIR | start-netns DIR | stop DIR | kill-node DIR N | restart-node DIR N | partition DIR N | heal DIR N | running DIR N | boot-state DIR N | connections DIR N | leader DIR QUEUE | database DIR NAME" ;;
esac
