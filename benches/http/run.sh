#!/usr/bin/env bash
# End-to-end HTTP benchmark on loopback, every server measured in the same run:
#   bare      examples/bare_server: HTTP + the same JSON decode, no engine (the ceiling)
#   none      the engine, every order accepted, journal fsync = "none"
#   always    the engine, every order accepted, fsync = "always" (group commit)
#   prealloc  as `always`, with journal.preallocate = true (synced zeros ahead of the writer)
#   soldout   the engine, every order for a sold-out SKU (the fast path)
#   nometrics as `none`, with metrics.enabled = false (what counting on the path costs)
#   addr      as `none`, each order with its own shipping address (order review off)
#   review    as `addr`, with every order-review rule on (PUT /v1/review/rules after start:
#             address_buyers_max 3, client_orders_per_min 60000, qty_at_least 5, 24 review
#             users, 24 deny users); wrk is one client, so past 60000 orders in a minute the
#             burst rule holds every order (still 201, one more field in its record)
#   console   as `none`, with one event console open: its event stream (GET /v1/events) and
#             its review-queue poll (GET /v1/reviews every CONSOLE_REVIEW_POLL_S, default 5 s as the page;
#             0: no poll), the requests the page makes
# Each scenario runs ROUNDS times, interleaved, and the medians are reported with the
# server's CPU time per request (utime+stime from /proc/PID/stat), which is steadier than
# req/s on a shared machine.
#
# Usage: benches/http/run.sh            (env: DURATION=10s CONNS=64 THREADS=1 ROUNDS=3
#                                        SCENARIOS="bare none always prealloc soldout nometrics")
# To compare two builds of the engine in the same run, set BASE_BIN to the other build's
# `stampede` binary and add its scenarios with a `base-` prefix (e.g. SCENARIOS="bare none
# base-none always base-always"): each `base-X` runs scenario X on BASE_BIN.
# Needs: wrk (Debian package `wrk`).
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-1}
ROUNDS=${ROUNDS:-3}
SCENARIOS=${SCENARIOS:-bare none always prealloc soldout nometrics}
PORT=${PORT:-18090}
BASE_BIN=${BASE_BIN:-}
command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }
cargo build --release --quiet --bin stampede --example bare_server
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
clk_tck=$(getconf CLK_TCK)

wait_ready() {
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$PORT/$1" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "server did not become ready" >&2; exit 1
}

start_server() { # scenario -> sets SERVER_PID
  case "$1" in
    bare)
      ./target/release/examples/bare_server "127.0.0.1:$PORT" >/dev/null & SERVER_PID=$!
      sleep 0.3 ;;
    none|always|prealloc|soldout|nometrics|addr|review|console|base-*)
      local kind=${1#base-} bin=./target/release/stampede
      if [ "$kind" != "$1" ]; then
        [ -x "$BASE_BIN" ] || { echo "scenario $1 needs BASE_BIN (a stampede binary)" >&2; exit 1; }
        bin=$BASE_BIN
      fi
      local fsync=$kind preallocate=false metrics=true
      [ "$kind" = soldout ] && fsync=always
      [ "$kind" = prealloc ] && fsync=always && preallocate=true
      [ "$kind" = nometrics ] && fsync=none && metrics=false
      [ "$kind" = addr ] || [ "$kind" = review ] && fsync=none
      [ "$kind" = console ] && fsync=none
      rm -rf "$work/data"
      STAMPEDE_JOURNAL_FSYNC=$fsync STAMPEDE_JOURNAL_PREALLOCATE=$preallocate \
        STAMPEDE_METRICS_ENABLED=$metrics STAMPEDE_LOG=warn STAMPEDE_ADMIN_TOKEN=bench-admin-token \
        "$bin" serve \
        --config benches/http/bench.toml --listen "127.0.0.1:$PORT" --data-dir "$work/data" \
        >/dev/null 2>"$work/server.err" & SERVER_PID=$!
      wait_ready readyz
      if [ "$kind" = review ]; then put_review_rules; fi
      ;;
  esac
}

put_review_rules() {
  local users deny
  users=$(python3 -c 'import json; print(json.dumps([f"review-{n}" for n in range(24)]))')
  deny=$(python3 -c 'import json; print(json.dumps([f"deny-{n}" for n in range(24)]))')
  curl -sf -X PUT -H "Authorization: Bearer bench-admin-token" \
    -d "{\"address_buyers_max\":3,\"client_orders_per_min\":60000,\"qty_at_least\":5,\"review_users\":$users,\"deny_users\":$deny}" \
    "http://127.0.0.1:$PORT/v1/review/rules" >/dev/null || { echo "review rules not set" >&2; exit 1; }
}

