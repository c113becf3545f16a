"""The e2h composite and fitting backgrounds to it (crop first, then resize only the crop)."""
import cv2
import numpy as np


def composite(fg, alpha, hard, easy, ratio):
    """``alpha * fg + (1 - alpha) * (ratio * hard + (1 - ratio) * easy)``.

    fg, hard: float32 (H,W,3) in [0,1]; easy: float32 (H,W,3) or (3,) (a solid colour) in
    [0,1]; alpha: float32 (H,W) in [0,1]; ratio: float in [0,1].
    Returns a new float32 (H,W,3) in [0,1]. With ratio 0 (or 1) ``hard`` (or ``easy``) is not
    read and may be None. Computed as ``bg + alpha * (fg - bg)`` with few temporaries.
    """
    ratio = float(ratio)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0,1], got {ratio}")
    if ratio == 1.0:
        background = np.asarray(hard, dtype=np.float32)
    else:
        easy = np.asarray(easy, dtype=np.float32)
        if ratio == 0.0:
            background = np.broadcast_to(easy, fg.shape)
        else:
            background = np.multiply(hard, np.float32(ratio), dtype=np.float32)
            background += np.float32(1.0 - ratio) * easy
    out = np.subtract(fg, background, dtype=np.float32)
    out *= alpha[..., None]
    out += background
    return out


def to_unit(image):
    """uint8 -> float32 in [0,1] (float32 input passes through)."""
    if image.dtype == np.uint8:
        return np.multiply(image, np.float32(1.0 / 255.0), dtype=np.float32)
    return image.astype(np.float32, copy=False)


def resize_interpolation(src_hw, out_hw):
    """INTER_AREA when shrinking by 2x or more (anti-aliasing), else INTER_LINEAR (up to 9x
    faster than INTER_AREA at non-integer factors, and alias-free enough below 2x)."""
    return cv2.INTER_AREA if min(src_hw[0] / out_hw[0], src_hw[1] / out_hw[1]) >= 2.0 else cv2.INTER_LINEAR


def crop_resize(image, top, left, height, width, out_h, out_w):
    """Take the box (top, left, height, width) in source pixels (floats allowed; rounded and
    kept inside the image) and resize it to (out_h, out_w) (``resize_interpolation``).
    Works for (H,W) and (H,W,C) arrays."""
    h, w = image.shape[:2]
    y0 = min(max(int(round(top)), 0), h - 1)
    x0 = min(max(int(round(left)), 0), w - 1)
    y1 = min(max(int(round(top + height)), y0 + 1), h)
    x1 = min(max(int(round(left + width)), x0 + 1), w)
    box = image[y0:y1, x0:x1]
    if box.shape[:2] == (out_h, out_w):
        return np.ascontiguousarray(box)
    return cv2.resize(box, (out_w, out_h), interpolation=resize_interpolation(box.shape[:2], (out_h, out_w)))


def random_background(image, out_size, short_side, rng, flip=True):
    """Random ``out_size`` square of a background scaled so its short side is ``short_side``
    (as the photos are), optionally flipped. image: uint8 (H,W,3) -> uint8 (out,out,3)."""
    h, w = image.shape[:2]
    scale = max(short_side, out_size) / min(h, w)
    side = out_size / scale
    top = rng.uniform(0.0, max(h - side, 0.0))
    left = rng.uniform(0.0, max(w - side, 0.0))
    out = crop_resize(image, top, left, side, side, out_size, out_size)
    if flip and rng.random() < 0.5:
        out = out[:, ::-1]
    return out


def cover_background(image, out_h, out_w, rng):
    """A background scaled to cover (out_h, out_w) and cropped at a position drawn from
    ``rng``. image: uint8 (H,W,3) -> uint8 (out_h,out_w,3)."""
    h, w = image.shape[:2]
    scale = max(out_h / h, out_w / w)
    box_h, box_w = out_h / scale, out_w / scale
    top = rng.uniform(0.0, max(h - box_h, 0.0))
    left = rng.uniform(0.0, max(w - box_w, 0.0))
    return crop_resize(image, top, left, box_h, box_w, out_h, out_w)


def solid_colour(rng):
    """A random easy background: float32 (3,) RGB in [0,1]."""
    return rng.integers(0, 256, size=3).astype(np.float32) / np.float32(255.0)
