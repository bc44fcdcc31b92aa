#!/usr/bin/env bash
# Builds `scmz-engine` against another PyTorch release than the default (2.13.0), for machines whose
# PyTorch is fixed: the GPU machines (torch 2.11), clusters with a module system.
#
#   scripts/build-engine.sh --torch 2.11.0 [--static-hdf5] [--test] [--out FILE]
#
# tch pins one libtorch release per version, so the build happens in a copy of the tree whose
# Cargo.toml names the matching tch (a patch step; the default build stays on 2.13). The torch
# release is installed in its own venv in the user cache directory (once, about 4 GB) and the build
# keeps its own target directory there, so the default build is never touched.
#   --static-hdf5  link HDF5 in (built from source, needs cmake): the engine then needs only libtorch
#                  and glibc on the machine it runs on.
#   --test         also run the engine's CPU tests (train, project, compare) against this libtorch.
#   --tch X.Y      the tch release, for a torch this script does not know.
#   --out FILE     also copy the engine to FILE (e.g. .gpu/scmz-engine, to carry to a GPU machine).
# At run time the engine finds libtorch through the rpath of the build machine's venv, or through
# LD_LIBRARY_PATH (on the target machine: the `lib` folder of its `torch` package).
set -euo pipefail
CALLER="$PWD"
cd "$(dirname "$0")/.."

die() { echo "build-engine: $*" >&2; exit 2; }
TORCH="" TCH="" STATIC=0 TEST=0 OUTFILE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --torch|--tch|--out) [ $# -ge 2 ] || die "$1 needs a value (see --help)" ;;
  esac
  case "$1" in
    --torch) TORCH="$2"; shift 2 ;;
    --tch) TCH="$2"; shift 2 ;;
    --static-hdf5) STATIC=1; shift ;;
    --test) TEST=1; shift ;;
    --out) OUTFILE="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[ -n "$TORCH" ] || die "give --torch VERSION, e.g. --torch 2.11.0"
[[ "$TORCH" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "--torch $TORCH: give a release as X.Y.Z, e.g. 2.11.0"
if [ -z "$TCH" ]; then
  # Read from each torch-sys release's build script (TORCH_VERSION).
  case "$TORCH" in
    2.13.0) TCH=0.26 ;;
    2.11.0) TCH=0.24 ;;
    *) die "no tch release known for torch $TORCH; give --tch X.Y (see torch-sys' build.rs)" ;;
  esac
fi
[[ "$TCH" =~ ^[0-9]+\.[0-9]+$ ]] || die "--tch $TCH: give a release as X.Y, e.g. 0.24"
# --out is relative to the folder the script was started from.
case "$OUTFILE" in ""|/*) ;; *) OUTFILE="$CALLER/$OUTFILE" ;; esac

say() { echo "build-engine: $*" >&2; }
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}"
case "$CACHE_ROOT" in /*) ;; *) die "XDG_CACHE_HOME ($CACHE_ROOT) must be an absolute path" ;; esac
CACHE="$CACHE_ROOT/scmz"
VENV="$CACHE/venv-torch-$TORCH"
BUILD="$CACHE/build-torch-$TORCH"
TARGET="$CACHE/target-torch-$TORCH"

# 1. The venv with this torch (the CUDA build: libtorch_cuda is linked so that CUDA works where a GPU is).
if [ ! -f "$VENV/.scmz-torch" ]; then
  say "installing torch==$TORCH into $VENV (about 4 GB, once)"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "torch==$TORCH"
  touch "$VENV/.scmz-torch"
fi
TORCH_DIR="$( (ls -d "$VENV"/lib/python3*/site-packages/torch 2>/dev/null || true) | head -n 1)"
[ -n "$TORCH_DIR" ] && [ -f "$TORCH_DIR/lib/libtorch_cpu.so" ] || { say "no libtorch in $VENV: remove that folder and run again"; exit 1; }

# HDF5's source wants CMake 3.26 or newer (Debian 12 has 3.25): one from PyPI, in the venv.
if [ "$STATIC" = 1 ] && [ ! -x "$VENV/bin/cmake" ]; then
  say "installing cmake (PyPI, into $VENV), needed to build HDF5 from source"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "cmake>=3.26,<4"
fi
[ "$STATIC" = 1 ] && export PATH="$VENV/bin:$PATH"

# 2. A copy of the tree (tracked and new files), with tch pinned to the release for this torch.
rm -rf "$BUILD"; mkdir -p "$BUILD"
git ls-files -co --exclude-standard -z | grep -zv '^tests/data/' | tar --null -T - -cf - | tar -xf - -C "$BUILD"
sed -i -E "s/^tch = \"[0-9.]+\"/tch = \"$TCH\"/" "$BUILD/Cargo.toml"
grep -q "^tch = \"$TCH\"" "$BUILD/Cargo.toml" || { say "could not pin tch in $BUILD/Cargo.toml"; exit 1; }
ln -sfn "$TORCH_DIR" "$BUILD/.libtorch"
[ "$TEST" = 1 ] && ln -sfn "$PWD/tests/data" "$BUILD/tests/data"

FEATURES=()
[ "$STATIC" = 1 ] && FEATURES=(--features static-hdf5)
say "building scmz-engine against torch $TORCH (tch $TCH) in $BUILD"
(cd "$BUILD" && CARGO_TARGET_DIR="$TARGET" cargo build --release --bin scmz-engine "${FEATURES[@]}")
BIN="$TARGET/release/scmz-engine"
"$BIN" devices >/dev/null || { say "the built engine does not start: $BIN"; exit 1; }

if [ "$TEST" = 1 ]; then
  say "running the engine's CPU tests against torch $TORCH"
  (cd "$BUILD" && CARGO_TARGET_DIR="$TARGET" cargo test --release "${FEATURES[@]}" --test train --test project --test compare)
fi

if [ -n "$OUTFILE" ]; then
  mkdir -p "$(dirname "$OUTFILE")"
  cp "$BIN" "$OUTFILE.tmp" && mv "$OUTFILE.tmp" "$OUTFILE"
  BIN="$OUTFILE"
fi
say "built $BIN ($(du -h "$BIN" | cut -f1)); libraries it needs besides glibc and torch's (none is the aim):"
ldd "$BIN" | grep -v -F "$VENV" | grep -v -E 'linux-vdso|ld-linux|lib(c|m|dl|rt|util|pthread|gcc_s|stdc\+\+)\.so' >&2 || true
echo "$BIN"
