"""Compile the drift kernels for an NVIDIA target without a GPU (Triton -> PTX -> cubin).

The interpreter (TRITON_INTERPRET=1) checks what the kernels compute but never lowers them, so a
construct that only fails in the GPU compiler (a layout `tl.histogram` cannot take, an unsupported
atomic) would pass every CPU test. `compile_variants()` lowers each launch variant for e.g. sm_90
(H100) and reports registers and spills from `ptxas -v` when a ptxas that reads the PTX is there.
Must run with TRITON_INTERPRET unset (the kernels module is imported fresh for that reason).

    python -m loopserve.kernels.aot [ARCH]
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

_NUMERIC_TYPES = dict(n_rows="i32", stride_r="i32", stride_c="i32", n_tiles="i32", ncols_ptr="*i32", F="i32",
                      edges_stride="i32", nedges_ptr="*i32", e0="i32", lane_base="i32", n_lanes="i32",
                      pc_ptr="*i32", pc_plane="i32", pf_ptr="*fp64", part_stride="i32", part_plane="i32",
                      ps_ptr="*fp64", ccols_ptr="*i32", C="i32", lut_ptr="*i32", lut_stride="i32", lut_len_ptr="*i32",
                      other_ptr="*i32", ccounts_ptr="*i64", ccounts_stride="i32", cmissing_ptr="*i64")


def _base() -> dict:
    """The constexprs `drift_update_` launches on a GPU for the `bench/drift_gpu.py` case (20 numeric
    features with 9 edges, 2 categorical columns, K = 1000), so the report is of the kernel that runs."""
    from loopserve.kernels.drift import launch_config

    cfg = launch_config(20, 2, 2_000_000, max_programs=528, cat_slots=1001, on_gpu=True)
    return dict(E_LAUNCH=9, BLOCK_R=cfg.block_rows, BLOCK_F=cfg.block_f, BLOCK_C=cfg.block_c, K_PAD=cfg.k_pad,
                CAT_FLOAT=True, CAT_HIST=cfg.cat_hist)


_ALL = dict(DO_BINS=True, DO_MOMENTS=True, DO_CATS=True, DO_SUMS=True)


def variants() -> dict:
    """{name: (x type, edges type, constexprs)} of every launch variant."""
    base = _base()
    return {
        "fused-f32": ("fp32", "fp32", dict(base, **_ALL, CMP_F32=True)),
        "fused-f32-cat-atomics": ("fp32", "fp32", dict(base, **_ALL, CMP_F32=True) | {"CAT_HIST": False}),
        "fused-f64": ("fp64", "fp64", dict(base, **_ALL, CMP_F32=False)),
        "fused-i32": ("i32", "fp64", dict(base, **_ALL, CMP_F32=False) | {"CAT_FLOAT": False}),
        "fused-i64": ("i64", "fp64", dict(base, **_ALL, CMP_F32=False) | {"CAT_FLOAT": False}),
        "fused-f32-15-edges": ("fp32", "fp32", dict(base, **_ALL, CMP_F32=True) | {"E_LAUNCH": 15}),
        "bins-f32-no-edges": ("fp32", "fp32", dict(base, DO_BINS=True, DO_MOMENTS=False, DO_CATS=False,
                                                   CMP_F32=True, DO_SUMS=False) | {"E_LAUNCH": 0}),
    }


def _module():
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    path = Path(__file__).with_name("_drift_jit.py")
    spec = importlib.util.spec_from_file_location("loopserve_kernels_drift_jit_aot", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _ptxas_info(ptx: str, arch: int) -> str:
    import triton

    bindir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        for name in ("ptxas-blackwell", "ptxas"):
            exe = bindir / name
            if not exe.exists():
                continue
            gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
            out = subprocess.run([str(exe), "-v", f"--gpu-name={gpu}", str(src), "-o", str(Path(tmp) / "k.o")],
                                 capture_output=True, text=True)
            if out.returncode == 0:
                keep = [ln.split("info    :")[-1].strip() for ln in out.stderr.splitlines()
                        if "registers" in ln or "spill" in ln]
                return "; ".join(keep)
    return "ptxas -v unavailable"


def compile_variants(arch: int = 90, num_warps: int = 4) -> dict[str, str]:
    """{variant: "registers/spills"} for every variant; raises on the first that fails to compile."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    mod = _module()
    target = GPUTarget("cuda", arch, 32)
    out = {}
    jobs = [(name, mod.drift_kernel, {"x_ptr": "*" + xt, "edges_ptr": "*" + et, **_NUMERIC_TYPES}, consts)
            for name, (xt, et, consts) in variants().items()]
    from loopserve.kernels.drift import FINALIZE_BLOCK_G

    jobs.append(("finalize", mod.drift_finalize,
                 dict(pc_ptr="*i32", pc_plane="i32", pf_ptr="*fp64", G="i32", F="i32", n_rows="i32",
                      part_stride="i32", part_plane="i32", e_max="i32", counts_ptr="*i64", counts_stride="i32",
                      missing_ptr="*i64", out_n_ptr="*i64", out_f_ptr="*fp64", ps_ptr="*fp64", sums_ptr="*fp64",
                      edges_ptr="*fp32", edges_stride="i32", nedges_ptr="*i32"),
                 dict(BLOCK_G=FINALIZE_BLOCK_G, BLOCK_F=32, DO_BINS=True, DO_MOMENTS=True, MERGE=True, DO_SUMS=True)))
    for name, fn, types, consts in jobs:
        sig = {a: ("constexpr" if a in consts else types[a]) for a in fn.arg_names}
        k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=target,
                           options={"num_warps": num_warps})
        out[name] = _ptxas_info(k.asm["ptx"], arch)
    return out


if __name__ == "__main__":
    arch = int(sys.argv[1]) if len(sys.argv) > 1 else 90
    import triton

    for name, info in compile_variants(arch).items():
        print(f"sm_{arch} {name} (triton {triton.__version__}): compiled; {info}")
