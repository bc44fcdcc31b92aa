#!/usr/bin/env bash
# Installs what scmz needs and is missing: Debian's HDF5 and a Python venv (outside the clone, in the
# user cache directory) holding the libtorch that `tch` links against plus `anndata` for
# interoperability tests. Idempotent: seconds when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.13.0
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/scmz"
VENV="${SCMZ_VENV:-$CACHE/venv}"
STAMP="$VENV/.scmz-setup-torch-$TORCH_VERSION"

say() { echo "setup: $*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else say "need root to run: $*"; exit 1; fi
}

apt_install() {
  if [ -z "${APT_UPDATED:-}" ]; then as_root apt-get update -qq; APT_UPDATED=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# 1. System HDF5 (hdf5-metno links against it through pkg-config).
if ! dpkg -s libhdf5-dev >/dev/null 2>&1 || ! command -v pkg-config >/dev/null; then
  say "installing libhdf5-dev and pkg-config (apt)"
  apt_install libhdf5-dev pkg-config
fi

# 2. The venv with torch (libtorch for tch 0.26) and anndata.
if [ ! -f "$STAMP" ]; then
  PY="$(command -v python3 || true)"
  if [ -z "$PY" ]; then say "installing python3 (apt)"; apt_install python3 python3-venv; PY=python3; fi
  if [ ! -x "$VENV/bin/python" ]; then
    mkdir -p "$(dirname "$VENV")"
    if ! "$PY" -m venv "$VENV" 2>/dev/null; then
      say "installing python3-venv (apt)"; apt_install python3-venv
      rm -rf "$VENV"; "$PY" -m venv "$VENV"
    fi
  fi
  say "installing torch==$TORCH_VERSION and anndata into $VENV (about 4 GB, once)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "torch==$TORCH_VERSION" anndata
  touch "$STAMP"
fi

# 2b. Pillow and a monospace font: screenshots (scripts/ansi2png.py) and their test.
if ! "$VENV/bin/python" -c 'import PIL' 2>/dev/null; then
  say "installing pillow into $VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check pillow
fi
if [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf ]; then
  say "installing fonts-dejavu-core (apt)"; apt_install fonts-dejavu-core
fi

# 3. Point LIBTORCH (see .cargo/config.toml) at the venv's libtorch.
TORCH_DIR="$(ls -d "$VENV"/lib/python3*/site-packages/torch | head -n 1)"
if [ ! -f "$TORCH_DIR/lib/libtorch_cpu.so" ]; then
  say "no libtorch_cpu.so under $TORCH_DIR: remove $VENV and run again"; exit 1
fi
if [ "$(readlink .libtorch 2>/dev/null)" != "$TORCH_DIR" ]; then ln -sfn "$TORCH_DIR" .libtorch; fi
