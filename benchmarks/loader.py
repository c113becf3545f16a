"""Data-loading speed on one process (num_workers 0): this repository's datasets vs the seed's way.

    python benchmarks/loader.py --stage 2 --samples 200          # temp dataset of 800x600 photos
    python benchmarks/loader.py --dataset-path DIR --stage 1|2 --samples N [--no-baseline]

The seed's stage-2 loader, re-implemented here on the same files and the same output: read
photo and mask, run ``pymatting.estimate_foreground_ml`` on the full photo (every draw),
composite on a background resized to the photo at full resolution, then rescale the short
side to ``image_size``, random crop ``crop_size``, flip, normalise, trimap. Stage 1 had no
estimation; its baseline is the same read -> rescale -> crop at full decode size.
Ours: foreground read from the cache (built once, timed apart), crop first, composite on the
crop only, JPEG draft decoding of large backgrounds. Both run at e2h ratio 0.5 (both
backgrounds used). Prints, last: ``samples/s: X`` (ours, median of --repeats runs).
"""
import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from data_loader import AISegmentDataset, E2HSchedule, ForegroundDataset, read_alpha, read_rgb  # noqa: E402
from data_loader.compositing import composite, solid_colour  # noqa: E402
from data_loader.transforms import normalize, train_preset  # noqa: E402
from data_loader.trimap import random_kernel_size, unknown_band  # noqa: E402


BASELINE = "seed's way"


