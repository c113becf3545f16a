"""On-disk cache of estimated foreground colours (``pymatting.estimate_foreground_ml``).

The seed re-estimated the foreground on every draw (about 0.5 s for an 800x600 photo); here
each photo is estimated once. Per photo, two files in ``cache_dir``:

- ``<name-hash>-<version>.png``: the foreground colours at full resolution, uint8 RGB,
  lossless (used by ``load_full``, i.e. validation and test composites);
- ``<name-hash>-<version>.s<S>.npy``: foreground RGB + alpha (uint8 RGBA) shrunk to short
  side S (the largest training scale needs), so a training draw reads ~0.5 MB and decodes
  nothing.

``<version>`` hashes (size, mtime_ns) of the photo and of its mask, so a changed source file
(even just touched) gets a new entry and its old files are deleted. Files are written to a
temporary name, then ``os.replace``d: concurrent workers or ranks never see half a file, and
the worst case of a race is the same entry computed twice.
"""
import datetime
import glob
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
from tqdm import tqdm

from utils.arrays import unit_to_uint8
from utils.distributed import gather_objects, get_rank, get_world_size, wait_for_all
from utils.fileio import atomic_write

from .image_io import ImageReadError, read_alpha, read_rgb
from .indexing import Pair  # noqa: F401  (re-exported: entries are keyed by Pair)

CACHE_VERSION = 1
_LOAD_ERRORS = (OSError, ValueError, EOFError)


_PARALLEL_PID = None  # the process in which pymatting's numba code started OpenMP threads
_SUBPROCESS_CODE = ("import sys, numpy as np; from pymatting import estimate_foreground_ml as f; d = sys.argv[1]; "
                    "np.save(d + '/fg.npy', f(np.load(d + '/rgb.npy'), np.load(d + '/alpha.npy')))")


def estimate_foreground(rgb, alpha):
    """rgb: uint8 (H,W,3); alpha: float32 (H,W) in [0,1] -> foreground uint8 (H,W,3).

    pymatting runs on numba, whose GNU OpenMP layer kills a process forked from one that
    already used it ("fork() called from a process already using GNU OpenMP"). A forked
    DataLoader worker that must estimate (an entry went stale mid-run) therefore runs the
    estimation in a fresh Python subprocess (``subprocess.CalledProcessError`` on failure).
    """
    global _PARALLEL_PID
    image = rgb.astype(np.float32) / np.float32(255.0)
    alpha = alpha.astype(np.float32)
    if _PARALLEL_PID not in (None, os.getpid()):
        fg = _estimate_in_subprocess(image, alpha)
    else:
        from pymatting import estimate_foreground_ml  # imported here: numba start-up is slow
        _PARALLEL_PID = os.getpid()
        fg = estimate_foreground_ml(image, alpha)
    return unit_to_uint8(fg)


def _estimate_in_subprocess(image, alpha):
    with tempfile.TemporaryDirectory() as folder:
        np.save(os.path.join(folder, "rgb.npy"), image)
        np.save(os.path.join(folder, "alpha.npy"), alpha)
        subprocess.run([sys.executable, "-c", _SUBPROCESS_CODE, folder], check=True, capture_output=True)
        return np.load(os.path.join(folder, "fg.npy"))


def default_cache_dir(root):
    """``<root>/.foreground_cache`` if ``root`` is writable, else a folder under
    ``~/.cache/u2net_e2h/foreground/`` named by a hash of ``root``'s absolute path."""
    root = os.path.abspath(root)
    if os.access(root, os.W_OK):
        return os.path.join(root, ".foreground_cache")
    digest = hashlib.sha1(root.encode("utf-8")).hexdigest()[:12]
    return os.path.join(os.path.expanduser("~"), ".cache", "u2net_e2h", "foreground", digest)


