"""The parts of make_dataset.py: from mattes of photos to a stage-2 training set.

For each photo that the inference core mattes (``Matter.stream``, as apply.py's), ``DatasetWriter``
measures the matte, leaves out a doubtful one (``QualityRule``), else writes

- ``<root>/<category>/raw_image/<name>``: the photo's own bytes, or, when its EXIF orientation
  turns it, the turned pixels as ``<stem>.png`` (lossless: the pixels the matte was made from);
- ``<root>/<category>/mask_image/<stem>.png``: the alpha, 8-bit;
- the foreground cache entry of the pair (``data_loader.ForegroundCache`` in
  ``default_cache_dir(root)``, keyed as ``ForegroundDataset`` keys it), so training does not
  estimate the foreground colours again;

and records one manifest row (``MANIFEST_COLUMNS``). Rows go to one part file per process
(``<root>/.manifest_parts/rank<R>.csv``, a line appended per photo); ``Manifest.fold`` merges
them into ``<root>/manifest.csv`` (atomically), which is also what a resumed run reads to skip
the photos already done. ``make_composites`` writes fixed test composites (every foreground of a
split over N backgrounds, scaled to cover and cropped, seeded per file), and
``copy_backgrounds`` fills ``<root>/background/``.
"""
import csv
import glob
import os
import shutil
import contextlib
import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from data_loader.compositing import composite, cover_background, to_unit
from data_loader.foreground import BACKGROUND_DIR, MASK_DIR, PHOTO_DIR, index_backgrounds, index_foregrounds
from data_loader.foreground_cache import ForegroundCache, default_cache_dir
from data_loader.image_io import ImageReadError, read_alpha, read_header, read_rgb
from data_loader.indexing import DatasetError, Pair, list_images
from data_loader.splits import key_seed
from utils.fileio import atomic_open
from utils.arrays import unit_to_uint8

from .core import error_reason
from .files import MatteReport, clash_reason, separate_clashes, write_png

MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("source", "name", "weights", "refine", "foreground", "uncertain", "status", "reason")
STATUSES = ("ok", "left_out", "failed")
PARTS_DIR = ".manifest_parts"
SURE_BACKGROUND, SURE_FOREGROUND = 0.05, 0.95  # alpha outside (0.05, 0.95) counts as certain


# ---------------------------------------------------------------- quality of a matte
def matte_quality(alpha):
    """float alpha (H,W) in [0,1] -> ``(foreground, uncertain)``.

    foreground: share of the photo's pixels with alpha >= 0.5 (0: no person found).
    uncertain: share of the matte's pixels (alpha > 0.05) that are neither sure background nor
    sure foreground (0.05 < alpha < 0.95); 0 when the matte is empty. A clean portrait matte
    has a thin uncertain rim (a few %); a network that does not know gives mostly grey.
    """
    alpha = np.asarray(alpha)
    present = alpha > SURE_BACKGROUND
    count = int(np.count_nonzero(present))
    uncertain = int(np.count_nonzero(present & (alpha < SURE_FOREGROUND))) / count if count else 0.0
    return int(np.count_nonzero(alpha >= 0.5)) / alpha.size, uncertain


@dataclass(frozen=True)
class QualityRule:
    """Which mattes to leave out: foreground share below ``min_foreground`` ("no person") or
    uncertain share above ``max_uncertain`` ("mostly uncertain"). 0 and 1 keep everything."""
    min_foreground: float = 0.005
    max_uncertain: float = 0.5

    def __post_init__(self):
        for key in ("min_foreground", "max_uncertain"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"{key} must be in [0, 1], got {getattr(self, key)}")

    def reason(self, foreground, uncertain):
        """Why a matte is left out (``"no person: ..."``, ``"mostly uncertain: ..."``), or None."""
        if foreground < self.min_foreground:
            return f"no person: foreground {foreground:.2%} < {self.min_foreground:.2%}"
        if uncertain > self.max_uncertain:
            return f"mostly uncertain: {uncertain:.1%} of the matte > {self.max_uncertain:.1%}"
        return None


# ---------------------------------------------------------------- names and files
def photo_name(category, name, turned=False):
    """The dataset's name (relative to its root, ``/`` separators) of input ``name``:
    ``<category>/raw_image/<name>``, with a ``.png`` suffix when the photo is ``turned``."""
    name = name.replace(os.sep, "/")
    return f"{category}/{PHOTO_DIR}/{os.path.splitext(name)[0] + '.png' if turned else name}"


def mask_name(name):
    """``<category>/raw_image/<sub>/<stem>.<ext>`` -> ``<category>/mask_image/<sub>/<stem>.png``."""
    category, rest = name.split(f"/{PHOTO_DIR}/", 1)
    return f"{category}/{MASK_DIR}/{os.path.splitext(rest)[0]}.png"


