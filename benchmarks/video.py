"""Benchmark video matting: temporal stability, frames/s end to end, peak memory against length.

    python benchmarks/video.py                          # 360p, 3 s at 30 fps; U2NETP and U2NET speed
    python benchmarks/video.py --height 720 --seconds 5 # 720p (1080: --height 1080)
    python benchmarks/video.py --skip-speed --skip-memory   # the quality table only (a minute)
    python benchmarks/video.py --skip-quality --skip-memory --random-speed-weights --archs u2netp --precisions bf16

Clips: seeded synthetic people (``data_examples/make_examples.person``: body, head and thin,
partly transparent hair strands drawn at 4x and area-downsampled) that move across the frame,
turn (+-8 degrees) and scale (+-10 %), composited with their exact alpha over a textured
background that pans, plus sensor noise (sigma 2 levels); written as H.264 (CRF 16) for the
runs of apply.py. The ground truth is the warped alpha each frame was composited with.

Two clips: ``moving`` (the issue's: the person crosses 44 % of the frame every 3 s while
turning and scaling, the background pans a quarter frame a second) and ``calm`` (the same
movements at a tenth: a video call). Quality, against the truth at full resolution
(utils/metrics.py: MAD, dtSSD x100, MESSDdt x1000), for each ``--temporal`` method, the
stabilised alpha refined by ``guided`` (apply.py's default: the edges placed by the picture)
and by ``none`` (resized); ``floor`` is the truth shrunk with no jitter, what shrinking alone
costs. The clips here (seed 22) were not looked at while the stabiliser's settings were chosen
(those came from seed 7's clips):
 (a) the truth shrunk to the network's 320x320 plus per-frame jitter, what a network's flicker
     looks like: the edge moved by a random sub-pixel shift (sigma 0.4 px at 320) and a smooth
     random field (+-0.15) added inside the edge band, new each frame;
 (b) the network trained by the main job (the newest results_stage2/*/model/best.pth), at 320.
Speed: apply.py (its defaults: guided refinement, the default temporal method) on the clip
(``--outputs alpha``: alpha/<clip>.mp4) against apply.py on the same frames as PNG files
(alpha/<frame>.png), each in a child process; frames/s = frames / the child's wall time
(start-up and model loading included: end to end), for U2NETP and U2NET in fp32 and bf16.
Weights: the trained ones where found, else random ones (speed does not depend on them).
Memory: the child's peak resident set (VmHWM) for a clip and one 6x longer, U2NETP fp32.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "data_examples"))

import make_examples  # noqa: E402
from utils.inference.temporal import DEFAULT_TEMPORAL, TEMPORAL_METHODS, make_stabiliser  # noqa: E402
from utils.inference.refine import refine_alpha  # noqa: E402
from utils.metrics import dtssd, ground_truth_flow, mad, messddt  # noqa: E402

NETWORK = 320
SEED = 22


# ---------------------------------------------------------------- the synthetic clip
def synthetic_clip(height=360, seconds=3.0, fps=30, seed=SEED, motion=1.0):
    """-> (frames uint8 RGB (H,W,3), alphas float32 (H,W) in [0,1]) lists: a person moving,
    turning and scaling over a panning textured background (module docstring). motion scales
    every movement: 1 the issue's clip, 0.1 a video call (a person swaying, a still camera)."""
    rng = np.random.default_rng(seed)
    width = int(round(height * 16 / 9)) // 2 * 2
    ph = int(height * 0.9)
    pw = int(ph * 0.75)
    colours, alpha = make_examples.person(rng, ph, pw)
    background = make_examples.texture(rng, height, width * 2)
    frames, alphas = [], []
    n = int(round(seconds * fps))
    for i in range(n):
        t = i / fps
        cx = width / 2 + motion * 0.22 * width * np.sin(2 * np.pi * t / 3.0)
        cy = height - ph / 2 + motion * 0.03 * height * np.sin(2 * np.pi * t / 1.7)
        scale = 1 + motion * 0.1 * np.sin(2 * np.pi * t / 2.3)
        angle = motion * 8 * np.sin(2 * np.pi * t / 2.0)
        m = cv2.getRotationMatrix2D((pw / 2, ph / 2), angle, scale)
        m[:, 2] += (cx - pw / 2, cy - ph / 2)
        a = cv2.warpAffine(alpha, m, (width, height), flags=cv2.INTER_LINEAR, borderValue=0)
        fg = cv2.warpAffine(colours, m, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        pan = int(round(motion * t * width * 0.25)) % width
        bg = background[:, pan:pan + width].astype(np.float32)
        image = a[..., None] * fg.astype(np.float32) + (1 - a[..., None]) * bg + rng.normal(0, 2, bg.shape)
        frames.append(np.clip(image + 0.5, 0, 255).astype(np.uint8))
        alphas.append(np.clip(a, 0, 1).astype(np.float32))
    return frames, alphas


def write_clip(path, frames, fps=30):
    """frames -> an H.264 mp4 (CRF 16) with PyAV."""
    import av

    with av.open(path, "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt, stream.options = "yuv420p", {"crf": "16"}
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def jittered(alpha, rng):
    """The truth shrunk to 320x320 with one frame's jitter (module docstring), float32; rng
    None: no jitter (the floor no temporal method can go below)."""
    small = cv2.resize(alpha, (NETWORK, NETWORK), interpolation=cv2.INTER_AREA)
    if rng is None:
        return small
    m = np.float32([[1, 0, rng.normal(0, 0.4)], [0, 1, rng.normal(0, 0.4)]])
    small = cv2.warpAffine(small, m, (NETWORK, NETWORK), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    band = ((small > 0.01) & (small < 0.99)).astype(np.uint8)
    weight = cv2.GaussianBlur(cv2.dilate(band, np.ones((5, 5), np.uint8)).astype(np.float32), (0, 0), 1.5)
    field = (make_examples.smooth_noise(rng, NETWORK, NETWORK, 8, channels=1)[..., 0] - 0.5) * 0.3
    return np.clip(small + field * weight, 0, 1).astype(np.float32)


# ---------------------------------------------------------------- quality
REFINEMENTS = ("guided", "none")  # apply.py's default refinement first; none: the alpha resized


def quality(coarses, frames, alphas, methods, refinements=REFINEMENTS):
    """{refinement: {method: {mad, dtssd, messddt, ms_per_frame}}} (ms: the stabiliser alone)."""
    flows = [ground_truth_flow(a, b) for a, b in zip(alphas[:-1], alphas[1:])]  # MESSDdt's, once per clip
    rows = {refine: {} for refine in refinements}
    for method in methods:
        start = time.perf_counter()
        stabiliser = make_stabiliser(method)
        smalls = [stabiliser(None, image, c) if stabiliser else c for c, image in zip(coarses, frames)]
        seconds = (time.perf_counter() - start) / len(frames)
        for refine in refinements:
            preds = [refine_alpha(image, s, refine) for s, image in zip(smalls, frames)]
            rows[refine][method] = {"mad": float(np.mean([mad(p, g) for p, g in zip(preds, alphas)])),
                                    "dtssd": dtssd(preds, alphas), "messddt": messddt(preds, alphas, flows),
                                    "ms_per_frame": 1000 * seconds}
    return rows


def network_coarses(weights, frames):
    from utils.inference.core import Matter, MatteOptions

    matter = Matter.load(weights, MatteOptions(size=NETWORK))
    return [matter.coarse([f])[0] for f in frames]


# ---------------------------------------------------------------- speed and memory (child processes)
CHILD = """
import os, sys, time
sys.path.insert(0, {repo!r})
import apply
apply.tune_malloc()
start = time.perf_counter()
status = apply.main({argv!r})
seconds = time.perf_counter() - start
hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]
cpu = sum(os.times()[:2])
print('RESULT', status, seconds, int(hwm) / 1024, cpu)
"""


def run_apply(argv):
    """apply.main(argv) in a child -> (status, seconds, peak MB, CPU seconds: user + system of
    all its threads, start-up included)."""
    code = CHILD.format(repo=REPO, argv=list(argv))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT")]
    if not line:
        raise RuntimeError(f"apply.py child failed: {done.stderr[-2000:]}")
    _, status, seconds, peak, cpu = line[-1].split()
    return int(status), float(seconds), float(peak), float(cpu)


def random_weights(folder, arch):
    import torch

    from model import build_model

    torch.manual_seed(0)
    path = os.path.join(folder, f"{arch}_random.pth")
    torch.save(build_model(arch).state_dict(), path)
    return path


def speed(folder, frames, weights, archs, precisions, repeats=3):
    """[(arch, precision, video fps, PNG fps, ratio, video cores, PNG cores)] with apply.py's
    defaults: medians of ``repeats`` runs each, video and PNG runs alternating (a shared
    machine's drift hits both); cores: CPU seconds / wall seconds of the child (how many cores
    it kept busy on average, start-up included)."""
    clip = os.path.join(folder, "speed.mp4")
    write_clip(clip, frames)
    png_dir = os.path.join(folder, "speed_png")
    os.makedirs(png_dir, exist_ok=True)
    for i, image in enumerate(frames):
        cv2.imwrite(os.path.join(png_dir, f"{i:06d}.png"), image[..., ::-1])
    rows = []
    for arch in archs:
        model = weights or random_weights(folder, arch)
        for precision in precisions:
            common = ["--model", model, "--outputs", "alpha", "--precision", precision, "--quiet", "--overwrite",
                      "--size", str(NETWORK)]
            runs = [(run_apply(["--input", clip, "--output", os.path.join(folder, "out_v")] + common),
                     run_apply(["--input", png_dir, "--output", os.path.join(folder, "out_p")] + common))
                    for _ in range(repeats)]
            if any(v[0] or p[0] for v, p in runs):
                rows.append((arch, precision, None, None, None, None, None))
                continue
            video_s, png_s = (float(np.median([r[k][1] for r in runs])) for k in (0, 1))
            ratio = float(np.median([p[1] / v[1] for v, p in runs]))  # each pair's own ratio
            cores = [float(np.median([r[k][3] / r[k][1] for r in runs])) for k in (0, 1)]
            rows.append((arch, precision, len(frames) / video_s, len(frames) / png_s, ratio, *cores))
        if weights:
            break  # the trained weights are one architecture
    return rows


def memory(folder, height, seconds, weights):
    """[(seconds of clip, frames, peak MB, wall s)] for a clip and one 6x longer (U2NETP fp32)."""
    model = weights or random_weights(folder, "u2netp")
    rows = []
    for length in (seconds, 6 * seconds):
        frames, _ = synthetic_clip(height, length, seed=SEED + 1)
        clip = os.path.join(folder, f"memory_{length:g}s.mp4")
        write_clip(clip, frames)
        del frames
        status, wall, peak, _ = run_apply(["--input", clip, "--output", os.path.join(folder, "out_m"), "--model", model,
                                        "--outputs", "alpha", "--quiet", "--overwrite", "--size", str(NETWORK)])
        rows.append((length, int(round(length * 30)), peak if status == 0 else None, wall))
    return rows


def cpu_model():
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--height", type=int, default=360, help="frame height (width 16:9): 360, 720, 1080")
    p.add_argument("--seconds", type=float, default=3.0, help="clip length for quality (default 3)")
    p.add_argument("--speed-seconds", type=float, default=2.0, help="clip length for the speed runs (default 2)")
    p.add_argument("--speed-repeats", type=int, default=3, help="runs of each speed case (medians; default 3)")
    p.add_argument("--archs", default="u2netp,u2net", help="architectures of the speed runs")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--model", help="trained weights (default: the newest results_stage2/*/model/best.pth)")
    p.add_argument("--random-speed-weights", action="store_true",
                   help="speed runs with random weights of each --archs (the trained ones are one architecture)")
    p.add_argument("--skip-quality", action="store_true", help="no quality table (the speed runs alone)")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    from utils.runs import choose_weights

    weights = args.model or choose_weights(None, newest_of=("results_stage2",), roots=(REPO,))
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; load averages {os.getloadavg()} at the start")
    if not weights:
        print("(b) not measured: no trained network (results_stage2/*/model/best.pth) is there")
    results = {"cpu": cpu_model(), "weights": weights}
    if not args.skip_quality:
        print("\n| clip | case | --refine | --temporal | MAD | dtSSD | MESSDdt | MAD / none | dtSSD / none | "
              "MESSDdt / none | ms/frame |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for clip_name, motion in () if args.skip_quality else (("moving", 1.0), ("calm", 0.1)):
        frames, alphas = synthetic_clip(args.height, args.seconds, motion=motion)
        rng = np.random.default_rng(SEED)
        cases = [("(a) truth at 320 + jitter", [jittered(a, rng) for a in alphas]),
                 ("floor: truth at 320, no jitter", [jittered(a, None) for a in alphas])]
        if weights:
            cases.append((f"(b) {os.path.relpath(weights, REPO)}", network_coarses(weights, frames)))
        for name, coarses in cases:
            table = quality(coarses, frames, alphas, TEMPORAL_METHODS if name[0] != "f" else ("none",))
            results[f"{clip_name} {name}"] = table
            for refine, rows in table.items():
                base = rows["none"]
                for method, r in rows.items():
                    print(f"| {clip_name} | {name} | {refine} | {method} | {r['mad']:.5f} | {r['dtssd']:.3f} | "
                          f"{r['messddt']:.3f} | {r['mad'] / base['mad']:.3f} | {r['dtssd'] / base['dtssd']:.3f} | "
                          f"{r['messddt'] / base['messddt']:.3f} | {r['ms_per_frame']:.1f} |", flush=True)
    if not args.skip_quality:
        h, w = frames[0].shape[:2]
        results["clip"] = [w, h, len(frames)]
        print(f"clips: {w}x{h}, {len(frames)} frames at 30 fps, seed {SEED}; default --temporal {DEFAULT_TEMPORAL}; "
              f"load averages {os.getloadavg()}")
    frames = synthetic_clip(args.height, args.speed_seconds)[0]
    h, w = frames[0].shape[:2]
    with tempfile.TemporaryDirectory() as folder:
        if not args.skip_speed:
            speed_frames = frames
            rows = speed(folder, speed_frames, None if args.random_speed_weights else weights,
                         args.archs.split(","), args.precisions.split(","),
                         args.speed_repeats)
            results["speed"] = rows
            print(f"\nspeed, apply.py end to end, {len(speed_frames)} frames {w}x{h}, network {NETWORK}, "
                  f"weights {'trained' if weights and not args.random_speed_weights else 'random'}, medians of {args.speed_repeats} runs each:")
            print("| arch | precision | video frames/s | PNG frames/s | video / PNG | cores busy, video / PNG |\n"
                  "|---|---|---|---|---|---|")
            for arch, precision, v, png, ratio, v_cores, p_cores in rows:
                print(f"| {arch} | {precision} | {v:.2f} | {png:.2f} | {ratio:.2f}x | {v_cores:.2f} / {p_cores:.2f} |"
                      if v else f"| {arch} | {precision} | refused or failed | | | |")
            print(f"load averages {os.getloadavg()}")
        if not args.skip_memory:
            rows = memory(folder, args.height, 1.0, weights)
            results["memory"] = rows
            print("\npeak memory, apply.py --outputs alpha, U2NETP fp32:\n| clip | frames | peak MB | wall s |\n|---|---|---|---|")
            for length, n, peak, wall in rows:
                print(f"| {length:g} s | {n} | {peak:.0f} | {wall:.1f} |")
            print(f"6x longer / short: {rows[1][2] / rows[0][2]:.3f}; load averages {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    main()
