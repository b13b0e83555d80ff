"""Data-parallel training across processes, the way `torchrun` starts them.

Under `torchrun` (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT in the environment) `setup`
joins the process group: NCCL when training on CUDA, gloo on the CPU. Outside it, training
runs as a world of one and touches no process group at all. `launch` starts the same command
under `python -m torch.distributed.run` (what `loopserve train --nproc N` does).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # the process group's backend; None for a world of one

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def choose_device(wanted: str, local_rank: int = 0) -> torch.device:
    if wanted == "cuda" and not torch.cuda.is_available():
        from loopserve.errors import ConfigError

        raise ConfigError("device: 'cuda' was asked for, but torch sees no CUDA device; use 'auto' or 'cpu'")
    if wanted in ("cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup(device: str = "auto") -> World:
    """Join the torchrun process group if there is one (idempotent)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = choose_device(device, local_rank)
    if size <= 1:
        return World(device=dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=size)
    return World(rank=rank, size=size, local_rank=local_rank, device=dev, backend=backend)


def teardown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def mean_across(world: World, value: float) -> float:
    """The mean of a per-process number over the world."""
    if not world.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=world.device if world.backend == "nccl" else "cpu")
    dist.all_reduce(t)
    return float(t.item()) / world.size


def broadcast_object(world: World, obj):
    """Rank 0's `obj` on every rank."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(nproc: int, module_args: list[str], port: int | None = None) -> list[str]:
    """`python -m torch.distributed.run` with `nproc` local processes running `python -m <module_args>`."""
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
            "--master_addr=127.0.0.1", f"--master_port={port or free_port()}", "-m", *module_args]


def launch(nproc: int, module_args: list[str], timeout: float | None = None) -> int:
    """Run `module_args` under torchrun with `nproc` processes; their exit status."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # N processes on shared cores: one intra-op thread each
    return subprocess.run(torchrun_command(nproc, module_args), env=env, timeout=timeout).returncode