def is_turned(path):
    """True when the photo's EXIF orientation changes its pixels (orientation tag 2..8)."""
    try:
        return read_header(path).orientation != 1
    except ImageReadError:
        return False


def copy_file(source, destination):
    """Copy the bytes of ``source`` to ``destination`` atomically (folders made)."""
    os.makedirs(os.path.dirname(destination) or ".", exist_ok=True)
    with open(source, "rb") as src, atomic_open(destination, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def write_photo(source, destination, image, turned):
    """The photo as training reads it: the file's bytes, or ``image`` as PNG if ``turned``."""
    if turned:
        write_png(destination, image)
    else:
        copy_file(source, destination)


# ---------------------------------------------------------------- the manifest
class Manifest:
    """``<root>/manifest.csv`` plus this process's part file of rows added since the last fold.

    Rows are dicts of ``MANIFEST_COLUMNS``; a photo is known by its ``source`` (absolute path).
    """

    def __init__(self, root, rank=0):
        self.root, self.path = root, os.path.join(root, MANIFEST)
        self.part = os.path.join(root, PARTS_DIR, f"rank{rank}.csv")
        self.lock = threading.Lock()

    @staticmethod
    def _read(path, header):
        """Valid rows of a CSV file (a line cut by a kill is dropped)."""
        try:
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f, fieldnames=None if header else MANIFEST_COLUMNS)
                return [row for row in reader if row.get("status") in STATUSES and None not in row.values()
                        and None not in row]
        except FileNotFoundError:
            return []

    def load(self):
        """{source: row}: manifest.csv, then every process's part file (newer rows win)."""
        rows = {row["source"]: row for row in self._read(self.path, header=True)}
        for part in sorted(glob.glob(os.path.join(glob.escape(self.root), PARTS_DIR, "rank*.csv"))):
            rows.update((row["source"], row) for row in self._read(part, header=False))
        return rows

    def fold(self):
        """Merge the part files into manifest.csv (rows sorted by name), then remove them.
        Returns the rows. One process at a time (rank 0, the others waiting at a barrier)."""
        rows = sorted(self.load().values(), key=lambda row: (row["name"], row["source"]))
        os.makedirs(self.root, exist_ok=True)
        with atomic_open(self.path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, MANIFEST_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        shutil.rmtree(os.path.join(self.root, PARTS_DIR), ignore_errors=True)
        return rows

    def append(self, row):
        """Add one row to this process's part file, flushed at once."""
        line = [row[key] for key in MANIFEST_COLUMNS]
        with self.lock:
            os.makedirs(os.path.dirname(self.part), exist_ok=True)
            with open(self.part, "a", newline="", encoding="utf-8") as f:
                csv.writer(f).writerow(line)

    def is_done(self, row):
        """A row whose photo needs no new work: left out, or ok with both files in place."""
        if row is None or row["status"] == "failed":
            return False
        return row["status"] == "left_out" or all(
            os.path.isfile(os.path.join(self.root, n)) for n in (row["name"], mask_name(row["name"])))


# ---------------------------------------------------------------- writing the dataset
@dataclass
class DatasetReport:
    """What a run did with its photos (and backgrounds, composites); one per process, merged."""
    ok: int = 0
    before: int = 0
    left_out: Counter = field(default_factory=Counter)
    failed: list = field(default_factory=list)
    backgrounds: int = 0
    composites: int = 0

    @classmethod
    def merge(cls, reports):
        merged = cls()
        for r in reports:
            merged.ok += r.ok
            merged.before += r.before
            merged.left_out += r.left_out
            merged.failed += r.failed
            merged.backgrounds += r.backgrounds
            merged.composites += r.composites
        return merged

    def summary(self):
        left = sum(self.left_out.values())
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.left_out.items()))
        return (f"{self.ok} photos added, {left} left out{f' ({kinds})' if kinds else ''}, "
                f"{len(self.failed)} failed, {self.before} done before; {self.backgrounds} backgrounds, "
                f"{self.composites} composites written")


