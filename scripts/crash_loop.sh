#!/usr/bin/env bash
# Long crash-loop run of the real engine (tests/crash_loop/) in release mode.
#
#   scripts/crash_loop.sh [KILLS] [SEED]
#
# Runs both crash loops, one after the other: the default one (KILLS kills, some starts
# killed again during recovery, exchanges in the load) and the one with checkpoints and
# retention (KILLS / 3 kills with longer phases; CRASH_LOOP_RETENTION_KILLS sets its own).
# KILLS defaults to 500; SEED to one drawn from the clock (the run prints it; pass it back
# to replay the same decisions; both runs use it). Prints each run's figures (kills, kills
# during a start, pauses, orders, exchanges, checkpoints and segments deleted, answers by
# class, audit results, seed, time); the whole output is kept in a log file whose path is
# printed at the end. Set CRASH_LOOP_VERBOSE=1 for one line per kill. Exit status: the
# tests' (0 when every audit of both runs passed). Power cuts: scripts/power_cut.sh.
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
echo "crash_loop.sh: $kills kills (with retention: ${CRASH_LOOP_RETENTION_KILLS:-$((kills / 3 > 0 ? kills / 3 : 1))})${seed:+, seed $seed}; building (release) ..."
cargo test --release --test crash_loop --no-run >>"$log" 2>&1 || {
  tail -n 40 "$log"
  echo "crash_loop.sh: build failed; log: $log" >&2
  exit 1
}

started=$(date +%s)
set +e
# The progress and summary lines start with "crash_loop:"; everything goes to the log. The
# filter picks both runs (crash_loop_under_load_..., crash_loop_with_checkpoints_...).
cargo test --release --test crash_loop -- --nocapture --test-threads=1 crash_loop_ 2>&1 |
  tee -a "$log" | grep --line-buffered -E '^crash_loop: |panicked|^test result'
status=${PIPESTATUS[0]}
set -e

echo "crash_loop.sh: exit $status after $(($(date +%s) - started)) s; full log: $log"
if [ "$status" -ne 0 ]; then
  echo "crash_loop.sh: FAILED. The failure, from the log:" >&2
  grep -E -A 40 "crash_loop failed|panicked at" "$log" | grep -v '^\[' | head -n 80 >&2 || true
fi
exit "$status"
