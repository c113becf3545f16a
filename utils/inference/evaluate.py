"""The reusable parts of test_stage2.py: pairing files by stem, trimaps, per-image rows, the
CSV/JSON outputs, the worst/best grid and where weights and outputs live.

Files pair by *key*: the path relative to its folder without the extension, ``/`` separators
(the stem for flat folders such as P3M-500's ``blurred_image/`` + ``mask/``).
"""
import csv
import json
import math
import os
import time

import cv2
import numpy as np
from torch.utils.data import Dataset

from data_loader.image_io import MAX_PIXELS, check_pixels, read_alpha, read_header, read_rgb
from data_loader.indexing import list_images
from data_loader.trimap import EVAL_KERNEL, unknown_band
from utils.metrics import METRIC_NAMES, REGION_METRIC_NAMES, matting_metrics, region_metrics
from utils.runs import run_folder_of
from .cutout import alpha_to_uint8 as to_uint8  # the rounding apply.py writes

COLUMNS = ("name",) + METRIC_NAMES + REGION_METRIC_NAMES


class EvaluationError(ValueError):
    """Inputs that cannot be evaluated (no pairs, size mismatch, ...); names the files."""


def stem_key(relpath):
    """'sub/a.b.png' -> 'sub/a.b' (relative path without extension, ``/`` separators)."""
    return os.path.splitext(str(relpath).replace("\\", "/"))[0]


def index_folder(folder):
    """Image files under ``folder`` -> {key: path}; two files with one key are an error."""
    if not os.path.isdir(folder):
        raise EvaluationError(f"folder not found: {folder}")
    found = {}
    for rel in list_images(folder):
        key = stem_key(rel)
        if key in found:
            raise EvaluationError(f"two files share the name {key!r}: {found[key]} and {os.path.join(folder, rel)}")
        found[key] = os.path.join(folder, rel)
    return found


def match_by_stem(folders):
    """folders: {role: folder} -> (items, unmatched).

    items: list of {"name": key, role: path, ...} for keys present in every folder, sorted by key;
    unmatched: {role: sorted keys of that folder missing from some other folder}. No common key
    is an ``EvaluationError`` naming the folders.
    """
    indexes = {role: index_folder(folder) for role, folder in folders.items()}
    common = set.intersection(*(set(index) for index in indexes.values()))
    if not common:
        listing = ", ".join(f"{role} {folder} ({len(indexes[role])} images)" for role, folder in folders.items())
        raise EvaluationError(f"no file names in common between {listing}")
    items = [dict(name=key, **{role: index[key] for role, index in indexes.items()}) for key in sorted(common)]
    unmatched = {role: sorted(set(index) - common) for role, index in indexes.items()}
    return items, {role: keys for role, keys in unmatched.items() if keys}


def describe_unmatched(unmatched, limit=20):
    """Human-readable list of unmatched names per role (first ``limit`` each) and the count."""
    lines = []
    for role, keys in unmatched.items():
        shown = ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
        lines.append(f"  {len(keys)} {role} file(s) without a match, skipped: {shown}")
    return "\n".join(lines)


class PairDataset(Dataset):
    """Items from ``match_by_stem`` -> samples for evaluation.

    A sample is a dict: ``name``; ``alpha`` float32 (H,W) in [0,1]; ``image`` uint8 (H,W,3) RGB
    or None; ``pred`` float32 (H,W) or None; ``trimap`` float32 (H,W) or None; ``files``
    {role: path}. Made, it has read every file's header (``check_pairs``): an empty or
    unreadable file is an ``ImageReadError``, a file whose size differs from the ground truth's
    an ``EvaluationError`` naming both, and more than ``max_pixels`` pixels an ``ImageReadError``,
    all before any work; a file that fails only when decoded raises when its sample is read.
    """

    def __init__(self, items, max_pixels=MAX_PIXELS):
        self.items, self.max_pixels = list(items), max_pixels
        check_pairs(self.items, max_pixels)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        item = self.items[index]
        alpha = read_alpha(item["alphas"], max_pixels=self.max_pixels)
        sample = {"name": item["name"], "alpha": alpha, "image": None, "pred": None, "trimap": None,
                  "files": {role: path for role, path in item.items() if role != "name"}}
        readers = {"images": ("image", read_rgb), "predictions": ("pred", read_alpha), "trimaps": ("trimap", read_alpha)}
        for role, (key, reader) in readers.items():
            if role in item:
                sample[key] = reader(item[role], max_pixels=self.max_pixels)
                check_same_size(sample[key], alpha, item[role], item["alphas"])
        return sample


def _mismatch(path, size, alpha_path, alpha_size):
    return EvaluationError(f"size mismatch: {path} is {size[0]}x{size[1]} but its ground truth {alpha_path} "
                           f"is {alpha_size[0]}x{alpha_size[1]} (width x height)")


def check_same_size(array, alpha, path, alpha_path):
    """Raise ``EvaluationError`` naming both files unless ``array`` is ``alpha``'s height x width."""
    if array.shape[:2] != alpha.shape[:2]:
        raise _mismatch(path, array.shape[1::-1], alpha_path, alpha.shape[1::-1])


def check_pairs(items, max_pixels=MAX_PIXELS):
    """Read the header of every file of ``items`` (``match_by_stem``'s), decoding nothing.

    Raises ``ImageReadError`` for an empty, unreadable or non-image file, or one with more than
    ``max_pixels`` pixels (None: no limit), and ``EvaluationError`` for a file whose displayed
    size (EXIF applied, as it is read) differs from its ground truth's, naming both files.
    """
    for item in items:
        sizes = {}
        for role, path in item.items():
            if role != "name":
                sizes[role] = read_header(path).size
                check_pixels(path, sizes[role], max_pixels)
        for role, size in sizes.items():
            if size != sizes["alphas"]:
                raise _mismatch(item[role], size, item["alphas"], sizes["alphas"])


