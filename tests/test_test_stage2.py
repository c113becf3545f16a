"""test_stage2.py end to end (held-out split, benchmark folder, saved predictions) on tiny data,
its outputs, its errors, and the helpers in utils/inference/evaluate.py."""
import csv
import json
import os
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest
import torch

import test_stage2
from data_loader import ImageReadError, foreground_cache
from model import build_model
from utils.inference.evaluate import (COLUMNS, EvaluationError, Extremes, derive_trimap, match_by_stem,
                                      new_output_dir, quantize)
from utils.runs import newest_best_weights

H, W = 48, 64
FAST = ["--set", "device=cpu", "--set", "image_size=64", "--set", "batch_size=2", "--set", "dataloader.num_worker=0"]


def matte(rng):
    """A soft ellipse on black, float32 (H,W) in [0,1]."""
    canvas = np.zeros((H * 4, W * 4), np.uint8)
    centre = (int(rng.integers(80, 176)), int(rng.integers(70, 122)))
    cv2.ellipse(canvas, centre, (int(rng.integers(30, 60)), int(rng.integers(40, 70))), 0, 0, 360, 255, -1)
    return cv2.resize(canvas, (W, H), interpolation=cv2.INTER_AREA).astype(np.float32) / 255


def photo(rng):
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


def write_png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if array.dtype != np.uint8:
        array = np.round(array * 255).astype(np.uint8)
    assert cv2.imwrite(str(path), array[..., ::-1] if array.ndim == 3 else array)


