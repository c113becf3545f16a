"""Exact resume: a stage-2 run stopped at any instant and resumed with ``--set resume=RUN_DIR``
ends with the files of an uninterrupted run (timing columns aside).

- SIGKILL of a child process in the middle of epoch 1;
- a stop at every file write of a run (the folder as it is while the temporary file of each
  write is complete but not yet renamed: a kill there leaves exactly that), each resumed;
- a run stopped before its first checkpoint restarts from the weights it started from;
- RNG states after a resume equal the uninterrupted run's, with training that draws from them.
"""
import csv
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

import train_stage2
from model import build_model
from utils.training.checkpoint import atomic_save, capture_rng_state
from utils.distributed import DistInfo
from utils.logger import CSVLog
from utils.settings import build_settings
from utils.training import entry
from utils.plots import CURVE_PANELS
from utils.training import run_folder
from utils.training.run_folder import COLUMNS, TIMING_COLUMNS, RunFolder

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
    # TQDM_MININTERVAL=0: the bar is drawn after every step, however fast (else tqdm may skip to 100 %)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, TQDM_MININTERVAL="0")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train_stage2.py"),
                             *sets(*settings, f"results_dir={results_dir}")],
                            cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = []
    marker = "epoch 1 (2/3):"  # tqdm's bar for epoch 1; killed once it shows the first of 2 steps done

    def watch():
        text = ""
        while True:
            chunk = proc.stderr.read1(4096) if hasattr(proc.stderr, "read1") else proc.stderr.read(1)
            if not chunk:
                return
            text += chunk.decode(errors="replace")
            bars = [part for part in text.replace("\n", "\r").split("\r") if part.startswith(marker)]
            if any("| 1/2 " in b for b in bars):
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


# ---- a stop at every write -------------------------------------------------------------------

# 2 epochs; epoch 0 writes no epoch weights (save_every=2) and is the best; epoch 1 (the last)
# writes its weights and is worse, so best.pth must stay epoch 0's through every resume.
EVERY_WRITE = ["device=cpu", "arch=u2netp", "model_name=u2netp", "image_size=64", "crop_size=48", "batch_size=2",
               "image_num=4", "val_image_num=2", "dataloader.num_worker=0", "amp=off", "seed=3", "epoch_num=2",
               "save_every=2", "lr=0.003", "lr_schedule=constant", "loss=l1", "update_ratio_epoch=1",
               "e2h.schedule=step", "grad_clip=0.0", "channels_last=true"]


class Stop(BaseException):
    """Stands for the process being killed (not an Exception: nothing may catch it)."""


def snapshot_every_write(monkeypatch, results_dir, store):
    """Before each ``os.replace`` into ``results_dir`` (the rename that ends every atomic write),
    copy the run folder to ``store/<k>/``: the files a kill at that instant leaves, the
    complete temporary file included. Returns the list of ``(copy, file being written)``."""
    real_replace, taken = os.replace, []

    def replace(src, dst, *args, **kwargs):
        rel = os.path.relpath(os.path.abspath(dst), results_dir)
        if not rel.startswith(".."):
            run = rel.split(os.sep)[0]
            copy = os.path.join(store, f"{len(taken):02d}", run)
            shutil.copytree(os.path.join(results_dir, run), copy)
            taken.append((copy, os.path.relpath(rel, run)))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return taken


def record_rng(monkeypatch):
    """Wrap train_stage2's train_one_epoch: record the RNG states at the start of each epoch in
    the returned list, then draw from every generator, as dropout or augmentation in the main
    process would (without this nothing in training draws, and a lost RNG state goes unseen)."""
    real, seen = entry.train_one_epoch, []

    def train_one_epoch(state, criterion, loader, epoch, epoch_num):
        seen.append((epoch, capture_rng_state()))
        torch.rand(5), np.random.rand(5), random.random()
        return real(state, criterion, loader, epoch, epoch_num)

    monkeypatch.setattr(entry, "train_one_epoch", train_one_epoch)
    return seen


def files_of(run_dir):
    return sorted(os.path.relpath(os.path.join(folder, name), run_dir)
                  for folder, _, names in os.walk(run_dir) for name in names)


def assert_same_rng(a, b):
    torch.testing.assert_close(a["torch"], b["torch"], rtol=0, atol=0)
    torch.testing.assert_close(a["numpy"]["keys"], b["numpy"]["keys"], rtol=0, atol=0)
    assert {k: v for k, v in a["numpy"].items() if k != "keys"} == {k: v for k, v in b["numpy"].items() if k != "keys"}
    assert torch.equal(a["python"]["state"], b["python"]["state"]) and a["python"]["gauss"] == b["python"]["gauss"]


