#!/usr/bin/env bash
# One run, one machine, every system measured the same way and interleaved round by round:
#
#   wrk-bare        wrk (Lua script benches/http/orders.lua) against examples/bare_server
#   load-bare       stampede-load, same connections and threads, against the same server:
#                   the generator must reach >= 0.9x wrk's request rate
#   engine-none     the engine, journal fsync = "none"
#   engine-1s       the engine, fsync = "interval" every 1000 ms (Redis everysec's durability)
#   engine-always   the engine, fsync = "always" (group commit)
#   redis-everysec  Redis + the flash-sale Lua script, AOF appendfsync everysec
#   redis-always    Redis + the Lua script, AOF appendfsync always
#   open-always     the engine (fsync always) under the open model at a fixed rate: latency
#                   from the intended send time (corrected, as wrk2) next to the service time
#                   of the same requests (uncorrected)
#   open-bare       stampede-load, open model, same rate, against the bare server
#   oha-always      oha (crates.io, installed by this script into target/oha) at the same rate
#   oha-bare        with --latency-correction (latency from the intended send time), against
#                   the same engine and bare server: an independent check of the open-model
#                   tail; the summary gives stampede-load / oha for p99 and p99.9
#
# The open-model rows share one rate: OPEN_RATE, else half of engine-always's closed rate in
# the same round when it ran, else 20 000/s. oha has no warm-up: it is given the warm-up plus
# the measured duration and its whole run counts.
#
# Every stampede-load run uses the `throughput` scenario (each request a new accepted order on
# one SKU) in the closed model; engine and Redis runs end with the audit. Redis is driven by
# stampede-load itself (`--target redis`: EVALSHA over its own RESP connection), so all the
# systems see the same client. Results: medians over ROUNDS, then the ratios.
#
# Usage: loadtest/bench.sh
#   env: DURATION=10s WARMUP=2s CONNS=64 THREADS=1 ROUNDS=3
#        OPEN_RATE=<req/s; default half of engine-always's closed rate in the same round>
#        OPEN_CONNS=256 OPEN_THREADS=<cores> (connections and runtime threads of the
#        open-model rows, the same for both tools)
#        ONLY="load-bare wrk-bare" (run a subset)  AUDIT=1  BENCH_DIR=target/stampede-load-bench
#        PORT=18190 REDIS_PORT=18191  SKIP_BUILD=1 (use the release binaries already built)
# Needs: wrk, redis-server (both installed with apt-get when missing), curl, python3, and
# cargo for oha (OHA=<path> to use another build).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-1}
ROUNDS=${ROUNDS:-3}
OPEN_RATE=${OPEN_RATE:-}
OPEN_CONNS=${OPEN_CONNS:-256}
OPEN_THREADS=${OPEN_THREADS:-$(nproc)}
OHA_VERSION=1.16.0
OHA=${OHA:-target/oha/bin/oha}
AUDIT=${AUDIT:-1}
PORT=${PORT:-18190}
REDIS_PORT=${REDIS_PORT:-18191}
BENCH_DIR=${BENCH_DIR:-target/stampede-load-bench}
ALL="wrk-bare load-bare engine-none engine-1s engine-always redis-everysec redis-always open-always oha-always open-bare oha-bare"
ONLY=${ONLY:-$ALL}
TOKEN=bench-admin-token-0123456789abcdef

install_if_missing() { # command package
  command -v "$1" >/dev/null && return 0
  echo "# installing $2 (apt-get)" >&2
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y "$2" >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y "$2" >/dev/null; }
  else
    sudo apt-get install -y "$2" >/dev/null
  fi
}
install_if_missing wrk wrk
install_if_missing redis-server redis-server
install_if_missing curl curl

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release --quiet --bin stampede --example bare_server
  cargo build --release --quiet -p stampede-load
fi
LOAD=./target/release/stampede-load
case " $ONLY " in
  *" oha-"*)
    if [ ! -x "$OHA" ]; then
      echo "# installing oha $OHA_VERSION (cargo install, crates.io) into target/oha" >&2
      cargo install oha --locked --version "$OHA_VERSION" --root target/oha --quiet
    fi ;;
esac

