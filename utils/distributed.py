"""One code path for one process and many: rank detection, reductions, seeding.

``torchrun --nproc_per_node=N script.py`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; with
N > 1 the processes join a group (NCCL on GPUs, gloo on the CPU). ``python script.py`` and
``torchrun --nproc_per_node=1`` run as a single process with no group; every helper below then
does the single-process thing (a reduction returns its input), so the training code never
branches on it.
"""
import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from .device import resolve_device


@dataclass
class DistInfo:
    """Where this process stands: rank, world size, local rank and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self):
        return self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0


def init_distributed_mode(device="auto"):
    """Read the torchrun environment, join the process group when there are several processes.

    ``device`` is the settings' ``auto | cpu | cuda | cuda:N``; under torchrun with CUDA each
    process takes ``cuda:LOCAL_RANK`` (NCCL), on the CPU the group uses gloo.
    Returns a DistInfo.
    """
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if world_size > 1 and device in ("auto", "cuda") and torch.cuda.is_available():
        device = f"cuda:{local_rank}"
    torch_device = resolve_device(device, training=rank == 0)
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    if world_size > 1:
        backend = "nccl" if torch_device.type == "cuda" else "gloo"
        if torch_device.type == "cpu":
            # torchrun leaves each process all the cores; share them instead of oversubscribing.
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
        kwargs = {"device_id": torch_device} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, **kwargs)
    return DistInfo(rank, world_size, local_rank, torch_device)


def is_dist_avail_and_initialized():
    return dist.is_available() and dist.is_initialized()


def get_rank():
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def get_world_size():
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def is_main_process():
    return get_rank() == 0


def barrier():
    if is_dist_avail_and_initialized():
        dist.barrier()


def all_reduce_sum(tensor):
    """Sum ``tensor`` over the processes, in place, and return it (unchanged with one process)."""
    if is_dist_avail_and_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


@contextlib.contextmanager
def main_process_first():
    """Run the block on rank 0 first, then on the others (e.g. building a shared cache once)."""
    if not is_main_process():
        barrier()
    yield
    if is_main_process():
        barrier()


def seed_everything(seed, rank=0):
    """Seed python, numpy and torch (CPU and CUDA) with ``seed + rank``: each rank its own stream."""
    seed = seed + rank
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cleanup():
    """Leave the process group, if one was joined."""
    if is_dist_avail_and_initialized():
        dist.destroy_process_group()
