"""Learning-rate schedules, stepped once per epoch (``scheduler.step()`` after each epoch).

- ``constant``: the base lr every epoch.
- ``seed`` (the seed's stage 2): the base lr while ``epoch <= 11 * update_ratio_epoch`` (the
  e2h ratio reaches 1 at epoch ``10 * update_ratio_epoch``, then trains one more period at full
  difficulty, and one epoch more: the seed's test is ``<=``), then x0.975 every epoch:
  ``lr(e) = lr * 0.975 ** max(0, e - 11 * u)`` for the 0-based epoch ``e``, so epoch
  ``11 * u + 1`` is the first at ``0.975 * lr``.
- ``cosine``: ``lr(e) = lr * (1 + cos(pi * e / epoch_num)) / 2``. A resumed run with a larger
  ``epoch_num`` (an extended run) keeps the epochs it trained and goes on from the lr of its
  last one, ``f``, down a cosine to 0 at the new end: ``lr(e) = lr * f * (1 + cos(pi * (e - k)
  / (epoch_num - k))) / 2`` after its last epoch ``k`` (``extend_schedule``). Recomputing the
  curve for the new ``epoch_num`` would raise the lr of the epochs still to come, a jump.
"""
import math

from torch.optim.lr_scheduler import LambdaLR

from utils.constants import LR_SCHEDULES


def lr_factor(epoch, schedule="constant", epoch_num=1, update_ratio_epoch=10):
    """Multiplier of the base lr at 0-based ``epoch``.

    >>> [round(lr_factor(e, "seed", update_ratio_epoch=1), 4) for e in range(10, 14)]
    [1.0, 1.0, 0.975, 0.9506]
    >>> lr_factor(5, "cosine", epoch_num=10)
    0.5
    """
    if schedule == "constant":
        return 1.0
    if schedule == "seed":
        return 0.975 ** max(0, epoch - 11 * update_ratio_epoch)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / epoch_num))
    raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {schedule!r}")


class LRFactor:
    """The lr multiplier as a callable object: LambdaLR saves its attributes (plain numbers and
    strings) in its state_dict, so a checkpoint holds the curve a run trained on, and a resume
    continues that curve (``extend_schedule``), not one recomputed from new settings.

    ``since``: None, or ``[k, f, end]`` after an extension: from epoch ``k`` (factor ``f``) a
    cosine to 0 at ``end``."""

    def __init__(self, schedule, epoch_num, update_ratio_epoch):
        self.schedule, self.epoch_num, self.update_ratio_epoch = schedule, epoch_num, update_ratio_epoch
        self.since = None

    def __call__(self, epoch):
        if self.since is not None and epoch > self.since[0]:
            k, f, end = self.since
            return f * 0.5 * (1.0 + math.cos(math.pi * min(epoch - k, end - k) / (end - k)))
        return lr_factor(epoch, self.schedule, self.epoch_num, self.update_ratio_epoch)


def build_scheduler(optimizer, settings):
    """A LambdaLR of an ``LRFactor`` for ``settings.lr_schedule`` (stage 1 has no
    update_ratio_epoch: 10 is used).

    Its state_dict holds plain numbers only, so it goes into a ``weights_only`` checkpoint.
    """
    lr_factor(0, settings.lr_schedule)  # fail early on an unknown name
    factor = LRFactor(settings.lr_schedule, settings.epoch_num, getattr(settings, "update_ratio_epoch", 10))
    return LambdaLR(optimizer, factor)


def extend_schedule(scheduler, epoch_num):
    """After a resume (``scheduler.load_state_dict``): make the schedule end at ``epoch_num``.

    For ``cosine`` with a new ``epoch_num`` larger than the epochs trained, the curve goes on
    from the lr of the last trained epoch down to 0 at ``epoch_num`` (module docstring); the
    optimizer's lr is set for the next epoch. Returns a note saying so, or None (no change:
    the same ``epoch_num``, or a schedule that does not depend on it).
    """
    factor = scheduler.lr_lambdas[0]
    if not isinstance(factor, LRFactor) or factor.epoch_num == epoch_num:
        return None
    last = scheduler.last_epoch - 1  # the last trained epoch (stepped once after each)
    if factor.schedule != "cosine" or last < 0 or epoch_num <= last + 1:
        factor.epoch_num = epoch_num  # no curve of its own depends on it (or no epoch left to shape)
        return None
    old, f = factor.epoch_num, factor(last)  # the factor the last epoch trained with, by the old curve
    factor.epoch_num, factor.since = epoch_num, [last, f, epoch_num]
    for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base * factor(scheduler.last_epoch)
    return (f"lr_schedule=cosine extended from epoch_num {old} to {epoch_num}: after epoch {last} "
            f"(factor {factor.since[1]:.4g}) the lr goes down a cosine to 0 at epoch {epoch_num}")
