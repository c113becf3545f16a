"""Data-loading speed and memory on one process (num_workers 0): this repository's loader vs the
seed's two modes, on the same files and the same output.

    python benchmarks/loader.py --stage 2 --samples 200          # temp dataset of 800x600 photos
    python benchmarks/loader.py --dataset-path DIR --stage 1|2 --samples N [--no-baseline]

The seed's stage-2 loader had two modes, both working at short side ``image_size`` (320):

- ``load_once`` (its default): at start-up, every photo is read, its short side rescaled to
  ``image_size``, its foreground estimated (``pymatting.estimate_foreground_ml``) and kept in
  RAM with its alpha (float32 foreground as pymatting returns it, float64 alpha = mask / 255);
  a draw composites from RAM, crops, flips, normalises.
- without ``load_once``: the same read -> rescale -> estimate on every draw.

Both are restated here (``SeedLoadOnce``, ``SeedPerDraw``), with the seed's random trimap (a
distance band of 1-9 px around pixels with 5/255 < alpha < 250/255). Ours: the foreground
estimated once per photo into an on-disk cache (uint8, kept across runs), read per draw.
Printed: the start-up time of each (ours twice: with an empty cache, then with the cache of the
first run, as every later run finds it), the memory each holds for the photos (the seed's
load_once: the arrays' bytes and the process's resident-memory growth; ours: nothing beyond
one sample, the cache on disk), the medians of interleaved draws and their ratios, the 1-minute
load average before and after. Stage 1 had no estimation; its baseline is the same read ->
rescale -> crop at full decode size. Prints, last: ``samples/s: X`` (ours, median of --repeats runs).
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

SEED_PER_DRAW = "seed, per draw"
SEED_LOAD_ONCE = "seed, load_once"
SEED_TRIMAP_LOW, SEED_TRIMAP_HIGH = 5 / 255, 250 / 255  # the seed's "fractional" thresholds
SEED_TRIMAP_WIDTHS = (1, 9)  # inclusive, px


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


def resident_mb():
    """This process's resident memory (VmRSS) in MB, or nan where /proc is absent."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def seed_trimap(alpha, rng):
    """The seed's random trimap: pixels within a random 1-9 px of one with 5/255 < alpha <
    250/255 -> float32 (H,W) in {0,1}."""
    fractional = (alpha > SEED_TRIMAP_LOW) & (alpha < SEED_TRIMAP_HIGH)
    width = int(rng.integers(SEED_TRIMAP_WIDTHS[0], SEED_TRIMAP_WIDTHS[1] + 1))
    distance = cv2.distanceTransform((~fractional).astype(np.uint8), cv2.DIST_L2, 3)
    return (distance <= width).astype(np.float32)


def seed_foreground(pair, short_side):
    """The seed's estimate: photo and alpha rescaled to ``short_side`` -> (foreground float32
    (h,w,3) in [0,1], as pymatting returns it; alpha float64 (h,w) in [0,1])."""
    from pymatting import estimate_foreground_ml
    rgb, alpha = read_rgb(pair.photo), read_alpha(pair.mask)
    h, w = alpha.shape
    scale = short_side / min(h, w)
    size = (max(short_side, round(w * scale)), max(short_side, round(h * scale)))
    rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    alpha = cv2.resize(alpha, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR).astype(np.float64)
    return estimate_foreground_ml(rgb / 255.0, alpha), alpha


class SeedPerDraw:
    """The seed without ``load_once``: the foreground estimated (at short side 320) on every draw."""

    def __init__(self, ds, ratio):
        self.ds, self.ratio = ds, ratio
        self.transform = train_preset(ds.image_size, ds.crop_size, ds.augment)

    def foreground(self, index):
        return seed_foreground(self.ds.pairs[index], self.ds.image_size)

    def __getitem__(self, index):
        rng = np.random.default_rng(index)
        fg, alpha = self.foreground(index)
        h, w = alpha.shape
        hard = read_rgb(os.path.join(self.ds.root, self.ds.hard[rng.integers(len(self.ds.hard))]))
        hard = cv2.resize(hard, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        image = composite(fg.astype(np.float32), alpha.astype(np.float32), hard, solid_colour(rng), self.ratio)
        image, alpha = self.transform((image * 255.0).astype(np.uint8), alpha.astype(np.float32), rng)
        return {"image": normalize(image), "unknown": seed_trimap(alpha, rng), "alpha": alpha}


class SeedLoadOnce(SeedPerDraw):
    """The seed's ``load_once``: every foreground estimated at start-up (one at a time) and held in RAM."""

    def __init__(self, ds, ratio):
        super().__init__(ds, ratio)
        self.held = [seed_foreground(pair, ds.image_size) for pair in ds.pairs]

    def held_mb(self):
        return sum(fg.nbytes + alpha.nbytes for fg, alpha in self.held) / 2 ** 20

    def foreground(self, index):
        return self.held[index]


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
    """(dataset, seconds to build it: for stage 2 the foreground cache included)."""
    common = dict(image_size=args.image_size, crop_size=args.crop_size, image_num=args.image_num)
    if args.stage == 1:
        return AISegmentDataset(root, "train", **common), 0.0
    start = time.perf_counter()
    ds = ForegroundDataset(root, "train", schedule=E2HSchedule("step", update_ratio_epoch=1), cache_dir=cache_dir,
                           progress=False, **common)
    return ds, time.perf_counter() - start


def folder_mb(folder):
    return sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder)) / 2 ** 20


