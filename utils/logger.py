"""Keep the training loop to the step itself: running averages, a progress bar and the CSV log.

``MetricLogger`` holds named ``SmoothedValue``s (window median for the bar, exact weighted mean
for the epoch's row; the engine feeds it numbers already summed over the processes), and wraps the loader in a tqdm bar shown on
the main process only. ``CSVLog`` writes ``train_log.csv`` from the rows its owner holds.
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
    """``train_log.csv``, a view of rows held elsewhere (by a training run: the rows its
    ``checkpoint.pth`` holds): each ``write`` rewrites the whole file atomically from the rows
    given, so the file never holds a row its owner has not committed.

    Rows are dicts of numbers, columns in the order of the first row; floats are written with
    full precision (``repr``), so ``read_file`` gives back the same numbers.
    """

    def __init__(self, path, rows=()):
        self.path = path
        self.rows = [dict(row) for row in rows]

    def write(self, rows):
        """Make the file hold exactly ``rows`` (no rows: no file)."""
        self.rows = [dict(row) for row in rows]
        if not self.rows:
            if os.path.exists(self.path):
                os.remove(self.path)
            return
        with atomic_open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(self.rows[0]))
            writer.writeheader()
            writer.writerows({k: (repr(float(v)) if isinstance(v, float) else v) for k, v in row.items()}
                             for row in self.rows)

    def read(self):
        """The rows as dicts of floats (the ``epoch`` column as int)."""
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in self.rows]

    @staticmethod
    def read_file(path):
        """The rows of the CSV file ``path`` as ``read`` gives them; [] when there is no file."""
        if not os.path.exists(path):
            return []
        with open(path, newline="") as f:
            return CSVLog(path, csv.DictReader(f)).read()
