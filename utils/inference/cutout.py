"""From an alpha matte to what a user keeps: 8-bit alphas, RGBA cut-outs with the foreground
colours estimated (pymatting's multi-level method, so hair edges keep no fringe of the old
background) and composites over a colour or an image.

    foreground = estimate_foreground_colours(image, alpha)
    rgba = cutout_rgba(foreground, alpha)                              # uint8 (H,W,4)
    green = composite_over(foreground, alpha, fit_background(parse_background("#00ff00"), h, w))
"""
import os

import cv2
import numpy as np
from PIL import ImageColor

from data_loader.image_io import read_rgb
from utils.arrays import unit_to_uint8


alpha_to_uint8 = unit_to_uint8  # the one rounding (utils/arrays.py): apply.py's, test_stage2.py's and make_dataset.py's PNGs


def parse_background(spec):
    """A colour (``#00ff00``, ``#0f0``, ``green``, ``rgb(0,255,0)``) -> uint8 (3,); an image
    file -> uint8 (H,W,3). Raises ValueError naming ``spec`` otherwise."""
    if os.path.isfile(spec):
        return read_rgb(spec)
    try:
        return np.array(ImageColor.getrgb(spec)[:3], dtype=np.uint8)
    except ValueError as err:
        raise ValueError(f"--background {spec!r} is neither an image file nor a colour "
                         "(e.g. #00ff00, white)") from err


def fit_background(background, height, width):
    """Colour (3,) or image (h,w,3) -> float32 (height,width,3) or (3,) in [0,1]; an image is
    scaled to cover the photo and centre-cropped (aspect ratio kept)."""
    if background.ndim == 1:
        return background.astype(np.float32) / 255.0
    h, w = background.shape[:2]
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    resized = cv2.resize(background, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return resized[top:top + height, left:left + width].astype(np.float32) / 255.0


WHOLE_PIXELS = 12_000_000  # photos up to this size are estimated whole
STRIP_PIXELS = 4_000_000   # larger ones a strip of about this many pixels at a time (bounded memory)
STRIP_OVERLAP = 128        # rows each strip sees beyond the rows it gives


def estimate_foreground_colours(image, alpha):
    """uint8 RGB (H,W,3) + float32 alpha (H,W) -> float32 foreground colours (H,W,3) in [0,1]
    (pymatting's multi-level estimate: hair edges keep no trace of the old background).

    pymatting holds about six float32 copies of the photo (1.7 GB at 24 MP), so photos above
    ``WHOLE_PIXELS`` are estimated in strips of rows, each with ``STRIP_OVERLAP`` rows of
    context on either side; strips whose alpha is all 0 or all 1 keep the photo's colours
    (nothing is mixed there). Measured on a synthetic 6000x4000 photo with hair-like strands
    (2-core Xeon, loaded): the estimate's peak 2.06 -> 1.06 GB at about the same time (16 s
    against 19 s), and apply.py --refine matting --outputs alpha,cutout peaks at 1.85 GB instead
    of 3.0 GB; the colours of the fractional pixels differ from the whole-photo estimate by
    0.93/255 on average (1 % of them by more than 23/255: the coarse levels differ per strip)."""
    colours = np.divide(image, 255.0, dtype=np.float32)
    height, width = alpha.shape
    if height * width < 2:  # pymatting's levels divide by zero on one pixel; nothing to estimate
        return colours
    if height * width <= WHOLE_PIXELS:
        return _estimate(colours, alpha)
    rows = max(2 * STRIP_OVERLAP, STRIP_PIXELS // width)
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        lo, hi = max(0, top - STRIP_OVERLAP), min(height, bottom + STRIP_OVERLAP)
        part = alpha[lo:hi]
        if not ((part > 0) & (part < 1)).any():
            continue
        colours[top:bottom] = _estimate(colours[lo:hi], part)[top - lo:bottom - lo]
    return colours


def _estimate(colours, alpha):
    from pymatting import estimate_foreground_ml  # numba: ~1 s to import, only when needed
    foreground = estimate_foreground_ml(colours, alpha)
    return np.clip(foreground, 0.0, 1.0, out=foreground)


def cutout_rgba(foreground, alpha):
    """float32 foreground (H,W,3) in [0,1] + alpha (H,W) -> uint8 RGBA (H,W,4)."""
    return np.dstack([alpha_to_uint8(foreground), alpha_to_uint8(alpha)])


def composite_over(foreground, alpha, background):
    """``alpha * foreground + (1 - alpha) * background`` -> uint8 RGB; background as returned by
    ``fit_background``."""
    out = foreground - background  # in place from here: 24 MP photos make 288 MB arrays
    out *= alpha[..., None]
    out += background
    return alpha_to_uint8(out)
