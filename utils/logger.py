"""Keep the training loop to the step itself: running averages, a progress bar and the CSV log.

``MetricLogger`` holds named ``SmoothedValue``s (window median for the bar, exact weighted mean
for the epoch's row; the engine feeds it numbers already summed over the processes), and wraps the loader in a tqdm bar shown on
the main process only. ``CSVLog`` appends one row per epoch to ``train_log.csv`` and, on resume,
drops the rows of epochs that are about to be trained again.
"""
import collections
import csv
import math
import os
import sys

from tqdm import tqdm

from .fileio import atomic_open


class SmoothedValue:
    """A series of numbers: the median of the last ``window`` values and the weighted global mean."""

    def __init__(self, window=20):
        self.values = collections.deque(maxlen=window)
        self.total = 0.0
        self.count = 0.0

    def update(self, value, n=1):
        self.values.append(value)
        self.total += value * n
        self.count += n

    @property
    def median(self):
        return sorted(self.values)[len(self.values) // 2] if self.values else math.nan

    @property
    def global_avg(self):
        return self.total / self.count if self.count else math.nan


class MetricLogger:
    """Named SmoothedValues plus a tqdm bar over an iterable (main process only).

    >>> log = MetricLogger()
    >>> log.update(loss=2.0, n=2); log.update(loss=4.0, n=2)
    >>> log.averages()
    {'loss': 3.0}
    """

    def __init__(self, window=20):
        self.meters = collections.defaultdict(lambda: SmoothedValue(window))

    def update(self, n=1, **values):
        """Add ``values`` (floats or 0-d tensors), each weighted by ``n`` samples."""
        for name, value in values.items():
            self.meters[name].update(float(value), n)

    def averages(self):
        return {name: meter.global_avg for name, meter in self.meters.items()}

    def progress(self, iterable, desc, enabled=True, total=None):
        """``iterable`` wrapped in a tqdm bar (a plain iterator when not ``enabled``)."""
        return tqdm(iterable, desc=desc, total=total, disable=not enabled, dynamic_ncols=True,
                    leave=True, file=sys.stderr)

    def postfix(self, bar, **extra):
        """Show the window medians of the meters and ``extra`` items on ``bar``."""
        if getattr(bar, "disable", True):
            return
        items = {"loss": f"{m.median:.4f}" for k, m in self.meters.items() if k in ("total", "loss")}
        items.update(extra)
        bar.set_postfix(items, refresh=False)


class CSVLog:
    """``train_log.csv``: one row per epoch, columns fixed by the first row.

    ``start_epoch``: rows whose ``epoch`` is at or after it are dropped (a resumed run re-trains
    them), so the log of a resumed run equals that of an uninterrupted one.
    """

    def __init__(self, path, start_epoch=0):
        self.path = path
        self.rows = []
        if os.path.exists(path):
            with open(path, newline="") as f:
                self.rows = [row for row in csv.DictReader(f) if int(row["epoch"]) < start_epoch]
            self._rewrite()

    def append(self, row):
        """Add ``row`` (a dict); numbers are written with full float precision."""
        row = {k: (repr(float(v)) if isinstance(v, float) else v) for k, v in row.items()}
        self.rows.append(row)
        self._rewrite()

    def _rewrite(self):
        if not self.rows:
            if os.path.exists(self.path):
                os.remove(self.path)
            return
        with atomic_open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(self.rows[0]))
            writer.writeheader()
            writer.writerows(self.rows)

    def read(self):
        """The rows as dicts of floats (the ``epoch`` column as int)."""
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in self.rows]
