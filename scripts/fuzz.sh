#!/usr/bin/env bash
# Longer fuzzing runs of Stampede's decoders and recovery scan (see fuzz/README.md).
#
#   scripts/fuzz.sh [SECONDS]            each target for SECONDS (default 60)
#   FUZZ_TARGETS="recovery" scripts/fuzz.sh 600
#
# With a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`): every target under
# libFuzzer (AddressSanitizer, debug assertions, overflow checks) for SECONDS, its corpus in
# fuzz/corpus/<target> (kept between runs, not committed) seeded from fuzz/seeds/<target>.
# A crash leaves its input in fuzz/artifacts/<target>/: keep it as a regression in
# fuzz/regressions/<target>/ once fixed (tests/fuzz_short.rs replays that folder).
#
# Without them (or with FUZZ_DRIVER=proptest): the stable proptest driver
# (tests/fuzz_short.rs) in release mode with PROPTEST_CASES raised in proportion to SECONDS.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
targets="${FUZZ_TARGETS:-order_body action_body journal_record recovery}"

if [ "${FUZZ_DRIVER:-}" != proptest ] && cargo +nightly --version >/dev/null 2>&1 &&
    cargo fuzz --version >/dev/null 2>&1; then
    for target in $targets; do
        mkdir -p "fuzz/corpus/$target"
        echo "== cargo fuzz run $target (${seconds}s)"
        (
            cd fuzz
            cargo +nightly fuzz run --debug-assertions "$target" \
                "corpus/$target" "seeds/$target" \
                -- -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1
        )
    done
else
    # 9 properties run side by side; in release on 2 cores ~4,000 cases of each per second.
    cases=$(( seconds * 4000 ))
    echo "== proptest driver (no nightly cargo-fuzz, or FUZZ_DRIVER=proptest): PROPTEST_CASES=$cases"
    PROPTEST_CASES="$cases" cargo test --release --test fuzz_short
fi
