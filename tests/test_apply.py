"""apply.py, utils/inference/files.py and utils/inference/cutout.py: outputs, names, bad inputs, overwrite, exit status, no model.

Tiny random U2NETP weights and small photos; apply.main runs in-process (one subprocess test
checks the exit status of the real command).
"""
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

import apply
from data_loader.image_io import read_rgb
from model import load_model
from utils.inference.cutout import (alpha_to_uint8, composite_over, cutout_rgba, estimate_foreground_colours,
                                    fit_background, parse_background)
from utils.inference.files import collect_inputs
from utils.inference.core import predict_alphas
from utils.runs import find_newest_weights

SIZE = ["--size", "64"]  # a small network input keeps the tests fast


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one PyTorch thread for tiny networks


def photo(h, w, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), np.full((h, w), 128)], axis=2)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def save(path, array, mode=None, **kwargs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array, mode).save(path, **kwargs)
    return str(path)


def read_png(path):
    return np.array(Image.open(path))


def run(weights, *args):
    return apply.main(["--model", weights, "--quiet", *SIZE, *map(str, args)])


def test_outputs_have_the_inputs_sizes_and_the_inference_functions_alpha(tmp_path, weights):
    paths = [save(tmp_path / "in" / "a.jpg", photo(48, 40), quality=95),
             save(tmp_path / "in" / "b.png", photo(30, 70, 1))]
    out = tmp_path / "out"
    assert run(weights, "--input", tmp_path / "in", "--output", out, "--outputs", "alpha,cutout,composite",
               "--background", "#00ff00") == 0
    expected = predict_alphas(load_model(weights), [read_rgb(p) for p in paths], size=64, batch_size=1,
                              refine=apply.DEFAULT_REFINE)
    for path, alpha in zip(paths, expected):
        stem = os.path.splitext(os.path.basename(path))[0]
        h, w = read_rgb(path).shape[:2]
        written = read_png(out / "alpha" / f"{stem}.png")
        assert written.shape == (h, w) and written.dtype == np.uint8
        # rounded to nearest, computed here without alpha_to_uint8 (a floor there would fail):
        # equal but where alpha * 255 is within float32 noise of a tie (x.5)
        scaled = np.clip(alpha.astype(np.float64), 0, 1) * 255
        nearest = np.floor(scaled + 0.5)
        tie = np.abs(scaled - np.floor(scaled) - 0.5) < 1e-3
        assert np.array_equal(written[~tie], nearest[~tie]) and np.abs(written[tie] - nearest[tie]).max(initial=0) <= 1
        assert (np.floor(scaled) != nearest).mean() > 0.1  # the check can tell rounding from a floor
        cut = read_png(out / "cutout" / f"{stem}.png")
        assert cut.shape == (h, w, 4)
        np.testing.assert_array_equal(cut[..., 3], written)
        assert read_png(out / "composite" / f"{stem}.png").shape == (h, w, 3)


def test_network_size_defaults_to_the_training_runs_own(tmp_path, weights):
    """No --size: the image_size in the settings.json of the weights' run folder, else 320."""
    path = save(tmp_path / "in" / "a.png", photo(50, 40))
    run_dir = tmp_path / "run"
    (run_dir / "model").mkdir(parents=True)
    shutil.copyfile(weights, run_dir / "model" / "best.pth")
    (run_dir / "settings.json").write_text(json.dumps({"image_size": 96}))
    net = load_model(weights)

    def written(name, model):
        out = tmp_path / name
        assert apply.main(["--model", str(model), "--quiet", "--input", str(path), "--output", str(out),
                           "--outputs", "alpha", "--refine", "none"]) == 0
        return read_png(out / "alpha" / "a.png")

    def expected(size):
        (alpha,) = predict_alphas(net, [read_rgb(path)], size=size, refine="none")
        return alpha_to_uint8(alpha)

    np.testing.assert_array_equal(written("from_run", run_dir / "model" / "best.pth"), expected(96))
    assert not np.array_equal(expected(96), expected(320))
    np.testing.assert_array_equal(written("plain_file", weights), expected(320))  # no run folder: 320


