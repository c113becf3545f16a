"""utils/inference/core.py (Matter, MatteOptions, stream) and the per-photo failures of the
scripts built on it: one photo's fault is that photo's alone, a broken model is the model's.

Tiny random U2NETP weights (conftest.py) at a 64 px network input.
"""
import os
import threading

import numpy as np
import pytest
import torch
from PIL import Image

import apply
import make_dataset
import test_stage2
from data_loader.image_io import read_rgb
from model import build_model, load_model
from utils.arrays import unit_to_uint8
from utils.inference.core import MatteOptions, Matter, ModelOutputError, predict_alphas
from utils.inference.files import collect_inputs
from utils.inference.refine import RefineOptions

pytestmark = pytest.mark.usefixtures("one_thread")


def photo(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path, array, mode=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array, mode).save(path)
    return str(path)


@pytest.fixture(scope="module")
def net(weights):
    return load_model(weights)


# ---------------------------------------------------------------- options and the network
@pytest.mark.parametrize("field, value, message", [
    ("size", 8, "size must be an integer in"), ("size", 10 ** 6, "size must be an integer in"),
    ("resize", "crop", "resize must be one of"), ("precision", "int4", "precision must be one of"),
    ("batch_size", 0, "batch_size must be an integer >= 1"), ("workers", -1, "workers must be"),
])
def test_options_are_checked_when_made(field, value, message):
    with pytest.raises(ValueError, match=message):
        MatteOptions(**{field: value})


def test_refine_options_name_the_bad_option():
    with pytest.raises(ValueError, match="no option"):
        RefineOptions("guided", {"radious": 3})
    with pytest.raises(ValueError, match="refine method must be one of"):
        RefineOptions("magic")
    assert RefineOptions("guided", {"radius": 2}).resolved["radius"] == 2


def test_the_callers_model_is_not_changed(net):
    keys = list(net.state_dict())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    Matter(net, MatteOptions(size=64)).predict([photo(40, 30)])
    assert list(net.state_dict()) == keys
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_a_new_matter_sees_changed_batchnorm_statistics(net):
    """What the old hidden cache missed: running statistics change without bumping versions."""
    model = load_model(net) if isinstance(net, str) else __import__("copy").deepcopy(net)
    image = photo(40, 40)
    before = Matter(model, MatteOptions(size=64)).predict([image])[0]
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.add_(0.5)  # as a training step's statistics update
    after = Matter(model, MatteOptions(size=64)).predict([image])[0]
    assert np.abs(after - before).max() > 1e-3


def test_coarse_batches_equal_shapes_and_gives_network_resolution(net):
    matter = Matter(net, MatteOptions(size=64, resize="short_side", batch_size=4))
    calls = []
    run = matter._run
    matter._run = lambda batch: calls.append(batch.shape) or run(batch)
    coarse = matter.coarse([photo(64, 32), photo(64, 32, 1), photo(32, 64, 2)])
    assert [c.shape for c in coarse] == [(128, 64), (128, 64), (64, 128)]
    assert calls == [(2, 3, 128, 64), (1, 3, 64, 128)]


def test_nan_weights_are_the_models_fault(weights, tmp_path):
    model = build_model("u2netp")
    model.load_state_dict(torch.load(weights))
    with torch.no_grad():
        model.outconv.bias.fill_(float("nan"))
    with pytest.raises(ModelOutputError, match="NaN"):
        Matter(model, MatteOptions(size=64)).predict([photo(20, 20)])
    path = tmp_path / "nan.pth"
    torch.save(model.state_dict(), path)
    save(tmp_path / "in" / "a.png", photo(30, 30))
    code = apply.main(["--model", str(path), "--quiet", "--size", "64", "--refine", "none",
                       "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")])
    assert code == 1 and not os.path.exists(tmp_path / "out" / "alpha" / "a.png")


# ---------------------------------------------------------------- the stream
def test_stream_keeps_the_order_isolates_failures_and_calls_adjust_in_order(net):
    images = {i: photo(30 + i, 40, i) for i in range(7)}

    def load(i):
        if i == 3:
            raise ValueError("unreadable: 3.png")
        if i == 5:
            raise ZeroDivisionError("a library's own bug")
        return images[i]
    seen = []

    def adjust(item, image, coarse):
        seen.append((item, threading.current_thread().name))
        return np.clip(coarse + 0.25, 0, 1)
    matter = Matter(net, MatteOptions(size=64, batch_size=2, workers=2))
    results = list(matter.stream(range(7), load, adjust))
    assert [r.item for r in results] == list(range(7))
    assert results[3].error == "unreadable: 3.png" and results[3].alpha is None
    assert results[5].error == "ZeroDivisionError: a library's own bug"
    assert [item for item, _ in seen] == [0, 1, 2, 4, 6] and len({name for _, name in seen}) == 1
    plain = matter.predict([images[i] for i in (0, 1, 2, 4, 6)])
    for r, alpha in zip([results[i] for i in (0, 1, 2, 4, 6)], plain):
        assert r.alpha.shape == r.image.shape[:2]
        assert r.alpha.mean() > alpha.mean() + 0.1  # the adjusted coarse alpha was refined


