"""Datasets for U^2-Net human matting: stage 1 (AISegment) and stage 2 (foregrounds composited
on backgrounds with easy-to-hard training), with their image reading, splits, foreground
cache, transforms and trimaps.

>>> ds = ForegroundDataset("data_examples/paixin_comp_mod", "train", schedule=E2HSchedule("step"))
>>> ds.set_epoch(10); sample = ds[0]; float(sample["ratio"])
0.1
"""
from .aisegment import AISegmentDataset, index_aisegment
from .compositing import composite
from .e2h import E2HSchedule, SharedEpoch
from .foreground import ForegroundDataset, index_backgrounds, index_foregrounds
from .foreground_cache import ForegroundCache, default_cache_dir, estimate_foreground
from .image_io import IMAGE_EXTENSIONS, ImageHeader, ImageReadError, read_alpha, read_header, read_rgb
from .indexing import DatasetError, Pair
from .splits import in_split, split_bucket
from .transforms import IMAGENET_MEAN, IMAGENET_STD, Augment, eval_preset, normalize, train_preset
from .trimap import EVAL_KERNEL, TRAIN_KERNEL_RANGE, unknown_band

__all__ = [
    "AISegmentDataset", "ForegroundDataset", "E2HSchedule", "SharedEpoch", "Augment",
    "composite", "unknown_band", "EVAL_KERNEL", "TRAIN_KERNEL_RANGE",
    "train_preset", "eval_preset", "normalize", "IMAGENET_MEAN", "IMAGENET_STD",
    "ForegroundCache", "default_cache_dir", "estimate_foreground",
    "IMAGE_EXTENSIONS", "ImageHeader", "ImageReadError", "read_rgb", "read_alpha", "read_header",
    "DatasetError", "Pair", "in_split", "split_bucket",
    "index_aisegment", "index_foregrounds", "index_backgrounds",
]
