"""Two-process DDP on the CPU (gloo) through torchrun: one epoch of stage 2, rank 0 writes."""
import csv
import glob
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is needed")
def test_torchrun_two_processes_gloo(make_paixin, tmp_path, one_thread):
    settings = ["device=cpu", "arch=u2netp", "model_name=u2netp", "image_size=64", "crop_size=48",
                "batch_size=2", "image_num=4", "val_image_num=3", "dataloader.num_worker=0", "amp=off",
                "epoch_num=1", "update_ratio_epoch=1", f"dataset_path={make_paixin()}", f"results_dir={tmp_path / 'results'}"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               os.path.join(ROOT, "train_stage2.py")] + [a for s in settings for a in ("--set", s)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = glob.glob(str(tmp_path / "results" / "u2net_stage2_*"))
    assert len(runs) == 1, runs  # rank 0 alone made a results folder
    run = runs[0]
    with open(os.path.join(run, "train_log.csv"), newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["mix_ratio"]) == 0.0 and float(row["val_mad"]) > 0
    ckpt = torch.load(os.path.join(run, "checkpoint.pth"), weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert not any(k.startswith(("module.", "net.")) for k in ckpt["model"])
    assert os.path.isfile(os.path.join(run, "model", "best.pth"))
    assert done.stdout.count("epoch 0: loss") == 1  # one summary line: rank 0 prints
    # each rank estimated its part of the foreground cache, with a progress bar of its own
    assert "rank 0: estimating foregrounds" in done.stderr and "rank 1: estimating foregrounds" in done.stderr

    # the logged validation is that of the saved (rank 0) weights, scored by one process
    from model import load_model
    from train_stage2 import build_datasets
    from utils.distributed import DistInfo
    from utils.settings import build_settings
    from utils.training.engine import VAL_METRICS, validate
    _, val_set, _ = build_datasets(build_settings("train_stage2", overrides=settings))
    alone, _ = validate(load_model(os.path.join(run, "model", "u2netp_epoch0.pth")), val_set, 64, DistInfo(),
                        batch_size=2, max_images=3)
    for key in VAL_METRICS:
        assert float(row[f"val_{key}"]) == pytest.approx(alone[key], rel=1e-7, abs=1e-12), key
