"""The trimap's unknown band, used by the unknown-region loss.

Band = dilate(alpha > 0, K) minus erode(alpha == 1, K), K an elliptical k x k kernel: every
fractional pixel (0 < alpha < 1) plus a margin of (k - 1) / 2 px on each side, so hard
(binary) edges get a band too. Training draws k uniformly from 3..15 per sample (the seed
dilated by a random width); evaluation uses k = 9.
"""
import functools

import cv2
import numpy as np

TRAIN_KERNEL_RANGE = (3, 15)  # inclusive
EVAL_KERNEL = 9
_EPS = 0.5 / 255.0  # alpha within half an 8-bit step of 0 or 1 counts as 0 or 1


@functools.lru_cache(maxsize=None)
def _kernel(size):
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def unknown_band(alpha, kernel_size=EVAL_KERNEL):
    """alpha: float32 (H,W) in [0,1] -> float32 (H,W), 1 inside the unknown band else 0."""
    if kernel_size < 1:
        raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
    kernel = _kernel(int(kernel_size))
    some = (alpha > _EPS).astype(np.uint8)
    full = (alpha >= 1.0 - _EPS).astype(np.uint8)
    band = cv2.dilate(some, kernel) > cv2.erode(full, kernel, borderType=cv2.BORDER_REPLICATE)
    return band.astype(np.float32)


def random_kernel_size(rng):
    """k uniform in ``TRAIN_KERNEL_RANGE`` (inclusive)."""
    low, high = TRAIN_KERNEL_RANGE
    return int(rng.integers(low, high + 1))