# On the project's disk (not a tmpfs), so fsync costs what it costs.
mkdir -p "$BENCH_DIR"
work=$(mktemp -d -p "$(cd "$BENCH_DIR" && pwd)")
SERVER_PID=
stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
  fi
}
trap 'stop_server; [ "${KEEP:-0}" = 1 ] || rm -rf "$work"' EXIT

cat >"$work/engine.toml" <<'TOML'
# Sized for a bench run: no rehash of the dedup index mid-run.
[inventory]
orders_expected = 8000000
TOML

wait_until() { # command...
  for _ in $(seq 1 150); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "server did not become ready: $*" >&2; exit 1
}

start_engine() { # fsync policy [config file]
  rm -rf "$work/data"
  STAMPEDE_JOURNAL_FSYNC=$1 STAMPEDE_JOURNAL_FSYNC_INTERVAL_MS=1000 STAMPEDE_ADMIN_TOKEN=$TOKEN \
    STAMPEDE_LOG=warn ./target/release/stampede serve --config "${2:-$work/engine.toml}" \
    --listen "127.0.0.1:$PORT" --data-dir "$work/data" >/dev/null 2>"$work/engine.err" &
  SERVER_PID=$!
  wait_until curl -sf "http://127.0.0.1:$PORT/readyz"
}

# The open-model rows size the engine's order tables for their own run rather than for 8
# million orders: the engine touches those tables' pages for the first time under load, and
# at 8 million that stalls it for about 5 s after the start (page clearing and huge-page
# compaction in the order index and the purchase counts), longer than any warm-up; at the
# default 1 million it is under a second, inside the warm-up.
open_engine_config() { # rate
  python3 - "$work/open-engine.toml" "$1" "$(seconds "$DURATION")" "$(seconds "$WARMUP")" <<'PY'
import sys
path, rate, duration, warmup = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
with open(path, "w") as out:
    out.write(f"[inventory]\norders_expected = {max(1_000_000, int(rate * (duration + warmup) * 1.25))}\n")
PY
  echo "$work/open-engine.toml"
}

start_bare() {
  ./target/release/examples/bare_server "127.0.0.1:$PORT" >/dev/null &
  SERVER_PID=$!
  wait_until bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT"
}

start_redis() { # appendfsync policy
  rm -rf "$work/redis"; mkdir -p "$work/redis"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly yes \
    --appendfsync "$1" --dir "$work/redis" --daemonize no --logfile "$work/redis.log" &
  SERVER_PID=$!
  wait_until redis-cli -p "$REDIS_PORT" ping
}

audit_flag() { [ "$AUDIT" = 1 ] || echo --no-audit; }

load() { # name round extra-args...: a closed-model stampede-load run, JSON kept
  local name=$1 round=$2; shift 2
  local code=0
  "$LOAD" -s throughput --model closed -c "$CONNS" --threads "$THREADS" -d "$DURATION" \
    --warmup "$WARMUP" -q --json "$work/$name.$round.json" $(audit_flag) "$@" \
    >"$work/$name.$round.txt" 2>&1 || code=$?
  echo "$name $round stampede-load $code" >>"$work/runs"
  summarize_one "$name" "$round"
}

summarize_one() { # name round: one line for the log
  python3 - "$work/$1.$2.json" "$1" "$2" <<'PY'
import json, sys
path, name, rnd = sys.argv[1:]
try:
    s = json.load(open(path))
except Exception as e:
    print(f"{name:15} round {rnd}: no summary ({e})"); sys.exit(0)
a = s.get("answered") or {}
audit = s.get("audit")
verdict = "skipped" if audit is None else ("passed" if audit["passed"] else "FAILED")
t = s['totals']
goodput = t.get('goodput_per_s', t['throughput_per_s'])
print(f"{name:15} round {rnd}: {t['throughput_per_s']:10.0f} req/s  goodput {goodput:10.0f} req/s  p50 {a.get('p50_us',0)/1e3:7.3f} ms  p99 {a.get('p99_us',0)/1e3:7.3f} ms  errors {t['error_rate']:.4f}  audit {verdict}")
if t['error_rate'] > 0.001:
    print(f"WARNING: {name} round {rnd}: error rate {t['error_rate']*100:.3f}% is above 0.1%: "
          f"its req/s counts errors; compare goodput ({goodput:.0f} req/s)", file=sys.stderr)
PY
}

