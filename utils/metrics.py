"""Alpha-matting errors as the Deep Image Matting (DIM) evaluation defines them.

Every function takes ``pred`` and ``gt``: alpha mattes, float (H,W) in [0,1] (numpy arrays or
CPU tensors; leading singleton axes such as (1,H,W) are dropped), of the same shape. Errors are
taken over the whole image unless a trimap says otherwise. Units and scaling:

==========  ==========================================================  =====================
name        definition                                                  scale
==========  ==========================================================  =====================
``sad``     sum |p - g|                                                 / 1000
``mse``     mean (p - g)^2                                              none
``mad``     mean |p - g|                                                none
``grad``    sum (|grad_s p| - |grad_s g|)^2, DIM's first-derivative-   / 1000
            of-Gaussian filters, sigma 1.4
``conn``    DIM connectivity error, threshold step 0.1, theta 0.15      / 1000
==========  ==========================================================  =====================

Alphas are taken as they are. DIM's ``compute_gradient_loss`` first min-max stretches each
matte (``mat2gray``); that is the identity for a matte spanning 0..1 (every ground truth, nearly
every prediction), and skipping it keeps a matte that does not span 0..1 (all zeros, or peaking
at 0.9) from being rescaled, as the P3M-500 and AIM-500 codes (which divide by 255) do too.
Values more than 1e-3 outside [0,1] (e.g. 0..255 passed by mistake) are an error.

Example
-------
>>> import numpy as np
>>> gt = np.zeros((4, 5), np.float32); gt[:, :2] = 1
>>> m = matting_metrics(gt + 0.1 * (gt == 0), gt)
>>> round(m["sad"], 6), round(m["mad"], 6)
(0.0012, 0.06)
"""
import functools

import cv2
import numpy as np

from utils.arrays import unit_to_uint8

GRAD_SIGMA = 1.4
CONN_STEP = 0.1
CONN_THETA = 0.15
_RANGE_TOLERANCE = 1e-3
METRIC_NAMES = ("sad", "mse", "mad", "grad", "conn")
REGION_METRIC_NAMES = ("sad_unknown", "mse_unknown", "mad_unknown", "sad_fg", "sad_bg")


def _as_alpha(x, what):
    """Array-like alpha -> float64 (H,W) in [0,1]; raises ValueError naming ``what``."""
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    while x.ndim > 2 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 2:
        raise ValueError(f"{what}: expected an alpha matte of shape (H,W), got shape {x.shape}")
    if x.dtype == np.uint8:
        raise ValueError(f"{what}: got uint8 values; pass float alphas in [0,1] (divide by 255)")
    x = x.astype(np.float64)
    if x.size:
        low, high = float(x.min()), float(x.max())
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ValueError(f"{what}: contains NaN or infinite values")
        if low < -_RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE:
            raise ValueError(f"{what}: values must be in [0,1], got min {low:g}, max {high:g}"
                             + (" (0-255 values? divide by 255)" if high > 1.5 else ""))
        np.clip(x, 0.0, 1.0, out=x)
    return x


def _pair(pred, gt):
    p, g = _as_alpha(pred, "pred"), _as_alpha(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt differ in size: pred {p.shape}, gt {g.shape}")
    return p, g


def sad(pred, gt):
    """Sum of absolute differences, / 1000 (so a 1000-pixel error of 1 is 1.0)."""
    p, g = _pair(pred, gt)
    return float(np.abs(p - g).sum() / 1000.0)


def mse(pred, gt):
    """Mean squared error over all pixels, unscaled (alpha units squared)."""
    p, g = _pair(pred, gt)
    return float(np.square(p - g).mean())


def mad(pred, gt):
    """Mean absolute difference over all pixels, unscaled (alpha units)."""
    p, g = _pair(pred, gt)
    return float(np.abs(p - g).mean())


@functools.lru_cache(maxsize=None)
def _gauss_derivative_kernels(sigma):
    """DIM's ``gaussgradient`` kernel, factored: hx(i,j) = g(i) * dg(j) / ||g (x) dg||.

    Half size ceil(sigma * sqrt(-2 log(sqrt(2 pi) sigma eps))) with eps = 0.01 (4 for sigma 1.4,
    a 9 x 9 kernel). Returns (g, dg), 1-D float64, each of unit L2 norm.
    """
    eps = 1e-2
    half = int(np.ceil(sigma * np.sqrt(-2.0 * np.log(np.sqrt(2 * np.pi) * sigma * eps))))
    u = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-u ** 2 / (2 * sigma ** 2)) / (sigma * np.sqrt(2 * np.pi))
    dg = -u * g / sigma ** 2
    return g / np.linalg.norm(g), dg / np.linalg.norm(dg)


