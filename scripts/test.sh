#!/usr/bin/env bash
# README command 2: set up what is missing and run every check and test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export SCMZ_PYTHON="${SCMZ_PYTHON:-${XDG_CACHE_HOME:-$HOME/.cache}/scmz/venv/bin/python}"
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet
cargo test --all-targets
