#!/usr/bin/env bash
# The GPU checks of issue 13, for a GPU host with no network (see shared/TOOLCHAIN.md, "The GPU
# host": Python 3.12, torch + triton preinstalled; msgspec, starlette, uvicorn, httptools carried
# as wheels). Builds the project into a --target directory, runs tests/gpu/, bench/drift_gpu.py
# and bench/gpu_batcher.py, and prints one table. Within 8 minutes.
#
#   bash bench/gpu.sh [WHEELS_DIR]     # WHEELS_DIR: the carried py3.12 wheels (default: wheels/)
#   bash bench/gpu.sh --cpu            # this machine: the same steps on the CPU (a check of the script)
set -uo pipefail
cd "$(dirname "$0")/.."
CPU=0
if [[ "${1:-}" == "--cpu" ]]; then CPU=1; shift; fi
WHEELS=${1:-wheels}
PY=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d)}
SITE=$(mktemp -d /tmp/lsite.XXXX)
SECONDS=0
step() { printf '\n== %s (%ds)\n' "$1" "$SECONDS"; }

step "build"
if [[ $CPU == 1 ]]; then
  PY=.venv/bin/python  # the dev venv has everything; build into --target like the GPU host does
  BUILD_DIR=build/gpu-sh-check
else
  BUILD_DIR=/tmp/lsbuild
  if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-deps --no-index --target /tmp/site "$WHEELS"/*.whl || exit 1
  fi
fi
$PY -m pip install -q --no-build-isolation --no-deps --no-index --target "$SITE" . -Cbuild-dir="$BUILD_DIR" || exit 1
test -f "$SITE/loopserve/kernels/_drift_jit.py" || { echo "the build lacks loopserve/kernels"; exit 1; }
export PYTHONPATH="$SITE:/tmp/site:bench"
export TRITON_INTERPRET=0 TRITON_DEFAULT_FP_FUSION=1
$PY -c 'import loopserve, loopserve.kernels as k, loopserve._core; print("loopserve from", loopserve.__file__, "kernels:", k.__file__)' || exit 1

step "compile report (sm_90)"
$PY -m loopserve.kernels.aot 90 | tee "$OUT/aot.txt"

step "tests/gpu"
$PY -m pytest -q -p no:cacheprovider tests/gpu -rs 2>&1 | tail -15 | tee "$OUT/tests.txt"

step "bench/drift_gpu.py"
if [[ $CPU == 1 ]]; then
  TRITON_INTERPRET=1 timeout 300 $PY bench/drift_gpu.py --quick --json "$OUT/drift.json" | tee "$OUT/drift.txt"
else
  timeout 240 $PY bench/drift_gpu.py --json "$OUT/drift.json" | tee "$OUT/drift.txt"
fi

step "bench/gpu_batcher.py"
if [[ $CPU == 1 ]]; then
  timeout 200 $PY bench/gpu_batcher.py --cpu --json "$OUT/serving.json" | tee "$OUT/serving.txt"
else
  timeout 200 $PY bench/gpu_batcher.py --seconds 3 --json "$OUT/serving.json" | tee "$OUT/serving.txt"
fi

step "summary"
$PY - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = []
aot = (out / "aot.txt").read_text().splitlines() if (out / "aot.txt").exists() else []
spills = [ln.split(":")[0] for ln in aot if "spill stores" in ln and " 0 bytes spill stores" not in ln]
rows.append(("sm_90 variants with spills", ", ".join(spills) or "none"))
tests = (out / "tests.txt").read_text().strip().splitlines() if (out / "tests.txt").exists() else []
rows.append(("tests/gpu", tests[-1] if tests else "did not run"))
if (out / "drift.json").exists():
    d = json.loads((out / "drift.json").read_text())
    for case in d.get("cases", []):
        k = case["paths"].get("kernel, graph") or case["paths"].get("kernel, eager") or {}
        rows.append((f"drift kernel GB/s / copy GB/s, {case['rows']:,} rows", f"{k.get('of_copy_bw', float('nan')):.2f}"))
else:
    rows.append(("drift kernel GB/s / copy GB/s", "no GPU figures (smoke check only)"))
if (out / "serving.json").exists():
    s = json.loads((out / "serving.json").read_text())
    by = {(r["model"], r["instances"], r["clients"]): r for r in s["serving"]}
    for (m, i, c), r in sorted(by.items()):
        rows.append((f"served / direct, {m}, instances {i}, c={c}", f"{r['served'] / r['direct']:.2f}"))
    for m in ("heavy", "wide"):
        for c in (256, 1024):
            if (m, 2, c) in by and (m, 1, c) in by:
                rows.append((f"instances 2 / 1, {m}, c={c}", f"{by[(m, 2, c)]['served'] / by[(m, 1, c)]['served']:.2f}"))
    rows.append(("monitoring on / off (wide, 2 instances, c=1024)", f"{s['monitoring_on_off']:.3f}"))
w = max(len(a) for a, _ in rows)
print("\n".join(f"{a:<{w}}  {b}" for a, b in rows))
PY
echo "done in ${SECONDS}s; outputs in $OUT"
