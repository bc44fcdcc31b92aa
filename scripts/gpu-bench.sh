#!/usr/bin/env bash
# The one-command device check of issue #20: scmz's engine on a GPU, side by side with scvi-tools on
# the same GPU, data made on the spot (scripts/gpu_bench.py says what it measures).
#
#   scripts/gpu-bench.sh [ENGINE] [--device cuda|cpu] [--quick] [--skip-scvi] [--out FILE.json]
#
# ENGINE (default .gpu/scmz-engine) is an engine built for the machine's PyTorch, e.g. for the GPU
# machines (torch 2.11, no libhdf5):  scripts/build-engine.sh --torch 2.11.0 --static-hdf5 --out .gpu/scmz-engine
# It runs under the machine's python3 (SCMZ_BENCH_PYTHON) and finds libtorch in that python's torch
# package (or SCMZ_TORCH_LIB). Python packages the machine lacks for scvi-tools (anndata, scvi-tools
# and their pure-Python needs) are installed from wheels in .whl/ into a temporary folder, if there.
# Dry run here: scripts/gpu-bench.sh ENGINE --device cpu --quick
# Fetch the wheels here (a registry is needed; the GPU machine has none):  scripts/gpu-bench.sh --fetch-wheels
# then carry .gpu and .whl to the machine (.gitignore keeps both out of commits).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

# What the GPU machines' image (Python 3.12, torch 2.11, pandas 3, numpy 2.5, lightning, jax, h5py,
# scipy, scikit-learn) lacks for scvi-tools 1.4.2, as read from each package's requirements and an
# import trace. anndata 0.12 (0.13 needs pydantic, which the image lacks too).
WHEELS="scvi-tools==1.4.2 anndata==0.12.19 mudata==0.3.10 scverse-misc==0.0.3 array-api-compat==1.16.0
docrep==0.3.2 donfig==0.8.1.post1 fast-array-utils==1.5.1 google-crc32c==1.9.0 legacy-api-wrap==1.5
ml-collections==1.1.0 msgspec==0.23.0 natsort==8.4.0 numcodecs==0.17.1 pynndescent==0.7.0
pyro-api==0.1.2 pyro-ppl==1.9.2 pytz==2026.6 scanpy==1.12.4 session-info2==0.4.2 sparse==0.19.3
tzdata==2026.6 umap-learn==0.5.12 zarr==3.4.2"
if [ "${1:-}" = --fetch-wheels ]; then
  mkdir -p "$ROOT/.whl"
  for w in $WHEELS; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform any -d "$ROOT/.whl" "$w" 2>/dev/null \
      || python3 -m pip wheel -q --no-deps -w "$ROOT/.whl" "$w"   # docrep ships only as source
  done
  ls "$ROOT/.whl"; exit 0
fi
ENGINE="$ROOT/.gpu/scmz-engine"
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then ENGINE="$1"; shift; fi
[ -f "$ENGINE" ] && [ -x "$ENGINE" ] || { echo "gpu-bench: no engine at $ENGINE (build one with scripts/build-engine.sh)" >&2; exit 2; }
PY="${SCMZ_BENCH_PYTHON:-python3}"
if [ -z "${SCMZ_TORCH_LIB:-}" ]; then
  SCMZ_TORCH_LIB="$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null)" \
    || { echo "gpu-bench: $PY has no torch: set SCMZ_BENCH_PYTHON to a python with torch, or SCMZ_TORCH_LIB to a torch/lib folder" >&2; exit 2; }
fi
export LD_LIBRARY_PATH="$SCMZ_TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
"$ENGINE" devices >/dev/null 2>&1 \
  || { echo "gpu-bench: $ENGINE does not start with the libtorch in $SCMZ_TORCH_LIB (built for another torch? see scripts/build-engine.sh)" >&2; exit 2; }
case " $* " in *" --skip-scvi "*) SKIP_SCVI=1 ;; *) SKIP_SCVI=0 ;; esac
SITE=""
if [ "$SKIP_SCVI" = 0 ] && [ -d "$ROOT/.whl" ] && ! "$PY" -c 'import scvi' 2>/dev/null; then
  SITE="$(mktemp -d)"
  trap 'rm -rf "$SITE"' EXIT
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$ROOT"/.whl/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
"$PY" "$ROOT/scripts/gpu_bench.py" --engine "$ENGINE" "$@"