seconds() { # 10s | 1500ms -> seconds (float)
  case "$1" in *ms) python3 -c "print(${1%ms}/1000)" ;; *s) echo "${1%s}" ;; *) echo "$1" ;; esac
}

open_rate() { # round: the open-model rows' rate
  if [ -n "$OPEN_RATE" ]; then echo "$OPEN_RATE"; return; fi
  python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print(max(1000, int(s['totals']['throughput_per_s'] / 2 / 1000) * 1000))" \
    "$work/engine-always.$1.json" 2>/dev/null || echo 20000
}

load_open() { # name round rate extra-args...: an open-model stampede-load run
  local name=$1 round=$2 rate=$3; shift 3
  local code=0
  "$LOAD" -s throughput --model open --rate "$rate" -c "$OPEN_CONNS" --threads "$OPEN_THREADS" \
    -d "$DURATION" --warmup "$WARMUP" -q --json "$work/$name.$round.json" $(audit_flag) "$@" \
    >"$work/$name.$round.txt" 2>&1 || code=$?
  echo "$name $round stampede-load $code" >>"$work/runs"
  [ "$code" = 0 ] || tail -5 "$work/$name.$round.txt" >&2
  summarize_one "$name" "$round"
}

oha_run() { # name round rate sku: oha at a fixed rate, latency from the intended send time
  local name=$1 round=$2 rate=$3 sku=$4
  local total
  total=$(python3 -c "print($(seconds "$DURATION") + $(seconds "$WARMUP"))")
  # One new order per line. oha -Z picks a random line for each request, so some orders go
  # twice (an idempotent replay, 200): with 4 lines per request about 11%; the row shows the
  # status mix.
  python3 - "$work/bodies" "$sku" "o$round-$name" "$rate" "$total" <<'PY'
import sys
path, sku, prefix, rate, total = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
with open(path, "w") as out:
    for i in range(int(rate * total * 4) + 1000):
        out.write(f'{{"order_id":"{prefix}-{i}","user_id":"u{prefix}-{i}","sku":"{sku}","qty":1,"payment":"prepaid"}}\n')
PY
  "$OHA" -q "$rate" --latency-correction -c "$OPEN_CONNS" -z "${total}s" --no-tui \
    --worker-threads "$OPEN_THREADS" -m POST -T application/json -Z "$work/bodies" \
    --output-format json "http://127.0.0.1:$PORT/v1/orders" >"$work/$name.$round.oha"
  echo "$name $round oha 0" >>"$work/runs"
  python3 - "$work/$name.$round.oha" "$name" "$round" "$rate" <<'PY'
import json, sys
path, name, rnd, rate = sys.argv[1:]
s = json.load(open(path)); p = s["latencyPercentiles"]
codes = ", ".join(f"{k}: {v}" for k, v in sorted(s["statusCodeDistribution"].items()))
print(f"{name:15} round {rnd}: {s['summary']['requestsPerSec']:10.0f} req/s at {float(rate):.0f}/s  p50 {p['p50']*1e3:7.3f} ms  p99 {p['p99']*1e3:7.3f} ms  p99.9 {p['p99.9']*1e3:7.3f} ms  ({codes}) (oha)")
PY
}

