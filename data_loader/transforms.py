"""Transforms that take (image, alpha) together, one train preset and one eval preset.

image: uint8 (H,W,3) RGB; alpha: float32 (H,W) in [0,1]. Geometric transforms move both the
same way; colour transforms touch the image only. Each transform is called as
``t(image, alpha, rng)`` with a ``numpy.random.Generator`` (ignored by deterministic ones), so
a sample's randomness comes from its own seeded generator, whatever process draws it.

Defaults follow the seed: rescale to ``image_size`` (320) on the short side, random crop
``crop_size`` (288), horizontal flip. Extras, off by default: random scale of the short side
and colour jitter on the foreground. Images smaller than the crop are enlarged to fit it.
"""
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from utils.constants import IMAGENET_MEAN, IMAGENET_STD

from .compositing import resize_interpolation



@dataclass(frozen=True)
class Augment:
    """Training augmentation. ``flip``: random horizontal flip (p = 0.5). ``scale_range``:
    e.g. (0.75, 1.25) multiplies the rescaled short side by a uniform factor (None: off).
    ``color_jitter``: strength s; brightness, contrast and saturation factors uniform in
    [1 - s, 1 + s], hue shifted by up to s * 18 degrees (0: off)."""
    flip: bool = True
    scale_range: tuple = None
    color_jitter: float = 0.0

    def __post_init__(self):
        if self.scale_range is not None:
            low, high = self.scale_range
            if not 0 < low <= high:
                raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {self.scale_range}")
        if not 0.0 <= self.color_jitter < 1.0:
            raise ValueError(f"color_jitter must be in [0, 1), got {self.color_jitter}")

    @property
    def max_scale(self):
        return 1.0 if self.scale_range is None else float(self.scale_range[1])


def _resize_pair(image, alpha, out_h, out_w):
    """Both to (out_h, out_w), each by the rule that fits its own size: a JPEG photo decoded at
    reduced size (``image_io`` draft mode) arrives smaller than its full-resolution alpha, which
    then shrinks by more and needs the area filter even where the photo's factor does not."""
    return _resize(image, out_h, out_w), _resize(alpha, out_h, out_w)


def _resize(array, out_h, out_w):
    if array.shape[:2] == (out_h, out_w):
        return array
    interpolation = resize_interpolation(array.shape[:2], (out_h, out_w))
    return cv2.resize(array, (out_w, out_h), interpolation=interpolation)


def _fit_short_side(image, alpha, short):
    h, w = image.shape[:2]
    scale = short / min(h, w)
    return _resize_pair(image, alpha, max(short, round(h * scale)), max(short, round(w * scale)))


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image, alpha, rng=None):
        for t in self.transforms:
            image, alpha = t(image, alpha, rng)
        return image, alpha


class RescaleShortSide:
    """Resize so the short side is ``size`` (times a uniform factor from ``scale_range``);
    the alpha is resized to the image's output size (also when it arrived at another size)."""

    def __init__(self, size, scale_range=None):
        self.size, self.scale_range = size, scale_range

    def __call__(self, image, alpha, rng=None):
        short = self.size
        if self.scale_range is not None:
            short = max(1, round(self.size * rng.uniform(*self.scale_range)))
        return _fit_short_side(image, alpha, short)


class RandomCrop:
    """Random ``size`` x ``size`` crop (enlarging first if the short side is smaller)."""

    def __init__(self, size):
        self.size = size

    def __call__(self, image, alpha, rng=None):
        if min(image.shape[:2]) < self.size:
            image, alpha = _fit_short_side(image, alpha, self.size)
        h, w = image.shape[:2]
        top = int(rng.integers(0, h - self.size + 1))
        left = int(rng.integers(0, w - self.size + 1))
        return (image[top:top + self.size, left:left + self.size],
                alpha[top:top + self.size, left:left + self.size])


class CenterCrop(RandomCrop):
    """Centred ``size`` x ``size`` crop (enlarging first if the short side is smaller)."""

    def __call__(self, image, alpha, rng=None):
        if min(image.shape[:2]) < self.size:
            image, alpha = _fit_short_side(image, alpha, self.size)
        h, w = image.shape[:2]
        top, left = (h - self.size) // 2, (w - self.size) // 2
        return (image[top:top + self.size, left:left + self.size],
                alpha[top:top + self.size, left:left + self.size])


class RandomHorizontalFlip:
    def __init__(self, p=0.5):
        self.p = p

    def __call__(self, image, alpha, rng=None):
        if rng.random() < self.p:
            return image[:, ::-1], alpha[:, ::-1]
        return image, alpha


class ColorJitter:
    """Brightness, contrast, saturation and hue jitter of the image (alpha untouched)."""

    def __init__(self, strength):
        self.strength = strength

    def __call__(self, image, alpha, rng=None):
        s = self.strength
        b, c, sat = rng.uniform(1 - s, 1 + s, size=3)
        hue = rng.uniform(-s, s) * 9.0  # OpenCV hue units are 2 degrees
        x = image.astype(np.float32) * b
        x = (x - x.mean()) * c + x.mean()
        gray = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        x = (x - gray[..., None]) * sat + gray[..., None]
        out = np.clip(x, 0, 255).astype(np.uint8)
        if round(hue) != 0:
            hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV)
            hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + round(hue)) % 180).astype(np.uint8)
            out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        return out, alpha


def train_preset(image_size=320, crop_size=288, augment=Augment()):
    """Rescale (short side ``image_size``, optional random scale) -> random crop ``crop_size``
    -> optional flip -> optional colour jitter."""
    steps = [RescaleShortSide(image_size, augment.scale_range), RandomCrop(crop_size)]
    if augment.flip:
        steps.append(RandomHorizontalFlip())
    if augment.color_jitter > 0:
        steps.append(ColorJitter(augment.color_jitter))
    return Compose(steps)


def eval_preset(image_size=320, crop_size=288):
    """Rescale (short side ``image_size``) -> centre crop ``crop_size``; deterministic."""
    return Compose([RescaleShortSide(image_size), CenterCrop(crop_size)])


_INV_STD = (1.0 / IMAGENET_STD).astype(np.float32)
_INV_STD_255 = (1.0 / (255.0 * IMAGENET_STD)).astype(np.float32)
_MEAN_OVER_STD = (IMAGENET_MEAN / IMAGENET_STD).astype(np.float32)


def normalize(image):
    """uint8 (H,W,3), or float32 (H,W,3) in [0,1] -> torch float32 (3,H,W),
    ``(x - IMAGENET_MEAN) / IMAGENET_STD`` with x in [0,1]."""
    scale = _INV_STD_255 if image.dtype == np.uint8 else _INV_STD
    x = np.multiply(image, scale, dtype=np.float32)
    x -= _MEAN_OVER_STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))
