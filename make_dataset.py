"""Turn a folder of portrait photos into a stage-2 training set (paixin_comp_mod layout).

    python make_dataset.py --input photos/ --output datasets/mine --model best.pth --backgrounds bg/
    python make_dataset.py --input photos/ --recursive --input "more/*.jpg" --output datasets/mine \\
        --model u2net.pth --category portrait --refine matting --backgrounds bg/ --composites 5 --seed 0
    torchrun --nproc_per_node=4 make_dataset.py --input photos/ --output datasets/mine --model best.pth
    python train_stage2.py --set dataset_path=datasets/mine
    python test_stage2.py --images datasets/mine/composites/image --alphas datasets/mine/composites/alpha

Every photo is matted as apply.py mattes it (the inference core, ``utils.inference.core.Matter``:
the same weights, network input and refinement give the same alpha), then written as
``<output>/<category>/raw_image/<name>`` (the photo's own bytes; a photo whose EXIF orientation
turns it is written turned, as a lossless ``<stem>.png``) and ``<output>/<category>/mask_image/
<stem>.png``. Its foreground colours go into the training loader's cache
(``<output>/.foreground_cache``), so the first epoch does not estimate them. ``--backgrounds``
are copied (or linked, ``--link-backgrounds``) into ``<output>/background/``.

Quality control: ``<output>/manifest.csv`` has one row per photo (source, name, weights, refine,
foreground, uncertain, status ok | left_out | failed, reason). A matte with under
``--min-foreground`` of its pixels foreground ("no person") or more than ``--max-uncertain`` of
its matte neither sure foreground nor background ("mostly uncertain") is left out of the dataset.

``--composites N``: every foreground of ``--split`` (default ``val``, the held-out split by the
dataset's hash rule) over N backgrounds of the same split, scaled to cover and cropped,
seeded (``--seed``): ``<output>/composites/{image,alpha}/<stem>_<k>.png``.

Run again, it skips what is done (``--overwrite`` redoes all). Bad files are reported by name
and skipped; exit status 1 when any failed, 2 for a bad command. Under torchrun each process
mattes its share of the photos on its own GPU (``cuda:LOCAL_RANK``); rank 0 writes the
manifest and the summary.
"""
import argparse
import datetime
import os
import sys
import time

from tqdm import tqdm

REPO = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, REPO)

from data_loader.foreground import BACKGROUND_DIR, EASY_BACKGROUND_DIR, MASK_DIR, PHOTO_DIR  # noqa: E402
from data_loader.foreground_cache import photo_work_timeout  # noqa: E402
from data_loader.image_io import read_rgb  # noqa: E402
from data_loader.indexing import DatasetError  # noqa: E402
from data_loader.splits import SPLITS  # noqa: E402
from utils.constants import PRECISIONS, REFINE_METHODS, RESIZE_POLICIES  # noqa: E402
from utils.distributed import cleanup, gather_objects, init_distributed_mode, wait_for_all  # noqa: E402
from data_loader import image_io  # noqa: E402
from utils.inference.core import MatteOptions, Matter, ModelOutputError, load_model_file, refine_options  # noqa: E402
from utils.inference.dataset_writer import (DatasetReport, DatasetWriter, Manifest,  # noqa: E402
                                            QualityRule, copy_backgrounds, make_composites, plan_photos, printable)
from utils.inference.files import collect_inputs, share_inputs  # noqa: E402
from utils.runs import find_weights, network_size  # noqa: E402
from utils.settings import positive_int  # noqa: E402

