"""Training-step speed: channels-last, autocast (bf16, fp16) and torch.compile against a plain
fp32 NCHW step, on the CPU or a CUDA GPU.

One step = forward (logits), the L1 + unknown-band loss of utils/training/losses.py, backward and an Adam
update, on a fixed random batch already on the device. Each mode trains its own copy of the same
network; the modes take turns step by step (so a machine shared with other work slows them
alike), and the figure is the median over ``--steps`` steps after ``--warmup`` steps, printed
as seconds per step and images per second.

    python benchmarks/train_step.py                          # U2NET and U2NETP, batch 4, 288 x 288, CPU
    python benchmarks/train_step.py --arch u2netp --steps 10 --threads 2
    python benchmarks/train_step.py --device cuda            # batch 8; adds cl-fp16, GradScaler
    python benchmarks/train_step.py --device cuda --arch u2net --compile --warmup 5

Modes: ``nchw-fp32`` (the baseline), ``cl-fp32`` (channels-last), ``cl-bf16`` (channels-last and
bf16 autocast, fp32 weights and loss), ``cl-fp16`` (CUDA only: fp16 autocast with a
GradScaler, as training's ``amp=fp16``). bf16 pays only where it is native: CPUs with AVX-512
BF16 or AMX, GPUs of compute capability 8.0 (Ampere) or newer; elsewhere it is emulated and
skipped here (``--modes cl-bf16`` forces it). On CUDA the cuDNN settings are training's
(``utils.training.engine.cuda_backends``: autotuned algorithms, TF32 convolutions), each step
ends with ``torch.cuda.synchronize()`` and the peak memory of a step is printed.
``--compile`` wraps every mode's network in ``torch.compile`` (the first steps compile: give
it a few ``--warmup`` steps).
"""
import argparse
import copy
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from model import build_model  # noqa: E402
from utils.device import cpu_bf16_native, cuda_bf16_native  # noqa: E402
from utils.training.engine import LogitsModel, cuda_backends  # noqa: E402
from utils.training.losses import matting_loss  # noqa: E402

MODES = {"nchw-fp32": (False, None), "cl-fp32": (True, None), "cl-bf16": (True, torch.bfloat16),
         "cl-fp16": (True, torch.float16)}


class Stepper:
    """One training setup (network copy, memory format, autocast dtype, Adam, GradScaler for
    fp16) that times a step."""

    def __init__(self, net, batch, channels_last, dtype, device, compile_=False):
        self.images, self.alpha, self.unknown = batch
        self.net, self.dtype, self.device = net.to(device), dtype, device
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
            self.images = self.images.contiguous(memory_format=torch.channels_last)
        self.model = LogitsModel(self.net)
        if compile_:
            self.model = torch.compile(self.model)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=1e-3)
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
        self.net.train()
        self.times, self.peak_bytes = [], 0

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def step(self, record=True):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._sync()
        start = time.perf_counter()
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            logits = self.model(self.images)
        loss = matting_loss(logits, self.alpha, self.unknown)["total"]
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self._sync()
        if record:
            self.times.append(time.perf_counter() - start)
            if self.device.type == "cuda":
                self.peak_bytes = max(self.peak_bytes, torch.cuda.max_memory_allocated(self.device))


def native_bf16(device):
    """True where bf16 autocast runs natively on ``device`` (else it is emulated, slowly)."""
    return cuda_bf16_native(device) if device.type == "cuda" else cpu_bf16_native()


def choose_modes(asked, device):
    """The modes to run: ``asked``, or the defaults for ``device`` (printing what is skipped)."""
    if asked:
        if device.type == "cpu" and "cl-fp16" in asked:
            raise SystemExit("cl-fp16 needs CUDA (fp16 autocast with a GradScaler is for GPUs)")
        return asked
    modes = [m for m in MODES if device.type == "cuda" or m != "cl-fp16"]
    if not native_bf16(device):
        print(f"note: bf16 is emulated on this {device.type} device: cl-bf16 skipped (--modes cl-bf16 forces it)")
        modes.remove("cl-bf16")
    return modes


def device_name(device):
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} (sm_{major}{minor}, CUDA {torch.version.cuda})"
    return f"CPU, {torch.get_num_threads()} threads"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["u2netp", "u2net"], choices=["u2net", "u2netp"])
    parser.add_argument("--device", default="auto", help="auto (CUDA if present) | cpu | cuda | cuda:N")
    parser.add_argument("--modes", nargs="+", default=None, choices=list(MODES),
                        help="default: all that run natively on the device")
    parser.add_argument("--batch", type=int, default=None, help="default: 4 on the CPU, 8 on CUDA")
    parser.add_argument("--size", type=int, default=288)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per mode (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="torch.compile every mode's network")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    else:
        device = torch.device(args.device)
        device = torch.device("cuda", 0) if device.type == "cuda" and device.index is None else device
    if device.type == "cuda":
        torch.cuda.set_device(device)
        cuda_backends()
    modes = choose_modes(args.modes, device)
    batch_size = args.batch or (8 if device.type == "cuda" else 4)
    torch.manual_seed(0)
    images = torch.randn(batch_size, 3, args.size, args.size, device=device)
    alpha = torch.rand(batch_size, 1, args.size, args.size, device=device)
    batch = (images, alpha, ((alpha > 0.1) & (alpha < 0.9)).float())
    print(f"torch {torch.__version__}, {device_name(device)}, batch {batch_size}, {args.size}x{args.size}, "
          f"median of {args.steps} steps after {args.warmup} warm-up" + (", torch.compile" if args.compile else ""))
    print(f"{'arch':8s} {'mode':10s} {'s/step':>8s} {'images/s':>9s} {'vs nchw-fp32':>13s}"
          + (f" {'peak GB':>8s}" if device.type == "cuda" else ""))
    for arch in args.arch:
        base = build_model(arch)
        steppers = {mode: Stepper(copy.deepcopy(base), batch, *MODES[mode], device, args.compile) for mode in modes}
        for i in range(args.warmup + args.steps):  # modes take turns: a busy machine slows all alike
            for stepper in steppers.values():
                stepper.step(record=i >= args.warmup)
        medians = {mode: statistics.median(stepper.times) for mode, stepper in steppers.items()}
        baseline = medians.get("nchw-fp32")
        for mode, median in medians.items():
            ratio = f"{baseline / median:.2f}x" if baseline else "-"
            peak = f" {steppers[mode].peak_bytes / 2**30:8.2f}" if device.type == "cuda" else ""
            print(f"{arch:8s} {mode:10s} {median:8.3f} {batch_size / median:9.2f} {ratio:>13s}{peak}", flush=True)
        del steppers


if __name__ == "__main__":
    main()
