"""Device and mixed-precision choices shared by every script."""
import warnings

import torch


def resolve_device(name="auto", training=False):
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> torch.device, always with an index on CUDA.

    ``auto`` picks ``cuda:0`` when a GPU is present (``CUDA_VISIBLE_DEVICES`` chooses which);
    for training it warns when that means the CPU. ``cuda`` is ``cuda:0``: an unindexed CUDA
    device is refused by ``torch.cuda.set_device`` and names no GPU in DDP's ``device_ids``.
    Under torchrun ``utils.distributed.init_distributed_mode`` gives each process
    ``cuda:LOCAL_RANK`` instead.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        if training:
            warnings.warn("no CUDA GPU found: training on the CPU, which is much slower", stacklevel=2)
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"device {name!r} is not a device name (auto, cpu, cuda, cuda:N)") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but no CUDA GPU is available")
        if device.index is None:
            device = torch.device("cuda", 0)
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} asked for, but only {torch.cuda.device_count()} GPU(s) exist")
    elif device.type != "cpu":
        raise ValueError(f"device {name!r}: only auto, cpu, cuda and cuda:N are supported")
    return device


def amp_dtype(device, amp="auto"):
    """The autocast dtype for ``amp`` (auto | off | bf16 | fp16) on ``device``; None means fp32.

    auto: bf16 on CUDA GPUs that support it, else fp16; off on the CPU (bf16 autocast only pays
    on CPUs with native bf16, so ask for it explicitly there).
    """
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None