def test_cutout_colours_are_closer_to_the_true_foreground_than_the_composite():
    rng = np.random.default_rng(0)
    h, w = 64, 64
    yy, xx = np.mgrid[0:h, 0:w]
    alpha = np.clip((20 - np.hypot(yy - 32, xx - 32)) / 8 + 0.5, 0, 1).astype(np.float32)  # wide soft edge
    fg = np.broadcast_to(np.array([0.9, 0.7, 0.2], np.float32), (h, w, 3))
    bg = np.zeros((h, w, 3), np.float32)
    bg[:, : w // 2] = [0.0, 0.0, 1.0]
    bg[:, w // 2:] = [0.0, 1.0, 0.0]
    bg += rng.normal(0, 0.02, bg.shape).astype(np.float32)
    image = alpha_to_uint8(alpha[..., None] * fg + (1 - alpha[..., None]) * bg)
    edge = (alpha > 0.05) & (alpha < 0.95)
    estimated = estimate_foreground_colours(image, alpha)
    cut = cutout_rgba(estimated, alpha)
    error_cutout = np.abs(cut[..., :3][edge] / 255.0 - fg[edge]).mean()
    error_composite = np.abs(image[edge] / 255.0 - fg[edge]).mean()
    assert error_cutout < 0.5 * error_composite
    np.testing.assert_array_equal(cut[..., 3], alpha_to_uint8(alpha))
    # composite: alpha * F + (1 - alpha) * B, over a colour and over an image fitted to the photo
    white = fit_background(parse_background("#ffffff"), h, w)
    over = composite_over(estimated, alpha, white)
    assert over.shape == (h, w, 3) and over[0, 0].tolist() == [255, 255, 255]
    wide = fit_background(np.zeros((10, 30, 3), np.uint8), h, w)
    assert wide.shape == (h, w, 3)


def test_bad_and_unusual_inputs(tmp_path, weights, capsys):
    d = tmp_path / "in"
    good = {
        "gray.png": save(d / "gray.png", photo(33, 27)[..., 0], "L"),
        "rgba.png": save(d / "rgba.png", np.dstack([photo(25, 35), np.zeros((25, 35), np.uint8)]), "RGBA"),
        "deep.png": save(d / "deep.png", photo(24, 31)[..., 0].astype(np.uint16) * 257),  # 16-bit gray
        "tiny.jpg": save(d / "tiny.jpg", photo(15, 20), quality=90),
        "big.jpg": save(d / "big.jpg", cv2.resize(photo(40, 60), (6000, 4000)), quality=80),
    }
    exif = Image.new("RGB", (40, 24)).getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display: the output is 24 wide, 40 tall
    Image.fromarray(photo(24, 40)).save(d / "rotated.jpg", exif=exif.tobytes())
    good["rotated.jpg"] = str(d / "rotated.jpg")
    with open(good["tiny.jpg"], "rb") as f:
        data = f.read()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.jpg").write_text("not an image")
    (d / "notes.txt").write_text("ignored: not an image extension")
    out = tmp_path / "out"
    assert run(weights, "--input", d, "--output", out, "--outputs", "alpha") == 1
    err = capsys.readouterr().err
    for bad in ("truncated.jpg", "empty.jpg", "text.jpg"):
        assert f"failed: {d / bad}" in err
        assert not (out / "alpha" / bad.replace(".jpg", ".png")).exists()
    assert "notes" not in err
    for name, path in good.items():
        h, w = read_rgb(path).shape[:2]
        assert read_png(out / "alpha" / (os.path.splitext(name)[0] + ".png")).shape == (h, w), name
    assert read_png(out / "alpha" / "rotated.png").shape == (40, 24)


def test_exit_status_of_the_command(tmp_path, weights):
    save(tmp_path / "in" / "ok.jpg", photo(20, 20))
    (tmp_path / "in" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    cmd = [sys.executable, os.path.join(apply.REPO, "apply.py"), "--model", weights, *SIZE, "--quiet", "--threads", "1",
           "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--outputs", "alpha"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "broken.jpg" in result.stderr and "1 done, 0 skipped, 1 failed" in result.stdout
    assert (tmp_path / "out" / "alpha" / "ok.png").exists()


def test_existing_outputs_are_kept_unless_overwrite(tmp_path, weights, capsys):
    save(tmp_path / "a.jpg", photo(20, 30))
    target = tmp_path / "out" / "alpha" / "a.png"
    save(target, np.full((5, 5), 7, np.uint8), "L")
    args = ["--input", tmp_path / "a.jpg", "--output", tmp_path / "out", "--outputs", "alpha"]
    assert run(weights, *args) == 0
    assert read_png(target).shape == (5, 5) and "skipped existing alpha of a.jpg" in capsys.readouterr().err
    assert run(weights, *args, "--overwrite") == 0
    assert read_png(target).shape == (20, 30)
    assert not [p for p in os.listdir(target.parent) if p.endswith(".tmp")]


def test_names_recursive_folders_and_globs(tmp_path, weights):
    src = tmp_path / "photos"
    save(src / "sub dir" / "my photo [1].jpg", photo(20, 24))
    save(src / "top (2).png", photo(22, 18))
    save(tmp_path / "extra" / "x.jpeg", photo(16, 16))
    save(tmp_path / "extra" / "y.png", photo(16, 16))
    out = tmp_path / "out"
    assert run(weights, "--input", src, "--recursive", "--input", str(tmp_path / "extra" / "*.jpeg"),
               "--output", out, "--outputs", "alpha") == 0
    alpha = out / "alpha"
    assert (alpha / "sub dir" / "my photo [1].png").exists()
    assert (alpha / "top (2).png").exists() and (alpha / "x.png").exists()
    assert not (alpha / "y.png").exists()  # not matched by the glob
    files, problems = collect_inputs([str(src)], recursive=False)
    assert [f.name for f in files] == ["top (2).png"] and not problems
    files, problems = collect_inputs([str(tmp_path / "missing"), str(tmp_path / "*.gif")])
    assert not files and [p[0] for p in problems] == [str(tmp_path / "missing"), str(tmp_path / "*.gif")]


def test_clashing_output_names_fail_instead_of_overwriting(tmp_path, weights, capsys):
    save(tmp_path / "in" / "a.jpg", photo(20, 20))
    save(tmp_path / "in" / "a.png", photo(20, 20))
    assert run(weights, "--input", tmp_path / "in", "--output", tmp_path / "out", "--outputs", "alpha") == 1
    assert "clashes" in capsys.readouterr().err


def test_no_model_gives_a_clear_message(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(apply, "REPO", str(tmp_path))
    save(tmp_path / "a.jpg", photo(20, 20))
    assert apply.main(["--input", "a.jpg", "--output", "out"]) == 2
    err = capsys.readouterr().err
    assert "--model" in err and "train_stage1.py" in err and "train_stage2.py" in err
    bad = tmp_path / "bad.pth"
    bad.write_text("nope")
    assert apply.main(["--input", "a.jpg", "--output", "out", "--model", str(bad)]) == 2
    assert "bad.pth" in capsys.readouterr().err


def test_default_model_is_the_newest_stage2_best(tmp_path):
    paths = {}
    runs = (("results_stage1", "r1", 0), ("results_stage2", "old", 100), ("results_stage2", "new", 50))
    for stage, run_name, age in runs:
        path = tmp_path / stage / run_name / "model" / "best.pth"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
        os.utime(path, (1e9 - age, 1e9 - age))
        paths[run_name] = str(path)
    assert find_newest_weights([str(tmp_path)]) == os.path.realpath(paths["new"])
    assert find_newest_weights([str(tmp_path / "nothing")]) is None


def test_up_front_checks(tmp_path, weights, capsys):
    save(tmp_path / "a.jpg", photo(20, 20))
    common = ["--input", tmp_path / "a.jpg", "--output", tmp_path / "out"]
    assert run(weights, *common, "--outputs", "alpha,mask") == 2
    assert run(weights, *common, "--outputs", "composite", "--background", "not-a-colour") == 2
    assert run(weights, *common, "--precision", "fp16", "--device", "cpu") == 2
    err = capsys.readouterr().err
    assert "mask" in err and "not-a-colour" in err and "fp16" in err
    assert not (tmp_path / "out").exists()
