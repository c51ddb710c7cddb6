#!/usr/bin/env bash
# Long power-cut run of the real engine (tests/crash_loop/, power_cuts) in release mode.
#
#   scripts/power_cut.sh [CUTS] [POLICY] [SEED]
#
# Runs the power-cut loop with checkpoints and retention on, for each fsync policy named by
# POLICY (always, interval, none, or all: the default), one after the other: after every
# SIGKILL (of a running engine, or of one killed during its start) every file of the data
# directory is cut back to what a power cut could leave, and the audit after the restart
# checks every answer (with interval and none, a record the cut took must have been
# acknowledged within the policy's window, and is then treated as uncertain). Set
# POWER_CUT_RETENTION=0 for the runs without checkpoints and retention. CUTS defaults to 200
# per policy; SEED to one drawn from the clock (printed; pass it back to replay the same
# decisions). Prints each run's figures (cuts, what they undid, records and acknowledged
# operations they took, the largest age of a taken acknowledgement, torn tails,
# checkpoints, starts from one, segments deleted, violations, time); the whole output is
# kept in a log file whose path is printed at the end. Exit status: 0 when every audit of
# every run passed.
set -euo pipefail

cuts="${1:-200}"
policy="${2:-all}"
seed="${3:-}"
usage="usage: $0 [CUTS] [always|interval|none|all] [SEED]"
case "$cuts" in
  '' | *[!0-9]*) echo "$usage  (CUTS must be a number, got '$cuts')" >&2; exit 2 ;;
esac
case "$policy" in
  all) policies="always interval none" ;;
  always | interval | none) policies="$policy" ;;
  *) echo "$usage  (POLICY must be always, interval, none or all, got '$policy')" >&2; exit 2 ;;
esac
if [ -n "$seed" ]; then
  case "$seed" in
    *[!0-9]*) echo "$usage  (SEED must be a number, got '$seed')" >&2; exit 2 ;;
  esac
  export CRASH_LOOP_SEED="$seed"
fi
export POWER_CUT_KILLS="$cuts"

cd "$(dirname "$0")/.."
log="$(mktemp "${TMPDIR:-/tmp}/power_cut.XXXXXX.log")"
echo "power_cut.sh: $cuts cuts per policy ($policies)${seed:+, seed $seed}; building (release) ..."
cargo test --release --test crash_loop --no-run >>"$log" 2>&1 || {
  tail -n 40 "$log"
  echo "power_cut.sh: build failed; log: $log" >&2
  exit 1
}

status=0
for each in $policies; do
  case "$each" in
    always) name=power_cuts_with_fsync_always ;;
    interval) name=power_cuts_with_fsync_interval ;;
    none) name=power_cuts_with_fsync_none ;;
  esac
  case "${POWER_CUT_RETENTION:-1}" in
    0) test_name="$(cargo test --release --test crash_loop -- --list 2>/dev/null |
         grep -E "^$name" | grep -v retention | cut -d: -f1)" ;;
    *) test_name="$(cargo test --release --test crash_loop -- --list 2>/dev/null |
         grep -E "^${name}_and_retention" | cut -d: -f1)" ;;
  esac
  started=$(date +%s)
  echo "power_cut.sh: fsync $each: $test_name"
  set +e
  # The summary lines start with "crash_loop:"; everything goes to the log.
  cargo test --release --test crash_loop -- --nocapture --exact "$test_name" 2>&1 |
    tee -a "$log" | grep --line-buffered -E '^crash_loop: (progress|power cuts|fsync|kills|retention|violations)|panicked|^test result'
  run_status=${PIPESTATUS[0]}
  set -e
  echo "power_cut.sh: fsync $each: exit $run_status after $(($(date +%s) - started)) s"
  if [ "$run_status" -ne 0 ]; then
    status=$run_status
    echo "power_cut.sh: FAILED. The failure, from the log:" >&2
    grep -E -A 40 "crash_loop failed|panicked at" "$log" | grep -v '^\[' | head -n 80 >&2 || true
  fi
done
echo "power_cut.sh: exit $status; full log: $log"
exit "$status"
