"""Reading photos and alpha mattes robustly, with one error type for every bad file.

Handled: grayscale, RGBA (alpha dropped for photos), 16-bit, palette, CMYK JPEGs, EXIF
orientation. Unreadable, truncated, zero-byte and non-image files raise ``ImageReadError``
(a ``ValueError``) whose message names the file and the reason.
"""
import math
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# What PIL raises on broken files (UnidentifiedImageError and "truncated" are OSErrors).
_PIL_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


class ImageReadError(ValueError):
    """A file that cannot be used as an image; the message names the file and the reason."""

    def __init__(self, path, reason):
        super().__init__(f"cannot read image {path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class ImageHeader:
    """What a header read tells: ``size`` (width, height) as displayed (EXIF applied),
    ``raw_size`` as stored, PIL ``mode``, its ``bands`` and the EXIF ``orientation`` (1: as stored)."""
    size: tuple
    raw_size: tuple
    mode: str
    bands: tuple
    orientation: int = 1

    @property
    def has_alpha(self):
        return "A" in self.bands


def is_image_file(name):
    """True for a visible file whose extension is in ``IMAGE_EXTENSIONS``."""
    base = os.path.basename(name)
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def _open(path):
    try:
        if os.path.getsize(path) == 0:
            raise ImageReadError(path, "empty file (0 bytes)")
        return Image.open(path)
    except _PIL_ERRORS as err:
        raise ImageReadError(path, f"{type(err).__name__}: {err}") from err


def read_header(path):
    """Cheap check (no pixel decoding) -> ``ImageHeader``; raises ``ImageReadError``."""
    with _open(path) as im:
        try:
            orientation = im.getexif().get(_ORIENTATION_TAG, 1)
        except _PIL_ERRORS:
            orientation = 1
        bands = im.getbands()
        if im.mode == "P" and "transparency" in im.info:
            bands = ("R", "G", "B", "A")
        size = im.size[::-1] if orientation in _SWAPPING_ORIENTATIONS else im.size
        return ImageHeader(size=tuple(size), raw_size=tuple(im.size), mode=im.mode, bands=tuple(bands),
                           orientation=orientation or 1)


def _load(path, exif, min_short_side=None):
    """Open, optionally JPEG-draft, decode and EXIF-transpose; returns a loaded PIL image."""
    im = _open(path)
    try:
        if min_short_side and im.format == "JPEG":
            scale = min_short_side / min(im.size)
            if scale < 0.5:  # draft decodes at 1/2, 1/4 or 1/8 scale, never below the request
                im.draft(im.mode if im.mode == "CMYK" else "RGB",
                         (math.ceil(im.size[0] * scale), math.ceil(im.size[1] * scale)))
        im.load()
        if exif:
            im = ImageOps.exif_transpose(im)
        return im
    except _PIL_ERRORS as err:
        im.close()
        raise ImageReadError(path, f"{type(err).__name__}: {err}") from err


def _gray_to_unit(arr, mode):
    """Gray pixels of any depth -> float32 in [0,1]."""
    if mode in _SIXTEEN_BIT_MODES:
        return arr.astype(np.float32) / 65535.0
    if mode == "I":  # 32-bit integer; 16-bit PNGs load as "I" in some Pillow versions
        return arr.astype(np.float32) / (65535.0 if arr.max(initial=0) > 255 else 255.0)
    if mode == "F":
        arr = arr.astype(np.float32)
        return np.clip(arr if arr.max(initial=0) <= 1.0 else arr / 255.0, 0.0, 1.0)
    if mode == "1":
        return arr.astype(np.float32)
    return arr.astype(np.float32) / 255.0


def read_rgb(path, exif=True, min_short_side=None):
    """Photo -> uint8 (H,W,3) RGB, C-contiguous.

    ``exif``: apply the EXIF orientation. ``min_short_side``: for JPEGs much larger than
    needed, decode at a reduced scale (PIL draft) whose short side is still >= this value.
    Raises ``ImageReadError`` for unreadable, truncated, zero-byte or non-image files.
    """
    im = _load(path, exif, min_short_side)
    with im:
        if im.mode in _SIXTEEN_BIT_MODES + ("I", "F", "1"):
            gray = np.round(_gray_to_unit(np.asarray(im), im.mode) * 255.0).astype(np.uint8)
            return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
        if im.mode != "RGB":
            im = im.convert("RGB")  # L, LA, P, PA, RGBA (alpha dropped), CMYK, YCbCr
        return np.array(im, dtype=np.uint8)


def read_alpha(path, channel=None, exif=True):
    """Alpha matte -> float32 (H,W) in [0,1].

    ``channel=None``: the image read as grayscale (8/16-bit gray, or luminance of colour
    images; any alpha band ignored). ``channel=3``: the alpha band (RGBA's 4th channel, as
    AISegment mattes store it; also LA and palette-with-transparency). Other ints pick that
    band. Raises ``ImageReadError`` for a bad file or a missing channel.
    """
    im = _load(path, exif)
    with im:
        if channel is None:
            if im.mode not in _SIXTEEN_BIT_MODES + ("I", "F", "1", "L"):
                im = im.convert("L")
            return np.ascontiguousarray(_gray_to_unit(np.asarray(im), im.mode))
        if im.mode in ("P", "PA"):
            im = im.convert("RGBA")
        bands = im.getbands()
        if channel == 3 and "A" in bands:
            band = bands.index("A")
        elif 0 <= channel < len(bands):
            band = channel
        else:
            raise ImageReadError(path, f"has {len(bands)} channel(s) {''.join(bands)}, channel {channel} asked")
        if len(bands) == 1:
            return np.ascontiguousarray(_gray_to_unit(np.asarray(im), im.mode))
        return np.ascontiguousarray(_gray_to_unit(np.asarray(im.getchannel(band)), "L"))
