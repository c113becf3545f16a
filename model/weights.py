"""Load U^2-Net weights from any of the files people have.

Accepted: a plain state_dict (the original U-2-Net releases, the seed's releases, ours), a
training checkpoint of ours (``{"model": state_dict, ...}``), and keys prefixed by ``module.``
(DataParallel/DDP) or ``_orig_mod.`` (torch.compile). The architecture is read from the weights.
"""
import os
import pickle
import re
import struct
import zipfile

import torch

from utils.constants import ARCHITECTURES

from .u2net import build_model


class CheckpointError(ValueError):
    """A weight file that cannot be used; the message names the file and the reason."""


_PREFIXES = ("module.", "_orig_mod.")
# stage1.rebnconvin.conv_s1.weight has shape (64, in_ch, 3, 3) in both; stage1's mid channels differ.
_ARCH_BY_STAGE1_MID = {32: "u2net", 16: "u2netp"}


def strip_prefixes(state_dict):
    """Remove any mix of ``module.`` / ``_orig_mod.`` prefixes from every key."""
    clean = {}
    for key, value in state_dict.items():
        while key.startswith(_PREFIXES):
            key = key.split(".", 1)[1]
        clean[key] = value
    return clean


def unwrap(model):
    """The plain network inside DataParallel/DDP (``.module``) and ``torch.compile``
    (``._orig_mod``) wrappers, however nested."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def detect_arch(state_dict):
    """Return ``"u2net"`` or ``"u2netp"`` from the weights; None if they are neither."""
    weight = state_dict.get("stage1.rebnconv1.conv_s1.weight")
    if not torch.is_tensor(weight) or weight.ndim != 4:
        return None
    return _ARCH_BY_STAGE1_MID.get(weight.shape[0])


def _summarise(keys, limit=5):
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > limit else ''})"


def load_state_dict_any(path):
    """Read ``path`` and return ``(state_dict, arch)`` with prefixes removed.

    Raises CheckpointError naming the file for a missing, truncated or foreign file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such weight file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError,
            KeyError, IndexError, struct.error) as err:
        # torch's own message runs to many lines and advises loading with weights_only=False,
        # the wrong advice for a file that may be malicious: keep only what it found.
        text = str(err).strip()
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if text.startswith("Weights only load failed"):
            reason = ("it holds Python objects other than tensors" + (f" ({found.group(1)})" if found else "")
                      + "; refused, as loading them could run code")
        else:
            reason = text.splitlines()[0][:200] if text else type(err).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch weight file (truncated, damaged or "
                              f"another format): {reason}") from err
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]  # a training checkpoint of ours
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state_dict of tensors")
    state_dict = strip_prefixes(obj)
    arch = detect_arch(state_dict)
    if arch is None:
        raise CheckpointError(
            f"{path}: not U2NET/U2NETP weights (no stage1.rebnconv1.conv_s1.weight of 32 or 16 channels)")
    return state_dict, arch


def load_weights(model, state_dict, source="weights", assign=False):
    """Load ``state_dict`` into ``model`` strictly, summarising mismatches in one error.

    ``assign``: make the tensors of ``state_dict`` the model's own instead of copying them (for
    a model built on the meta device: no second copy of the weights in memory)."""
    expected = model.state_dict()
    missing = expected.keys() - state_dict.keys()
    unexpected = state_dict.keys() - expected.keys()
    wrong_shape = [k for k in expected.keys() & state_dict.keys() if expected[k].shape != state_dict[k].shape]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"missing keys {_summarise(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_summarise(unexpected)}")
        if wrong_shape:
            parts.append(f"keys of another shape {_summarise(wrong_shape)}")
        raise CheckpointError(f"{source}: does not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state_dict, assign=assign)
    return model


def load_model(path, arch=None, device="cpu"):
    """Build the network the weights in ``path`` belong to, load them, return it in eval mode.

    ``arch`` ("u2net" | "u2netp"), when given, must agree with the weights.
    """
    state_dict, detected = load_state_dict_any(path)
    if arch is not None and arch != detected:
        if arch not in ARCHITECTURES:
            raise CheckpointError(f"{path}: unknown architecture {arch!r}")
        raise CheckpointError(f"{path}: holds {detected} weights, but arch={arch!r} was asked for")
    # Built on the meta device, the network gets the loaded tensors themselves: no random
    # initialisation (0.6 s for U2NET) and no second 176 MB copy of the weights.
    with torch.device("meta"):
        model = build_model(detected)
    state_dict = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    model = load_weights(model, state_dict, source=os.fspath(path), assign=True)
    return model.to(device).eval()
