#!/usr/bin/env bash
# A longer overload run for the record (RELIABILITY.md), with stampede-load against a release
# build of the engine (the short version is tests/overload.rs):
#
#   1. capacity  closed model, CAP_CONNS connections, CAP_DURATION: orders/s sustained
#   2. unloaded  open model at a tenth of that, LIGHT_CONNS connections: the latency baseline
#   3. overload  open model at FACTOR x capacity on OVER_CONNS connections for DURATION,
#                with stampede-load's audit (every 201 journaled exactly once)
#   4. recovery  open model at a tenth of capacity again, at once
#
# The server's RSS and open connections are sampled every second for the whole run
# (server.csv; phases.csv says when each phase ran).
# Each phase writes stampede-load's JSON summary and HTML report into OUT_DIR; the script
# ends with one table (capacity, offered rate, shed %, 201 latencies corrected and service
# time, unloaded p99, peak RSS, recovery p99) and exits 0 when the run met its bounds
# (no transport error, no answer other than 201/429/503 under overload, peak RSS under
# RSS_BOUND_MIB, recovery p99 within 3x the unloaded p99 + 25 ms), 1 otherwise.
#
# Usage: scripts/overload.sh
#   env: DURATION=60s FACTOR=3 CAP_CONNS=256 CAP_DURATION=10s OVER_CONNS=1024 LIGHT_CONNS=64
#        RECOVERY_DURATION=10s RSS_BOUND_MIB=2048 ORDERS_EXPECTED=4000000 PORT=18290 OUT_DIR=target/overload/<time>
#        IN_FLIGHT_MAX=<admission.in_flight_max; default: the engine's>  FSYNC=always
#        SKIP_BUILD=1 (use the release binaries already built)
# Needs: curl, python3. OVER_CONNS above ~1000 needs `ulimit -n` well above it (raised here
# to the hard limit when possible).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-60s}
FACTOR=${FACTOR:-3}
CAP_CONNS=${CAP_CONNS:-256}
CAP_DURATION=${CAP_DURATION:-10s}
OVER_CONNS=${OVER_CONNS:-1024}
# Enough connections that the light phases never queue in the generator (each carries one
# request at a time, and an fsync'd answer takes a millisecond or more).
LIGHT_CONNS=${LIGHT_CONNS:-64}
RECOVERY_DURATION=${RECOVERY_DURATION:-10s}
RSS_BOUND_MIB=${RSS_BOUND_MIB:-2048}
PORT=${PORT:-18290}
FSYNC=${FSYNC:-always}
IN_FLIGHT_MAX=${IN_FLIGHT_MAX:-}
OUT_DIR=${OUT_DIR:-target/overload/$(date -u +%Y%m%dT%H%M%SZ)}
TOKEN=overload-admin-token-0123456789abcdef
URL="http://127.0.0.1:$PORT"

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((OVER_CONNS * 2 + 256)) ]; then
  echo "overload.sh: ulimit -n is $(ulimit -n); OVER_CONNS=$OVER_CONNS needs about $((OVER_CONNS * 2 + 256))" >&2
  exit 2
fi
command -v python3 >/dev/null || { echo "overload.sh: needs python3" >&2; exit 2; }
command -v curl >/dev/null || { echo "overload.sh: needs curl" >&2; exit 2; }

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release --quiet --bin stampede
  cargo build --release --quiet -p stampede-load
fi
LOAD=./target/release/stampede-load
ENGINE=./target/release/stampede

mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
# The data on the project's disk (not a tmpfs), so fsync costs what it costs.
DATA_DIR="$OUT_DIR/data"
SERVER_PID=
SAMPLER_PID=
cleanup() {
  if [ -n "$SAMPLER_PID" ]; then kill "$SAMPLER_PID" 2>/dev/null || true; fi
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$DATA_DIR"
}
trap cleanup EXIT

# Sized for a long overload run (about 40k orders/s for 60 s here): no rehash of the dedup
# index mid-run. The tables take RAM in proportion (see the RSS at start).
cat >"$OUT_DIR/engine.toml" <<TOML
[inventory]
orders_expected = ${ORDERS_EXPECTED:-4000000}
TOML
echo "overload.sh: engine on $URL (fsync $FSYNC${IN_FLIGHT_MAX:+, in_flight_max $IN_FLIGHT_MAX}); output in $OUT_DIR"
env STAMPEDE_ADMIN_TOKEN="$TOKEN" STAMPEDE_JOURNAL_FSYNC="$FSYNC" NO_COLOR=1 \
  ${IN_FLIGHT_MAX:+STAMPEDE_ADMISSION_IN_FLIGHT_MAX=$IN_FLIGHT_MAX} \
  ${ENGINE_CPUS:+taskset -c "$ENGINE_CPUS"} "$ENGINE" serve --config "$OUT_DIR/engine.toml" --listen "127.0.0.1:$PORT" \
  --data-dir "$DATA_DIR" >"$OUT_DIR/engine.out" 2>"$OUT_DIR/engine.err" &
