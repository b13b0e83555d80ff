"""The native core under ThreadSanitizer and AddressSanitizer: many threads submitting to
the batcher at once, with priorities, timeouts, a full queue, a failing model and a stop; the
sketches' update, merge and (corrupt) deserialization; the drift monitor fed by many threads
while others read it; and the engine's ingress answering four front-end channels through hot swaps."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def tool(name):
    here = Path(sys.executable).parent / name  # the venv's own, when installed there
    return str(here) if here.exists() else shutil.which(name)


@pytest.mark.parametrize("sanitizer", ["thread", "address"])
def test_batcher_stress_under_sanitizer(sanitizer):
    cmake = tool("cmake")
    assert cmake, "cmake is needed to build the native tests"
    build = ROOT / "build" / f"native-{sanitizer}"
    generator = ["-G", "Ninja"] if tool("ninja") else []
    for step in (
        [cmake, "-S", str(ROOT), "-B", str(build), *generator, "-DLOOPSERVE_PYTHON=OFF", "-DLOOPSERVE_NATIVE_TESTS=ON",
         f"-DLOOPSERVE_SANITIZE={sanitizer}", "-DCMAKE_COMPILE_WARNING_AS_ERROR=ON"],
        [cmake, "--build", str(build)],
    ):
        done = subprocess.run(step, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1", ASAN_OPTIONS="detect_leaks=1:halt_on_error=1")
    for program in ("batcher_stress", "sketch_test", "drift_stress", "ingress_stress", "http_stress"):
        run = subprocess.run([str(build / program)], capture_output=True, text=True, env=env, timeout=600)
        assert run.returncode == 0, program + ": " + run.stdout + run.stderr
        assert "WARNING: ThreadSanitizer" not in run.stderr and "ERROR: AddressSanitizer" not in run.stderr
        assert run.stdout.strip().endswith("ok"), program
