"""make_dataset.py and utils/inference/dataset.py: the layout, the manifest and quality control,
fixed composites, resume, bad files, training on the result, an .onnx model, and torchrun
(make_dataset.py and apply.py) giving the same files with two CPU processes as with one.

Small photos from data_examples/make_examples.py (48x40), tiny random U2NETP weights at a
64 px network input; make_dataset.main runs in-process except under torchrun.
"""
import csv
import filecmp
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import apply
import export
import make_dataset
import train_stage2
from conftest import names_in_both_splits
from data_examples.make_examples import photo_of, texture
from data_loader.foreground import index_foregrounds
from data_loader.foreground_cache import ForegroundCache, default_cache_dir
from data_loader.image_io import read_alpha, read_rgb
from model import build_model
from utils.inference.cutout import alpha_to_uint8
from utils.inference.dataset_writer import DatasetWriter, Manifest, QualityRule, copy_backgrounds, matte_quality
from utils.inference.core import predict_alphas

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEEP_ALL = ["--min-foreground", "0", "--max-uncertain", "1"]  # random weights make grey mattes
pytestmark = pytest.mark.usefixtures("one_thread")


def save(path, array, **kwargs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return str(path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """photos/ (10 portraits, 3 of them held out, one turned by EXIF; a truncated, an empty and a
    non-image file), bg/ (4 backgrounds, 2 held out), weights."""
    top = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    names = names_in_both_splits("p{:02d}.jpg", 10, 3, key=lambda n: f"portrait/raw_image/{n}")
    for name in names:
        save(top / "photos" / name, photo_of(rng, 48, 40)[0], quality=90)
    turned = Image.open(top / "photos" / names[0])
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed turned 90 degrees clockwise
    turned.save(top / "photos" / names[0], exif=exif, quality=90)
    good = (top / "photos" / names[1]).read_bytes()
    (top / "photos" / "truncated.jpg").write_bytes(good[:len(good) // 3])
    (top / "photos" / "empty.jpg").write_bytes(b"")
    (top / "photos" / "notes.png").write_text("not an image")
    backgrounds = names_in_both_splits("bg{:02d}.png", 4, 2, key=lambda n: f"background/{n}")
    for name in backgrounds:
        save(top / "bg" / name, texture(rng, 60, 56))
    torch.manual_seed(0)
    torch.save(build_model("u2netp").state_dict(), top / "u2netp.pth")
    return {"photos": str(top / "photos"), "bg": str(top / "bg"), "weights": str(top / "u2netp.pth"),
            "names": names, "turned": names[0], "backgrounds": backgrounds}


def command(inputs, output, *extra):
    return ["--input", inputs["photos"], "--output", str(output), "--model", inputs["weights"], "--size", "64",
            "--threads", "1", "--quiet", "--backgrounds", inputs["bg"], "--composites", "2", "--seed", "7",
            *KEEP_ALL, *map(str, extra)]


def read_manifest(root):
    with open(os.path.join(root, "manifest.csv"), newline="") as f:
        return list(csv.DictReader(f))


def tree(root, skip=(".foreground_cache",)):
    """{relative path: md5} of every file under ``root`` (cache entries by content: their names
    hold the files' modification times)."""
    found = {}
    for path in glob.glob(os.path.join(root, "**", "*"), recursive=True):
        rel = os.path.relpath(path, root)
        if os.path.isfile(path) and rel.split(os.sep)[0] not in skip:
            found[rel] = hashlib.md5(open(path, "rb").read()).hexdigest()
    cache = glob.glob(os.path.join(root, ".foreground_cache", "*.png"))
    found["cache"] = sorted(hashlib.md5(open(p, "rb").read()).hexdigest() for p in cache)
    return found


@pytest.fixture(scope="module")
def dataset(inputs, tmp_path_factory):
    """One in-process run of make_dataset.py -> (output folder, exit status)."""
    output = tmp_path_factory.mktemp("made") / "mine"
    return str(output), make_dataset.main(command(inputs, output))


def test_layout_manifest_and_bad_files(inputs, dataset):
    root, status = dataset
    assert status == 1  # three bad files among the photos
    names = inputs["names"]
    stems = [os.path.splitext(n)[0] for n in names]
    turned = os.path.splitext(inputs["turned"])[0] + ".png"
    expected = sorted([turned] + names[1:])
    assert sorted(os.listdir(os.path.join(root, "portrait", "raw_image"))) == expected
    assert sorted(os.listdir(os.path.join(root, "portrait", "mask_image"))) == sorted(s + ".png" for s in stems)
    assert sorted(os.listdir(os.path.join(root, "background"))) == inputs["backgrounds"]
    # a photo needing no change: its own bytes; the EXIF-turned one: its displayed pixels, lossless
    assert filecmp.cmp(os.path.join(inputs["photos"], names[1]), os.path.join(root, "portrait", "raw_image", names[1]),
                       shallow=False)
    written = read_rgb(os.path.join(root, "portrait", "raw_image", turned))
    np.testing.assert_array_equal(written, read_rgb(os.path.join(inputs["photos"], inputs["turned"])))
    assert written.shape[:2] == (40, 48)
    for stem, name in zip(stems, [turned] + names[1:]):
        mask = read_alpha(os.path.join(root, "portrait", "mask_image", stem + ".png"))
        assert mask.shape == read_rgb(os.path.join(root, "portrait", "raw_image", name)).shape[:2]

    rows = read_manifest(root)
    assert tuple(rows[0]) == ("source", "name", "weights", "refine", "foreground", "uncertain", "status", "reason")
    by_file = {os.path.basename(r["source"]): r for r in rows}
    assert len(rows) == 13
    failed = sorted(f for f, r in by_file.items() if r["status"] == "failed")
    assert failed == ["empty.jpg", "notes.png", "truncated.jpg"]
    assert "empty" in by_file["empty.jpg"]["reason"] and by_file["truncated.jpg"]["reason"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 10 and all(r["weights"] == inputs["weights"] and r["refine"] == "guided" for r in ok)
    assert all(0 <= float(r["foreground"]) <= 1 and 0 <= float(r["uncertain"]) <= 1 for r in ok)
    assert by_file[inputs["turned"]]["name"] == f"portrait/raw_image/{turned}"
    assert not glob.glob(os.path.join(root, "**", "*.tmp"), recursive=True)
    assert not os.path.exists(os.path.join(root, ".manifest_parts"))  # folded into manifest.csv


def test_foreground_cache_is_filled_where_training_looks(dataset):
    root, _ = dataset
    pairs, _ = index_foregrounds(root, "all")
    cache = ForegroundCache(default_cache_dir(root))
    assert len(pairs) == 10 and all(os.path.isfile(cache.paths(pair)[0]) for pair in pairs)


def test_composites_count_sizes_and_reproducibility(inputs, dataset):
    root, _ = dataset
    held_out = [p for p in index_foregrounds(root, "val")[0]]
    images = sorted(os.listdir(os.path.join(root, "composites", "image")))
    assert len(held_out) == 3 and len(images) == 3 * 2
    assert images == sorted(os.listdir(os.path.join(root, "composites", "alpha")))
    for pair in held_out:
        stem = os.path.splitext(os.path.basename(pair.name))[0]
        mask = np.array(Image.open(pair.mask))
        for k in range(2):
            image = np.array(Image.open(os.path.join(root, "composites", "image", f"{stem}_{k}.png")))
            assert image.shape == mask.shape + (3,)
            np.testing.assert_array_equal(np.array(Image.open(os.path.join(root, "composites", "alpha",
                                                                           f"{stem}_{k}.png"))), mask)
    before = tree(os.path.join(root, "composites"))
    again = str(root) + "_composites"
    shutil.copytree(root, again)
    shutil.rmtree(os.path.join(again, "composites"))
    make_dataset.main(command(inputs, again))  # photos done, composites made again: same bytes
    assert tree(os.path.join(again, "composites")) == before
    shutil.rmtree(os.path.join(again, "composites"))
    make_dataset.main(command(inputs, again, "--seed", "8"))
    assert tree(os.path.join(again, "composites")) != before  # another seed, other crops


def test_train_stage2_one_epoch_on_the_output(dataset, tmp_path, monkeypatch):
    root, _ = dataset

    def no_estimation(*args):
        raise AssertionError("the foreground cache should already hold every photo")
    monkeypatch.setattr("data_loader.foreground_cache.estimate_foreground", no_estimation)
    settings = ["device=cpu", "arch=u2netp", "model_name=u2netp", "image_size=64", "crop_size=48",
                "batch_size=2", "val_image_num=2", "dataloader.num_worker=0", "amp=off", "epoch_num=1",
                f"dataset_path={root}", f"results_dir={tmp_path / 'results'}"]
    run = train_stage2.main([a for s in settings for a in ("--set", s)])
    with open(os.path.join(run, "train_log.csv"), newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["val_mad"]) >= 0 and os.path.isfile(os.path.join(run, "model", "best.pth"))


def test_resume_after_an_interruption(inputs, dataset, tmp_path, monkeypatch, capsys):
    reference, _ = dataset
    output = tmp_path / "mine"
    calls = []
    real = DatasetWriter.write

    def interrupted(self, item, image, alpha):
        if len(calls) == 4:
            raise KeyboardInterrupt
        calls.append(item.name)
        return real(self, item, image, alpha)
    monkeypatch.setattr(DatasetWriter, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_dataset.main(command(inputs, output))
    assert len(glob.glob(str(output / "portrait" / "mask_image" / "*.png"))) == 4
    monkeypatch.setattr(DatasetWriter, "write", real)
    capsys.readouterr()
    assert make_dataset.main(command(inputs, output)) == 1  # the three bad files fail again
    assert "4 done before" in capsys.readouterr().out
    assert tree(str(output)) == tree(reference)
    assert read_manifest(str(output)) == read_manifest(reference)
    capsys.readouterr()
    make_dataset.main(command(inputs, output))  # all done: nothing matted again
    assert "0 photos added, 0 left out, 3 failed, 10 done before" in capsys.readouterr().out


class Brightness(torch.nn.Module):
    """A stand-in network whose alpha follows the photo's brightness: dark -> 0, bright -> 1,
    grey (118) -> about 0.92 (uncertain)."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(40.0))

    def forward_logits(self, x):
        return [self.scale * x.mean(1, keepdim=True)]


def test_quality_control_leaves_out_doubtful_mattes(tmp_path, monkeypatch, capsys):
    half = np.zeros((40, 48, 3), np.uint8)
    half[:, 24:] = 255
    photos = {"dark.png": np.zeros((40, 48, 3), np.uint8), "grey.png": np.full((40, 48, 3), 118, np.uint8),
              "half.png": half, "bright.png": np.full((40, 48, 3), 255, np.uint8)}
    for name, image in photos.items():
        save(tmp_path / "photos" / name, image)
    monkeypatch.setattr(make_dataset, "load_network", lambda args, device: (Brightness(), "brightness.pth"))
    output = tmp_path / "out"
    status = make_dataset.main(["--input", str(tmp_path / "photos"), "--output", str(output), "--size", "64",
                                "--quiet", "--refine", "none", "--min-foreground", "0.01", "--max-uncertain", "0.5"])
    assert status == 0
    rows = {os.path.basename(r["source"]): r for r in read_manifest(str(output))}
    assert {f: r["status"] for f, r in rows.items()} == {"dark.png": "left_out", "grey.png": "left_out",
                                                         "half.png": "ok", "bright.png": "ok"}
    assert rows["dark.png"]["reason"].startswith("no person") and float(rows["dark.png"]["foreground"]) == 0
    assert rows["grey.png"]["reason"].startswith("mostly uncertain") and float(rows["grey.png"]["uncertain"]) == 1
    assert abs(float(rows["half.png"]["foreground"]) - 0.5) < 0.05 and float(rows["half.png"]["uncertain"]) < 0.2
    assert sorted(os.listdir(output / "portrait" / "mask_image")) == ["bright.png", "half.png"]
    assert "2 photos added, 2 left out (1 mostly uncertain, 1 no person), 0 failed" in capsys.readouterr().out


def test_matte_quality_and_rule():
    alpha = np.zeros((10, 10), np.float32)
    alpha[:, 5:] = 1.0
    alpha[:, 5] = 0.5
    assert matte_quality(alpha) == (0.5, 0.2)
    assert matte_quality(np.zeros((4, 4))) == (0.0, 0.0)
    rule = QualityRule(min_foreground=0.1, max_uncertain=0.3)
    assert rule.reason(0.5, 0.2) is None
    assert rule.reason(0.05, 0.0).startswith("no person") and rule.reason(0.5, 0.4).startswith("mostly uncertain")
    with pytest.raises(ValueError, match="max_uncertain"):
        QualityRule(max_uncertain=2)


def test_backgrounds_copied_or_linked_and_bad_ones_named(tmp_path):
    for name in ("a.png", "sub/b.jpg"):
        save(tmp_path / "bg" / name, np.full((8, 8, 3), 90, np.uint8))
    (tmp_path / "bg" / "broken.png").write_bytes(b"\x89PNG not really")
    copied = copy_backgrounds(str(tmp_path / "bg"), str(tmp_path / "copy"))
    assert sorted(copied.done) == ["a.png", "sub/b.jpg"] and [f for f, _ in copied.failed] == [
        f"background {tmp_path / 'bg' / 'broken.png'}"]
    assert filecmp.cmp(tmp_path / "bg" / "sub" / "b.jpg", tmp_path / "copy" / "background" / "sub" / "b.jpg",
                       shallow=False)
    assert copy_backgrounds(str(tmp_path / "bg"), str(tmp_path / "copy")).skipped  # kept when run again
    linked = copy_backgrounds(str(tmp_path / "bg"), str(tmp_path / "link"), link=True)
    assert len(linked.done) == 2 and os.path.islink(tmp_path / "link" / "background" / "a.png")


def test_manifest_drops_a_line_cut_by_a_kill(tmp_path):
    manifest = Manifest(str(tmp_path), rank=1)
    row = dict(source="/p/a.jpg", name="portrait/raw_image/a.jpg", weights="w.pth", refine="none",
               foreground="0.5", uncertain="0.1", status="ok", reason="")
    manifest.append(row)
    with open(manifest.part, "a") as f:
        f.write("/p/b.jpg,portrait/raw_image/b.jpg,w.pth,none,0.5,0.1,o")  # killed mid-line
    assert list(manifest.load()) == ["/p/a.jpg"]
    assert manifest.fold() == [row] and read_manifest(str(tmp_path)) == [row]


def torchrun(script, args, cwd):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               os.path.join(ROOT, script), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is needed")
def test_two_torchrun_processes_make_the_same_files_as_one(inputs, dataset, tmp_path):
    reference, _ = dataset
    done = torchrun("make_dataset.py", command(inputs, tmp_path / "mine"), tmp_path)
    assert done.returncode != 0 and done.stdout.count("make_dataset.py:") == 1  # rank 0 reports
    assert "3 failed" in done.stdout
    assert tree(str(tmp_path / "mine")) == tree(reference)
    assert read_manifest(str(tmp_path / "mine")) == read_manifest(reference)

    apply_args = ["--input", inputs["photos"], "--model", inputs["weights"], "--size", "64", "--quiet",
                  "--outputs", "alpha"]
    one = apply.main(apply_args + ["--output", str(tmp_path / "one"), "--threads", "1"])
    two = torchrun("apply.py", apply_args + ["--output", str(tmp_path / "two")], tmp_path)
    assert one == 1 and two.returncode != 0 and two.stdout.count("apply.py:") == 1
    assert "10 done, 0 skipped, 3 failed" in two.stdout
    assert tree(str(tmp_path / "two")) == tree(str(tmp_path / "one"))


def test_an_onnx_model_makes_the_same_masks(inputs, dataset, tmp_path):
    reference, _ = dataset
    onnx = str(tmp_path / "u2netp.onnx")
    assert export.main(["--model", inputs["weights"], "--output", onnx, "--size", "64"]) == 0
    output = tmp_path / "mine"
    assert make_dataset.main(["--input", inputs["photos"], "--output", str(output), "--model", onnx, "--size", "64",
                              "--threads", "1", "--quiet", *KEEP_ALL]) == 1
    masks = sorted(glob.glob(os.path.join(reference, "portrait", "mask_image", "*.png")))
    assert len(masks) == 10
    for mask in masks:
        ours = np.array(Image.open(output / "portrait" / "mask_image" / os.path.basename(mask)), np.int16)
        assert np.abs(ours - np.array(Image.open(mask), np.int16)).max() <= 1  # onnxruntime vs PyTorch
    assert {r["weights"] for r in read_manifest(str(output))} == {onnx}


def test_masks_are_apply_pys_alphas_with_matting_refinement(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    photos = []
    for i in range(2):  # bright figure on a dark ground: a clear matte with a thin unknown band
        image = rng.integers(0, 40, (120, 144, 3)).astype(np.uint8)  # large enough for matting's >= 5 px band
        image[24 + i:102, 42:102 + i] = 240
        photos.append(save(tmp_path / "photos" / f"p{i}.png", image))
    monkeypatch.setattr(make_dataset, "load_network", lambda args, device: (Brightness(), "brightness.pth"))
    output = tmp_path / "mine"
    assert make_dataset.main(["--input", str(tmp_path / "photos"), "--output", str(output), "--size", "64",
                              "--quiet", "--refine", "matting", *KEEP_ALL]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matting itself, no fall-back to guided
        expected = predict_alphas(Brightness(), [read_rgb(p) for p in photos], size=64, batch_size=1,
                                  refine="matting")
    for path, alpha in zip(photos, expected):
        stem = os.path.splitext(os.path.basename(path))[0]
        mask = np.array(Image.open(output / "portrait" / "mask_image" / f"{stem}.png"))
        np.testing.assert_array_equal(mask, alpha_to_uint8(alpha))
    assert {r["refine"] for r in read_manifest(str(output))} == {"matting"}
