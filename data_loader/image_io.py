"""Reading photos and alpha mattes robustly, with one error type for every bad file.

Handled: grayscale, RGBA (alpha dropped for photos), 16-bit, palette, CMYK JPEGs, EXIF
orientation. Unreadable, truncated, zero-byte and non-image files raise ``ImageReadError``
(a ``ValueError``) whose message names the file and the reason.

Two checks Pillow does not make:

- A pixel limit (``MAX_PIXELS``, the ``max_pixels`` parameter; the scripts' ``--max-pixels``),
  checked from the header before any pixel is decoded: a 150-byte PNG can declare 12000x12000,
  which Pillow (whose own error starts at 179 MP) would decode into gigabytes.
- Truncation that decodes without an error. A PNG whose zlib stream ends early leaves the rows
  after it zero: the inflated size of its image data is compared with what the header needs. A
  JPEG cut short with an end marker appended is filled by libjpeg with blocks of all-zero
  coefficients, exactly 128 in every band, from the cut to the end: a JPEG whose last rows
  (at least one 8-pixel block row, not the whole image) are exactly 128 in every band is
  refused. That rule would also refuse a genuine JPEG ending in whole rows of exactly mid grey
  (rare in photos; such a file can be re-saved as PNG). A progressive JPEG cut short comes out
  blurred rather than grey: one whose scans send coefficients at reduced precision (successive
  approximation) but never refine them is refused; a cut inside its last scan (the last bit of
  the luma detail) is not detected.
"""
import math
import numbers
import os
import re
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# What PIL raises on broken files (UnidentifiedImageError and "truncated" are OSErrors).
_PIL_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")

MAX_PIXELS = 100_000_000
"""Default pixel limit (width x height as stored, after a JPEG's reduced-scale decoding).

100 MP is above every full-frame camera (61 MP at most) and a phone's default output (12-50 MP),
and still refuses a 144 MP decompression bomb. Reading costs about 29 bytes per pixel for an
alpha and 63 with a cut-out (measured with apply.py), so the limit keeps one photo under ~3 GB,
~6.3 GB with cut-outs: a 16 GB laptop survives it. 102 MP medium-format photos and the 200 MP
modes of some phones need a larger ``max_pixels``. Pillow's own limit still applies above it:
``PIL.Image.MAX_IMAGE_PIXELS`` x 2 (179 MP by default) refuses even with a larger ``max_pixels``,
as an ``ImageReadError`` saying so.
"""
# Pillow warns from 89.5 MP on; the limit above is the project's, said in its error: one message
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type: gray, RGB, palette, gray+alpha, RGBA
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_JPEG_FILL = 128  # what libjpeg decodes a block of all-zero coefficients to, in every band
# the end of a JPEG scan's entropy-coded data: 0xFF then neither a stuffed 0 nor a restart marker
_JPEG_AFTER_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7]")


class ImageReadError(ValueError):
    """A file that cannot be used as an image; the message names the file and the reason.

    One argument is taken as a whole message (``path`` None): that is how a DataLoader worker's
    error is re-raised in the main process, which then stays an ``ImageReadError``.
    """

    def __init__(self, path, reason=None):
        if reason is None:
            super().__init__(str(path))
            self.path, self.reason = None, str(path)
        else:
            super().__init__(f"cannot read image {path}: {reason}")
            self.path, self.reason = str(path), reason

    def __reduce__(self):  # pickled (process pools, workers) with its path and reason
        return type(self), ((self.reason,) if self.path is None else (self.path, self.reason))


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
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    try:
        return Image.open(path)  # reads the header only
    except Image.DecompressionBombError as err:
        raise ImageReadError(path, f"over Pillow's decompression-bomb limit (PIL.Image.MAX_IMAGE_PIXELS x 2, "
                                   f"checked before decoding): {err}") from err
    except _PIL_ERRORS as err:
        raise ImageReadError(path, f"{type(err).__name__}: {err}") from err


def _check_limit(max_pixels):
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, numbers.Integral)
                                   or max_pixels < 1):
        raise ValueError(f"max_pixels must be an integer >= 1 or None, got {max_pixels!r}")


