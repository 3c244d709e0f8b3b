#!/usr/bin/env bash
# Run one test or group many times, alone and beside CPU-heavy work, and keep the whole
# output (the roles' logs at debug level included) of every failing round.
#
#   scripts/soak.sh [--hog alone|one|two|both] [--store sqlite|postgres|both] FILTER N
#
# FILTER is a nextest filter expression over the integration suite (`test(/^faults::/)`,
# `test(/^faults::broker_killed/) | test(/^scale::/)`), or a plain substring.
# --hog: `alone` runs with nothing else on the machine, `one` beside a busy loop on one core,
# `two` beside one on each core; `both` (the default) alternates alone and one.
# --store: the roles' stores (`both`, the default, alternates SQLite and PostgreSQL).
#
# Rounds run against a throwaway broker and PostgreSQL (scripts/broker.sh, postgres.sh) unless
# AMQP_URL / TEST_POSTGRES_URL are set. Output goes to target/soak/<time>/: round-K.log for
# each failing round (kept), summary.txt for all. RUST_LOG defaults to debug for the service
# library, so a failing round's log shows what each consumer, relay and session did.
set -euo pipefail
cd "$(dirname "$0")/.."

hog=both store=both
while [ $# -gt 2 ]; do
  case $1 in
    --hog) hog=$2; shift 2 ;;
    --store) store=$2; shift 2 ;;
    *) break ;;
  esac
done
[ $# -eq 2 ] || { echo "usage: $0 [--hog alone|one|two|both] [--store sqlite|postgres|both] FILTER N" >&2; exit 2; }
filter=$1 rounds=$2
case $filter in *'('*) ;; *) filter="test($filter)" ;; esac

if [ "${SOAK_INNER:-}" != 1 ]; then
  cargo build -p app --tests --bins --quiet
  export SOAK_INNER=1
  exec scripts/postgres.sh run scripts/broker.sh run "$0" --hog "$hog" --store "$store" "$1" "$rounds"
fi

out="target/soak/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
export RUST_LOG=${RUST_LOG:-meeting_events=debug,lapin=info,info}
hogs=()
stop_hogs() { for p in "${hogs[@]}"; do kill "$p" 2>/dev/null || true; done; hogs=(); }
trap stop_hogs EXIT
start_hogs() { # N busy loops, one per core
  local i
  for ((i = 0; i < $1; i++)); do
    taskset -c "$i" sh -c 'while :; do :; done' &
    hogs+=($!)
  done
}

failed=0
for ((k = 1; k <= rounds; k++)); do
  case $hog in
    alone) n=0 ;; one) n=1 ;; two) n=2 ;; *) n=$(( (k + 1) % 2 )) ;;
  esac
  case $store in
    sqlite) s=sqlite ;; postgres) s=postgres ;; *) s=$([ $(( (k + 1) / 2 % 2 )) = 0 ] && echo sqlite || echo postgres) ;;
  esac
  start_hogs "$n"
  started=$(date +%s)
  log="$out/round-$k.log"
  status=0
  if [ "$s" = postgres ]; then export TEST_STORE=postgres; else unset TEST_STORE; fi
  cargo nextest run -p app --test it --profile soak --no-fail-fast --no-tests=fail \
    --success-output never --failure-output final -E "$filter" >"$log" 2>&1 || status=$?
  stop_hogs
  took=$(( $(date +%s) - started ))
  if [ "$status" = 0 ]; then
    rm -f "$log"
    line="round $k: pass (hogs $n, $s, ${took}s)"
  else
    failed=$((failed + 1))
    which=$(grep -E '^\s+(FAIL|TIMEOUT|SIG[A-Z]+) \[' "$log" | sed -E 's/.*(FAIL|TIMEOUT|SIG[A-Z]+) \[[^]]*\] /\1 /' | sort -u | tr '\n' ' ' || true)
    line="round $k: FAIL (hogs $n, $s, ${took}s) ${which}-> $log"
  fi
  echo "$line" | tee -a "$out/summary.txt"
done
echo "$((rounds - failed)) of $rounds rounds passed; failing rounds' output in $out" | tee -a "$out/summary.txt"
[ "$failed" = 0 ]
