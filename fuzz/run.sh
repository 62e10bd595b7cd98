#!/usr/bin/env bash
# Runs each fuzz target for a short time: QUERN_FUZZ_SECONDS each (default 20).
#
#   fuzz/run.sh [target...]        # default: decode open_damaged ops_model control_request
#
# Needs cargo-fuzz: installed with `cargo install cargo-fuzz --locked` when missing; when that
# fails, says so and exits 0 (the corpora are still replayed on stable by
# `cargo test --test fuzz_corpus`).
#
# Works on stable: the targets are built without a sanitizer (`--sanitizer none`), which needs
# no -Z flag; the code under test is safe Rust, so a sanitizer finds little more there.
# QUERN_FUZZ_SANITIZER=address builds with AddressSanitizer instead: cargo-fuzz then passes
# -Zsanitizer, which stable accepts only with RUSTC_BOOTSTRAP=1 (set for that build alone).
# QUERN_CARGO_LOCK=<file> runs the cargo commands under `flock <file>`, for machines where
# several builds share the cores; the fuzzing itself runs outside the lock.
#
# New inputs go to fuzz/target/corpus/<target>/ and crashes to fuzz/target/artifacts/<target>/,
# both ignored by git; the committed seeds in fuzz/corpus/<target>/ are read, never written. A
# crash fails the run and names its input: once fixed, keep it in fuzz/corpus/<target>/, where
# `cargo test --test fuzz_corpus` replays it.
set -euo pipefail
cd "$(dirname "$0")"

secs=${QUERN_FUZZ_SECONDS:-20}
sanitizer=${QUERN_FUZZ_SANITIZER:-none}
triple=$(rustc -vV | sed -n 's/^host: //p')
if (($# > 0)); then
    targets=("$@")
else
    targets=(decode open_damaged ops_model control_request)
fi

cargo_() {
    if [[ -n ${QUERN_CARGO_LOCK:-} ]]; then
        flock "$QUERN_CARGO_LOCK" cargo "$@"
    else
        cargo "$@"
    fi
}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    if ! cargo_ install cargo-fuzz --locked; then
        if [[ -n ${QUERN_FUZZ_OPTIONAL:-} ]]; then
            echo "cargo-fuzz could not be installed: not fuzzing, as QUERN_FUZZ_OPTIONAL allows (the corpora replay in cargo test)"
            exit 0
        fi
        echo "cargo-fuzz could not be installed: not fuzzing is a failure (set QUERN_FUZZ_OPTIONAL=1 to allow it)"
        exit 1
    fi
fi

echo "== building ${targets[*]} (sanitizer: $sanitizer)"
# open_damaged also runs the utility's read commands on each damaged file (see
# common/damage.rs): a release build of the `quern` binary.
if [[ " ${targets[*]} " == *" open_damaged "* ]]; then
    (cd .. && cargo_ build --release --bin quern)
    export QUERN_FUZZ_QUERN=$PWD/../target/release/quern
fi
for t in "${targets[@]}"; do
    if [[ $sanitizer == none ]]; then
        cargo_ fuzz build --sanitizer none "$t"
    else
        RUSTC_BOOTSTRAP=1 cargo_ fuzz build --sanitizer "$sanitizer" "$t"
    fi
done

# The stores the targets create live in temporary directories: in memory when possible, where a
# durable commit's fsync costs nothing.
if [[ -d /dev/shm && -w /dev/shm ]]; then
    export TMPDIR=/dev/shm
fi

max_len() {
    case $1 in
        open_damaged) echo 128 ;;
        *) echo 1024 ;;
    esac
}

failed=()
for t in "${targets[@]}"; do
    bin=target/$triple/release/$t
    mkdir -p "target/corpus/$t" "target/artifacts/$t"
    echo "== fuzzing $t for ${secs}s"
    if ! "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -max_len="$(max_len "$t")" -print_final_stats=1 \
        -artifact_prefix="target/artifacts/$t/" \
        "target/corpus/$t" "corpus/$t" >"target/$t.log" 2>&1; then
        failed+=("$t")
        grep -E -A2 "panicked at|^panic|ERROR: libFuzzer|Test unit written|^Base64" \
            "target/$t.log" | grep -v "^ *[0-9]*: \|^ *at " | head -n 40 || true
        echo "!! $t failed: input in fuzz/target/artifacts/$t/, log in fuzz/target/$t.log"
    else
        grep -E '^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::average_exec_per_sec)' \
            "target/$t.log" || true
    fi
done

if ((${#failed[@]} > 0)); then
    echo "fuzzing found crashes in: ${failed[*]}"
    exit 1
fi
echo "fuzzing: no crash in ${targets[*]}"
