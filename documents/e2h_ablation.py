"""Easy-to-hard ablation: does e2h training beat training on real backgrounds from the start?

Run from the repository root:

    python documents/e2h_ablation.py                 # CPU scale (the published numbers; e2h_results.md gives the run's time)
    python documents/e2h_ablation.py --preset full \\
        --stage1-set dataset_path=/data/AISegment --set dataset_path=/data/paixin_comp_mod   # GPU, the seed's scale
    python documents/e2h_ablation.py --report-only   # table and figure again from the last runs

The protocol, run with the project's own scripts as subprocesses:

1. Data: the given datasets; else (small preset) synthetic portraits made by
   ``data_examples/make_examples.py``'s generator in both layouts, in ``<work>/data/``.
2. Stage 1: one ``train_stage1.py`` run (AISegment layout); its ``best.pth`` starts every stage-2
   run (``--init FILE`` starts them from FILE instead and skips stage 1).
3. Stage 2: arms ``step`` (the seed's e2h: +0.1 every ``update_ratio_epoch`` epochs), ``linear``
   (ramp over ``10 * update_ratio_epoch`` epochs) and ``none`` (ratio 1 throughout), each with
   the same budget: ``15 * update_ratio_epoch`` epochs, so the ratio ramps over the first two
   thirds and the last third is at ratio 1, as in the seed (1 at epoch 100 of 150); the lr
   schedule is the seed's (constant for ``11 * update_ratio_epoch`` epochs, then x0.975 an
   epoch) for every arm. Each arm runs with the same seeds (``--seeds``; the seed sets the data
   order, crops, backgrounds and colours drawn); runs go side by side, one thread each
   (``--parallel``: all 9 in the small preset, so a CPU shared with other jobs gives them a fair
   share; ``--parallel 3`` runs the arms of one seed at a time; ``--threads``).
4. Held-out scores of each run's last-epoch weights (no selection on the held-out split, which
   is also the validation split) with ``test_stage2.py`` on the val split composited with
   ``heldout_ratio=1`` (real photo backgrounds: the seed's claim) and ``heldout_ratio=0`` (easy
   backgrounds), the same composites for every run (test seed 0).
5. The seed's own measure, beside ours: the seed's validation composites follow the training
   epoch's e2h ratio, so an e2h run is validated on easier images until the ratio reaches 1.
   For every epoch of every run, the MAD on the validation photos composited at that epoch's
   ratio and at ratio 1 (``<run>/e2h_measure.csv``, from the per-epoch weights).
6. ``<out>/e2h_results.csv`` (one row per run), ``.md`` (means, standard deviations, paired
   per-seed ratios, the scale, the verdict) and ``.png`` (curves and example mattes);
   ``<work>/ablation.json``. Runs already complete in ``<work>`` are reused, so an interrupted
   ablation continues where it stopped.

Options: ``--preset small|full``, ``--set KEY=VALUE`` (every stage-2 run, after the preset),
``--stage1-set KEY=VALUE``, ``--test-set KEY=VALUE``, ``--init FILE``, ``--seeds 0,1,2``,
``--schedules step,linear,none``, ``--parallel N``, ``--threads N`` (OMP_NUM_THREADS of each
stage-2 run), ``--work DIR`` (default ``results_stage2/e2h_ablation``), ``--out DIR`` (default
``documents/``).
"""
import argparse
import concurrent.futures
import csv
import glob
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from utils.constants import E2H_SCHEDULES  # noqa: E402
from utils.runs import read_run_settings  # noqa: E402

SCHEDULES = E2H_SCHEDULES  # the arms: every e2h schedule, "none" the baseline
LABELS = {"step": "e2h step (seed's)", "linear": "e2h linear", "none": "no e2h"}
TEST_SEED = 0  # held-out composites: the same backgrounds for every run
PRESETS = {
    # CPU, about an hour on 2 shared cores: U2NETP with bf16 autocast where the CPU has it natively
    "small": {
        "synthetic": {"aisegment": 160, "photos": 240, "backgrounds": 40, "width": 300, "height": 400},
        "stage1": {"arch": "u2netp", "model_name": "u2netp", "image_size": 112, "crop_size": 96, "batch_size": 8,
                   "epoch_num": 8, "image_num": 120, "val_image_num": 16, "lr": 0.001, "lr_schedule": "constant",
                   "amp": "auto", "seed": 0, "save_every": 8, "dataloader.num_worker": 0},
        "stage2": {"arch": "u2netp", "model_name": "u2netp", "image_size": 112, "crop_size": 96, "batch_size": 8,
                   "epoch_num": 30, "update_ratio_epoch": 2, "e2h.ramp_epochs": 20, "image_num": 48,
                   "val_image_num": 16, "lr": 0.001, "lr_schedule": "seed", "amp": "auto", "save_every": 1,
                   "dataloader.num_worker": 0},
        "seeds": [0, 1, 2], "parallel": 9, "threads": 1, "stage1_threads": 1,
    },
    # GPU, the seed's scale: U2NET at 320/288, stage 2 150 epochs, +0.1 every 10, ratio 1 from 100
    "full": {
        "synthetic": None,
        "stage1": {"arch": "u2net", "model_name": "u2net", "image_size": 320, "crop_size": 288, "batch_size": 8,
                   "epoch_num": 30, "lr": 0.001, "lr_schedule": "cosine", "val_image_num": 500, "seed": 0,
                   "save_every": 10, "dataloader.num_worker": 8},
        "stage2": {"arch": "u2net", "model_name": "u2net", "image_size": 320, "crop_size": 288, "batch_size": 8,
                   "epoch_num": 150, "update_ratio_epoch": 10, "e2h.ramp_epochs": 100, "lr": 0.001,
                   "lr_schedule": "seed", "val_image_num": 500, "save_every": 10, "dataloader.num_worker": 8},
        "seeds": [0, 1, 2], "parallel": 1, "threads": None, "stage1_threads": None,
    },
}
CONTROLLED = ("e2h.schedule", "seed", "model_path", "pth_name", "results_dir", "project_name", "resume")
METRICS = ("mad", "sad", "mse", "grad", "conn", "mad_unknown")


