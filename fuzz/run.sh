#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# fuzz/run.sh [SECONDS]: build nfbind's libFuzzer targets (fuzz/fuzz_*.c, with
# AddressSanitizer and UndefinedBehaviorSanitizer) against the system
# libnetfilter_* and libmnl, replay fuzz/regressions/<target>/* through them,
# then run each target SECONDS seconds (default 60) over fuzz/corpus/<target>.
# Work files (binaries, the grown corpus, logs, crash inputs) go to
# build/fuzz/, which `make clean` removes.  Exits 1 when a replay or a target
# crashed, after a summary: per target its executions, coverage (libFuzzer's
# cov:) and crashes.
set -u -o pipefail

SECONDS_PER_TARGET="${1:-60}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
WORK="$ROOT/build/fuzz"
TARGETS=(nfqueue nflog conntrack)

declare -A PKGS=(
    [nfqueue]="libnetfilter_queue libnfnetlink libmnl"
    [nflog]="libnetfilter_log libnfnetlink libmnl"
    [conntrack]="libnetfilter_conntrack libnfnetlink libmnl"
)

die() { echo "fuzz: $*" >&2; exit 2; }

case "$SECONDS_PER_TARGET" in
    ''|*[!0-9]*) die "SECONDS must be a whole number of seconds, not '$SECONDS_PER_TARGET'" ;;
esac

# --- tools: clang with libFuzzer's runtime (Debian: clang, libclang-rt-14-dev) ---
have_tools() {
    command -v clang >/dev/null 2>&1 || return 1
    echo 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n){(void)d;(void)n;return 0;}' |
        clang -x c -fsanitize=fuzzer,address,undefined -o /dev/null - >/dev/null 2>&1
}
if ! have_tools; then
    [ "$(id -u)" = 0 ] || die "clang with libFuzzer is missing; as root: apt-get install clang libclang-rt-14-dev"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-cache show clang libclang-rt-14-dev >/dev/null 2>&1; then
        apt-get update -qq || die "apt-get update failed"
    fi
    echo "fuzz: installing clang libclang-rt-14-dev"
    apt-get install -y -qq --no-install-recommends clang libclang-rt-14-dev >/dev/null ||
        die "apt-get install clang libclang-rt-14-dev failed"
    have_tools || die "clang cannot build a libFuzzer target"
fi

# --- build ---------------------------------------------------------------------
mkdir -p "$WORK"
CFLAGS=(-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
        -g -O1 -Wall -Wno-unused-function -I"$ROOT/cdef" -I"$HERE")
for t in "${TARGETS[@]}"; do
    # shellcheck disable=SC2086
    flags="$(pkg-config --cflags --libs ${PKGS[$t]})" || die "pkg-config: ${PKGS[$t]} not found (make deps)"
    # shellcheck disable=SC2086
    clang "${CFLAGS[@]}" "$HERE/fuzz_$t.c" $flags -o "$WORK/fuzz_$t" ||
        die "building fuzz_$t failed"
done

export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
failed=0
declare -A EXECS COV CRASHES REPLAYED

# --- replay the committed regression inputs --------------------------------------
for t in "${TARGETS[@]}"; do
    REPLAYED[$t]=0
    dir="$HERE/regressions/$t"
    [ -d "$dir" ] || continue
    mapfile -t inputs < <(find "$dir" -type f ! -name '*.md' | sort)
    [ "${#inputs[@]}" -gt 0 ] || continue
    if "$WORK/fuzz_$t" -runs=1 "${inputs[@]}" >"$WORK/replay_$t.log" 2>&1; then
        REPLAYED[$t]=${#inputs[@]}
    else
        echo "fuzz: $t: a regression input crashes again, see $WORK/replay_$t.log" >&2
        failed=1
    fi
done

# --- fuzz --------------------------------------------------------------------------
for t in "${TARGETS[@]}"; do
    corpus="$WORK/corpus/$t"
    crashes="$WORK/crashes/$t"
    mkdir -p "$corpus" "$crashes"
    echo "fuzz: $t for ${SECONDS_PER_TARGET}s"
    # the seeds are read, new inputs are written only to the work corpus
    "$WORK/fuzz_$t" -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
        -max_len=16384 -print_final_stats=1 -artifact_prefix="$crashes/" \
        "$corpus" "$HERE/corpus/$t" >"$WORK/fuzz_$t.log" 2>&1
    rc=$?
    EXECS[$t]="$(sed -n 's/^stat::number_of_executed_units: *//p' "$WORK/fuzz_$t.log" | tail -1)"
    COV[$t]="$(grep -o 'cov: [0-9]*' "$WORK/fuzz_$t.log" | tail -1 | cut -d' ' -f2)"
    CRASHES[$t]="$(find "$crashes" -type f | wc -l)"
    if [ "$rc" != 0 ] || [ "${CRASHES[$t]}" != 0 ]; then
        echo "fuzz: $t crashed (exit $rc), see $WORK/fuzz_$t.log and $crashes/" >&2
        failed=1
    fi
done

echo
printf '%-10s %10s %12s %6s %8s\n' target replayed executions cov crashes
for t in "${TARGETS[@]}"; do
    printf '%-10s %10s %12s %6s %8s\n' "$t" "${REPLAYED[$t]}" "${EXECS[$t]:-?}" "${COV[$t]:-?}" "${CRASHES[$t]}"
done
if [ "$failed" != 0 ]; then
    echo "fuzz: FAILED (crash inputs under $WORK/crashes/)"
    exit 1
fi
echo "fuzz: no crash"
