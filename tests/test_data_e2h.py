"""Schedule, composite maths, trimap band, split rule and transforms, against hand computations."""
import numpy as np
import pytest

from data_loader import Augment, E2HSchedule, composite, eval_preset, in_split, split_bucket, train_preset, unknown_band
from data_loader.splits import stable_choice


def test_step_schedule_matches_the_seed():
    s = E2HSchedule("step", update_ratio_epoch=10)
    assert [s.ratio(e) for e in (0, 9, 10, 19, 20, 35, 99, 100, 250)] == [0.0, 0.0, 0.1, 0.1, 0.2, 0.3, 0.9, 1.0, 1.0]
    assert E2HSchedule("step", update_ratio_epoch=1).ratio(3) == 0.3


def test_linear_and_none_schedules():
    s = E2HSchedule("linear", ramp_epochs=4)
    assert [s.ratio(e) for e in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert E2HSchedule("none").ratio(0) == 1.0
    with pytest.raises(ValueError, match="cosine"):
        E2HSchedule("cosine")


def test_composite_against_hand_computation():
    fg = np.array([[[1.0, 0.5, 0.0], [0.2, 0.2, 0.2]]], np.float32)
    alpha = np.array([[0.25, 1.0]], np.float32)
    hard = np.array([[[0.0, 1.0, 0.4], [0.9, 0.9, 0.9]]], np.float32)
    easy = np.array([0.6, 0.2, 1.0], np.float32)  # a solid colour
    r = 0.3
    # pixel 0: 0.25 * fg + 0.75 * (0.3 * hard + 0.7 * easy)
    expected0 = [0.25 * 1.0 + 0.75 * (0.3 * 0.0 + 0.7 * 0.6),
                 0.25 * 0.5 + 0.75 * (0.3 * 1.0 + 0.7 * 0.2),
                 0.25 * 0.0 + 0.75 * (0.3 * 0.4 + 0.7 * 1.0)]
    out = composite(fg, alpha, hard, easy, r)
    assert out.dtype == np.float32 and out.shape == (1, 2, 3)
    np.testing.assert_allclose(out[0, 0], expected0, atol=1e-6)
    np.testing.assert_allclose(out[0, 1], [0.2, 0.2, 0.2], atol=1e-6)
    only_hard, only_easy = composite(fg, alpha, hard, easy, 1.0), composite(fg, alpha, None, easy, 0.0)
    np.testing.assert_allclose(only_hard[0, 0], 0.25 * fg[0, 0] + 0.75 * hard[0, 0], atol=1e-6)
    np.testing.assert_allclose(only_easy[0, 0], 0.25 * fg[0, 0] + 0.75 * easy, atol=1e-6)


def test_unknown_band_covers_fractional_pixels_plus_margin():
    alpha = np.zeros((21, 21), np.float32)
    alpha[:, 11:] = 1.0
    alpha[:, 10] = 0.5
    band = unknown_band(alpha, kernel_size=5)  # margin (5 - 1) / 2 = 2 px each side
    assert band.dtype == np.float32 and set(np.unique(band)) == {0.0, 1.0}
    np.testing.assert_array_equal(np.nonzero(band[10])[0], np.arange(8, 13))
    hard_edge = (np.arange(21)[None, :] >= 10).astype(np.float32).repeat(21, 0)
    assert unknown_band(hard_edge, 3)[10].sum() == 2  # a binary matte still gets a band
    assert unknown_band(np.ones((5, 5), np.float32), 9).sum() == 0


def test_split_is_a_stable_function_of_the_path():
    names = [f"cat/raw_image/{i:05d}.jpg" for i in range(2000)]
    train = {n for n in names if in_split(n, "train")}
    assert 0.86 < len(train) / len(names) < 0.94
    assert all(in_split(n, "val") != (n in train) for n in names)
    assert all(in_split(n, "test") == in_split(n, "val") for n in names[:50])
    assert split_bucket("a\\b.jpg") == split_bucket("a/b.jpg")
    with pytest.raises(ValueError, match="valid"):
        in_split("x", "valid")


def test_stable_choice_changes_only_when_a_new_candidate_wins():
    old = [f"background/{i}.jpg" for i in range(20)]
    new = old + [f"background/new{i}.jpg" for i in range(5)]
    for key in (f"photo{i}" for i in range(50)):
        before, after = stable_choice(key, old), stable_choice(key, new)
        assert after == before or after.startswith("background/new")


def test_transforms_move_image_and_alpha_together():
    h, w = 60, 90
    image = np.zeros((h, w, 3), np.uint8)
    image[:, :30] = 255
    alpha = (image[..., 0] / 255.0).astype(np.float32)
    rng = np.random.default_rng(0)
    t = train_preset(image_size=40, crop_size=32, augment=Augment(scale_range=(0.8, 1.3), color_jitter=0.0))
    for _ in range(20):
        out_image, out_alpha = t(image, alpha, rng)
        assert out_image.shape == (32, 32, 3) and out_alpha.shape == (32, 32) and out_alpha.dtype == np.float32
        np.testing.assert_allclose(out_image[..., 0] / 255.0, out_alpha, atol=2 / 255)
    out_image, out_alpha = eval_preset(40, 32)(image, alpha)
    assert out_image.shape == (32, 32, 3)
    np.testing.assert_array_equal(eval_preset(40, 32)(image, alpha)[0], out_image)


def test_colour_jitter_leaves_alpha_and_tiny_images_are_enlarged():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    alpha = rng.random((5, 7)).astype(np.float32)
    t = train_preset(image_size=40, crop_size=32, augment=Augment(color_jitter=0.4))
    out_image, out_alpha = t(image, alpha, rng)
    assert out_image.shape == (32, 32, 3) and out_image.dtype == np.uint8 and out_alpha.shape == (32, 32)
    assert 0.0 <= out_alpha.min() and out_alpha.max() <= 1.0


@pytest.mark.parametrize("easy", [0, 3])
def test_heldout_composites_at_any_ratio(make_paixin, easy):
    """load_full(i, ratio): r = 1 is the default composite; r = 0 puts the photo on its easy
    background (one solid colour without background_easy/); r = 0.5 is their mean; all fixed
    by the name and seed, the same from a second dataset object."""
    from data_loader import ForegroundDataset
    root = make_paixin(per_category=4, val=1, backgrounds=3, bg_val=1, easy=easy)
    ds, again = (ForegroundDataset(root, "val", seed=0, progress=False) for _ in range(2))
    for i in range(len(ds)):
        hard, alpha, name = ds.load_full(i)
        np.testing.assert_array_equal(ds.load_full(i, 1.0)[0], hard)
        easy0 = ds.load_full(i, 0.0)[0]
        np.testing.assert_array_equal(again.load_full(i, 0.0)[0], easy0)
        assert not np.array_equal(easy0, hard)
        if not easy:
            assert np.ptp(easy0[alpha == 0].reshape(-1, 3), axis=0).max() == 0
        half = ds.load_full(i, 0.5)[0].astype(np.float32)
        np.testing.assert_allclose(half, (hard.astype(np.float32) + easy0) / 2, atol=1.01)
