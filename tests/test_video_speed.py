"""The video path's CPU lanes (utils/inference/video.py ``frame_results``): several frames in
the network at once, single-threaded calls, must give exactly the core's values, in order, with
the stabiliser run in frame order; a frame's refinement failure is that frame's, a network
failure ends the clip, and PyTorch's thread count is restored. Frames of 64x48, made here."""
import types

import numpy as np
import pytest
import torch

from model import build_model
from utils.inference.core import Matter, MatteOptions, ModelOutputError, refine_options
from utils.inference.temporal import make_stabiliser
from utils.inference.video import Frame, cpu_lanes, frame_results


def moving_frames(n=7, w=64, h=48):
    """A bright disc moving over a gradient, as ``Frame``s (uint8 RGB (h,w,3))."""
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        disc = np.hypot(xx - (w / 3 + i * 3), yy - h / 2) < h / 4
        base = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), np.full((h, w), 90)], 2)
        yield Frame(i, 100 * i, np.where(disc[..., None], 230, base).astype(np.uint8))


@pytest.fixture(scope="module")
def matter():
    torch.manual_seed(0)
    return Matter(build_model("u2netp"), MatteOptions(size=64, refine=refine_options("guided")))


@pytest.fixture
def threads():
    """Two PyTorch threads during the test (two lanes), the setting restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield 2
    torch.set_num_threads(before)


def reference(matter, frames):
    """The core's own stream on one thread: the values the lanes must reproduce."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [done.alpha for done in matter.stream(frames, lambda f: f.image, make_stabiliser("flow"))]
    finally:
        torch.set_num_threads(before)


def test_lanes_give_the_core_streams_alphas_in_order(matter, threads):
    import cv2

    expected = reference(matter, list(moving_frames()))
    assert cpu_lanes(matter) == 2
    cv_threads = cv2.getNumThreads()
    done = list(frame_results(matter, moving_frames(), make_stabiliser("flow")))
    assert cv2.getNumThreads() == cv_threads  # OpenCV's threads restored too
    assert [d.item.index for d in done] == list(range(7))
    assert all(d.error is None for d in done)
    for got, want in zip((d.alpha for d in done), expected):
        assert got.shape == (48, 64) and got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
    assert torch.get_num_threads() == 2  # restored after the clip
    # the stabiliser changed something (else order would not matter): per-frame differs
    per_frame = list(frame_results(matter, moving_frames(), None))
    assert max(np.abs(a.alpha - b).max() for a, b in zip(per_frame, expected)) > 1e-4


def test_a_refinement_failure_is_that_frames_a_network_failure_ends_the_clip(matter, threads, monkeypatch):
    real_full = matter.full
    broken = list(moving_frames())[3].image

    def full(image, coarse):
        if np.array_equal(image, broken):
            raise ValueError("broken refinement")
        return real_full(image, coarse)

    monkeypatch.setattr(matter, "full", full)
    done = list(frame_results(matter, moving_frames(), make_stabiliser("flow")))
    assert [d.item.index for d in done] == list(range(7))
    assert [d.error for d in done] == [None] * 3 + ["broken refinement"] + [None] * 3
    assert sum(d.alpha is not None for d in done) == 6
    monkeypatch.undo()

    real_network = matter.network
    calls = []

    def network(x):
        calls.append(1)
        if len(calls) == 3:
            raise ModelOutputError("the model's output has NaN values")
        return real_network(x)

    monkeypatch.setattr(matter, "network", network)
    given = []
    with pytest.raises(ModelOutputError, match="NaN"):
        for d in frame_results(matter, moving_frames(), make_stabiliser("flow")):
            given.append(d.item.index)
    assert given == list(range(len(given))) and len(given) <= 2  # frames before the failure, in order
    assert torch.get_num_threads() == 2


def test_lanes_only_for_pytorch_on_a_cpu(matter, threads):
    assert cpu_lanes(types.SimpleNamespace(runtime="onnxruntime", device="cpu")) == 1
    assert cpu_lanes(types.SimpleNamespace(runtime="pytorch", device="cuda:0")) == 1
    torch.set_num_threads(1)
    assert cpu_lanes(matter) == 1  # one thread: the core's stream itself


@pytest.mark.parametrize("whole", [True, False])  # the coefficients resized whole (up to 4 MP), or in strips
def test_guided_refinement_applies_its_coefficients_as_the_plain_formula(whole, monkeypatch):
    """``guided_refine``'s full-size step (sped up for 720p video, shared with photos) gives
    q = a . I + b with the coefficients bilinearly upsampled (half-pixel centres), within
    1e-5, so the 8-bit alphas are the same to 1/255; both paths, odd sizes, 3 strips."""
    import cv2

    from utils.inference import refine

    monkeypatch.setattr(refine, "GUIDED_WHOLE_PIXELS", 1 << 22 if whole else 0)
    rng = np.random.default_rng(3)
    height, width = 301, 517
    image = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 2)
    coarse = cv2.GaussianBlur((rng.random((40, 40)) > 0.5).astype(np.float32), (0, 0), 2)
    options = dict(work_size=128, radius=3, eps=1e-3)
    got = refine.guided_refine(image, coarse, **options, rows=100)
    # the plain formula: the working grid's coefficients, each plane upsampled by numpy's own
    # bilinear interpolation, then the per-pixel dot product
    scale = 128 / width
    h, w = round(height * scale), round(width * scale)
    guide = refine._resize(image, h, w).astype(np.float32) / 255
    coef = refine._guided_coefficients(guide, refine.alpha_to_size(coarse, h, w), 3, 1e-3).astype(np.float64)

    def axis(n_out, n_in):
        x = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(x).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), x - lo

    y0, y1, wy = axis(height, h)
    x0, x1, wx = axis(width, w)
    rows = coef[y0] * (1 - wy)[:, None, None] + coef[y1] * wy[:, None, None]
    full = rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]
    want = np.clip((full[..., :3] * (image / 255.0)).sum(2) + full[..., 3], 0, 1)
    assert got.shape == (height, width) and got.dtype == np.float32
    assert np.abs(got - want).max() < 1e-5
    assert 0.05 < want.std()  # not a constant alpha: the check can fail