def test_stream_of_decoded_frames_matches_predict_exactly(net):
    frames = [photo(36, 48, i) for i in range(5)]
    matter = Matter(net, MatteOptions(size=64, batch_size=1, refine=RefineOptions("guided")))
    streamed = [r.alpha for r in matter.stream(frames, load=lambda frame: frame)]
    for a, b in zip(streamed, matter.predict(frames)):
        np.testing.assert_array_equal(a, b)


def test_stream_stops_cleanly_when_the_caller_leaves_early(net):
    loaded = []

    def load(i):
        loaded.append(i)
        return photo(20, 20, i)
    stream = Matter(net, MatteOptions(size=64, workers=1)).stream(range(1000), load)
    assert next(stream).item == 0
    stream.close()  # the producer thread ends; nothing like 1000 photos were decoded
    assert len(loaded) < 20


def test_a_network_failure_ends_the_stream_with_that_error(net):
    matter = Matter(net, MatteOptions(size=64))

    def broken(batch):
        raise RuntimeError("CUDA out of memory")
    matter._run = broken
    with pytest.raises(RuntimeError, match="out of memory"):
        list(matter.stream(range(3), lambda i: photo(20, 20)))


# ---------------------------------------------------------------- one path, the same bytes
def test_apply_make_dataset_and_test_stage2_write_the_same_alphas(weights, tmp_path):
    photos = [save(tmp_path / "in" / f"p{i}.png", photo(50 + 7 * i, 40, i)) for i in range(3)]
    assert apply.main(["--model", weights, "--quiet", "--size", "64", "--refine", "guided", "--outputs", "alpha",
                       "--input", str(tmp_path / "in"), "--output", str(tmp_path / "apply")]) == 0
    assert make_dataset.main(["--model", weights, "--quiet", "--size", "64", "--refine", "guided",
                              "--min-foreground", "0", "--max-uncertain", "1",
                              "--input", str(tmp_path / "in"), "--output", str(tmp_path / "ds")]) == 0
    truth = tmp_path / "truth"
    for p in photos:
        save(truth / os.path.basename(p), np.zeros(read_rgb(p).shape[:2], np.uint8), "L")
    out = test_stage2.main(["--images", str(tmp_path / "in"), "--alphas", str(truth), "--save-predictions",
                            "--output", str(tmp_path / "test"), "--set", f"model_path={os.path.dirname(weights)}",
                            "--set", f"pth_name={os.path.basename(weights)}", "--set", "image_size=64",
                            "--set", "refine=guided", "--set", "batch_size=1", "--set", "dataloader.num_worker=0"])
    expected = predict_alphas(load_model(weights), [read_rgb(p) for p in photos], size=64, batch_size=1,
                              refine="guided")
    for p, alpha in zip(photos, expected):
        name = os.path.basename(p)
        want = unit_to_uint8(alpha)
        np.testing.assert_array_equal(np.array(Image.open(tmp_path / "apply" / "alpha" / name)), want)
        np.testing.assert_array_equal(np.array(Image.open(tmp_path / "ds" / "portrait" / "mask_image" / name)), want)
        np.testing.assert_array_equal(np.array(Image.open(os.path.join(out, "predictions", name))), want)


# ---------------------------------------------------------------- defects (one photo, one failure)
def test_a_one_pixel_photo_fails_alone_in_apply_and_make_dataset(weights, tmp_path):
    save(tmp_path / "in" / "a.png", photo(40, 30))
    save(tmp_path / "in" / "dot.png", photo(1, 1))
    save(tmp_path / "in" / "z.png", photo(30, 40, 1))
    code = apply.main(["--model", weights, "--quiet", "--size", "64", "--outputs", "alpha,cutout",
                       "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")])
    assert code == 0  # a 1x1 cut-out is its own colour: nothing to estimate
    assert sorted(os.listdir(tmp_path / "out" / "cutout")) == ["a.png", "dot.png", "z.png"]
    args = ["--model", weights, "--quiet", "--size", "64", "--min-foreground", "0", "--max-uncertain", "1",
            "--input", str(tmp_path / "in"), "--output", str(tmp_path / "ds")]
    for _ in range(2):  # and again: nothing left behind that breaks a rerun
        assert make_dataset.main(args) in (0, 1)
        photos = sorted(os.listdir(tmp_path / "ds" / "portrait" / "raw_image"))
        masks = sorted(os.listdir(tmp_path / "ds" / "portrait" / "mask_image"))
        assert {"a.png", "z.png"} <= set(photos) and photos == masks  # no photo without its mask (an orphan)


def test_the_same_file_twice_is_no_problem(tmp_path):
    path = save(tmp_path / "a.png", photo(10, 10))
    files, problems = collect_inputs([path, path])
    assert [f.path for f in files] == [path] and problems == []


