"""AISegmentDataset and ForegroundDataset: sample contents, determinism, splits, caps, bad inputs."""
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from data_loader import (AISegmentDataset, DatasetError, E2HSchedule, ForegroundDataset, IMAGENET_MEAN,
                         IMAGENET_STD)
from conftest import blob, save

SIZE = dict(image_size=32, crop_size=24)


def stage2(root, split="train", **kwargs):
    kwargs.setdefault("cache_dir", os.path.join(os.path.dirname(root), "cache"))
    return ForegroundDataset(root, split, progress=False, **SIZE, **kwargs)


def check_sample(sample, ratio, crop=24):
    assert set(sample) == {"image", "alpha", "unknown", "ratio", "index"}
    image, alpha, unknown = sample["image"], sample["alpha"], sample["unknown"]
    assert image.shape == (3, crop, crop) and alpha.shape == unknown.shape == (1, crop, crop)
    assert image.dtype == alpha.dtype == unknown.dtype == sample["ratio"].dtype == torch.float32
    rgb = image.numpy().transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    assert rgb.min() > -1e-4 and rgb.max() < 1 + 1e-4
    assert 0 <= alpha.min() and alpha.max() <= 1 and 0 < alpha.mean() < 1
    assert set(torch.unique(unknown).tolist()) <= {0.0, 1.0} and unknown.sum() > 0
    assert sample["ratio"].shape == () and sample["ratio"].item() == pytest.approx(ratio)
    assert isinstance(sample["index"], int)


def test_stage1_samples(make_aisegment):
    ds = AISegmentDataset(make_aisegment(), "train", **SIZE)
    assert len(ds) == 10 and ds.names[0].startswith("clip_img/g1/clip_00000000/")
    check_sample(ds[3], 1.0)
    rgb, alpha, name = ds.load_full(0)
    assert rgb.dtype == np.uint8 and rgb.shape == (40, 32, 3) and alpha.dtype == np.float32 and alpha.shape == (40, 32)
    assert name == ds.names[0]


def test_stage2_samples_follow_the_schedule(make_paixin):
    ds = stage2(make_paixin(), schedule=E2HSchedule("step", update_ratio_epoch=10))
    assert len(ds) == 10 and len(ds.hard) == 3 and ds.easy == []
    for epoch, ratio in ((0, 0.0), (15, 0.1), (57, 0.5), (200, 1.0)):
        ds.set_epoch(epoch)
        check_sample(ds[epoch % len(ds)], ratio)


def test_sample_is_reproducible_at_an_epoch(make_paixin):
    root = make_paixin()
    ds, again = stage2(root, schedule="linear"), stage2(root, schedule="linear")
    ds.set_epoch(30)
    again.set_epoch(30)
    a, b = ds[4], again[4]
    for key in ("image", "alpha", "unknown", "ratio"):
        assert torch.equal(a[key], b[key])
    ds.set_epoch(31)
    assert not torch.equal(ds[4]["image"], a["image"])


def test_validation_is_deterministic_with_ratio_one(make_paixin, make_aisegment):
    root = make_paixin()
    val, val_again = stage2(root, "val"), stage2(root, "val")
    assert not val.training and len(val) == 2
    val.set_epoch(3)
    for i in range(len(val)):
        rgb, alpha, name = val.load_full(i)
        rgb2, alpha2, name2 = val_again.load_full(i)
        assert rgb.dtype == np.uint8 and rgb.shape == (40, 32, 3) and name == name2 == val.names[i]
        np.testing.assert_array_equal(rgb, rgb2)
        np.testing.assert_array_equal(alpha, alpha2)
        check_sample(val[i], 1.0)
        assert torch.equal(val[i]["image"], val_again[i]["image"])
    stage1 = AISegmentDataset(make_aisegment(), "val", **SIZE)
    assert torch.equal(stage1[0]["image"], stage1[0]["image"])


def test_splits_stay_put_when_files_are_added(make_paixin, tmp_path):
    root = make_paixin(per_category=6)
    before = {split: set(stage2(root, split).names) for split in ("train", "val")}
    make_paixin(per_category=14, root=root, seed=1)  # rewrites the old files, adds new ones
    after = {split: set(stage2(root, split).names) for split in ("train", "val")}
    assert before["train"] <= after["train"] and before["val"] <= after["val"]
    assert not after["train"] & after["val"]


