"""Stage 1: the AISegment portrait dataset (photo + alpha matte).

Layout: ``<root>/clip_img/<group>/clip_<n>/<id>.jpg`` pairs with
``<root>/matting/<group>/matting_<n>/<id>.png``, whose 4th channel is the alpha. Photos
without a matte (or with an unreadable one, or one of another size) are skipped and counted
in one warning.
"""
import math
import os

from .base import MattingDataset
from .image_io import read_alpha, read_rgb
from .indexing import DatasetError, SkipReport, check_pair, list_images, report_orphan_masks, require_dir, select_valid
from .splits import in_split
from .trimap import random_kernel_size

ALPHA_CHANNEL = 3


def matte_relpath(photo_rel):
    """``<group>/clip_<n>/<id>.jpg`` -> ``<group>/matting_<n>/<id>.png`` (relative to
    ``clip_img/`` and ``matting/``)."""
    parts = photo_rel.split("/")
    folders = ["matting_" + d[len("clip_"):] if d.startswith("clip_") else d for d in parts[:-1]]
    return "/".join(folders + [os.path.splitext(parts[-1])[0] + ".png"])


def index_aisegment(root, split, image_num=None):
    """Checked photo/matte pairs of ``split`` -> (list of Pair, SkipReport)."""
    clip_dir = require_dir(os.path.join(root, "clip_img"), "AISegment photo (clip_img)")
    matting_dir = require_dir(os.path.join(root, "matting"), "AISegment matte (matting)")
    photos = list_images(clip_dir)
    if not photos:
        raise DatasetError(f"no images found in {clip_dir}")
    candidates = [rel for rel in photos if in_split(f"clip_img/{rel}", split)]
    if not candidates:
        raise DatasetError(f"no {split} photos in {clip_dir}: all {len(photos)} fall in the other split "
                           "(the split is a hash of each relative path; add more photos)")
    report = SkipReport(f"AISegment {split} split of {root}")

    def check(rel):
        return check_pair(os.path.join(clip_dir, rel), os.path.join(matting_dir, matte_relpath(rel)),
                          f"clip_img/{rel}", alpha_channel=ALPHA_CHANNEL)

    pairs = select_valid(candidates, check, report, cap=image_num)
    orphans = SkipReport(f"AISegment mattes of {root}")
    mattes = {os.path.splitext(rel)[0]: f"matting/{rel}" for rel in list_images(matting_dir)}
    report_orphan_masks(orphans, mattes, {os.path.splitext(matte_relpath(rel))[0] for rel in photos})
    orphans.warn(len(mattes), stacklevel=4, once=True)
    if not pairs:
        raise DatasetError(f"no usable photo/matte pairs in {root}: " + report.message(len(candidates)))
    report.warn(len(candidates), stacklevel=4)
    return pairs, report


class AISegmentDataset(MattingDataset):
    """Stage-1 dataset.

    root: folder holding ``clip_img/`` and ``matting/``. split: ``train`` | ``val`` | ``test``
    (= val) | ``all``. image_num: keep the first N pairs (sorted paths) of the split.
    augment: None (train split: ``Augment()``, else eval), bool or ``Augment``.

    ``ds[i]`` -> dict: image float32 (3,c,c) ImageNet-normalised, alpha float32 (1,c,c) in
    [0,1], unknown float32 (1,c,c) in {0,1}, ratio float32 scalar (1.0 in stage 1), index int.
    ``ds.load_full(i)`` -> (rgb uint8 (H,W,3), alpha float32 (H,W) in [0,1], name str).
    """

    def __init__(self, root, split="train", image_num=None, image_size=320, crop_size=288, seed=0, augment=None):
        super().__init__(root, split, image_size, crop_size, seed, augment)
        self.pairs, self.skipped = index_aisegment(self.root, split, image_num)
        self.names = [p.name for p in self.pairs]
        scale = self.augment.max_scale if self.training else 1.0
        self._decode_short_side = math.ceil(self.image_size * scale)

    def load_full(self, index):
        pair = self.pairs[index]
        return read_rgb(pair.photo, exif=pair.exif), read_alpha(pair.mask, channel=ALPHA_CHANNEL), pair.name

    def _train_sample(self, index):
        rng = self.rng(index)
        pair = self.pairs[index]
        rgb = read_rgb(pair.photo, exif=pair.exif, min_short_side=self._decode_short_side)
        alpha = read_alpha(pair.mask, channel=ALPHA_CHANNEL)
        image, alpha = self.transform(rgb, alpha, rng)
        return self._pack(image, alpha, 1.0, index, random_kernel_size(rng))
