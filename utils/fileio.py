"""Writing files so that a reader, or a run killed at any instant, sees the old file or the new
one, never half of one: write to a temporary name in the same folder, then ``os.replace``."""
import contextlib
import os
import threading

TMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_open(path, mode="wb", fsync=False, **kwargs):
    """Open a temporary file beside ``path`` for writing; on leaving the block without an error
    it replaces ``path`` (``os.replace``), else it is removed and ``path`` is left as it was.

    ``fsync``: flush the data to the disk before the rename, and the folder after it (the rename
    is an entry of the folder: without that a power cut can bring back the old file, or none),
    for commit points such as ``checkpoint.pth``; it costs milliseconds a file. The temporary
    name holds the process and thread ids, so concurrent writers of one file never share it.

    >>> with atomic_open("out.csv", "w", newline="") as f:
    ...     f.write("a,b\\n")
    """
    folder, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{base}.{os.getpid()}.{threading.get_ident()}{TMP_SUFFIX}")
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if fsync:
            fsync_folder(folder)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def fsync_folder(folder):
    """Flush ``folder``'s entries (a rename into it) to the disk. Where folders cannot be opened
    (Windows) or synced (some network file systems), nothing is done: the data itself is synced."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, data, fsync=False):
    """Write ``data`` (bytes) to ``path`` atomically (see ``atomic_open``)."""
    with atomic_open(path, "wb", fsync=fsync) as f:
        f.write(data)


def remove_temporaries(folder):
    """Remove the temporary files ``atomic_open`` left in ``folder`` when its process was killed
    mid-write (``.<name>.<pid>.<thread>.tmp``); call it only when no writer is active there.
    Returns their names."""
    names = [name for name in os.listdir(folder) if name.startswith(".") and name.endswith(TMP_SUFFIX)]
    for name in names:
        os.remove(os.path.join(folder, name))
    return names
