"""Foreground cache: estimated once, invalidated by changed sources, never half-written."""
import glob
import os
import threading

import numpy as np
import pytest
from PIL import Image

import data_loader.foreground_cache as fc
from data_loader import ForegroundCache, ForegroundDataset, Pair, read_alpha, read_rgb


@pytest.fixture
def counted(monkeypatch):
    """Counts calls of the foreground estimator (the real one runs)."""
    calls = []
    real = fc.estimate_foreground

    def estimate(rgb, alpha):
        calls.append(rgb.shape)
        return real(rgb, alpha)
    monkeypatch.setattr(fc, "estimate_foreground", estimate)
    return calls


def build(root, cache, **kwargs):
    return ForegroundDataset(root, "train", image_size=32, crop_size=24, cache_dir=cache, progress=False, **kwargs)


def entries(cache):
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(cache, "*")))


def test_estimated_once_and_matches_pymatting(make_paixin, tmp_path, counted):
    from pymatting import estimate_foreground_ml
    root, cache = make_paixin(), str(tmp_path / "cache")
    ds = build(root, cache)
    assert len(counted) == len(ds) == 10
    assert len(entries(cache)) == 2 * len(ds)  # full-resolution .png + training .npy each
    assert os.path.exists(os.path.join(cache, ".gitignore"))
    build(root, cache)[0]
    assert len(counted) == 10
    pair = ds.pairs[0]
    reference = estimate_foreground_ml(read_rgb(pair.photo) / 255.0, read_alpha(pair.mask))
    cached = ds.cache.load_full(pair)
    assert cached.dtype == np.uint8 and cached.shape == (40, 32, 3)
    np.testing.assert_allclose(cached / 255.0, reference, atol=0.5 / 255 + 1e-6)


def test_changed_source_is_estimated_again(make_paixin, tmp_path, counted):
    root, cache = make_paixin(), str(tmp_path / "cache")
    ds = build(root, cache)
    before = entries(cache)
    pair = ds.pairs[2]
    stat = os.stat(pair.photo)
    os.utime(pair.photo, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))  # touched
    build(root, cache)
    assert len(counted) == 11
    alpha = (read_alpha(pair.mask) * 255).astype(np.uint8)
    Image.fromarray(255 - alpha, "L").save(pair.mask)  # mask rewritten
    os.utime(pair.mask, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2 * 10 ** 9))
    ds = build(root, cache)
    assert len(counted) == 12
    after = entries(cache)
    assert len(after) == len(before) and len(set(after) - set(before)) == 2  # old entry files removed
    ds[2]
    assert len(counted) == 12


def test_lazy_entries_and_corrupt_files_are_rebuilt(make_paixin, tmp_path, counted):
    root, cache = make_paixin(), str(tmp_path / "cache")
    ds = build(root, cache, precompute=False)
    assert counted == [] and entries(cache) == []
    ds[0]
    assert len(counted) == 1
    npy = [p for p in glob.glob(os.path.join(cache, "*.npy"))][0]
    with open(npy, "wb") as f:
        f.write(b"garbage")
    ds[0]
    assert len(counted) == 1  # the training copy is remade from the full-resolution file
    for path in glob.glob(os.path.join(cache, "*")):
        with open(path, "wb") as f:
            f.write(b"garbage")
    ds[0]
    assert len(counted) == 2


