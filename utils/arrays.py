"""The one rounding from [0, 1] floats to 8 bits, for every file the project writes (alphas,
cut-outs, composites, foreground caches, grids), so that two paths writing the same values
write the same bytes."""
import numpy as np


def unit_to_uint8(values: np.ndarray) -> np.ndarray:
    """float array in [0,1] (clipped) -> uint8 of the same shape, ``round(255 * v)`` with ties
    to even (numpy's rounding). One temporary, whatever the size."""
    scaled = np.clip(values, 0.0, 1.0)
    scaled *= 255.0
    return np.round(scaled, out=scaled).astype(np.uint8)