def check_pixels(path, size, max_pixels: int | None = MAX_PIXELS) -> None:
    """Raise ``ImageReadError`` naming ``path`` when ``size`` (width, height), e.g. a header's,
    has more than ``max_pixels`` pixels (None: no limit), as reading the file would."""
    _check_limit(max_pixels)
    if max_pixels is None:
        return
    width, height = size
    if width * height > max_pixels:
        raise ImageReadError(path, f"{width}x{height} is {width * height:,} pixels ({width * height / 1e6:.1f} MP), "
                                   f"over the pixel limit of {max_pixels:,} ({max_pixels / 1e6:g} MP; max_pixels, "
                                   "--max-pixels in the scripts), checked from the header before decoding")


def _png_stream_size(width, height, bits_per_pixel, interlaced):
    """Bytes of the filtered scanlines a PNG header asks for (one filter byte per row)."""
    def size(w, h):
        return h * (1 + (w * bits_per_pixel + 7) // 8) if w and h else 0
    if not interlaced:
        return size(width, height)
    return sum(size((width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy) for x0, y0, dx, dy in _ADAM7)


def _png_shortfall(path):
    """Why a PNG's image data is shorter than its header needs, or None if it is not.

    Inflates the IDAT stream in 1 MB pieces, keeping none of it, and stops once it has enough:
    Pillow leaves the rows after an early end of the zlib stream zero, without an error.
    """
    inflater, inflated, needed = zlib.decompressobj(), 0, None
    with open(path, "rb") as f:
        if f.read(8) != _PNG_SIGNATURE:
            return None
        while True:
            head = f.read(8)
            if len(head) < 8 or head[4:] == b"IEND":
                break
            length, kind = int.from_bytes(head[:4], "big"), head[4:]
            if kind == b"IHDR":
                ihdr = f.read(length)
                width, height = int.from_bytes(ihdr[0:4], "big"), int.from_bytes(ihdr[4:8], "big")
                bits, interlaced = ihdr[8] * _PNG_CHANNELS.get(ihdr[9], 1), ihdr[12] == 1
                needed = _png_stream_size(width, height, bits, interlaced)
                f.seek(4, 1)
                continue
            if kind != b"IDAT" or needed is None:
                f.seek(length + 4, 1)
                continue
            left = length
            while left and inflated < needed and not inflater.eof:
                data = f.read(min(left, 1 << 20))
                if not data:
                    break
                left -= len(data)
                while data and inflated < needed:
                    try:
                        inflated += len(inflater.decompress(data, 1 << 20))
                    except zlib.error:
                        return None  # a broken stream is Pillow's to report; it decoded this one
                    data = inflater.unconsumed_tail
            if inflated >= needed or inflater.eof:
                break
            f.seek(left + 4, 1)
    if needed is None or inflated >= needed:
        return None
    if interlaced:
        return f"truncated: its interlaced image data holds {inflated} of the {needed} bytes its header needs"
    return (f"truncated: its image data holds {inflated // (needed // height)} of its {height} rows "
            "(the rest would be decoded as zeros)")


def _jpeg_fill_rows(im, stored_height):
    """Rows at the bottom of a decoded RGB/L JPEG that are exactly libjpeg's fill (128 in every
    band), if they are at least one 8-pixel block row (at the decoded scale) and not the whole
    image; else 0. Reads strips of 64 rows upwards from the bottom, only while they are fill."""
    width, height = im.size
    fill = 0
    while fill < height:
        top = max(0, height - fill - 64)
        strip = np.asarray(im.crop((0, top, width, height - fill)))
        flat = (strip == _JPEG_FILL).reshape(strip.shape[0], -1).all(axis=1)
        if flat.all():
            fill += len(flat)
            continue
        fill += len(flat) - 1 - int(np.flatnonzero(~flat)[-1])
        break
    block_rows = max(1, 8 * height // stored_height)
    return fill if block_rows <= fill < height else 0


def _jpeg_unrefined(path):
    """A progressive JPEG's components whose coefficients were sent at a reduced precision
    (successive approximation, Al > 0) but never refined to full precision (Al = 0): the
    refinement scans are missing, as in a file cut short. Walks the markers only."""
    with open(path, "rb") as f:
        data = f.read()
    coarse, refined, pos = {}, {}, 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        while pos + 1 < len(data) and data[pos + 1] == 0xFF:  # fill bytes before a marker
            pos += 1
        marker = data[pos + 1]
        if marker == 0xD9 or pos + 4 > len(data):
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            pos += 2
            continue
        end = pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xDA:  # SOS: Ns, (component, tables) x Ns, Ss, Se, Ah|Al; then its data
            header = data[pos + 4:end]
            components = header[1:1 + 2 * header[0]:2]
            first, last, low_bit = header[-3], header[-2], header[-1] & 0x0F
            for component in components:
                target = refined if low_bit == 0 else coarse
                target.setdefault(component, set()).update(range(first, last + 1))
            found = _JPEG_AFTER_SCAN.search(data, end)
            end = found.start() if found else len(data)
        pos = end
    return sorted(c for c, coefficients in coarse.items() if not coefficients <= refined.get(c, set()))


def _check_complete(path, im, stored_size):
    """Raise ``ImageReadError`` for a PNG or JPEG that decoded without error but lacks data."""
    width, height = im.size
    if im.format == "PNG":
        last_row_set = np.asarray(im.crop((0, height - 1, width, height))).any()
        reason = None if last_row_set and not im.info.get("interlace") else _png_shortfall(path)
        if reason:
            raise ImageReadError(path, reason)
    elif im.format == "JPEG":
        unrefined = _jpeg_unrefined(path) if im.info.get("progressive") else []
        if unrefined:
            raise ImageReadError(path, "truncated: a progressive JPEG whose refinement scans are missing "
                                       f"(component(s) {unrefined} never reach full precision)")
        fill = _jpeg_fill_rows(im, stored_size[1]) if im.mode in ("L", "RGB") else 0
        if fill:
            raise ImageReadError(path, f"truncated: its last {fill} of {height} rows are the decoder's fill for "
                                       "missing data (exactly 128 in every band; a genuine mid-grey bottom "
                                       "can be saved as PNG instead)")


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


def _load(path, exif, min_short_side=None, max_pixels=MAX_PIXELS):
    """Open, optionally JPEG-draft, check the pixel count, decode, check for missing data and
    EXIF-transpose; returns a loaded PIL image."""
    _check_limit(max_pixels)  # a bad argument is not the file's fault: before opening it
    im = _open(path)
    try:
        stored_size = im.size
        if min_short_side and im.format == "JPEG":
            scale = min_short_side / min(im.size)
            if scale < 0.5:  # draft decodes at 1/2, 1/4 or 1/8 scale, never below the request
                im.draft(im.mode if im.mode == "CMYK" else "RGB",
                         (math.ceil(im.size[0] * scale), math.ceil(im.size[1] * scale)))
        check_pixels(path, im.size, max_pixels)  # what will be decoded; nothing is yet
        im.load()
        _check_complete(path, im, stored_size)
        if exif:
            im = ImageOps.exif_transpose(im)
        return im
    except ImageReadError:
        im.close()
        raise
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


def read_rgb(path, exif: bool = True, min_short_side: int | None = None,
             max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """Photo -> uint8 (H,W,3) RGB, C-contiguous.

    ``exif``: apply the EXIF orientation. ``min_short_side``: for JPEGs much larger than
    needed, decode at a reduced scale (PIL draft) whose short side is still >= this value.
    ``max_pixels``: more pixels to decode than this (read from the header) is an error before
    any decoding (None: no limit of ours; see ``MAX_PIXELS``). 16-bit images are scaled to
    8 bits; RGBA and LA give their colour (alpha dropped); grayscale is repeated in 3 bands.
    Raises ``ImageReadError`` for unreadable, truncated, zero-byte, non-image or too large files.
    """
    im = _load(path, exif, min_short_side, max_pixels)
    with im:
        if im.mode in _SIXTEEN_BIT_MODES + ("I", "F", "1"):
            gray = np.round(_gray_to_unit(np.asarray(im), im.mode) * 255.0).astype(np.uint8)
            return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
        if im.mode != "RGB":
            im = im.convert("RGB")  # L, LA, P, PA, RGBA (alpha dropped), CMYK, YCbCr
        return np.array(im, dtype=np.uint8)


def read_alpha(path, channel: int | None = None, exif: bool = True,
               max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """Alpha matte -> float32 (H,W) in [0,1].

    ``channel=None``: the image read as grayscale (8/16-bit gray, or luminance of colour
    images; any alpha band ignored). ``channel=3``: the alpha band (RGBA's 4th channel, as
    AISegment mattes store it; also LA and palette-with-transparency). Other ints pick that
    band. ``max_pixels``: as in ``read_rgb``. Raises ``ImageReadError`` for a bad file, a
    missing channel or too many pixels.
    """
    im = _load(path, exif, max_pixels=max_pixels)
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
