"""Finding files, checking them cheaply at index time, and reporting what was skipped.

Index-time policy: every file a dataset will use is opened once for its header (PIL, no pixel
decoding), which catches zero-byte, non-image and unknown-format files and photo/matte size
mismatches. Skipped files are summarised in one warning per dataset; a dataset left with no
usable file raises ``DatasetError`` naming the folder.
"""
import hashlib
import os
import typing
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .image_io import ImageReadError, is_image_file, read_header

_CHUNK = 256
_THREADS = 8
_EXAMPLES_IN_WARNING = 3


@dataclass(frozen=True)
class Pair:
    """A photo and its alpha matte (absolute paths). ``name``: the photo's path relative to
    the dataset root (``/`` separators); ``exif``: whether the photo's EXIF orientation
    applies (False when the matte matches the photo as stored, not as displayed);
    ``alpha_channel``: the band of the matte holding the alpha, for ``image_io.read_alpha``
    (3: the alpha band of an RGBA, LA or transparent-palette matte, as the seed took the last
    channel; None: a grayscale matte, read as its gray values)."""
    photo: str
    mask: str
    name: str
    exif: bool = True
    alpha_channel: typing.Optional[int] = None


class DatasetError(ValueError):
    """A dataset that cannot be used (missing folder, no usable files); names the folder."""


def require_dir(path, what):
    """Return ``path`` if it is a folder, else raise ``DatasetError`` naming it."""
    if not os.path.isdir(path):
        raise DatasetError(f"{what} folder not found: {path}")
    return path