def gaussian_gradient_magnitude(alpha, sigma=GRAD_SIGMA):
    """|grad_s alpha|: float64 (H,W), DIM's ``gaussgradient`` (convolution, replicated borders)."""
    g, dg = _gauss_derivative_kernels(float(sigma))
    # cv2 filters correlate; flipping the kernels makes it MATLAB's imfilter(..., 'conv').
    gx = cv2.sepFilter2D(alpha, cv2.CV_64F, dg[::-1].copy(), g[::-1].copy(), borderType=cv2.BORDER_REPLICATE)
    gy = cv2.sepFilter2D(alpha, cv2.CV_64F, g[::-1].copy(), dg[::-1].copy(), borderType=cv2.BORDER_REPLICATE)
    return np.sqrt(gx * gx + gy * gy)


def gradient_error(pred, gt, sigma=GRAD_SIGMA):
    """Gradient error: sum (|grad_s p| - |grad_s g|)^2 / 1000, sigma 1.4 as in DIM."""
    return _gradient_error(*_pair(pred, gt), sigma)


def _gradient_error(p, g, sigma=GRAD_SIGMA):
    diff = gaussian_gradient_magnitude(p, sigma) - gaussian_gradient_magnitude(g, sigma)
    return float(np.square(diff).sum() / 1000.0)


def _largest_component(mask):
    """Bool mask of the largest 4-connected component of ``mask`` (all False if it is empty).

    Ties go to the component met first in column-major order, as MATLAB's ``bwconncomp`` + ``max``.
    """
    if not mask.any():  # also a (0,0) mask, which OpenCV 5's connectedComponents refuses
        return np.zeros_like(mask)
    count, labels = cv2.connectedComponents(mask.view(np.uint8), connectivity=4, ltype=cv2.CV_32S)
    if count < 2:
        return np.zeros_like(mask)
    sizes = np.bincount(labels[mask], minlength=count)
    tied = np.flatnonzero(sizes == sizes.max())
    if len(tied) > 1:
        def first_in_column_order(label):
            rows, cols = np.nonzero(labels == label)
            return int((cols * mask.shape[0] + rows).min())
        tied = [min(tied, key=first_in_column_order)]
    return labels == tied[0]


def connectivity_error(pred, gt, step=CONN_STEP, theta=CONN_THETA):
    """DIM connectivity error, / 1000.

    For thresholds t = step, 2 step, ..., 1, omega_t is the largest 4-connected component of
    (p >= t) & (g >= t); a pixel's level l is the threshold before the first t at which it is
    outside omega_t (1 if it never is). With d = alpha - l, phi = 1 - d * (d >= theta) and the
    error is sum |phi_p - phi_g| / 1000. A threshold with no common pixel leaves every pixel
    still unassigned at t - step (no pixel is connected there), so an all-zero prediction of a
    solid foreground is penalised rather than scored 0. As in MATLAB, ties for the largest
    component go to the first in column-major order and the arithmetic is single precision.
    """
    return _connectivity_error(*_pair(pred, gt), step, theta)


def _connectivity_error(p, g, step=CONN_STEP, theta=CONN_THETA):
    # single precision throughout, as the MATLAB code (single alphas; doubles meeting singles
    # become singles), so that an alpha of 0.9 passes the threshold 0.9
    p, g = p.astype(np.float32), g.astype(np.float32)
    n = int(round(1.0 / step))
    levels = np.zeros(p.shape, np.float32)  # outside the first threshold's mask: l = 0
    mask = (p >= np.float32(1 / n)) & (g >= np.float32(1 / n))
    x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
    box = np.s_[y:y + h, x:x + w]  # every later mask lies inside the first one's bounding box
    p_box, g_box, l_box = p[box], g[box], levels[box]
    l_box[...] = -1
    for k in range(1, n + 1):
        t = np.float32(k / n)
        omega = _largest_component((p_box >= t) & (g_box >= t))
        l_box[(l_box == -1) & ~omega] = np.float32((k - 1) / n)
    l_box[l_box == -1] = 1.0
    phi = []
    for alpha in (p, g):
        d = alpha - levels
        d *= d >= np.float32(theta)
        phi.append(np.subtract(np.float32(1), d, out=d))
    return float(np.abs(phi[0] - phi[1]).sum(dtype=np.float64) / 1000.0)


