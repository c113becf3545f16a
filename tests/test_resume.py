"""Exact resume: a stage-2 run killed with SIGKILL in epoch 1 and resumed with
``--set resume=RUN_DIR`` logs the same epochs as an uninterrupted run (timing columns aside)."""
import csv
import glob
import os
import signal
import subprocess
import sys
import threading

import pytest
import torch

import train_stage2
from utils.training.checkpoint import atomic_save
from utils.training.run_folder import TIMING_COLUMNS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = ["device=cpu", "arch=u2netp", "model_name=u2netp", "image_size=64", "crop_size=48", "batch_size=2",
            "image_num=4", "val_image_num=2", "dataloader.num_worker=0", "amp=off", "seed=3", "epoch_num=3",
            "update_ratio_epoch=1", "lr_schedule=cosine"]


def sets(*items):
    return [arg for item in items for arg in ("--set", item)]


def read_log(run_dir):
    with open(os.path.join(run_dir, "train_log.csv"), newline="") as f:
        return list(csv.DictReader(f))


def run_and_kill_in_epoch_1(settings, results_dir, cwd):
    """Start train_stage2.py in a subprocess; SIGKILL it once epoch 1's first step is done."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train_stage2.py"),
                             *sets(*settings, f"results_dir={results_dir}")],
                            cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = []
    marker = "epoch 1 (2/3):  "  # tqdm's bar for epoch 1; killed once it shows a finished step

    def watch():
        text = ""
        while True:
            chunk = proc.stderr.read1(4096) if hasattr(proc.stderr, "read1") else proc.stderr.read(1)
            if not chunk:
                return
            text += chunk.decode(errors="replace")
            bars = [part for part in text.replace("\n", "\r").split("\r") if part.startswith(marker)]
            if any("/" in b and not b[len(marker):].lstrip().startswith("0%") for b in bars):
                seen.append(True)
                proc.send_signal(signal.SIGKILL)
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    proc.wait(timeout=120)
    watcher.join(timeout=5)
    return bool(seen), proc.returncode


@pytest.mark.filterwarnings("ignore:no starting weights")
def test_killed_run_resumes_to_the_same_log(make_paixin, one_thread, tmp_path, monkeypatch):
    settings = SETTINGS + [f"dataset_path={make_paixin()}"]
    monkeypatch.chdir(tmp_path)  # no results_stage1/ here: both runs start from the same scratch init
    whole = train_stage2.main(sets(*settings, f"results_dir={tmp_path / 'whole'}"))
    killed, code = run_and_kill_in_epoch_1(settings, tmp_path / "killed", tmp_path)
    assert killed and code == -signal.SIGKILL
    (run,) = glob.glob(str(tmp_path / "killed" / "*"))
    assert [int(r["epoch"]) for r in read_log(run)] == [0]  # epoch 1 was cut short
    resumed = train_stage2.main(sets(f"resume={run}"))  # the run's own settings.json
    assert resumed == run
    expected, got = read_log(whole), read_log(run)
    assert [r["epoch"] for r in got] == ["0", "1", "2"]
    for want, have in zip(expected, got):
        for column in want:
            if column not in TIMING_COLUMNS:
                assert float(have[column]) == pytest.approx(float(want[column]), rel=1e-6, abs=1e-6), column
    for name in ("best.pth", "u2netp_epoch2.pth"):
        a = torch.load(os.path.join(whole, "model", name), weights_only=True)
        b = torch.load(os.path.join(run, "model", name), weights_only=True)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_atomic_save_leaves_the_old_file_on_failure(tmp_path):
    path = str(tmp_path / "checkpoint.pth")
    atomic_save({"epoch": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_save({"epoch": 2, "bad": Unpicklable()}, path)
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert os.listdir(tmp_path) == ["checkpoint.pth"]
