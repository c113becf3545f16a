"""Datasets for U^2-Net human matting: stage 1 (AISegment) and stage 2 (foregrounds composited
on backgrounds with easy-to-hard training), with their image reading, splits, foreground
cache, transforms and trimaps.

>>> ds = ForegroundDataset("data_examples/paixin_comp_mod", "train", schedule=E2HSchedule("step"))
>>> ds.set_epoch(10); sample = ds[0]; float(sample["ratio"])
0.1
"""
import importlib

# name -> submodule. Loaded on first use (PEP 562), so that reading images (``data_loader.image_io``)
# does not import torch with the datasets: apply.py runs an .onnx model without PyTorch.
_EXPORTS = {
    "AISegmentDataset": "aisegment",
    "index_aisegment": "aisegment",
    "composite": "compositing",
    "E2HSchedule": "e2h",
    "SharedEpoch": "e2h",
    "ForegroundDataset": "foreground",
    "index_backgrounds": "foreground",
    "index_foregrounds": "foreground",
    "ForegroundCache": "foreground_cache",
    "default_cache_dir": "foreground_cache",
    "estimate_foreground": "foreground_cache",
    "IMAGE_EXTENSIONS": "image_io",
    "ImageHeader": "image_io",
    "ImageReadError": "image_io",
    "read_alpha": "image_io",
    "read_header": "image_io",
    "read_rgb": "image_io",
    "DatasetError": "indexing",
    "Pair": "indexing",
    "in_split": "splits",
    "split_bucket": "splits",
    "IMAGENET_MEAN": "transforms",
    "IMAGENET_STD": "transforms",
    "Augment": "transforms",
    "eval_preset": "transforms",
    "normalize": "transforms",
    "train_preset": "transforms",
    "EVAL_KERNEL": "trimap",
    "TRAIN_KERNEL_RANGE": "trimap",
    "unknown_band": "trimap",
}

__all__ = [
    "AISegmentDataset", "ForegroundDataset", "E2HSchedule", "SharedEpoch", "Augment",
    "composite", "unknown_band", "EVAL_KERNEL", "TRAIN_KERNEL_RANGE",
    "train_preset", "eval_preset", "normalize", "IMAGENET_MEAN", "IMAGENET_STD",
    "ForegroundCache", "default_cache_dir", "estimate_foreground",
    "IMAGE_EXTENSIONS", "ImageHeader", "ImageReadError", "read_rgb", "read_alpha", "read_header",
    "DatasetError", "Pair", "in_split", "split_bucket",
    "index_aisegment", "index_foregrounds", "index_backgrounds",
]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # once
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
