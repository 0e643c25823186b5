#!/usr/bin/env bash
# The whole test suite: builds once, runs every test in parallel with cargo-nextest.
# Usage: scripts/test.sh [extra nextest args]
set -euo pipefail
cd "$(dirname "$0")/.."

# One persistent target dir, shared with `cargo run` and CI, so the DuckDB build happens once.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/snowgate/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "installing cargo-nextest"
    cargo install cargo-nextest --locked
fi

# Real peers (s3s-fs, fakesnow, Postgres): installed once, silent afterwards; tests start their
# own s3s-fs and fakesnow processes from the paths exported here.
scripts/peers.sh install
eval "$(scripts/peers.sh env)"

# The load generator's smoke test (benches/loadgen.rs --quick, on the debug build nextest uses):
# three small scenarios against a real gateway process on the embedded backends, then on Postgres
# and s3s-fs, each checked exactly-once in DuckDB.
# Full figures come from scripts/bench.sh (release) and live in BENCHMARKS.md. Skipped when
# nextest arguments (a filter) are given.
if [[ $# -eq 0 ]]; then
    scripts/bench.sh --quick
fi

# `fault-injection` compiles the crash points that tests/crash.rs aborts at; never in a release.
cargo nextest run --no-fail-fast --features fault-injection "$@"

