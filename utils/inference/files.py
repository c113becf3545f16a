"""Matting a set of photos into files: alpha mattes, cut-outs and composites.

``matte_files`` is the function apply.py wraps: worker threads decode and resize photos while
the network runs on batches (``utils.inference.predict``), and writer threads resize each alpha back
to its photo, estimate the foreground colours (pymatting, only when a cut-out or composite is
asked for) and write PNGs atomically. A photo that cannot be read is reported by name and
skipped; the others go on.

    files, problems = collect_inputs(["photos/", "more/*.jpg"], recursive=True)
    report = matte_files(load_model("best.pth"), files, "out", outputs=("alpha", "cutout"))
    print(report.summary()); sys.exit(0 if report.ok and not problems else 1)
"""
import glob
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np
from tqdm import tqdm

from data_loader.image_io import ImageReadError, is_image_file, read_rgb
from utils.constants import REFINE_METHODS
from utils.fileio import atomic_write
from .cutout import alpha_to_uint8, composite_over, cutout_rgba, estimate_foreground_colours, fit_background, parse_background
from .onnx_model import OnnxModel
from .preprocess import alpha_to_size, network_input_size, preprocess  # no torch: .onnx models run without it

OUTPUT_KINDS = ("alpha", "cutout", "composite")
PNG_COMPRESSION = 1  # zlib level: 1 writes 3-5x faster than 6 for ~10 % larger files


@dataclass(frozen=True)
class InputFile:
    """``path``: the file to read; ``name``: its name relative to the folder or glob it came
    from (sub-folders kept), which the outputs reuse."""
    path: str
    name: str


@dataclass
class MatteReport:
    """What ``matte_files`` did: names done, and ``(name, reason)`` for skipped and failed."""
    done: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self):
        return not self.failed

    @classmethod
    def merge(cls, reports):
        """One report from the processes' reports (torchrun): lists joined, the longest time."""
        merged = cls(seconds=max((r.seconds for r in reports), default=0.0))
        for r in reports:
            merged.done += r.done
            merged.skipped += r.skipped
            merged.failed += r.failed
        return merged

    def summary(self):
        rate = len(self.done) / self.seconds if self.seconds > 0 else 0.0
        return (f"{len(self.done)} done, {len(self.skipped)} skipped, {len(self.failed)} failed "
                f"in {self.seconds:.1f} s ({rate:.2f} images/s)")


# ---------------------------------------------------------------- inputs and outputs
def _glob_base(pattern):
    """The leading folders of ``pattern`` that hold no wildcard."""
    parts, base = pattern.split(os.sep), []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        base.append(part)
    return os.sep.join(base) or "."


def collect_inputs(specs, recursive=False, exclude=None):
    """Expand files, folders and globs into ``InputFile``s, in a stable order.

    A file named explicitly is always taken (a bad one fails later, by name); folders and globs
    give only files with an image extension. ``recursive`` descends into sub-folders of a
    folder. Files under ``exclude`` (the output folder) are left out. The same file given twice
    is taken once. Returns ``(files, problems)``, problems being ``(spec, reason)`` for specs
    that match nothing.
    """
    exclude = os.path.realpath(exclude) + os.sep if exclude else None
    files, problems, seen = [], [], set()

    def add(path, name):
        real = os.path.realpath(path)
        if real not in seen and not (exclude and real.startswith(exclude)):
            seen.add(real)
            files.append(InputFile(path, os.path.normpath(name)))

    for spec in specs:
        found = len(files)
        if os.path.isfile(spec):
            add(spec, os.path.basename(spec))
        elif os.path.isdir(spec):
            for root, dirs, names in os.walk(spec):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
                for n in sorted(names):
                    if is_image_file(n):
                        add(os.path.join(root, n), os.path.relpath(os.path.join(root, n), spec))
        elif glob.has_magic(spec):
            base = _glob_base(spec)
            for path in sorted(glob.glob(spec, recursive=True)):
                if os.path.isfile(path) and is_image_file(path):
                    add(path, os.path.relpath(path, base))
        else:
            problems.append((spec, "no such file or folder"))
            continue
        if len(files) == found:
            problems.append((spec, "no image files found" + ("" if recursive or not os.path.isdir(spec)
                                                             else " (sub-folders need --recursive)")))
    return files, problems


