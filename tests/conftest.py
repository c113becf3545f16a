"""Shared fixtures: tiny synthetic datasets in both layouts, written to tmp_path."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from data_loader.splits import in_split
from model import build_model


def names_in_both_splits(pattern, count, val_count, key=lambda name: name):
    """``count`` names ``pattern.format(i)`` of which ``val_count`` fall in the val split."""
    val, train = [], []
    for i in range(10000):
        name = pattern.format(i)
        (val if in_split(key(name), "val") else train).append(name)
        if len(val) >= val_count and len(train) >= count - val_count:
            return sorted(val[:val_count] + train[:count - val_count])
    raise AssertionError("unreachable")


def blob(rng, h, w):
    """(photo uint8 (h,w,3), alpha uint8 (h,w)): a soft-edged disc on noise."""
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx, r = h * rng.uniform(0.4, 0.6), w * rng.uniform(0.4, 0.6), min(h, w) * rng.uniform(0.25, 0.35)
    dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    alpha = np.clip((r - dist) / 3.0 + 0.5, 0, 1)
    fg = np.array(rng.integers(0, 256, 3), np.float32)
    bg = rng.integers(0, 256, (h, w, 3)).astype(np.float32)
    photo = alpha[..., None] * fg + (1 - alpha[..., None]) * bg
    return photo.round().astype(np.uint8), (alpha * 255).round().astype(np.uint8)


def save(path, array, mode=None, **kwargs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array, mode).save(path, **kwargs)
    return path


@pytest.fixture
def make_aisegment(tmp_path):
    """make_aisegment(count=12, val=2, size=(40, 32)) -> root of an AISegment-layout dataset."""
    def make(count=12, val=2, size=(40, 32), root=None, seed=0):
        root = root or str(tmp_path / "AISegment")
        rng = np.random.default_rng(seed)
        names = names_in_both_splits("g1/clip_00000000/p{:04d}.jpg", count, val, key=lambda n: f"clip_img/{n}")
        for name in names:
            photo, alpha = blob(rng, size[0], size[1])
            save(os.path.join(root, "clip_img", name), photo, quality=95)
            matte = name.replace("clip_0", "matting_0").replace(".jpg", ".png")
            save(os.path.join(root, "matting", matte), np.dstack([photo, alpha]), "RGBA")
        return root
    return make


@pytest.fixture
def make_paixin(tmp_path):
    """make_paixin(per_category=6, val=1, backgrounds=4, bg_val=1, size=(40, 32), easy=0)
    -> root of a paixin_comp_mod-layout dataset with categories ``a`` and ``b``."""
    def make(per_category=6, val=1, backgrounds=4, bg_val=1, size=(40, 32), easy=0, root=None, seed=0):
        root = root or str(tmp_path / "paixin")
        rng = np.random.default_rng(seed)
        for category in ("a", "b"):
            names = names_in_both_splits(category + "/raw_image/p{:03d}.jpg", per_category, val)
            for name in names:
                photo, alpha = blob(rng, size[0], size[1])
                save(os.path.join(root, name), photo, quality=95)
                save(os.path.join(root, name.replace("raw_image", "mask_image").replace(".jpg", ".png")), alpha, "L")
        for folder, count, count_val in (("background", backgrounds, bg_val), ("background_easy", easy, min(easy, 1))):
            if count:
                for name in names_in_both_splits(folder + "/bg{:03d}.png", count, count_val):
                    save(os.path.join(root, name), rng.integers(0, 256, (size[0] + 8, size[1] + 8, 3), dtype=np.uint8))
        return root
    return make


@pytest.fixture(scope="module")
def one_thread():
    """One PyTorch thread for a module of small convolutions: on a shared 2-core machine two
    OpenMP threads can be ~50x slower than one. The setting is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Random-init U2NETP weights (seed 0) as a plain state_dict file; a module may define its own."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "u2netp.pth"
    torch.save(build_model("u2netp").state_dict(), path)
    return str(path)