def test_an_unreadable_sub_folder_is_reported(tmp_path, monkeypatch):
    save(tmp_path / "in" / "a.png", photo(10, 10))
    real_walk = os.walk

    def walk(top, onerror=None, **kwargs):  # as os.walk does for a folder it cannot list
        yield from real_walk(top, onerror=onerror, **kwargs)
        onerror(PermissionError(13, "Permission denied", os.path.join(top, "locked")))
    monkeypatch.setattr(os, "walk", walk)
    files, problems = collect_inputs([str(tmp_path / "in")], recursive=True)
    assert len(files) == 1
    assert problems == [(os.path.join(str(tmp_path / "in"), "locked"), "cannot list the folder (Permission denied)")]


def test_a_killed_writers_temporary_is_removed_and_an_empty_output_redone(weights, tmp_path):
    save(tmp_path / "in" / "a.png", photo(30, 30))
    alpha_dir = tmp_path / "out" / "alpha"
    alpha_dir.mkdir(parents=True)
    stale = alpha_dir / ".a.png.999999999.1.tmp"  # no such process
    stale.write_bytes(b"half a png")
    (alpha_dir / "a.png").write_bytes(b"")
    code = apply.main(["--model", weights, "--quiet", "--size", "64", "--outputs", "alpha", "--refine", "none",
                       "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")])
    assert code == 0 and not stale.exists()
    assert np.array(Image.open(alpha_dir / "a.png")).shape == (30, 30)


def test_a_name_that_is_not_utf8_fails_by_name_in_make_dataset(weights, tmp_path, capsys):
    folder = tmp_path / "in"
    save(folder / "good.png", photo(30, 30))
    bad = os.path.join(os.fsencode(str(folder)), b"bad\xff.png")
    Image.fromarray(photo(30, 30)).save(os.fsdecode(bad), format="PNG")
    args = ["--model", weights, "--quiet", "--size", "64", "--min-foreground", "0", "--max-uncertain", "1",
            "--input", str(folder), "--output", str(tmp_path / "ds")]
    for _ in range(2):  # and the same on a rerun
        assert make_dataset.main(args) == 1
        err = capsys.readouterr().err
        assert "bad\\xff.png" in err and "not valid UTF-8" in err
    assert os.listdir(tmp_path / "ds" / "portrait" / "raw_image") == ["good.png"]


def test_large_photos_estimate_foreground_colours_in_strips(monkeypatch):
    from utils.inference import cutout
    rng = np.random.default_rng(0)
    h, w = 240, 120
    yy, xx = np.mgrid[0:h, 0:w]  # a photo's smooth colours, a little noise
    image = np.clip(np.dstack([xx * 2, yy, 255 - yy]) + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)
    alpha = np.zeros((h, w), np.float32)
    alpha[150:200] = np.clip((xx[150:200] - 50) / 20, 0, 1)  # an edge, with sure pixels beside it, in one part only
    alpha[200:] = 1.0
    whole = cutout.estimate_foreground_colours(image, alpha)
    monkeypatch.setattr(cutout, "WHOLE_PIXELS", 1000)
    monkeypatch.setattr(cutout, "STRIP_PIXELS", 60 * w)
    monkeypatch.setattr(cutout, "STRIP_OVERLAP", 30)
    strips = cutout.estimate_foreground_colours(image, alpha)
    assert strips.shape == (h, w, 3) and strips.dtype == np.float32
    np.testing.assert_array_equal(strips[:60], image[:60] / np.float32(255))  # an all-0 strip: the photo's own
    mixed = (alpha > 0) & (alpha < 1)  # what a cut-out shows of them: alpha * colour
    shown = np.abs(strips[mixed] - whole[mixed]) * alpha[mixed][:, None]
    assert shown.mean() < 3 / 255


def test_make_dataset_removes_what_is_left_out_on_a_rerun_and_names_bad_backgrounds(weights, tmp_path, capsys):
    save(tmp_path / "in" / "a.png", photo(30, 30))
    backgrounds = tmp_path / "bg"
    save(backgrounds / "good.png", photo(40, 40, 3))
    (backgrounds / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    args = ["--model", weights, "--quiet", "--size", "64", "--input", str(tmp_path / "in"),
            "--output", str(tmp_path / "ds"), "--backgrounds", str(backgrounds)]
    assert make_dataset.main(args + ["--min-foreground", "0", "--max-uncertain", "1"]) == 1  # the broken background
    assert "broken.jpg" in capsys.readouterr().err
    assert os.listdir(tmp_path / "ds" / "portrait" / "raw_image") == ["a.png"]
    # the same photo judged again, stricter: left out, and its old files must not stay for training
    make_dataset.main(args + ["--overwrite", "--min-foreground", "1", "--max-uncertain", "0"])
    assert os.listdir(tmp_path / "ds" / "portrait" / "raw_image") == []
    assert os.listdir(tmp_path / "ds" / "portrait" / "mask_image") == []


@pytest.mark.parametrize("script", [apply, make_dataset])
@pytest.mark.parametrize("flag", ["--size", "--batch-size", "--workers", "--max-pixels"])
def test_zero_is_an_error_not_the_default(script, flag, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        script.parse_args(["--input", str(tmp_path), "--output", str(tmp_path / "out"), flag, "0"])
    assert stop.value.code == 2 and "must be >= 1, got 0" in capsys.readouterr().err