def printable(path):
    """A path for messages and the manifest: names that are not valid UTF-8 (the bytes Python
    keeps as surrogates) shown with their bytes escaped, never an exception."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


class DatasetWriter:
    """Writes what make_dataset.py keeps of each matted photo: judge the matte, write photo,
    mask and foreground cache entry, record the row; ``report`` counts what it did.

    threads: foreground estimations at once (pymatting releases the GIL). The estimation
    (about 1 s a megapixel) costs far more than a GPU's matte, so with ``threads > 1`` it runs
    in a pool, at most ``2 * threads`` photos queued, while the next photos are matted;
    ``close()`` waits for them. A photo's row is written once its cache entry is; a photo whose
    entry cannot be made leaves no files in the dataset (training would trip on them).
    """

    def __init__(self, root, category, manifest, weights, refine, rule, fill_cache=True, threads=1):
        self.root, self.category, self.manifest, self.rule = root, category, manifest, rule
        self.weights, self.refine = weights, refine
        os.makedirs(root, exist_ok=True)  # before default_cache_dir, which looks at the folder
        self.cache = ForegroundCache(default_cache_dir(root)) if fill_cache else None
        self.report, self.lock = DatasetReport(), threading.Lock()
        self.threads = threads
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="foreground") if threads > 1 else None
        self.pending = deque()

    def row(self, item, name, status, reason="", foreground="", uncertain=""):
        return {"source": printable(os.path.abspath(item.path)), "name": printable(name), "weights": self.weights,
                "refine": self.refine, "foreground": foreground, "uncertain": uncertain,
                "status": status, "reason": reason}

    def fail(self, item, reason):
        """Record a photo that failed (unreadable, a clashing name, no foreground estimate)."""
        self.manifest.append(self.row(item, photo_name(self.category, item.name), "failed", reason))
        with self.lock:
            self.report.failed.append((printable(item.name), reason))

    def remove_files(self, name):
        """Remove a photo's files from the dataset (left out now, or its cache entry failed)."""
        for path in (os.path.join(self.root, name), os.path.join(self.root, mask_name(name))):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)

    def write(self, item, image, alpha):
        """One matted photo: uint8 RGB (H,W,3), alpha float32 (H,W) in [0,1]. Any failure is
        this photo's alone (recorded, its files removed)."""
        try:
            self._write(item, image, alpha)
        except Exception as err:  # noqa: BLE001 - whatever it is, the other photos go on
            self.remove_files(photo_name(self.category, item.name, is_turned(item.path)))
            self.fail(item, f"writing failed: {error_reason(err)}")

    def _write(self, item, image, alpha):
        foreground, uncertain = matte_quality(alpha)
        reason = self.rule.reason(foreground, uncertain)
        turned = is_turned(item.path)
        name = photo_name(self.category, item.name, turned)
        row = self.row(item, name, "left_out" if reason else "ok", reason or "",
                       f"{foreground:.4f}", f"{uncertain:.4f}")
        if reason is not None:
            self.remove_files(name)  # an earlier run (--overwrite) may have kept it: training must not
            return self._record(item, row)
        photo, mask = os.path.join(self.root, name), os.path.join(self.root, mask_name(name))
        write_photo(item.path, photo, image, turned)
        write_png(mask, unit_to_uint8(alpha))
        pair = Pair(os.path.abspath(photo), os.path.abspath(mask), name)  # the training loader's key
        if self.pool is None:
            return self._record(item, row, pair)
        while len(self.pending) >= 2 * self.threads:  # bound the photos held by queued estimations
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(self._record, item, row, pair))

    def _record(self, item, row, pair=None):
        """Fill the cache entry of ``pair`` (if any), then write the row: the photo is done."""
        try:
            if pair is not None and self.cache is not None:
                self.cache.compute(pair)
        except Exception as err:  # noqa: BLE001 - pymatting on a degenerate photo, a full disk...
            self.remove_files(pair.name)
            return self.fail(item, f"foreground estimation failed: {error_reason(err)}")
        self.manifest.append(row)
        with self.lock:
            if row["status"] == "left_out":
                self.report.left_out[row["reason"].split(":")[0]] += 1
            else:
                self.report.ok += 1

    def close(self):
        """Wait for the queued foreground estimations."""
        if self.pool is not None:
            while self.pending:
                self.pending.popleft().result()
            self.pool.shutdown()


def plan_photos(inputs, rows, manifest, category, overwrite):
    """``inputs`` (this process's share) -> (to matte, clashes as (item, reason), done before).

    Two inputs whose outputs would overwrite each other: the first is kept, the other fails;
    so does a photo whose name is not valid UTF-8 (before anything is written for it).
    A photo is done when its row is of ``category`` and says so, and its files are in place
    (``Manifest.is_done``)."""
    inputs, clashes = separate_clashes(inputs)
    clashes = [(item, clash_reason(owner)) for item, owner in clashes]
    todo, before = [], 0
    for item in inputs:
        if printable(item.name) != item.name:  # the manifest and the training set's names are UTF-8
            clashes.append((item, "its file name is not valid UTF-8: rename it"))
            continue
        row = rows.get(printable(os.path.abspath(item.path)))
        if not overwrite and row and row["name"].startswith(f"{category}/{PHOTO_DIR}/") and manifest.is_done(row):
            before += 1
        else:
            todo.append(item)
    return todo, clashes, before