run_one() { # scenario round
  local name=$1 round=$2
  case "$name" in
    wrk-bare)
      start_bare
      SKU=BENCH RUN_ID="r$round" wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency \
        -s benches/http/orders.lua "http://127.0.0.1:$PORT" >"$work/$name.$round.wrk"
      stop_server
      echo "$name $round wrk 0" >>"$work/runs"
      awk -v n="$name" -v r="$round" '/Requests\/sec/ {rps=$2} $1=="50%" {p50=$2} $1=="99%" {p99=$2}
        END {printf "%-15s round %s: %10.0f req/s  p50 %s  p99 %s (wrk)\n", n, r, rps, p50, p99}' \
        "$work/$name.$round.wrk" ;;
    load-bare)
      start_bare
      load "$name" "$round" --target bare --url "http://127.0.0.1:$PORT" --warmup 0s
      stop_server ;;
    engine-none|engine-1s|engine-always)
      local policy=${name#engine-}; [ "$policy" = 1s ] && policy=interval
      start_engine "$policy"
      load "$name" "$round" --url "http://127.0.0.1:$PORT" --admin-token "$TOKEN"
      stop_server ;;
    redis-everysec|redis-always)
      start_redis "${name#redis-}"
      load "$name" "$round" --target redis --redis "127.0.0.1:$REDIS_PORT"
      stop_server ;;
    open-always)
      local rate; rate=$(open_rate "$round")
      start_engine always "$(open_engine_config "$rate")"
      load_open "$name" "$round" "$rate" --url "http://127.0.0.1:$PORT" --admin-token "$TOKEN"
      stop_server ;;
    open-bare)
      start_bare
      load_open "$name" "$round" "$(open_rate "$round")" --target bare --url "http://127.0.0.1:$PORT"
      stop_server ;;
    oha-bare)
      start_bare
      oha_run "$name" "$round" "$(open_rate "$round")" BENCH
      stop_server ;;
    oha-always)
      local rate; rate=$(open_rate "$round")
      start_engine always "$(open_engine_config "$rate")"
      curl -sf -X PUT -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
        -d '{"stock": 100000000}' "http://127.0.0.1:$PORT/v1/skus/OHA-$round" >/dev/null
      oha_run "$name" "$round" "$rate" "OHA-$round"
      stop_server ;;
    *) echo "unknown scenario $name (known: $ALL)" >&2; exit 3 ;;
  esac
}

echo "# $(date -u +%FT%TZ) $(nproc) cores; closed model, $CONNS connections, $THREADS generator thread(s), $DURATION measured after $WARMUP warm-up, $ROUNDS round(s)"
echo "# stampede-load drives Redis itself (--target redis: EVALSHA over RESP), not redis-benchmark"
for round in $(seq 1 "$ROUNDS"); do
  for name in $ALL; do
    case " $ONLY " in *" $name "*) run_one "$name" "$round" ;; esac
  done
done

echo
python3 - "$work" <<'PY'
import glob, json, os, re, statistics, sys
work = sys.argv[1]

def ms(text):
    for unit, f in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * f
    return float(text)

rows = {}   # name -> list of (rps, p50 ms, p99 ms, audit)
extra = {}  # open-always: list of (rate, corr p50, corr p99, svc p50, svc p99)
opened = {}  # open-model rows, both tools: name -> list of (rate, p50, p99, p99.9 ms, lag p99)
for line in open(os.path.join(work, "runs")):
    name, rnd, tool, code = line.split()
    if tool == "oha":
        o = json.load(open(os.path.join(work, f"{name}.{rnd}.oha")))
        p = o["latencyPercentiles"]
        opened.setdefault(name, []).append((o["summary"]["requestsPerSec"], p["p50"] * 1e3,
                                            p["p99"] * 1e3, p["p99.9"] * 1e3, float("nan"),
                                            p["p99"] * 1e3, p["p99.9"] * 1e3))
        continue
    if tool == "wrk":
        text = open(os.path.join(work, f"{name}.{rnd}.wrk")).read()
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
        p50 = ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1))
        p99 = ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))
        rows.setdefault(name, []).append((rps, p50, p99, "-"))
        continue
    try:
        s = json.load(open(os.path.join(work, f"{name}.{rnd}.json")))
    except Exception:
        rows.setdefault(name, []).append((float("nan"),) * 3 + (f"exit {code}",))
        continue
    a = s.get("answered") or {"p50_us": 0, "p99_us": 0}
    audit = s.get("audit")
    verdict = "-" if audit is None else ("pass" if audit["passed"] else "FAIL")
    rows.setdefault(name, []).append((s["totals"]["throughput_per_s"], a["p50_us"] / 1e3, a["p99_us"] / 1e3, verdict))
    if name.startswith("open-"):
        lag = s.get("own_send_lag") or {"p99_us": float("nan")}
        wo = s.get("without_own_lag") or {"p99_us": float("nan"), "p999_us": float("nan")}
        opened.setdefault(name, []).append((s["run"]["rate_per_s"], a["p50_us"] / 1e3, a["p99_us"] / 1e3,
                                            a.get("p999_us", 0) / 1e3, lag["p99_us"] / 1e3,
                                            wo["p99_us"] / 1e3, wo["p999_us"] / 1e3))
    if name == "open-always":
        svc = s.get("service_time") or {"p50_us": 0, "p99_us": 0}
        extra.setdefault(name, []).append((s["run"]["rate_per_s"], a["p50_us"] / 1e3, a["p99_us"] / 1e3,
                                           svc["p50_us"] / 1e3, svc["p99_us"] / 1e3, s["totals"]["error_rate"]))

