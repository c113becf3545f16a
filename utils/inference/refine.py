"""Full-resolution alpha from the network's low-resolution alpha and the photo.

The network sees every photo at 320 px; photos have 2 to 24 megapixels, so an alpha resized
back is a blur 10 to 40 px wide at full size. ``refine_alpha(image, coarse, method)`` makes the
full-resolution alpha, three ways:

- ``none``: the network's alpha resized (bilinear; area when shrinking), clipped to [0,1]:
  what every other method is measured against, and exactly what the project gave before.
- ``guided``: a fast guided filter (He, Sun, Tang, "Guided Image Filtering", 2013, with the
  "Fast Guided Filter" subsampling, He and Sun 2015) with the photo's colours as the guide:
  the linear coefficients are solved at a working resolution and applied at full resolution,
  so the edges follow the photo's colour edges. Cost grows with the photo only through that
  last step.
- ``matting``: a trimap from the coarse alpha as rembg's alpha matting makes it (sure foreground
  where the resized alpha > 0.94, sure background where < 0.04, each shrunk by a margin of
  ``band`` coarse pixels, at least ``min_margin`` = 5 px), then closed-form matting (Levin,
  Lischinski, Weiss 2008, eps 1e-7 as pymatting's) solved on the unknown band only: the matting
  Laplacian is built for the windows that touch the band and the linear system has one unknown
  per band pixel, so time and memory grow with the band, not with the photo. With the sure
  pixels fixed this is exactly the whole-photo closed-form solution restricted to the band
  (tests/test_refine.py checks it against pymatting's Laplacian). The system is solved by
  conjugate gradients with a symmetric Gauss-Seidel (SSOR) preconditioner, warm-started from the
  same problem solved at half and quarter size (``pyramid``), to a relative residual of ``tol``.
  It is solved at a working size (long side at most 768 px, ``work_size``, and at most half the
  photo's, ``work_scale``), then brought to full resolution by the solution's own local linear
  model: closed-form matting assumes alpha ~ a.I + b in each 3x3 window, so (a, b) are fitted to
  the working solution there (the guided filter's least squares), resized and applied to the
  full-size colours inside the band; thin strands come back from the full-size colours.
  (``linear_radius`` 0 instead solves the full-size band again: seconds more, and no better.)
  Sure pixels are exactly 0 or 1. A band covering most of the photo (a poor coarse alpha) falls
  back to ``guided`` with a warning.
  ``last_matting_stats()`` says what the last call did (band share, iterations, residual).
  documents/refinement.md has the measurements.

    from utils.inference.refine import refine_alpha
    alpha = refine_alpha(read_rgb("photo.jpg"), coarse)                 # guided, the default
    alpha = refine_alpha(image, coarse, "matting", band=2.0)            # options: see below

The first ``matting`` call in a process compiles its kernel with numba (a few seconds, cached
on disk afterwards); the times in documents/refinement.md are warm. ``benchmarks/refine.py`` measures the
methods against each other and against rembg's alpha matting.
"""
import threading
import warnings
from dataclasses import dataclass, field
from types import MappingProxyType

import cv2
import numpy as np
from numba import njit, prange

from utils.constants import REFINE_METHODS

from .preprocess import _resize, alpha_to_size  # ``none`` is exactly the resize every path used

# Defaults, chosen with benchmarks/refine.py on its tuning families (documents/refinement.md).
GUIDED_DEFAULTS = {
    "work_size": 512,    # px: long side of the working resolution the coefficients are solved at
    "radius": 4,         # px at the working resolution: window radius of the guided filter
    "eps": 1e-4,         # regulariser of the filter, in (colour in [0,1])^2; larger = smoother
}
MATTING_DEFAULTS = {
    "band": 1.0,         # coarse-alpha pixels: the band's margin (x the photo's scale, >= min_margin px)
    "min_margin": 5,     # px: the least margin (rembg erodes its trimap by a 10x10 square)
    "low": 0.04,         # resized coarse alpha < this, beyond the margin: sure background (rembg: 10/255)
    "high": 0.94,        # resized coarse alpha > this, inside the margin: sure foreground (rembg: 240/255)
    "eps": 1e-7,         # closed-form regulariser, in (colour in [0,1])^2 (pymatting's, rembg's)
    "max_band": 0.5,     # fraction of the photo's pixels; a wider band falls back to guided
    "tol": 1e-4,         # relative residual ||b - A x|| / ||b|| at which the conjugate gradients stop
    "max_iter": 400,     # conjugate-gradient iterations at most (each level of the pyramid)
    "omega": 1.0,        # SSOR preconditioner's relaxation in (0, 2); 0: Jacobi's (the diagonal only)
    "pyramid": 3,        # levels of the coarse-to-fine warm start (1 = none): each halves the photo
    "work_size": 768,    # px: longer photos are solved at this long side, then brought to full size
    "work_scale": 0.5,   # and every photo at most at this fraction of its size (1: small photos at full size)
    "margin": 1.0,       # working px: the full-size band around the working alpha's fractional pixels
    "linear_radius": 1,  # working px; >= 1: bring the working solution to full size by its local linear model
                         # alpha ~ a.I + b fitted in windows of this radius; 0: solve the full-size band again
    "linear_eps": 1e-5,  # regulariser of that fit, in (colour in [0,1])^2 (used when linear_radius >= 1)
    "polish_mp": 0.0,    # megapixels: photos up to this size then solve the full-size band (rembg's trimap at
                         # full size) again, warm-started from the linear model's alpha; 0: never
    "polish_tol": 1e-4,  # the polish's conjugate gradients stop at this relative residual
    "polish_max_iter": 400,  # or after this many iterations (each costs a full-size sweep of the band)
}


