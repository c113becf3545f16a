"""Matte a folder of photos: alpha mattes, clean cut-outs and composites, at full resolution.

    python apply.py                                    # the bundled examples -> results_apply/
    python apply.py --input photos/ --output results_apply/
    python apply.py --input photos/ --output out --model u2net_mine.onnx   # onnxruntime (export.py)
    python apply.py --input photos/ --recursive --input "more/*.jpg" --output out \\
        --outputs alpha,cutout,composite --background "#00ff00" --model best.pth
    python apply.py --input photos/ --output out --outputs alpha --precision bf16   # AVX512-BF16/AMX CPU
    torchrun --nproc_per_node=4 apply.py --input photos/ --output out   # 4 GPUs, each its share of the photos
    python apply.py --input clip.mp4 --output out --outputs alpha,cutout,composite --background beach.mp4
                    # videos (mp4 mov mkv webm avi): alpha/clip.mp4, cutout/clip.webm, composite/clip.mp4;
                    # --temporal none, --video-format mov, --frames (PNG sequences): documents/video.md

Each kind goes to its own folder: ``<output>/alpha/<name>.png`` (8-bit), ``cutout/`` (RGBA,
foreground colours estimated with pymatting, so hair keeps no fringe of the old background),
``composite/`` (over ``--background``, a colour or an image scaled to cover the photo). Names
keep the input's sub-folders (relative to the folder or glob given) and stem. Existing outputs
are kept unless ``--overwrite``. Unreadable files are reported by name and skipped; the exit
status is 1 when any input failed. Without ``--model``: the best weights of the newest stage-2
run (``results_stage2/<run>/model/best.pth``), else of stage 1. Without ``--input``: the bundled
examples (``data_examples/paixin_comp_mod/*/raw_image``), as the seed's ``python apply.py``; without
``--output``: ``results_apply/``. An ``.onnx`` model (export.py) runs with onnxruntime, and then
PyTorch is not imported at all.

Network input: each photo resized to ``--size`` x ``--size`` (aspect not kept), as the original
U-2-Net test script; by default the size the weights' training run used (its settings.json
beside them), else an .onnx file's export size, else 320, the original's. ``--resize
short_side`` keeps the aspect ratio (the scale this project trains at) for 1.33x the compute on
3:4 photos. See utils/inference/predict.py.

Full resolution: the network's 320 px alpha is refined at the photo's own resolution with the
photo as the guide (``--refine``, utils/inference/refine.py); alphas, cut-outs, composites and
the foreground colours all use the refined alpha. ``--refine none`` gives the network's alpha
resized, as before refinement existed.
"""
import argparse
import ctypes
import os
import sys
import time

REPO = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, REPO)

from data_loader import image_io  # noqa: E402
from utils.constants import PRECISIONS, REFINE_METHODS, RESIZE_POLICIES  # noqa: E402
from utils.inference.core import (MatteOptions, Matter, ModelOutputError, default_batch_size,  # noqa: E402
                                  load_model_file, refine_options)
from utils.inference.files import OUTPUT_KINDS, MatteReport, collect_inputs, matte_files, share_inputs  # noqa: E402
from utils.inference.temporal import DEFAULT_TEMPORAL, TEMPORAL_METHODS  # noqa: E402
from utils.inference.video import (FRAME_MODES, VIDEO_FORMATS, VideoBackground, VideoOptions,  # noqa: E402
                                   collect_videos, is_video_file, matte_videos, parse_video_background,
                                   work_units)
from utils.runs import find_weights, network_size  # noqa: E402
from utils.settings import positive_int  # noqa: E402

DEFAULT_REFINE = "guided"  # benchmarks/refine.py: sharper edges for ~0.1 s a photo; README has the figures

