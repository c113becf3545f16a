"""Benchmark full-resolution refinement of the network's alpha: quality, seconds, peak memory.

    python benchmarks/refine.py                                  # 2, 3, 8, 12 MP, 2 photos each
    python benchmarks/refine.py --sizes 12,24 --photos 3 --methods none,guided,matting
    python benchmarks/refine.py --options matting:band=1.0,max_iter=300 --csv refine.csv

Photos: seeded synthetic people (``data_examples/make_examples.photo_of``: a body and head with
thin, partly transparent hair strands drawn at 4x and area-downsampled, so the true alpha is
fractional and exact, composited over a textured background), 3:4 and 4:3 in turn, at the
megapixels asked. Input alpha: the truth shrunk to 320x320 (area) and blurred by 1 px
(Gaussian, sigma 1): what a perfect network gives. ``--model FILE`` uses that network's alpha
instead (``utils.inference.predict``, 320x320, fp32).

Methods: ``none``, ``guided``, ``matting`` (``utils.inference.refine``) and ``rembg``, rembg's
alpha matting restated (``rembg.bg.alpha_matting_cutout``): the network mask as uint8 resized
to the photo with PIL Lanczos, foreground > 240 and background < 10, each eroded by a 10x10
square (``scipy.ndimage.binary_erosion``), then ``pymatting.estimate_alpha_cf`` (closed-form
matting over the whole photo, ichol preconditioner); rembg's foreground estimation that follows
is not timed. rembg runs on photos up to ``--rembg-max-mp`` (3) megapixels only: above that its
Laplacian alone needs over 4 GB.

Each method runs on each photo in its own child process (this file with ``--child``): a warm-up
call on the photo shrunk 4x (numba compiles or loads its cache then), then the timed call.
Seconds: wall time of that call, and its CPU time (all threads of the child; on a shared
machine the steadier figure). Memory: the child's peak resident set size (``VmHWM`` of
/proc/self/status, read by the child at its end; not ``ru_maxrss``, which a child started from
this large parent inherits), which includes the Python process, its libraries, the photo and
the input (``base``, the RSS just before the timed call, is printed too). Scores:
``utils.metrics`` on the float alpha against the truth, whole image (SAD, MSE, Grad, Conn) and
inside the truth's unknown band (``sad_unknown``, ``derive_trimap``: fractional pixels + 4 px).
The table gives medians per method over the photos of each size group, and ratios to ``none``.
"""
import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "data_examples"))

METHODS = ("none", "guided", "matting", "rembg")
SEED = 20261201


# ---------------------------------------------------------------- photos
def make_photo(index, megapixels, seed=SEED):
    """-> (photo uint8 (H,W,3), truth float32 (H,W)), 3:4 for even ``index``, 4:3 for odd."""
    from make_examples import photo_of  # the example datasets' generator

    short = int(round((megapixels * 1e6 * 3 / 4) ** 0.5))
    long = int(round(short * 4 / 3))
    h, w = (long, short) if index % 2 == 0 else (short, long)
    photo, alpha, _ = photo_of(np.random.default_rng([seed, index, int(megapixels * 10)]), h, w)
    return photo, alpha.astype(np.float32)


def perfect_coarse(truth, size=320):
    """The truth as a perfect network would give it: shrunk to size x size, blurred by 1 px."""
    small = cv2.resize(truth, (size, size), interpolation=cv2.INTER_AREA)
    return np.clip(cv2.GaussianBlur(small, (0, 0), 1.0), 0.0, 1.0)


def network_coarse(model, photo, size=320):
    """The network's own alpha of ``photo`` at size x size (fp32, CPU)."""
    import torch
    from utils.inference.predict import OnnxModel, prepared, preprocess, run_network

    net = model if isinstance(model, OnnxModel) else prepared(model)
    return run_network(net, torch.from_numpy(preprocess(photo, size)[None]))[0].numpy()


# ---------------------------------------------------------------- one method, in a child process
def rembg_alpha(photo, coarse, fg_threshold=240, bg_threshold=10, erode_size=10):
    """rembg's ``alpha_matting_cutout``, alpha part, as it is (see the module docstring)."""
    from PIL import Image
    from pymatting import estimate_alpha_cf
    from scipy.ndimage import binary_erosion

    h, w = photo.shape[:2]
    mask = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8), "L").resize((w, h), Image.LANCZOS))
    structure = np.ones((erode_size, erode_size), dtype=np.uint8)
    is_fg = binary_erosion(mask > fg_threshold, structure=structure)
    is_bg = binary_erosion(mask < bg_threshold, structure=structure, border_value=1)
    trimap = np.full(mask.shape, 128, np.uint8)
    trimap[is_fg], trimap[is_bg] = 255, 0
    return estimate_alpha_cf(photo / 255.0, trimap / 255.0).astype(np.float32)


def run_method(photo, coarse, method, options):
    if method == "rembg":
        return rembg_alpha(photo, coarse)
    from utils.inference.refine import refine_alpha
    return refine_alpha(photo, coarse, method, **options)