# ---------------------------------------------------------------- backgrounds
def copy_backgrounds(folder, root, link=False, share=(0, 1)):
    """Every readable image under ``folder`` -> ``<root>/background/<same relative name>``,
    copied (or symbolic links with ``link``); existing ones of the same size are kept.
    ``share``: (rank, world size), each process its files. Returns a ``MatteReport``."""
    report, start = MatteReport(), time.perf_counter()
    for index, rel in enumerate(list_images(folder)):
        if index % share[1] != share[0]:
            continue
        source, destination = os.path.join(folder, rel), os.path.join(root, BACKGROUND_DIR, rel)
        try:
            read_header(source)
            if os.path.exists(destination) and os.path.getsize(destination) == os.path.getsize(source):
                report.skipped.append((rel, "exists"))
                continue
            if link:
                os.makedirs(os.path.dirname(destination), exist_ok=True)
                if os.path.lexists(destination):
                    os.remove(destination)
                os.symlink(os.path.abspath(source), destination)
            else:
                copy_file(source, destination)
            report.done.append(rel)
        except (ImageReadError, OSError) as err:
            report.failed.append((f"background {source}", getattr(err, "reason", str(err))))
    report.seconds = time.perf_counter() - start
    return report


# ---------------------------------------------------------------- fixed composites
def composite_rng(seed, name):
    """The random stream of one foreground's composites: from ``seed`` and its name only, so
    the files do not depend on the order, the other files or the number of processes."""
    return np.random.default_rng(key_seed(f"{seed}:{name}"))


def composite_names(name, count):
    """``<category>/raw_image/<sub>/<stem>.<ext>`` -> ``[<sub>/<stem>_0, ...]`` (no suffix)."""
    stem = os.path.splitext(name.split(f"/{PHOTO_DIR}/", 1)[1])[0]
    return [f"{stem}_{k}" for k in range(count)]


def make_composites(root, category, split, count, seed=0, share=(0, 1), overwrite=False, progress=True):
    """Every foreground of ``split`` in ``<root>/<category>`` over ``count`` backgrounds of
    ``<root>/background/`` (those of the same split, as ``ForegroundDataset``), each scaled to
    cover the photo and cropped at a seeded position, as Deep Image Matting's Composition-1k:
    ``<root>/composites/image/<stem>_<k>.png`` (RGB) and ``alpha/<stem>_<k>.png`` (8-bit).

    Backgrounds are drawn without replacement while there are enough. Same seed, same bytes.
    Existing pairs are kept unless ``overwrite``. Raises ``DatasetError`` when the split has no
    foreground or there is no background. Returns a ``MatteReport``.
    """
    report, start = MatteReport(), time.perf_counter()
    prefix = f"{category}/{PHOTO_DIR}/"
    pairs = [p for p in index_foregrounds(root, split)[0] if p.name.startswith(prefix)]
    if not pairs:
        raise DatasetError(f"no {split} photos in {os.path.join(root, category)} for composites")
    backgrounds = index_backgrounds(root, BACKGROUND_DIR, split)
    cache = ForegroundCache(default_cache_dir(root))
    out = os.path.join(root, "composites")
    mine = [p for i, p in enumerate(pairs) if i % share[1] == share[0]]
    for pair in tqdm(mine, desc="composites", unit="photo", disable=not progress, dynamic_ncols=True):
        names = composite_names(pair.name, count)
        paths = [(os.path.join(out, "image", n + ".png"), os.path.join(out, "alpha", n + ".png")) for n in names]
        if not overwrite and all(os.path.exists(p) for pair_paths in paths for p in pair_paths):
            report.skipped.append((pair.name, "composites exist"))
            continue
        try:
            written = _composite_one(root, pair, backgrounds, paths, cache, composite_rng(seed, pair.name))
        except (ImageReadError, OSError) as err:
            report.failed.append((f"composites of {pair.name}", getattr(err, "reason", str(err))))
            continue
        report.done += written
    report.seconds = time.perf_counter() - start
    return report


def _composite_one(root, pair, backgrounds, paths, cache, rng):
    """Write one foreground's composites; returns their names."""
    fg, alpha = to_unit(cache.load_full(pair)), read_alpha(pair.mask)
    alpha8 = unit_to_uint8(alpha)
    picks = rng.choice(len(backgrounds), size=len(paths), replace=len(paths) > len(backgrounds))
    for (image_path, alpha_path), k in zip(paths, picks):
        background = cover_background(read_rgb(os.path.join(root, backgrounds[k])), *alpha.shape, rng)
        image = composite(fg, alpha, to_unit(background), None, 1.0)
        write_png(image_path, unit_to_uint8(image))
        write_png(alpha_path, alpha8)
    return [os.path.relpath(p[0], os.path.join(root, "composites", "image")) for p in paths]
