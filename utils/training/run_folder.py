"""The results folder of a training run, written by the main process only.

``<results_dir>/<project_name>_<timestamp>/``::

    start.json                    the starting weights: their path and sha256, or null (the seed's init)
    settings.json                 the resolved settings
    checkpoint.pth                the commit point: everything needed to resume exactly, and to
                                  rebuild every file below
    train_log.csv                 one row per epoch (see COLUMNS)
    model/<model_name>_epoch<N>.pth, model/best.pth   plain state_dicts (best: lowest val MAD)
    image/epoch<N>.png            validation grid: input | ground truth | prediction | cut-out
    curves.png                    losses and validation metrics over the epochs

Epochs are numbered from 0 everywhere (the CSV, the file names, the e2h schedule).

**One commit point.** Epoch N is done when its ``checkpoint.pth`` is in place (temporary file,
fsync, rename). It is written *first* at the end of the epoch and holds, besides the training
state, everything the other files of the epoch are made from: the log rows so far, the epoch of
the best weights, the name of the epoch's weight file and the validation grid as PNG bytes. The
other files are derived: ``write_derived`` makes them from the checkpoint alone, at the end of
the epoch and again on resume. Since a checkpoint is written only after the derived files of
the epoch before are complete, every derived file of the epochs before the last committed one
is complete on disk, and the last committed epoch's are rewritten on resume: a run killed at
any instant resumes to the files of an uninterrupted run. Nothing is ever written for an epoch
that is not committed. A run killed before its first checkpoint starts again from epoch 0, with
the settings of its ``settings.json`` and the weights its ``start.json`` names.
"""
import hashlib
import json
import math
import os
import time

import numpy as np
import torch

from utils.fileio import atomic_open, atomic_write, remove_temporaries
from utils.logger import CSVLog
from utils.plots import preview_grid_png, save_curves
from utils.runs import run_settings_path
from utils.settings import settings_to_dict
from model import CheckpointError
from .checkpoint import atomic_save, gather_rng_states, plain_state_dict, save_checkpoint
from .engine import VAL_METRICS

COLUMNS = ("epoch", "lr", "mix_ratio", "train_loss", "train_fused", "train_sides", "train_unknown",
           "val_loss", "val_sad", "val_mse", "val_mad", "val_grad", "val_conn", "images_per_s", "seconds")
TIMING_COLUMNS = ("images_per_s", "seconds")
START_FILE = "start.json"


