#!/usr/bin/env bash
# Reproduces screenshots/*.png: runs the TUI on the bundled demo in a detached tmux session
# (120x40), with a fresh demo zoo and job registry, drives it with keys, captures each screen with
# its colours (`tmux capture-pane -e`) and draws the captures as PNG (scripts/ansi2png.py, Pillow:
# installed into scmz's venv when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v tmux >/dev/null || { echo "screenshots: tmux is needed (apt-get install tmux)" >&2; exit 2; }
cargo build --quiet
py="${XDG_CACHE_HOME:-$HOME/.cache}/scmz/venv/bin/python"
[ -x "$py" ] || { echo "screenshots: run scripts/setup.sh first (it makes $py)" >&2; exit 2; }
"$py" -c 'import PIL' 2>/dev/null || "$py" -m pip install --quiet pillow
bin="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/scmz"
work="$(mktemp -d)"
sock="scmz-shots-$$"
trap 'tmux -L "$sock" kill-server 2>/dev/null || true; rm -rf "$work"' EXIT
t() { tmux -L "$sock" "$@"; }
pane() { t capture-pane -p -t shots; }
wait_for() { # wait_for TEXT [SECONDS]
    for _ in $(seq 1 $(( ${2:-60} * 10 ))); do pane | grep -qF -- "$1" && return 0; sleep 0.1; done
    echo "screenshots: never saw \"$1\"" >&2; pane >&2; exit 1
}
shot() { # shot NAME
    sleep 0.6
    t capture-pane -e -p -N -t shots > "$work/$1.ansi"
    "$py" scripts/ansi2png.py "$work/$1.ansi" "screenshots/$1.png" --font-size 28
    echo "screenshots/$1.png"
}
mkdir -p screenshots
t new-session -d -s shots -x 120 -y 40 \
    "env SCMZ_STATE_DIR=$work/state SCMZ_CACHE_DIR=$work/cache SCMZ_CONFIG=$work/config.toml $bin ui tests/data --zoo $work/zoo --demo tests/data/pbmc68k_counts.h5ad"
# First run: the demo zoo is empty, so the TUI starts a training job and shows its monitor.
wait_for "Latent epoch" 120
wait_for "ETA" 120
shot jobs
wait_for "ended done" 300
t send-keys -t shots 1
wait_for "Datasets "
# Down to pbmc68k_counts.h5ad (its details name its label column).
for _ in $(seq 1 20); do pane | grep -qF "bulk_labels 10 categories" && break; t send-keys -t shots j; sleep 0.3; done
wait_for "bulk_labels 10 categories"
shot datasets
t send-keys -t shots 2
wait_for "pbmc-demo"
shot models
# The mouse dataset against the human model: matched through orthologs.
t send-keys -t shots 1 o
wait_for "latent displacement" 60
t send-keys -t shots k
wait_for "mouse_10k_subset.h5ad (" 60
sleep 4
shot overlap
t send-keys -t shots '?'
wait_for "any key closes this help"
shot help
t send-keys -t shots Escape q
