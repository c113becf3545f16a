"""The temporal stabilisers (utils/inference/temporal.py) on tiny synthetic sequences: the
``flow`` window averages i.i.d. flicker away by the expected factor, follows a moving edge
without dragging it, drops a past frame the flow cannot place (a cut), and says what it returns."""
import cv2
import numpy as np
import pytest

from utils.inference.temporal import (DEFAULT_TEMPORAL, Stabiliser, fit_long_side, flow_to_grid,
                                      foreground_flow, foreground_weights, make_stabiliser, warp)

H, W = 72, 96


def textured(rng, h=H, w=W + 40):
    """A smooth random texture, uint8 RGB (h,w,3): something for the optical flow to follow."""
    noise = rng.random((h // 4, w // 4, 3)).astype(np.float32)
    return (cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1) * 200 + 30).astype(np.uint8)


def disc(cx, cy, h=H, w=W, radius=18.0):
    """A soft disc's alpha, float32 (h,w): a 3 px ramp at its edge."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.clip((radius - np.hypot(xx - cx, yy - cy)) / 3 + 0.5, 0, 1).astype(np.float32)


def flicker(outs):
    """Mean over frames of the RMS frame-to-frame change."""
    return float(np.mean([np.sqrt(np.mean(np.square(b - a))) for a, b in zip(outs[:-1], outs[1:])]))


def test_the_default_is_flow_and_none_is_no_stabiliser():
    assert DEFAULT_TEMPORAL == "flow"
    assert make_stabiliser("none") is None
    assert make_stabiliser("flow").method == "flow"


def test_flow_window_cuts_still_iid_flicker_by_the_window():
    # A still scene, its alpha with i.i.d. noise each frame: the 3-frame average's change from
    # frame to frame is (n_t - n_{t-3}) / 3, a third of the per-frame change (n_t - n_{t-1}).
    rng = np.random.default_rng(0)
    image = textured(rng)[:, :W]
    truth = disc(48, 36)
    coarses = [np.clip(truth + rng.normal(0, 0.03, truth.shape), 0, 1).astype(np.float32) for _ in range(30)]
    stabiliser = make_stabiliser("flow", window=3)
    outs = [stabiliser(None, image, c) for c in coarses]
    assert outs[0].shape == (H, W) and outs[0].dtype == np.float32
    ratio = flicker(outs[3:]) / flicker(coarses[3:])
    assert 0.28 < ratio < 0.40, ratio
    # no bias (the time average is the inputs' one: the clipped noise's own bias is the inputs'),
    # and each frame's noise falls by about 1/sqrt(3) (its spread over time at each pixel)
    assert np.abs(np.mean(outs[3:], axis=0) - np.mean(coarses[3:], axis=0)).mean() < 0.003
    spread = np.std(outs[3:], axis=0).mean() / np.std(coarses[3:], axis=0).mean()
    assert 0.5 < spread < 0.66, spread
    window5 = make_stabiliser("flow", window=5)
    outs5 = [window5(None, image, c) for c in coarses]
    assert flicker(outs5[5:]) / flicker(coarses[5:]) < 0.25  # 1/5 expected


@pytest.mark.parametrize("background_speed", [0, -2])  # a still camera; one panning against the motion
def test_flow_follows_a_moving_edge_without_dragging_it(background_speed):
    # A textured disc moves 3 px a frame over a textured background (still, or moving the other
    # way: the flow at the disc's edge mixes the two motions): the stabilised alpha is as close
    # to the truth as the per-frame one (MAD within 1.05x, the benchmark's bound), and its centre
    # is not behind the per-frame alpha's (a dragged edge trails by about a frame's motion).
    rng = np.random.default_rng(1)
    h, w = 144, 192
    background, foreground = textured(rng, h, w + 100), textured(rng, h, w + 100)
    stabiliser = make_stabiliser("flow")
    xs = np.arange(w, dtype=np.float32)
    centre = lambda a: (a.sum(0) @ xs) / a.sum()  # noqa: E731
    errors_out, errors_in, lags = [], [], []
    for i in range(14):
        truth = disc(64 + 3 * i, 72, h, w, radius=36)
        fg = np.roll(foreground, 3 * i, axis=1)[:, :w]
        bg = background[:, 50 + background_speed * i:50 + background_speed * i + w]
        image = (truth[..., None] * fg + (1 - truth[..., None]) * bg).astype(np.uint8)
        coarse = np.clip(truth + rng.normal(0, 0.03, truth.shape), 0, 1).astype(np.float32)
        out = stabiliser(None, image, coarse)
        if i >= 3:
            errors_out.append(np.abs(out - truth).mean())
            errors_in.append(np.abs(coarse - truth).mean())
            lags.append(centre(out) - centre(coarse))
    assert np.mean(errors_out) <= 1.05 * np.mean(errors_in), (np.mean(errors_out), np.mean(errors_in))
    assert abs(np.mean(lags)) < 0.25, lags  # px


def test_flow_drops_a_past_frame_it_cannot_place():
    # A cut: the next shot's picture and alpha have nothing to do with the last. Where the
    # past alphas, wherever the flow puts them, disagree with the new one by ~1 (the old
    # disc against the new background), their weight is exp(-(1 / 0.25)^2) ~ 1e-7: the output
    # is the new alpha; elsewhere only values that agree with it are averaged in.
    rng = np.random.default_rng(2)
    stabiliser = make_stabiliser("flow")
    image = textured(rng)[:, :W]
    old = disc(30, 36)
    for _ in range(3):
        stabiliser(None, image, old)
    new = disc(70, 30, radius=12)
    out = stabiliser(None, textured(rng)[:, :W], new)
    assert np.abs(out - new)[np.abs(old - new) > 0.9].max() < 1e-3
    assert np.abs(out - new).mean() < 0.003


def test_flow_works_on_its_grid_and_restarts_when_the_size_changes():
    rng = np.random.default_rng(3)
    stabiliser = make_stabiliser("flow", grid=48, flow_size=64)
    big = cv2.resize(textured(rng), (192, 108))
    out = stabiliser(None, big, np.full((32, 32), 0.5, np.float32))
    assert out.shape == fit_long_side(108, 192, 48) == (27, 48)
    assert np.allclose(out, 0.5)
    assert len(stabiliser.past) == 1 and stabiliser.past[0].gray.shape == (36, 64)
    small = textured(rng)[:40, :40]
    out = stabiliser(None, small, np.ones((32, 32), np.float32))  # another size: the past is dropped
    assert out.shape == (40, 40) and np.allclose(out, 1) and len(stabiliser.past) == 1


def test_warp_and_flow_to_grid_move_by_the_flow():
    x = np.zeros((10, 20), np.float32)
    x[:, 10:] = 1
    flow = np.zeros((10, 20, 2), np.float32)
    flow[..., 0] = 2  # sample 2 px to the right: the edge moves 2 px left
    assert np.array_equal(warp(x, flow)[:, 8:], np.ones((10, 12), np.float32))
    assert warp(x, flow)[:, 7].max() == 0
    grid = flow_to_grid(np.dstack([np.full((20, 40), 4, np.float32), np.full((20, 40), 2, np.float32)]), (10, 10))
    assert grid.shape == (10, 10, 2) and np.allclose(grid[..., 0], 1) and np.allclose(grid[..., 1], 1)


def test_foreground_flow_spreads_the_foregrounds_own_motion_over_its_band():
    # The flow is +4 px inside a disc and -2 outside: near the disc's edge (its band, within
    # the spread) the foreground's +4 replaces the mixed flow; far away the background's stays.
    alpha = disc(48, 36, radius=16)
    flow = np.zeros((H, W, 2), np.float32)
    flow[..., 0] = np.where(alpha > 0.5, 4, -2)
    for sigma in (2.0, 6.0, 9.6):  # cells of 1, 2 and 3 px
        out = foreground_flow(flow, foreground_weights(alpha, sigma))
        assert out.shape == flow.shape and out.dtype == np.float32
        band = (alpha > 0.01) & (alpha < 0.99)
        assert np.allclose(out[band][:, 0], 4, atol=0.05), (sigma, out[band][:, 0].min())
        assert np.allclose(out[0, 0], [-2, 0]) and np.allclose(out[..., 1], 0, atol=1e-4)


@pytest.mark.parametrize("options, message", [({"window": 0}, "window"), ({"window": 2.5}, "window"),
                                              ({"grid": 4}, "grid"), ({"alpha_tau": 0}, "alpha_tau")])
def test_flow_refuses_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        Stabiliser("flow", **options)