def create_run_dir(results_dir, project_name):
    """Make a new ``<results_dir>/<project_name>_<YYYYmmdd_HHMMSS>[_k]/`` and return its path."""
    stamp = time.strftime("%Y%m%d_%H%M%S")
    for k in range(1000):
        run_dir = os.path.join(results_dir, f"{project_name}_{stamp}" + (f"_{k}" if k else ""))
        try:
            os.makedirs(run_dir)
            break
        except FileExistsError:
            continue
    return run_dir


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def recorded_start(run_dir):
    """The starting weight file a run's ``start.json`` names (None: the seed's random
    initialisation), for a run resumed before its first checkpoint: the file must hold the same
    bytes as when the run started (sha256), so that training again from epoch 0 gives the
    uninterrupted run. ``False`` when there is no ``start.json`` (a run of an older version).
    Raises CheckpointError for a start file gone or changed since."""
    record = os.path.join(run_dir, START_FILE)
    if not os.path.isfile(record):
        return False
    try:
        with open(record) as f:
            start = json.load(f)
        path, digest = start.get("weights"), start.get("sha256")
    except (OSError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{record}: not readable ({err}); it names the run's starting weights") from err
    if path is None:
        return None
    if not os.path.isfile(path) or _sha256(path) != digest:
        raise CheckpointError(f"{record}: the run started from {path}, which is "
                              f"{'gone' if not os.path.isfile(path) else 'changed since'}; it stopped before "
                              f"its first checkpoint, so it cannot be resumed as it was: start a new run")
    return path


class RunFolder:
    """Writes a run's results; on ranks other than 0 every method does nothing but take part
    in the collective RNG gathering of ``end_epoch``.

    ``start``: the starting weight file, recorded in ``start.json`` of a new run.
    ``checkpoint``: the resumed run's checkpoint dict (None: a new run, or a resumed run
    stopped before its first checkpoint); the files of its epoch are rewritten from it.
    ``training_set``: ``data_loader.indexing.training_set_record`` of the training split,
    written into every checkpoint, so that a resume can tell whether the files changed.
    """

    def __init__(self, settings, dist, start=None, checkpoint=None, training_set=None):
        self.settings, self.dist, self.training_set = settings, dist, training_set
        self.path = None
        if not dist.is_main:
            return
        if settings.resume:
            self.path = settings.resume
            for folder in (self.path, self.file("model"), self.file("image")):
                os.makedirs(folder, exist_ok=True)
                remove_temporaries(folder)  # what a writer killed mid-write left
        else:
            self.path = create_run_dir(settings.results_dir, settings.project_name)
            for sub in ("model", "image"):
                os.makedirs(self.file(sub))
            # start.json before settings.json: a folder with settings.json has both
            record = {"weights": os.path.abspath(start), "sha256": _sha256(start)} if start else {"weights": None}
            atomic_write(self.file(START_FILE), json.dumps(record, indent=2).encode())
        atomic_write(run_settings_path(self.path), json.dumps(settings_to_dict(settings), indent=2).encode())
        self.log = CSVLog(self.file("train_log.csv"))
        if settings.resume:
            self._resume(checkpoint, start)

    def _resume(self, checkpoint, start):
        """Rewrite the files of the checkpoint's epoch (or, without one, remove the log) and say so."""
        if checkpoint is not None:
            self.write_derived(_with_log(checkpoint, self.log.path))
            print(f"resume: {self.path}: continuing after epoch {checkpoint['epoch']}, the last one its "
                  f"checkpoint.pth holds; that epoch's files were rewritten from the checkpoint")
            return
        self.log.write([])
        print(f"resume: {self.path} has no checkpoint.pth (it stopped before its first epoch ended): "
              f"training it again from epoch 0 with its settings.json and "
              + (f"its starting weights {start}" if start else
                 f"the random initialisation of seed {self.settings.seed}"))

    def file(self, *parts):
        return os.path.join(self.path, *parts)

    def end_epoch(self, epoch, state, lr, train, val, previews, e2h=None):
        """Commit the epoch: ``checkpoint.pth`` first, then its derived files (``write_derived``).

        ``lr``: the lr the epoch trained with; ``train``/``val``: the dicts of
        ``train_one_epoch``/``validate``; ``previews``: ``validate``'s; ``e2h``: plain dict
        describing the e2h state. Collective (RNG states of every rank). Updates
        ``state.best_mad``/``best_epoch``; returns True when this epoch is the best so far.
        """
        mad = val["mad"]
        is_best = math.isnan(mad) or mad < state.best_mad  # no validation images: best = latest
        if is_best:
            state.best_mad, state.best_epoch = mad, epoch
        rng = gather_rng_states()
        if not self.dist.is_main:
            return is_best
        s = self.settings
        row = {"epoch": epoch, "lr": lr, "mix_ratio": train["mix_ratio"], "train_loss": train["loss"],
               "train_fused": train["fused"], "train_sides": train["sides"], "train_unknown": train["unknown"],
               **{f"val_{k}": val[k] for k in VAL_METRICS},
               "images_per_s": train["images_per_s"], "seconds": train["seconds"] + val["seconds"]}
        row = {k: (int(row[k]) if k == "epoch" else float(row[k])) for k in COLUMNS}
        due = (epoch + 1) % s.save_every == 0 or epoch == s.epoch_num - 1
        ckpt = {
            "model": plain_state_dict(state.net), "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(), "scaler": state.scaler.state_dict(),
            "epoch": epoch, "best_mad": state.best_mad, "best_epoch": state.best_epoch, "rng": rng,
            "e2h": e2h or {}, "settings": settings_to_dict(s), "arch": s.arch, "world_size": self.dist.world_size,
            "training_set": self.training_set or {},
            # what the derived files are made from
            "log": self.log.rows + [row], "epoch_weights": f"{s.model_name}_epoch{epoch}.pth" if due else "",
            "grid_png": torch.from_numpy(np.frombuffer(preview_grid_png(previews), np.uint8).copy()),
        }
        save_checkpoint(self.path, ckpt)  # the commit point
        self.write_derived(ckpt)
        print(f"epoch {epoch}: loss {row['train_loss']:.4f} (fused {row['train_fused']:.4f}), "
              f"mix_ratio {row['mix_ratio']:.3f}, lr {lr:.3g} | val SAD {val['sad']:.3f} MSE {val['mse']:.5f} "
              f"MAD {mad:.5f} Grad {val['grad']:.3f} Conn {val['conn']:.3f}{' (best)' if is_best else ''} | "
              f"{row['images_per_s']:.1f} img/s, {row['seconds']:.1f} s")
        return is_best

    def write_derived(self, ckpt):
        """The files of epoch ``ckpt["epoch"]``, made from its checkpoint alone: its weight file
        (when due), ``best.pth`` (when it is the best epoch), ``image/epoch<N>.png``,
        ``train_log.csv`` and ``curves.png``; each written atomically."""
        epoch = ckpt["epoch"]
        if ckpt.get("epoch_weights"):
            atomic_save(ckpt["model"], self.file("model", ckpt["epoch_weights"]))
        if ckpt.get("best_epoch") == epoch:
            atomic_save(ckpt["model"], self.file("model", "best.pth"))
        if ckpt.get("grid_png") is not None and ckpt["grid_png"].numel():
            atomic_write(self.file("image", f"epoch{epoch}.png"), ckpt["grid_png"].numpy().tobytes())
        self.log.write(ckpt["log"])
        with atomic_open(self.file("curves.png"), "wb") as f:
            save_curves(self.log.read(), f)


def _with_log(ckpt, csv_path):
    """A checkpoint of an older version has no ``log``: its rows are the CSV's up to its epoch
    (that version wrote the CSV before the checkpoint), and its derived files are complete."""
    if "log" in ckpt:
        return ckpt
    rows = [row for row in CSVLog.read_file(csv_path) if row["epoch"] <= ckpt["epoch"]]
    return {**ckpt, "log": rows, "epoch_weights": "", "best_epoch": None, "grid_png": None}
