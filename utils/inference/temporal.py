"""Temporal stabilisation of a video's coarse alphas: per-frame mattes of one network flicker.

A stabiliser is the core's ``adjust`` hook (``Matter.stream(..., adjust=stabiliser)``): called
once per frame, in order, with the frame (uint8 RGB (H,W,3)) and the network's alpha (float32
(h,w) in [0,1] at the network's size), it returns the alpha to refine (float32 in [0,1]; the
network's size for ``ema``, the stabiliser's working grid for ``flow``: refinement takes any
size). It only looks back (no frame is held back: the stream's order and latency are as per
frame). Its state (the previous frames it needs) is a value it keeps between calls
(``state``), so one stabiliser serves one clip.

Methods (``TEMPORAL_METHODS``; benchmarks/video.py measures them, documents/video.md has the
table):

- ``none``: per frame, the network's alpha as it is.
- ``ema``: motion-gated exponential moving average. ``out = w * prev + (1 - w) * coarse`` with
  ``w = strength * exp(-(dI / image_tau)^2) * exp(-(dA / alpha_tau)^2)``: dI the frame's
  change at the pixel (gray, at the network's size), dA the alpha's. Where the picture moves
  the weight falls to 0, so a moving edge is never dragged behind; where it is still, the
  flicker is averaged away. No optical flow: the cheapest.
- ``flow`` (the default): a window of the last ``window`` network alphas, each resized to a
  working grid (the frame's aspect, long side ``grid`` px: the guided refinement's working
  size, finer than the network's squashed 320x320) and warped to the current frame along the
  optical flow between the frames (OpenCV DIS, medium preset, on the gray frames at long side
  ``flow_size``, 384 px), computed from the current frame to each past one directly (chained
  flows, one a frame composed over the window, were cheaper but misplaced more: measured in
  documents/video.md, removed). In the edge band the flow is replaced by the foreground's own (``foreground_flow``):
  the alpha moves with the person, while the flow at the person's edge mixes their motion with
  the background's and drags the edge. Averaged with the weights ``exp(-(dA / alpha_tau)^2)``
  (dA the warped alpha's difference from the current one, the current weighing 1): where the
  flow still misplaces an edge the past frame drops out there; a past frame whose warped
  picture does not match the current one (mean difference above ``cut``: a cut, a failed
  flow) is left out altogether. A plain (not recursive) average
  of alphas that are each resampled once: a recursive blend resamples its own output every
  frame and blurs the edge a little more each time (measured: documents/video.md).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from .preprocess import alpha_to_size

TEMPORAL_METHODS = ("none", "ema", "flow")
DEFAULT_TEMPORAL = "flow"


@dataclass
class TemporalState:
    """What ``ema`` carries from one frame to the next: the small gray frame (float32 (h,w) in
    [0,1]) and the alpha it gave (float32 (h,w) in [0,1])."""
    gray: np.ndarray
    alpha: np.ndarray


@dataclass
class PastFrame:
    """One frame of ``flow``'s window: its gray frame at the flow's size (uint8 (fh,fw)) and its
    network alpha on the working grid (float32 (gh,gw) in [0,1])."""
    gray: np.ndarray
    alpha: np.ndarray


def small_gray(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """uint8 RGB (H,W,3) -> float32 gray (h,w) in [0,1] at ``shape`` (area-averaged: the
    sensor noise averages out too)."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    h, w = shape
    if gray.shape != (h, w):
        gray = cv2.resize(gray, (w, h), interpolation=cv2.INTER_AREA)
    return gray.astype(np.float32) / 255.0