_STATS = threading.local()
PYRAMID_MIN_UNKNOWN = 4000  # a smaller band converges fast enough on its own
FRACTIONAL = 1e-3  # a working alpha in (this, 1 - this) is fractional: its pixels are solved again at full size
GUIDED_WHOLE_PIXELS = 1 << 22  # guided: up to 4 MP the coefficients are resized whole, above in strips (memory)


def last_matting_stats():
    """What the last ``matting`` call of this thread did: a dict with ``band_share`` (unknown
    pixels over the photo's, of the last level), ``iterations`` (conjugate-gradient iterations,
    summed over the levels), ``residual`` (the final ||b - A x|| / ||b|| of the last level,
    before clipping to [0,1]) and ``levels`` (a list of those per level); None before any."""
    stats = getattr(_STATS, "value", None)
    return None if stats is None else {**stats, "levels": [dict(level) for level in stats["levels"]]}


def _record(levels):
    _STATS.value = {"band_share": levels[-1]["band_share"] if levels else 0.0,
                    "iterations": sum(level["iterations"] for level in levels),
                    "residual": levels[-1]["residual"] if levels else 0.0, "levels": levels}


# ---------------------------------------------------------------- input checks
def _check_inputs(image, coarse):
    image = np.asarray(image)
    if image.ndim == 2:  # grayscale photo
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB (H,W,3), got {image.dtype} {image.shape}")
    image = image[..., :3]
    coarse = np.asarray(coarse)
    if coarse.ndim == 3 and coarse.shape[0] == 1:
        coarse = coarse[0]
    if coarse.ndim != 2:
        raise ValueError(f"coarse alpha must be 2-D (h,w), got shape {coarse.shape}")
    if coarse.size == 0 or not np.issubdtype(coarse.dtype, np.number):
        raise ValueError(f"coarse alpha must be a non-empty float array, got {coarse.dtype} {coarse.shape}")
    coarse = coarse.astype(np.float32, copy=False)
    if not np.isfinite(coarse).all():
        raise ValueError(f"coarse alpha has {int(np.count_nonzero(~np.isfinite(coarse)))} NaN or infinite values")
    low, high = float(coarse.min()), float(coarse.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(f"coarse alpha must lie in [0,1], got values in [{low:.4g}, {high:.4g}]")
    return image, coarse


def _options(method, defaults, options):
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(f"refine method {method!r} has no option(s) {unknown}; it takes {sorted(defaults)}")
    return {**defaults, **options}


def _method_options(method, options):
    """The keyword arguments of ``method``'s function: ``options`` over its defaults (for
    ``matting``, the ``guided_`` ones go to its ``guided`` argument). Raises ValueError naming an
    unknown method or option."""
    if method not in REFINE_METHODS:
        raise ValueError(f"refine method must be one of {REFINE_METHODS}, got {method!r}")
    if method == "none":
        return _options(method, {}, options)
    if method == "guided":
        resolved = _options(method, GUIDED_DEFAULTS, options)
        _checked(_check_guided, resolved, "")
        return resolved
    guided = {k[len("guided_"):]: v for k, v in options.items() if k.startswith("guided_")}
    rest = {k: v for k, v in options.items() if not k.startswith("guided_")}
    resolved = {**_options(method, MATTING_DEFAULTS, rest), "guided": _options("guided", GUIDED_DEFAULTS, guided)}
    _checked(_check_guided, resolved["guided"], "guided_")
    _checked(_check_matting, {k: v for k, v in resolved.items() if k != "guided"}, "")
    return resolved


def _checked(check, options, prefix):
    """``check(**options)``; a value of the wrong type is a ValueError naming its option too."""
    for key, value in options.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"refine option {prefix}{key} must be a number, got {value!r}")
    try:
        check(**options)
    except ValueError as error:
        raise ValueError(str(error).replace("bad option(s) ", f"bad option(s) {prefix}")) from None