def assert_same_run(want, have):
    """The files of run ``have`` are those of run ``want``: the same names, the same log (timing
    columns aside), the same weights, grids, curves and checkpoint."""
    assert files_of(have) == files_of(want)
    without_timing = lambda rows: [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]
    assert without_timing(read_log(have)) == without_timing(read_log(want))
    for name in files_of(want):
        a, b = os.path.join(want, name), os.path.join(have, name)
        if name.startswith("model" + os.sep):
            wa, wb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
            assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), name
        elif name.endswith(".png") or name == "start.json":
            assert open(a, "rb").read() == open(b, "rb").read(), name
    settings = [json.load(open(os.path.join(run, "settings.json"))) for run in (want, have)]
    same = dict(resume="", results_dir="")  # where the run is, and whether it was resumed
    assert {**settings[0], **same} == {**settings[1], **same}
    ca, cb = (torch.load(os.path.join(run, "checkpoint.pth"), weights_only=True) for run in (want, have))
    for key in ("epoch", "best_mad", "best_epoch", "epoch_weights", "scheduler", "e2h", "arch", "world_size"):
        assert ca[key] == cb[key], key
    assert without_timing(ca["log"]) == without_timing(cb["log"])
    assert torch.equal(ca["grid_png"], cb["grid_png"])
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])
    torch.testing.assert_close(ca["optimizer"], cb["optimizer"], rtol=0, atol=0)
    assert_same_rng(ca["rng"][0], cb["rng"][0])


def curves_as_text(rows, f):
    """Stands in for plots.save_curves: the numbers it would plot, as bytes (the figure is tested
    in test_train.py; drawn by matplotlib it took half of this test's time, 1-2 s a call)."""
    plotted = [c for _, columns in CURVE_PANELS for c in columns]
    f.write(json.dumps([{c: row.get(c) for c in ["epoch", *plotted]} for row in rows]).encode())


@pytest.mark.filterwarnings("ignore:no starting weights")
def test_a_stop_at_every_write_resumes_to_the_same_files_and_rng_states(make_paixin, one_thread, tmp_path,
                                                                         monkeypatch, capsys):
    settings = EVERY_WRITE + [f"dataset_path={make_paixin()}"]
    monkeypatch.chdir(tmp_path)  # no results_stage1/ here: from the seed's random initialisation
    monkeypatch.setattr(run_folder, "save_curves", curves_as_text)
    seen = record_rng(monkeypatch)
    with monkeypatch.context() as patch:
        taken = snapshot_every_write(patch, str(tmp_path / "whole"), str(tmp_path / "stops"))
        whole = train_stage2.main(sets(*settings, f"results_dir={tmp_path / 'whole'}"))
    whole_rng = dict(seen)
    ckpt = torch.load(os.path.join(whole, "checkpoint.pth"), weights_only=True)
    assert ckpt["best_epoch"] == 0, "epoch 1 must be worse than epoch 0 here (pick another lr or seed)"
    written = [name for _, name in taken]
    assert written == ["start.json", "settings.json"] + ["checkpoint.pth", "model/best.pth", "image/epoch0.png",
                                                         "train_log.csv", "curves.png", "checkpoint.pth",
                                                         "model/u2netp_epoch1.pth", "image/epoch1.png",
                                                         "train_log.csv", "curves.png"]
    for copy, name in taken:
        if not os.path.exists(os.path.join(copy, "settings.json")):  # not a run folder yet
            with pytest.raises(SystemExit):
                train_stage2.main(sets(f"resume={copy}"))
            assert "not a run folder" in capsys.readouterr().err
            continue
        committed = torch.load(os.path.join(copy, "checkpoint.pth"), weights_only=True)["epoch"] \
            if os.path.exists(os.path.join(copy, "checkpoint.pth")) else -1
        del seen[:]
        assert train_stage2.main(sets(f"resume={copy}")) == copy
        out = capsys.readouterr().out
        assert ("training it again from epoch 0" in out) == (committed == -1), (name, out[-500:])
        assert [epoch for epoch, _ in seen] == list(range(committed + 1, 2)), name
        for epoch, rng in seen:
            assert_same_rng(rng, whole_rng[epoch])
        assert_same_run(whole, copy)


