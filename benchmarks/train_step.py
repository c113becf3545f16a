"""Training-step speed on the CPU: channels-last and bf16 autocast against a plain fp32 NCHW step.

One step = forward (logits), the L1 + unknown-band loss of utils/losses.py, backward and an Adam
update, on a fixed random batch. Each mode is timed on a fresh copy of the same network; the
figure is the median over ``--steps`` steps after ``--warmup`` steps.

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
from utils.losses import matting_loss  # noqa: E402

MODES = {"nchw-fp32": (False, None), "cl-fp32": (True, None), "cl-bf16": (True, torch.bfloat16)}


def time_steps(net, batch, channels_last, dtype, steps, warmup):
    """Seconds of each of ``steps`` training steps (after ``warmup`` untimed ones)."""
    images, alpha, unknown = batch
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            logits = net.forward_logits(images)
        loss = matting_loss(logits, alpha, unknown)["total"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


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
        baseline = None
        for mode in args.modes:
            channels_last, dtype = MODES[mode]
            median = statistics.median(time_steps(copy.deepcopy(base), batch, channels_last, dtype,
                                                  args.steps, args.warmup))
            baseline = median if mode == "nchw-fp32" else baseline
            ratio = f"{baseline / median:.2f}x" if baseline else "-"
            print(f"{arch:8s} {mode:10s} {median:8.3f} {1 / median:8.3f} {ratio:>13s}", flush=True)


if __name__ == "__main__":
    main()
