"""One code path for one process and many: rank detection, reductions, seeding.

``torchrun --nproc_per_node=N script.py`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; with
N > 1 the processes join a group (NCCL on GPUs, gloo on the CPU). ``python script.py`` and
``torchrun --nproc_per_node=1`` run as a single process with no group; every helper below then
does the single-process thing (a reduction returns its input), so the training code never
branches on it.
"""
import datetime
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


def init_distributed_mode(device="auto", training=True):
    """Read the torchrun environment, join the process group when there are several processes.

    ``device`` is the settings' ``auto | cpu | cuda | cuda:N``. One process: ``auto`` and ``cuda``
    mean ``cuda:0`` (pick the GPU with ``CUDA_VISIBLE_DEVICES``), ``cuda:N`` is GPU N. Under
    torchrun with several processes and CUDA each process takes ``cuda:LOCAL_RANK`` (NCCL);
    ``cuda:N`` is refused there (every rank would share GPU N); on the CPU the group uses gloo.
    The CUDA device is made current (``torch.cuda.set_device``). ``training``: warn (rank 0) when
    ``auto`` finds no GPU; inference scripts (apply.py, make_dataset.py) pass False. Returns a DistInfo.
    """
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    torch_device = _process_device(device, rank, world_size, local_rank, training)
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


def _process_device(device, rank, world_size, local_rank, training=True):
    """The torch.device of this process (see ``init_distributed_mode``); ValueError for
    ``cuda:N`` under torchrun or more processes on a machine than it has GPUs."""
    torch_device = resolve_device(device, training=training and rank == 0)
    if world_size == 1 or torch_device.type != "cuda":
        return torch_device
    if device not in ("auto", "cuda"):
        raise ValueError(f"device={device!r} under torchrun ({world_size} processes): each process takes "
                         f"cuda:LOCAL_RANK, so set device=cuda (or auto) and choose the GPUs with "
                         f"CUDA_VISIBLE_DEVICES, e.g. CUDA_VISIBLE_DEVICES=2,3 torchrun --nproc_per_node=2 ...")
    if local_rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK {local_rank} has no GPU: this machine shows {torch.cuda.device_count()} "
                         f"GPU(s); start at most that many processes per machine (--nproc_per_node)")
    return torch.device("cuda", local_rank)


def is_dist_avail_and_initialized():
    return dist.is_available() and dist.is_initialized()


def get_rank():
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def get_world_size():
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def is_main_process():
    return get_rank() == 0


def all_reduce_sum(tensor):
    """Sum ``tensor`` over the processes, in place, and return it (unchanged with one process)."""
    if is_dist_avail_and_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_objects(obj):
    """``obj`` (picklable) of every process, in rank order; ``[obj]`` with one process."""
    if not is_dist_avail_and_initialized():
        return [obj]
    gathered = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


_LONG_WAIT_GROUP = None  # a gloo group for waits longer than NCCL's watchdog allows


def wait_for_all(timeout, what="the other processes"):
    """Block until every process gets here, for up to ``timeout`` (datetime.timedelta).

    For waits of unknown length (one rank still estimating foregrounds while the others are
    done): a gloo ``monitored_barrier`` in a group of its own, so NCCL's watchdog (10 minutes
    by default) never sees the wait, and a rank that does not arrive in time is named in the
    error instead of hanging the run. No-op with one process.
    """
    global _LONG_WAIT_GROUP
    if not is_dist_avail_and_initialized():
        return
    if _LONG_WAIT_GROUP is None:  # every rank creates it at its first call (a collective)
        _LONG_WAIT_GROUP = dist.new_group(backend="gloo", timeout=max(timeout, datetime.timedelta(hours=1)))
    try:
        dist.monitored_barrier(group=_LONG_WAIT_GROUP, timeout=timeout, wait_all_ranks=True)
    except RuntimeError as err:
        raise RuntimeError(f"rank {get_rank()}: waited {timeout} for {what}, in vain: {err}") from err


def broadcast_buffers(module, src=0):
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank, in place.

    Under DDP the parameters stay equal on every rank, but each rank's last forward pass updates
    the BatchNorm statistics with its own batch; validating after this scores the weights rank 0
    saves on every rank. No-op with one process.
    """
    if not is_dist_avail_and_initialized():
        return
    buffers = [b for b in module.buffers() if b.numel()]
    for dtype in sorted({b.dtype for b in buffers}, key=str):  # one broadcast per dtype
        same = [b for b in buffers if b.dtype == dtype]
        flat = torch.cat([b.detach().reshape(-1) for b in same])
        dist.broadcast(flat, src)
        for b, part in zip(same, flat.split([b.numel() for b in same])):
            b.detach().copy_(part.view_as(b))


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
