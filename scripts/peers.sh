#!/usr/bin/env bash
# Real peers for the tests (DESIGN.md, "Real peers for tests"): installs them once and prints
# where they are. Tests start their own s3s-fs and fakesnow processes on free ports, so nothing
# long-lived is left running here except the machine's Postgres.
#
# Usage: scripts/peers.sh install   # idempotent, silent when everything is already there
#        scripts/peers.sh env       # export lines, for: eval "$(scripts/peers.sh env)"
#
# How the peers are started (by the tests, see tests/common/peers.rs):
#   s3s-fs   --host 127.0.0.1 --port PORT --access-key K --secret-key S ROOT
#            (objects land on disk at ROOT/<bucket>/<key>; a bucket is a folder ROOT/<bucket>)
#   fakesnow -s -p PORT [-d DB_PATH]
#            (checked with fakesnow 0.12.1 `--help`: `-s/--server` runs the HTTP server (uvicorn),
#            `-p/--port` its port (default: a random free one), `--host` defaults to 127.0.0.1,
#            `-d/--db_path` keeps databases in files there instead of in memory; without -s it
#            runs a python script or module instead. It logs "Uvicorn running on
#            http://127.0.0.1:PORT" once it listens, and answers POST
#            /session/v1/login-request?databaseName=DB with any account, user and password.)
set -euo pipefail

TOOLS="${SNOWGATE_TOOLS:-$HOME/.cache/snowgate/tools}"
VENV="${SNOWGATE_VENV:-$HOME/.cache/snowgate/venv}"
S3S_FS="$TOOLS/bin/s3s-fs"
FAKESNOW="$VENV/bin/fakesnow"
CONTRACT_VENV="${SNOWGATE_CONTRACT_VENV:-$HOME/.cache/snowgate/contract-venv}"
SCHEMATHESIS="$CONTRACT_VENV/bin/st"
S3S_FS_VERSION="0.14.1"
FAKESNOW_VERSION="0.12.1"
SCHEMATHESIS_VERSION="4.32.5"
PG_URL="postgres://postgres@127.0.0.1:5432/test"

install_s3s_fs() {
    if "$S3S_FS" --help >/dev/null 2>&1; then
        return
    fi
    echo "peers: installing s3s-fs $S3S_FS_VERSION into $TOOLS" >&2
    # 0.14.1 because later releases need a newer rustc than the project's.
    cargo install "s3s-fs@$S3S_FS_VERSION" --features binary --locked --root "$TOOLS" --quiet
}

fakesnow_ready() {
    [ -x "$FAKESNOW" ] && "$VENV/bin/python" - "$FAKESNOW_VERSION" >/dev/null 2>&1 <<'PY'
import sys
from importlib.metadata import version
assert version("fakesnow") == sys.argv[1]
# connector 5.x breaks fakesnow 0.12.1
assert int(version("snowflake-connector-python").split(".")[0]) < 5
import fakesnow.server  # the [server] extra is installed
PY
}

install_fakesnow() {
    if fakesnow_ready; then
        return
    fi
    echo "peers: installing fakesnow $FAKESNOW_VERSION into $VENV" >&2
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "fakesnow[server]==$FAKESNOW_VERSION" 'snowflake-connector-python<5'
    fakesnow_ready || { echo "peers: fakesnow in $VENV does not import after install" >&2; exit 1; }
}

# The contract test's property-based client, in a venv of its own (its dependencies need not
# agree with fakesnow's).
install_schemathesis() {
    if [ -x "$SCHEMATHESIS" ] && "$SCHEMATHESIS" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
        return
    fi
    echo "peers: installing schemathesis $SCHEMATHESIS_VERSION into $CONTRACT_VENV" >&2
    if [ ! -x "$CONTRACT_VENV/bin/python" ]; then
        python3 -m venv "$CONTRACT_VENV"
    fi
    "$CONTRACT_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
    "$SCHEMATHESIS" --version >/dev/null || { echo "peers: schemathesis does not run after install" >&2; exit 1; }
}

ensure_postgres() {
    if pg_isready -q -h 127.0.0.1 -p 5432; then
        return
    fi
    echo "peers: starting postgres" >&2
    # The machine's cluster: one version folder under /etc/postgresql, cluster "main".
    local version
    version="$(ls /etc/postgresql | head -n 1)"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
    for _ in $(seq 1 30); do
        pg_isready -q -h 127.0.0.1 -p 5432 && return
        sleep 1
    done
    echo "peers: postgres does not answer at 127.0.0.1:5432" >&2
    exit 1
}

ensure_test_database() {
    # Tests make their own databases or schemas, starting from this one.
    if psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1; then
        return
    fi
    echo "peers: creating postgres database test" >&2
    createdb -h 127.0.0.1 -U postgres test
}

case "${1:-}" in
    install)
        install_s3s_fs
        install_fakesnow
        install_schemathesis
        ensure_postgres
        ensure_test_database
        ;;
    env)
        printf 'export SGTEST_S3S_FS=%q\n' "$S3S_FS"
        printf 'export SGTEST_FAKESNOW=%q\n' "$FAKESNOW"
        printf 'export SGTEST_PG_URL=%q\n' "$PG_URL"
        printf 'export SGTEST_SCHEMATHESIS=%q\n' "$SCHEMATHESIS"
        ;;
    *)
        echo "usage: $0 install|env" >&2
        exit 2
        ;;
esac