NOT_CATEGORIES = (BACKGROUND_DIR, EASY_BACKGROUND_DIR, "composites")
DEFAULT_REFINE = "guided"  # apply.py's: the same alpha from the same command


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", action="append", required=True, metavar="PATH",
                   help="a photo, a folder or a glob (quote it); repeatable")
    p.add_argument("--output", required=True, metavar="DIR", help="the dataset's folder")
    p.add_argument("--model", metavar="FILE", help="U2NET/U2NETP weights or an .onnx from export.py "
                   "(default: newest results_stage2/1 best.pth)")
    p.add_argument("--category", default="portrait", help="category folder of the photos (default: portrait)")
    p.add_argument("--refine", choices=REFINE_METHODS, default=DEFAULT_REFINE,
                   help=f"full-resolution alpha, as apply.py (default: {DEFAULT_REFINE})")
    p.add_argument("--recursive", action="store_true", help="descend into sub-folders of folder inputs")
    p.add_argument("--backgrounds", metavar="DIR", help="hard backgrounds to copy into <output>/background/")
    p.add_argument("--link-backgrounds", action="store_true", help="symbolic links instead of copies")
    p.add_argument("--min-foreground", type=float, default=0.005,
                   help="leave out mattes with less foreground than this share of the photo (default: 0.005)")
    p.add_argument("--max-uncertain", type=float, default=0.5,
                   help="leave out mattes more uncertain than this share (default: 0.5; 1 keeps all)")
    p.add_argument("--composites", type=int, default=0, metavar="N", help="fixed composites per foreground")
    p.add_argument("--split", choices=SPLITS, default="val", help="foregrounds to composite (default: val)")
    p.add_argument("--seed", type=int, default=0, help="seed of the composites (default: 0)")
    p.add_argument("--size", type=positive_int, default=None,
                   help="network input size (default: as apply.py, the weights' training run's own, else 320)")
    p.add_argument("--resize", choices=RESIZE_POLICIES, default="square", help="as apply.py (default: square)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (torchrun: cuda:LOCAL_RANK)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="fp32 | bf16 | fp16 (default: fp32)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="photos per network call (default: 1 CPU, 8 CUDA)")
    p.add_argument("--workers", type=positive_int, default=2, help="decoding threads (default: 2)")
    p.add_argument("--threads", type=positive_int, default=None, help="network threads on a CPU")
    p.add_argument("--max-pixels", type=positive_int, default=image_io.MAX_PIXELS,
                   help="photos with more pixels fail, checked from the header (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="redo photos, backgrounds and composites")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def check_args(args):
    """Raise ValueError for a bad command, before any work."""
    category = args.category.replace("\\", "/").strip("/")
    parts = category.split("/")
    if not category or os.path.isabs(args.category) or any(p in ("", ".", "..") or p.startswith(".") for p in parts) \
            or parts[0] in NOT_CATEGORIES or PHOTO_DIR in parts or MASK_DIR in parts:
        raise ValueError(f"--category {args.category!r}: a relative folder name, not hidden, "
                         f"not {', '.join(NOT_CATEGORIES)}")
    args.category = category
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise ValueError(f"--output {args.output}: exists and is not a folder")
    if args.backgrounds and not os.path.isdir(args.backgrounds):
        raise ValueError(f"--backgrounds {args.backgrounds}: not a folder")
    if args.composites < 0:
        raise ValueError(f"--composites must be >= 0, got {args.composites}")
    if args.composites and not args.backgrounds and not os.path.isdir(os.path.join(args.output, BACKGROUND_DIR)):
        raise ValueError(f"--composites needs backgrounds: --backgrounds DIR, or {args.output}/{BACKGROUND_DIR}/")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    return QualityRule(args.min_foreground, args.max_uncertain)  # checks the two shares


def load_network(args, device):
    """(model, its file) for ``--model`` (else the newest trained best.pth); ValueError if none."""
    path = find_weights("make_dataset", args.model, roots=(os.getcwd(), REPO))
    if path is None:
        raise ValueError("no model found: pass --model FILE (U2NET/U2NETP weights, e.g. the original "
                         "U-2-Net's u2net.pth, or results_stage*/<run>/model/best.pth)")
    return load_model_file(path, str(device), args.threads)[0], path


def matte_photos(args, dist, rule, model, model_path, manifest):
    """Matte this process's share of the photos into the dataset -> (DatasetReport, count)."""
    files, problems = collect_inputs(args.input, recursive=args.recursive, exclude=args.output)
    todo, clashes, before = plan_photos(share_inputs(files, dist.rank, dist.world_size), manifest.load(),
                                        manifest, args.category, args.overwrite)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world_size))
    threads = max(1, min(8, (os.cpu_count() or 1) // local_world))  # foreground estimations at once
    writer = DatasetWriter(args.output, args.category, manifest, model_path, args.refine, rule, threads=threads)
    writer.report.before = before
    if dist.is_main:
        writer.report.failed += [(f"--input {spec}", reason) for spec, reason in problems]
        for spec, reason in problems:
            print(f"failed: --input {spec}: {reason}", file=sys.stderr)
        print(f"{len(files)} photos, model {model_path}, {dist.world_size} process(es) on {dist.device}",
              file=sys.stderr)
    for item, reason in clashes:
        print(f"failed: {printable(item.path)}: {reason}", file=sys.stderr)
        writer.fail(item, reason)
    batch_size = args.batch_size or (8 if dist.device.type == "cuda" else 1)
    size, _ = network_size(model_path, args.size, getattr(model, "input_size", None))
    matter = Matter(model, MatteOptions(size=size, resize=args.resize, device=str(dist.device),
                                        precision=args.precision, batch_size=batch_size, workers=args.workers,
                                        refine=refine_options(args.refine)), copy_model=False)
    load = (lambda item: read_rgb(item.path)) if args.max_pixels is None else \
        (lambda item: read_rgb(item.path, max_pixels=args.max_pixels))
    bar = tqdm(total=len(todo), unit="img", disable=args.quiet or not dist.is_main, dynamic_ncols=True)
    try:
        for done in matter.stream(todo, load):
            if done.error is not None:
                tqdm.write(f"failed: {printable(done.item.path)}: {done.error}", file=sys.stderr)
                writer.fail(done.item, done.error)
            else:
                writer.write(done.item, done.image, done.alpha)
            bar.update(1)
    except ModelOutputError as err:  # the network's fault: every photo would fail; the others still meet below
        print(f"make_dataset.py: error: {model_path}: {err}", file=sys.stderr)
        writer.report.failed.append(("--model", f"{model_path}: {err}"))
    finally:
        bar.close()
        writer.close()  # the foreground estimations still queued
    return writer.report, len(files)


def make(args, dist, rule, start):
    """Photos, backgrounds, the manifest, composites, the summary; returns the exit status."""
    model, model_path = load_network(args, dist.device)
    manifest = Manifest(args.output, dist.rank)
    if dist.is_main:
        manifest.fold()  # rows of an interrupted run, so that every process reads them
    wait_for_all(datetime.timedelta(minutes=10), "rank 0 to read the manifest")
    report, count = matte_photos(args, dist, rule, model, model_path, manifest)
    if args.backgrounds:
        copied = copy_backgrounds(args.backgrounds, args.output, args.link_backgrounds,
                                  (dist.rank, dist.world_size))
        for name, reason in copied.failed:  # named here: the manifest lists photos only
            print(f"failed: {name}: {reason}", file=sys.stderr)
        report.backgrounds, report.failed = len(copied.done), report.failed + copied.failed
    wait = photo_work_timeout(count // dist.world_size + 1)  # for the slowest process
    wait_for_all(wait, "the other processes to finish their photos")
    if dist.is_main:
        manifest.fold()
    if args.composites:
        made = make_composites(args.output, args.category, args.split, args.composites, args.seed,
                               (dist.rank, dist.world_size), args.overwrite, progress=not args.quiet and dist.is_main)
        report.composites, report.failed = len(made.done), report.failed + made.failed
        wait_for_all(wait, "the other processes to finish their composites")
    report = DatasetReport.merge(gather_objects(report))
    if dist.is_main:
        if not os.path.isdir(os.path.join(args.output, BACKGROUND_DIR)):
            print(f"note: no {args.output}/{BACKGROUND_DIR}/ yet: train_stage2.py needs hard backgrounds "
                  "(--backgrounds DIR)", file=sys.stderr)
        print(f"make_dataset.py: {report.summary()}; {time.perf_counter() - start:.1f} s; "
              f"manifest {os.path.join(args.output, 'manifest.csv')}")
    return 0 if not report.failed else 1


def main(argv=None):
    """Run make_dataset.py with ``argv``; returns the exit status (0 all done, 1 a failure, 2 a bad command)."""
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        rule = check_args(args)
        dist = init_distributed_mode(args.device, training=False)
    except ValueError as err:
        print(f"make_dataset.py: error: {err}", file=sys.stderr)
        return 2
    try:
        return make(args, dist, rule, start)
    except (ValueError, DatasetError) as err:  # no model, bad weights, no split photos for composites
        print(f"make_dataset.py: error: {err}", file=sys.stderr)
        return 2
    finally:
        cleanup()


if __name__ == "__main__":
    sys.exit(main())