def output_key(name):
    """What two inputs must not share: their outputs would overwrite each other (``a.jpg`` and
    ``a.png`` both give ``a.png``)."""
    return os.path.normcase(os.path.splitext(name)[0])


def separate_clashes(inputs):
    """``(kept, clashes)``: the inputs in order, but for those whose outputs would overwrite an
    earlier input's, which go to ``clashes`` as ``(item, path of that earlier input)``."""
    kept, clashes, owner = [], [], {}
    for item in inputs:
        key = output_key(item.name)
        if key in owner:
            clashes.append((item, owner[key]))
        else:
            owner[key] = item.path
            kept.append(item)
    return kept, clashes


def clash_reason(owner):
    """Why an input whose outputs would overwrite those of input ``owner`` (a path) fails."""
    return f"its outputs would overwrite those of {owner}; rename one"


def share_inputs(inputs, rank, world_size):
    """This process's share of ``inputs`` under torchrun: each file goes to exactly one of
    ``world_size`` processes, by the index of its output name (``output_key``) in input order
    modulo the world size. Inputs whose names clash stay together, so every process reports
    the same clashes that one process would."""
    keys = {}
    for item in inputs:
        keys.setdefault(output_key(item.name), len(keys))
    return [item for item in inputs if keys[output_key(item.name)] % world_size == rank]


def output_path(output_dir, kind, name):
    """``<output_dir>/<kind>/<name's folders>/<name's stem>.png``."""
    return os.path.join(output_dir, kind, os.path.splitext(name)[0] + ".png")