def make_examples_module():
    path = os.path.join(ROOT, "data_examples", "make_examples.py")
    spec = importlib.util.spec_from_file_location("make_examples", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generate(out, stage, width, height, photos):
    """A temporary dataset of ``photos`` realistic-size synthetic photos (and backgrounds)."""
    examples = make_examples_module()
    rng = np.random.default_rng(0)
    if stage == 1:
        examples.write_aisegment(os.path.join(out, "AISegment"), rng, photos, height, width, quality=90)
        return os.path.join(out, "AISegment")
    examples.write_paixin(os.path.join(out, "paixin"), rng, photos // 2, max(4, photos // 2), height, width, quality=90)
    return os.path.join(out, "paixin")


class SeedStage2:
    """The seed's way: foreground estimated on every draw, composite at full resolution."""

    def __init__(self, ds, ratio):
        from pymatting import estimate_foreground_ml
        self.estimate = estimate_foreground_ml
        self.ds, self.ratio = ds, ratio
        self.transform = train_preset(ds.image_size, ds.crop_size, ds.augment)

    def __getitem__(self, index):
        rng = np.random.default_rng(index)
        pair = self.ds.pairs[index]
        rgb, alpha = read_rgb(pair.photo), read_alpha(pair.mask)
        fg = self.estimate(rgb / 255.0, alpha).astype(np.float32)
        h, w = alpha.shape
        hard = read_rgb(os.path.join(self.ds.root, self.ds.hard[rng.integers(len(self.ds.hard))]))
        hard = cv2.resize(hard, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
        image = composite(fg, alpha, hard, solid_colour(rng), self.ratio)
        image, alpha = self.transform((image * 255.0).astype(np.uint8), alpha, rng)
        return {"image": normalize(image), "unknown": unknown_band(alpha, random_kernel_size(rng)), "alpha": alpha}


class SeedStage1:
    """The seed's stage 1: full decode, rescale, crop (no foreground estimation)."""

    def __init__(self, ds):
        self.ds = ds
        self.transform = train_preset(ds.image_size, ds.crop_size, ds.augment)

    def __getitem__(self, index):
        rng = np.random.default_rng(index)
        pair = self.ds.pairs[index]
        image, alpha = self.transform(read_rgb(pair.photo), read_alpha(pair.mask, channel=3), rng)
        return {"image": normalize(image), "unknown": unknown_band(alpha, random_kernel_size(rng)), "alpha": alpha}


def one_run(dataset, n, count, seed):
    """samples/s of ``count`` draws, indices a permutation cycling over ``n``."""
    order = np.random.default_rng(seed).permutation(np.resize(np.arange(n), count))
    start = time.perf_counter()
    for i in order:
        dataset[int(i)]
    return count / (time.perf_counter() - start)


def measure_loaders(loaders, n, repeats):
    """Runs of each (name, dataset, count) interleaved (so a busy machine slows both alike)
    -> {name: list of samples/s}."""
    runs = {name: [] for name, _, _ in loaders}
    for r in range(repeats):
        for name, dataset, count in loaders:
            runs[name].append(one_run(dataset, n, count, r))
    return runs


def build_dataset(args, root, cache_dir):
    common = dict(image_size=args.image_size, crop_size=args.crop_size, image_num=args.image_num)
    if args.stage == 1:
        return AISegmentDataset(root, "train", **common), 0.0
    start = time.perf_counter()
    ds = ForegroundDataset(root, "train", schedule=E2HSchedule("step", update_ratio_epoch=1), cache_dir=cache_dir,
                           **common)
    return ds, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description="Data-loading samples/s on one process, ours vs the seed's way.")
    parser.add_argument("--dataset-path", help="dataset root (default: generate a temporary one)")
    parser.add_argument("--stage", type=int, choices=(1, 2), default=2)
    parser.add_argument("--samples", type=int, default=200, help="draws per run of ours")
    parser.add_argument("--baseline-samples", type=int, default=20, help="draws per run of the seed's way")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--crop-size", type=int, default=288)
    parser.add_argument("--image-num", type=int, default=None)
    parser.add_argument("--photo-size", default="800x600", help="WxH of generated photos")
    parser.add_argument("--photos", type=int, default=20, help="generated photos")
    parser.add_argument("--no-baseline", action="store_true", help="skip the seed's way")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = args.dataset_path
        if root is None:
            width, height = (int(v) for v in args.photo_size.lower().split("x"))
            start = time.perf_counter()
            root = generate(tmp, args.stage, width, height, args.photos)
            print(f"generated {args.photos} photos of {width}x{height} in {root} ({time.perf_counter() - start:.1f} s)")
        cache_dir = os.path.join(tmp, "cache") if args.dataset_path is None else None  # None: the default
        ds, build_s = build_dataset(args, root, cache_dir)
        ds.set_epoch(5)  # step schedule, 1 epoch per step: ratio 0.5
        shape = read_rgb(ds.pairs[0].photo).shape
        print(f"dataset: {root}, stage {args.stage}, {len(ds)} train photos (first {shape[1]}x{shape[0]}), "
              f"output {args.crop_size}x{args.crop_size} from short side {args.image_size}")
        if args.stage == 2:
            print(f"dataset + foreground cache ready in {build_s:.1f} s ({build_s / len(ds):.2f} s a photo; "
                  f"estimation runs once per photo, in {ds.cache.cache_dir})")
            ds[0]  # warm-up
        loaders = [("ours", ds, args.samples)]
        if not args.no_baseline:
            seed = SeedStage2(ds, ds.schedule.ratio(ds.epoch)) if args.stage == 2 else SeedStage1(ds)
            seed[0]  # warm-up (numba)
            loaders.append((BASELINE, seed, args.baseline_samples))
        runs = measure_loaders(loaders, len(ds), args.repeats)
        medians = {name: statistics.median(r) for name, r in runs.items()}
        for name, _, count in loaders:
            print(f"{name}: median {medians[name]:.2f} samples/s over {args.repeats} runs of {count} "
                  f"({', '.join(f'{r:.2f}' for r in runs[name])})")
        ours = medians["ours"]
        if not args.no_baseline:
            print(f"speed-up (ratio of medians): {ours / medians[BASELINE]:.1f}x")
        print(f"samples/s: {ours:.1f}")


if __name__ == "__main__":
    main()
