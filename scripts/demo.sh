#!/usr/bin/env bash
# README command 1: set up what is missing, build, and run scmz on the bundled demo data.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo run --quiet -- datasets tests/data "$@"