def write_png(path, image):
    """Write uint8 gray (H,W), RGB (H,W,3) or RGBA (H,W,4) atomically (temporary file, rename)."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR if image.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    ok, data = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    atomic_write(path, data.tobytes())


# ---------------------------------------------------------------- the pipeline
def _check(outputs, size, resize, batch_size, workers, background, on_alpha, refine="none"):
    if refine not in REFINE_METHODS:
        raise ValueError(f"refine must be one of {REFINE_METHODS}, got {refine!r}")
    unknown = [k for k in outputs if k not in OUTPUT_KINDS]
    if (not outputs and on_alpha is None) or unknown:
        raise ValueError(f"outputs must be a non-empty subset of {OUTPUT_KINDS}, got {list(outputs)}")
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    network_input_size(size, size, size, resize)  # validates resize
    if batch_size < 1 or workers < 1:
        raise ValueError(f"batch_size and workers must be >= 1, got {batch_size} and {workers}")
    if "composite" in outputs and background is None:
        raise ValueError("a composite needs a background (a colour or an image)")


def _network(model, device, precision, size, resize):
    """The network as a function: float32 (B,3,h,w) array -> alpha float32 (B,h,w). An
    ``OnnxModel`` is one already; a PyTorch model is prepared for ``device`` and ``precision``
    (torch is imported only then). Raises ValueError / TypeError before any work."""
    if isinstance(model, OnnxModel):
        model.check_precision(precision)
        if model.fixed_size and resize != "square":
            raise ValueError(f"{model.path} takes only fixed-size inputs (exported with --static): use --resize square")
        model.check_size(size, size)
        return model
    import torch

    from .predict import check_precision, prepare_model, run_network

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or an OnnxModel, got {type(model).__name__}")
    device = torch.device(device)
    warning = check_precision(device, precision)
    if warning:  # emulated bf16 runs ~15x slower than fp32: refuse rather than crawl
        raise ValueError(f"--precision {precision}: {warning}; use fp32")
    net = prepare_model(model, device, precision)
    return lambda batch: run_network(net, torch.from_numpy(batch).to(device)).numpy()


def _plan(inputs, output_dir, outputs, overwrite, report, note):
    """(input, kinds to write) for each input; skips and name clashes go into ``report``."""
    inputs, clashes = separate_clashes(inputs)
    for item, owner in clashes:
        report.failed.append((item.name, clash_reason(owner)))
        note(f"failed: {item.path}: output name clashes with {owner}")
    jobs = []
    for item in inputs:
        kinds = [k for k in outputs if overwrite or not os.path.exists(output_path(output_dir, k, item.name))]
        if not outputs:  # only ``on_alpha``: its caller decided what to do
            jobs.append((item, kinds))
            continue
        if len(kinds) < len(outputs):
            existing = ", ".join(k for k in outputs if k not in kinds)
            note(f"{'skipped' if not kinds else 'kept'} existing {existing} of {item.name} (--overwrite replaces)")
        if kinds:
            jobs.append((item, kinds))
        else:
            report.skipped.append((item.name, "outputs exist"))
    return jobs


def matte_files(model, inputs, output_dir, *, outputs=("alpha", "cutout"), background="#ffffff",
                size=320, resize="square", device="cpu", precision="fp32", batch_size=1, workers=2,
                overwrite=False, progress=True, note=None, on_alpha=None, refine="none", refine_options=None):
    """Matte every ``InputFile`` in ``inputs`` into ``<output_dir>/<kind>/<name>.png``.

    model: U2NET/U2NETP, made ready in place by ``utils.inference.predict.prepare_model`` (so for
    inference only afterwards), or an ``OnnxModel`` (``load_any_model("x.onnx")``: then torch
    is not imported, and ``device`` is the one it was loaded for). outputs: subset of ``OUTPUT_KINDS``: ``alpha`` 8-bit gray,
    ``cutout`` RGBA with estimated foreground colours, ``composite`` RGB over ``background``
    (a colour string, an image path, or ``parse_background``'s array). size, resize, device,
    precision: as ``utils.inference.predict.predict_alphas`` (bf16 on a CPU without native bf16 is
    refused). batch_size: photos per network call. workers: decoding threads (one more thread
    writes). overwrite: replace existing outputs (else each is kept, with a note). note: called
    with each message (default: print to stderr; above the progress bar when ``progress``).
    on_alpha: called in the writer thread as ``on_alpha(item, image, alpha)`` (uint8 RGB (H,W,3),
    float32 (H,W) in [0,1]) after the outputs asked for are written; ``outputs`` may then be
    empty (make_dataset.py writes its own files). An OSError or ValueError it raises fails
    that file, by name. refine: one of ``REFINE_METHODS``, how the alpha becomes full-resolution
    (``utils.inference.refine.refine_alpha`` with ``refine_options``; ``none``: resized); every
    output and ``on_alpha`` get the refined alpha. Raises ValueError for bad arguments, before
    any work. Returns a ``MatteReport``.
    """
    _check(outputs, size, resize, batch_size, workers, background, on_alpha, refine)
    network = _network(model, device, precision, size, resize)
    if "composite" in outputs and isinstance(background, str):
        background = parse_background(background)
    run = _Run(network, output_dir, outputs, background, size, resize, device,
               batch_size, progress, note or (lambda message: print(message, file=sys.stderr)))
    run.on_alpha, run.needs_image = on_alpha, run.needs_image or on_alpha is not None
    if refine != "none":
        from .refine import check_options, refine_alpha  # numba: ~0.8 s to import, only when refining
        check_options(refine, refine_options or {})
        run.refine = lambda image, small: refine_alpha(image, small, refine, **(refine_options or {}))
        run.needs_image = True
    try:
        run.process(_plan(inputs, output_dir, outputs, overwrite, run.report, run.say), len(inputs), workers)
    finally:
        run.bar.close()
    run.report.seconds = time.perf_counter() - run.start
    return run.report


class _Run:
    """One ``matte_files`` call: decode in threads -> network in batches -> write in a thread."""

    on_alpha = None
    refine = None  # (photo, network alpha) -> full-resolution alpha; None: resized

    def __init__(self, model, output_dir, outputs, background, size, resize, device, batch_size, progress, note):
        self.model, self.output_dir, self.background = model, output_dir, background
        self.size, self.resize, self.device, self.batch_size = size, resize, device, batch_size
        self.needs_image = "cutout" in outputs or "composite" in outputs
        self.progress, self.note = progress, note
        self.report, self.lock, self.start = MatteReport(), threading.Lock(), time.perf_counter()
        self.bar = tqdm(total=0, unit="img", disable=not progress, dynamic_ncols=True)

    def say(self, message):
        if self.progress:
            tqdm.write(message, file=sys.stderr)  # above the progress bar, not through it
        else:
            self.note(message)

    def finish(self, item, reason=None):
        with self.lock:
            if reason is None:
                self.report.done.append(item.name)
            else:
                self.report.failed.append((item.name, reason))
            self.bar.update(1)
        if reason is not None:
            self.say(f"failed: {item.path}: {reason}")

    def load(self, item):
        """Worker thread: file -> (network input, (H, W), the photo if cut-outs need it)."""
        image = read_rgb(item.path)
        return preprocess(image, self.size, self.resize), image.shape[:2], image if self.needs_image else None

    def write(self, item, kinds, small_alpha, shape, image):
        """Writer thread: alpha at the photo's size, then the PNGs asked for."""
        try:
            if self.refine is None:
                alpha = alpha_to_size(small_alpha, *shape)
            else:
                alpha = self.refine(image, small_alpha)
            if "alpha" in kinds:
                write_png(output_path(self.output_dir, "alpha", item.name), alpha_to_uint8(alpha))
            if "cutout" in kinds or "composite" in kinds:
                foreground = estimate_foreground_colours(image, alpha)
                if "cutout" in kinds:
                    write_png(output_path(self.output_dir, "cutout", item.name), cutout_rgba(foreground, alpha))
                if "composite" in kinds:
                    background = fit_background(self.background, *shape)
                    write_png(output_path(self.output_dir, "composite", item.name),
                              composite_over(foreground, alpha, background))
            if self.on_alpha is not None:
                self.on_alpha(item, image, alpha)
        except (OSError, cv2.error, ValueError, MemoryError) as err:
            return self.finish(item, f"writing failed: {err}")
        self.finish(item)

    def run_batch(self, batch, writer, writing):
        alphas = self.model(np.stack([entry[2] for entry in batch]))  # ``_network``'s function
        for (item, kinds, _, shape, image), small in zip(batch, alphas):
            while len(writing) > 2 * self.batch_size + 1:  # bound the memory queued writes hold
                writing.popleft().result()
            writing.append(writer.submit(self.write, item, kinds, small, shape, image))

    def process(self, jobs, total, workers):
        """Main thread: keep ``batch_size + workers`` decodes ahead, batch equal input shapes."""
        self.bar.reset(total=total)
        self.bar.update(total - len(jobs))  # skipped and clashing names
        todo, pending, writing, batch = iter(jobs), deque(), deque(), []
        with ThreadPoolExecutor(workers, thread_name_prefix="decode") as reader, \
                ThreadPoolExecutor(1, thread_name_prefix="write") as writer:
            try:
                while True:
                    while len(pending) < self.batch_size + workers and (job := next(todo, None)):
                        pending.append((job, reader.submit(self.load, job[0])))
                    if not pending:
                        break
                    (item, kinds), future = pending.popleft()
                    try:
                        x, shape, image = future.result()
                    except ImageReadError as err:
                        self.finish(item, err.reason)
                        continue
                    except (MemoryError, cv2.error) as err:
                        self.finish(item, f"{type(err).__name__}: {err}")
                        continue
                    if batch and batch[0][2].shape != x.shape:
                        self.run_batch(batch, writer, writing)
                        batch = []
                    batch.append((item, kinds, x, shape, image))
                    if len(batch) == self.batch_size:
                        self.run_batch(batch, writer, writing)
                        batch = []
                if batch:
                    self.run_batch(batch, writer, writing)
                for future in writing:
                    future.result()
            except BaseException:
                for _, future in pending:
                    future.cancel()
                raise
