"""The one rounding from [0, 1] floats to 8 bits, for every file the project writes (alphas,
cut-outs, composites, foreground caches, grids), so that two paths writing the same values
write the same bytes."""
import numpy as np

_CHUNK = 1 << 20  # values converted at a time: a float temporary of 4 MB, not one of the whole photo


def unit_to_uint8(values: np.ndarray) -> np.ndarray:
    """float array in [0,1] (clipped) -> uint8 of the same shape, ``round(255 * v)`` with ties
    to even (numpy's rounding). Works a chunk of rows at a time (bounded temporaries)."""
    values = np.asarray(values)
    out = np.empty(values.shape, np.uint8)
    if values.ndim == 0 or values.size <= _CHUNK:
        return _convert(values, out)
    rows = max(1, _CHUNK // (values.size // values.shape[0]))
    for top in range(0, values.shape[0], rows):
        _convert(values[top:top + rows], out[top:top + rows])
    return out


def _convert(values, out):
    scaled = np.asarray(np.clip(values, 0.0, 1.0))  # an array also for one value
    scaled *= 255.0
    np.round(scaled, out=scaled)
    out[...] = scaled
    return out