start_console() { # the requests one open event console makes -> sets CONSOLE_PIDS
  local auth="Authorization: Bearer bench-admin-token"
  curl -sN -H "$auth" "http://127.0.0.1:$PORT/v1/events" >"$work/events.txt" & CONSOLE_PIDS=$!
  local poll=${CONSOLE_REVIEW_POLL_S:-5}
  if [ "$poll" != 0 ]; then
    ( while sleep "$poll"; do
        curl -s -H "$auth" "http://127.0.0.1:$PORT/v1/reviews?limit=100" >/dev/null
      done ) &
    CONSOLE_PIDS="$CONSOLE_PIDS $!"
  fi
  sleep 1
}

run_one() { # scenario round
  local scenario=$1 round=$2 sku=BENCH
  [ "${scenario#base-}" = soldout ] && sku=GONE
  local address=
  case "${scenario#base-}" in addr|review) address=1 ;; esac
  start_server "$scenario"
  CONSOLE_PIDS=""
  [ "${scenario#base-}" = console ] && start_console
  local before; before=$(ticks "$SERVER_PID")
  ADDRESS=$address SKU=$sku RUN_ID="r$round$scenario" wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency \
    -s benches/http/orders.lua "http://127.0.0.1:$PORT" >"$work/$scenario.$round.txt"
  local after; after=$(ticks "$SERVER_PID")
  if [ -n "$CONSOLE_PIDS" ]; then
    # shellcheck disable=SC2086 # one pid per word
    kill $CONSOLE_PIDS 2>/dev/null || true
    echo "  console: $(grep -c '^data: ' "$work/events.txt") snapshots received" >&2
  fi
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
  local out="$work/$scenario.$round.txt"
  local requests rps p50 p99 non2xx
  requests=$(awk '/requests in/ {print $1}' "$out")
  rps=$(awk '/Requests\/sec/ {print $2}' "$out")
  p50=$(awk '$1=="50%" {print $2}' "$out")
  p99=$(awk '$1=="99%" {print $2}' "$out")
  non2xx=$(awk '/Non-2xx/ {print $5}' "$out"); non2xx=${non2xx:-0}
  local cpu_us; cpu_us=$(awk -v t=$((after - before)) -v n="$requests" -v hz="$clk_tck" \
    'BEGIN { printf "%.1f", t * 1e6 / hz / n }')
  echo "$scenario $round $rps $p50 $p99 $cpu_us $requests $non2xx" >>"$work/results"
  printf '%-8s round %s: %10s req/s  p50 %-8s p99 %-8s cpu/req %6s us  (%s requests, %s non-2xx)\n' \
    "$scenario" "$round" "$rps" "$p50" "$p99" "$cpu_us" "$requests" "$non2xx"
}

echo "# $(date -u +%FT%TZ) $(nproc) cores, wrk -t$THREADS -c$CONNS -d$DURATION, $ROUNDS rounds"
for round in $(seq 1 "$ROUNDS"); do
  for scenario in $SCENARIOS; do
    run_one "$scenario" "$round"
  done
done

echo
echo "medians:"
python3 - "$work/results" <<'PY'
import statistics, sys
def ms(text):
    for unit, f in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * f
    return float(text)
rows = {}
for line in open(sys.argv[1]):
    s, _, rps, p50, p99, cpu, n, bad = line.split()
    rows.setdefault(s, []).append((float(rps), ms(p50), ms(p99), float(cpu)))
med = {s: [statistics.median(c) for c in zip(*v)] for s, v in rows.items()}
ref = "bare" if "bare" in med else next(iter(med))
base = med[ref][0]; base_cpu = med[ref][3]
print(f"{'scenario':14}{'req/s':>10}{'x '+ref:>10}{'p50 ms':>9}{'p99 ms':>9}{'cpu us/req':>12}{'x cpu':>8}")
for s in med:
    rps, p50, p99, cpu = med[s]
    print(f"{s:14}{rps:10.0f}{rps/base:10.2f}{p50:9.3f}{p99:9.3f}{cpu:12.1f}{cpu/base_cpu:8.2f}")
for s in med:
    if s.startswith("base-") and s[5:] in med:
        new, old = med[s[5:]], med[s]
        print(f"{s[5:]} / {s}: throughput {new[0]/old[0]:.3f}, cpu per request {new[3]/old[3]:.3f}")
if {"none", "always", "prealloc"} <= med.keys():
    n, a, p = med["none"][0], med["always"][0], med["prealloc"][0]
    print(f"\nalways / none throughput: {a/n:.2f}   prealloc / none: {p/n:.2f}")
if {"addr", "review"} <= med.keys():
    off, on = med["addr"], med["review"]
    print(f"review rules on / off: throughput {on[0]/off[0]:.3f}, cpu per request {on[3]/off[3]:.3f}")
if {"none", "console"} <= med.keys():
    on, off = med["console"], med["none"]
    print(f"console open / none: throughput {on[0]/off[0]:.3f}, cpu per request {on[3]/off[3]:.3f}, p99 {on[2]/off[2]:.2f}x")
if {"none", "nometrics"} <= med.keys():
    on, off = med["none"], med["nometrics"]
    print(f"metrics on / off: throughput {on[0]/off[0]:.3f}, cpu per request {on[3]/off[3]:.3f}")
PY
