#!/usr/bin/env bash
# The setup step of bench/gpu_session.py (which runs it under a time cap and passes the paths):
# installs the carried wheels, unpacks the carried wrk, builds loopserve with pip --target, and
# checks that every package the later steps import is there (shared/TOOLCHAIN.md, "The GPU host").
#
#   bash bench/gpu_setup.sh MODE PYTHON CARRY SITE DEPS DEBS BUILD_DIR
#   MODE gpu: the GPU host; cpu: this machine's dry run (the wheels are only checked to install
#   for CPython 3.12, the dev venv's packages are used; wrk comes from the carried .deb all the same)
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=$1 PY=$2 CARRY=$3 SITE=$4 DEPS=$5 DEBS=$6 BUILD_DIR=$7
SECONDS=0

if ls "$CARRY"/whl/*.whl >/dev/null 2>&1; then
  if [[ $MODE == gpu ]]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$DEPS" "$CARRY"/whl/*.whl
  else  # the wheels are for the GPU host's Python 3.12: check that they install there
    rm -rf "$DEPS.py312-check"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$DEPS.py312-check" \
      --python-version 3.12 --implementation cp --only-binary=:all: --platform manylinux_2_28_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 "$CARRY"/whl/*.whl
  fi
  echo "wheels: $(cd "$CARRY"/whl && ls *.whl | tr '\n' ' ')"
else
  echo "no wheels in $CARRY/whl (bash bench/gpu_prepare.sh makes them): the packages must be there already"
fi

if ls "$CARRY"/deb/*.deb >/dev/null 2>&1; then
  mkdir -p "$DEBS"
  for f in "$CARRY"/deb/*.deb; do dpkg -x "$f" "$DEBS"; done  # into a folder, never into /
fi
wrk_version=$(PATH="$DEBS/usr/bin:$PATH" LD_LIBRARY_PATH="$DEBS/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}" \
  wrk -v 2>&1 | head -1 || true)  # `wrk -v` exits 1 after printing its version
if [[ $wrk_version == wrk* ]]; then
  echo "wrk: $wrk_version"
else
  echo "wrk: NOT FOUND (${wrk_version:-no output}): carry .gpu with its .deb files; the serving step will fail"
fi

# The build: skipped when the sources are those of the build already in $SITE (a rerun on a warm machine).
digest=$(find CMakeLists.txt pyproject.toml csrc python kernels -type f ! -name '*.pyc' ! -path '*/__pycache__/*' \
  -print0 | sort -z | xargs -0 sha1sum | sha1sum | cut -c1-16)
if [[ -f $SITE/.source-digest && $(cat "$SITE/.source-digest") == "$digest" ]]; then
  echo "build: sources unchanged ($digest), reusing $SITE"
else
  rm -rf "$SITE"
  $PY -m pip install -q --no-build-isolation --no-deps --no-index --target "$SITE" . -Cbuild-dir="$BUILD_DIR"
  echo "$digest" > "$SITE/.source-digest"
  echo "build: $SITE ($digest) in ${SECONDS}s"
fi

if [[ $MODE == gpu ]]; then
  export PYTHONPATH="$SITE:$DEPS"
else  # the dev venv's editable install would win over PYTHONPATH: a shim on the path drops its finder
  mkdir -p "$SITE.shim"
  cat > "$SITE.shim/sitecustomize.py" <<'PY'
"""bench/gpu_session.py's CPU dry run: import loopserve from the build on PYTHONPATH, as the GPU
host does, not through the dev venv's editable finder (which comes first in sys.meta_path)."""
import sys

sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__]
PY
  export PYTHONPATH="$SITE:$SITE.shim"
fi
$PY - "$SITE" <<'PY'
import importlib, importlib.metadata, sys
site = sys.argv[1]
DIST = {"yaml": "PyYAML", "prometheus_client": "prometheus-client"}
import loopserve, loopserve._core, loopserve.kernels  # noqa: E401
if not loopserve.__file__.startswith(site):
    sys.exit(f"loopserve imported from {loopserve.__file__}, not from the build in {site}")
versions, missing = [], []
NEEDED = ("torch", "triton", "numpy", "msgspec", "starlette", "uvicorn", "httptools", "httpx", "uvloop", "scipy",
          "pyarrow", "yaml", "prometheus_client", "pytest")  # every step imports these
for name in NEEDED + ("onnxruntime", "onnxscript"):  # the last two: only the serving step's tiny ONNX MLP
    try:
        module = importlib.import_module(name)
        versions.append(f"{name} {getattr(module, '__version__', None) or importlib.metadata.version(DIST[name])}")
    except Exception as e:
        missing.append(f"{name} does not import: {type(e).__name__}: {e}"[:200])
        if name in NEEDED:
            print("\n".join(missing))
            sys.exit(f"{name} is needed by the steps that follow: carry its wheel in .gpu/whl")
import torch
cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
print(f"python {sys.version.split()[0]}; loopserve from {loopserve.__file__}; {cuda}\n  " + ", ".join(versions))
for line in missing:
    print(f"  warning: {line}")
PY
if [[ $MODE == gpu ]]; then nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true; fi
echo "setup done in ${SECONDS}s"
