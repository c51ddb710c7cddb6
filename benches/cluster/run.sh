#!/usr/bin/env bash
# Cluster mode on loopback, every scenario measured in the same run against one real Redis
# Cluster (3 masters + 3 replicas, appendfsync always, scripts/redis_cluster.sh):
#   single    one engine, cluster mode off (the baseline)
#   cluster1  one node in cluster mode: the same orders, sold from shares of a global stock
#             taken from Redis in blocks of LEASE units (the hot-path cost of cluster mode)
#   cluster2  two nodes, the load split over both like a load balancer would (half of the
#             buyers are owned by the other node, so about half of the orders are forwarded)
# then the grant rate of the Redis Cluster (examples/cluster_grants) on one SKU and on six.
# Each scenario runs ROUNDS times, interleaved; medians of req/s and latency (wrk) and of the
# nodes' CPU time per order. Both nodes, wrk and Redis share this machine's cores: cluster2
# shows the cost of the hops, not the scale-out of separate machines.
#
# Usage: benches/cluster/run.sh   (env: DURATION=10s CONNS=64 ROUNDS=3 LEASE=1000 FSYNC=always
#                                  SCENARIOS="single cluster1 cluster2")
# Needs: wrk, redis-server, redis-cli.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-3}
LEASE=${LEASE:-1000}
FSYNC=${FSYNC:-always}
SCENARIOS=${SCENARIOS:-single cluster1 cluster2}
REDIS_PORT=${REDIS_PORT:-17300}
PORTS=(18191 18192)
for tool in wrk redis-server redis-cli; do
  command -v $tool >/dev/null || { echo "$tool not found (apt-get install wrk redis-server redis-tools)" >&2; exit 1; }
done
cargo build --release --quiet --bin stampede --example cluster_grants
work=$(mktemp -d)
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  scripts/redis_cluster.sh stop "$work/redis" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
scripts/redis_cluster.sh start "$work/redis" "$REDIS_PORT" >/dev/null
seeds=$(seq -s, -f "127.0.0.1:%g" "$REDIS_PORT" $((REDIS_PORT + 2)))
masters() { for p in $(seq "$REDIS_PORT" $((REDIS_PORT + 5))); do
  redis-cli -p "$p" role 2>/dev/null | head -1 | grep -q master && echo "$p"; done; }

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
clk_tck=$(getconf CLK_TCK)

start_node() { # index mode(single|cluster) members -> appends to PIDS
  local i=$1 mode=$2 members=$3 port=${PORTS[$1]}
  rm -rf "$work/data$i"
  local enabled=false; [ "$mode" = cluster ] && enabled=true
  STAMPEDE_JOURNAL_FSYNC=$FSYNC STAMPEDE_LOG=warn STAMPEDE_CLUSTER_ENABLED=$enabled \
    STAMPEDE_CLUSTER_NODE_ID="n$i" STAMPEDE_CLUSTER_NODES="$members" \
    STAMPEDE_CLUSTER_REDIS="$seeds" STAMPEDE_CLUSTER_LEASE_UNITS="$LEASE" \
    ./target/release/stampede serve --config benches/http/bench.toml \
    --listen "127.0.0.1:$port" --data-dir "$work/data$i" >/dev/null 2>"$work/node$i.err" &
  PIDS+=($!)
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "node $i did not become ready" >&2; cat "$work/node$i.err" >&2; exit 1
}

run_one() { # scenario round
  local scenario=$1 round=$2
  for p in $(masters); do redis-cli -p "$p" flushall >/dev/null; done
  PIDS=()
  case $scenario in
    single) start_node 0 single "n0=127.0.0.1:${PORTS[0]}"; targets=(0) ;;
    cluster1) start_node 0 cluster "n0=127.0.0.1:${PORTS[0]}"; targets=(0) ;;
    cluster2)
      local members="n0=127.0.0.1:${PORTS[0]},n1=127.0.0.1:${PORTS[1]}"
      start_node 0 cluster "$members"; start_node 1 cluster "$members"; targets=(0 1) ;;
  esac
  # Cluster mode: every node learns the catalogue (and takes its first block) before the run.
  sleep 1
  local before=0 after=0 pid
  for pid in "${PIDS[@]}"; do before=$((before + $(ticks "$pid"))); done
  local conns=$((CONNS / ${#targets[@]})) t loaders=()
  for t in "${targets[@]}"; do
    SKU=BENCH RUN_ID="r$round$scenario$t" wrk -t1 -c"$conns" -d"$DURATION" --latency \
      -s benches/http/orders.lua "http://127.0.0.1:${PORTS[$t]}" >"$work/$scenario.$round.$t.txt" &
    loaders+=($!)
  done
  wait "${loaders[@]}"
  for pid in "${PIDS[@]}"; do after=$((after + $(ticks "$pid"))); done
  for pid in "${PIDS[@]}"; do kill "$pid"; wait "$pid" 2>/dev/null || true; done
  python3 - "$scenario" "$round" "$((after - before))" "$clk_tck" "$work/$scenario.$round".*.txt \
    >>"$work/results" <<'PY'
import sys
scenario, rnd, ticks, hz, files = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:]
def ms(text):
    for unit, f in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * f
    return float(text)
rps = requests = 0.0; p50 = p99 = 0.0; bad = 0
for name in files:
    for line in open(name):
        parts = line.split()
        if "requests in" in line: requests += float(parts[0])
        elif line.startswith("Requests/sec"): rps += float(parts[1])
        elif parts and parts[0] == "50%": p50 = max(p50, ms(parts[1]))
        elif parts and parts[0] == "99%": p99 = max(p99, ms(parts[1]))
        elif "Non-2xx" in line: bad += int(parts[-1])
cpu = ticks * 1e6 / hz / max(requests, 1)
print(scenario, rnd, rps, p50, p99, cpu, int(requests), bad)
PY
  tail -1 "$work/results" | awk '{printf "%-9s round %s: %10.0f req/s  p50 %6.2f ms  p99 %7.2f ms  cpu/order %6.1f us  (%d orders, %d non-2xx)\n", $1, $2, $3, $4, $5, $6, $7, $8}'
}

echo "# $(date -u +%FT%TZ) $(nproc) cores, wrk -c$CONNS -d$DURATION, lease $LEASE, fsync $FSYNC, $ROUNDS rounds"
for round in $(seq 1 "$ROUNDS"); do
  for scenario in $SCENARIOS; do run_one "$scenario" "$round"; done
done
echo
echo "medians:"
python3 - "$work/results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    s, _, rps, p50, p99, cpu, n, bad = line.split()
    rows.setdefault(s, []).append((float(rps), float(p50), float(p99), float(cpu)))
med = {s: [statistics.median(c) for c in zip(*v)] for s, v in rows.items()}
ref = "single" if "single" in med else next(iter(med))
print(f"{'scenario':10}{'req/s':>10}{'x '+ref:>10}{'p50 ms':>9}{'p99 ms':>9}{'cpu us/order':>14}{'x cpu':>8}")
for s, (rps, p50, p99, cpu) in med.items():
    print(f"{s:10}{rps:10.0f}{rps/med[ref][0]:10.2f}{p50:9.2f}{p99:9.2f}{cpu:14.1f}{cpu/med[ref][3]:8.2f}")
PY
echo
for p in $(masters); do redis-cli -p "$p" flushall >/dev/null; done
for skus in 1 6; do
  ./target/release/examples/cluster_grants --redis "$seeds" --skus $skus --seconds 5
done
