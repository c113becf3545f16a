"""Matting a set of photo files into files: alpha mattes, cut-outs and composites.

apply.py's side of the inference core (``utils.inference.core.Matter``): which files to read
(``collect_inputs``), where their outputs go (``output_path``), which are done already
(``plan_outputs``), and the writing (``write_outputs``, atomic PNGs). ``matte_files`` puts them
together over ``Matter.stream``, which overlaps decoding, the network and refinement while this
thread writes. A photo that cannot be read, refined or written is reported by name and skipped;
the others go on.

    files, problems = collect_inputs(["photos/", "more/*.jpg"], recursive=True)
    report = matte_files(Matter.load("best.pth", MatteOptions()), files, "out", outputs=("alpha", "cutout"))
    print(report.summary()); sys.exit(0 if report.ok and not problems else 1)
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import sys
import time
from dataclasses import dataclass, field

import cv2
import numpy as np
from tqdm import tqdm

from data_loader.image_io import is_image_file, read_rgb
from utils.fileio import TMP_SUFFIX, atomic_write

from .core import error_reason
from .cutout import alpha_to_uint8, composite_over, cutout_rgba, estimate_foreground_colours, fit_background, parse_background

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

    def add(self, other: "MatteReport") -> "MatteReport":
        """This report followed by ``other``, run after it (lists joined, times added)."""
        return MatteReport(self.done + other.done, self.skipped + other.skipped, self.failed + other.failed,
                           self.seconds + other.seconds)

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


def collect_inputs(specs: list[str], recursive: bool = False, exclude: str | None = None,
                   wanted=is_image_file) -> tuple[list[InputFile], list[tuple[str, str]]]:
    """Expand files, folders and globs into ``InputFile``s, in a stable order.

    A file named explicitly is always taken (a bad one fails later, by name); folders and globs
    give only the files whose name ``wanted`` accepts (default: an image extension).
    ``recursive`` descends into sub-folders of a folder. Files under ``exclude`` (the output
    folder) are left out. The same file given twice is taken once. Returns ``(files, problems)``, problems being ``(spec, reason)`` for specs
    that match nothing.
    """
    exclude = os.path.realpath(exclude) + os.sep if exclude else None
    files, problems, seen = [], [], set()

    def add(path, name):
        real = os.path.realpath(path)
        if real not in seen and not (exclude and real.startswith(exclude)):
            seen.add(real)
            files.append(InputFile(path, os.path.normpath(name)))

    def unreadable(err):  # os.walk skips what it cannot list: say so, the run then exits 1
        problems.append((err.filename or spec, f"cannot list the folder ({err.strerror or err})"))

    for spec in specs:
        found, matched = len(files), False
        if os.path.isfile(spec):
            matched = True
            add(spec, os.path.basename(spec))
        elif os.path.isdir(spec):
            for root, dirs, names in os.walk(spec, onerror=unreadable):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
                for n in sorted(names):
                    if wanted(n):
                        matched = True
                        add(os.path.join(root, n), os.path.relpath(os.path.join(root, n), spec))
        elif glob.has_magic(spec):
            base = _glob_base(spec)
            for path in sorted(glob.glob(spec, recursive=True)):
                if os.path.isfile(path) and wanted(path):
                    matched = True
                    add(path, os.path.relpath(path, base))
        else:
            problems.append((spec, "no such file or folder"))
            continue
        if not matched and len(files) == found:  # a spec naming files given before is no problem
            problems.append((spec, "no image files found" + ("" if recursive or not os.path.isdir(spec)
                                                             else " (sub-folders need --recursive)")))
    return files, problems


def output_key(name: str) -> str:
    """What two inputs must not share: their outputs would overwrite each other (``a.jpg`` and
    ``a.png`` both give ``a.png``)."""
    return os.path.normcase(os.path.splitext(name)[0])


def separate_clashes(inputs: list) -> tuple[list, list]:
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


def clash_reason(owner: str) -> str:
    """Why an input whose outputs would overwrite those of input ``owner`` (a path) fails."""
    return f"its outputs would overwrite those of {owner}; rename one"


def share_inputs(inputs: list, rank: int, world_size: int) -> list:
    """This process's share of ``inputs`` under torchrun: each file goes to exactly one of
    ``world_size`` processes, by the index of its output name (``output_key``) in input order
    modulo the world size. Inputs whose names clash stay together, so every process reports
    the same clashes that one process would."""
    keys = {}
    for item in inputs:
        keys.setdefault(output_key(item.name), len(keys))
    return [item for item in inputs if keys[output_key(item.name)] % world_size == rank]


def output_path(output_dir: str, kind: str, name: str) -> str:
    """``<output_dir>/<kind>/<name's folders>/<name's stem>.png``."""
    return os.path.join(output_dir, kind, os.path.splitext(name)[0] + ".png")


def encode_png(image) -> bytes:
    """uint8 gray (H,W), RGB (H,W,3) or RGBA (H,W,4) -> the PNG file's bytes (the encoding of
    every PNG apply.py writes; serve.py answers with the same bytes). Raises OSError."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR if image.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    ok, data = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:
        raise OSError("PNG encoding failed")
    return data.tobytes()


