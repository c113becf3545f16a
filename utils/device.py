"""Device and mixed-precision choices shared by every script."""
import platform
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


def cpu_bf16_native():
    """True when this CPU runs bf16 matrix maths natively: AVX512-BF16 or AMX on x86 (ARM: the
    bf16 extension), as oneDNN sees it. Elsewhere oneDNN emulates bf16, several times slower
    than fp32 (8-15x measured on an AVX2 CPU)."""
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
        if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86"):
            # oneDNN also reports bf16 "supported" on plain AVX-512 CPUs, where it is emulated
            return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        return True
    except (AttributeError, RuntimeError):  # a build without these checks: assume emulation
        return False


def cuda_bf16_native(device=None):
    """True when the CUDA GPU computes in bf16 natively (compute capability 8.0 or newer), not
    through the emulation ``torch.cuda.is_bf16_supported()`` also counts."""
    try:
        with torch.cuda.device(device):
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # an older torch without ``including_emulation``
        return torch.cuda.get_device_capability(device)[0] >= 8


def amp_dtype(device, amp="auto"):
    """The autocast dtype for ``amp`` (auto | off | bf16 | fp16) on ``device``; None means fp32.

    auto: bf16 where the device computes it natively (CUDA GPUs of compute capability 8.0 or
    newer; CPUs with AVX512-BF16 or AMX, where a U2NETP training step is ~2.5-3x an fp32 one);
    fp16 (with a GradScaler, see ``utils.training.engine``) on other CUDA GPUs; fp32 on other
    CPUs. Explicit ``bf16`` is refused (ValueError) on a CPU or GPU that would only emulate it.
    """
    if amp == "off":
        return None
    if amp not in ("auto", "bf16", "fp16"):
        raise ValueError(f"amp must be one of auto, off, bf16, fp16; got {amp!r}")
    native_bf16 = cuda_bf16_native(device) if device.type == "cuda" else cpu_bf16_native()
    if amp == "bf16":
        if not native_bf16:
            where = ("this GPU (compute capability < 8.0)" if device.type == "cuda"
                     else "this CPU (no AVX512-BF16 or AMX)")
            raise ValueError(f"amp=bf16: {where} only emulates bf16, several times slower than fp32; "
                             f"use amp=auto" + (" (fp16)" if device.type == "cuda" else " or amp=off"))
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if native_bf16:
        return torch.bfloat16
    return torch.float16 if device.type == "cuda" else None
