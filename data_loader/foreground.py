"""Stage 2: foregrounds (paixin_comp_mod layout) composited on backgrounds with e2h.

Layout: ``<root>/<category>/raw_image/<name>.<ext>`` pairs with
``<root>/<category>/mask_image/<name>.png`` (8-bit alpha); any sub-folder holding
``raw_image/`` is a category. Hard backgrounds: ``<root>/background/`` (any common image
type). Easy backgrounds: ``<root>/background_easy/`` if present, else random solid colours.
Every training sample is ``alpha * fg + (1 - alpha) * (r * hard + (1 - r) * easy)`` with r the
schedule's ratio at the current epoch, composited on the crop only.
"""
import math
import os
import warnings

import numpy as np

from utils.arrays import unit_to_uint8

from .base import MattingDataset
from .compositing import composite, cover_background, random_background, solid_colour, to_unit
from .e2h import E2HSchedule
from .foreground_cache import ForegroundCache, build_shared, default_cache_dir
from .image_io import ImageReadError, read_alpha, read_rgb
from .indexing import (DatasetError, SkipReport, check_image, check_pair, list_images, report_orphan_masks,
                       require_dir, select_valid)
from .splits import in_split, key_seed, stable_choice
from .trimap import random_kernel_size

# the layout's folder names (make_dataset.py writes them too)
PHOTO_DIR, MASK_DIR = "raw_image", "mask_image"
BACKGROUND_DIR, EASY_BACKGROUND_DIR = "background", "background_easy"
_NOT_CATEGORIES = (BACKGROUND_DIR, EASY_BACKGROUND_DIR)


def find_categories(root):
    """Sorted relative paths (``.`` for the root itself) of folders holding ``raw_image/``."""
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        if PHOTO_DIR in dirnames:
            found.append(os.path.relpath(dirpath, root).replace(os.sep, "/"))
        top = dirpath == root
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and d not in (PHOTO_DIR, MASK_DIR) and not (top and d in _NOT_CATEGORIES))
    return sorted(found)


def _join(category, *parts):
    return "/".join(p for p in ((category if category != "." else ""),) + parts if p)


def index_foregrounds(root, split, image_num=None):
    """Checked photo/mask pairs of ``split`` over all categories -> (list of Pair, SkipReport)."""
    categories = find_categories(root)
    if not categories:
        raise DatasetError(f"no category folder (a sub-folder holding {PHOTO_DIR}/) under {root}")
    candidates = []  # (name relative to root, photo path, mask path)
    orphans = SkipReport(f"foreground mattes of {root}")
    for category in categories:
        masks = {}
        mask_dir = os.path.join(root, category, MASK_DIR)
        for rel in (list_images(mask_dir) if os.path.isdir(mask_dir) else []):
            stem = os.path.splitext(rel)[0]
            if stem not in masks or rel.lower().endswith(".png"):
                masks[stem] = os.path.join(mask_dir, rel)
        photos = list_images(os.path.join(root, category, PHOTO_DIR))
        for rel in photos:
            mask = masks.get(os.path.splitext(rel)[0], os.path.join(mask_dir, os.path.splitext(rel)[0] + ".png"))
            candidates.append((_join(category, PHOTO_DIR, rel), os.path.join(root, category, PHOTO_DIR, rel), mask))
        report_orphan_masks(orphans, {stem: _join(category, MASK_DIR, os.path.relpath(path, mask_dir).replace(os.sep, "/"))
                                      for stem, path in masks.items()}, {os.path.splitext(rel)[0] for rel in photos})
    orphans.warn(len(orphans), stacklevel=4, once=True)
    if not candidates:
        raise DatasetError(f"no photos in the {PHOTO_DIR}/ folders of {root} (categories: {', '.join(categories)})")
    total = len(candidates)
    candidates = sorted(c for c in candidates if in_split(c[0], split))
    if not candidates:
        raise DatasetError(f"no {split} photos in {root}: all {total} fall in the other split "
                           "(the split is a hash of each relative path; add more photos)")
    report = SkipReport(f"foreground {split} split of {root}")
    pairs = select_valid(candidates, lambda c: check_pair(c[1], c[2], c[0]), report, cap=image_num)
    if not pairs:
        raise DatasetError(f"no usable photo/mask pairs in {root}: " + report.message(len(candidates)))
    return pairs, report


