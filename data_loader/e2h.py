"""Easy-to-hard (e2h) schedule, and the epoch counter that DataLoader workers can see.

``ratio`` is the weight of the hard (real photo) background in the composite; see
``compositing.composite``.
"""
import math
from dataclasses import dataclass

import torch

from utils.constants import E2H_SCHEDULES


@dataclass(frozen=True)
class E2HSchedule:
    """The e2h ratio as a function of the (0-based) stage-2 epoch.

    - ``step`` (the seed's): ``min(floor(epoch / update_ratio_epoch) * 0.1, 1.0)``
    - ``linear``: ``min(epoch / ramp_epochs, 1.0)``
    - ``none``: ``1.0`` always (training without e2h)

    >>> E2HSchedule("step", update_ratio_epoch=10).ratio(25)
    0.2
    """
    kind: str = "step"
    update_ratio_epoch: int = 10
    ramp_epochs: int = 100

    def __post_init__(self):
        if self.kind not in E2H_SCHEDULES:
            raise ValueError(f"e2h schedule must be one of {E2H_SCHEDULES}, got {self.kind!r}")
        if self.kind == "step" and self.update_ratio_epoch < 1:
            raise ValueError(f"update_ratio_epoch must be >= 1, got {self.update_ratio_epoch}")
        if self.kind == "linear" and self.ramp_epochs <= 0:
            raise ValueError(f"ramp_epochs must be > 0, got {self.ramp_epochs}")

    def ratio(self, epoch):
        """Float in [0,1] for ``epoch`` (int >= 0)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if self.kind == "step":
            return min(math.floor(epoch / self.update_ratio_epoch) / 10.0, 1.0)
        if self.kind == "linear":
            return min(epoch / self.ramp_epochs, 1.0)
        return 1.0


class SharedEpoch:
    """An int in shared memory: set in the main process, read in DataLoader workers.

    Workers hold a copy of the dataset made when they start; a persistent worker keeps that
    copy across epochs, so a plain attribute set later would never reach it. The value lives
    in a shared-memory tensor, which forked workers map and spawned workers receive by handle
    (torch.multiprocessing), so ``set`` before ``iter(loader)`` is seen by every worker.
    """

    def __init__(self, epoch=0):
        self._value = torch.zeros((), dtype=torch.int64).share_memory_()
        self.set(epoch)

    def set(self, epoch):
        epoch = int(epoch)
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._value.fill_(epoch)

    def get(self):
        return int(self._value.item())
