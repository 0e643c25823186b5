#!/usr/bin/env bash
# Benchmarks: the load generator (benches/loadgen.rs) against a release build, on the embedded
# backends and then on Postgres and s3s-fs, beside the library limit and the seed's Python
# baselines on the same bytes; writes the results section of BENCHMARKS.md and benchmarks.png.
# Usage: scripts/bench.sh [loadgen args, e.g. --records 200000]
#        scripts/bench.sh --quick    (the smoke test: debug build, no baselines, nothing written;
#                                     needs the peers of scripts/test.sh: Postgres and s3s-fs)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/snowgate/target}"

if [[ "${1:-}" == "--quick" ]]; then
    # The debug build the test suite made (same features), so nothing is built twice.
    exec cargo bench --locked --profile dev --features fault-injection --bench loadgen -- --quick \
        --backends embedded,postgres-s3
fi

venv="$HOME/.cache/snowgate/bench-venv"
if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import pandas, pyarrow, duckdb, matplotlib' 2>/dev/null; then
    echo "bench: installing pandas, pyarrow, duckdb and matplotlib into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        'pandas==2.3.3' 'pyarrow==22.0.0' 'duckdb==1.4.2' 'matplotlib==3.10.7'
fi

# The peers (s3s-fs, and Postgres started if it is not) for the runs on the production ledger
# and stage; `--backends embedded` skips those runs.
scripts/peers.sh install
backends=(--backends embedded,postgres-s3)
for arg in "$@"; do
    [[ "$arg" == --backends* ]] && backends=()
done
results="$(mktemp)"
cargo bench --locked --bench loadgen -- --python "$venv/bin/python" --json "$results" "${backends[@]}" "$@"
"$venv/bin/python" scripts/bench/report.py "$results" BENCHMARKS.md benchmarks.png "scripts/bench.sh${*:+ $*}"
echo "bench: wrote BENCHMARKS.md and benchmarks.png"