def _status_mb(field):
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, in MB, from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(path, method, options_json, out_path):
    """Warm up on the photo shrunk 4x, then time one call; writes the alpha to ``out_path``."""
    data = np.load(path)
    photo, coarse = data["photo"], data["coarse"]
    options = json.loads(options_json)
    h, w = photo.shape[:2]
    run_method(cv2.resize(photo, (w // 4, h // 4), interpolation=cv2.INTER_AREA), coarse, method, options)
    base = _status_mb("VmRSS")
    start, cpu = time.perf_counter(), time.process_time()
    alpha = run_method(photo, coarse, method, options)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    np.save(out_path, alpha)
    print(json.dumps({"seconds": seconds, "cpu_s": cpu, "base_mb": base, "peak_mb": _status_mb("VmHWM")}))


def measure_method(path, method, options, out_path):
    """Run ``child`` in a fresh process -> dict(seconds, base_mb, peak_mb)."""
    command = [sys.executable, os.path.abspath(__file__), "--child", path, method, json.dumps(options), out_path]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    stdout, stderr = proc.stdout, proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"{method} failed on {path}:\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["warnings"] = [line for line in stderr.splitlines() if "Warning" in line]
    return result


# ---------------------------------------------------------------- scoring and the table
def score(alpha, truth, trimap):
    from utils.metrics import matting_metrics, region_metrics
    row = matting_metrics(alpha, truth)
    row["sad_unknown"] = region_metrics(alpha, truth, trimap)["sad_unknown"]
    return row


COLUMNS = ("sad", "mse", "grad", "conn", "sad_unknown", "seconds", "cpu_s", "peak_mb")


def summarise(rows, groups):
    """Markdown table: medians per (size group, method), ratios to none of the same photos."""
    lines = ["| photos | method | n | SAD | MSE x1e3 | Grad | Conn | SAD band | s/photo | CPU s | peak MB | SAD/none | Grad/none |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, low, high in groups:
        chosen = [r for r in rows if low <= r["megapixels"] <= high]
        base = {r["photo"]: r for r in chosen if r["method"] == "none"}
        for method in METHODS:
            mine = [r for r in chosen if r["method"] == method]
            if not mine:
                continue
            med = {c: statistics.median(r[c] for r in mine) for c in COLUMNS}
            ratio = {c: statistics.median(r[c] / base[r["photo"]][c] for r in mine if r["photo"] in base) for c in ("sad", "grad")}
            lines.append(f"| {label} | {method} | {len(mine)} | {med['sad']:.2f} | {med['mse'] * 1e3:.3f} | "
                         f"{med['grad']:.2f} | {med['conn']:.2f} | {med['sad_unknown']:.2f} | {med['seconds']:.2f} | "
                         f"{med['cpu_s']:.2f} | {med['peak_mb']:.0f} | {ratio['sad']:.2f} | {ratio['grad']:.2f} |")
    return "\n".join(lines)


def parse_options(specs):
    """``method:key=value,key=value`` -> {method: {key: value}} (values parsed as JSON)."""
    options = {}
    for spec in specs:
        method, _, items = spec.partition(":")
        for item in filter(None, items.split(",")):
            key, _, value = item.partition("=")
            try:
                options.setdefault(method, {})[key] = json.loads(value)
            except json.JSONDecodeError:
                options.setdefault(method, {})[key] = value
    return options


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="2,3,8,12", help="megapixels of the photos, comma-separated")
    p.add_argument("--photos", type=int, default=2, help="photos per size (default: 2)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    p.add_argument("--rembg-max-mp", type=float, default=3.0, help="rembg only on photos up to this size")
    p.add_argument("--options", action="append", default=[], metavar="METHOD:KEY=VALUE,...",
                   help="refine_alpha options of a method, e.g. matting:band=1.0 (repeatable)")
    p.add_argument("--model", help="weights (.pth or .onnx): use the network's alpha instead of the perfect one")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--csv", help="write every row to this CSV file")
    args = p.parse_args(argv)
    from utils.inference.evaluate import derive_trimap

    methods = [m for m in args.methods.split(",") if m]
    if unknown := set(methods) - set(METHODS):
        p.error(f"unknown methods {sorted(unknown)}; expected a subset of {METHODS}")
    options = parse_options(args.options)
    sizes = [float(s) for s in args.sizes.split(",")]
    model = None
    if args.model:
        from utils.inference.onnx_model import load_any_model
        model = load_any_model(args.model)
    rows = []
    with tempfile.TemporaryDirectory(prefix="refine_bench_") as tmp:
        for megapixels in sizes:
            for i in range(args.photos):
                photo, truth = make_photo(i, megapixels, args.seed)
                coarse = network_coarse(model, photo) if model is not None else perfect_coarse(truth)
                name = f"{megapixels:g}MP_{i}"
                path = os.path.join(tmp, name + ".npz")
                np.savez(path, photo=photo, coarse=coarse)
                trimap = derive_trimap(truth)
                for method in methods:
                    if method == "rembg" and megapixels > args.rembg_max_mp:
                        continue
                    out = os.path.join(tmp, f"{name}_{method}.npy")
                    result = measure_method(path, method, options.get(method, {}), out)
                    row = {"photo": name, "megapixels": megapixels, "shape": f"{photo.shape[1]}x{photo.shape[0]}",
                           "method": method, **score(np.load(out), truth, trimap), **result}
                    os.remove(out)
                    rows.append(row)
                    print(f"{name:8s} {row['shape']:>10s} {method:8s} SAD {row['sad']:8.2f} Grad {row['grad']:8.2f} "
                          f"Conn {row['conn']:7.2f} band SAD {row['sad_unknown']:7.2f} {row['seconds']:6.2f} s (CPU {row['cpu_s']:5.2f}) "
                          f"peak {row['peak_mb']:6.0f} MB (base {row['base_mb']:.0f})"
                          + (f"  {row['warnings'][0]}" if row["warnings"] else ""), flush=True)
                os.remove(path)
    groups = [("<= 3 MP", 0, 3), (">= 8 MP", 8, float("inf")), ("all", 0, float("inf"))]
    print("\nmedians (ratios: median over photos of method / none on the same photo)")
    print(summarise(rows, groups))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != "warnings"], extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    return rows


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:6])
    else:
        main()