def index_backgrounds(root, folder, split, cap=None, required=True):
    """Checked background images of ``split`` in ``<root>/<folder>`` -> list of relative names
    (``<folder>/<file>``). A split left empty falls back to all the folder's images (warning)."""
    path = os.path.join(root, folder)
    if not required and not os.path.isdir(path):
        return []
    require_dir(path, f"{folder}")
    names = [f"{folder}/{rel}" for rel in list_images(path)]
    if not names:
        if required:
            raise DatasetError(f"no images in {path}")
        warnings.warn(f"no images in {path}; using random solid colours instead", stacklevel=3)
        return []
    chosen = [n for n in names if in_split(n, split)]
    if not chosen:
        warnings.warn(f"{path}: none of its {len(names)} images falls in the {split} split (hash rule); "
                      f"using all of them for {split} too", stacklevel=3)
        chosen = names
    report = SkipReport(f"backgrounds in {path}")
    kept = select_valid(chosen, lambda n: check_image(os.path.join(root, n), n), report, cap=cap)
    if not kept and required:
        raise DatasetError(f"no readable background in {path}: " + report.message(len(chosen)))
    report.warn(len(chosen), stacklevel=3)
    return kept


class ForegroundDataset(MattingDataset):
    """Stage-2 dataset with e2h compositing.

    root: paixin_comp_mod folder. split: ``train`` | ``val`` | ``test`` (= val) | ``all``
    (photos and backgrounds split alike). image_num / background_num: keep the first N
    (sorted paths) of the split; easy_background_num: the same for ``background_easy/`` (None:
    ``background_num``). schedule: ``E2HSchedule`` or its kind (``step``, ``linear``,
    ``none``). cache_dir: foreground cache (default ``foreground_cache.default_cache_dir``).
    precompute: estimate missing foregrounds now, with a progress bar (else on first draw); under
    torchrun every rank estimates its part, then waits for the others (``build_shared``).
    augment: None (train split: ``Augment()``, else eval), bool or ``Augment``.

    ``ds[i]`` -> dict: image float32 (3,c,c) ImageNet-normalised, alpha float32 (1,c,c) in
    [0,1], unknown float32 (1,c,c) in {0,1}, ratio float32 scalar (the r it was made with;
    1.0 in eval mode), index int. ``ds.load_full(i, ratio=1.0)`` -> (composite uint8 (H,W,3),
    alpha float32 (H,W) in [0,1], name str): r = 1 by default, backgrounds and crop fixed by the name.
    """

    def __init__(self, root, split="train", image_num=None, background_num=None, schedule=None,
                 image_size=320, crop_size=288, seed=0, cache_dir=None, augment=None, precompute=True,
                 progress=True, easy_background_num=None):
        super().__init__(root, split, image_size, crop_size, seed, augment)
        schedule = E2HSchedule() if schedule is None else schedule
        self.schedule = E2HSchedule(schedule) if isinstance(schedule, str) else schedule
        self.hard = index_backgrounds(self.root, BACKGROUND_DIR, split, background_num)
        easy_num = background_num if easy_background_num is None else easy_background_num
        self.easy = index_backgrounds(self.root, EASY_BACKGROUND_DIR, split, easy_num, required=False)
        pairs, self.skipped = index_foregrounds(self.root, split, image_num)
        work_side = math.ceil(self.image_size * self.augment.max_scale) if self.training else None
        self.cache = ForegroundCache(cache_dir or default_cache_dir(self.root), work_short_side=work_side)
        if precompute:
            for name, err in build_shared(self.cache, pairs, progress=progress).items():
                self.skipped.add("foreground estimation failed", name, err.reason)
            failed = {name for _, name, _ in self.skipped.skipped}
            pairs = [p for p in pairs if p.name not in failed]
        if not pairs:
            raise DatasetError(f"no usable photo/mask pairs in {self.root}: " + self.skipped.message(len(self.skipped)))
        self.skipped.warn(len(pairs) + len(self.skipped), stacklevel=3)
        self.pairs = pairs
        self.names = [p.name for p in pairs]
        self._bad_backgrounds = set()

    # ---- backgrounds -------------------------------------------------------------------------
    def _read_background(self, names, k, min_short_side=None):
        """uint8 (H,W,3) of ``names[k]``, or of the next readable one (one warning per bad file)."""
        for step in range(len(names)):
            name = names[(k + step) % len(names)]
            if name in self._bad_backgrounds:
                continue
            try:
                return read_rgb(os.path.join(self.root, name), min_short_side=min_short_side)
            except ImageReadError as err:
                self._bad_backgrounds.add(name)
                warnings.warn(f"{err}; using other backgrounds for the rest of this run", stacklevel=3)
        raise ImageReadError(os.path.join(self.root, names[k]), "no readable background left")

    def _draw_background(self, names, rng, needed):
        """A random crop_size square from ``names`` (None if not ``needed``; rng used alike)."""
        k, child = int(rng.integers(len(names))), np.random.default_rng(rng.integers(2 ** 63))
        if not needed:
            return None
        image = self._read_background(names, k, min_short_side=self.image_size)
        return to_unit(random_background(image, self.crop_size, self.image_size, child))

    # ---- samples -------------------------------------------------------------------------------
    def _train_sample(self, index):
        rng = self.rng(index)
        ratio = self.schedule.ratio(self.epoch)
        fg, alpha = self.cache.load_work(self.pairs[index])
        fg, alpha = self.transform(fg, alpha, rng)
        hard = self._draw_background(self.hard, rng, needed=ratio > 0)
        if self.easy:
            easy = self._draw_background(self.easy, rng, needed=ratio < 1)
        else:
            easy = solid_colour(rng)
        image = composite(to_unit(fg), alpha, hard, easy, ratio)
        return self._pack(image, alpha, ratio, index, random_kernel_size(rng))

    def load_full(self, index, ratio=1.0):
        """The held-out composite of photo ``index`` at e2h ``ratio`` (default 1: a real photo
        background) -> (uint8 (H,W,3), alpha float32 (H,W), name). Everything random is fixed by
        the name and ``seed``: the hard background and its crop, and, for ``ratio`` < 1, the easy
        one (a ``background_easy/`` image, else a solid colour), so any ratio is reproducible."""
        pair = self.pairs[index]
        fg = self.cache.load_full(pair)
        alpha = read_alpha(pair.mask, channel=pair.alpha_channel)
        if alpha.shape != fg.shape[:2]:
            raise ImageReadError(pair.mask, f"size {alpha.shape[::-1]} differs from its photo's {fg.shape[1::-1]}")
        key = f"{self.seed}:{pair.name}"
        hard = easy = None
        if ratio > 0:
            name = stable_choice(key, self.hard)
            rng = np.random.default_rng(key_seed(key))
            hard = to_unit(cover_background(self._read_background(self.hard, self.hard.index(name)), *alpha.shape, rng))
        if ratio < 1:
            rng = np.random.default_rng(key_seed(key + ":easy"))
            if self.easy:
                name = stable_choice(key, self.easy)
                easy = to_unit(cover_background(self._read_background(self.easy, self.easy.index(name)), *alpha.shape, rng))
            else:
                easy = solid_colour(rng)
        image = composite(to_unit(fg), alpha, hard, easy, ratio)
        return unit_to_uint8(image), alpha, pair.name
