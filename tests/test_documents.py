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


def write_fake_run(folder, schedule, seed, mad, epochs=4):
    """A finished stage-2 run as the ablation leaves it: train_log.csv, e2h_measure.csv and the
    summaries of its two held-out tests (ratio 1 and 0); held-out MAD ``mad`` at r = 1, 2x at r = 0."""
    run = folder / f"e2h_{schedule}_seed{seed}_20260101_000000"
    run.mkdir(parents=True)
    ramp = {"step": 2, "linear": 3}.get(schedule)
    ratios = [min(e / ramp, 1.0) if ramp else 1.0 for e in range(epochs)]
    with open(run / "train_log.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_COLUMNS)
        writer.writeheader()
        for epoch, ratio in enumerate(ratios):
            writer.writerow({**{k: 0.5 for k in LOG_COLUMNS}, "epoch": epoch, "mix_ratio": ratio,
                             "val_mad": mad * (epochs - epoch), "train_fused": 0.1 * (epochs - epoch), "seconds": 30.0})
    with open(run / "e2h_measure.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", "ratio", "mad_at_ratio", "mad_r1"])
        writer.writeheader()
        for epoch, ratio in enumerate(ratios):  # the seed's measure: easier while the ratio is low
            writer.writerow({"epoch": epoch, "ratio": ratio, "mad_at_ratio": mad * (1 + ratio), "mad_r1": 2 * mad})
    tests = {}
    for ratio, scale in (("1", 1.0), ("0", 2.0)):
        test = run / f"test_last_epoch_r{ratio}"
        test.mkdir()
        m = mad * scale
        means = {"sad": 100 * m, "mse": m / 2, "mad": m, "grad": 1.0, "conn": 2.0, "sad_unknown": 1.0,
                 "mse_unknown": 0.1, "mad_unknown": 2 * m, "sad_fg": 1.0, "sad_bg": 1.0}
        with open(test / "summary.json", "w") as f:
            json.dump({"count": 2, "means": means, "data": "fake"}, f)
        tests[ratio] = str(test)
    return {"schedule": schedule, "seed": seed, "run": str(run), "tests": tests,
            "measure": str(run / "e2h_measure.csv"), "train_wall_minutes": 2.0, "load_start": [3.0, 2.0, 1.0],
            "load_end": [4.5, 3.0, 2.0]}