SERVER_PID=$!
for _ in $(seq 1 150); do
  curl -sf "$URL/readyz" >/dev/null 2>&1 && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$OUT_DIR/engine.err" >&2; exit 1; }
  sleep 0.1
done
curl -sf "$URL/readyz" >/dev/null || { echo "overload.sh: engine not ready" >&2; exit 1; }

# A new run id per phase (1..=10 of [a-z0-9]): phase initial + 7 digits of the clock.
# RSS (KiB) and open connections of the server, every second, for the whole run; phases.csv
# says when each phase began and ended.
(
  echo "unix_s,rss_kib,connections"
  while kill -0 "$SERVER_PID" 2>/dev/null; do
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$SERVER_PID/status" 2>/dev/null || echo 0)
    conns=$(curl -s --max-time 1 "$URL/metrics" | awk '/^stampede_http_connections / {print $2}')
    echo "$(date +%s.%N),${rss:-0},${conns:-}"
    sleep 1
  done
) >"$OUT_DIR/server.csv" &
SAMPLER_PID=$!
echo "phase,start_unix_s,end_unix_s" >"$OUT_DIR/phases.csv"

run_id() { echo "o${1:0:1}$(date +%s%N | tail -c 8)"; }

# phase NAME ARGS...: one stampede-load run, its JSON and HTML in OUT_DIR; the exit status
# (1 for a failed SLO, 2 for a failed audit) is recorded, not fatal.
phase() {
  local name=$1
  shift
  echo "== $name: stampede-load $*"
  local started
  started=$(date +%s.%N)
  set +e
  ${LOAD_CPUS:+taskset -c "$LOAD_CPUS"} "$LOAD" --scenario throughput --url "$URL" --admin-token "$TOKEN" --run-id "$(run_id "$name")" \
    --json "$OUT_DIR/$name.json" --html "$OUT_DIR/$name.html" -q "$@" | tee "$OUT_DIR/$name.txt"
  echo "${PIPESTATUS[0]}" >"$OUT_DIR/$name.exit"
  set -e
  echo "$name,$started,$(date +%s.%N)" >>"$OUT_DIR/phases.csv"
}

json_get() { # file python-expression-on-d
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"
}

phase capacity --model closed -c "$CAP_CONNS" -d "$CAP_DURATION" --warmup 2s --no-audit
CAPACITY=$(json_get "$OUT_DIR/capacity.json" "round(d['totals']['created_per_s'])")
[ "$CAPACITY" -gt 0 ] || { echo "overload.sh: capacity is 0" >&2; exit 1; }
LIGHT=$(python3 -c "print(max(50, round($CAPACITY / 10)))")
OFFERED=$(python3 -c "print(round($CAPACITY * $FACTOR))")
echo "capacity: $CAPACITY orders/s; unloaded rate $LIGHT/s; offered under overload $OFFERED/s"

phase unloaded --model open --rate "$LIGHT" -c "$LIGHT_CONNS" -d 10s --warmup 1s --no-audit

# With the audit: under overload every 201 must still be journaled exactly once.
phase overload --model open --rate "$OFFERED" -c "$OVER_CONNS" -d "$DURATION" --warmup 0s \
  --audit-wait 30s
phase recovery --model open --rate "$LIGHT" -c "$LIGHT_CONNS" -d "$RECOVERY_DURATION" --warmup 0s --no-audit
kill "$SAMPLER_PID" 2>/dev/null || true
wait "$SAMPLER_PID" 2>/dev/null || true
SAMPLER_PID=

set +e
python3 - "$OUT_DIR" "$CAPACITY" "$OFFERED" "$OVER_CONNS" "$RSS_BOUND_MIB" <<'PY'
import csv, json, sys, os
out, capacity, offered, conns, rss_bound = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
load = lambda name: json.load(open(os.path.join(out, name + ".json")))
unloaded, over, after = load("unloaded"), load("overload"), load("recovery")
cls = lambda d, c: next(x for x in d["classes"] if x["class"] == c)
ms = lambda us: us / 1000.0
t = over["totals"]
created, shed = cls(over, "created_201"), cls(over, "shed_429_503")
other, transport = cls(over, "other_error"), cls(over, "transport_error")
answered = created["count"] + shed["count"] + other["count"]
rows = [r for r in csv.DictReader(open(os.path.join(out, "server.csv"))) if r["rss_kib"].isdigit()]
phases = {r["phase"]: (float(r["start_unix_s"]), float(r["end_unix_s"])) for r in csv.DictReader(open(os.path.join(out, "phases.csv")))}
def rss_in(name):
    start, end = phases[name]
    return [int(r["rss_kib"]) / 1024 for r in rows if start <= float(r["unix_s"]) <= end]