def write_png(path: str, image: np.ndarray) -> None:
    """Write uint8 gray (H,W), RGB (H,W,3) or RGBA (H,W,4) atomically (temporary file, rename)."""
    try:
        data = encode_png(image)
    except OSError as err:
        raise OSError(f"{path}: {err}") from err
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    atomic_write(path, data)


# ---------------------------------------------------------------- the pipeline
def remove_stale_temporaries(path: str) -> None:
    """Remove the temporaries a killed writer left beside ``path`` (``atomic_open``'s
    ``.<name>.<pid>.<thread>.tmp`` files, and video.py's frame folders named alike) whose
    process is gone; a live process's are its own."""
    folder, base = os.path.split(path)
    prefix = f".{base}."
    try:
        names = [n for n in os.listdir(folder or ".") if n.startswith(prefix) and n.endswith(TMP_SUFFIX)]
    except OSError:
        return
    for name in names:
        pid = name[len(prefix):].split(".")[0]
        if pid.isdigit() and not _alive(int(pid)):
            stale = os.path.join(folder, name)
            if os.path.isdir(stale) and not os.path.islink(stale):
                shutil.rmtree(stale, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.remove(stale)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def is_complete(path: str) -> bool:
    """An existing output that a rerun keeps: a non-empty file (an atomic write never leaves an
    empty one; something else did)."""
    try:
        return os.path.getsize(path) > 0
    except OSError:
        return False


def plan_outputs(inputs: list[InputFile], output_dir: str, outputs: tuple[str, ...], overwrite: bool,
                 report: MatteReport, note) -> list[tuple[InputFile, list[str]]]:
    """(input, kinds to write) for each input; skips and name clashes go into ``report``. Stale
    temporaries of a killed run are removed on the way."""
    inputs, clashes = separate_clashes(inputs)
    for item, owner in clashes:
        report.failed.append((item.name, clash_reason(owner)))
        note(f"failed: {item.path}: output name clashes with {owner}")
    jobs = []
    for item in inputs:
        paths = {kind: output_path(output_dir, kind, item.name) for kind in outputs}
        for path in paths.values():
            remove_stale_temporaries(path)
        kinds = [k for k in outputs if overwrite or not is_complete(paths[k])]
        if len(kinds) < len(outputs):
            existing = ", ".join(k for k in outputs if k not in kinds)
            note(f"{'skipped' if not kinds else 'kept'} existing {existing} of {item.name} (--overwrite replaces)")
        if kinds:
            jobs.append((item, kinds))
        else:
            report.skipped.append((item.name, "outputs exist"))
    return jobs


def render_outputs(kinds, image: np.ndarray, alpha: np.ndarray, background: np.ndarray | None = None
                   ) -> dict[str, np.ndarray]:
    """The arrays of one photo's ``kinds``, as every caller writes them (apply.py's PNGs,
    video frames, serve.py's answers): ``alpha`` uint8 (H,W); ``cutout`` uint8 RGBA (H,W,4)
    with the foreground colours estimated (once, for both); ``composite`` uint8 RGB (H,W,3) over
    ``background`` (``parse_background``'s colour (3,) or image, scaled to cover the photo).
    image uint8 RGB (H,W,3); alpha float32 (H,W) in [0,1]."""
    arrays = {}
    if "alpha" in kinds:
        arrays["alpha"] = alpha_to_uint8(alpha)
    if "cutout" in kinds or "composite" in kinds:
        foreground = estimate_foreground_colours(image, alpha)
        if "cutout" in kinds:
            arrays["cutout"] = cutout_rgba(foreground, alpha)
        if "composite" in kinds:
            arrays["composite"] = composite_over(foreground, alpha, fit_background(background, *image.shape[:2]))
    return arrays


def write_outputs(output_dir: str, name: str, kinds: list[str], image: np.ndarray, alpha: np.ndarray,
                  background: np.ndarray | None = None) -> None:
    """Write the ``kinds`` of one photo (``render_outputs``) as PNGs under ``output_dir``."""
    for kind, array in render_outputs(kinds, image, alpha, background).items():
        write_png(output_path(output_dir, kind, name), array)


class Progress:
    """A progress bar with messages above it (not through it), and the report it counts into."""

    def __init__(self, total, enabled=True, note=None):
        self.report, self.enabled, self.start = MatteReport(), enabled, time.perf_counter()
        self.note = note or (lambda message: print(message, file=sys.stderr))
        self.bar = tqdm(total=total, unit="img", disable=not enabled, dynamic_ncols=True)

    def say(self, message):
        if self.enabled:
            tqdm.write(message, file=sys.stderr)
        else:
            self.note(message)

    def finish(self, item, reason=None):
        if reason is None:
            self.report.done.append(item.name)
        else:
            self.report.failed.append((item.name, reason))
            self.say(f"failed: {item.path}: {reason}")
        self.bar.update(1)

    def close(self):
        self.bar.close()
        self.report.seconds = time.perf_counter() - self.start
        return self.report


def matte_files(matter, inputs: list[InputFile], output_dir: str, *, outputs: tuple[str, ...] = ("alpha", "cutout"),
                background=None, overwrite: bool = False, progress: bool = True, max_pixels: int | None = None
                ) -> MatteReport:
    """Matte every ``InputFile`` in ``inputs`` into ``<output_dir>/<kind>/<name>.png``.

    matter: a ``utils.inference.core.Matter`` (weights, size, precision, refinement, batch size,
    decoding threads). outputs: a non-empty subset of ``OUTPUT_KINDS`` (``write_outputs``).
    background: a colour string or ``parse_background``'s array, for composites. overwrite:
    replace existing outputs (else each is kept, with a note on stderr, above the progress bar
    when ``progress``). max_pixels: photos above this
    many pixels fail (checked from the header, before decoding). A photo that cannot be read,
    refined or written is that photo's failure alone. Returns a ``MatteReport``; raises
    ValueError for bad arguments before any work, ModelOutputError when the network's output is
    NaN.
    """
    unknown = [k for k in outputs if k not in OUTPUT_KINDS]
    if not outputs or unknown:
        raise ValueError(f"outputs must be a non-empty subset of {OUTPUT_KINDS}, got {list(outputs)}")
    if "composite" in outputs and background is None:
        raise ValueError("a composite needs a background (a colour or an image)")
    if isinstance(background, str):
        background = parse_background(background)
    bar = Progress(len(inputs), progress)
    try:
        jobs = dict((item, kinds) for item, kinds in
                    plan_outputs(inputs, output_dir, outputs, overwrite, bar.report, bar.say))
        bar.bar.update(len(inputs) - len(jobs))  # skipped and clashing names
        load = (lambda item: read_rgb(item.path)) if max_pixels is None else \
            (lambda item: read_rgb(item.path, max_pixels=max_pixels))
        for done in matter.stream(jobs, load):
            if done.error is not None:
                bar.finish(done.item, done.error)
                continue
            try:
                write_outputs(output_dir, done.item.name, jobs[done.item], done.image, done.alpha, background)
            except Exception as err:  # noqa: BLE001 - whatever fails one photo's writing is that photo's alone
                bar.finish(done.item, f"writing failed: {error_reason(err)}")
                continue
            bar.finish(done.item)
    finally:
        report = bar.close()
    return report