def matting_metrics(pred, gt):
    """All five whole-image errors -> ``{"sad", "mse", "mad", "grad", "conn"}`` (floats).

    pred, gt: float (H,W) in [0,1], same shape. Scaling as in the module docstring.
    """
    p, g = _pair(pred, gt)
    diff = p - g
    absdiff = np.abs(diff)
    return {"sad": float(absdiff.sum() / 1000.0), "mse": float(np.square(diff).mean()),
            "mad": float(absdiff.mean()), "grad": _gradient_error(p, g), "conn": _connectivity_error(p, g)}


def trimap_regions(trimap):
    """Trimap -> (unknown, fg, bg) bool masks.

    trimap: (H,W) uint8 0/128/255, or float in [0,1] (0/0.5/1). Below a third is background,
    above two thirds foreground, the rest unknown.
    """
    t = np.asarray(trimap)
    while t.ndim > 2 and t.shape[0] == 1:
        t = t[0]
    t = t.astype(np.float32) / 255.0 if t.dtype == np.uint8 else t.astype(np.float32)
    bg, fg = t < 1 / 3, t > 2 / 3
    return ~(bg | fg), fg, bg


def region_metrics(pred, gt, trimap):
    """Errors by trimap region, as P3M-500 reports them.

    ``sad_unknown``, ``mse_unknown``, ``mad_unknown``: inside the unknown band only (the
    prediction taken as the ground truth in the known regions), SAD / 1000, MSE and MAD averaged
    over the unknown pixels (NaN when there are none). ``sad_fg``, ``sad_bg``: SAD / 1000 over
    the trimap's foreground and background. trimap: see ``trimap_regions``; same shape as gt.
    """
    p, g = _pair(pred, gt)
    unknown, fg, bg = trimap_regions(trimap)
    if unknown.shape != g.shape:
        raise ValueError(f"trimap and gt differ in size: trimap {unknown.shape}, gt {g.shape}")
    absdiff = np.abs(p - g)
    n = int(unknown.sum())
    err_u = absdiff[unknown]
    return {"sad_unknown": float(err_u.sum() / 1000.0),
            "mse_unknown": float(np.square(err_u).sum() / n) if n else float("nan"),
            "mad_unknown": float(err_u.sum() / n) if n else float("nan"),
            "sad_fg": float(absdiff[fg].sum() / 1000.0), "sad_bg": float(absdiff[bg].sum() / 1000.0)}


# ---------------------------------------------------------------- video: temporal errors
VIDEO_METRIC_NAMES = ("dtssd", "messddt")
MESSDDT_SCALE = 1000.0  # MESSDdt is reported x 1000 (a mean of squared-error changes is small)
_BAND_KERNEL = 9        # the evaluation band of data_loader.trimap (k = 9), rebuilt here: utils/ sits below it
_BAND_EPS = 0.5 / 255.0


def dtssd_frame(pred, pred_prev, gt, gt_prev) -> float:
    """dtSSD of one frame, as RobustVideoMatting's evaluation computes it:
    ``sqrt(mean(((p_t - p_{t-1}) - (g_t - g_{t-1}))^2)) * 100``. All four float (H,W) in [0,1]."""
    p, g = _pair(pred, gt)
    p0, g0 = _pair(pred_prev, gt_prev)
    if p0.shape != p.shape:
        raise ValueError(f"consecutive frames differ in size: {p0.shape} then {p.shape}")
    return float(np.sqrt(np.square((p - p0) - (g - g0)).mean()) * 100.0)


