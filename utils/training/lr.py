"""Learning-rate schedules, stepped once per epoch (``scheduler.step()`` after each epoch).

- ``constant``: the base lr every epoch.
- ``seed`` (the seed's stage 2): constant for the first ``11 * update_ratio_epoch`` epochs (the
  e2h ratio reaches 1 at epoch ``10 * update_ratio_epoch``, then trains one more period at full
  difficulty), then x0.975 every epoch: ``lr(e) = lr * 0.975 ** max(0, e + 1 - 11 * u)`` for the
  0-based epoch ``e``, so epoch ``11 * u`` is the first at ``0.975 * lr``.
- ``cosine``: ``lr(e) = lr * (1 + cos(pi * e / epoch_num)) / 2``.
"""
import functools
import math

from torch.optim.lr_scheduler import LambdaLR

from utils.constants import LR_SCHEDULES


def lr_factor(epoch, schedule="constant", epoch_num=1, update_ratio_epoch=10):
    """Multiplier of the base lr at 0-based ``epoch``.

    >>> [round(lr_factor(e, "seed", update_ratio_epoch=1), 4) for e in range(10, 14)]
    [1.0, 0.975, 0.9506, 0.9269]
    >>> lr_factor(5, "cosine", epoch_num=10)
    0.5
    """
    if schedule == "constant":
        return 1.0
    if schedule == "seed":
        return 0.975 ** max(0, epoch + 1 - 11 * update_ratio_epoch)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / epoch_num))
    raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {schedule!r}")


def build_scheduler(optimizer, settings):
    """A LambdaLR for ``settings.lr_schedule`` (stage 1 has no update_ratio_epoch: 10 is used).

    Its state_dict holds plain numbers only, so it goes into a ``weights_only`` checkpoint.
    """
    factor = functools.partial(lr_factor, schedule=settings.lr_schedule, epoch_num=settings.epoch_num,
                               update_ratio_epoch=getattr(settings, "update_ratio_epoch", 10))
    lr_factor(0, settings.lr_schedule)  # fail early on an unknown name
    return LambdaLR(optimizer, factor)
