#!/usr/bin/env bash
# Long crash-loop run of the real engine (tests/crash_loop.rs) in release mode.
#
#   scripts/crash_loop.sh [KILLS] [SEED]
#
# KILLS defaults to 500; SEED to one drawn from the clock (the run prints it; pass it back
# to replay the same decisions). Prints the run's figures (kills, pauses, orders, answers by
# class, audit results, seed, time); the whole output is kept in a log file whose path is
# printed at the end. Set CRASH_LOOP_VERBOSE=1 for one line per kill. Exit status: the
# test's (0 when every audit passed).
set -euo pipefail

kills="${1:-500}"
seed="${2:-}"
case "$kills" in
  '' | *[!0-9]*) echo "usage: $0 [KILLS] [SEED]  (KILLS must be a number, got '$kills')" >&2; exit 2 ;;
esac
if [ -n "$seed" ]; then
  case "$seed" in
    *[!0-9]*) echo "usage: $0 [KILLS] [SEED]  (SEED must be a number, got '$seed')" >&2; exit 2 ;;
  esac
  export CRASH_LOOP_SEED="$seed"
fi
export CRASH_LOOP_KILLS="$kills"

cd "$(dirname "$0")/.."
log="$(mktemp "${TMPDIR:-/tmp}/crash_loop.XXXXXX.log")"
echo "crash_loop.sh: $kills kills${seed:+, seed $seed}; building (release) ..."
cargo test --release --test crash_loop --no-run >>"$log" 2>&1 || {
  tail -n 40 "$log"
  echo "crash_loop.sh: build failed; log: $log" >&2
  exit 1
}

started=$(date +%s)
set +e
# The progress and summary lines start with "crash_loop:"; everything goes to the log.
cargo test --release --test crash_loop -- --nocapture --test-threads=1 \
  crash_loop_under_load_keeps_every_answer_true 2>&1 |
  tee -a "$log" | grep --line-buffered -E '^crash_loop: |panicked|^test result'
status=${PIPESTATUS[0]}
set -e

echo "crash_loop.sh: exit $status after $(($(date +%s) - started)) s; full log: $log"
if [ "$status" -ne 0 ]; then
  echo "crash_loop.sh: FAILED. The failure, from the log:" >&2
  grep -E -A 40 "crash_loop failed|panicked at" "$log" | grep -v '^\[' | head -n 80 >&2 || true
fi
exit "$status"