start_rss = int(rows[0]["rss_kib"]) / 1024 if rows else float("nan")
before_rss = (rss_in("unloaded") or [float("nan")])[-1]
over_rss = rss_in("overload") or [float("nan")]
peak_rss = max(int(r["rss_kib"]) for r in rows) / 1024 if rows else float("nan")
open_conns = [float(r["connections"]) for r in rows if r["connections"]]
unloaded_p99 = ms(cls(unloaded, "created_201")["latency"]["p99_us"])
after_created = cls(after, "created_201")
after_p99 = ms(after_created["latency"]["p99_us"])
lines = [
    ("capacity (closed)", f"{capacity:.0f} orders/s"),
    ("offered (open)", f"{offered:.0f}/s on {conns} connections for {over['run']['duration_s']:.0f} s"),
    ("sent / due but never sent", f"{t['sent']} / {t['unsent']}"),
    ("answered", f"{answered} ({answered / over['run']['duration_s']:.0f}/s)"),
    ("201 created", f"{created['count']} ({t['created_per_s']:.0f}/s = {100 * t['created_per_s'] / capacity:.0f}% of capacity)"),
    ("shed 429/503", f"{shed['count']} ({100 * shed['count'] / max(answered, 1):.1f}% of answers)"),
    ("other errors / transport errors", f"{other['count']} / {transport['count']}"),
    ("201 service time p50 / p99 (all answers)", f"{ms(over['service_time']['p50_us']):.1f} / {ms(over['service_time']['p99_us']):.1f} ms"),
    ("201 corrected p50 / p99", f"{ms(created['latency']['p50_us']):.1f} / {ms(created['latency']['p99_us']):.1f} ms"),
    ("429/503 corrected p99", f"{ms(shed['latency']['p99_us']):.1f} ms" if shed["count"] else "-"),
    ("unloaded 201 p50 / p99", f"{ms(cls(unloaded, 'created_201')['latency']['p50_us']):.2f} / {unloaded_p99:.2f} ms"),
    ("server RSS at start / before overload", f"{start_rss:.0f} / {before_rss:.0f} MiB (the order tables are sized by inventory.orders_expected)"),
    ("server RSS peak (overload / whole run)", f"{max(over_rss):.0f} / {peak_rss:.0f} MiB (bound {rss_bound:.0f} MiB); {1024 * 1024 * (max(over_rss) - before_rss) / max(created['count'], 1):.0f} bytes per order accepted under overload"),
    ("server connections peak", f"{max(open_conns):.0f}" if open_conns else "-"),
    ("recovery 201 p50 / p99", f"{ms(after_created['latency']['p50_us']):.2f} / {after_p99:.2f} ms ({after_created['count']} of {after['totals']['measured']} answered 201)"),
    ("overload audit", over.get("audit_skipped") or ("passed" if over["exit_code"] in (0, 1) else "FAILED")),
]
width = max(len(k) for k, _ in lines)
print("\noverload run summary")
for k, v in lines:
    print(f"  {k:<{width}}  {v}")
failures = []
if transport["count"]:
    failures.append(f"{transport['count']} transport errors under overload (hang or reset)")
if other["count"]:
    failures.append(f"{other['count']} answers other than 201/429/503 under overload")
if over["exit_code"] == 2:
    failures.append("the overload run's audit failed")
if not peak_rss <= rss_bound:
    failures.append(f"RSS peak {peak_rss:.0f} MiB over {rss_bound:.0f} MiB")
if after_created["count"] != after["totals"]["measured"]:
    failures.append("answers other than 201 after the overload")
if after_p99 > 3 * unloaded_p99 + 25:
    failures.append(f"recovery p99 {after_p99:.1f} ms vs unloaded {unloaded_p99:.1f} ms")
if shed["count"] == 0:
    print("  note: nothing was shed; the excess waited in the clients (see 'due but never sent' and the corrected latency)")
for f in failures:
    print("  FAILED:", f)
print(f"\nreports: {out}/{{capacity,unloaded,overload,recovery}}.{{json,html,txt}}, server samples: {out}/server.csv")
sys.exit(1 if failures else 0)
PY
status=$?
set -e
exit "$status"
