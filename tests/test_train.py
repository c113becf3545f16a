"""Training scripts end to end on tiny made-up datasets (U2NETP, 64 px images, 48 px crops).

One stage-1 epoch and three stage-2 epochs produce every file of the results contract; the
stage-2 mix_ratio follows the e2h schedule with 2 DataLoader workers; saved weights load into
the original U-2-Net code with the same outputs; starting weights and a NaN loss behave.
"""
import csv
import glob
import json
import os

import cv2
import pytest
import torch

import train_stage1
import train_stage2
from model import CheckpointError, build_model, load_model
from tests.reference_u2net import U2NETP as ReferenceU2NETP
from utils.training.entry import load_start
from utils.training.run_folder import COLUMNS
from utils.settings import build_settings

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["device=cpu", "arch=u2netp", "model_name=u2netp", "image_size=64", "crop_size=48", "batch_size=2",
        "image_num=4", "val_image_num=2", "dataloader.num_worker=0", "amp=off", "seed=0"]


def sets(*items):
    return [arg for item in items for arg in ("--set", item)]


def read_log(run_dir):
    with open(os.path.join(run_dir, "train_log.csv"), newline="") as f:
        return list(csv.DictReader(f))


def check_results_contract(run_dir, epochs, model_name="u2netp"):
    """Every file DESIGN.md's 'Results of a training run' lists, with the right contents."""
    settings = json.load(open(os.path.join(run_dir, "settings.json")))
    assert settings["arch"] == "u2netp" and settings["image_size"] == 64
    rows = read_log(run_dir)
    assert [int(r["epoch"]) for r in rows] == list(range(epochs))
    assert tuple(rows[0]) == COLUMNS
    assert all(float(r["val_mad"]) == pytest.approx(float(r["val_loss"])) for r in rows)
    for epoch in range(epochs):
        assert os.path.isfile(os.path.join(run_dir, "model", f"{model_name}_epoch{epoch}.pth"))
        assert os.path.getsize(os.path.join(run_dir, "image", f"epoch{epoch}.png")) > 0
    curves = cv2.imread(os.path.join(run_dir, "curves.png"))
    assert curves.shape == (800, 1040, 3) and curves.std() > 10  # 13x10 in at 80 dpi, drawn on
    best = torch.load(os.path.join(run_dir, "model", "best.pth"), weights_only=True)
    assert set(best) == set(build_model("u2netp").state_dict())  # plain: no module./_orig_mod.
    ckpt = torch.load(os.path.join(run_dir, "checkpoint.pth"), weights_only=True)
    assert ckpt["epoch"] == epochs - 1
    assert {"model", "optimizer", "scheduler", "scaler", "best_mad", "rng", "e2h", "settings"} <= set(ckpt)
    assert ckpt["best_mad"] == pytest.approx(min(float(r["val_mad"]) for r in rows))
    assert not glob.glob(os.path.join(run_dir, "**", "*.tmp*"), recursive=True)
    return rows