def test_caps_take_the_first_files_of_the_split(make_paixin):
    root = make_paixin()
    full = stage2(root)
    capped = stage2(root, image_num=3, background_num=2)
    assert capped.names == sorted(full.names)[:3] and capped.hard == full.hard[:2]


def test_missing_mattes_are_counted_in_one_warning(make_aisegment):
    root = make_aisegment()
    names = AISegmentDataset(root, "train", **SIZE).names
    for name in names[:2]:
        os.remove(os.path.join(root, name.replace("clip_img", "matting").replace("clip_0", "matting_0")
                               .replace(".jpg", ".png")))
    with pytest.warns(UserWarning) as record:
        ds = AISegmentDataset(root, "train", **SIZE)
    assert len(record) == 1 and "skipped 2" in str(record[0].message) and "2 missing matte" in str(record[0].message)
    assert ds.names == names[2:]


def test_bad_files_are_skipped_at_index_time(make_aisegment):
    root = make_aisegment()
    names = AISegmentDataset(root, "train", **SIZE).names
    photo = [os.path.join(root, n) for n in names]

    def matte(i):
        return photo[i].replace("clip_img", "matting").replace("clip_0", "matting_0").replace(".jpg", ".png")
    open(photo[0], "wb").close()                                                # zero-byte photo
    with open(photo[1], "w") as f:
        f.write("not an image")                                                 # not an image
    save(matte(2), np.zeros((20, 32, 4), np.uint8), "RGBA")                     # size mismatch
    save(matte(3), np.zeros((40, 32, 3), np.uint8))                             # no alpha channel
    with pytest.warns(UserWarning) as record:
        ds = AISegmentDataset(root, "train", **SIZE)
    message = str(record[0].message)
    assert len(record) == 1 and "skipped 4" in message
    for reason in ("2 unreadable photo", "1 photo/matte size mismatch", "1 matte without alpha channel"):
        assert reason in message
    assert ds.names == names[4:]


def test_odd_image_kinds_are_used(make_paixin):
    root = make_paixin(per_category=3, val=1)
    rng = np.random.default_rng(5)
    photo, alpha = blob(rng, 40, 32)
    raw, mask = os.path.join(root, "a", "raw_image"), os.path.join(root, "a", "mask_image")
    variants = {
        "gray.png": (Image.fromarray(photo[..., 0], "L"), Image.fromarray(alpha, "L")),
        "rgba.png": (Image.fromarray(np.dstack([photo, alpha]), "RGBA"), Image.fromarray(alpha, "L").quantize(64)),
        "cmyk.jpg": (Image.fromarray(photo).convert("CMYK"), Image.fromarray(alpha.astype(np.uint16) * 257)),
    }
    for name, (p, m) in variants.items():
        p.save(os.path.join(raw, name))
        m.save(os.path.join(mask, os.path.splitext(name)[0] + ".png"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = stage2(root, "all")
    assert len(ds) == 9
    ds.set_epoch(100)
    for i in range(len(ds)):
        check_sample(ds[i], 1.0)


def test_exif_rotated_photo_pairs_with_its_displayed_matte(make_aisegment):
    root = make_aisegment(count=4, val=1)
    photo, alpha = blob(np.random.default_rng(2), 40, 32)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = np.ascontiguousarray(np.rot90(photo, 1))  # displayed after a 90 degree clockwise turn
    save(os.path.join(root, "clip_img/g1/clip_00000000/rot.jpg"), stored, quality=100, subsampling=0, exif=exif)
    save(os.path.join(root, "matting/g1/matting_00000000/rot.png"), np.dstack([photo, alpha]), "RGBA")
    ds = AISegmentDataset(root, "all", **SIZE)
    i = ds.names.index("clip_img/g1/clip_00000000/rot.jpg")
    rgb, matte, _ = ds.load_full(i)
    assert rgb.shape == (40, 32, 3) and matte.shape == (40, 32)
    assert np.abs(rgb.astype(int) - photo).mean() < 6
    check_sample(ds[i], 1.0)


def test_tiny_images_are_enlarged(make_paixin, make_aisegment):
    ds = stage2(make_paixin(size=(6, 5)))
    check_sample(ds[0], 0.0)
    check_sample(AISegmentDataset(make_aisegment(size=(7, 9)), "train", **SIZE)[0], 1.0)


def test_empty_or_missing_folders_are_clear_errors(tmp_path, make_paixin):
    with pytest.raises(DatasetError, match="nowhere"):
        AISegmentDataset(tmp_path / "nowhere", "train")
    os.makedirs(tmp_path / "ais" / "clip_img")
    with pytest.raises(DatasetError, match="matting"):
        AISegmentDataset(tmp_path / "ais", "train")
    os.makedirs(tmp_path / "ais" / "matting")
    with pytest.raises(DatasetError, match="no images found in .*clip_img"):
        AISegmentDataset(tmp_path / "ais", "train")
    os.makedirs(tmp_path / "px" / "background")
    with pytest.raises(DatasetError, match="no images in .*background"):
        stage2(str(tmp_path / "px"))
    save(str(tmp_path / "px" / "background" / "b.png"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DatasetError, match="no category folder"):
        stage2(str(tmp_path / "px"))
    root = make_paixin()
    for dirpath, _, files in os.walk(os.path.join(root, "a", "mask_image")):
        for f in files:
            os.remove(os.path.join(dirpath, f))
    for dirpath, _, files in os.walk(os.path.join(root, "b", "mask_image")):
        for f in files:
            os.remove(os.path.join(dirpath, f))
    with pytest.raises(DatasetError, match="no usable photo/mask pairs.*missing matte"):
        stage2(root)


def test_file_broken_after_indexing_is_replaced_with_one_warning(make_aisegment):
    root = make_aisegment()
    ds = AISegmentDataset(root, "train", **SIZE)
    path = os.path.join(root, ds.names[0])
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 3])
    with pytest.warns(UserWarning, match="skipping"):
        sample = ds[0]
    assert sample["index"] != 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ds[0]["index"] == sample["index"]  # same substitute, no new warning
    for name in ds.names:
        open(os.path.join(root, name), "wb").close()
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="failed to load in a row"):
        ds[1]  # bounded: no endless retry