def read_csv(path):
    with open(path) as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Random-init U2NETP weights in a results-like run folder."""
    run = tmp_path_factory.mktemp("results_stage2") / "run_a"
    (run / "model").mkdir(parents=True)
    (run / "settings.json").write_text("{}")
    torch.manual_seed(0)
    torch.save(build_model("u2netp").state_dict(), run / "model" / "best.pth")
    return run / "model" / "best.pth"


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    """images/, alphas/, trimaps/ paired by stem, plus one unmatched file on each side."""
    root = tmp_path_factory.mktemp("bench")
    rng = np.random.default_rng(0)
    for stem in ("a", "b", "c"):
        alpha = matte(rng)
        write_png(root / "images" / f"{stem}.png", photo(rng))
        write_png(root / "alphas" / f"{stem}.png", alpha)
        write_png(root / "trimaps" / f"{stem}.png", derive_trimap(alpha))
    write_png(root / "images" / "only_image.png", photo(rng))
    write_png(root / "alphas" / "only_alpha.png", matte(rng))
    return root


def run(argv, *extra):
    return test_stage2.main([*argv, *FAST, *extra])


def test_benchmark_folder_then_its_saved_predictions(weights, bench_dir, tmp_path, capsys):
    out = run(["--images", str(bench_dir / "images"), "--alphas", str(bench_dir / "alphas"),
               "--set", f"model_path={weights.parent}", "--set", "pth_name=best.pth",
               "--save-predictions", "--output", str(tmp_path / "model_out")])
    assert "only_image" in capsys.readouterr().out  # unmatched names are listed
    columns, rows = read_csv(os.path.join(out, "metrics.csv"))
    assert tuple(columns) == COLUMNS and [r["name"] for r in rows] == ["a", "b", "c"]
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["count"] == 3 and summary["skipped_unmatched"]["count"] == 2
    assert summary["model_file"] == str(weights) and set(summary["means"]) == set(COLUMNS[1:])
    assert summary["settings"]["image_size"] == 64
    assert cv2.imread(os.path.join(out, "grid.png")) is not None
    saved = cv2.imread(os.path.join(out, "predictions", "a.png"), cv2.IMREAD_UNCHANGED)
    assert saved.shape == (H, W) and saved.dtype == np.uint8

    # the saved PNGs, scored with no model, give exactly the same numbers
    out2 = run(["--predictions", os.path.join(out, "predictions"), "--alphas", str(bench_dir / "alphas"),
                "--output", str(tmp_path / "files_out")])
    assert read_csv(os.path.join(out2, "metrics.csv")) == (columns, rows)
    assert json.load(open(os.path.join(out2, "summary.json")))["model_file"] is None


def test_given_trimaps_and_known_errors(bench_dir, tmp_path):
    """Predictions made by hand: 0.5 off in the whole foreground -> every column by hand."""
    alpha = cv2.imread(str(bench_dir / "alphas" / "a.png"), cv2.IMREAD_UNCHANGED).astype(np.float32) / 255
    trimap = cv2.imread(str(bench_dir / "trimaps" / "a.png"), cv2.IMREAD_UNCHANGED)
    pred = np.where(trimap == 255, 0.5, alpha)
    write_png(tmp_path / "pred" / "a.png", pred)
    out = run(["--predictions", str(tmp_path / "pred"), "--alphas", str(bench_dir / "alphas"),
               "--trimaps", str(bench_dir / "trimaps"), "--output", str(tmp_path / "out")])
    (row,) = read_csv(os.path.join(out, "metrics.csv"))[1]
    err = np.abs(quantize(pred) - alpha)
    assert float(row["sad"]) == pytest.approx(err.sum() / 1000, rel=1e-5)
    assert float(row["sad_fg"]) == pytest.approx(float(row["sad"]), rel=1e-9)
    assert float(row["sad_bg"]) == float(row["sad_unknown"]) == float(row["mse_unknown"]) == 0.0
    assert float(row["mad"]) == pytest.approx(err.mean(), rel=1e-5)


def test_held_out_split_with_the_newest_run(weights, make_paixin, tmp_path, monkeypatch):
    # the photo as its own foreground: pymatting's estimator is tested with the data loader
    monkeypatch.setattr(foreground_cache, "estimate_foreground", lambda rgb, alpha: rgb)
    root = make_paixin(per_category=4, val=1, backgrounds=2, bg_val=1)  # val: one photo of a/, one of b/
    older = tmp_path / "results_stage2" / "old" / "model"
    older.mkdir(parents=True)
    (older / "best.pth").write_bytes(b"not used")
    os.utime(older / "best.pth", (1, 1))
    newest = tmp_path / "results_stage2" / "new"
    os.symlink(weights.parent.parent, newest)  # the module's run folder, newest by mtime
    monkeypatch.chdir(tmp_path)
    assert newest_best_weights("results_stage2") == os.path.join("results_stage2", "new", "model", "best.pth")
    out = run(["--set", f"dataset_path={root}"])
    assert os.path.dirname(out) == str(tmp_path / "results_stage2" / "new")  # in the weights' run folder
    _, rows = read_csv(os.path.join(out, "metrics.csv"))
    assert len(rows) == 2 and sorted(r["name"].split("/")[0] for r in rows) == ["a", "b"]
    first = {r["name"]: r for r in rows}
    out2 = run(["--set", f"dataset_path={root}", "--output", "again"])  # deterministic
    assert {r["name"]: r for r in read_csv(os.path.join(out2, "metrics.csv"))[1]} == first


def test_network_size_is_the_training_runs_own_unless_set(bench_dir, tmp_path):
    """image_size unset: the size in the run's settings.json (so the scores match the run's
    validation), else 320; set: as set."""
    run_dir = tmp_path / "run"
    (run_dir / "model").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(build_model("u2netp").state_dict(), run_dir / "model" / "best.pth")
    common = ["--images", str(bench_dir / "images"), "--alphas", str(bench_dir / "alphas"),
              "--set", f"model_path={run_dir}", "--set", "pth_name=best.pth", "--set", "device=cpu",
              "--set", "batch_size=2", "--set", "dataloader.num_worker=0", "--grid-rows", "0"]

    def score(name, *extra):
        out = test_stage2.main([*common, "--output", str(tmp_path / name), *extra])
        with open(os.path.join(out, "summary.json")) as f:
            return json.load(f)["image_size"], read_csv(os.path.join(out, "metrics.csv"))[1]

    (run_dir / "settings.json").write_text(json.dumps({"image_size": 96, "crop_size": 80}))
    size, from_run = score("from_run")
    assert size == 96
    assert score("set_96", "--set", "image_size=96") == (96, from_run)
    size, set_64 = score("set_64", "--set", "image_size=64")
    assert size == 64 and set_64 != from_run
    (run_dir / "settings.json").write_text("{}")
    assert score("default")[0] == 320


# ---- errors -------------------------------------------------------------------------------------------
def test_size_mismatch_names_both_files(bench_dir, tmp_path):
    write_png(tmp_path / "pred" / "a.png", np.zeros((W, H), np.uint8))
    with pytest.raises(EvaluationError, match=r"pred[/\\]a\.png.*alphas[/\\]a\.png"):
        run(["--predictions", str(tmp_path / "pred"), "--alphas", str(bench_dir / "alphas"),
             "--output", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()  # found from the headers, before any output


def test_a_zero_byte_prediction_is_one_message_before_any_output(bench_dir, tmp_path):
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "a.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"pred[/\\]a\.png: empty file \(0 bytes\)") as info:
        run(["--predictions", str(tmp_path / "pred"), "--alphas", str(bench_dir / "alphas"),
             "--output", str(tmp_path / "out")])
    assert str(info.value).count("cannot read image") == 1
    assert not (tmp_path / "out").exists()


def test_max_pixels_flag(bench_dir, tmp_path, capsys):
    argv = ["--predictions", str(bench_dir / "alphas"), "--alphas", str(bench_dir / "alphas"),
            "--output", str(tmp_path / "out")]
    with pytest.raises(ImageReadError, match=rf"alphas[/\\]a.png: {W}x{H} is 3,072 pixels \(0.0 MP\), "
                                             "over the pixel limit of 3,071 "):
        run(argv, "--max-pixels", str(H * W - 1))
    assert not (tmp_path / "out").exists()
    assert os.path.isfile(os.path.join(run(argv, "--max-pixels", str(H * W)), "metrics.csv"))
    with pytest.raises(SystemExit):
        run(argv, "--max-pixels", "0")
    assert "--max-pixels must be >= 1" in capsys.readouterr().err


def test_a_file_failing_in_a_loader_worker_is_one_line_and_no_output(bench_dir, tmp_path):
    """A PNG whose data ends after 10 of its rows decodes without error in Pillow; image_io
    refuses it in a DataLoader worker process: the script ends with that one message."""
    pred = tmp_path / "pred"
    pred.mkdir()
    raw = (b"\x00" + bytes(W)) * 10
    chunk = lambda kind, data: (len(data).to_bytes(4, "big") + kind + data  # noqa: E731
                                + zlib.crc32(kind + data).to_bytes(4, "big"))
    (pred / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", W.to_bytes(4, "big") + H.to_bytes(4, "big")
                                 + bytes([8, 0, 0, 0, 0])) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, os.path.join(root, "test_stage2.py"), "--predictions", str(pred),
                             "--alphas", str(bench_dir / "alphas"), "--output", str(tmp_path / "out"),
                             "--set", "dataloader.num_worker=1"], cwd=root, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"error: cannot read image {pred / 'a.png'}: truncated: its image data holds 10 of its {H} rows " \
                   "(the rest would be decoded as zeros)"
    assert not (tmp_path / "out").exists()


def test_no_common_names_is_an_error(bench_dir, tmp_path):
    write_png(tmp_path / "pred" / "zzz.png", np.zeros((H, W), np.uint8))
    with pytest.raises(EvaluationError, match="no file names in common"):
        run(["--predictions", str(tmp_path / "pred"), "--alphas", str(bench_dir / "alphas"),
             "--output", str(tmp_path / "out")])


@pytest.mark.parametrize("argv", [
    ["--images", "x", "--predictions", "y", "--alphas", "z"],
    ["--images", "x"],
    ["--alphas", "z"],
    ["--trimaps", "t"],
])
def test_bad_flag_combinations(argv, capsys):
    with pytest.raises(SystemExit):
        run(argv)
    assert "error" in capsys.readouterr().err


def test_no_weights_says_how_to_get_them(bench_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("utils.runs.REPO", str(tmp_path))  # nor the repository's own results folders
    with pytest.raises(SystemExit, match="train_stage2.py"):
        run(["--images", str(bench_dir / "images"), "--alphas", str(bench_dir / "alphas")])


# ---- helpers ------------------------------------------------------------------------------------------
def test_match_by_stem_and_duplicates(tmp_path):
    for rel in ("a/x.png", "a/y.jpg", "b/x.png", "b/z.png"):
        write_png(tmp_path / rel, np.zeros((4, 4), np.uint8))
    items, unmatched = match_by_stem({"alphas": str(tmp_path / "a"), "predictions": str(tmp_path / "b")})
    assert [i["name"] for i in items] == ["x"] and unmatched == {"alphas": ["y"], "predictions": ["z"]}
    write_png(tmp_path / "b" / "x.jpg", np.zeros((4, 4), np.uint8))
    with pytest.raises(EvaluationError, match="share the name 'x'"):
        match_by_stem({"alphas": str(tmp_path / "a"), "predictions": str(tmp_path / "b")})


def test_derived_trimap_and_extremes(tmp_path):
    alpha = np.zeros((20, 20), np.float32)
    alpha[5:15, 5:15] = 1
    trimap = derive_trimap(alpha)
    assert set(np.unique(trimap)) == {0, 128, 255} and trimap[10, 10] == 255 and trimap[0, 0] == 0
    assert trimap[5, 10] == 128  # the hard edge gets a band
    keep = Extremes(k=2)
    for i, score in enumerate([5, 1, 9, 3, 7, 2, 8, 4, 6, 0]):
        keep.add(score, f"n{i}", None)
    worst, best = keep.worst_and_best()
    assert [e[0] for e in worst] == [9, 8] and [e[0] for e in best] == [0, 1]
    assert os.path.dirname(new_output_dir(None, fallback=str(tmp_path))) == str(tmp_path)
