"""documents/: the dataset figure from a tiny dataset, and the e2h ablation's table and figure from
fake run folders (no training here: the scripts it runs have their own tests)."""
import csv
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

DOCUMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "documents")
sys.path.insert(0, DOCUMENTS)

import e2h_ablation  # noqa: E402
import make_figures  # noqa: E402
from utils.plots import MAX_PNG_BYTES  # noqa: E402

LOG_COLUMNS = ("epoch", "lr", "mix_ratio", "train_loss", "train_fused", "train_sides", "train_unknown",
               "val_loss", "val_sad", "val_mse", "val_mad", "val_grad", "val_conn", "images_per_s", "seconds")


def png_stats(path):
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"), dtype=np.float32)
    return pixels.shape, float(pixels.std()), os.path.getsize(path)


def test_dataset_figure(make_paixin, tmp_path):
    root = make_paixin(per_category=4, val=1, backgrounds=3, bg_val=1, size=(40, 32))
    rows = make_figures.dataset_rows(root, count=2)
    assert len(rows) == 2
    for name, panels in rows:
        titles = [title for title, _ in panels]
        assert titles[:3] == ["photo", "alpha (mask_image)", "estimated foreground F"]
        assert [t.split("(")[0].strip() for t in titles[3:]] == ["composite r = 0", "composite r = 0.5", "composite r = 1"]
        for title, image in panels:
            assert image.shape == (40, 32, 3) and image.dtype == np.uint8, title
            assert image.std() > 1.0, f"{name}: panel {title!r} is flat"
        c0, c05, c1 = (p.astype(np.float32) for _, p in panels[3:])
        # the composite is linear in r: r = 0.5 is the mean of the easy and the hard composites
        np.testing.assert_allclose(c05, (c0 + c1) / 2, atol=1.01)
        alpha = panels[1][1][..., 0]
        assert np.ptp(c0[alpha == 0].reshape(-1, 3), axis=0).max() <= 1  # r = 0: one solid colour
    # the foreground came from (and went into) the training cache
    assert any(f.endswith(".png") for f in os.listdir(os.path.join(root, ".foreground_cache")))

    out = tmp_path / "figs"
    make_figures.main(["--dataset-path", root, "--out", str(out), "--count", "2"])
    (h, w, _), std, size = png_stats(out / "datasets_example.png")
    assert w > 300 and h > 150 and std > 10 and size < MAX_PNG_BYTES


def test_make_figures_rejects_ablation_arguments_without_flag(make_paixin):
    with pytest.raises(SystemExit):
        make_figures.main(["--dataset-path", make_paixin(), "--preset", "full"])