def test_broken_background_is_avoided(make_paixin):
    root = make_paixin(backgrounds=3, bg_val=1)
    ds = stage2(root)
    ds.set_epoch(1000)
    for name in ds.hard[:-1]:
        open(os.path.join(root, name), "wb").close()
    with pytest.warns(UserWarning, match="other backgrounds"):
        for i in range(len(ds)):
            check_sample(ds[i], 1.0)


def test_easy_background_folder_is_used(make_paixin):
    ds = stage2(make_paixin(easy=3))
    assert len(ds.easy) >= 1 and all(n.startswith("background_easy/") for n in ds.easy)
    check_sample(ds[0], 0.0)
    ds.set_epoch(50)
    check_sample(ds[1], 0.5)


def test_optional_augmentations(make_paixin, make_aisegment):
    from data_loader import Augment
    augment = Augment(flip=True, scale_range=(0.8, 1.5), color_jitter=0.3)
    ds = stage2(make_paixin(), augment=augment)
    assert ds.cache.work_short_side == 48  # the training copy covers the largest scale
    ds.set_epoch(40)
    for i in range(3):
        check_sample(ds[i], 0.4)
    check_sample(AISegmentDataset(make_aisegment(), "train", augment=augment, **SIZE)[0], 1.0)


def test_rgba_and_la_mattes_give_their_alpha_band(make_paixin):
    """A stage-2 matte saved as RGBA or LA: its alpha band (the seed took the last channel),
    not the luminance of its colours (white here, which read as an all-1 alpha)."""
    root = make_paixin(per_category=2, val=1)
    ds = stage2(root, "all")
    want = {ds.names[i]: ds.load_full(i)[1] for i in range(len(ds))}
    for i, pair in enumerate(ds.pairs[:2]):
        alpha = np.asarray(Image.open(pair.mask))
        white = np.full_like(alpha, 255)
        image = (Image.fromarray(np.dstack([white, white, white, alpha]), "RGBA") if i == 0
                 else Image.fromarray(np.dstack([white, alpha]), "LA"))
        image.save(pair.mask)
    ds = stage2(root, "all")
    assert [p.alpha_channel for p in ds.pairs[:2]] == [3, 3] and ds.pairs[2].alpha_channel is None
    for i in range(len(ds)):
        np.testing.assert_array_equal(ds.load_full(i)[1], want[ds.names[i]])
        fg, alpha = ds.cache.load_work(ds.pairs[i])
        assert abs(alpha.mean() - want[ds.names[i]].mean()) < 0.02


