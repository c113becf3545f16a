"""documents/video_strip.png: five consecutive frames of benchmarks/video.py's calm clip, cropped
to the head and hair: input | per-frame alpha | stabilised alpha (the default --temporal) |
truth, with each alpha's dtSSD over the shown frames. Both alphas refined as apply.py refines
them by default (``guided``).

    python documents/make_video_figure.py            # -> documents/video_strip.png (seconds)

The alphas are case (a) of the benchmark, the truth shrunk to 320x320 plus per-frame jitter, or
with ``--model FILE`` a network's alphas at 320.
"""
import argparse
import os
import sys

import cv2
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from benchmarks.video import SEED, jittered, network_coarses, synthetic_clip  # noqa: E402
from utils.inference.cutout import alpha_to_uint8  # noqa: E402
from utils.inference.refine import refine_alpha  # noqa: E402
from utils.inference.temporal import DEFAULT_TEMPORAL, make_stabiliser  # noqa: E402
from utils.metrics import dtssd  # noqa: E402
from utils.plots import MAX_PNG_BYTES  # noqa: E402

FIRST, SHOWN = 40, 5   # frames FIRST .. FIRST + SHOWN - 1


def label(image, text):
    out = np.full((image.shape[0] + 18, image.shape[1], 3), 255, np.uint8)
    out[18:] = image
    cv2.putText(out, text, (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="a network's weights instead of the jittered truth")
    p.add_argument("--out", default=os.path.join(HERE, "video_strip.png"))
    args = p.parse_args()
    frames, alphas = synthetic_clip(360, (FIRST + SHOWN) / 30, motion=0.1)
    rng = np.random.default_rng(SEED)
    coarses = network_coarses(args.model, frames) if args.model else [jittered(a, rng) for a in alphas]
    stabiliser = make_stabiliser(DEFAULT_TEMPORAL)
    steady = [stabiliser(None, f, c) for f, c in zip(frames, coarses)]
    h, w = frames[0].shape[:2]
    per_frame = [refine_alpha(f, c, "guided") for f, c in zip(frames, coarses)]
    stabilised = [refine_alpha(f, s, "guided") for f, s in zip(frames, steady)]
    shown = slice(FIRST, FIRST + SHOWN)
    rows_of = {"input": frames, "per-frame alpha": per_frame, f"stabilised ({DEFAULT_TEMPORAL})": stabilised,
               "truth": alphas}
    box = np.s_[int(0.08 * h):int(0.55 * h), int(0.33 * w):int(0.67 * w)]  # the head and its hair
    rows = []
    for name, seq in rows_of.items():
        cells = []
        for i, x in enumerate(seq[shown]):
            x = x[box]
            x = x if x.ndim == 3 else np.repeat(alpha_to_uint8(x)[..., None], 3, axis=2)
            x = cv2.resize(x, None, fx=0.9, fy=0.9, interpolation=cv2.INTER_AREA)
            cells.append(np.pad(label(x, f"{name}, frame {FIRST + i}" if i == 0 else f"frame {FIRST + i}"),
                                ((0, 4), (0, 4), (0, 0)), constant_values=255))
        if name != "input" and name != "truth":
            score = dtssd(seq[shown], alphas[shown])
            cv2.putText(cells[-1], f"dtSSD {score:.2f}", (4, cells[-1].shape[0] - 10), cv2.FONT_HERSHEY_SIMPLEX,
                        0.4, (255, 60, 60), 1, cv2.LINE_AA)
        rows.append(np.concatenate(cells, axis=1))
    strip = np.concatenate(rows, axis=0)
    if not cv2.imwrite(args.out, strip[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise SystemExit(f"could not write {args.out}")
    size = os.path.getsize(args.out)
    print(f"wrote {args.out} ({strip.shape[1]}x{strip.shape[0]}, {size} bytes)")
    if size > MAX_PNG_BYTES:
        raise SystemExit(f"{args.out}: {size} bytes, more than the {MAX_PNG_BYTES} a README figure may take")


if __name__ == "__main__":
    main()
