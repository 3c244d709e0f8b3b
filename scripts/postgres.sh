#!/usr/bin/env bash
# A private, throwaway PostgreSQL instance from the machine's PostgreSQL 15 (Debian's
# postgresql-15; installed when missing, as root).
#
#   scripts/postgres.sh install          install PostgreSQL 15 when missing (needs root)
#   scripts/postgres.sh start DIR [PORT] start an instance whose data lives in DIR; prints a URL
#                                        of its `postgres` database (create one per role)
#   scripts/postgres.sh stop DIR         stop it (its data stays in DIR)
#   scripts/postgres.sh kill DIR         SIGKILL it, as a crash would
#   scripts/postgres.sh run CMD [ARGS…]  run CMD with TEST_POSTGRES_URL set: the caller's, or a
#                                        throwaway instance's that is stopped and removed after
#
# The instance listens on 127.0.0.1 and a socket in DIR, trusts local connections, and runs
# as the `postgres` user when started by root. Nothing here touches the machine's clusters.
set -euo pipefail

die() { echo "postgres.sh: $*" >&2; exit 1; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

bin() {
  local b
  for b in /usr/lib/postgresql/*/bin; do
    [ -x "$b/pg_ctl" ] && { echo "$b"; return; }
  done
  return 1
}

install() {
  bin >/dev/null && return 0
  [ "$(id -u)" = 0 ] || die "PostgreSQL is not installed; run as root or install postgresql-15"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends postgresql-15 >/dev/null 2>&1 ||
    { apt-get update >/dev/null && apt-get install -y --no-install-recommends postgresql-15 >/dev/null; }
  if command -v service >/dev/null 2>&1; then service postgresql stop >/dev/null 2>&1 || true; fi
}

# Run a command as the instance's owner.
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
  else
    "$@"
  fi
}

start() {
  local dir=${1:?usage: start DIR [PORT]} port=${2:-}
  install
  local b; b=$(bin)
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$dir"; chmod 700 "$dir"; fi
  if [ ! -f "$dir/port" ]; then
    [ -n "$port" ] || port=$(free_port)
    as_owner "$b/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >/dev/null
    echo "$port" >"$dir/port.tmp" && mv "$dir/port.tmp" "$dir/port"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir/port"
  fi
  port=$(cat "$dir/port")
  as_owner "$b/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync=on" start >/dev/null ||
    { tail -n 20 "$dir/log" >&2; die "the instance in $dir did not start"; }
  echo "postgres://postgres@127.0.0.1:$port/postgres"
}

stop() {
  local dir=${1:?usage: stop DIR}
  [ -d "$dir/data" ] || return 0
  as_owner "$(bin)/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
}

kill_instance() {
  local dir=${1:?usage: kill DIR}
  local pid
  pid=$(head -n 1 "$dir/data/postmaster.pid" 2>/dev/null) || return 0
  kill -9 "$pid" 2>/dev/null || true
}

run_with_postgres() {
  [ $# -gt 0 ] || die "usage: run CMD [ARGS…]"
  if [ -n "${TEST_POSTGRES_URL:-}" ]; then
    "$@"
    return
  fi
  local dir
  dir=$(mktemp -d /tmp/meeting-events-postgres.XXXXXX)
  chmod 755 "$dir"
  # shellcheck disable=SC2064
  trap "stop '$dir/pg'; rm -rf '$dir'" EXIT
  echo "starting a throwaway PostgreSQL instance in $dir" >&2
  TEST_POSTGRES_URL=$(start "$dir/pg")
  export TEST_POSTGRES_URL
  "$@"
}

case "${1:-}" in
  install) install ;;
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  kill) shift; kill_instance "$@" ;;
  run) shift; run_with_postgres "$@" ;;
  *) die "usage: $0 install | start DIR [PORT] | stop DIR | kill DIR | run CMD…" ;;
esac