def test_a_run_stopped_before_its_first_checkpoint_restarts_from_its_starting_weights(
        make_paixin, one_thread, tmp_path, monkeypatch, capsys):
    """Stage 2 takes the newest results_stage1/*/model/best.pth; a newer one that appears before
    the resume is not taken, and a starting file changed since is refused."""
    settings = EVERY_WRITE + [f"dataset_path={make_paixin()}", "epoch_num=1"]
    monkeypatch.chdir(tmp_path)

    def stage1_run(name, seed):
        os.makedirs(tmp_path / "results_stage1" / name / "model")
        torch.manual_seed(seed)
        atomic_save(build_model("u2netp").state_dict(), str(tmp_path / "results_stage1" / name / "model" / "best.pth"))

    stage1_run("old", 1)
    whole = train_stage2.main(sets(*settings, f"results_dir={tmp_path / 'whole'}"))

    def stop(*args):
        raise Stop()

    def stopped_run():  # stopped in its first epoch
        with monkeypatch.context() as patch:
            patch.setattr(entry, "train_one_epoch", stop)
            with pytest.raises(Stop):
                train_stage2.main(sets(*settings, f"results_dir={tmp_path / 'stopped'}"))
        return max(glob.glob(str(tmp_path / "stopped" / "*")), key=os.path.getmtime)

    run = stopped_run()
    assert sorted(os.listdir(run)) == ["image", "model", "settings.json", "start.json"]
    stage1_run("new", 2)
    os.utime(tmp_path / "results_stage1" / "new" / "model" / "best.pth")
    capsys.readouterr()
    assert train_stage2.main(sets(f"resume={run}")) == run
    assert "training it again from epoch 0 with its settings.json and its starting weights" in capsys.readouterr().out
    assert_same_run(whole, run)

    run = stopped_run()  # now after "new": starts from it; then that file changes
    assert json.load(open(os.path.join(run, "start.json")))["weights"].endswith(os.path.join("new", "model", "best.pth"))
    torch.manual_seed(3)
    atomic_save(build_model("u2netp").state_dict(), str(tmp_path / "results_stage1" / "new" / "model" / "best.pth"))
    with pytest.raises(SystemExit) as exit_info:
        train_stage2.main(sets(f"resume={run}"))
    assert exit_info.value.code == 2 and "changed since" in capsys.readouterr().err


def test_a_checkpoint_without_log_rows_resumes_with_the_csv_rows_of_its_epochs(tmp_path):
    """Checkpoints of the version before the commit point hold no log: the CSV rows up to the
    checkpoint's epoch are kept (that version wrote them before its checkpoint), later ones dropped."""
    run = tmp_path / "run"
    os.makedirs(run / "model")
    CSVLog(str(run / "train_log.csv")).write([{"epoch": e, **{c: 0.1 * e for c in COLUMNS[1:]}} for e in range(3)])
    settings = build_settings("train_stage2", overrides=[f"dataset_path={tmp_path}", f"resume={run}"])
    RunFolder(settings, DistInfo(), checkpoint={"epoch": 1, "model": {}, "best_mad": 0.5})
    assert [(r["epoch"], r["val_mad"]) for r in read_log(run)] == [("0", "0.0"), ("1", "0.1")]
    assert os.path.getsize(run / "curves.png") > 0 and os.listdir(run / "model") == []


def error_line(capsys):
    """The one error line on stderr (warnings aside, which pytest may let through), no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("train_stage1: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_resume_refuses_a_changed_training_set_and_a_damaged_checkpoint(make_aisegment, one_thread, tmp_path,
                                                                          capsys):
    """Stage 1, one epoch, then: a training photo deleted (image_num then takes the next one)
    -> the resume is refused, naming what changed; a truncated checkpoint.pth -> one line, no
    traceback. Both exit 2 before any epoch runs."""
    import train_stage1
    root = make_aisegment(count=10, val=2)
    run = train_stage1.main(sets(*SETTINGS[:-2], "epoch_num=1", "image_num=4", f"dataset_path={root}",
                                 f"results_dir={tmp_path / 'results'}"))
    record = torch.load(os.path.join(run, "checkpoint.pth"), weights_only=True)["training_set"]
    assert record["count"] == 4 and [f[0] for f in record["files"]][0].startswith("clip_img/")
    spare = shutil.copytree(run, tmp_path / "spare")
    gone = record["files"][1][0]
    os.remove(os.path.join(root, gone))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train_stage1.main(sets(f"resume={run}", "epoch_num=2"))
    err = error_line(capsys)
    assert exit_info.value.code == 2
    assert f"the training set changed since its checkpoint (4 files then, 4 now): 1 removed (e.g. {gone}); 1 added" in err
    assert [int(r["epoch"]) for r in read_log(run)] == [0]

    with open(os.path.join(spare, "checkpoint.pth"), "r+b") as f:
        f.truncate(os.path.getsize(f.name) // 2)
    with pytest.raises(SystemExit) as exit_info:
        train_stage1.main(sets(f"resume={spare}", "epoch_num=2"))
    err = error_line(capsys)
    assert exit_info.value.code == 2
    assert "checkpoint.pth: not a readable checkpoint (truncated or damaged?)" in err


def test_commit_points_flush_their_folder_after_the_rename(tmp_path, monkeypatch):
    """atomic_save (checkpoint.pth, weight files) fsyncs the file, then its folder: the rename
    is an entry of the folder, which a power cut can lose without it."""
    import stat
    synced, real_fsync = [], os.fsync

    def fsync(fd):
        synced.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    atomic_save({"epoch": 1}, str(tmp_path / "checkpoint.pth"))
    assert synced == ["file", "folder"]
