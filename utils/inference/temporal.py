"""Temporal stabilisation of a video's coarse alphas: per-frame mattes of one network flicker.

A stabiliser is the core's ``adjust`` hook (``Matter.stream(..., adjust=stabiliser)``): called
once per frame, in order, with the frame (uint8 RGB (H,W,3)) and the network's alpha (float32
(h,w) in [0,1] at the network's size), it returns the alpha to refine. Its state (the previous
frame's small gray image and its output alpha) is a value it keeps between calls (``state``),
so one stabiliser serves one clip.

Methods (``TEMPORAL_METHODS``; benchmarks/video.py measures them, documents/video.md has the
table):

- ``none``: per frame, the network's alpha as it is.
- ``ema``: motion-gated exponential moving average. ``out = w * prev + (1 - w) * coarse`` with
  ``w = strength * exp(-(dI / image_tau)^2) * exp(-(dA / alpha_tau)^2)``: dI the frame's
  change at the pixel (gray, at the network's size), dA the alpha's. Where the picture moves
  the weight falls to 0, so a moving edge is never dragged behind; where it is still, the
  flicker is averaged away.
- ``flow``: the same blend after warping the previous output along the optical flow (OpenCV
  DIS, ultrafast preset, between the small gray frames), gated by the warped frame's error: it
  also steadies edges that move.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

TEMPORAL_METHODS = ("none", "ema", "flow")
DEFAULT_TEMPORAL = "flow"


@dataclass
class TemporalState:
    """What a stabiliser carries from one frame to the next: the small gray frame (float32
    (h,w) in [0,1]) and the alpha it gave (float32 (h,w) in [0,1])."""
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


def blend(previous: np.ndarray, coarse: np.ndarray, image_change: np.ndarray, strength: float,
          image_tau: float, alpha_tau: float) -> np.ndarray:
    """``w * previous + (1 - w) * coarse``, w the motion gate (module docstring). float32 (h,w)."""
    alpha_change = np.abs(coarse - previous)
    w = strength * np.exp(-np.square(image_change / image_tau) - np.square(alpha_change / alpha_tau))
    return (previous + (coarse - previous) * (1 - w)).astype(np.float32)


class Stabiliser:
    """One clip's stabiliser (``method`` of ``TEMPORAL_METHODS`` other than none); call it as
    the core's ``adjust``: ``(item, image, coarse) -> coarse``. strength: the largest weight of
    the past (0..1); image_tau, alpha_tau: the changes (in [0,1] units) at which the gate has
    fallen to 1/e."""

    def __init__(self, method: str = DEFAULT_TEMPORAL, strength: float = 0.6, image_tau: float = 0.04,
                 alpha_tau: float = 0.25):
        if method not in TEMPORAL_METHODS or method == "none":
            raise ValueError(f"temporal method must be one of {TEMPORAL_METHODS[1:]}, got {method!r}")
        if not 0 <= strength < 1:
            raise ValueError(f"strength must be in [0, 1), got {strength}")
        self.method, self.strength, self.image_tau, self.alpha_tau = method, strength, image_tau, alpha_tau
        self.state: TemporalState | None = None
        self._dis = None

    def __call__(self, item, image: np.ndarray, coarse: np.ndarray) -> np.ndarray:
        gray = small_gray(image, coarse.shape)
        if self.state is None or self.state.gray.shape != gray.shape:
            out = coarse.astype(np.float32)
        elif self.method == "ema":
            change = cv2.blur(np.abs(gray - self.state.gray), (3, 3))
            out = blend(self.state.alpha, coarse, change, self.strength, self.image_tau, self.alpha_tau)
        else:
            previous, previous_gray = self._warp_back(gray)
            change = cv2.blur(np.abs(gray - previous_gray), (3, 3))
            out = blend(previous, coarse, change, self.strength, self.image_tau, self.alpha_tau)
        self.state = TemporalState(gray, out)
        return out

    def _warp_back(self, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The previous alpha and gray frame moved to where this frame's pixels were."""
        if self._dis is None:
            self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
        to_u8 = lambda x: np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8)  # noqa: E731
        flow = self._dis.calc(to_u8(gray), to_u8(self.state.gray), None)  # this frame -> the previous
        h, w = gray.shape
        xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        mx, my = xs + flow[..., 0], ys + flow[..., 1]
        warp = lambda x: cv2.remap(x, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)  # noqa: E731
        return warp(self.state.alpha), warp(self.state.gray)


def make_stabiliser(method: str, **options) -> Stabiliser | None:
    """A new ``Stabiliser`` for one clip, or None for ``none``. Raises ValueError naming an
    unknown method."""
    if method not in TEMPORAL_METHODS:
        raise ValueError(f"--temporal must be one of {', '.join(TEMPORAL_METHODS)}, got {method!r}")
    return None if method == "none" else Stabiliser(method, **options)