def fit_long_side(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) of a (height, width) frame shrunk to ``long_side`` px on its long side (never
    enlarged), aspect kept, at least 1 px."""
    scale = min(1.0, long_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def warp(x: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``x`` (h,w) float32 sampled at ``pixel + flow`` (flow float32 (h,w,2), x then y, in
    pixels of x): bilinear, the border replicated."""
    xs, ys = _pixel_grid(*flow.shape[:2])
    return cv2.remap(x, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


@lru_cache(maxsize=4)
def _pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """The (x, y) pixel coordinates of an (h,w) grid, float32, made once per shape (``warp``
    runs several times a frame on the same two shapes; read only)."""
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    xs.flags.writeable = ys.flags.writeable = False
    return xs, ys


def flow_to_grid(flow: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A flow field (fh,fw,2) in its own pixels -> (gh,gw,2) in the pixels of ``shape``
    (resized bilinearly, the vectors scaled)."""
    gh, gw = shape
    fh, fw = flow.shape[:2]
    out = flow if (fh, fw) == (gh, gw) else cv2.resize(flow, (gw, gh), interpolation=cv2.INTER_LINEAR)
    out = out * np.float32([gw / fw, gh / fh])
    return out.astype(np.float32)


@dataclass
class ForegroundWeights:
    """What ``foreground_flow`` needs of one frame's alpha, made once for all the window's
    flows: the sure foreground (float32 (sh,sw), the fraction of each cell that is sure) and
    its Gaussian spread at a reduced scale (``factor`` px of the grid a cell), and where the
    spread reaches on the grid (bool (gh,gw))."""
    sure: np.ndarray
    weight: np.ndarray
    near: np.ndarray
    factor: int
    sigma: float


def foreground_weights(alpha: np.ndarray, sigma: float) -> ForegroundWeights:
    """``ForegroundWeights`` of an alpha (float32 (h,w) in [0,1]) for a spread of ``sigma``
    px: the sure foreground is alpha > 0.95, eroded 1 px. The spread is smooth at sigma's scale,
    so it is computed on cells of about sigma / 3 px (a 9.6 px spread on 3x3 cells: 1/27 of
    the work of the full grid's blur) and brought back bilinearly."""
    h, w = alpha.shape
    factor = max(1, int(sigma // 3))
    sure = cv2.erode((alpha > 0.95).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(np.float32)
    size = (max(1, round(w / factor)), max(1, round(h / factor)))
    small = sure if factor == 1 else cv2.resize(sure, size, interpolation=cv2.INTER_AREA)
    weight = cv2.GaussianBlur(small, (0, 0), sigma / factor)
    near = (weight if factor == 1 else cv2.resize(weight, (w, h), interpolation=cv2.INTER_LINEAR)) > 1e-3
    return ForegroundWeights(small, weight, near, factor, sigma)


def foreground_flow(flow: np.ndarray, fg: ForegroundWeights) -> np.ndarray:
    """The flow of the foreground, spread over its edge band: where ``fg`` reaches (within
    about its sigma of the sure foreground) the Gaussian-weighted mean of the sure foreground's
    own flow (an alpha moves with the foreground, while the flow at an edge mixes it with the
    background's); elsewhere the flow as it is. flow float32 (h,w,2) on the alpha's grid."""
    h, w = flow.shape[:2]
    moved = flow if fg.factor == 1 else cv2.resize(flow, fg.sure.shape[::-1], interpolation=cv2.INTER_AREA)
    spread = cv2.GaussianBlur(moved * fg.sure[..., None], (0, 0), fg.sigma / fg.factor)
    spread /= np.maximum(fg.weight, 1e-3)[..., None]
    if fg.factor != 1:
        spread = cv2.resize(spread, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.where(fg.near[..., None], spread, flow).astype(np.float32)


def blend(previous: np.ndarray, coarse: np.ndarray, image_change: np.ndarray, strength: float,
          image_tau: float, alpha_tau: float) -> np.ndarray:
    """``w * previous + (1 - w) * coarse``, w the motion gate (module docstring). float32 (h,w)."""
    alpha_change = np.abs(coarse - previous)
    w = strength * np.exp(-np.square(image_change / image_tau) - np.square(alpha_change / alpha_tau))
    return (previous + (coarse - previous) * (1 - w)).astype(np.float32)


class Stabiliser:
    """One clip's stabiliser (``method`` of ``TEMPORAL_METHODS`` other than none); call it as
    the core's ``adjust``: ``(item, image, coarse) -> alpha``. alpha_tau: the alpha change (in
    [0,1] units) at which a past frame's weight has fallen to 1/e (both methods). ``ema``:
    strength, the largest weight of the past (0..1); image_tau, the picture's change at which
    the gate has fallen to 1/e. ``flow``: window, the frames averaged (the current one
    included, >= 1); grid, the working grid's long side (px); flow_size, the long side (px) the
    flow is computed at; fg_sigma, the reach (px at a 320 px grid) of the foreground's flow over
    its edge band (0: the flow as it is); cut, the mean |gray - the past gray warped| (in [0,1])
    above which a past frame is left out (a cut)."""

    def __init__(self, method: str = DEFAULT_TEMPORAL, strength: float = 0.6, image_tau: float = 0.04,
                 alpha_tau: float = 0.25, window: int = 3, grid: int = 512, flow_size: int = 384,
                 fg_sigma: float = 6.0, cut: float = 0.1):
        if method not in TEMPORAL_METHODS or method == "none":
            raise ValueError(f"temporal method must be one of {TEMPORAL_METHODS[1:]}, got {method!r}")
        if not 0 <= strength < 1:
            raise ValueError(f"strength must be in [0, 1), got {strength}")
        if not (isinstance(window, int) and window >= 1 and grid >= 8 and flow_size >= 8 and alpha_tau > 0):
            raise ValueError(f"flow stabiliser needs window >= 1 (whole), grid >= 8, flow_size >= 8 and alpha_tau > 0, "
                             f"got window={window!r}, grid={grid}, flow_size={flow_size}, alpha_tau={alpha_tau}")
        self.method, self.strength, self.image_tau, self.alpha_tau = method, strength, image_tau, alpha_tau
        self.window, self.grid, self.flow_size, self.fg_sigma, self.cut = window, grid, flow_size, fg_sigma, cut
        self.state: TemporalState | None = None
        self.past: deque[PastFrame] = deque(maxlen=max(1, window - 1))
        self._dis = None

    def _gray(self, image: np.ndarray) -> np.ndarray:
        """uint8 RGB (H,W,3) -> uint8 gray at the flow's size (area-averaged)."""
        fh, fw = fit_long_side(*image.shape[:2], self.flow_size)
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        return gray if gray.shape == (fh, fw) else cv2.resize(gray, (fw, fh), interpolation=cv2.INTER_AREA)

    def _flow(self, gray: np.ndarray, before: np.ndarray) -> np.ndarray:
        """DIS flow (medium preset) from ``gray`` to ``before``: float32 (fh,fw,2)."""
        if self._dis is None:
            self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        return self._dis.calc(gray, before, None)

    def __call__(self, item, image: np.ndarray, coarse: np.ndarray) -> np.ndarray:
        """One frame's step (class docstring)."""
        if self.method == "flow":
            return self._window(image, coarse)
        gray = small_gray(image, coarse.shape)
        if self.state is None or self.state.gray.shape != gray.shape:
            out = coarse.astype(np.float32)
        else:
            change = cv2.blur(np.abs(gray - self.state.gray), (3, 3))
            out = blend(self.state.alpha, coarse, change, self.strength, self.image_tau, self.alpha_tau)
        self.state = TemporalState(gray, out)
        return out

    def _window(self, image: np.ndarray, coarse: np.ndarray) -> np.ndarray:
        """``flow``: the gated average of the window's alphas warped to this frame (float32 on
        the working grid)."""
        shape = fit_long_side(*image.shape[:2], self.grid)
        alpha = alpha_to_size(coarse, *shape)
        gray = self._gray(image)
        if self.past and (self.past[-1].gray.shape != gray.shape or self.past[-1].alpha.shape != alpha.shape):
            self.past.clear()  # the frame size changed: the past does not line up
        total, weights = alpha.copy(), np.ones_like(alpha)
        if self.window > 1:
            fg = foreground_weights(alpha, self.fg_sigma * max(shape) / 320) if self.fg_sigma > 0 else None
            for frame in reversed(self.past):  # the newest first; flows this frame -> that one
                flow = self._flow(gray, frame.gray)
                grid_flow = flow_to_grid(flow, shape)
                if fg is not None:
                    grid_flow = foreground_flow(grid_flow, fg)
                mismatch = np.abs(warp(frame.gray.astype(np.float32), flow) - gray).mean() / 255
                if mismatch > self.cut:  # a cut or a flow that failed: that frame does not line up
                    continue
                moved = np.clip(warp(frame.alpha, grid_flow), 0, 1)
                w = np.exp(-np.square((moved - alpha) / self.alpha_tau))
                total += w * moved
                weights += w
            self.past.append(PastFrame(gray, alpha))
        return (total / weights).astype(np.float32)


def make_stabiliser(method: str, **options) -> Stabiliser | None:
    """A new ``Stabiliser`` for one clip, or None for ``none``. Raises ValueError naming an
    unknown method."""
    if method not in TEMPORAL_METHODS:
        raise ValueError(f"--temporal must be one of {', '.join(TEMPORAL_METHODS)}, got {method!r}")
    return None if method == "none" else Stabiliser(method, **options)