def write_fake_run(folder, schedule, mads, test_mad, epochs=4):
    run = folder / f"e2h_{schedule}_20260101_000000"
    test = run / "test_last_epoch"
    test.mkdir(parents=True)
    with open(run / "train_log.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_COLUMNS)
        writer.writeheader()
        for epoch, mad in zip(range(epochs), mads):
            ratio = min(epoch / 10, 1.0) if schedule == "step" else 1.0
            writer.writerow({**{k: 0.5 for k in LOG_COLUMNS}, "epoch": epoch, "mix_ratio": ratio,
                             "val_mad": mad, "val_loss": mad, "train_fused": 2 * mad, "seconds": 30.0})
    means = {"sad": 100 * test_mad, "mse": test_mad / 2, "mad": test_mad, "grad": 1.0, "conn": 2.0,
             "sad_unknown": 1.0, "mse_unknown": 0.1, "mad_unknown": 2 * test_mad, "sad_fg": 1.0, "sad_bg": 1.0}
    with open(test / "summary.json", "w") as f:
        json.dump({"count": 2, "means": means, "data": "fake"}, f)
    return run, test


def fake_predictions(root, test_dir, seed=0):
    """Predicted alphas named as test_stage2.py --save-predictions names them."""
    from data_loader import ForegroundDataset
    ds = ForegroundDataset(root, "val", seed=seed, progress=False)
    for i in range(len(ds)):
        _, alpha, name = ds.load_full(i)
        path = test_dir / "predictions" / (e2h_ablation.heldout_key(name) + ".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((np.clip(alpha * 0.8 + 0.1, 0, 1) * 255).round().astype(np.uint8)).save(path)


def test_ablation_table_and_figure(make_paixin, tmp_path):
    root = make_paixin(per_category=4, val=1, backgrounds=3, bg_val=1, size=(40, 32))
    step_run, step_test = write_fake_run(tmp_path / "step", "step", [0.3, 0.2, 0.1, 0.05], test_mad=0.05)
    none_run, none_test = write_fake_run(tmp_path / "none", "none", [0.3, 0.25, 0.2, 0.15], test_mad=0.1)
    for test_dir in (step_test, none_test):
        fake_predictions(root, test_dir)

    log = e2h_ablation.read_train_log(str(step_run / "train_log.csv"))
    assert [r["epoch"] for r in log] == [0, 1, 2, 3] and log[2]["mix_ratio"] == pytest.approx(0.2)
    summary = e2h_ablation.read_summary(str(step_test / "summary.json"))
    assert summary["count"] == 2 and summary["mad"] == pytest.approx(0.05)
    row = e2h_ablation.summarize("step", log, summary)
    assert row["best_epoch"] == 3 and row["last_val_mad"] == pytest.approx(0.05)
    assert row["train_minutes"] == pytest.approx(2.0) and row["last_mix_ratio"] == pytest.approx(0.3)

    manifest = {"command": "python documents/e2h_ablation.py", "preset": "small", "data": "fake",
                "init": "random initialisation", "hardware": "test CPU", "photos": [8, 2], "wall_minutes": 1.5,
                "settings": {"dataset_path": root, "seed": 0, "arch": "u2netp", "image_size": 64, "crop_size": 48,
                             "batch_size": 4, "epoch_num": 4, "lr": 0.001, "lr_schedule": "seed",
                             "update_ratio_epoch": 1},
                "runs": {"step": {"run": str(step_run), "test": str(step_test)},
                         "none": {"run": str(none_run), "test": str(none_test)}}}
    out = tmp_path / "out"
    rows, ratio = e2h_ablation.report(manifest, str(out), examples=2)
    assert ratio["mad"] == pytest.approx(0.5) and ratio["sad"] == pytest.approx(0.5)
    assert [r["schedule"] for r in rows] == ["step", "none"]

    with open(out / "e2h_results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["schedule"] for r in table] == ["step", "none"]
    assert float(table[1]["mad"]) == pytest.approx(0.1) and int(table[0]["test_images"]) == 2
    md = (out / "e2h_results.md").read_text()
    assert "| e2h / no e2h | | 0.50 | 0.50 | 0.50 |" in md and "8 training photos, 2 held-out" in md
    assert "with e2h is 0.50 x that without" in md and "took 1.5 min" in md
    (h, w, _), std, size = png_stats(out / "e2h_results.png")
    assert w > 500 and h > 400 and std > 10 and size < MAX_PNG_BYTES


def test_heldout_key_matches_test_stage2(make_paixin):
    from data_loader import ForegroundDataset
    from test_stage2 import HeldOut
    ds = ForegroundDataset(make_paixin(), "val", progress=False)
    held = HeldOut(ds)
    assert [held[i]["name"] for i in range(len(held))] == \
        [e2h_ablation.heldout_key(ds.load_full(i)[2]) for i in range(len(ds))]


def test_ablation_settings_pass_through():
    assert e2h_ablation.parse_sets(["a.b=3", "c=x", "d=null", "e=[1, 2]"]) == {"a.b": 3, "c": "x", "d": None, "e": [1, 2]}
    assert e2h_ablation.as_sets({"a.b": 3, "c": "x", "d": None}) == ["--set", "a.b=3", "--set", "c=x", "--set", "d=null"]
    args = e2h_ablation.parse_args(["--set", "e2h.schedule=linear"])
    with pytest.raises(SystemExit, match="e2h.schedule"):
        e2h_ablation.run_ablation(args)  # the ablation sets the schedule itself; refused before any work
