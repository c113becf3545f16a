"""The README's figures, each made by this project's own code. Run from the repository root:

    python documents/make_figures.py              # documents/datasets_example.png (seconds, CPU)
    python documents/make_figures.py --ablation   # + the e2h ablation (documents/e2h_ablation.py):
                                                  #   documents/e2h_results.{csv,md,png} (tens of minutes on a 2-core CPU)
    python documents/make_figures.py --ablation --preset full --init STAGE1.pth \\
        --set dataset_path=/data/paixin_comp_mod  # the same ablation at full scale, on a GPU

``datasets_example.png``: for a few stage-2 foregrounds of ``data_examples/paixin_comp_mod``
(``--dataset-path``): the photo, its alpha, the foreground colours estimated by
``data_loader``'s foreground cache (``pymatting.estimate_foreground_ml``, computed once and
cached as training does), and the e2h composites ``alpha * F + (1 - alpha) * (r * hard +
(1 - r) * easy)`` at r = 0, 0.5 and 1 made by ``data_loader.composite``, the function training
calls. Arguments after ``--ablation`` that this script does not know go to e2h_ablation.py.
"""
import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from data_loader import (ForegroundCache, composite, default_cache_dir, index_backgrounds,  # noqa: E402
                         index_foregrounds, read_alpha, read_rgb)
from data_loader.compositing import cover_background, solid_colour, to_unit  # noqa: E402
from utils.plots import save_png  # noqa: E402

RATIOS = (0.0, 0.5, 1.0)


def pick_foregrounds(root, count=3, split="train"):
    """``count`` photo/mask pairs of ``split``, evenly spaced over the sorted list (so every
    category tends to appear) -> list of ``data_loader.Pair``."""
    pairs, _ = index_foregrounds(root, split)
    if len(pairs) <= count:
        return pairs
    return [pairs[round(i * (len(pairs) - 1) / (count - 1))] if count > 1 else pairs[0] for i in range(count)]


def _background(root, names, h, w, rng):
    """A random image of ``names`` covering (h, w), cropped as validation does -> float32 in [0,1]."""
    name = names[int(rng.integers(len(names)))]
    return to_unit(cover_background(read_rgb(os.path.join(root, name)), h, w, rng))


def dataset_rows(root, count=3, ratios=RATIOS, seed=0, cache_dir=None):
    """The panels of the dataset figure, one row per foreground.

    Returns a list of ``(relative photo name, [(title, uint8 (H,W,3) RGB), ...])``: photo, alpha, estimated
    foreground, then one composite per ratio in ``ratios``, all at the photo's resolution. The
    foreground comes from ``ForegroundCache`` (estimated once, then read from
    ``cache_dir``, default ``<root>/.foreground_cache`` as training uses); each row's hard
    background, its crop and its easy colour are drawn from an RNG seeded by (seed, row).
    """
    root = os.path.abspath(root)
    cache = ForegroundCache(cache_dir or default_cache_dir(root))
    hard = index_backgrounds(root, "background", "all")
    easy = index_backgrounds(root, "background_easy", "all", required=False)
    rows = []
    for k, pair in enumerate(pick_foregrounds(root, count)):
        rng = np.random.default_rng([seed, k])
        photo = read_rgb(pair.photo, exif=pair.exif)
        alpha = read_alpha(pair.mask)
        fg = cache.load_full(pair)
        h, w = alpha.shape
        hard_bg = _background(root, hard, h, w, rng)
        easy_bg = _background(root, easy, h, w, rng) if easy else solid_colour(rng)
        gray = np.repeat(np.round(alpha * 255.0).astype(np.uint8)[..., None], 3, axis=2)
        panels = [("photo", photo), ("alpha (mask_image)", gray), ("estimated foreground F", fg)]
        for r in ratios:
            image = composite(to_unit(fg), alpha, hard_bg, easy_bg, r)
            label = {0.0: " (easy)", 1.0: " (hard)"}.get(float(r), "")
            panels.append((f"composite r = {r:g}{label}", np.round(image * 255.0).astype(np.uint8)))
        rows.append((pair.name, panels))
    if not rows:
        raise ValueError(f"no foregrounds in {root}")
    return rows


def save_dataset_figure(rows, path, panel_inches=1.8, dpi=72):
    """rows from ``dataset_rows`` -> one PNG: a titled grid, a row per foreground."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(rows), len(rows[0][1])
    h, w = rows[0][1][0][1].shape[:2]
    fig, axes = plt.subplots(n_rows, n_cols, squeeze=False,
                             figsize=(n_cols * panel_inches, n_rows * panel_inches * h / w + 0.9))
    for row, (name, panels) in enumerate(rows):
        for col, (title, image) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=8)
            if col == 0:
                ax.set_ylabel(os.path.basename(name), fontsize=8)
    fig.suptitle("stage-2 samples: alpha * F + (1 - alpha) * (r * hard + (1 - r) * easy), "
                 "r from the e2h schedule", fontsize=9)
    fig.tight_layout()
    size = save_png(fig, path, dpi)
    plt.close(fig)
    return size


def make_dataset_figure(root, path, count=3, seed=0, cache_dir=None):
    """Build and save the dataset figure; returns the PNG's size in bytes."""
    return save_dataset_figure(dataset_rows(root, count, seed=seed, cache_dir=cache_dir), path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset-path", default=os.path.join(ROOT, "data_examples", "paixin_comp_mod"),
                        help="paixin_comp_mod-layout dataset for datasets_example.png")
    parser.add_argument("--out", default=HERE, help="folder for the figures (default: documents/)")
    parser.add_argument("--count", type=int, default=3, help="foregrounds shown in datasets_example.png")
    parser.add_argument("--seed", type=int, default=0, help="seed of the backgrounds drawn for the figure")
    parser.add_argument("--ablation", action="store_true",
                        help="also run documents/e2h_ablation.py (other arguments go to it)")
    args, rest = parser.parse_known_args(argv)
    if rest and not args.ablation:
        parser.error(f"unrecognized arguments: {' '.join(rest)} (ablation arguments need --ablation)")

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "datasets_example.png")
    size = make_dataset_figure(args.dataset_path, path, args.count, args.seed)
    print(f"wrote {path} ({size / 1000:.0f} kB)")
    if args.ablation:
        sys.path.insert(0, HERE)
        import e2h_ablation
        e2h_ablation.main(rest + ["--out", args.out])


if __name__ == "__main__":
    main()