def worker_message(err):
    """An error's own message, also when a DataLoader worker re-raised it with the worker's
    traceback: its last line, without the exception's module and class."""
    message = str(err).strip()
    if "Original Traceback" not in message:
        return message
    last = message.splitlines()[-1]
    head, sep, rest = last.partition(": ")
    return rest if sep and head.replace(".", "").replace("_", "").isalnum() else last


def derive_trimap(alpha, kernel_size=EVAL_KERNEL):
    """Ground truth -> uint8 trimap 0/128/255 by the training rule at a fixed width.

    Unknown = ``data_loader.trimap.unknown_band(alpha, kernel_size)`` (every fractional pixel plus
    (kernel_size - 1) / 2 px each side); outside it, alpha >= 0.5 is foreground, the rest background.
    """
    trimap = np.where(alpha >= 0.5, 255, 0).astype(np.uint8)
    trimap[unknown_band(alpha, kernel_size) > 0] = 128
    return trimap


def quantize(alpha):
    """float alpha in [0,1] -> the float32 an 8-bit PNG of it reads back as (k / 255)."""
    return to_uint8(alpha).astype(np.float32) / np.float32(255.0)


def evaluate_sample(name, pred, alpha, trimap):
    """One row of metrics.csv: whole-image errors plus the trimap-region ones."""
    return {"name": name, **matting_metrics(pred, alpha), **region_metrics(pred, alpha, trimap)}


def write_metrics_csv(path, rows):
    """rows (dicts with ``COLUMNS``) -> CSV with a header, floats at full precision."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (repr(row[k]) if isinstance(row[k], float) else row[k]) for k in COLUMNS})


def mean_metrics(rows):
    """{column: mean over rows} for every metric column; NaNs (no unknown pixels) are left out."""
    means = {}
    for key in COLUMNS[1:]:
        values = [row[key] for row in rows if not math.isnan(row[key])]
        means[key] = float(np.mean(values)) if values else float("nan")
    return means


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, allow_nan=True)
        f.write("\n")


class Extremes:
    """Keeps the ``k`` lowest- and ``k`` highest-scored entries (score, name, payload) seen."""

    def __init__(self, k=4):
        self.k, self.entries = k, []

    def add(self, score, name, payload):
        if self.k <= 0:
            return
        self.entries.append((score, name, payload))
        if len(self.entries) > 4 * self.k:
            self.entries.sort(key=lambda e: (e[0], e[1]))
            self.entries = self.entries[:self.k] + self.entries[-self.k:]

    def worst_and_best(self):
        """(worst first, best first); an entry is in one list only."""
        ordered = sorted(self.entries, key=lambda e: (e[0], e[1]))
        worst = ordered[::-1][:self.k]
        shown = {e[1] for e in worst}
        best = [e for e in ordered[:self.k] if e[1] not in shown]
        return worst, best


def panels(image, alpha, pred, height=160):
    """Thumbnails (uint8 (height,w,3) RGB) of image (if any) | ground truth | prediction | |error|."""
    h, w = alpha.shape
    width = max(1, round(w * height / h))

    def fit(x):
        return cv2.resize(x, (width, height), interpolation=cv2.INTER_AREA)

    def gray(a):
        return np.repeat(to_uint8(fit(a))[..., None], 3, axis=2)

    error = cv2.applyColorMap(to_uint8(fit(np.abs(pred - alpha))), cv2.COLORMAP_INFERNO)[..., ::-1]
    shown = [gray(alpha), gray(pred), np.ascontiguousarray(error)]
    return ([fit(image)] if image is not None else []) + shown


def save_ranked_grid(path, rows, legend="", gap=4, header=22):
    """rows: list of (title, [uint8 RGB panels of one height]) -> one PNG, a titled strip per row,
    under a line of text ``legend`` (e.g. the panels' names)."""
    strips = [np.full((header, 1, 3), 255, np.uint8)] if legend else []
    for title, row in rows:
        body = np.concatenate([np.pad(p, ((0, 0), (0, gap), (0, 0)), constant_values=255) for p in row], axis=1)
        strip = np.full((header + body.shape[0] + gap, body.shape[1], 3), 255, np.uint8)
        strip[header:header + body.shape[0]] = body
        cv2.putText(strip, title, (4, header - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        strips.append(strip)
    width = max(s.shape[1] for s in strips)
    if legend:
        strips[0] = np.full((header, width, 3), 255, np.uint8)
        cv2.putText(strips[0], legend, (4, header - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (90, 90, 90), 1, cv2.LINE_AA)
    grid = np.concatenate([np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0)), constant_values=255) for s in strips])
    if not cv2.imwrite(path, grid[..., ::-1]):
        raise OSError(f"could not write {path}")


def new_output_dir(weights=None, fallback="results_test", create=True):
    """A new ``test_<timestamp>`` folder in the weights' run folder, else under ``fallback``;
    ``create=False``: only its name (made when there is something to write, so that a run that
    fails leaves no empty folder)."""
    parent = run_folder_of(weights) or fallback
    base = os.path.join(parent, time.strftime("test_%Y%m%d_%H%M%S"))
    path, n = base, 1
    while os.path.exists(path):
        path, n = f"{base}_{n}", n + 1
    if create:
        os.makedirs(path)
    return path