def fake_predictions(root, test_dir, seed=0):
    """Predicted alphas named as test_stage2.py --save-predictions names them."""
    from data_loader import ForegroundDataset
    ds = ForegroundDataset(root, "val", seed=seed, progress=False)
    for i in range(len(ds)):
        _, alpha, name = ds.load_full(i)
        path = os.path.join(test_dir, "predictions", e2h_ablation.heldout_key(name) + ".png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray((np.clip(alpha * 0.8 + 0.1, 0, 1) * 255).round().astype(np.uint8)).save(path)


def test_ablation_report(make_paixin, tmp_path):
    """Fabricated runs of the three arms x two seeds -> the CSV (one row per run), the report
    (means, stds, paired ratios, verdict, scale) and the figure."""
    root = make_paixin(per_category=4, val=1, backgrounds=3, bg_val=1, size=(40, 32))
    mads = {("step", 0): 0.04, ("step", 1): 0.06, ("linear", 0): 0.12, ("linear", 1): 0.09,
            ("none", 0): 0.08, ("none", 1): 0.10}
    runs = [write_fake_run(tmp_path / "runs", schedule, seed, mad) for (schedule, seed), mad in mads.items()]
    for entry in runs:
        if entry["seed"] == 0:
            fake_predictions(root, entry["tests"]["1"])
    manifest = {"command": "python documents/e2h_ablation.py", "preset": "small", "data": "fake portraits",
                "start": "x.pth", "hardware": "test CPU", "photos": [8, 2], "stage1_photos": [10, 2],
                "wall_minutes": 61.0, "seeds": [0, 1], "parallel": 3, "runs": runs,
                "settings": {"dataset_path": root, "arch": "u2netp", "image_size": 64, "crop_size": 48,
                             "batch_size": 4, "epoch_num": 4, "lr": 0.001, "lr_schedule": "seed", "update_ratio_epoch": 1,
                             "e2h.ramp_epochs": 2},
                "stage1_settings": {"arch": "u2netp", "image_size": 64, "crop_size": 48, "batch_size": 4,
                                    "epoch_num": 2, "lr": 0.001, "lr_schedule": "constant"}}
    out = tmp_path / "out"
    rows, stats = e2h_ablation.report(manifest, str(out), examples=2)
    assert [(r["schedule"], r["seed"]) for r in rows] == [("step", 0), ("linear", 0), ("none", 0),
                                                          ("step", 1), ("linear", 1), ("none", 1)]
    assert stats["step"]["mad"][0] == pytest.approx(0.05) and stats["step"]["mad"][1] == pytest.approx(np.std([0.04, 0.06], ddof=1))
    assert stats["none"]["mad_r0"][0] == pytest.approx(0.18)
    step0 = rows[0]
    assert step0["seed_measure_ramp"] == pytest.approx(0.04 * 1.25) and step0["r1_measure_ramp"] == pytest.approx(0.08)
    assert step0["train_minutes"] == pytest.approx(2.0) and step0["last_mix_ratio"] == 1.0

    with open(out / "e2h_results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [(r["schedule"], r["seed"]) for r in table][:2] == [("step", "0"), ("linear", "0")]
    assert float(table[2]["mad"]) == pytest.approx(0.08) and float(table[2]["mad_r0"]) == pytest.approx(0.16)
    md = (out / "e2h_results.md").read_text()
    assert "| e2h step (seed's) | 2 | 0.05000 ± 0.01414 |" in md
    assert "| 0 | 0.50 | 0.50 | 0.31 | 1.50 | 1.50 | 0.87 |" in md  # step/none, linear/none at seed 0
    assert "lower with e2h step (seed's) in all 2 seeds; paired ratio 0.50, 0.60" in md
    assert "lower with e2h linear in 1 of 2 seeds, higher in the rest" in md
    assert "8 training photos" in md and "load average 3.0-4.5" in md and "took 61 min (complete runs" in md
    assert "one schedule here" not in md  # step and linear differ here
    same = [dict(r, schedule="linear") for r in rows if r["schedule"] == "step"]
    assert e2h_ablation.same_schedule_pairs([r for r in rows if r["schedule"] != "linear"] + same,
                                            ["step", "linear", "none"]) == [("step", "linear")]
    (h, w, _), std, size = png_stats(out / "e2h_results.png")
    assert w > 500 and h > 400 and std > 10 and size < MAX_PNG_BYTES


def test_measure_run_scores_each_epoch_at_its_ratio(make_paixin, tmp_path, one_thread):
    """The per-epoch measure: the same weights score differently on easier composites, and ratio-1
    epochs repeat the ratio-1 number."""
    import torch
    from model import build_model
    root = make_paixin(per_category=4, val=1, backgrounds=3, bg_val=1, size=(40, 32))
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    torch.manual_seed(0)
    weights = build_model("u2netp").state_dict()
    for epoch in range(3):
        torch.save(weights, run / "model" / f"u2netp_epoch{epoch}.pth")
    settings = {"dataset_path": root, "model_name": "u2netp", "epoch_num": 3, "image_size": 32,
                "update_ratio_epoch": 1, "e2h": {"schedule": "linear", "ramp_epochs": 2}}
    (run / "settings.json").write_text(json.dumps(settings))
    rows = e2h_ablation.read_csv_rows(e2h_ablation.measure_run(str(run)))
    assert [(r["epoch"], r["ratio"]) for r in rows] == [(0, 0.0), (1, 0.5), (2, 1.0)]
    assert rows[0]["mad_r1"] == pytest.approx(rows[1]["mad_r1"]) == pytest.approx(rows[2]["mad_r1"])
    assert rows[2]["mad_at_ratio"] == rows[2]["mad_r1"] and rows[0]["mad_at_ratio"] != rows[0]["mad_r1"]


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
    for item in ("e2h.schedule=linear", "seed=3"):
        args = e2h_ablation.parse_args(["--set", item, "--work", "/nonexistent/never"])
        with pytest.raises(SystemExit, match=item.split("=")[0]):
            e2h_ablation.run_ablation(args)  # set by the ablation itself; refused before any work
    args = e2h_ablation.parse_args([])
    assert args.seeds == [0, 1, 2] and args.schedules == ["step", "linear", "none"] and args.parallel == 9
    small = e2h_ablation.PRESETS["small"]["stage2"]
    assert small["epoch_num"] == 15 * small["update_ratio_epoch"] == 1.5 * small["e2h.ramp_epochs"]
    full = e2h_ablation.PRESETS["full"]["stage2"]
    assert (full["epoch_num"], full["update_ratio_epoch"], full["e2h.ramp_epochs"]) == (150, 10, 100)


def published_ratios():
    """{(measure column, arm): (per-seed ratios to no e2h, their geometric mean)} from the published
    documents/e2h_results.csv."""
    with open(os.path.join(DOCUMENTS, "e2h_results.csv"), newline="") as f:
        rows = {(r["schedule"], r["seed"]): r for r in csv.DictReader(f)}
    seeds = sorted({seed for _, seed in rows})
    out = {}
    for column in ("mad", "mad_r0", "seed_measure_ramp", "r1_measure_ramp"):
        for arm in ("step", "linear"):
            ratios = [float(rows[arm, s][column]) / float(rows["none", s][column]) for s in seeds]
            out[column, arm] = ratios, float(np.exp(np.mean(np.log(ratios))))
    return out


def test_pages_quote_the_published_ablation():
    """README.md's verdict table and e2h_ablation.md's ratio table hold the numbers of
    e2h_results.csv (paired per-seed ratios, geometric means, two decimals)."""
    ratios = published_ratios()
    fmt = "{:.2f}".format
    readme = open(os.path.join(os.path.dirname(DOCUMENTS), "README.md"), encoding="utf-8").read()
    for arm, label in (("step", "e2h `step` (the seed's)"), ("linear", "e2h `linear`")):
        row = f"| {label} | " + " | ".join(fmt(ratios[c, arm][1]) for c in ("mad", "mad_r0", "seed_measure_ramp")) + " |"
        assert row in readme, row
    page = open(os.path.join(DOCUMENTS, "e2h_ablation.md"), encoding="utf-8").read()
    for column, label in (("mad", "held-out MAD, real backgrounds (r = 1)"),
                          ("mad_r0", "held-out MAD, easy backgrounds (r = 0)"),
                          ("seed_measure_ramp", "the seed's measure over the ramp epochs"),
                          ("r1_measure_ramp", "the same epochs scored at r = 1")):
        cells = []
        for arm in ("step", "linear"):
            per_seed, mean = ratios[column, arm]
            mean = fmt(mean) if column not in ("mad",) else f"**{fmt(mean)}**"
            cells += [", ".join(fmt(r) for r in per_seed), mean]
        row = f"| {label} | " + " | ".join(cells) + " |"
        assert row in page, row
