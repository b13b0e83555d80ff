#!/usr/bin/env bash
# Issue 11's GPU-host check, for a host with no network (see ../shared/TOOLCHAIN.md, "The GPU host"):
# builds the project into a --target directory and runs bench/workers_scaling.py: the heavy MLP on
# cuda:0 and the tiny MLP on the CPU, served at workers = 1, 2, 4, 8, wrk with binary and JSON bodies
# at c = 64 and 256; one table of req/s, p50, p99 and the scaling against workers = 1.
#
#   bash bench/gpu_serving.sh [WHEELS_DIR] [WRK_DIR]   # carried py3.12 wheels (msgspec, starlette,
#                                                      # uvicorn, httptools, httpx and its deps) and the
#                                                      # unpacked Debian packages wrk + libluajit2-5.1-2
#   bash bench/gpu_serving.sh --cpu                    # this machine: a short check of the script
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--cpu" ]]; then
  exec .venv/bin/python bench/workers_scaling.py --cpu --workers 1,2 --concurrency 64 --seconds 2
fi
WHEELS=${1:-.whl}
WRK_DIR=${2:-.wrk}
PY=${PYTHON:-python3}
SITE=$(mktemp -d /tmp/lsite.XXXX)
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-deps --no-index --no-compile --target /tmp/site "$WHEELS"/*.whl || exit 1
fi
$PY -m pip install -q --no-build-isolation --no-deps --no-index --target "$SITE" . -Cbuild-dir=/tmp/lsbuild || exit 1
export PYTHONPATH="$SITE:/tmp/site"
if ! command -v wrk >/dev/null; then
  export PATH="$WRK_DIR/usr/bin:$PATH" LD_LIBRARY_PATH="$WRK_DIR/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
fi
command -v wrk >/dev/null || { echo "wrk not found: carry the Debian packages wrk and libluajit2-5.1-2 unpacked in $WRK_DIR"; exit 1; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
timeout 540 $PY bench/workers_scaling.py --seconds 4 --json "${OUT:-/tmp}/workers_scaling.json"