def _check_guided(work_size, radius, eps):
    problems = [name for name, ok in (("work_size", work_size >= 8), ("radius", radius >= 1), ("eps", eps > 0))
                if not ok]
    if problems:
        given = dict(work_size=work_size, radius=radius, eps=eps)
        raise ValueError("guided: bad option(s) " + ", ".join(f"{k}={given[k]!r}" for k in problems)
                         + " (need work_size >= 8, radius >= 1, eps > 0)")


def check_options(method, options):
    """Raise ValueError, naming it, for an unknown method or option or an option's bad value
    (before any work)."""
    _method_options(method, options)


@dataclass(frozen=True)
class RefineOptions:
    """How the network's alpha becomes full-resolution: a method of ``REFINE_METHODS`` and its
    own options (keys of ``GUIDED_DEFAULTS`` or ``MATTING_DEFAULTS``; for ``matting`` also
    ``guided_``-prefixed guided ones), checked when made. ``resolved`` holds every option with
    its default filled in.

    >>> RefineOptions("matting", {"band": 1.0}).apply(image, coarse)
    """
    method: str = "guided"
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))  # frozen all the way
        object.__setattr__(self, "_resolved", _method_options(self.method, dict(self.options)))  # raises ValueError

    @property
    def resolved(self):
        return dict(self._resolved)

    def apply(self, image, coarse):
        """``refine_alpha(image, coarse, method, **options)``."""
        return refine_alpha(image, coarse, self.method, **self.options)


# ---------------------------------------------------------------- the public function
def refine_alpha(image, coarse, method="guided", **options):
    """Full-resolution alpha of ``image`` from the network's ``coarse`` alpha.

    Parameters
    ----------
    image: uint8 RGB (H,W,3) at full resolution (grayscale (H,W) is taken as gray RGB).
    coarse: float (h,w) in [0,1], the network's alpha at its own resolution (320x320 squashed,
        or short side 320); NaN, values outside [0,1] or another dimensionality raise ValueError.
    method: one of ``REFINE_METHODS``: ``none``, ``guided`` or ``matting`` (module docstring).
    options: for ``guided``, keys of ``GUIDED_DEFAULTS``; for ``matting``, keys of
        ``MATTING_DEFAULTS`` plus those of guided prefixed ``guided_`` (used for the initial
        guess and the fall-back). Units are in the comments of those dictionaries.

    Returns
    -------
    float32 (H,W) in [0,1]. Under ``matting`` exactly 0 or 1 outside the unknown band.

    >>> alpha = refine_alpha(np.zeros((600, 800, 3), np.uint8), np.zeros((320, 320), np.float32))
    >>> alpha.shape, alpha.dtype
    ((600, 800), dtype('float32'))
    """
    kwargs = _method_options(method, options)
    image, coarse = _check_inputs(image, coarse)
    if method == "none":
        return alpha_to_size(coarse, *image.shape[:2])
    if method == "guided":
        return guided_refine(image, coarse, **kwargs)
    return matting_refine(image, coarse, kwargs)


# ---------------------------------------------------------------- guided
def _box(x, radius):
    return cv2.boxFilter(x, -1, (2 * radius + 1, 2 * radius + 1), borderType=cv2.BORDER_REFLECT)


def _guided_coefficients(guide, p, radius, eps):
    """Colour guided filter coefficients: guide float32 (h,w,3), p float32 (h,w) ->
    float32 (h,w,4): the box-averaged (a_r, a_g, a_b, b) with q = a . I + b."""
    mean_i = _box(guide, radius)
    mean_p = _box(p, radius)
    cov_ip = _box(guide * p[..., None], radius) - mean_i * mean_p[..., None]
    pairs = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    var = {(i, j): _box(guide[..., i] * guide[..., j], radius) - mean_i[..., i] * mean_i[..., j] for i, j in pairs}
    s00, s01, s02 = var[0, 0] + eps, var[0, 1], var[0, 2]
    s11, s12, s22 = var[1, 1] + eps, var[1, 2], var[2, 2] + eps
    # inverse of the symmetric 3x3 (Sigma + eps I) by cofactors, per pixel
    c00, c01, c02 = s11 * s22 - s12 * s12, s02 * s12 - s01 * s22, s01 * s12 - s02 * s11
    c11, c12, c22 = s00 * s22 - s02 * s02, s01 * s02 - s00 * s12, s00 * s11 - s01 * s01
    det = s00 * c00 + s01 * c01 + s02 * c02
    ci = [cov_ip[..., k] for k in range(3)]
    a0 = (c00 * ci[0] + c01 * ci[1] + c02 * ci[2]) / det
    a1 = (c01 * ci[0] + c11 * ci[1] + c12 * ci[2]) / det
    a2 = (c02 * ci[0] + c12 * ci[1] + c22 * ci[2]) / det
    b = mean_p - a0 * mean_i[..., 0] - a1 * mean_i[..., 1] - a2 * mean_i[..., 2]
    return _box(np.dstack([a0, a1, a2, b]), radius)


