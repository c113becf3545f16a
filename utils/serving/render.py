"""From a photo and its coarse alpha to the bytes a route answers with: the same arrays and the
same PNG encoding as apply.py's files (``utils.inference.cutout``, ``files.encode_png``), so
``/api/matte`` gives byte for byte what ``apply.py`` writes for the same photo and options.

    alpha = full_alpha(matter, image, coarse, "guided")              # float32 (H,W) in [0,1]
    body, media_type = encode(render("cutout", image, alpha), "png")
"""
from functools import lru_cache

import cv2
import numpy as np

from utils.inference.core import refine_options
from utils.inference.cutout import alpha_to_uint8, composite_over, cutout_rgba, estimate_foreground_colours, fit_background
from utils.inference.files import encode_png, render_outputs

from .limits import ApiError

FORMATS = {"png": "image/png", "webp": "image/webp"}
WEBP_LOSSLESS = 101  # OpenCV's WebP quality above 100 is lossless: an alpha matte keeps its exact values


@lru_cache(maxsize=16)
def _refine(method: str, options: tuple):
    """``RefineOptions`` made once per (method, options): they are frozen and checked when made."""
    if not options:
        return refine_options(method)
    from utils.inference.refine import RefineOptions

    return RefineOptions(method, dict(options))


def full_alpha(matter, image: np.ndarray, coarse: np.ndarray, method: str | None = None,
               options: dict | None = None) -> np.ndarray:
    """``coarse`` (float32 (h,w) in [0,1]) -> float32 (H,W) in [0,1] at ``image``'s size:
    ``matter.full`` for the server's own refinement (``method`` None or the same, no
    ``options``), else ``method`` with ``options`` over its defaults. Raises ApiError 422 for an
    unknown method or option."""
    if method is None or (method == matter.options.refine_method and not options):
        return matter.full(image, coarse)
    try:
        refine = _refine(method, tuple(sorted((options or {}).items())))
    except ValueError as err:
        raise ApiError(422, f"refine: {err}") from err
    return matter.full(image, coarse, refine)


def render(kind: str, image: np.ndarray, alpha: np.ndarray, background: np.ndarray | None = None) -> np.ndarray:
    """The ``kind`` of output apply.py writes for ``image`` and ``alpha``
    (``files.render_outputs``)."""
    return render_outputs((kind,), image, alpha, background)[kind]


def rembg_output(image: np.ndarray, alpha: np.ndarray, only_mask: bool, post_process: bool,
                 colour: tuple | None) -> np.ndarray:
    """What rembg's ``remove`` returns, made our way: ``only_mask`` the 8-bit mask (H,W); else
    the RGBA cut-out (H,W,4), over ``colour`` (r, g, b, a) when given (standard "over"
    compositing; an opaque colour gives apply.py's composite with alpha 255). ``post_process``:
    rembg's ``ppm``, the mask opened (3x3 ellipse), blurred (5x5, sigma 2) and thresholded at
    127, before anything else uses it."""
    if post_process:
        alpha = _post_process(alpha)
    if only_mask:
        return alpha_to_uint8(alpha)
    foreground = estimate_foreground_colours(image, alpha)
    if colour is None:
        return cutout_rgba(foreground, alpha)
    rgb, opacity = np.array(colour[:3], np.uint8), colour[3] / 255.0
    if opacity == 1.0:
        composite = composite_over(foreground, alpha, fit_background(rgb, *image.shape[:2]))
        return np.dstack([composite, np.full(alpha.shape, 255, np.uint8)])
    under = (1.0 - alpha) * opacity                      # the colour's share of each pixel
    total = alpha + under                                 # the result's alpha
    safe = np.where(total > 0, total, 1.0)[..., None]
    colours = (foreground * alpha[..., None] + rgb.astype(np.float32) / 255.0 * under[..., None]) / safe
    return np.dstack([alpha_to_uint8(colours), alpha_to_uint8(total)])


def _post_process(alpha: np.ndarray) -> np.ndarray:
    """rembg's mask post-processing on our alpha: a binary float32 (H,W) of 0 and 1."""
    mask = alpha_to_uint8(alpha)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    mask = cv2.GaussianBlur(mask, (5, 5), 2)
    return (mask >= 127).astype(np.float32)


def encode(array: np.ndarray, fmt: str = "png") -> tuple[bytes, str]:
    """uint8 gray, RGB or RGBA -> (file bytes, media type). ``png``: apply.py's encoding;
    ``webp``: lossless. Raises ApiError 422 for another format."""
    if fmt == "png":
        return encode_png(array), FORMATS["png"]
    if fmt != "webp":
        raise ApiError(422, f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR if array.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    ok, data = cv2.imencode(".webp", array, [cv2.IMWRITE_WEBP_QUALITY, WEBP_LOSSLESS])
    if not ok:
        raise OSError("WebP encoding failed")
    return data.tobytes(), FORMATS["webp"]
