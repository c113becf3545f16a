"""dtSSD and MESSDdt (utils/metrics.py) against values worked out by hand on tiny clips."""
import numpy as np
import pytest

from utils.metrics import MESSDDT_SCALE, dtssd, dtssd_frame, evaluation_band, ground_truth_flow, messddt, messddt_pair


def a(*rows):
    return np.array(rows, np.float64)


def test_dtssd_by_hand():
    g = [a([0.0, 0.0]), a([0.0, 0.0])]
    p = [a([0.0, 0.0]), a([0.1, 0.3])]
    # frame 1: changes 0.1, 0.3 against none: sqrt((0.01 + 0.09) / 2) * 100 = 22.3607; frame 0: 0
    assert dtssd_frame(p[1], p[0], g[1], g[0]) == pytest.approx(np.sqrt(0.05) * 100)
    assert dtssd(p, g) == pytest.approx(np.sqrt(0.05) * 100 / 2)


def test_dtssd_counts_change_not_error():
    g = [a([0.0, 1.0, 0.5]), a([1.0, 0.0, 0.5]), a([0.5, 0.5, 0.5])]
    assert dtssd(g, g) == 0.0
    wrong_but_steady = [a([0.3, 0.3, 0.3])] * 3  # a large error that does not change ...
    # ... still scores the truth's change it missed: frame 1 sqrt((1 + 1 + 0) / 3), frame 2 sqrt(0.5)
    expected = (0 + np.sqrt(2 / 3) + np.sqrt((0.25 + 0.25 + 0) / 3)) / 3 * 100
    assert dtssd(wrong_but_steady, g) == pytest.approx(expected)
    assert dtssd([a([0.2])], [a([0.7])]) == 0.0  # one frame


def test_messddt_pair_by_hand_no_motion():
    g0, g1 = a([0.5, 0.0, 0.0]), a([0.5, 0.0, 0.0])
    p0, p1 = a([0.5, 0.2, 0.0]), a([0.5, 0.5, 0.0])
    band = np.ones((1, 3), bool)
    zero = np.zeros((1, 3, 2), np.float32)
    # E0 = (0, 0.04, 0), E1 = (0, 0.25, 0): mean |E0 - E1| over 3 band pixels = 0.07
    assert messddt_pair(p0, g0, p1, g1, flow=zero, band=band, band_next=band) == pytest.approx(0.07 * MESSDDT_SCALE)
    half = np.array([[True, True, False]])  # the band's mean is over frame t's band only
    assert messddt_pair(p0, g0, p1, g1, flow=zero, band=half, band_next=band) == pytest.approx(0.21 / 2 * MESSDDT_SCALE)
    assert messddt_pair(p0, g0, p1, g1, flow=zero, band=np.zeros((1, 3), bool)) == 0.0


def test_messddt_follows_the_motion():
    # the truth and its error move one pixel right per frame: along the flow nothing changes
    g0, g1 = a([0.0, 0.5, 1.0, 1.0, 1.0]), a([0.0, 0.0, 0.5, 1.0, 1.0])
    p0, p1 = a([0.0, 0.8, 1.0, 1.0, 1.0]), a([0.0, 0.0, 0.8, 1.0, 1.0])
    band = np.ones((1, 5), bool)
    right = np.zeros((1, 5, 2), np.float32)
    right[..., 0] = 1
    assert messddt_pair(p0, g0, p1, g1, flow=right, band=band, band_next=band) == pytest.approx(0.0, abs=1e-4)
    # without the motion the error seems to jump: |0.09 - 0| at x=1 and |0 - 0.09| at x=2, / 5
    still = np.zeros_like(right)
    assert messddt_pair(p0, g0, p1, g1, flow=still, band=band, band_next=band) == pytest.approx(0.18 / 5 * MESSDDT_SCALE)
    assert messddt([p0, p1], [g0, g1], flows=[right]) == pytest.approx(0.0, abs=1e-4)
    assert messddt([p0], [g0]) == 0.0


def test_ground_truth_flow_finds_a_moving_disc_and_messddt_uses_it():
    yy, xx = np.mgrid[0:48, 0:64].astype(np.float64)

    def disc(cx):
        return np.clip((12 - np.hypot(xx - cx, yy - 24)) / 4, 0, 1)  # a 4 px soft edge

    g0, g1 = disc(28), disc(30)
    flow = ground_truth_flow(g0, g1)
    edge = (g0 > 0.05) & (g0 < 0.95)
    assert np.median(flow[..., 0][edge]) == pytest.approx(2.0, abs=0.5)
    assert np.abs(np.median(flow[..., 1][edge])) < 0.5
    # an error that rides on the edge: small along the flow, large without it
    p0, p1 = np.clip(g0 + 0.3 * edge, 0, 1), np.clip(g1 + 0.3 * ((g1 > 0.05) & (g1 < 0.95)), 0, 1)
    along = messddt_pair(p0, g0, p1, g1)
    still = messddt_pair(p0, g0, p1, g1, flow=np.zeros_like(flow))
    assert along < 0.5 * still
    assert evaluation_band(g0)[edge].all()


def test_bad_clips_are_named():
    with pytest.raises(ValueError, match="2 frames, the ground truth 1"):
        dtssd([a([0.0]), a([0.0])], [a([0.0])])
    with pytest.raises(ValueError, match="at least one frame"):
        messddt([], [])
    with pytest.raises(ValueError, match="differ in size"):
        dtssd([a([0.0]), a([0.0, 0.0])], [a([0.0]), a([0.0, 0.0])])
    with pytest.raises(ValueError, match="uint8"):
        dtssd([np.zeros((2, 2), np.uint8)], [np.zeros((2, 2))])