def guided_refine(image, coarse, *, work_size, radius, eps, rows=512):
    """The ``guided`` method (module docstring). image uint8 (H,W,3); coarse float32 (h,w) in
    [0,1]. ``rows``: full-resolution rows computed at a time (bounds the memory)."""
    _check_guided(work_size, radius, eps)
    radius = int(radius)
    height, width = image.shape[:2]
    scale = min(1.0, work_size / max(height, width))
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    guide = _resize(image, h, w).astype(np.float32) / 255.0
    p = alpha_to_size(coarse, h, w)
    coef = _guided_coefficients(guide, p, radius, eps)
    if height * width <= GUIDED_WHOLE_PIXELS:  # one cv2.resize: 4-5x faster than the strips at 720p
        planes = cv2.split(cv2.resize(coef, (width, height), interpolation=cv2.INTER_LINEAR))
        return np.clip(_apply_planes(planes, image), 0.0, 1.0)
    out = np.empty((height, width), np.float32)
    for top in range(0, height, rows):  # coefficients upsampled and applied a strip at a time
        bottom = min(height, top + rows)
        out[top:bottom] = _apply_planes(cv2.split(_upsample_rows(coef, height, width, top, bottom)), image[top:bottom])
    return np.clip(out, 0.0, 1.0, out=out)


def _apply_planes(planes, image):
    """q = a . I + b: planes (a_r, a_g, a_b, b) float32 (h,w) each, image uint8 (h,w,3) ->
    float32 (h,w). OpenCV's per-plane products on contiguous planes (numpy's on the
    interleaved channels were 3x slower)."""
    q = planes[3]
    for k, channel in enumerate(cv2.split(image)):
        q = cv2.add(q, cv2.multiply(planes[k], channel, scale=1 / 255, dtype=cv2.CV_32F))
    return q


def _upsample_rows(coef, height, width, top, bottom):
    """Rows top:bottom of ``coef`` (h,w,C) bilinearly resized to (height,width), as
    cv2.resize(INTER_LINEAR) gives them (half-pixel centres), without the whole image."""
    h, w, channels = coef.shape
    y = np.clip((np.arange(top, bottom, dtype=np.float32) + 0.5) * (h / height) - 0.5, 0, h - 1)
    y0 = np.floor(y).astype(np.int32)
    y1 = np.minimum(y0 + 1, h - 1)
    wy = (y - y0)[:, None, None]
    rows = coef[y0] * (1 - wy) + coef[y1] * wy  # (bottom - top, w, C)
    return cv2.resize(rows, (width, bottom - top), interpolation=cv2.INTER_LINEAR).reshape(-1, width, channels)


# ---------------------------------------------------------------- matting
def trimap_from_coarse(coarse, height, width, *, band, low, high, min_margin=2):
    """(fg, unknown) bool (height,width) masks from the coarse alpha.

    Sure foreground: the resized alpha > ``high``, eroded by the margin; unknown: alpha >=
    ``low``, dilated by the margin, minus the sure foreground; the rest is sure background. The
    margin is ``band`` coarse pixels in full-resolution pixels (the photo's scale over the
    coarse alpha's), at least ``min_margin`` px.
    """
    scale = max(height / coarse.shape[0], width / coarse.shape[1])
    return _trimap(alpha_to_size(coarse, height, width), max(int(min_margin), int(round(band * scale))), low, high)


