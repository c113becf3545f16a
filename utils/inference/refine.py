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
  last step (0.25-0.3 s of CPU for a 12 MP photo on this project's 2-core AMD EPYC).
- ``matting``: a trimap from the coarse alpha (sure foreground, sure background and an unknown
  band whose width follows the photo's scale), then closed-form matting (Levin, Lischinski,
  Weiss 2008) solved on the band only: the matting Laplacian is built for the windows that
  touch the band and the linear system has one unknown per band pixel, so time and memory grow
  with the band, not with the photo. Photos longer than ``work_size`` are solved at that size
  first, then at full resolution around the pixels that came out fractional (2.5 s of CPU and
  0.55 GB peak for a 12 MP photo). Sure pixels are exactly 0 or 1. A band covering most of the
  photo (a poor coarse alpha) falls back to ``guided`` with a warning.

    from utils.inference.refine import refine_alpha
    alpha = refine_alpha(read_rgb("photo.jpg"), coarse)                 # guided, the default
    alpha = refine_alpha(image, coarse, "matting", band=2.0)            # options: see below

The first ``matting`` call in a process compiles its kernel with numba (a few seconds, cached
on disk afterwards); the times in the README are warm. ``benchmarks/refine.py`` measures the
methods against each other and against rembg's alpha matting.
"""
import warnings
from dataclasses import dataclass, field
from types import MappingProxyType

import cv2
import numpy as np
from numba import njit

from utils.constants import REFINE_METHODS

from .preprocess import _resize, alpha_to_size  # ``none`` is exactly the resize every path used

# Defaults, chosen with benchmarks/refine.py (see the README's table).
GUIDED_DEFAULTS = {
    "work_size": 512,    # px: long side of the working resolution the coefficients are solved at
    "radius": 4,         # px at the working resolution: window radius of the guided filter
    "eps": 1e-4,         # regulariser of the filter, in (colour in [0,1])^2; larger = smoother
}
MATTING_DEFAULTS = {
    "band": 0.5,         # coarse-alpha pixels: the band's margin (x the photo's scale, >= 2 px)
    "low": 0.01,         # resized coarse alpha <= this, beyond the margin: sure background
    "high": 0.99,        # resized coarse alpha >= this, inside the margin: sure foreground
    "eps": 1e-6,         # closed-form regulariser, in (colour in [0,1])^2
    "max_band": 0.5,     # fraction of the photo's pixels; a wider band falls back to guided
    "tol": 1e-4,         # relative residual at which the conjugate gradients stop
    "max_iter": 300,     # conjugate-gradient iterations at most (each level)
    "work_size": 2048,   # px: longer photos are solved at this long side first, then at full size
    "margin": 1.0,       # working px: the full-size band around the working alpha's fractional pixels
}


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
        return _options(method, GUIDED_DEFAULTS, options)
    guided = {k[len("guided_"):]: v for k, v in options.items() if k.startswith("guided_")}
    rest = {k: v for k, v in options.items() if not k.startswith("guided_")}
    return {**_options(method, MATTING_DEFAULTS, rest), "guided": _options("guided", GUIDED_DEFAULTS, guided)}


def check_options(method, options):
    """Raise ValueError, naming it, for an unknown method or option (before any work)."""
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
    return (guided_refine if method == "guided" else matting_refine)(image, coarse, **kwargs)


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
    if work_size < 8 or radius < 1 or eps <= 0:
        raise ValueError(f"guided: need work_size >= 8, radius >= 1, eps > 0; got {work_size}, {radius}, {eps}")
    radius = int(radius)
    height, width = image.shape[:2]
    scale = min(1.0, work_size / max(height, width))
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    guide = _resize(image, h, w).astype(np.float32) / 255.0
    p = alpha_to_size(coarse, h, w)
    coef = _guided_coefficients(guide, p, radius, eps)
    out = np.empty((height, width), np.float32)
    for top in range(0, height, rows):  # coefficients upsampled and applied a strip at a time
        bottom = min(height, top + rows)
        strip = _upsample_rows(coef, height, width, top, bottom)
        pixels = image[top:bottom].astype(np.float32) * np.float32(1 / 255)
        q = strip[..., 3]
        for k in range(3):
            q += strip[..., k] * pixels[..., k]
        out[top:bottom] = q
    return np.clip(out, 0.0, 1.0, out=out)


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
def trimap_from_coarse(coarse, height, width, *, band, low, high):
    """(fg, unknown) bool (height,width) masks from the coarse alpha.

    Sure foreground: the resized alpha >= ``high``, eroded by the band; unknown: alpha >
    ``low``, dilated by the band, minus the sure foreground; the rest is sure background. The
    band's half-width is ``band`` coarse pixels in full-resolution pixels (the photo's scale
    over the coarse alpha's), at least 2 px.
    """
    scale = max(height / coarse.shape[0], width / coarse.shape[1])
    return _trimap(alpha_to_size(coarse, height, width), max(2, int(round(band * scale))), low, high)


def _trimap(alpha, k, low, high):
    """(fg, unknown) bool masks: alpha >= ``high`` eroded by ``k`` px; alpha > ``low`` dilated
    by ``k`` px, minus fg."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
    fg = cv2.erode((alpha >= high).view(np.uint8), kernel, borderType=cv2.BORDER_REPLICATE).view(bool)
    some = cv2.dilate((alpha > low).view(np.uint8), kernel).view(bool)
    return fg, some & ~fg


def matting_refine(image, coarse, guided, *, band, low, high, eps, max_band, tol, max_iter, work_size, margin):
    """The ``matting`` method (module docstring). ``guided``: the guided filter's options, for
    the initial guess inside the band and the fall-back.

    Photos longer than ``work_size`` are solved twice: first at a working resolution (long side
    ``work_size``) on the trimap's band, then at full resolution on the pixels that came out
    fractional there, ``margin`` working pixels around them, the working alpha resized as the
    start and its sure pixels as the fixed ones.
    """
    if not (0 <= low < high <= 1 and band >= 0 and eps > 0 and max_iter >= 1 and work_size >= 8 and margin >= 0):
        raise ValueError(f"matting: need 0 <= low < high <= 1, band >= 0, eps > 0, max_iter >= 1, work_size >= 8, "
                         f"margin >= 0; got low={low}, high={high}, band={band}, eps={eps}, max_iter={max_iter}, "
                         f"work_size={work_size}, margin={margin}")
    height, width = image.shape[:2]
    if min(height, width) < 3:  # no 3x3 window fits: nothing to solve
        return guided_refine(image, coarse, **guided)
    scale = min(1.0, work_size / max(height, width))
    small = image if scale == 1.0 else _resize(image, max(1, round(height * scale)), max(1, round(width * scale)))
    fg, unknown = trimap_from_coarse(coarse, *small.shape[:2], band=band, low=low, high=high)
    share = unknown.mean()
    if share > max_band:
        warnings.warn(f"refine 'matting': the unknown band covers {share:.0%} of the photo (more than "
                      f"max_band={max_band:.0%}): the coarse alpha is too uncertain; using 'guided'",
                      RuntimeWarning, stacklevel=3)
        return guided_refine(image, coarse, **guided)
    alpha = fg.astype(np.float32)
    if unknown.any():
        start = guided_refine(small, coarse, **guided)
        alpha[unknown] = _solve_band(small, unknown, fg, start, eps, tol, max_iter)
    if scale == 1.0:
        return alpha
    up = alpha_to_size(alpha, height, width)
    fg, unknown = _trimap(up, max(1, int(np.ceil(margin / scale))), low, high)
    alpha = fg.astype(np.float32)
    if unknown.any():
        alpha[unknown] = _solve_band(image, unknown, fg, up, eps, tol, max_iter)
    return alpha


def _solve_band(image, unknown, fg, start, eps, tol, max_iter, radius=1):
    """Closed-form alpha of the ``unknown`` pixels, the others fixed (fg 1, else 0). Works on
    the band's bounding box grown by the window reach; returns float32 (n_unknown,)."""
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
    neighbours = _neighbour_rows(index, (ys - top).astype(np.int32), (xs - left).astype(np.int32), reach)
    x = start[ys, xs].astype(np.float64)
    _conjugate_gradients(values.reshape(n, -1), neighbours, rhs, x, tol, max_iter)
    return np.clip(x, 0.0, 1.0).astype(np.float32)


@njit(cache=True, nogil=True)
def _neighbour_rows(index, uy, ux, reach):
    """int32 (n, (4r+1)^2): the row of each unknown pixel's neighbour at each offset, -1 for a
    known pixel or one outside the box."""
    span = 2 * reach + 1
    h, w = index.shape
    out = np.full((uy.shape[0], span * span), -1, np.int32)
    for i in range(uy.shape[0]):
        for dy in range(span):
            y = uy[i] + dy - reach
            if 0 <= y < h:
                for dx in range(span):
                    x = ux[i] + dx - reach
                    if 0 <= x < w:
                        out[i, dy * span + dx] = index[y, x]
    return out


@njit(cache=True, nogil=True)
def _matvec(values, neighbours, x, out):
    for i in range(x.shape[0]):
        s = 0.0
        for k in range(values.shape[1]):
            j = neighbours[i, k]
            if j >= 0:
                s += values[i, k] * x[j]
        out[i] = s


@njit(cache=True, nogil=True)
def _dot(a, b):
    s = 0.0  # a loop, not np.dot: BLAS threads on short vectors cost more than they give
    for i in range(a.shape[0]):
        s += a[i] * b[i]
    return s


@njit(cache=True, nogil=True)
def _conjugate_gradients(values, neighbours, rhs, x, tol, max_iter):
    """Jacobi-preconditioned conjugate gradients on the band's system, ``x`` (the initial
    guess) updated in place; stops at ||r|| <= tol ||rhs|| or after max_iter. Returns the
    iterations run."""
    n = x.shape[0]
    centre = values.shape[1] // 2
    inv_diag = 1.0 / values[:, centre]
    r = np.empty(n)
    _matvec(values, neighbours, x, r)
    r = rhs - r
    z = r * inv_diag
    p = z.copy()
    q = np.empty(n)
    rz = _dot(r, z)
    stop = tol * tol * max(_dot(rhs, rhs), 1e-30)
    for iteration in range(max_iter):
        if _dot(r, r) <= stop:
            return iteration
        _matvec(values, neighbours, p, q)
        step = rz / _dot(p, q)
        x += step * p
        r -= step * q
        z = r * inv_diag
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