def test_a_photo_pymatting_cannot_process_is_skipped_by_name(make_paixin):
    """A 1x1 photo (pymatting's estimate_foreground_ml raises ZeroDivisionError on it) is that
    photo's failure alone: skipped with a warning naming it; the others train."""
    root = make_paixin(per_category=3, val=1)
    save(os.path.join(root, "a", "raw_image", "dot.png"), np.full((1, 1, 3), 200, np.uint8))
    save(os.path.join(root, "a", "mask_image", "dot.png"), np.full((1, 1), 128, np.uint8), "L")
    with pytest.warns(UserWarning, match=r"foreground estimation failed, e\.g\. a/raw_image/dot\.png .*ZeroDivisionError"):
        ds = stage2(root, "all")
    assert len(ds) == 6 and "a/raw_image/dot.png" not in ds.names


def test_a_matte_without_its_photo_is_warned(make_paixin, make_aisegment):
    root = make_paixin(per_category=2, val=1)
    save(os.path.join(root, "b", "mask_image", "lost.png"), np.zeros((40, 32), np.uint8), "L")
    with pytest.warns(UserWarning, match=r"1 matte without its photo, e\.g\. b/mask_image/lost\.png"):
        stage2(root, "all")
    root = make_aisegment(count=3, val=1)
    save(os.path.join(root, "matting", "g1", "matting_00000000", "lost.png"), np.zeros((40, 32, 4), np.uint8), "RGBA")
    with pytest.warns(UserWarning, match=r"matte without its photo, e\.g\. matting/g1/matting_00000000/lost\.png"):
        AISegmentDataset(root, "all", **SIZE)


def test_easy_background_num_caps_the_easy_backgrounds(make_paixin):
    root = make_paixin(per_category=2, val=1, backgrounds=3, bg_val=0, easy=3)
    assert (len(stage2(root, "all").easy), len(stage2(root, "all", background_num=1).easy)) == (3, 1)
    ds = stage2(root, "all", background_num=1, easy_background_num=2)
    assert (len(ds.hard), len(ds.easy)) == (1, 2)


def test_the_training_set_record_names_what_changed(make_paixin):
    from data_loader.indexing import training_set_changes, training_set_record
    root = make_paixin(per_category=3, val=1)
    pairs = stage2(root, "all").pairs
    record = training_set_record(pairs)
    assert record["count"] == 6 and training_set_changes(record, training_set_record(pairs)) == (None, 0)
    os.utime(pairs[0].photo, ns=(1, 1))
    assert training_set_changes(record, training_set_record(pairs)) == (None, 1)
    with open(pairs[1].mask, "ab") as f:
        f.write(b"\0")
    changed, _ = training_set_changes(record, training_set_record(pairs[1:]))  # pairs[0] gone
    assert changed == f"1 removed (e.g. {pairs[0].name}); 1 changed in size (e.g. {pairs[1].name})"


def test_image_and_alpha_are_each_resized_by_the_rule_of_their_own_size():
    """A JPEG decoded at reduced size (draft) arrives smaller than its full-resolution alpha:
    the alpha must shrink with the area filter its own factor calls for, not the photo's."""
    import cv2

    from data_loader.transforms import RescaleShortSide
    rng = np.random.default_rng(0)
    alpha = (rng.random((400, 300)) > 0.5).astype(np.float32)  # full resolution, sharp edges
    image = rng.integers(0, 256, (200, 150, 3), dtype=np.uint8)  # the photo decoded at 1/2
    out_image, out_alpha = RescaleShortSide(128)(image, alpha)
    assert out_image.shape == (171, 128, 3) and out_alpha.shape == (171, 128)
    np.testing.assert_array_equal(out_alpha, cv2.resize(alpha, (128, 171), interpolation=cv2.INTER_AREA))
    np.testing.assert_array_equal(out_image, cv2.resize(image, (128, 171), interpolation=cv2.INTER_LINEAR))