def _trimap(alpha, k, low, high):
    """(fg, unknown) bool masks: alpha > ``high`` eroded by ``k`` px; alpha >= ``low`` dilated
    by ``k`` px, minus fg."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
    fg = cv2.erode((alpha > high).view(np.uint8), kernel, borderType=cv2.BORDER_REPLICATE).view(bool)
    some = cv2.dilate((alpha >= low).view(np.uint8), kernel).view(bool)
    return fg, some & ~fg


def _check_matting(**o):
    """Raise ValueError naming each of the matting options ``o`` (``MATTING_DEFAULTS``' keys) whose value is bad."""
    problems = [name for name, ok in (
        ("band", o["band"] >= 0), ("min_margin", o["min_margin"] >= 1), ("low", 0 < o["low"] < o["high"]),
        ("high", o["low"] < o["high"] <= 1), ("eps", o["eps"] > 0), ("max_band", 0 < o["max_band"] <= 1),
        ("tol", 0 < o["tol"] < 1), ("max_iter", o["max_iter"] >= 1), ("omega", 0 <= o["omega"] < 2),
        ("pyramid", 1 <= o["pyramid"] <= 8), ("work_size", o["work_size"] >= 8), ("margin", o["margin"] >= 0),
        ("linear_radius", o["linear_radius"] >= 0 and float(o["linear_radius"]).is_integer()),
        ("linear_eps", o["linear_eps"] > 0), ("work_scale", 0 < o["work_scale"] <= 1), ("polish_mp", o["polish_mp"] >= 0),
        ("polish_tol", 0 < o["polish_tol"] < 1),
        ("polish_max_iter", o["polish_max_iter"] >= 1 and float(o["polish_max_iter"]).is_integer())) if not ok]
    if problems:
        raise ValueError("matting: bad option(s) " + ", ".join(f"{k}={o[k]!r}" for k in problems)
                         + " (need band >= 0, min_margin >= 1, 0 < low < high <= 1, eps > 0, 0 < max_band <= 1, "
                           "0 < tol < 1, max_iter >= 1, 0 <= omega < 2, 1 <= pyramid <= 8, work_size >= 8, margin >= 0, "
                           "linear_radius a whole number >= 0, linear_eps > 0, 0 < work_scale <= 1, polish_mp >= 0, "
                           "0 < polish_tol < 1, polish_max_iter a whole number >= 1)")


def matting_refine(image, coarse, options):
    """The ``matting`` method (module docstring). ``options``: every key of ``MATTING_DEFAULTS``
    plus ``guided``, the guided filter's options (for the initial guess inside the band and the
    fall-back), as ``RefineOptions("matting").resolved`` holds them.

    Photos are solved at a working resolution (long side ``work_size``, at most ``work_scale`` of
    the photo's) on the trimap's band, then brought to full resolution: with ``linear_radius`` >= 1 by the
    local linear model fitted to that solution (``_linear_upsample``); with 0 by solving again at
    full resolution on the pixels that came out fractional there, ``margin`` working pixels
    around them, the working alpha resized as the start and its sure pixels as the fixed ones.
    Each solve starts from the solution of the same problem at half the resolution (``pyramid``
    levels), so the conjugate gradients only have the fine detail left to find. Photos of at most
    ``polish_mp`` megapixels are then solved once more at full size on the full-size trimap's band,
    starting from the linear model's alpha (converged, that is the whole-photo closed-form solution),
    to ``polish_tol`` or ``polish_max_iter`` iterations (stopped early it moves the alpha towards
    that solution only slowly: documents/refinement.md).
    """
    guided = options["guided"]
    band, min_margin, low, high = options["band"], options["min_margin"], options["low"], options["high"]
    eps, max_band, tol, max_iter = options["eps"], options["max_band"], options["tol"], options["max_iter"]
    omega, pyramid, work_size, margin = options["omega"], options["pyramid"], options["work_size"], options["margin"]
    linear_radius, linear_eps, work_scale = options["linear_radius"], options["linear_eps"], options["work_scale"]
    polish_mp, polish_tol, polish_max_iter = options["polish_mp"], options["polish_tol"], options["polish_max_iter"]
    _check_matting(**{k: v for k, v in options.items() if k != "guided"})
    height, width = image.shape[:2]
    levels = []
    _record(levels)
    if min(height, width) < 3:  # no 3x3 window fits: nothing to solve
        return guided_refine(image, coarse, **guided)
    scale = min(1.0, work_size / max(height, width), work_scale)
    if min(height, width) * scale < 3:
        scale = 1.0  # no 3x3 window fits at the working size
    small = image if scale == 1.0 else _resize(image, max(1, round(height * scale)), max(1, round(width * scale)))
    fg, unknown = trimap_from_coarse(coarse, *small.shape[:2], band=band, low=low, high=high,
                                     min_margin=max(1, int(round(min_margin * scale))))
    share = float(unknown.mean())
    if share > max_band:
        warnings.warn(f"refine 'matting': the unknown band covers {share:.0%} of the photo (more than "
                      f"max_band={max_band:.0%}): the coarse alpha is too uncertain; using 'guided'",
                      RuntimeWarning, stacklevel=3)
        return guided_refine(image, coarse, **guided)
    alpha = fg.astype(np.float32)
    if unknown.any():
        start = guided_refine(small, coarse, **guided)
        alpha = _solve_pyramid(small, unknown, fg, start, (eps, tol, max_iter, omega), pyramid, levels)
    if scale < 1.0 and linear_radius >= 1:
        up = _linear_upsample(image, small, alpha, int(linear_radius), linear_eps, margin / scale)
        if height * width <= polish_mp * 1e6:
            # the whole-photo problem with the full-size trimap (what rembg solves), from a start
            # that is already close to it: only the detail finer than a working pixel is left
            del alpha
            fg, unknown = trimap_from_coarse(coarse, height, width, band=band, low=low, high=high,
                                             min_margin=min_margin)
            if unknown.any():
                up = _solve_pyramid(image, unknown, fg, up, (eps, polish_tol, int(polish_max_iter), omega), 1, levels)
        _record(levels)
        return up
    if scale < 1.0:
        up = alpha_to_size(alpha, height, width)
        del alpha
        # the full-size band: the working alpha's fractional pixels (any alpha not exactly 0 or 1), grown
        fg, unknown = _trimap(up, max(1, int(np.ceil(margin / scale))), FRACTIONAL, 1 - FRACTIONAL)
        alpha = fg.astype(np.float32)
        if unknown.any():
            alpha = _solve_pyramid(image, unknown, fg, up, (eps, tol, max_iter, omega), 1, levels)
    _record(levels)
    return alpha


def _linear_upsample(image, small, alpha, radius, eps, grow):
    """float32 (H,W) alpha in [0,1] from the working-size solution ``alpha`` (h,w) of ``small``
    (uint8 (h,w,3), ``image`` resized): in every window of ``radius`` working px the closed-form
    solution is close to a linear function of the colour, alpha ~ a.I + b (the model its Laplacian
    is built on), so (a, b) are fitted per window by least squares with regulariser ``eps`` (the
    guided filter's fit, the solution as its input), resized to full size and applied to the
    full-size colours, inside the full-size band only (the working alpha's fractional pixels
    grown by ``grow`` full-size px); elsewhere the resized working alpha (0 or 1 there)."""
    height, width = image.shape[:2]
    # float64: with eps near 1e-6 the float32 determinant of a flat window's covariance is 0/0
    coef = _guided_coefficients(small.astype(np.float64) / 255.0, alpha.astype(np.float64), radius, eps)
    coef = np.ascontiguousarray(np.nan_to_num(coef, copy=False), dtype=np.float32)
    up = alpha_to_size(alpha, height, width)
    _, unknown = _trimap(up, max(1, int(np.ceil(grow))), FRACTIONAL, 1 - FRACTIONAL)
    _apply_linear(coef, image, unknown, up)
    return up


@njit(cache=True, nogil=True, parallel=True)
def _apply_linear(coef, image, unknown, out):
    """out[y, x] = clip(a . I + b, 0, 1) at the ``unknown`` (bool (H,W)) pixels, with (a, b) =
    ``coef`` (float32 (h,w,4)) resized bilinearly as cv2.resize(INTER_LINEAR) would (half-pixel
    centres, edges replicated) and I = ``image`` (uint8 (H,W,3)) / 255; rows in parallel, only
    the band's pixels touched (a full-size resize of the four planes costs 5x more)."""
    h, w = coef.shape[0], coef.shape[1]
    height, width = out.shape
    sy, sx = h / height, w / width
    for y in prange(height):
        fy = min(max((y + 0.5) * sy - 0.5, 0.0), h - 1.0)
        y0 = int(fy)
        y1 = min(y0 + 1, h - 1)
        wy = fy - y0
        for x in range(width):
            if not unknown[y, x]:
                continue
            fx = min(max((x + 0.5) * sx - 0.5, 0.0), w - 1.0)
            x0 = int(fx)
            x1 = min(x0 + 1, w - 1)
            wx = fx - x0
            q = 0.0
            for k in range(4):
                c = ((coef[y0, x0, k] * (1 - wx) + coef[y0, x1, k] * wx) * (1 - wy)
                     + (coef[y1, x0, k] * (1 - wx) + coef[y1, x1, k] * wx) * wy)
                q += c * (image[y, x, k] / 255.0 if k < 3 else 1.0)
            out[y, x] = min(max(q, 0.0), 1.0)


def _solve_pyramid(image, unknown, fg, start, solver, depth, levels):
    """float32 (H,W) alpha: fg 1, the rest of the known pixels 0, the ``unknown`` ones solved
    from ``start`` (float (H,W)) with ``solver`` = (eps, tol, max_iter, omega), after a warm start from the same problem at half size when
    ``depth`` > 1 and the band is large enough to gain from it."""
    height, width = unknown.shape
    if depth > 1 and min(height, width) >= 64 and np.count_nonzero(unknown) > PYRAMID_MIN_UNKNOWN:
        h, w = (height + 1) // 2, (width + 1) // 2
        # a half-size pixel is sure only if all of its pixels are sure of the same kind
        fg_half = cv2.resize(fg.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) > 1 - 1e-6
        bg_half = cv2.resize((~fg & ~unknown).astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) > 1 - 1e-6
        half = _solve_pyramid(_resize(image, h, w), ~fg_half & ~bg_half, fg_half,
                              _resize(start.astype(np.float32), h, w), solver, depth - 1, levels)
        start = cv2.resize(half, (width, height), interpolation=cv2.INTER_LINEAR)
    alpha = fg.astype(np.float32)
    alpha[unknown] = _solve_band(image, unknown, fg, start, *solver, levels)
    return alpha


def _solve_band(image, unknown, fg, start, eps, tol, max_iter, omega, levels, radius=1):
    """Closed-form alpha of the ``unknown`` pixels, the others fixed (fg 1, else 0). Works on
    the band's bounding box grown by the window reach; returns float32 (n_unknown,) and appends
    this solve's size, iterations and final relative residual to ``levels``."""
    ys, xs = np.nonzero(unknown)
    reach = 2 * radius
    top, left = max(0, ys.min() - reach), max(0, xs.min() - reach)
    bottom, right = min(unknown.shape[0], ys.max() + reach + 1), min(unknown.shape[1], xs.max() + reach + 1)
    box = np.s_[top:bottom, left:right]
    u = unknown[box]
    index = np.full(u.shape, -1, np.int32)
    n = len(ys)
    index[u] = np.arange(n, dtype=np.int32)  # row-major, as ys, xs
    size = 2 * radius + 1
    centres = cv2.dilate(u.view(np.uint8), np.ones((size, size), np.uint8)).view(bool)
    centres[:radius], centres[-radius:], centres[:, :radius], centres[:, -radius:] = False, False, False, False
    cy, cx = np.nonzero(centres)
    span = 2 * reach + 1
    values = np.zeros((n, span, span), np.float32)  # half the memory traffic of the matrix-vector products
    rhs = np.zeros(n, np.float64)
    _band_laplacian(image[box], fg[box].astype(np.float64), index, cy.astype(np.int32), cx.astype(np.int32),
                    radius, eps, values, rhs)
    del centres, cy, cx
    # vectors live on the box padded by the reach, known pixels 0: a neighbour is an offset, no index table
    pw = (right - left) + 2 * reach
    pos = (ys - top + reach).astype(np.int64) * pw + (xs - left + reach)
    d = np.arange(-reach, reach + 1)
    offsets = (d[:, None] * pw + d[None, :]).ravel().astype(np.int64)
    grid = np.zeros(((bottom - top) + 2 * reach) * pw)
    x = start[ys, xs].astype(np.float64)
    values = values.reshape(n, -1)
    iterations = _conjugate_gradients(values, pos, offsets, grid, rhs, x, tol, max_iter, float(omega))
    residual = np.empty(n)
    _matvec(values, pos, offsets, grid, x, residual)
    relative = float(np.linalg.norm(rhs - residual) / max(np.linalg.norm(rhs), 1e-30))
    levels.append({"shape": unknown.shape, "band_share": n / unknown.size, "unknown": n,
                   "iterations": int(iterations), "residual": relative})
    return np.clip(x, 0.0, 1.0).astype(np.float32)


@njit(cache=True, nogil=True)
def _matvec(values, pos, offsets, grid, x, out):
    """out = A x: row i's neighbour k is the unknown at grid position pos[i] + offsets[k]
    (``grid``, the padded box, holds 0 at known pixels and x at unknown ones after the scatter)."""
    for i in range(x.shape[0]):
        grid[pos[i]] = x[i]
    for i in range(x.shape[0]):
        s = 0.0
        p = pos[i]
        for k in range(offsets.shape[0]):
            s += values[i, k] * grid[p + offsets[k]]
        out[i] = s


@njit(cache=True, nogil=True)
def _dot(a, b):
    s = 0.0  # a loop, not np.dot: BLAS threads on short vectors cost more than they give
    for i in range(a.shape[0]):
        s += a[i] * b[i]
    return s


@njit(cache=True, nogil=True)
def _ssor(values, pos, offsets, grid, inv_diag, r, z, omega):
    """z = M^-1 r for the symmetric successive over-relaxation preconditioner
    M = w/(2-w) (D/w + L) D^-1 (D/w + U): a forward then a backward Gauss-Seidel sweep over the
    rows (a neighbour at an earlier offset is an earlier row: rows are in raster order). The
    sweeps read and write z on ``grid``."""
    n = r.shape[0]
    centre = offsets.shape[0] // 2
    for i in range(n):  # (D/w + L) y = r
        s = r[i]
        p = pos[i]
        for k in range(centre):
            s -= values[i, k] * grid[p + offsets[k]]
        grid[p] = s * omega * inv_diag[i]
    scale = (2.0 - omega) / omega
    for i in range(n - 1, -1, -1):  # (D/w + U) z = (2-w)/w D y
        p = pos[i]
        s = grid[p] * scale / inv_diag[i]
        for k in range(centre + 1, offsets.shape[0]):
            s -= values[i, k] * grid[p + offsets[k]]
        z[i] = grid[p] = s * omega * inv_diag[i]


@njit(cache=True, nogil=True)
def _conjugate_gradients(values, pos, offsets, grid, rhs, x, tol, max_iter, omega=1.0):
    """Preconditioned conjugate gradients on the band's system (``_matvec``'s layout), ``x``
    (the initial guess) updated in place; stops at ||r|| <= tol ||rhs|| or after max_iter.
    ``omega`` > 0: the SSOR preconditioner with that relaxation; 0: Jacobi's (the diagonal).
    Returns the iterations run."""
    n = x.shape[0]
    centre = offsets.shape[0] // 2
    inv_diag = 1.0 / values[:, centre].astype(np.float64)
    r = np.empty(n)
    _matvec(values, pos, offsets, grid, x, r)
    r = rhs - r
    z = np.empty(n)
    if omega > 0:
        _ssor(values, pos, offsets, grid, inv_diag, r, z, omega)
    else:
        z[:] = r * inv_diag
    p = z.copy()
    q = np.empty(n)
    rz = _dot(r, z)
    stop = tol * tol * max(_dot(rhs, rhs), 1e-30)
    for iteration in range(max_iter):
        if _dot(r, r) <= stop:
            return iteration
        _matvec(values, pos, offsets, grid, p, q)
        step = rz / _dot(p, q)
        x += step * p
        r -= step * q
        if omega > 0:
            _ssor(values, pos, offsets, grid, inv_diag, r, z, omega)
        else:
            z[:] = r * inv_diag
        rz_new = _dot(r, z)
        p = z + (rz_new / rz) * p
        rz = rz_new
    return max_iter


@njit(cache=True, nogil=True)
def _band_laplacian(image, fg, index, cy, cx, r, eps, values, rhs):
    """Closed-form matting Laplacian restricted to unknown rows (numba).

    image uint8 (h,w,3); fg float64 (h,w) 1 on sure foreground; index int32 (h,w) row of each
    unknown pixel, -1 for known ones; (cy, cx) the window centres that touch an unknown pixel.
    Adds each window's L_ij to values[row(i), dy, dx] when j is unknown, else moves -L_ij fg_j
    to rhs[row(i)].
    """
    size = 2 * r + 1
    area = size * size
    reach = 2 * r
    c = np.zeros((size * size, 3))
    for k in range(cy.shape[0]):
        y, x = cy[k], cx[k]
        mean0 = mean1 = mean2 = 0.0
        for dy in range(size):
            for dx in range(size):
                mean0 += image[y + dy - r, x + dx - r, 0]
                mean1 += image[y + dy - r, x + dx - r, 1]
                mean2 += image[y + dy - r, x + dx - r, 2]
        mean0 /= area * 255.0
        mean1 /= area * 255.0
        mean2 /= area * 255.0
        a00 = a01 = a02 = a11 = a12 = a22 = 0.0
        for dy in range(size):
            for dx in range(size):
                m = dy * size + dx
                c[m, 0] = image[y + dy - r, x + dx - r, 0] / 255.0 - mean0
                c[m, 1] = image[y + dy - r, x + dx - r, 1] / 255.0 - mean1
                c[m, 2] = image[y + dy - r, x + dx - r, 2] / 255.0 - mean2
                a00 += c[m, 0] * c[m, 0]
                a01 += c[m, 0] * c[m, 1]
                a02 += c[m, 0] * c[m, 2]
                a11 += c[m, 1] * c[m, 1]
                a12 += c[m, 1] * c[m, 2]
                a22 += c[m, 2] * c[m, 2]
        a00 = (a00 + eps) / area
        a11 = (a11 + eps) / area
        a22 = (a22 + eps) / area
        a01 /= area
        a02 /= area
        a12 /= area
        c00 = a11 * a22 - a12 * a12
        c01 = a02 * a12 - a01 * a22
        c02 = a01 * a12 - a02 * a11
        c11 = a00 * a22 - a02 * a02
        c12 = a01 * a02 - a00 * a12
        c22 = a00 * a11 - a01 * a01
        inv_det = 1.0 / (a00 * c00 + a01 * c01 + a02 * c02)
        for mi in range(area):
            yi, xi = y + mi // size - r, x + mi % size - r
            row = index[yi, xi]
            if row < 0:
                continue
            s, t, u = c[mi, 0], c[mi, 1], c[mi, 2]
            g0 = (c00 * s + c01 * t + c02 * u) * inv_det
            g1 = (c01 * s + c11 * t + c12 * u) * inv_det
            g2 = (c02 * s + c12 * t + c22 * u) * inv_det
            for mj in range(area):
                yj, xj = y + mj // size - r, x + mj % size - r
                value = (1.0 if mi == mj else 0.0) - (1.0 + g0 * c[mj, 0] + g1 * c[mj, 1] + g2 * c[mj, 2]) / area
                if index[yj, xj] >= 0:
                    values[row, yj - yi + reach, xj - xi + reach] += value
                else:
                    rhs[row] -= value * fg[yj, xj]
