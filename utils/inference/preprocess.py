"""A photo into the network's input, and the network's alpha back to the photo: numpy and
OpenCV only (no torch), so an ``.onnx`` model runs through exactly the same steps as the
PyTorch one (``utils.inference.predict`` re-exports these functions; see its docstring for the
resize policy).
"""
import cv2
import numpy as np

from utils.constants import IMAGENET_MEAN, IMAGENET_STD, RESIZE_POLICIES  # as in training


def network_input_size(height, width, size=320, resize="square"):
    """(height, width) of the network input for a ``height x width`` photo."""
    if resize == "square":
        return size, size
    if resize == "short_side":
        scale = size / min(height, width)
        return max(size, round(height * scale)), max(size, round(width * scale))
    raise ValueError(f"resize must be one of {RESIZE_POLICIES}, got {resize!r}")


def _resize(array, out_h, out_w):
    """Area when shrinking (any factor), else bilinear. Training's compositing
    (data_loader.compositing.resize_interpolation) takes area only from 2x: it resizes every
    draw, where area's cost at non-integer factors (up to 9x) matters; here a photo is resized
    once and the network's input should carry no aliasing at any factor."""
    h, w = array.shape[:2]
    if (h, w) == (out_h, out_w):
        return array
    shrink = out_h < h and out_w < w
    return cv2.resize(array, (out_w, out_h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def preprocess(image, size=320, resize="square"):
    """uint8 RGB (H,W,3) -> float32 (3,h,w) network input: resized (see the module docstring),
    /255, ImageNet mean/std normalised."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H,W,3) RGB image, got {image.dtype} {image.shape}")
    small = _resize(image, *network_input_size(*image.shape[:2], size=size, resize=resize))
    x = (small.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def alpha_to_size(alpha, height, width):
    """float32 (h,w) network alpha -> float32 (height,width) in [0,1], bilinear (area when
    shrinking)."""
    return np.clip(_resize(np.asarray(alpha, dtype=np.float32), height, width), 0.0, 1.0)