class ForegroundCache:
    """Estimated foregrounds on disk.

    cache_dir: folder (created, with a ``.gitignore`` ignoring everything in it).
    work_short_side: short side of the training copy (None: training reads full resolution).
    alpha_channel: passed to ``read_alpha`` for the masks (None: grayscale masks).
    estimator: ``f(rgb uint8, alpha float32) -> fg uint8``; None: ``estimate_foreground``
    (pymatting's multi-level estimator).
    """

    def __init__(self, cache_dir, work_short_side=None, alpha_channel=None, estimator=None):
        self.cache_dir = str(cache_dir)
        self.work_short_side = work_short_side
        self.alpha_channel = alpha_channel
        self.estimator = estimator
        self._warned_write = False
        os.makedirs(self.cache_dir, exist_ok=True)
        ignore = os.path.join(self.cache_dir, ".gitignore")
        if not os.path.exists(ignore):
            try:
                atomic_write(ignore, b"*\n")
            except OSError:
                pass

    # ---- names -------------------------------------------------------------------------
    def _stamp(self, path):
        try:
            st = os.stat(path)
        except OSError as err:
            raise ImageReadError(path, f"{type(err).__name__}: {err}") from err
        return f"{st.st_size}:{st.st_mtime_ns}"

    def paths(self, pair):
        """(full-resolution .png path, training .npy path or None) of ``pair``'s entry now."""
        prefix = hashlib.sha1(pair.name.encode("utf-8")).hexdigest()[:16]
        stamp = f"{CACHE_VERSION}|{self._stamp(pair.photo)}|{self._stamp(pair.mask)}|{pair.exif}"
        if self._channel(pair) is not None:  # an RGBA/LA matte's alpha band (entries of gray mattes keep their names)
            stamp += f"|a{self._channel(pair)}"
        base = os.path.join(self.cache_dir, f"{prefix}-{hashlib.sha1(stamp.encode()).hexdigest()[:12]}")
        work = f"{base}.s{self.work_short_side}.npy" if self.work_short_side else None
        return f"{base}.png", work

    def _channel(self, pair):
        """The matte band holding the alpha: the cache's ``alpha_channel`` if set, else the pair's."""
        return pair.alpha_channel if self.alpha_channel is None else self.alpha_channel

    def is_fresh(self, pair):
        """True if the entry exists for the source files as they are now."""
        full, work = self.paths(pair)
        return os.path.exists(full) and (work is None or os.path.exists(work))

    # ---- computing -----------------------------------------------------------------------
    def _work_copy(self, fg, alpha):
        rgba = np.dstack([fg, unit_to_uint8(alpha)])
        h, w = fg.shape[:2]
        if self.work_short_side and min(h, w) > self.work_short_side:
            scale = self.work_short_side / min(h, w)
            size = (max(self.work_short_side, round(w * scale)), max(self.work_short_side, round(h * scale)))
            rgba = cv2.resize(rgba, size, interpolation=cv2.INTER_AREA)
        return rgba

    def compute(self, pair):
        """Write ``pair``'s entry -> (fg uint8 (H,W,3), alpha float32 (H,W), work RGBA uint8
        or None). The foreground is estimated only if its full-resolution file is missing or
        unreadable (a new ``work_short_side`` reuses it). Raises ``ImageReadError``."""
        full_path, work_path = self.paths(pair)
        alpha = read_alpha(pair.mask, channel=self._channel(pair))
        fg = self._read_png(full_path)
        fresh = fg is None or fg.shape[:2] != alpha.shape
        if fresh:
            rgb = read_rgb(pair.photo, exif=pair.exif)
            if alpha.shape != rgb.shape[:2]:
                raise ImageReadError(pair.mask, f"size {alpha.shape[1]}x{alpha.shape[0]} differs from its "
                                                f"photo's {rgb.shape[1]}x{rgb.shape[0]}")
            try:
                fg = (self.estimator or estimate_foreground)(rgb, alpha)
            except subprocess.CalledProcessError as err:
                raise ImageReadError(pair.photo, f"foreground estimation failed: {err.stderr[-500:]!r}") from err
            except Exception as err:  # noqa: BLE001  pymatting fails on some photos (ZeroDivisionError on
                # a 1x1 one), whatever it raises: that photo's failure alone, skipped by name, never the run's
                raise ImageReadError(pair.photo, f"foreground estimation failed "
                                                 f"({type(err).__name__}: {err})") from err
        work = self._work_copy(fg, alpha) if work_path else None
        try:
            if fresh:
                _, png = cv2.imencode(".png", cv2.cvtColor(fg, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
                atomic_write(full_path, png.tobytes())
            if work is not None:
                buffer = io.BytesIO()
                np.save(buffer, work)
                atomic_write(work_path, buffer.getvalue())
            self._remove_stale(full_path)
        except OSError as err:
            if not self._warned_write:
                warnings.warn(f"cannot write foreground cache in {self.cache_dir} ({err}); "
                              "estimating again on every draw", stacklevel=2)
                self._warned_write = True
        return fg, alpha, work

    @staticmethod
    def _read_png(path):
        """uint8 RGB from a cache .png, or None if missing or unreadable."""
        try:
            bgr = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_COLOR)
        except _LOAD_ERRORS:
            return None
        return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def _remove_stale(self, full_path):
        base = full_path[:-len(".png")]
        prefix = os.path.basename(base).split("-")[0]
        for path in glob.glob(os.path.join(glob.escape(self.cache_dir), f"{prefix}-*")):
            if not path.startswith(base) and path.endswith((".png", ".npy")):
                try:
                    os.remove(path)
                except FileNotFoundError:
                    pass

    def build(self, pairs, progress=True, threads=None, share=(0, 1)):
        """Compute every missing or stale entry (threads; pymatting releases the GIL), with a
        tqdm progress bar. ``share=(rank, world)``: only ``pairs[rank::world]``, this rank's
        part (``build_shared``), its bar labelled with the rank. Returns {name: ImageReadError}
        of failures."""
        rank, world = share
        todo = [p for p in pairs[rank::world] if not self.is_fresh(p)]
        if not todo:
            return {}
        failures = {}

        def task(pair):
            try:
                if not self.is_fresh(pair):
                    self.compute(pair)
            except ImageReadError as err:
                failures[pair.name] = err

        threads = threads or min(4, os.cpu_count() or 1)
        desc = f"estimating foregrounds -> {self.cache_dir}"
        with ThreadPoolExecutor(max_workers=threads) as pool, \
                tqdm(total=len(todo), desc=f"rank {rank}: {desc}" if world > 1 else desc, unit="photo",
                     position=rank if world > 1 else None, disable=not progress) as bar:
            for _ in pool.map(task, todo):
                bar.update(1)
        return failures

    # ---- reading ---------------------------------------------------------------------------
    def load_work(self, pair):
        """Training copy -> (fg uint8 (h,w,3), alpha float32 (h,w) in [0,1]) at short side
        ``work_short_side`` (or smaller if the photo is); computed if missing or stale."""
        full_path, work_path = self.paths(pair)
        if work_path is None:
            fg = self.load_full(pair)
            return fg, read_alpha(pair.mask, channel=self._channel(pair))
        try:
            rgba = np.load(work_path)
            if rgba.dtype != np.uint8 or rgba.ndim != 3 or rgba.shape[2] != 4:
                raise ValueError(f"unexpected array {rgba.dtype} {rgba.shape}")
        except _LOAD_ERRORS:
            rgba = self.compute(pair)[2]
        return rgba[..., :3], rgba[..., 3].astype(np.float32) * np.float32(1.0 / 255.0)

    def load_full(self, pair):
        """Full-resolution foreground -> uint8 (H,W,3) RGB; computed if missing or stale."""
        fg = self._read_png(self.paths(pair)[0])
        return self.compute(pair)[0] if fg is None else fg


SECONDS_PER_PHOTO_BOUND = 60  # estimate_foreground_ml takes ~1 s on a photo of 1-2 MP


def photo_work_timeout(photos):
    """How long processes may wait for one that has ``photos`` photos to work through: 30
    minutes plus ``SECONDS_PER_PHOTO_BOUND`` a photo (a datetime.timedelta)."""
    return datetime.timedelta(minutes=30, seconds=SECONDS_PER_PHOTO_BOUND * photos)


def work_share(rank, world, local_rank, local_world, sharing):
    """``(index, count)``: this process estimates ``pairs[index::count]`` before the barrier.

    ``sharing``: how many processes see the cache folder this one writes (``ranks_sharing``).
    All of them (one folder for the whole job): the job's processes split the work, ``(rank,
    world)``. Only this machine's (a node-local folder, e.g. the dataset copied to each node's
    disk): each machine's processes split it among themselves, ``(local_rank, local_world)``,
    so that no machine waits on photos estimated into another machine's folder. Anything else:
    ``(0, 1)``, this process estimates everything (correct, only slower).

    >>> work_share(5, 8, 1, 4, sharing=4)  # rank 5 = local rank 1 of 4 on the second machine
    (1, 4)
    """
    if sharing >= world:
        return rank, world
    if sharing == local_world:
        return local_rank, local_world
    return 0, 1


def ranks_sharing(cache_dir, rank):
    """How many processes of the job see ``cache_dir`` as this one does (a collective call).

    Each process writes an empty probe file named by a token from rank 0 and its rank, all
    wait, each counts the probes it sees, all wait again, each removes its own. A process that
    cannot write there counts what it sees (its writes fail the same way later, and warn).
    """
    token = gather_objects(uuid.uuid4().hex if rank == 0 else None)[0]
    probe = os.path.join(cache_dir, f".probe-{token}-{rank}")
    try:
        atomic_write(probe, b"")
    except OSError:
        probe = None
    wait_for_all(datetime.timedelta(minutes=10), what="the other ranks' probe of the foreground cache folder")
    seen = len(glob.glob(os.path.join(glob.escape(cache_dir), f".probe-{token}-*")))
    wait_for_all(datetime.timedelta(minutes=10), what="the other ranks' probe of the foreground cache folder")
    if probe:
        try:
            os.remove(probe)
        except OSError:
            pass
    return seen


def build_shared(cache, pairs, progress=True, threads=None):
    """``cache.build(pairs)`` shared by the torchrun processes, the same failures on every rank.

    Each rank estimates its part (``work_share``: ``pairs[rank::world]`` when the cache folder
    is the job's, ``pairs[local_rank::local_world]`` when each machine has its own, from
    ``LOCAL_RANK``/``LOCAL_WORLD_SIZE``), with a progress bar of its own; then all wait for the
    slowest (``utils.distributed.wait_for_all``: a gloo barrier whose timeout, 30 minutes plus
    60 s per photo of the largest part, covers the work, out of reach of NCCL's 10-minute
    watchdog); then each checks the whole list, computing what a rank left undone, so every rank
    returns the same {name: ImageReadError}. With one process (or no process group) this is
    ``cache.build(pairs)``.
    """
    world = get_world_size()
    if world == 1:
        return cache.build(pairs, progress=progress, threads=threads)
    rank = get_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    sharing = world if local_world >= world else ranks_sharing(cache.cache_dir, rank)  # one machine: one folder
    index, count = work_share(rank, world, local_rank, local_world, sharing)
    missing = sum(not cache.is_fresh(p) for p in pairs)
    cache.build(pairs, progress=progress, threads=threads, share=(index, count))
    slowest = min(missing, -(-len(pairs) // count))  # the most photos one rank's part can miss
    wait_for_all(photo_work_timeout(slowest), what=f"the other ranks' foreground estimation ({missing} photos in all)")
    return cache.build(pairs, progress=False, threads=threads)