def start_stage2(args, root, cache_dir, ds, first_s):
    """Stage 2's start-ups and memory -> the seed loaders to draw from (empty with --no-baseline)."""
    n = len(ds)
    _, again_s = build_dataset(args, root, cache_dir)
    threads, on_disk = min(4, os.cpu_count() or 1), folder_mb(ds.cache.cache_dir)
    print(f"ours, start-up with an empty cache: {first_s:.1f} s ({first_s / n:.2f} s a photo, estimated at full "
          f"resolution in {threads} threads, once: the cache persists across runs; {on_disk:.1f} MB on disk, "
          f"uint8, in {ds.cache.cache_dir})")
    print(f"ours, start-up of a later run (cache found): {again_s:.2f} s; resident memory held for the photos: "
          f"none (one sample at a time is read from the disk)")
    ratio = ds.schedule.ratio(ds.epoch)
    if args.no_baseline:
        return []
    seed_foreground(ds.pairs[0], ds.image_size)  # numba's compilation, paid once by any mode
    before, start = resident_mb(), time.perf_counter()
    once = SeedLoadOnce(ds, ratio)
    once_s, grown = time.perf_counter() - start, resident_mb() - before
    held = once.held_mb()
    print(f"{SEED_LOAD_ONCE}, start-up (every run): {once_s:.1f} s ({once_s / n:.2f} s a photo, at short side "
          f"{ds.image_size}, one thread); held in RAM: {held:.1f} MB of arrays ({held / n:.2f} MB a photo), "
          f"resident memory +{grown:.1f} MB")
    return [(SEED_LOAD_ONCE, once, args.samples), (SEED_PER_DRAW, SeedPerDraw(ds, ratio), args.baseline_samples)]


def main():
    parser = argparse.ArgumentParser(description="Data-loading samples/s and memory on one process, ours vs the "
                                                 "seed's two modes.")
    parser.add_argument("--dataset-path", help="dataset root (default: generate a temporary one)")
    parser.add_argument("--stage", type=int, choices=(1, 2), default=2)
    parser.add_argument("--samples", type=int, default=200, help="draws per run of ours (and of the seed's load_once)")
    parser.add_argument("--baseline-samples", type=int, default=20, help="draws per run of the seed's per-draw mode")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--crop-size", type=int, default=288)
    parser.add_argument("--image-num", type=int, default=None)
    parser.add_argument("--photo-size", default="800x600", help="WxH of generated photos")
    parser.add_argument("--photos", type=int, default=20, help="generated photos")
    parser.add_argument("--no-baseline", action="store_true", help="skip the seed's modes")
    args = parser.parse_args()

    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())} ({os.cpu_count()} CPUs)")
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
        loaders = [("ours", ds, args.samples)]
        if args.stage == 2:
            loaders += start_stage2(args, root, cache_dir, ds, build_s)
        elif not args.no_baseline:
            loaders.append(("seed", SeedStage1(ds), args.baseline_samples))
        for _, dataset, _ in loaders:
            dataset[0]  # warm-up
        runs = measure_loaders(loaders, len(ds), args.repeats)
        medians = {name: statistics.median(r) for name, r in runs.items()}
        ours = medians["ours"]
        for name, _, count in loaders:
            print(f"{name}: median {medians[name]:.2f} samples/s over {args.repeats} runs of {count} "
                  f"({', '.join(f'{r:.2f}' for r in runs[name])}); ours / this: {ours / medians[name]:.2f}x")
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"samples/s: {ours:.1f}")


if __name__ == "__main__":
    main()
