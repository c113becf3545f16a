"""Figures of a training run: ``curves.png`` (losses and validation metrics over the epochs) and
``image/epoch<N>.png`` (validation grid: input | ground truth | prediction | cut-out)."""
import io

import cv2
import numpy as np

from utils.arrays import unit_to_uint8

MAX_PNG_BYTES = 500_000  # figures the README shows stay small in the repository

CURVE_PANELS = (
    ("training loss (total and its terms)", ("train_loss", "train_sides", "train_unknown")),
    ("fused output L1: train crops vs val", ("train_fused", "val_loss")),
    ("learning rate", ("lr",)), ("e2h mix ratio (measured)", ("mix_ratio",)),
    ("SAD (val)", ("val_sad",)), ("MSE (val)", ("val_mse",)), ("MAD (val)", ("val_mad",)),
    ("Grad (val)", ("val_grad",)), ("Conn (val)", ("val_conn",)),
)


def save_curves(rows, path):
    """Plot the columns of ``rows`` (train_log.csv rows, dicts of numbers) against ``epoch``.

    Uses matplotlib's Agg backend (no display needed).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in rows]
    # A fixed layout: tight_layout measured every tick label again and took a third of the
    # figure's time, which a run pays at every epoch.
    fig, axes = plt.subplots(3, 3, figsize=(13, 10), squeeze=False)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.06, top=0.96, wspace=0.25, hspace=0.35)
    for ax, (title, columns) in zip(axes.flat, CURVE_PANELS):
        for column in columns:
            if rows and column in rows[0]:
                ax.plot(epochs, [row[column] for row in rows], marker="o", markersize=3, label=column)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if len(columns) > 1:
            ax.legend(fontsize=8)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def save_png(fig, path, dpi, max_bytes=MAX_PNG_BYTES):
    """Save a matplotlib figure as PNG; if larger than ``max_bytes``, as a 256-colour PNG.
    Returns the file's size in bytes."""
    from PIL import Image
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    data = buffer.getvalue()
    if len(data) > max_bytes:
        with Image.open(io.BytesIO(data)) as im:
            small = io.BytesIO()
            im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(small, format="png", optimize=True)
            data = small.getvalue()
    with open(path, "wb") as f:
        f.write(data)
    return len(data)


def _checkerboard(h, w, square=8):
    yy, xx = np.mgrid[:h, :w]
    board = ((yy // square + xx // square) % 2).astype(np.float32)
    return (0.75 + 0.2 * board)[..., None] * 255.0


def _tiles(rgb, gt, pred, height):
    """The four tiles of one validation image, uint8 RGB, ``height`` tall."""
    h, w = gt.shape
    width = max(1, round(w * height / h))
    rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
    gt = cv2.resize(gt, (width, height), interpolation=cv2.INTER_AREA)
    pred = cv2.resize(pred, (width, height), interpolation=cv2.INTER_AREA)
    gray = lambda a: np.repeat(unit_to_uint8(a)[..., None], 3, axis=2)
    a = np.clip(pred, 0, 1)[..., None]
    cutout = unit_to_uint8((a * rgb + (1 - a) * _checkerboard(height, width)) / 255.0)
    return np.concatenate([rgb, gray(gt), gray(pred), cutout], axis=1)


def preview_grid_png(previews, height=192):
    """One row per validation image: input | ground truth | prediction | cut-out (on a checkerboard),
    as PNG bytes (b"" when there are no previews).

    previews: list of ``(rgb uint8 (H,W,3), gt float32 (H,W) in [0,1], pred float32 (H,W) in [0,1])``.
    """
    if not previews:
        return b""
    rows = [_tiles(rgb, gt, pred, height) for rgb, gt, pred in previews]
    width = max(row.shape[1] for row in rows)
    gap = np.full((4, width, 3), 255, np.uint8)
    padded = []
    for row in rows:
        pad = np.full((height, width - row.shape[1], 3), 255, np.uint8)
        padded += [np.concatenate([row, pad], axis=1), gap]
    grid = np.concatenate(padded[:-1], axis=0)
    ok, png = cv2.imencode(".png", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"could not encode a {grid.shape} preview grid as PNG")
    return png.tobytes()