NO_MODEL = """no model found: pass --model FILE (U2NET or U2NETP weights, e.g. the original
U-2-Net's u2net.pth or a results_stage*/<run>/model/best.pth), or train one:
    python train_stage1.py      # AISegment portraits -> results_stage1/<run>/model/best.pth
    python train_stage2.py      # easy-to-hard composites -> results_stage2/<run>/model/best.pth
apply.py then picks the newest stage-2 (else stage-1) best.pth by itself."""
EXAMPLES = os.path.join(REPO, "data_examples", "paixin_comp_mod", "*", "raw_image", "*")
DEFAULT_OUTPUT = "results_apply"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", action="append", metavar="PATH",
                   help="an image, a folder or a glob (quote it); repeatable (default: the bundled examples)")
    p.add_argument("--output", default=DEFAULT_OUTPUT, metavar="DIR", help=f"output folder (default: {DEFAULT_OUTPUT})")
    p.add_argument("--recursive", action="store_true", help="descend into sub-folders of folder inputs")
    p.add_argument("--model", metavar="FILE",
                   help="weights or an .onnx from export.py (default: newest results_stage2/1 best.pth)")
    p.add_argument("--outputs", default="alpha,cutout",
                   help=f"comma-separated subset of {','.join(OUTPUT_KINDS)} (default: alpha,cutout)")
    p.add_argument("--background", default="#ffffff",
                   help="composite background: a colour (#00ff00, white), an image, or a video (looped; photos "
                        "get its first frame) (default: #ffffff)")
    p.add_argument("--frames", nargs="?", const="also", default="none", choices=FRAME_MODES,
                   help="videos: also (bare --frames) or only write PNG sequences <kind>/<stem>/%%06d.png")
    p.add_argument("--video-format", choices=VIDEO_FORMATS, default="webm",
                   help="videos: the cut-out's container, webm (VP9 with alpha) or mov (ProRes 4444) (default: webm)")
    p.add_argument("--temporal", choices=TEMPORAL_METHODS, default=DEFAULT_TEMPORAL,
                   help=f"videos: temporal stabilisation of the alphas, none for per-frame (default: {DEFAULT_TEMPORAL}; "
                        "documents/video.md)")
    p.add_argument("--size", type=positive_int, default=None,
                   help="network input size (default: the image_size of the training run the weights come "
                        "from, else an .onnx file's export size, else 320)")
    p.add_argument("--resize", choices=RESIZE_POLICIES, default="square",
                   help="square: size x size, as the original U-2-Net; short_side: keep the aspect ratio")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32; bf16 (CUDA, or CPUs with AVX512-BF16/AMX); fp16 (CUDA)")
    p.add_argument("--refine", choices=REFINE_METHODS, default=DEFAULT_REFINE,
                   help="full-resolution alpha: none (the network's, resized), guided (fast guided filter), "
                        f"matting (closed-form matting in the edge band) (default: {DEFAULT_REFINE}; see documents/refinement.md)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="images per network call (default: 1 on CPU, 8 on CUDA)")
    p.add_argument("--workers", type=positive_int, default=2, help="decoding threads (default: 2)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="threads for the network on a CPU (default: the core count)")
    p.add_argument("--max-pixels", type=positive_int, default=image_io.MAX_PIXELS,
                   help="photos with more pixels fail, checked from the header before decoding "
                        "(a decompression bomb costs nothing) (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def tune_malloc():
    """glibc's malloc, set for a long run of same-sized activations (measured on U2NET at 320):
    one arena for all threads (each decoding thread's own arena would keep its freed photos
    resident: 40-90 MB); and no mmap'd blocks nor trimming, so freed activations stay mapped for
    the next photo instead of being returned to the system and faulted in again (19 photos:
    0.7-1.1 million page faults -> 0.2 million, system time 3-4 s -> 1.2 s; same peak memory)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    libc.mallopt(-8, 1)  # M_ARENA_MAX
    libc.mallopt(-4, 0)  # M_MMAP_MAX
    libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD


def resolve_model_path(path):
    """--model as given, else the newest best.pth of stage 2, else of stage 1 (in the working
    folder or beside apply.py); None if none."""
    return find_weights("apply", path, roots=(os.getcwd(), REPO))


def load_network(args):
    """(model, its file, device, batch size) for ``args``: an ``OnnxModel`` for an .onnx file
    (onnxruntime: torch is never imported), else the PyTorch network. Raises ValueError."""
    model_path = resolve_model_path(args.model)
    if model_path is None:
        raise ValueError(NO_MODEL)
    model, device = load_model_file(model_path, args.device, args.threads)
    batch_size = args.batch_size or default_batch_size(device)
    return model, model_path, device, batch_size


def join_processes(args):
    """Under torchrun with several processes: join the group (gloo on CPUs, NCCL on GPUs) and take
    this process's device (``cuda:LOCAL_RANK``, or the CPU) into ``args.device``; returns the
    DistInfo. One process: None, and torch is not imported for it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from utils.distributed import init_distributed_mode

    dist = init_distributed_mode(args.device, training=False)
    args.device = str(dist.device)
    return dist


def add_videos(files, problems, args):
    """``collect_inputs``' files plus the videos in the folders and globs of ``--input`` (it
    takes only photos from those), without its "no image files" for a spec that gave videos."""
    seen, videos, gave = {os.path.realpath(f.path) for f in files}, [], set()
    for spec in args.input:
        for video in collect_videos([spec], recursive=args.recursive, exclude=args.output):
            gave.add(spec)
            if os.path.realpath(video.path) not in seen:
                seen.add(os.path.realpath(video.path))
                videos.append(video)
    return files + videos, [(spec, reason) for spec, reason in problems if spec not in gave]


def gather_report(report, dist, files):
    """Every process's report merged (each process gets the same); ``report`` with one process."""
    if dist is None:
        return report
    from data_loader.foreground_cache import photo_work_timeout
    from utils.distributed import gather_objects, wait_for_all

    wait_for_all(photo_work_timeout(work_units(files)), "the other processes' photos and videos")
    return MatteReport.merge(gather_objects(report))


def main(argv=None):
    """Run apply.py with ``argv``; returns the exit status (0 all done, 1 a failure). Under
    torchrun each process mattes its share of the files (``share_inputs``); rank 0 reports."""
    args = parse_args(argv)
    try:
        dist = join_processes(args)
    except ValueError as err:  # cuda:N under torchrun, more processes than GPUs
        print(f"apply.py: error: {err}", file=sys.stderr)
        return 2
    try:
        return run(args, dist)
    finally:
        if dist is not None:
            from utils.distributed import cleanup
            cleanup()


def run(args, dist):
    """apply.py's work, for one process or (``dist``) one of torchrun's; returns the exit status."""
    start = time.perf_counter()
    main_process = dist is None or dist.is_main
    if not args.input:  # as the seed's ``python apply.py``: the bundled examples
        args.input = [EXAMPLES]
        examples = os.path.relpath(EXAMPLES) if REPO.startswith(os.getcwd()) else EXAMPLES
        if main_process:
            print(f"apply.py: no --input: matting the bundled examples {examples} into {args.output}/", file=sys.stderr)
    outputs = tuple(k.strip() for k in args.outputs.split(",") if k.strip())
    try:
        unknown = [k for k in outputs if k not in OUTPUT_KINDS]
        if not outputs or unknown:
            raise ValueError(f"--outputs {args.outputs!r}: expected a subset of {','.join(OUTPUT_KINDS)}")
        if os.path.exists(args.output) and not os.path.isdir(args.output):
            raise ValueError(f"--output {args.output}: exists and is not a folder")
        background = parse_video_background(args.background) if "composite" in outputs else None
        model, model_path, device, batch_size = load_network(args)
        size, size_source = network_size(model_path, args.size, getattr(model, "input_size", None))
        options = MatteOptions(size=size, resize=args.resize, device=str(device), precision=args.precision,
                               batch_size=batch_size, workers=args.workers, refine=refine_options(args.refine))
        matter = Matter(model, options, copy_model=False)  # the model loaded here is the core's to prepare
    except ValueError as err:  # so are CheckpointError, OnnxModelError and ImageReadError
        print(f"apply.py: error: {err}", file=sys.stderr)
        return 2

    files, problems = collect_inputs(args.input, recursive=args.recursive, exclude=args.output)
    files, problems = add_videos(files, problems, args)
    for spec, reason in problems if main_process else ():
        print(f"failed: --input {spec}: {reason}", file=sys.stderr)
    if not args.quiet and main_process:
        newest = "" if args.model else " (the newest trained weights)"
        runtime = f"onnxruntime on {device}" if matter.runtime == "onnxruntime" else f"{device}, {args.precision}"
        processes = f", {dist.world_size} processes" if dist else ""
        videos = sum(map(is_video_file, (f.path for f in files)))
        print(f"{len(files) - videos} images, {videos} videos, model {model_path}{newest}, {runtime}, batch {batch_size}{processes}, "
              f"network input {size}x{size} (from {size_source})", file=sys.stderr)
    mine = share_inputs(files, dist.rank, dist.world_size) if dist else files
    clips = [f for f in mine if is_video_file(f.path)]
    photos = [f for f in mine if not is_video_file(f.path)]
    try:
        report = matte_files(matter, photos, args.output, outputs=outputs,
                             background=background.first() if isinstance(background, VideoBackground) else background,
                             overwrite=args.overwrite, progress=not args.quiet and main_process,
                             max_pixels=args.max_pixels)
        if clips:
            clip_report = matte_videos(matter, clips, args.output, outputs, VideoOptions(
                background, args.temporal, args.video_format, args.frames, args.overwrite,
                progress=not args.quiet and main_process, max_pixels=args.max_pixels))
            report = report.add(clip_report)
    except ModelOutputError as err:  # the network's fault, not a photo's: every photo would fail
        print(f"apply.py: error: {model_path}: {err}", file=sys.stderr)
        report = MatteReport(failed=[("--model", f"{model_path}: {err}")])  # torchrun: still meet the others below
    report = gather_report(report, dist, mine)
    report.failed.extend((f"--input {spec}", reason) for spec, reason in problems)
    if main_process:
        print(f"apply.py: {report.summary()}; {time.perf_counter() - start:.1f} s in all; outputs in {args.output}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    tune_malloc()  # the command only (not main() called from Python), before any thread allocates
    status = main()
    # Every output is written and closed by now. Skipping the interpreter's teardown of torch
    # (about 1 s of freeing objects one by one) ends the run sooner; same exit status.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
