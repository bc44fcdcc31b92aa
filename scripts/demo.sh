#!/usr/bin/env bash
# README command 1: set up what is missing, build, and open the terminal UI on the bundled demo:
# the datasets in tests/data and a demo zoo. When the demo zoo has no model yet, the TUI starts a
# short background training job on the bundled PBMC counts and shows its live loss curve. It runs
# the release build (the one scripts/install.sh installs), built here the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "demo: building the release binaries where needed (the first time: about 7 minutes on 2 cores)" >&2
cargo build --release --locked --bins --quiet
bin="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/scmz"
zoo="${SCMZ_DEMO_ZOO:-${XDG_DATA_HOME:-$HOME/.local/share}/scmz/demo-zoo}"
if [ -t 0 ] && [ -t 1 ]; then
    exec "$bin" ui tests/data --zoo "$zoo" --demo tests/data/pbmc68k_counts.h5ad "$@"
else
    # No terminal (a pipe or CI): show the catalog the TUI would open on.
    echo "not a terminal: listing the demo datasets instead of opening the TUI"
    exec "$bin" datasets tests/data "$@"
fi
