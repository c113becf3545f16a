"""Matting metrics: hand-made cases with known values, and DIM-style reference implementations."""
import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.measure import label

from utils.metrics import (_gauss_derivative_kernels, connectivity_error, gradient_error, mad, matting_metrics,
                           mse, region_metrics, sad, trimap_regions)


def smooth_matte(rng, h=40, w=56):
    """A blurry blob matte in [0,1] with solid 0 and 1 regions."""
    yy, xx = np.mgrid[:h, :w]
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    return np.clip(1.5 - np.hypot(yy - cy, xx - cx) / (0.25 * min(h, w)), 0, 1).astype(np.float32)


# ---- references, written from the DIM MATLAB code as directly as possible ------------------------
def dim_gaussgradient(im, sigma=1.4):
    """gaussgradient.m: a 2-D kernel built by the double loop, imfilter(..., 'replicate', 'conv')."""
    eps = 1e-2
    half = int(np.ceil(sigma * np.sqrt(-2 * np.log(np.sqrt(2 * np.pi) * sigma * eps))))
    size = 2 * half + 1
    gauss = lambda x: np.exp(-x ** 2 / (2 * sigma ** 2)) / (sigma * np.sqrt(2 * np.pi))  # noqa: E731
    hx = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            hx[i, j] = gauss(i - half) * (-(j - half) * gauss(j - half) / sigma ** 2)
    hx /= np.sqrt((hx ** 2).sum())
    return (ndimage.convolve(im, hx, mode="nearest"), ndimage.convolve(im, hx.T, mode="nearest"))


def dim_gradient_error(pred, gt):
    px, py = dim_gaussgradient(pred.astype(np.float64))
    gx, gy = dim_gaussgradient(gt.astype(np.float64))
    return ((np.hypot(px, py) - np.hypot(gx, gy)) ** 2).sum() / 1000


def dim_connectivity_error(pred, gt, step=0.1):
    """compute_connectivity_error.m, component by component, ties to the first in column-major order;
    single precision as in MATLAB (single alphas, doubles meeting them become singles)."""
    pred, gt = pred.astype(np.float32), gt.astype(np.float32)
    steps = (np.arange(11) / 10).astype(np.float32)
    l_map = -np.ones_like(pred)
    for ii in range(1, len(steps)):
        labels = label((pred >= steps[ii]) & (gt >= steps[ii]), connectivity=1)
        omega = np.zeros(pred.shape, bool)
        if labels.max() > 0:
            sizes = [(labels == k).sum() for k in range(1, labels.max() + 1)]
            tied = [k + 1 for k, s in enumerate(sizes) if s == max(sizes)]
            first = {k: np.flatnonzero((labels == k).T.ravel())[0] for k in tied}
            omega = labels == min(tied, key=first.get)
        l_map[(l_map == -1) & ~omega] = steps[ii - 1]
    l_map[l_map == -1] = 1
    pd, gd = pred - l_map, gt - l_map
    theta = np.float32(0.15)
    return np.abs((1 - pd * (pd >= theta)) - (1 - gd * (gd >= theta))).astype(np.float64).sum() / 1000


# ---- whole-image errors -------------------------------------------------------------------------
def test_identical_mattes_score_zero():
    gt = smooth_matte(np.random.default_rng(0))
    assert matting_metrics(gt, gt.copy()) == {"sad": 0.0, "mse": 0.0, "mad": 0.0, "grad": 0.0, "conn": 0.0}


def test_constant_offset_by_hand():
    gt = np.random.default_rng(1).uniform(0, 0.75, (30, 20)).astype(np.float32)
    pred = gt + np.float32(0.25)
    assert sad(pred, gt) == pytest.approx(0.25 * 600 / 1000, rel=1e-6)
    assert mse(pred, gt) == pytest.approx(0.0625, rel=1e-5)
    assert mad(pred, gt) == pytest.approx(0.25, rel=1e-5)
    assert gradient_error(pred, gt) == pytest.approx(0.0, abs=1e-9)  # a constant shift has the same gradient


def test_step_edge_against_blurred_edge_has_positive_grad():
    step = np.zeros((32, 32), np.float32)
    step[:, 16:] = 1
    blurred = ndimage.gaussian_filter(step, 3)
    assert gradient_error(step, step) == 0.0
    assert gradient_error(blurred, step) > 0.01
    assert gradient_error(blurred, step) == pytest.approx(gradient_error(step, blurred))


def test_gradient_kernel_follows_the_dim_size_rule():
    g, dg = _gauss_derivative_kernels(1.4)
    assert len(g) == len(dg) == 9  # half size ceil(1.4 * sqrt(-2 log(sqrt(2 pi) 1.4 0.01))) = 4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grad_and_conn_match_the_dim_reference(seed):
    rng = np.random.default_rng(seed)
    gt = smooth_matte(rng)
    pred = np.clip(gt + rng.normal(0, 0.15, gt.shape) * (rng.uniform(size=gt.shape) < 0.3), 0, 1)
    pred = (np.round(pred * 255) / 255).astype(np.float32)
    assert gradient_error(pred, gt) == pytest.approx(dim_gradient_error(pred, gt), rel=1e-9)
    assert connectivity_error(pred, gt) == pytest.approx(dim_connectivity_error(pred, gt), rel=1e-9)
    assert connectivity_error(pred, gt) > 0


# ---- connectivity by hand -------------------------------------------------------------------------
def two_blocks():
    gt = np.zeros((7, 10), np.float32)
    gt[1:4, 1:3] = 1   # A: 6 px, the largest component
    gt[1:3, 5:7] = 1   # B: 4 px
    return gt