def dtssd(preds, gts) -> float:
    """Mean dtSSD over a clip: ``dtssd_frame`` for every frame after the first, 0 for the first,
    averaged over all frames (RobustVideoMatting's convention). preds, gts: equal-length
    sequences of float (H,W) alphas in [0,1]."""
    preds, gts = list(preds), list(gts)
    _check_clip(preds, gts)
    _pair(preds[0], gts[0])  # the first frame is checked too (it scores 0)
    values = [0.0] + [dtssd_frame(preds[t], preds[t - 1], gts[t], gts[t - 1]) for t in range(1, len(gts))]
    return float(np.mean(values))


def ground_truth_flow(gt, gt_next) -> np.ndarray:
    """The ground truth's motion from frame t to t+1: Farneback optical flow (OpenCV; pyramid
    scale 0.5, 3 levels, window 15, 3 iterations, poly_n 5, sigma 1.2) between the two alphas
    as 8-bit images. float32 (H,W,2): a pixel p of frame t moves to p + flow[p] (x, y)."""
    a, b = (unit_to_uint8(_as_alpha(x, "gt")) for x in (gt, gt_next))
    return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)


def evaluation_band(gt, kernel_size=_BAND_KERNEL) -> np.ndarray:
    """bool (H,W): the unknown band of a ground truth, as data_loader.trimap.unknown_band with
    k = 9 (every fractional pixel plus 4 px each side, hard edges included)."""
    g = _as_alpha(gt, "gt")
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel_size, kernel_size))
    some = cv2.dilate((g > _BAND_EPS).astype(np.uint8), kernel)
    full = cv2.erode((g >= 1 - _BAND_EPS).astype(np.uint8), kernel, borderType=cv2.BORDER_REPLICATE)
    return some > full


def messddt_pair(pred, gt, pred_next, gt_next, flow=None, band=None, band_next=None) -> float:
    """MESSDdt of the frame pair (t, t+1), as Erofeev et al. (BMVC 2015) define it: the change
    of the squared error along the ground truth's motion, inside the unknown band.

    E_t = (p_t - g_t)^2 on the band of g_t (0 outside); E_{t+1} warped back to frame t along
    ``flow`` (default ``ground_truth_flow(gt, gt_next)``; bilinear, 0 outside the frame):
    ``mean over the band of frame t of |E_t(x) - E_{t+1}(x + flow(x))|``, x ``MESSDDT_SCALE``.
    band, band_next: bool (H,W) masks (default ``evaluation_band`` of each ground truth). A
    frame with an empty band scores 0.
    """
    p, g = _pair(pred, gt)
    p1, g1 = _pair(pred_next, gt_next)
    if p1.shape != p.shape:
        raise ValueError(f"consecutive frames differ in size: {p.shape} then {p1.shape}")
    band = evaluation_band(g) if band is None else np.asarray(band, bool)
    band_next = evaluation_band(g1) if band_next is None else np.asarray(band_next, bool)
    count = int(band.sum())
    if count == 0:
        return 0.0
    flow = ground_truth_flow(g, g1) if flow is None else np.asarray(flow, np.float32)
    if flow.shape != p.shape + (2,):
        raise ValueError(f"flow must be (H,W,2) = {p.shape + (2,)}, got {flow.shape}")
    error, error_next = np.square(p - g) * band, np.square(p1 - g1) * band_next
    h, w = p.shape
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    warped = cv2.remap(error_next.astype(np.float32), xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return float(np.abs(error - warped)[band].sum() / count * MESSDDT_SCALE)


def messddt(preds, gts, flows=None) -> float:
    """Mean MESSDdt over a clip's T - 1 frame pairs (0 for a one-frame clip). flows: None (the
    ground truth's Farneback flow) or T - 1 arrays (H,W,2)."""
    preds, gts = list(preds), list(gts)
    _check_clip(preds, gts)
    if flows is not None and len(flows) != len(gts) - 1:
        raise ValueError(f"flows: expected {len(gts) - 1} (one per frame pair), got {len(flows)}")
    values = [messddt_pair(preds[t], gts[t], preds[t + 1], gts[t + 1], None if flows is None else flows[t])
              for t in range(len(gts) - 1)]
    return float(np.mean(values)) if values else 0.0


def _check_clip(preds, gts):
    if len(preds) != len(gts):
        raise ValueError(f"the prediction has {len(preds)} frames, the ground truth {len(gts)}")
    if not gts:
        raise ValueError("a clip needs at least one frame")