def med(name, i):
    values = [r[i] for r in rows.get(name, [])]
    return statistics.median(values) if values else float("nan")

order = ["wrk-bare", "load-bare", "engine-none", "engine-1s", "engine-always", "redis-everysec", "redis-always"]
print("medians:")
print(f"{'system':16}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'x bare':>8}  audit")
bare = med("load-bare", 0)
for name in order:
    if name not in rows:
        continue
    audits = ",".join(sorted({r[3] for r in rows[name]}))
    print(f"{name:16}{med(name,0):10.0f}{med(name,1):9.3f}{med(name,2):9.3f}{med(name,0)/bare:8.2f}  {audits}")

def ratio(label, a, b):
    if a in rows and b in rows:
        print(f"  {label:44} {med(a,0)/med(b,0):6.2f}   ({a} / {b})")

print("\nratios of req/s:")
ratio("generator / wrk, same server (>= 0.9 wanted)", "load-bare", "wrk-bare")
ratio("engine fsync none / bare", "engine-none", "load-bare")
ratio("engine fsync always / bare", "engine-always", "load-bare")
ratio("engine always / none", "engine-always", "engine-none")
ratio("engine 1s / redis everysec (same durability)", "engine-1s", "redis-everysec")
ratio("engine always / redis always (same durability)", "engine-always", "redis-always")
ratio("redis always / everysec", "redis-always", "redis-everysec")

if "open-always" in extra:
    e = extra["open-always"]
    m = lambda i: statistics.median(x[i] for x in e)
    print(f"\nopen model at {m(0):.0f} req/s against engine fsync always (medians):")
    print(f"  corrected, from intended send (wrk2-style): p50 {m(1):.3f} ms  p99 {m(2):.3f} ms")
    print(f"  uncorrected, from actual send:              p50 {m(3):.3f} ms  p99 {m(4):.3f} ms")
    print(f"  error rate (incl. requests never sent):     {m(5):.5f}")

if opened:
    om = lambda name, i: statistics.median(x[i] for x in opened[name]) if name in opened else float("nan")
    print("\nopen model, latency from the intended send time (medians of rounds; rate = stampede-load's target, req/s = oha's achieved):")
    print("  own lag: stampede-load's own send lag p99; 'as oha': its corrected latency without its own lag,")
    print("  as oha counts it (oha stamps a request's start when its rate limiter wakes, so its own lateness is not in its figures)")
    print(f"{'row':14}{'rate':>9}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}{'own lag':>9}{'as oha p99':>11}{'p99.9':>9}")
    for name in ["open-bare", "oha-bare", "open-always", "oha-always"]:
        if name in opened:
            print(f"{name:14}{om(name,0):9.0f}{om(name,1):9.3f}{om(name,2):9.3f}{om(name,3):10.3f}{om(name,4):9.3f}{om(name,5):11.3f}{om(name,6):9.3f}")
    def oratio(label, a, b, i=2):
        if a in opened and b in opened:
            print(f"  {label:44} p99 {om(a,i)/om(b,2):6.2f}   p99.9 {om(a,i+1)/om(b,3):6.2f}   ({a} / {b})")
    print("ratios:")
    oratio("stampede-load / oha, bare server", "open-bare", "oha-bare")
    oratio("stampede-load / oha, engine always", "open-always", "oha-always")
    oratio("stampede-load as oha counts / oha, bare", "open-bare", "oha-bare", 5)
    oratio("stampede-load as oha counts / oha, engine", "open-always", "oha-always", 5)
    oratio("engine always / bare, stampede-load", "open-always", "open-bare")
    oratio("engine always / bare, oha", "oha-always", "oha-bare")
PY
