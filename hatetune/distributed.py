"""Several training processes: world size and rank, the torchrun launch, and the little rank 0 decides for all.

On a CPU `torchrun --standalone --nproc_per_node N` gives N processes on gloo (`accelerate launch --cpu` would
silently run one); on GPUs the same command gives one process per GPU on nccl.
"""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Sequence


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def is_distributed_worker() -> bool:
    """True inside a process started by torchrun."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def torchrun_command(nproc: int, module: str, argv: Sequence[str]) -> list[str]:
    """`python -m torch.distributed.run --standalone --nproc_per_node N -m <module> <argv>`."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", module, *argv]


def launch(nproc: int, module: str, argv: Sequence[str]) -> int:
    """Run `module` in `nproc` processes, the cores shared between them; the exit code (non-zero if any failed)."""
    threads = max(1, (os.cpu_count() or 1) // nproc)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
    return subprocess.call(torchrun_command(nproc, module, argv), env=env)


def _backend() -> str:
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def broadcast_from_rank0(value):
    """Rank 0 decides (e.g. which checkpoint to resume, after cleaning up); the others get the same value."""
    if world_size() == 1:
        return value
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(_backend())
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def all_reduce_sum(values: list[int]) -> list[int]:
    """Element-wise sum of per-process counts (the values themselves in a single process)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return [int(v) for v in t.tolist()]