def test_failed_write_leaves_no_partial_file(make_paixin, tmp_path, monkeypatch):
    root, cache = make_paixin(per_category=2, val=1), str(tmp_path / "cache")

    def failing_save(file, array):
        file.write(b"\x93NUMPY partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(fc.np, "save", failing_save)
    with pytest.warns(UserWarning, match="cannot write foreground cache"):
        ds = build(root, cache)
    assert not any(name.endswith(".npy") or ".tmp" in name for name in entries(cache))
    assert ds[0]["image"].shape == (3, 24, 24)  # still usable, estimated on the fly


def test_concurrent_builders_share_one_cache(make_paixin, tmp_path):
    root, cache_dir = make_paixin(), str(tmp_path / "cache")
    ds = build(root, cache_dir, precompute=False)
    caches = [ForegroundCache(cache_dir, work_short_side=32) for _ in range(3)]
    errors = []

    def run(cache):
        try:
            assert cache.build(ds.pairs, progress=False, threads=2) == {}
        except Exception as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)
    threads = [threading.Thread(target=run, args=(c,)) for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert not any(".tmp" in name for name in entries(cache_dir))
    for pair in ds.pairs:
        fg, alpha = caches[0].load_work(pair)
        assert fg.shape[:2] == alpha.shape and min(alpha.shape) == 32


def test_pair_is_keyed_by_relative_name(tmp_path):
    cache = ForegroundCache(str(tmp_path / "c"))
    photo, mask = tmp_path / "p.jpg", tmp_path / "m.png"
    photo.write_bytes(b"x")
    mask.write_bytes(b"y")
    a = cache.paths(Pair(str(photo), str(mask), "cat/raw_image/p.jpg"))
    b = cache.paths(Pair(str(photo), str(mask), "cat/raw_image/q.jpg"))
    assert a[0] != b[0] and a[1] is None


def test_stale_entry_in_a_forked_worker_is_estimated_safely(make_paixin, tmp_path):
    """pymatting's OpenMP threads make a forked child abort if it runs them again: the
    worker estimates in a fresh subprocess instead."""
    from torch.utils.data import DataLoader
    root, cache = make_paixin(per_category=2, val=1), str(tmp_path / "cache")
    ds = build(root, cache)  # this process ran pymatting (OpenMP) just now
    pair = ds.pairs[0]
    stat = os.stat(pair.photo)
    os.utime(pair.photo, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))
    batches = list(DataLoader(ds, batch_size=1, num_workers=1, multiprocessing_context="fork"))
    assert len(batches) == len(ds) and [b["index"].item() for b in batches] == list(range(len(ds)))
    assert ds.cache.is_fresh(pair)


@pytest.mark.parametrize("peers, share", [(1, (1, 2)), (3, (3, 4))])
def test_a_node_local_cache_is_shared_among_the_nodes_processes(tmp_path, monkeypatch, peers, share):
    """Rank 3 of 4, local rank 1 of 2 (torchrun's env, mocked: no process group, no GPU).
    Its cache folder seen by its machine's other process only (a node-local copy): the
    machine's 2 processes split the photos, pairs[1::2], as no process of the other machine
    writes there; seen by all 4 (one shared folder): pairs[3::4], as before."""
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(fc, "get_world_size", lambda: 4)
    monkeypatch.setattr(fc, "get_rank", lambda: 3)
    monkeypatch.setattr(fc, "gather_objects", lambda obj: ["token"] * 4)
    cache = ForegroundCache(str(tmp_path / "cache"), estimator=lambda rgb, alpha: rgb)
    waits = []

    def wait_for_all(timeout, what=""):  # the other processes write their probes meanwhile
        if not waits:
            for rank in range(peers):
                open(os.path.join(cache.cache_dir, f".probe-token-{rank}"), "w").close()
        waits.append(what)
    monkeypatch.setattr(fc, "wait_for_all", wait_for_all)
    shares = []
    real_build = ForegroundCache.build
    monkeypatch.setattr(ForegroundCache, "build", lambda self, pairs, share=(0, 1), **kw:
                        shares.append(share) or real_build(self, pairs, share=share, **kw))
    pairs = []
    for i in range(5):
        photo, alpha = np.full((4, 4, 3), i, np.uint8), np.full((4, 4), 255, np.uint8)
        Image.fromarray(photo).save(tmp_path / f"p{i}.png")
        Image.fromarray(alpha).save(tmp_path / f"m{i}.png")
        pairs.append(Pair(str(tmp_path / f"p{i}.png"), str(tmp_path / f"m{i}.png"), f"p{i}.png"))
    assert fc.build_shared(cache, pairs, progress=False) == {}
    assert shares == [share, (0, 1)]  # its part, then after the barrier the whole list is checked
    assert all(cache.is_fresh(p) for p in pairs)
    assert not glob.glob(os.path.join(cache.cache_dir, ".probe-token-3"))  # its own probe removed