def list_images(folder, recursive=True):
    """Image files under ``folder`` (hidden files and folders skipped) -> sorted list of
    paths relative to ``folder`` with ``/`` separators."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
        rel_dir = os.path.relpath(dirpath, folder)
        for name in filenames:
            if is_image_file(name):
                found.append(name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/"))
    return sorted(found)


class SkipReport:
    """Collects skipped files with a reason; ``warn`` emits one summarising warning."""

    def __init__(self, what):
        self.what = what
        self.skipped = []  # (reason, relpath, detail)

    def add(self, reason, relpath, detail=""):
        self.skipped.append((reason, relpath, detail))

    def __len__(self):
        return len(self.skipped)

    def message(self, total):
        counts = Counter(reason for reason, _, _ in self.skipped)
        parts = []
        for reason, count in counts.most_common():
            examples = [f"{rel} ({detail})" if detail else rel
                        for r, rel, detail in self.skipped if r == reason][:_EXAMPLES_IN_WARNING]
            parts.append(f"{count} {reason}, e.g. " + "; ".join(examples))
        return f"{self.what}: skipped {len(self.skipped)} of {total} files: " + " | ".join(parts)

    def warn(self, total, stacklevel=3, once=False):
        """One warning summarising the skips; ``once``: not again in this process for the same
        message (the train and val datasets of one root index the same mattes)."""
        if not self.skipped:
            return
        message = self.message(total)
        if once:
            if message in _WARNED:
                return
            _WARNED.add(message)
        warnings.warn(message, stacklevel=stacklevel)


_WARNED = set()


def select_valid(candidates, check, report, cap=None):
    """Check ``candidates`` in order (threads, in chunks) and keep the first ``cap`` valid ones.

    ``check(candidate)`` returns ``(item, None)`` when usable or ``(None, (reason, detail))``;
    skips go to ``report`` (keyed by ``str(candidate)``). Returns the list of items.
    """
    kept = []
    with ThreadPoolExecutor(max_workers=_THREADS) as pool:
        for start in range(0, len(candidates), _CHUNK):
            chunk = candidates[start:start + _CHUNK]
            for candidate, (item, skip) in zip(chunk, pool.map(check, chunk)):
                if skip is not None:
                    report.add(skip[0], str(candidate), skip[1])
                elif cap is None or len(kept) < cap:
                    kept.append(item)
            if cap is not None and len(kept) >= cap:
                break
    return kept


def check_pair(photo, mask, name, alpha_channel=None):
    """Header check of a photo and its matte -> ``(Pair, None)`` or ``(None, (reason, detail))``.

    Catches unreadable files, a matte without the alpha channel asked (``alpha_channel=3``)
    and a matte whose size differs from the photo's (as displayed, or else as stored).
    """
    if not os.path.isfile(mask):
        return None, ("missing matte", os.path.basename(mask))
    try:
        photo_header = read_header(photo)
    except ImageReadError as err:
        return None, ("unreadable photo", err.reason)
    try:
        mask_header = read_header(mask)
    except ImageReadError as err:
        return None, ("unreadable matte", f"{os.path.basename(mask)}: {err.reason}")
    if alpha_channel == 3 and not mask_header.has_alpha:
        return None, ("matte without alpha channel", f"{os.path.basename(mask)} is {mask_header.mode}")
    channel = 3 if mask_header.has_alpha else None
    if mask_header.size == photo_header.size:
        return Pair(photo, mask, name, exif=True, alpha_channel=channel), None
    if mask_header.size == photo_header.raw_size:
        return Pair(photo, mask, name, exif=False, alpha_channel=channel), None
    (pw, ph), (mw, mh) = photo_header.size, mask_header.size
    return None, ("photo/matte size mismatch", f"photo {pw}x{ph}, matte {mw}x{mh}")


def check_image(path, name):
    """Header check of one image -> ``(name, None)`` or ``(None, ("unreadable", reason))``."""
    try:
        read_header(path)
    except ImageReadError as err:
        return None, ("unreadable", err.reason)
    return name, None


def report_orphan_masks(report, masks, photos):
    """Add to ``report`` every matte (relative name) whose photo is missing: ``masks`` and
    maps a stem (the pairing key) to its relative name, ``photos`` is the set of the photos'
    stems. A matte without its photo is never used; the warning says so instead of ignoring
    it silently."""
    for stem in sorted(set(masks) - set(photos)):
        report.add("matte without its photo", masks[stem], "no photo of that name")


# ---- the training set a run trained on (checkpoint.pth records it, a resume compares) --------

def training_set_record(pairs):
    """The files of ``pairs`` as a plain dict for a checkpoint: ``{"count": N, "sha256": hex,
    "files": [[name, photo "size:mtime_ns", matte "size:mtime_ns"], ...]}`` (sorted by name).

    The hash covers names and sizes only: a copy of the dataset (new mtimes) hashes the same.
    """
    files = sorted([pair.name, _stamp(pair.photo), _stamp(pair.mask)] for pair in pairs)
    digest = hashlib.sha256()
    for name, photo, mask in files:
        digest.update(f"{name}\0{photo.split(':')[0]}\0{mask.split(':')[0]}\n".encode("utf-8", "surrogateescape"))
    return {"count": len(files), "sha256": digest.hexdigest(), "files": files}


def _stamp(path):
    try:
        st = os.stat(path)
    except OSError:
        return "missing:0"
    return f"{st.st_size}:{st.st_mtime_ns}"


def training_set_changes(old, new):
    """What differs between two ``training_set_record``s -> ``(changed, touched)``: ``changed``
    a one-line description of added, removed and resized files (None: the same set), ``touched``
    the number of files whose modification time alone differs."""
    before = {name: (photo, mask) for name, photo, mask in old["files"]}
    after = {name: (photo, mask) for name, photo, mask in new["files"]}
    sizes = lambda stamps: tuple(s.split(":")[0] for s in stamps)  # noqa: E731
    removed = sorted(set(before) - set(after))
    added = sorted(set(after) - set(before))
    common = sorted(set(before) & set(after))
    resized = [n for n in common if sizes(before[n]) != sizes(after[n])]
    touched = sum(1 for n in common if n not in resized and before[n] != after[n])
    parts = [f"{len(names)} {what} (e.g. {', '.join(names[:_EXAMPLES_IN_WARNING])})"
             for what, names in (("removed", removed), ("added", added), ("changed in size", resized)) if names]
    return ("; ".join(parts) if parts else None), touched