def test_stage1_one_epoch_writes_the_results_contract(make_aisegment, tmp_path):
    run = train_stage1.main(sets(*TINY, "epoch_num=1", f"dataset_path={make_aisegment()}",
                                 f"results_dir={tmp_path / 'results'}"))
    assert os.path.basename(run).startswith("u2net_stage1_")
    rows = check_results_contract(run, epochs=1)
    assert float(rows[0]["mix_ratio"]) == 1.0 and float(rows[0]["lr"]) == 1e-3
    for column in COLUMNS[1:]:
        assert float(rows[0][column]) == float(rows[0][column])  # not NaN

    # the weight file loads into the original U-2-Net code, with the same outputs as ours
    path = os.path.join(run, "model", "u2netp_epoch0.pth")
    ours = load_model(path)
    original = ReferenceU2NETP(3, 1)
    original.load_state_dict(torch.load(path, weights_only=True), strict=True)
    original.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(ours(x), original(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.fixture
def init_weights(tmp_path):
    """A fresh U2NETP's state_dict saved as <tmp>/init/best.pth (stands in for stage 1's)."""
    torch.manual_seed(1)
    os.makedirs(tmp_path / "init")
    torch.save(build_model("u2netp").state_dict(), tmp_path / "init" / "best.pth")
    return tmp_path / "init" / "best.pth"


def test_stage2_three_epochs_with_workers_follow_the_e2h_schedule(make_paixin, init_weights, tmp_path):
    run = train_stage2.main(sets(*TINY, "epoch_num=3", "update_ratio_epoch=1", "e2h.schedule=step",
                                 "dataloader.num_worker=2", "lr_schedule=seed", f"dataset_path={make_paixin()}",
                                 f"results_dir={tmp_path / 'results'}", f"model_path={init_weights.parent}",
                                 "pth_name=best.pth"))
    rows = check_results_contract(run, epochs=3)
    # step schedule, update_ratio_epoch 1: r = 0, 0.1, 0.2 (measured from the batches)
    assert [float(r["mix_ratio"]) for r in rows] == pytest.approx([0.0, 0.1, 0.2], abs=1e-6)
    # seed lr: constant for 11 epochs (update_ratio_epoch 1) -> 1e-3 throughout
    assert [float(r["lr"]) for r in rows] == [1e-3] * 3
    ckpt = torch.load(os.path.join(run, "checkpoint.pth"), weights_only=True)
    assert ckpt["e2h"]["ratio"] == pytest.approx(0.2) and ckpt["e2h"]["next_ratio"] == pytest.approx(0.3)


def test_stage2_starting_weights(make_paixin, init_weights, tmp_path, monkeypatch):
    """Named weights; else the newest results_stage1/*/model/best.pth; else scratch, warned;
    weights of another architecture are an error that says what to set."""
    dataset = make_paixin()
    settings = build_settings("train_stage2", overrides=TINY + [f"dataset_path={dataset}"])
    best = torch.load(init_weights, weights_only=True)
    monkeypatch.chdir(tmp_path)
    net = build_model("u2netp")
    with pytest.warns(UserWarning, match="from scratch"):
        assert load_start(net, "train_stage2", settings, None) is None
    os.makedirs("results_stage1/run/model")
    torch.save(best, "results_stage1/run/model/best.pth")
    assert load_start(net, "train_stage2", settings, None).endswith(os.path.join("run", "model", "best.pth"))
    torch.testing.assert_close(net.state_dict(), best)
    stage1 = build_settings("train_stage1", overrides=TINY + [f"dataset_path={dataset}"])
    assert load_start(build_model("u2netp"), "train_stage1", stage1, None) is None  # stage 1: none to look for
    torch.save(build_model("u2net").state_dict(), "u2net.pth")
    named = build_settings("train_stage2", overrides=TINY + [f"dataset_path={dataset}", "model_path=.",
                                                             "pth_name=u2net.pth"])
    with pytest.raises(CheckpointError, match="holds u2net weights, but the settings say arch='u2netp'"):
        load_start(net, "train_stage2", named, None)


def no_data(settings):
    raise AssertionError("a dataset was built before the cheap checks")


def one_line_exit(capsys, script, argv):
    with pytest.raises(SystemExit) as exit_info:
        script.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"{script.SCRIPT}: error: ")]
    assert exit_info.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_cheap_checks_come_before_any_data_and_exit_2_with_one_line(tmp_path, monkeypatch, capsys):
    """Weights of another arch, amp=bf16 where only emulated, an unknown or absent device, a
    results_dir that cannot be written: found before the dataset (whose foreground estimation
    takes minutes) is built, each one line naming the key or the file, exit status 2."""
    monkeypatch.setattr(train_stage2, "build_datasets", no_data)
    monkeypatch.chdir(tmp_path)
    torch.save(build_model("u2net").state_dict(), "u2net.pth")
    base = TINY + [f"dataset_path={tmp_path}", f"results_dir={tmp_path / 'results'}"]
    err = one_line_exit(capsys, train_stage2, sets(*base, "model_path=.", "pth_name=u2net.pth"))
    assert "u2net.pth: holds u2net weights, but the settings say arch='u2netp'" in err
    from utils import device
    monkeypatch.setattr(device, "cpu_bf16_native", lambda: False)
    err = one_line_exit(capsys, train_stage2, sets(*base, "amp=bf16"))
    assert "--set amp=bf16: amp=bf16: this CPU (no AVX512-BF16 or AMX) only emulates bf16" in err
    err = one_line_exit(capsys, train_stage2, sets(*base, "device=tpu"))
    assert "--set device=tpu: device:" in err and "'tpu'" in err
    if not torch.cuda.is_available():
        err = one_line_exit(capsys, train_stage2, sets(*base, "device=cuda"))
        assert "--set device=cuda: device: device 'cuda' asked for, but no CUDA GPU is available" in err
    open("a_file", "w").close()
    err = one_line_exit(capsys, train_stage2, sets(*base, "results_dir=a_file/results"))
    assert "--set results_dir=a_file/results: results_dir 'a_file/results' is not a writable folder" in err
    err = one_line_exit(capsys, train_stage2, sets(*base, "lr=NaN"))
    assert "--set lr=NaN: lr must be a finite number, got nan" in err


def test_config_errors_and_an_empty_resume(tmp_path, monkeypatch, capsys, make_aisegment):
    """--config naming a folder or a binary file: one line, exit 2; ``--set resume=`` (empty)
    is a new run, not an UnboundLocalError."""
    monkeypatch.setattr(train_stage1, "build_datasets", no_data)
    err = one_line_exit(capsys, train_stage1, ["--config", str(tmp_path)])
    assert f"{tmp_path}: is a folder, not a settings file" in err
    (tmp_path / "binary.json").write_bytes(bytes(range(256)))
    err = one_line_exit(capsys, train_stage1, ["--config", str(tmp_path / "binary.json")])
    assert "binary.json: not a text file" in err
    monkeypatch.undo()
    run = train_stage1.main(sets(*TINY, "epoch_num=1", f"dataset_path={make_aisegment()}", "resume=",
                                 f"results_dir={tmp_path / 'results'}"))
    assert [int(r["epoch"]) for r in read_log(run)] == [0]


def test_nan_loss_stops_the_run_naming_epoch_and_step(make_aisegment, tmp_path, monkeypatch):
    from utils.training import losses
    calls = {"n": 0}
    real = losses.MattingLoss.forward

    def nan_on_second_step(self, logits, alpha, unknown):
        terms = real(self, logits, alpha, unknown)
        calls["n"] += 1
        if calls["n"] == 2:
            terms["total"] = terms["total"] * float("nan")
        return terms

    monkeypatch.setattr(losses.MattingLoss, "forward", nan_on_second_step)
    with pytest.raises(SystemExit, match="epoch 0, step 1: the training loss is nan"):
        train_stage1.main(sets(*TINY, "epoch_num=1", f"dataset_path={make_aisegment()}",
                               f"results_dir={tmp_path / 'results'}"))
    (run,) = glob.glob(str(tmp_path / "results" / "*"))
    assert not os.path.exists(os.path.join(run, "checkpoint.pth"))
    assert os.listdir(os.path.join(run, "model")) == []