# ---- settings, data, hardware ------------------------------------------------------------------
def parse_sets(items):
    """['k=v', ...] -> {k: v} with v parsed as JSON (else the plain string), as the scripts do."""
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set {item}: expected KEY=VALUE")
        key, raw = item.split("=", 1)
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def as_sets(mapping):
    """{k: v} -> ['--set', 'k=<json v>', ...] (strings as they are)."""
    args = []
    for key, value in mapping.items():
        args += ["--set", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
    return args


def make_synthetic(work, spec, seed=20240611):
    """Generate (once) synthetic portraits in both layouts with the project's example generator
    -> (AISegment root, paixin_comp_mod root)."""
    out = os.path.join(work, "data")
    roots = (os.path.join(out, "AISegment"), os.path.join(out, "paixin_comp_mod"))
    marker = os.path.join(out, "synthetic.json")
    wanted = {**spec, "seed": seed}
    if all(map(os.path.isdir, roots)) and os.path.exists(marker):
        with open(marker) as f:
            if json.load(f) == wanted:
                return roots
    import importlib.util
    module_spec = importlib.util.spec_from_file_location("make_examples", os.path.join(ROOT, "data_examples", "make_examples.py"))
    make_examples = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(make_examples)
    print(f"generating {spec['aisegment']} + {spec['photos']} synthetic portraits in {out} ...", flush=True)
    os.makedirs(out, exist_ok=True)
    make_examples.make_all(out, width=spec["width"], height=spec["height"], photos=spec["aisegment"],
                           per_category=spec["photos"] // 2, backgrounds=spec["backgrounds"], seed=seed)
    with open(marker, "w") as f:
        json.dump(wanted, f)
    return roots


def count_split(dataset_path, stage, image_num=None):
    """(training photos, held-out photos) as the scripts select them."""
    if stage == 1:
        from data_loader import index_aisegment as index
    else:
        from data_loader import index_foregrounds as index
    return len(index(dataset_path, "train", image_num)[0]), len(index(dataset_path, "val")[0])


def describe_hardware(device="auto", threads=None):
    """One line naming the device the runs used (the GPU, else the CPU model, its cores, native
    bf16 or not, and the threads each run was given)."""
    import torch
    from utils.device import cpu_bf16_native, resolve_device
    from utils.machine import cpu_model
    if resolve_device(device).type == "cuda":
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    bf16 = "native bf16 (amp=auto: bf16 autocast)" if cpu_bf16_native() else "no native bf16 (fp32)"
    used = f"{threads} thread(s) per stage-2 run" if threads else f"{torch.get_num_threads()} threads per run"
    return f"CPU: {cpu_model()}, {os.cpu_count()} cores, {bf16}, {used}, torch {torch.__version__}"


def load_average():
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


# ---- the runs ----------------------------------------------------------------------------------
def run_logged(cmd, log_path, threads=None, echo=True):
    """Run ``cmd`` in the repository root, saving (and with ``echo`` showing) its output; error
    if it fails. ``threads``: OMP_NUM_THREADS/MKL_NUM_THREADS for it (None: PyTorch's default)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    print("$ " + " ".join(cmd) + ("" if echo else f"   (output: {log_path})"), flush=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        while chunk := proc.stdout.read1(4096):
            if echo:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
            log.write(chunk)
        if proc.wait():
            raise RuntimeError(f"failed (exit {proc.returncode}): {' '.join(cmd)}\nits output: {log_path}")


def complete_run(results_dir, epochs):
    """The run folder in ``results_dir`` whose train_log has ``epochs`` rows, else None."""
    for run in sorted(glob.glob(os.path.join(results_dir, "*", "train_log.csv")), reverse=True):
        with open(run, newline="") as f:
            if sum(1 for _ in csv.DictReader(f)) == epochs:
                return os.path.dirname(run)
    return None


def train(script, sets, results_dir, log_path, threads=None, echo=True):
    """``python <script> --set ...`` into ``results_dir`` -> its run folder (reused if complete)."""
    done = complete_run(results_dir, sets["epoch_num"])
    if done:
        print(f"reusing the complete run {done}", flush=True)
        return done
    run_logged([sys.executable, script] + as_sets({**sets, "results_dir": results_dir}), log_path, threads, echo)
    done = complete_run(results_dir, sets["epoch_num"])
    if done is None:
        raise RuntimeError(f"{script} finished but left no complete run in {results_dir}")
    return done


def test(run, ratio, test_sets, log_path, threads=None, echo=True):
    """``test_stage2.py`` on ``run``'s last-epoch weights, the val split at ``heldout_ratio``."""
    output = os.path.join(run, f"test_last_epoch_r{ratio:g}")
    if os.path.isfile(os.path.join(output, "summary.json")):
        return output
    settings = read_run_settings(run)
    weights = f"{settings['model_name']}_epoch{settings['epoch_num'] - 1}.pth"
    inherited = {k: settings[k] for k in ("dataset_path", "image_size", "device", "arch")}
    cmd = [sys.executable, "test_stage2.py", "--output", output, "--save-predictions", "--grid-rows", "3"]
    run_logged(cmd + as_sets({**inherited, "seed": TEST_SEED, "dataloader.num_worker": 0, **test_sets,
                              "heldout_ratio": ratio, "model_path": run, "pth_name": weights}),
               log_path, threads, echo)
    return output


def measure_run(run, max_images=None):
    """The seed's measure and ours for every saved epoch of ``run``: MAD on the val photos
    composited at the epoch's e2h ratio (the seed's validation) and at ratio 1, with the test
    composites' backgrounds (seed ``TEST_SEED``). Writes and returns ``<run>/e2h_measure.csv``."""
    import torch
    from data_loader import E2HSchedule, ForegroundDataset
    from model import load_model
    from utils.inference.core import predict_alphas
    s = read_run_settings(run)
    schedule = E2HSchedule(s["e2h"]["schedule"], s["update_ratio_epoch"], s["e2h"]["ramp_epochs"])
    ds = ForegroundDataset(s["dataset_path"], "val", seed=TEST_SEED, progress=False)
    n = min(len(ds), max_images or len(ds))
    composites = {}

    def images_at(ratio):
        if ratio not in composites:
            composites[ratio] = [ds.load_full(i, ratio) for i in range(n)]
        return composites[ratio]

    rows = []
    for epoch in range(s["epoch_num"]):
        weights = os.path.join(run, "model", f"{s['model_name']}_epoch{epoch}.pth")
        if not os.path.isfile(weights):
            continue
        net = load_model(weights, device="cpu")
        row = {"epoch": epoch, "ratio": schedule.ratio(epoch)}
        for column, ratio in (("mad_at_ratio", row["ratio"]), ("mad_r1", 1.0)):
            if column == "mad_r1" and ratio == row["ratio"]:
                row[column] = row["mad_at_ratio"]
                continue
            samples = images_at(ratio)
            with torch.no_grad():
                preds = predict_alphas(net, [rgb for rgb, _, _ in samples], size=s["image_size"], batch_size=8)
            row[column] = float(np.mean([np.abs(p - gt).mean() for p, (_, gt, _) in zip(preds, samples)]))
        rows.append(row)
    path = os.path.join(run, "e2h_measure.csv")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", "ratio", "mad_at_ratio", "mad_r1"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def stage2_job(schedule, seed, sets, start, work, args, echo):
    """Train, test at ratios 1 and 0, and measure per epoch, one stage-2 run -> its manifest entry."""
    name = f"{schedule}_seed{seed}"
    logs = os.path.join(work, "logs")
    began, load = time.time(), load_average()
    run_sets = {**sets, "e2h.schedule": schedule, "seed": seed, "project_name": f"e2h_{name}",
                "model_path": os.path.dirname(start), "pth_name": os.path.basename(start)}
    run = train("train_stage2.py", run_sets, os.path.join(work, "stage2", name), os.path.join(logs, f"train_{name}.log"),
                args.threads, echo)
    trained = time.time()
    tests = {str(r): test(run, r, parse_sets(args.test_sets), os.path.join(logs, f"test_{name}_r{r}.log"), args.threads, echo)
             for r in (1, 0)}
    measure = os.path.join(run, "e2h_measure.csv")
    if not os.path.isfile(measure):
        run_logged([sys.executable, os.path.abspath(__file__), "--measure", run], os.path.join(logs, f"measure_{name}.log"),
                   args.threads, echo)
    print(f"done: {name} ({(time.time() - began) / 60:.1f} min)", flush=True)
    return {"schedule": schedule, "seed": seed, "run": run, "tests": tests, "measure": measure,
            "train_wall_minutes": (trained - began) / 60, "wall_minutes": (time.time() - began) / 60,
            "load_start": load, "load_end": load_average()}


def run_ablation(args):
    """Data, stage 1, the stage-2 arms x seeds with their tests -> the manifest (saved as JSON)."""
    started, load = time.time(), load_average()
    preset = PRESETS[args.preset]
    user, user1 = parse_sets(args.sets), parse_sets(args.stage1_sets)
    bad = sorted((set(user) | set(user1)) & set(CONTROLLED))
    if bad:
        raise SystemExit(f"--set {', '.join(bad)}: set by the ablation itself (seeds: --seeds; start: --init)")
    sets, sets1 = {**preset["stage2"], **user}, {**preset["stage1"], **user1}
    os.makedirs(os.path.join(args.work, "logs"), exist_ok=True)
    data = "the given datasets"
    if preset["synthetic"] and not ("dataset_path" in user and ("dataset_path" in user1 or args.init)):
        spec = preset["synthetic"]
        root1, root2 = make_synthetic(args.work, spec)
        sets1.setdefault("dataset_path", root1)
        sets.setdefault("dataset_path", root2)
        data = (f"synthetic portraits from data_examples/make_examples.py ({spec['width']}x{spec['height']}, "
                f"hair-like strands, textured backgrounds): {spec['aisegment']} for stage 1, {spec['photos']} "
                f"foregrounds and {spec['backgrounds']} backgrounds for stage 2")
    if "dataset_path" not in sets or ("dataset_path" not in sets1 and not args.init):
        raise SystemExit("--preset full needs datasets: --stage1-set dataset_path=/data/AISegment "
                         "--set dataset_path=/data/paixin_comp_mod (or --init STAGE1.pth instead of stage 1)")
    for d in (sets, sets1):
        if "dataset_path" in d:
            d["dataset_path"] = os.path.abspath(d["dataset_path"])

    # stage 1 (its own subprocess) while this process estimates the stage-2 foregrounds once
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        stage1 = None
        if not args.init:
            stage1 = pool.submit(train, "train_stage1.py", {**sets1, "project_name": "e2h_stage1"},
                                 os.path.join(args.work, "stage1"), os.path.join(args.work, "logs", "train_stage1.log"),
                                 preset["stage1_threads"])
        from data_loader import ForegroundDataset
        for split, cap in (("train", sets.get("image_num")), ("val", None)):
            ForegroundDataset(sets["dataset_path"], split, image_num=cap, image_size=sets["image_size"],
                              crop_size=sets["crop_size"], progress=True)
        stage1_run = stage1.result() if stage1 else None
    start = os.path.abspath(args.init) if args.init else os.path.join(stage1_run, "model", "best.pth")

    jobs = [(schedule, seed) for seed in args.seeds for schedule in args.schedules]
    echo = args.parallel == 1
    with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
        futures = [pool.submit(stage2_job, schedule, seed, sets, start, args.work, args, echo) for schedule, seed in jobs]
        runs = [f.result() for f in futures]
    manifest = {"command": " ".join(["python"] + sys.argv), "preset": args.preset, "settings": sets,
                "stage1_settings": None if args.init else sets1, "stage1_run": stage1_run, "start": start,
                "data": data, "runs": runs, "seeds": args.seeds, "schedules": args.schedules,
                "photos": count_split(sets["dataset_path"], 2, sets.get("image_num")),
                "stage1_photos": None if args.init else count_split(sets1["dataset_path"], 1, sets1.get("image_num")),
                "hardware": describe_hardware(sets.get("device", "auto"), args.threads), "parallel": args.parallel,
                "load_start": load, "load_end": load_average(), "wall_minutes": (time.time() - started) / 60}
    with open(os.path.join(args.work, "ablation.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    return manifest


# ---- reading the results ------------------------------------------------------------------------
def read_csv_rows(path, ints=("epoch",)):
    """A CSV of numbers -> list of dicts of floats (``ints`` as int), sorted by epoch."""
    with open(path, newline="") as f:
        rows = [{k: (int(v) if k in ints else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]
    if not rows:
        raise ValueError(f"{path}: no rows")
    return sorted(rows, key=lambda row: row.get("epoch", 0))


def read_train_log(path):
    """train_log.csv -> list of dicts of floats (``epoch`` as int), in epoch order."""
    return read_csv_rows(path)


def read_summary(path):
    """test_stage2.py's summary.json -> {"count": int, metric: mean, ...}."""
    with open(path) as f:
        summary = json.load(f)
    return {"count": int(summary["count"]), **{k: float(v) for k, v in summary["means"].items()}}


def summarize(entry, log, r1, r0, measure, ramp_epochs):
    """One CSV row: the run's held-out errors at ratio 1 and 0 (last epoch's weights), its
    validation history and the seed's measure averaged over the ramp (epochs < ``ramp_epochs``)."""
    ramp = [m for m in measure if m["epoch"] < ramp_epochs] or measure
    row = {"schedule": entry["schedule"], "seed": entry["seed"], "test_images": r1["count"]}
    row.update({k: r1.get(k, math.nan) for k in METRICS})
    row.update({f"{k}_r0": r0.get(k, math.nan) for k in METRICS})
    row.update({"seed_measure_ramp": float(np.mean([m["mad_at_ratio"] for m in ramp])),
                "r1_measure_ramp": float(np.mean([m["mad_r1"] for m in ramp])),
                "epochs": len(log), "last_mix_ratio": log[-1]["mix_ratio"], "last_val_mad": log[-1]["val_mad"],
                "train_minutes": sum(r["seconds"] for r in log) / 60.0, "run": os.path.basename(entry["run"]),
                "ratios": [m["ratio"] for m in measure]})
    return row


def arm_stats(rows, schedules, columns):
    """{schedule: {column: (mean, sample std)}} over the seeds."""
    out = {}
    for schedule in schedules:
        mine = [r for r in rows if r["schedule"] == schedule]
        out[schedule] = {c: (float(np.mean([r[c] for r in mine])),
                             float(np.std([r[c] for r in mine], ddof=1)) if len(mine) > 1 else math.nan)
                         for c in columns}
    return out


def paired_ratios(rows, arm, column, baseline="none"):
    """{seed: arm / baseline} of ``column`` for the seeds both ran."""
    by = {(r["schedule"], r["seed"]): r[column] for r in rows}
    return {seed: by[(arm, seed)] / by[(baseline, seed)] for (s, seed) in by
            if s == arm and (baseline, seed) in by and by[(baseline, seed)]}


def verdict(rows, schedules):
    """Sentences stating what the numbers say about e2h against no e2h, whichever way."""
    lines = []
    for arm in [s for s in schedules if s != "none"]:
        for column, what in (("mad", "held-out MAD on real backgrounds (ratio 1, the seed's claim)"),
                             ("mad_r0", "held-out MAD on easy backgrounds (ratio 0)")):
            ratios = list(paired_ratios(rows, arm, column).values())
            if not ratios:
                continue
            mean = float(np.exp(np.mean(np.log(ratios))))
            if max(ratios) < 1:
                how = f"lower with {LABELS[arm]} in all {len(ratios)} seeds"
            elif min(ratios) > 1:
                how = f"higher with {LABELS[arm]} in all {len(ratios)} seeds"
            else:
                how = f"lower with {LABELS[arm]} in {sum(r < 1 for r in ratios)} of {len(ratios)} seeds, higher in the rest"
            lines.append(f"{what}: {how}; paired ratio {', '.join(f'{r:.2f}' for r in ratios)} "
                         f"(geometric mean {mean:.2f}; the seed reports about 0.5).")
    for a, b in same_schedule_pairs(rows, schedules):
        lines.append(f"{LABELS[a]} and {LABELS[b]} trained on the same e2h ratio every epoch at this update_ratio_epoch "
                     f"(the step schedule rises every epoch, as the linear one), so they are one schedule here; their "
                     f"numbers agree to {max_gap(rows, a, b):.1e} (bf16 and all randomness fixed by the seed). They "
                     f"differ when update_ratio_epoch > 1, as in `--preset full`.")
    seed_way = {arm: list(paired_ratios(rows, arm, "seed_measure_ramp").values()) for arm in schedules if arm != "none"}
    ours = {arm: list(paired_ratios(rows, arm, "r1_measure_ramp").values()) for arm in schedules if arm != "none"}
    for arm, ratios in seed_way.items():
        if ratios and ours[arm]:
            lines.append(f"Measured the seed's way (validation composites at the epoch's ratio), {LABELS[arm]} / no e2h "
                         f"averaged over the ramp epochs is {np.mean(ratios):.2f}; the same epochs scored at ratio 1 "
                         f"give {np.mean(ours[arm]):.2f}.")
    return lines


def same_schedule_pairs(rows, schedules):
    """Pairs of arms whose runs trained on the same ratio at every epoch (``ratios``: the
    schedule's ratio per epoch, from e2h_measure.csv)."""
    ratios = {r["schedule"]: r.get("ratios") for r in rows}
    arms = [s for s in schedules if ratios.get(s)]
    return [(a, b) for i, a in enumerate(arms) for b in arms[i + 1:] if ratios[a] == ratios[b]]


def max_gap(rows, a, b, column="mad"):
    """Largest |a - b| of ``column`` over the seeds both arms ran."""
    by = {(r["schedule"], r["seed"]): r[column] for r in rows}
    return max(abs(by[(a, seed)] - by[(b, seed)]) for (s, seed) in by if s == a and (b, seed) in by)


def write_table(rows, schedules, scale, csv_path, md_path):
    """The rows as CSV (full precision) and the markdown report headed by the ``scale`` lines."""
    columns = [c for c in rows[0] if c != "ratios"]
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items() if k in columns}
                         for row in rows)
    shown = ("mad", "sad", "grad", "conn", "mad_unknown", "mad_r0", "sad_r0", "seed_measure_ramp", "r1_measure_ramp")
    stats = arm_stats(rows, schedules, shown)
    seeds = sorted({r["seed"] for r in rows})
    lines = ["# e2h ablation: stage 2 with easy-to-hard (`step`, `linear`) and without (`none`)", ""]
    lines += [f"- {line}" for line in scale] + [""]
    lines += ["## Held-out errors, last epoch's weights (mean ± standard deviation over the seeds)", "",
              "| arm | runs | MAD r=1 | SAD r=1 | Grad r=1 | Conn r=1 | MAD unknown r=1 | MAD r=0 | SAD r=0 "
              "| seed's measure over the ramp | same epochs at r=1 |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for schedule in schedules:
        n = sum(r["schedule"] == schedule for r in rows)
        cells = []
        for c in shown:
            mean, std = stats[schedule][c]
            digits = 5 if c.startswith("mad") or c.endswith("_ramp") else 3
            cells.append(f"{mean:.{digits}f} ± {std:.{digits}f}")
        lines.append(f"| {LABELS.get(schedule, schedule)} | {n} | " + " | ".join(cells) + " |")
    arms = [s for s in schedules if s != "none"]
    if "none" in schedules and arms:
        lines += ["", "## Paired per-seed ratios, e2h / no e2h (below 1: e2h better)", "",
                  "| seed | " + " | ".join(f"{LABELS[a]}: MAD r=1 | MAD r=0 | seed's measure" for a in arms) + " |",
                  "|---|" + "---|---|---|" * len(arms)]
        table = {(a, c): paired_ratios(rows, a, c) for a in arms for c in ("mad", "mad_r0", "seed_measure_ramp")}
        for seed in seeds:
            cells = [f"{table[(a, c)].get(seed, math.nan):.2f}" for a in arms for c in ("mad", "mad_r0", "seed_measure_ramp")]
            lines.append(f"| {seed} | " + " | ".join(cells) + " |")
        cells = [f"{np.exp(np.mean(np.log(list(table[(a, c)].values())))):.2f}" if table[(a, c)] else "nan"
                 for a in arms for c in ("mad", "mad_r0", "seed_measure_ramp")]
        lines.append("| geometric mean | " + " | ".join(cells) + " |")
    lines += ["", "## Verdict", ""] + [f"- {line}" for line in verdict(rows, schedules)]
    lines += ["", "MAD = mean |alpha - truth| over the whole image at full resolution (the seed's L1); SAD, Grad, "
              "Conn are / 1000. r=1: the held-out (val) photos on real photo backgrounds; r=0: the same photos on "
              "easy (solid colour) backgrounds; both fixed per photo and the same for every run. The seed's measure: "
              "the same val photos composited at each training epoch's e2h ratio (as the seed's validation set "
              "followed its training set's ratio), mean MAD over the ramp epochs."]
    with open(md_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return stats


# ---- the figure ---------------------------------------------------------------------------------
def heldout_key(name):
    """The name test_stage2.py gives a held-out image ('cat/raw_image/x.jpg' -> 'cat/x')."""
    return "/".join(p for p in os.path.splitext(name)[0].split("/") if p != "raw_image")


def load_examples(dataset_path, prediction_dirs, count=2, ratio=1.0):
    """The first ``count`` held-out composites (as test_stage2.py builds them), their truths and
    each run's saved prediction -> list of (name, rgb uint8, gt float32, {label: pred float32})."""
    from data_loader import ForegroundDataset, read_alpha
    ds = ForegroundDataset(dataset_path, "val", seed=TEST_SEED, progress=False)
    examples = []
    for i in range(min(count, len(ds))):
        rgb, gt, name = ds.load_full(i, ratio)
        key = heldout_key(name)
        preds = {s: read_alpha(os.path.join(d, "predictions", key + ".png")) for s, d in prediction_dirs.items()}
        examples.append((key, rgb, gt, preds))
    return examples


def _band(ax, series, label):
    """Mean over the seeds with a min-max band; ``series``: list of (epochs, values)."""
    epochs = sorted(set.intersection(*(set(e) for e, _ in series)))
    values = np.array([[dict(zip(e, v))[x] for x in epochs] for e, v in series])
    line, = ax.plot(epochs, values.mean(0), marker="o", markersize=2, label=label)
    if len(series) > 1:
        ax.fill_between(epochs, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)


def plot_results(curves, examples, path, title=""):
    """Curves per arm (mean over seeds, min-max band): held-out MAD at r = 1, the seed's measure,
    training L1 and the e2h ratio; then the example mattes. ``curves``: {schedule: [(measure
    rows, train_log rows), ...]}. Saved as a PNG under 500 kB."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    from utils.plots import save_png

    schedules = list(curves)
    n_img = 2 + len(schedules)
    fig = plt.figure(figsize=(11, 6.2 + 2.3 * len(examples)))
    grid = fig.add_gridspec(2 + len(examples), 2 * n_img, height_ratios=[1.3, 1.3] + [1] * len(examples))
    panels = (("val MAD at r = 1 (our measure)", "measure", "mad_r1"),
              ("val MAD at the epoch's e2h ratio (the seed's measure)", "measure", "mad_at_ratio"),
              ("training L1 (fused output, on the e2h composites)", "log", "train_fused"),
              ("e2h ratio r of the training composites (measured)", "log", "mix_ratio"))
    half = n_img
    for j, (name, source, column) in enumerate(panels):
        ax = fig.add_subplot(grid[j // 2, (j % 2) * half:(j % 2 + 1) * half])
        for schedule in schedules:
            series = [([r["epoch"] for r in (m if source == "measure" else log)],
                       [r[column] for r in (m if source == "measure" else log)]) for m, log in curves[schedule]]
            _band(ax, series, LABELS.get(schedule, schedule))
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("stage-2 epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for i, (name, rgb, gt, preds) in enumerate(examples):
        shown = [("held-out composite (r = 1)", rgb), ("ground truth", gt)]
        shown += [(f"{LABELS.get(s, s)}\nMAD {np.abs(preds[s] - gt).mean():.4f}", preds[s]) for s in schedules]
        for j, (label, image) in enumerate(shown):
            ax = fig.add_subplot(grid[2 + i, 2 * j:2 * (j + 1)])
            ax.imshow(image, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(label, fontsize=8)
            if j == 0:
                ax.set_ylabel(name, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    size = save_png(fig, path, dpi=65)
    plt.close(fig)
    return size


# ---- the report ---------------------------------------------------------------------------------
def ramp_epochs(settings):
    """Epochs of the ramp (the ratio reaches 1 at this epoch): ``e2h.ramp_epochs`` as set for the
    runs, else the step schedule's ``10 * update_ratio_epoch``."""
    return settings.get("e2h.ramp_epochs", 10 * settings["update_ratio_epoch"])


def scale_lines(manifest):
    """Human-readable scale of the ablation, for the report's header."""
    s, s1 = manifest["settings"], manifest.get("stage1_settings")
    train_photos, heldout = manifest["photos"]
    u, ramp = s["update_ratio_epoch"], ramp_epochs(s)
    images = train_photos * s["epoch_num"]
    lines = [f"command: `{manifest['command']}`", f"data: {manifest['data']}"]
    if s1:
        p1 = manifest["stage1_photos"]
        lines.append(f"stage 1: one run, {s1['arch']} at {s1['image_size']}/{s1['crop_size']} px, batch "
                     f"{s1['batch_size']}, {s1['epoch_num']} epochs over {p1[0]} photos ({p1[1]} validation), lr "
                     f"{s1['lr']} {s1['lr_schedule']}; its best weights start every stage-2 run")
    else:
        lines.append(f"every stage-2 run starts from `{manifest['start']}`")
    lines.append(f"stage 2: {s['arch']} at {s['image_size']}/{s['crop_size']} px (short side / crop), batch "
                 f"{s['batch_size']}, amp {s.get('amp', 'auto')}, {s['epoch_num']} epochs over {train_photos} training "
                 f"photos ({images} crops per run); ratio 0 -> 1 over epochs 0-{ramp - 1} (`step`: +0.1 every {u} "
                 f"epochs; `linear`: r = epoch / {ramp}), ratio 1 for epochs {ramp}-{s['epoch_num'] - 1} and "
                 f"always for `none`; lr {s['lr']} until epoch {11 * u - 1}, then x0.975 an epoch (the seed's rule)")
    lines.append(f"seeds {', '.join(map(str, manifest['seeds']))} for every arm; held-out: {heldout} val photos, "
                 f"scored at full resolution")
    runs = manifest["runs"]
    minutes = [r["train_wall_minutes"] for r in runs if "train_wall_minutes" in r]
    loads = [x for r in runs for x in (r.get("load_start"), r.get("load_end")) if x]
    hw = f"hardware: {manifest['hardware']}, {manifest.get('parallel', 1)} runs at a time"
    if minutes:
        span = f"{min(minutes):.0f}" if round(min(minutes)) == round(max(minutes)) else f"{min(minutes):.0f}-{max(minutes):.0f}"
        hw += f"; a stage-2 run took {span} min of wall time to train"
    if loads:
        hw += (f" on a machine shared with other jobs (1-minute load average {min(l[0] for l in loads):.1f}-"
               f"{max(l[0] for l in loads):.1f} at the runs' starts and ends)")
    stage1_log = os.path.join(manifest.get("stage1_run") or "", "train_log.csv")
    if os.path.isfile(stage1_log):
        hw += f"; stage 1 trained for {sum(r['seconds'] for r in read_train_log(stage1_log)) / 60:.0f} min"
    if "wall_minutes" in manifest:
        hw += f"; the ablation command took {manifest['wall_minutes']:.0f} min (complete runs found in its folder are reused)"
    lines.append(hw)
    if manifest["preset"] != "full":
        lines.append("scale: far below the seed's (U2NET at 320/288, 150 stage-2 epochs, thousands of real photos); "
                     "`--preset full` runs the same protocol at that scale on a GPU")
    return lines


def report(manifest, out, examples=2):
    """Table, report and figure from a manifest; prints the report."""
    rows, curves, dirs = [], {}, {}
    schedules = [s for s in SCHEDULES if any(r["schedule"] == s for r in manifest["runs"])]
    ramp = ramp_epochs(manifest["settings"])
    for entry in sorted(manifest["runs"], key=lambda e: (e["seed"], schedules.index(e["schedule"]))):
        log = read_train_log(os.path.join(entry["run"], "train_log.csv"))
        measure = read_csv_rows(entry["measure"])
        r1, r0 = (read_summary(os.path.join(entry["tests"][k], "summary.json")) for k in ("1", "0"))
        rows.append(summarize(entry, log, r1, r0, measure, ramp))
        curves.setdefault(entry["schedule"], []).append((measure, log))
        if entry["seed"] == manifest["seeds"][0]:
            dirs[entry["schedule"]] = entry["tests"]["1"]
    os.makedirs(out, exist_ok=True)
    stats = write_table(rows, schedules, scale_lines(manifest), os.path.join(out, "e2h_results.csv"),
                        os.path.join(out, "e2h_results.md"))
    shown = load_examples(manifest["settings"]["dataset_path"], {s: dirs[s] for s in schedules if s in dirs}, examples)
    s = manifest["settings"]
    title = (f"e2h ablation ({s['arch']}, {manifest['photos'][0]} training photos, {s['epoch_num']} epochs, "
             f"{len(manifest['seeds'])} seeds): held-out MAD at r = 1, "
             + ", ".join(f"{LABELS[k]} {stats[k]['mad'][0]:.4f}" for k in schedules))
    plot_results({k: curves[k] for k in schedules}, shown, os.path.join(out, "e2h_results.png"), title)
    with open(os.path.join(out, "e2h_results.md")) as f:
        print("\n" + f.read())
    print(f"wrote {out}/e2h_results.csv, e2h_results.md, e2h_results.png")
    return rows, stats


# ---- main ---------------------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="train_stage2.py setting for every stage-2 run (after the preset's)")
    parser.add_argument("--stage1-set", dest="stage1_sets", action="append", default=[], metavar="KEY=VALUE",
                        help="train_stage1.py setting for the stage-1 run")
    parser.add_argument("--test-set", dest="test_sets", action="append", default=[], metavar="KEY=VALUE",
                        help="test_stage2.py setting for every test")
    parser.add_argument("--init", help="starting weights of every stage-2 run (skips stage 1)")
    parser.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=None,
                        help="comma-separated seeds, the same for every arm (default: the preset's, 0,1,2)")
    parser.add_argument("--schedules", type=lambda v: v.split(","), default=list(SCHEDULES),
                        help="comma-separated arms (default: step,linear,none)")
    parser.add_argument("--parallel", type=int, default=None, help="stage-2 runs at a time (default: the preset's)")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS of each stage-2 run (default: the preset's; 1 for small)")
    parser.add_argument("--work", default=os.path.join(ROOT, "results_stage2", "e2h_ablation"),
                        help="folder for data, runs and logs")
    parser.add_argument("--out", default=HERE, help="folder for e2h_results.{csv,md,png} (default: documents/)")
    parser.add_argument("--examples", type=int, default=2, help="held-out images shown in e2h_results.png")
    parser.add_argument("--report-only", action="store_true", help="only remake the report from <work>/ablation.json")
    parser.add_argument("--measure", metavar="RUN", help=argparse.SUPPRESS)  # one run's per-epoch measure
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    args.seeds = args.seeds or preset["seeds"]
    args.parallel = args.parallel or preset["parallel"]
    args.threads = args.threads if args.threads is not None else preset["threads"]
    unknown = sorted(set(args.schedules) - set(SCHEDULES))
    if unknown:
        parser.error(f"--schedules: unknown {unknown}; choose from {list(SCHEDULES)}")
    args.work, args.out = os.path.abspath(args.work), os.path.abspath(args.out)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.measure:
        print(f"wrote {measure_run(args.measure)}")
        return None
    if args.report_only:
        with open(os.path.join(args.work, "ablation.json")) as f:
            manifest = json.load(f)
    else:
        manifest = run_ablation(args)
    return report(manifest, args.out, args.examples)


if __name__ == "__main__":
    main()
