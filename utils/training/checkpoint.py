"""Training checkpoints: atomic writes, plain weight files, RNG states, resume, starting weights.

Two kinds of files, both readable with ``torch.load(path, weights_only=True)``:
- weight files (``model/<model_name>_epoch<N>.pth``, ``model/best.pth``): the plain
  ``state_dict`` of the unwrapped network (no ``module.``/``_orig_mod.`` prefixes, contiguous CPU
  tensors), which the original U-2-Net code loads as it is;
- ``checkpoint.pth``: ``{"model", "optimizer", "scheduler", "scaler", "epoch", "best_mad",
  "best_epoch", "rng", "e2h", "settings", "arch", "world_size", "training_set", "log",
  "epoch_weights", "grid_png"}`` with tensors and plain Python types only. ``training_set``
  (``data_loader.indexing.training_set_record``: the training files' names, sizes and mtimes)
  lets a resume refuse a changed set; the scheduler's state holds its lr curve
  (``lr.LRFactor``); the last three (the log rows so far, the name of the epoch's weight file
  or "", the validation grid as PNG bytes in a uint8 tensor) are what
  ``run_folder.RunFolder.write_derived`` rebuilds the epoch's other files from.
Every file is written to a temporary name in the same folder and renamed over the old one
(``os.replace``), so a run killed at any moment leaves either the old file or the new one;
every file is also flushed to the disk (fsync) before the rename, and its folder after it:
``checkpoint.pth`` is the commit point.
"""
import os
import pickle
import random
import zipfile
import warnings

import numpy as np
import torch

from model import CheckpointError, load_state_dict_any, load_weights, unwrap
from utils.distributed import gather_objects
from utils.fileio import atomic_open

CHECKPOINT_NAME = "checkpoint.pth"


def atomic_save(obj, path):
    """``torch.save(obj, path)`` through a temporary file and ``os.replace``."""
    with atomic_open(path, "wb", fsync=True) as f:
        torch.save(obj, f)


def plain_state_dict(model):
    """The unwrapped network's state_dict as contiguous CPU tensors."""
    return {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}


def save_weights(model, path):
    """Write the plain state_dict of ``model`` (unwrapped) to ``path`` atomically."""
    atomic_save(plain_state_dict(model), path)


# ---- random number generators -------------------------------------------------------------

def capture_rng_state():
    """This process's RNG states (torch CPU and CUDA, numpy, python) as tensors and plain types."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
    }


def restore_rng_state(state):
    """Inverse of ``capture_rng_state``."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"].tolist()), p["gauss"]))


def gather_rng_states():
    """Every rank's RNG state, in rank order (a collective call under torchrun)."""
    return gather_objects(capture_rng_state())


# ---- checkpoint.pth ------------------------------------------------------------------------

def save_checkpoint(run_dir, state):
    """Write ``state`` (a dict of tensors and plain types) to ``run_dir/checkpoint.pth`` atomically."""
    atomic_save(state, os.path.join(run_dir, CHECKPOINT_NAME))


def has_checkpoint(run_dir):
    """Whether ``run_dir`` holds a ``checkpoint.pth`` (at least one epoch committed)."""
    return os.path.isfile(os.path.join(run_dir, CHECKPOINT_NAME))


def load_checkpoint(run_dir):
    """Read ``run_dir/checkpoint.pth`` (``weights_only=True``); CheckpointError if it is missing or bad."""
    path = os.path.join(run_dir, CHECKPOINT_NAME)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no checkpoint to resume from (the run finished no epoch?)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or damaged?): {err}") from err
    missing = {"model", "optimizer", "scheduler", "epoch"} - set(ckpt if isinstance(ckpt, dict) else ())
    if missing:
        raise CheckpointError(f"{path}: not a training checkpoint (missing {sorted(missing)})")
    return ckpt


def restore_rng_for_rank(ckpt, rank, world_size):
    """Put back this rank's RNG state; with another world size, warn and keep the fresh seeds."""
    states = ckpt.get("rng") or []
    if len(states) == world_size:
        restore_rng_state(states[rank])
    else:
        warnings.warn(f"the checkpoint was written by {len(states)} process(es), this run has {world_size}: "
                      "random streams are not continued exactly", stacklevel=2)


# ---- starting weights ----------------------------------------------------------------------

def load_starting_weights(model, path, arch):
    """Load the weights in ``path`` into ``model``; their architecture must be ``arch``.

    A mismatch is an error (not silently adopted: the network's size, the weight file names
    and the speed would all change behind the user's back); the message says what to set.
    """
    state_dict, detected = load_state_dict_any(path)
    if detected != arch:
        raise CheckpointError(f"{path}: holds {detected} weights, but the settings say arch={arch!r}; "
                              f"add --set arch={detected} (and model_name) or name other weights "
                              f"with --set model_path=... --set pth_name=...")
    return load_weights(model, state_dict, source=os.fspath(path))