def test_conn_penalises_the_smaller_component():
    gt = two_blocks()
    pred = gt.copy()
    pred[1:3, 5:7] = 0.9
    # B lies outside the largest component from t = 0.1: l = 0, phi_p = 1 - 0.9, phi_g = 1 - 1
    assert connectivity_error(pred, gt) == pytest.approx(4 * 0.1 / 1000)
    bridged_gt, bridged_pred = gt.copy(), pred.copy()
    bridged_gt[1, 3:5] = bridged_pred[1, 3:5] = 1  # B joins A: in omega up to t = 0.9, l = 0.9, no error
    assert connectivity_error(bridged_pred, bridged_gt) == pytest.approx(0.0)


def test_conn_largest_component_switches():
    gt = two_blocks()
    pred = gt.copy()
    pred[1:4, 1:3] = 0.5  # A drops out at t = 0.6, where B becomes the largest: l = 0.5 on A
    assert connectivity_error(pred, gt) == pytest.approx(6 * 0.5 / 1000)


def test_conn_uses_4_connectivity():
    gt = np.zeros((7, 7), np.float32)
    gt[1:4, 1:3] = 1  # A, 6 px
    gt[4:6, 3:5] = 1  # B, 4 px, touching A's corner diagonally only
    pred = gt.copy()
    pred[4:6, 3:5] = 0.9
    assert connectivity_error(pred, gt) == pytest.approx(4 * 0.1 / 1000)


def test_conn_breaks_ties_in_matlab_column_order():
    gt = np.zeros((6, 6), np.float32)
    gt[0:2, 3:5] = 1  # A, 4 px: first in row-major order
    gt[3:5, 0:2] = 1  # B, 4 px: first in column-major order (MATLAB's), so B wins the tie
    pred = gt.copy()
    pred[0:2, 3:5], pred[3:5, 0:2] = 0.9, 0.7
    # A: outside omega from t = 0.1 (l = 0): 4 * |0.1 - 0|; B: omega up to 0.7 (l = 0.7): 4 * |1 - 0.7|
    assert connectivity_error(pred, gt) == pytest.approx((4 * 0.1 + 4 * 0.3) / 1000, rel=1e-6)
    # transposed, A comes first in column order and wins: B gets l = 0 (4 * 0.3), A l = 0.9 (no error)
    assert connectivity_error(pred.T, gt.T) == pytest.approx(4 * 0.3 / 1000, rel=1e-6)


def test_conn_of_an_empty_prediction_is_penalised():
    gt = np.ones((10, 10), np.float32)
    assert connectivity_error(np.zeros_like(gt), gt) == pytest.approx(100 / 1000)


def test_conn_without_any_common_pixel_works_on_every_opencv():
    # the first threshold's bounding box is then (0,0); OpenCV 5 refuses an empty image
    from utils.metrics import _largest_component
    assert _largest_component(np.zeros((0, 0), bool)).shape == (0, 0)
    assert not _largest_component(np.zeros((3, 4), bool)).any()
    zeros = np.zeros((6, 7), np.float32)
    assert connectivity_error(zeros, zeros) == 0.0
    half = zeros.copy()
    half[:, :3] = 1
    assert connectivity_error(zeros, half) == pytest.approx(18 / 1000)


# ---- regions, inputs --------------------------------------------------------------------------------
def test_region_metrics_by_hand():
    gt = np.zeros((4, 6), np.float32)
    gt[:, 3:] = 1
    trimap = np.where(gt > 0, 255, 0).astype(np.uint8)
    trimap[:, 2:4] = 128  # 8 unknown px
    pred = gt.copy()
    pred[:, 2] = 0.5      # error 0.5 on 4 unknown px
    pred[0, 0] = 0.2      # error 0.2 on 1 background px
    pred[:, 5] = 0.9      # error 0.1 on 4 foreground px
    r = region_metrics(pred, gt, trimap)
    assert r["sad_unknown"] == pytest.approx(2.0 / 1000)
    assert r["mse_unknown"] == pytest.approx(4 * 0.25 / 8)
    assert r["mad_unknown"] == pytest.approx(2.0 / 8)
    assert r["sad_bg"] == pytest.approx(0.2 / 1000, rel=1e-6)
    assert r["sad_fg"] == pytest.approx(0.4 / 1000, rel=1e-6)
    float_trimap = trimap.astype(np.float32) / 255
    assert [m.sum() for m in trimap_regions(float_trimap)] == [8, 8, 8]
    assert np.isnan(region_metrics(gt, gt, np.zeros_like(trimap))["mse_unknown"])


def test_inputs_tensors_and_leading_axes():
    gt = smooth_matte(np.random.default_rng(3))
    expected = matting_metrics(gt * 0.9, gt)
    assert matting_metrics(torch.from_numpy(gt * 0.9)[None], torch.from_numpy(gt)[None, None]) == expected


@pytest.mark.parametrize("pred, words", [
    (np.zeros((5, 4), np.float32), "differ in size"),
    (np.full((4, 5), 255.0, np.float32), "divide by 255"),
    (np.zeros((4, 5), np.uint8), "uint8"),
    (np.full((4, 5), np.nan, np.float32), "NaN"),
    (np.zeros((2, 4, 5), np.float32), "shape"),
])
def test_bad_inputs_name_the_problem(pred, words):
    with pytest.raises(ValueError, match=words):
        matting_metrics(pred, np.zeros((4, 5), np.float32))
