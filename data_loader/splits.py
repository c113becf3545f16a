"""Deterministic, stable train/validation split by a hash of each file's relative path.

A file's split depends on its own relative path only, so adding or removing other files never
moves it: ``md5(relative posix path) -> bucket in 0..99``; buckets 0..89 are ``train`` (90 %),
90..99 are ``val`` (10 %; ``test`` is the same files). ``all`` keeps everything.
"""
import hashlib

SPLITS = ("train", "val", "test", "all")
TRAIN_BUCKETS = 90


def key_seed(key):
    """A 64-bit number from a text key (the first 8 bytes of its md5), the same in every
    process and run: the seed of everything the project fixes by a name."""
    return int.from_bytes(hashlib.md5(key.encode("utf-8")).digest()[:8], "big")


def split_bucket(relpath):
    """Bucket 0..99 of a relative path (``/`` separators; ``\\`` is normalised)."""
    return key_seed(str(relpath).replace("\\", "/")) % 100


def check_split(split):
    """Raise ``ValueError`` naming the bad split."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def in_split(relpath, split):
    """True if ``relpath`` belongs to ``split``."""
    check_split(split)
    if split == "all":
        return True
    is_train = split_bucket(relpath) < TRAIN_BUCKETS
    return is_train if split == "train" else not is_train


def stable_choice(key, candidates):
    """The candidate (a string) with the highest hash of ``key`` + candidate (rendezvous hashing):
    deterministic, and adding candidates changes the choice only when a new one wins."""
    def score(candidate):
        return hashlib.md5(f"{key}\0{candidate}".encode("utf-8")).digest()
    return max(candidates, key=score)
