"""Training-step speed on the CPU: channels-last and bf16 autocast against a plain fp32 NCHW step.

One step = forward (logits), the L1 + unknown-band loss of utils/training/losses.py, backward and an Adam
update, on a fixed random batch. Each mode trains its own copy of the same network; the modes
take turns step by step (so a machine shared with other work slows them alike), and the figure
is the median over ``--steps`` steps after ``--warmup`` steps.

    python benchmarks/train_step.py                          # U2NET and U2NETP, batch 4, 288 x 288
    python benchmarks/train_step.py --arch u2netp --steps 10 --threads 2

Modes: ``nchw-fp32`` (the baseline), ``cl-fp32`` (channels-last), ``cl-bf16`` (channels-last and
bf16 autocast, fp32 weights and loss). bf16 pays only on CPUs with native bf16 (AVX-512 BF16 or
AMX); elsewhere it is emulated and slower than fp32.
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
from utils.training.losses import matting_loss  # noqa: E402

MODES = {"nchw-fp32": (False, None), "cl-fp32": (True, None), "cl-bf16": (True, torch.bfloat16)}


class Stepper:
    """One training setup (network copy, memory format, autocast dtype, Adam) that times a step."""

    def __init__(self, net, batch, channels_last, dtype):
        self.images, self.alpha, self.unknown = batch
        self.net, self.dtype = net, dtype
        if channels_last:
            self.net = net.to(memory_format=torch.channels_last)
            self.images = self.images.contiguous(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=1e-3)
        self.net.train()
        self.times = []

    def step(self, record=True):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=self.dtype, enabled=self.dtype is not None):
            logits = self.net.forward_logits(self.images)
        loss = matting_loss(logits, self.alpha, self.unknown)["total"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if record:
            self.times.append(time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["u2netp", "u2net"], choices=["u2net", "u2netp"])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=288)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per mode (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, args.size, args.size)
    alpha = torch.rand(args.batch, 1, args.size, args.size)
    batch = (images, alpha, ((alpha > 0.1) & (alpha < 0.9)).float())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.size}x{args.size}, median of {args.steps} steps after {args.warmup} warm-up")
    print(f"{'arch':8s} {'mode':10s} {'s/step':>8s} {'steps/s':>8s} {'vs nchw-fp32':>13s}")
    for arch in args.arch:
        base = build_model(arch)
        steppers = {mode: Stepper(copy.deepcopy(base), batch, *MODES[mode]) for mode in args.modes}
        for i in range(args.warmup + args.steps):  # modes take turns: a busy machine slows all alike
            for stepper in steppers.values():
                stepper.step(record=i >= args.warmup)
        medians = {mode: statistics.median(stepper.times) for mode, stepper in steppers.items()}
        baseline = medians.get("nchw-fp32")
        for mode, median in medians.items():
            ratio = f"{baseline / median:.2f}x" if baseline else "-"
            print(f"{arch:8s} {mode:10s} {median:8.3f} {1 / median:8.3f} {ratio:>13s}", flush=True)


if __name__ == "__main__":
    main()
