"""Easy-to-hard ablation: stage 2 trained twice from the same start, e2h ``step`` versus ``none``.

Run from the repository root:

    python documents/e2h_ablation.py                 # small scale: ~10 min on a 2-core CPU
    python documents/e2h_ablation.py --preset full --init results_stage1/<run>/model/best.pth \\
        --set dataset_path=/data/paixin_comp_mod     # the seed's scale, same steps, on a GPU
    python documents/e2h_ablation.py --report-only   # table and figure again from the last runs

What it runs, as users run it (subprocesses of the project's own scripts):

1. Data: ``--set dataset_path=DIR`` when given; else (small preset) a synthetic dataset made by
   ``data_examples/make_examples.py``'s generator (``--synthetic N`` photos, the training set
   capped by ``image_num``), in ``<work>/data/``.
2. One set of starting weights for both runs: ``--init FILE`` (e.g. a stage-1 ``best.pth``),
   else a random initialisation (``torch.manual_seed(--init-seed)``), saved once as
   ``<work>/init/<arch>_init.pth``.
3. ``python train_stage2.py --set <preset> --set <yours> --set e2h.schedule=step|none
   --set model_path=<work>/init --set pth_name=... --set results_dir=<work>/<schedule>``:
   the same seed, data order, crops and budget; only the e2h ratio differs.
4. ``python test_stage2.py`` on each run's last-epoch weights (no selection on the held-out
   set), on the same held-out composites: the val split of ``dataset_path``, r = 1, each photo
   on a hard background fixed by its name and the seed (the validation images of training).
5. ``<out>/e2h_results.csv``, ``.md`` (the table) and ``.png`` (validation curves from each
   run's ``train_log.csv`` and example mattes side by side), ``<work>/ablation.json``.

Options: ``--preset small|full``, ``--set KEY=VALUE`` (to both training runs, after the preset),
``--test-set KEY=VALUE`` (to both test runs), ``--init FILE``, ``--synthetic N``, ``--threads N``
(OMP_NUM_THREADS of the runs), ``--work DIR`` (default ``results_stage2/e2h_ablation``),
``--out DIR`` (default ``documents/``).
"""
import argparse
import csv
import glob
import json
import math
import os
import platform
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

SCHEDULES = ("step", "none")  # e2h as the seed trains, and the no-e2h baseline (ratio 1 always)
LABELS = {"step": "e2h (step)", "none": "no e2h (none)"}
PRESETS = {
    # CPU, minutes: U2NETP, small images, the step schedule ramping 0 -> 1 by epoch 10 of 12
    "small": {"arch": "u2netp", "model_name": "u2netp", "image_size": 96, "crop_size": 80,
              "batch_size": 4, "epoch_num": 12, "update_ratio_epoch": 1, "image_num": 80,
              "lr": 0.001, "lr_schedule": "seed", "seed": 0, "dataloader.num_worker": 0},
    # GPU, the seed's scale: U2NET at 320/288, +0.1 every 10 epochs, 20 epochs at ratio 1
    "full": {"arch": "u2net", "model_name": "u2net", "image_size": 320, "crop_size": 288,
             "batch_size": 8, "epoch_num": 120, "update_ratio_epoch": 10, "image_num": None,
             "lr": 0.001, "lr_schedule": "seed", "seed": 0, "dataloader.num_worker": 8},
}
SYNTHETIC = {"small": 200, "full": 0}  # photos generated when no dataset_path is given
CONTROLLED = ("e2h.schedule", "model_path", "pth_name", "results_dir", "project_name", "resume")
TABLE_METRICS = ("sad", "mse", "mad", "grad", "conn", "mad_unknown")


# ---- settings and data -----------------------------------------------------------------------------
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


def make_synthetic(work, photos, seed):
    """Generate (once) ``photos`` synthetic foregrounds + 40 backgrounds with the project's example
    generator -> the paixin_comp_mod folder."""
    out = os.path.join(work, "data")
    root = os.path.join(out, "paixin_comp_mod")
    marker = os.path.join(out, "synthetic.json")
    spec = {"photos": photos, "backgrounds": 40, "seed": seed, "width": 300, "height": 400}
    if os.path.isdir(root) and os.path.exists(marker):
        with open(marker) as f:
            if json.load(f) == spec:
                return root
    import importlib.util
    module_spec = importlib.util.spec_from_file_location("make_examples", os.path.join(ROOT, "data_examples", "make_examples.py"))
    make_examples = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(make_examples)
    print(f"generating {photos} synthetic photos in {root} ...", flush=True)
    os.makedirs(out, exist_ok=True)
    make_examples.make_all(out, width=spec["width"], height=spec["height"], photos=0,
                           per_category=photos // 2, backgrounds=spec["backgrounds"], seed=seed)
    with open(marker, "w") as f:
        json.dump(spec, f)
    return root


def initial_weights(work, arch, init, seed):
    """The one starting state_dict of both runs -> (model_path, pth_name, description)."""
    import torch
    from model import build_model, load_state_dict_any
    folder = os.path.join(work, "init")
    os.makedirs(folder, exist_ok=True)
    name = f"{arch}_init.pth"
    if init:
        state_dict, detected = load_state_dict_any(init)
        if detected != arch:
            raise SystemExit(f"--init {init} holds {detected} weights, but arch is {arch}: add --set arch={detected}")
        description = f"weights of {init}"
    else:
        torch.manual_seed(seed)
        state_dict = build_model(arch).state_dict()
        description = f"random initialisation (torch.manual_seed({seed}))"
    torch.save(state_dict, os.path.join(folder, name))
    return folder, name, description


def count_photos(dataset_path, image_num):
    """(training photos, held-out photos) of a paixin_comp_mod folder, as the scripts select them."""
    from data_loader import index_foregrounds
    return (len(index_foregrounds(dataset_path, "train", image_num)[0]),
            len(index_foregrounds(dataset_path, "val")[0]))


def describe_hardware(device, threads=None):
    """One line naming the device the runs used (the GPU, else the CPU model, its cores and the
    threads the runs were given)."""
    import torch
    from utils.device import resolve_device
    if resolve_device(device).type == "cuda":
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    model = platform.processor() or "CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    used = f"{threads} thread(s) per run (OMP_NUM_THREADS)" if threads else f"{torch.get_num_threads()} threads per run"
    return f"CPU: {model}, {os.cpu_count()} cores visible, {used}, torch {torch.__version__}"


# ---- the runs ------------------------------------------------------------------------------------------
def run_logged(cmd, log_path, threads=None):
    """Run ``cmd`` in the repository root, showing and saving its output; error if it fails.
    ``threads``: OMP_NUM_THREADS/MKL_NUM_THREADS for it (None: PyTorch's default)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    print("\n$ " + " ".join(cmd), flush=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        while chunk := proc.stdout.read1(4096):
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
            log.write(chunk)
        if proc.wait():
            raise SystemExit(f"failed (exit {proc.returncode}): {' '.join(cmd)}\nits output: {log_path}")


def train(schedule, sets, model_path, pth_name, work, threads=None):
    """python train_stage2.py ... for one schedule -> its run folder."""
    results_dir = os.path.join(work, schedule)
    before = set(glob.glob(os.path.join(results_dir, "*", "")))
    controlled = {"e2h.schedule": schedule, "model_path": model_path, "pth_name": pth_name,
                  "results_dir": results_dir, "project_name": f"e2h_{schedule}"}
    run_logged([sys.executable, "train_stage2.py"] + as_sets({**sets, **controlled}),
               os.path.join(work, f"train_{schedule}.log"), threads)
    new = sorted(set(glob.glob(os.path.join(results_dir, "*", ""))) - before)
    if len(new) != 1:
        raise SystemExit(f"expected one new run folder in {results_dir}, found {new}")
    return new[0].rstrip(os.sep)


def test(run, test_sets, work, schedule, threads=None):
    """python test_stage2.py on ``run``'s last-epoch weights, the val split of its dataset."""
    with open(os.path.join(run, "settings.json")) as f:
        settings = json.load(f)
    weights = f"{settings['model_name']}_epoch{settings['epoch_num'] - 1}.pth"
    output = os.path.join(run, "test_last_epoch")
    inherited = {k: settings[k] for k in ("dataset_path", "image_size", "device", "seed", "arch")}
    cmd = [sys.executable, "test_stage2.py", "--output", output, "--save-predictions", "--grid-rows", "3"]
    run_logged(cmd + as_sets({**inherited, **test_sets, "model_path": run, "pth_name": weights}),
               os.path.join(work, f"test_{schedule}.log"), threads)
    return output


# ---- reading the results -----------------------------------------------------------------------------
def read_train_log(path):
    """train_log.csv -> list of dicts of floats (``epoch`` as int), in epoch order."""
    with open(path, newline="") as f:
        rows = [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]
    if not rows:
        raise ValueError(f"{path}: no epochs logged")
    return sorted(rows, key=lambda row: row["epoch"])


def read_summary(path):
    """test_stage2.py's summary.json -> {"count": int, metric: mean, ...}."""
    with open(path) as f:
        summary = json.load(f)
    return {"count": int(summary["count"]), **{k: float(v) for k, v in summary["means"].items()}}


def summarize(schedule, log, test_means):
    """One table row: the test errors of the last epoch's weights plus the validation history
    and the minutes the run spent training and validating (train_log's ``seconds``)."""
    best = min(log, key=lambda row: row["val_mad"])
    row = {"run": LABELS.get(schedule, schedule), "schedule": schedule, "test_images": test_means["count"]}
    row.update({k: test_means.get(k, math.nan) for k in TABLE_METRICS})
    row.update({"epochs": len(log), "last_mix_ratio": log[-1]["mix_ratio"], "last_val_mad": log[-1]["val_mad"],
                "best_val_mad": best["val_mad"], "best_epoch": best["epoch"],
                "train_minutes": sum(r["seconds"] for r in log) / 60.0})
    return row


def compare(rows):
    """{metric: e2h / no-e2h} for the test errors (below 1: e2h is better)."""
    by = {row["schedule"]: row for row in rows}
    step, none = by["step"], by["none"]
    return {k: (step[k] / none[k] if none[k] else math.nan) for k in TABLE_METRICS}


def write_table(rows, scale_lines, csv_path, md_path):
    """The rows as CSV (full precision) and as a markdown page headed by ``scale_lines``."""
    columns = list(rows[0])
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()} for row in rows)
    ratio = compare(rows)
    lines = ["# e2h ablation: stage 2 with easy-to-hard (`step`) vs without (`none`)", ""]
    lines += [f"- {line}" for line in scale_lines] + [""]
    lines += ["| run | test images | SAD | MSE | MAD (L1) | Grad | Conn | MAD unknown | val MAD last (best, epoch) | train+val minutes |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['test_images']} | {r['sad']:.3f} | {r['mse']:.5f} | {r['mad']:.5f} | "
                     f"{r['grad']:.3f} | {r['conn']:.3f} | {r['mad_unknown']:.5f} | {r['last_val_mad']:.5f} "
                     f"({r['best_val_mad']:.5f}, {r['best_epoch']}) | {r['train_minutes']:.1f} |")
    lines.append("| e2h / no e2h | | " + " | ".join(f"{ratio[k]:.2f}" for k in TABLE_METRICS) + " | | |")
    lines += ["", f"Test MAD (mean L1 of the alpha) with e2h is {ratio['mad']:.2f} x that without "
              f"(below 1: e2h better; the seed reports about 0.5). SAD, Grad, Conn are / 1000; "
              f"held-out = the val split composited with r = 1, scored on the last epoch's weights."]
    with open(md_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return ratio


# ---- the figure ---------------------------------------------------------------------------------------
def heldout_key(name):
    """The name test_stage2.py gives a held-out image ('cat/raw_image/x.jpg' -> 'cat/x')."""
    return "/".join(p for p in os.path.splitext(name)[0].split("/") if p != "raw_image")


def load_examples(dataset_path, seed, prediction_dirs, count=3):
    """The first ``count`` held-out composites (as test_stage2.py builds them), their truths and
    each run's saved prediction -> list of (name, rgb uint8, gt float32, {schedule: pred float32})."""
    from data_loader import ForegroundDataset, read_alpha
    ds = ForegroundDataset(dataset_path, "val", seed=seed, progress=False)
    examples = []
    for i in range(min(count, len(ds))):
        rgb, gt, name = ds.load_full(i)
        key = heldout_key(name)
        preds = {s: read_alpha(os.path.join(d, "predictions", key + ".png")) for s, d in prediction_dirs.items()}
        examples.append((key, rgb, gt, preds))
    return examples


def plot_results(logs, examples, path, title=""):
    """Validation MAD (= the fused output's L1), training L1 and the measured mix ratio per epoch of
    each run (``logs``: {schedule: train_log rows}), then one row per example: composite | truth |
    each run's matte with its MAD. Saved as a PNG under 500 kB."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    from utils.plots import save_png

    schedules = list(logs)
    n_img = 2 + len(schedules)
    fig = plt.figure(figsize=(8.5, 3.2 + 2.7 * len(examples)))
    grid = fig.add_gridspec(1 + len(examples), 3 * n_img, height_ratios=[1.35] + [1] * len(examples))
    curves = (("val_mad", "validation MAD = L1 (r = 1)"), ("train_fused", "training L1 (fused, e2h composites)"),
              ("mix_ratio", "e2h ratio r (measured)"))
    for j, (column, name) in enumerate(curves):
        ax = fig.add_subplot(grid[0, j * n_img:(j + 1) * n_img])
        for schedule in schedules:
            rows = logs[schedule]
            ax.plot([r["epoch"] for r in rows], [r[column] for r in rows], marker="o", markersize=3,
                    label=LABELS.get(schedule, schedule))
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for i, (name, rgb, gt, preds) in enumerate(examples):
        panels = [("held-out composite", rgb), ("ground truth", gt)]
        panels += [(f"{LABELS.get(s, s)}\nMAD {np.abs(preds[s] - gt).mean():.4f}", preds[s]) for s in schedules]
        for j, (label, image) in enumerate(panels):
            ax = fig.add_subplot(grid[1 + i, 3 * j:3 * (j + 1)])
            ax.imshow(image, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(label, fontsize=8)
            if j == 0:
                ax.set_ylabel(name, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.975))
    size = save_png(fig, path, dpi=70)
    plt.close(fig)
    return size


# ---- main -------------------------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="train_stage2.py setting for both runs (after the preset's)")
    parser.add_argument("--test-set", dest="test_sets", action="append", default=[], metavar="KEY=VALUE",
                        help="test_stage2.py setting for both tests")
    parser.add_argument("--init", help="starting weights of both runs (default: one random initialisation)")
    parser.add_argument("--init-seed", type=int, default=0, help="seed of the random initialisation")
    parser.add_argument("--synthetic", type=int, default=None,
                        help="photos to generate when no dataset_path is set (default: 200 small, 0 full)")
    parser.add_argument("--work", default=os.path.join(ROOT, "results_stage2", "e2h_ablation"),
                        help="folder for data, initial weights, runs and logs")
    parser.add_argument("--out", default=HERE, help="folder for e2h_results.{csv,md,png} (default: documents/)")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS for the runs (e.g. 1 on a CPU that other jobs share; default: PyTorch's)")
    parser.add_argument("--examples", type=int, default=3, help="held-out images shown in e2h_results.png")
    parser.add_argument("--report-only", action="store_true", help="only remake the table and figure from <work>/ablation.json")
    args = parser.parse_args(argv)
    args.work, args.out = os.path.abspath(args.work), os.path.abspath(args.out)
    return args


def run_ablation(args):
    """Data, initial weights, the two trainings and tests -> the manifest (also saved as JSON)."""
    started = time.perf_counter()
    user = parse_sets(args.sets)
    bad = sorted(set(user) & set(CONTROLLED))
    if bad:
        raise SystemExit(f"--set {', '.join(bad)}: set by the ablation itself (use --init for starting weights)")
    sets = {**PRESETS[args.preset], **user}
    synthetic = SYNTHETIC[args.preset] if args.synthetic is None else args.synthetic
    if "dataset_path" in user:
        sets["dataset_path"] = os.path.abspath(user["dataset_path"])
        data = f"{user['dataset_path']}"
    elif synthetic:
        sets["dataset_path"] = make_synthetic(args.work, synthetic, seed=20240611)
        data = f"{synthetic} synthetic photos from data_examples/make_examples.py (300x400)"
    else:
        raise SystemExit("--preset full needs a dataset: --set dataset_path=/data/paixin_comp_mod (or --synthetic N)")
    model_path, pth_name, init = initial_weights(args.work, sets["arch"], args.init, args.init_seed)
    manifest = {"command": " ".join(["python"] + sys.argv),
                "preset": args.preset, "settings": sets, "data": data, "init": init, "runs": {}}
    for schedule in SCHEDULES:
        begun = time.perf_counter()
        run = train(schedule, sets, model_path, pth_name, args.work, args.threads)
        seconds = time.perf_counter() - begun
        output = test(run, parse_sets(args.test_sets), args.work, schedule, args.threads)
        manifest["runs"][schedule] = {"run": run, "test": output, "train_wall_seconds": seconds}
    manifest["photos"] = count_photos(sets["dataset_path"], sets.get("image_num"))
    manifest["hardware"] = describe_hardware(sets.get("device", "auto"), args.threads)
    manifest["wall_minutes"] = (time.perf_counter() - started) / 60.0
    with open(os.path.join(args.work, "ablation.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    return manifest


def scale_lines(manifest):
    """Human-readable scale of the ablation, for the table's header."""
    s = manifest["settings"]
    train_photos, heldout = manifest["photos"]
    return [f"command: `{manifest['command']}`" if manifest.get("command") else f"preset: {manifest['preset']}",
            f"data: {manifest['data']}; {train_photos} training photos, {heldout} held-out",
            f"model: {s['arch']}, image_size {s['image_size']}, crop_size {s['crop_size']}, batch {s['batch_size']}, "
            f"{s['epoch_num']} epochs, lr {s['lr']} ({s['lr_schedule']}), seed {s['seed']}; e2h `step` +0.1 every "
            f"{s['update_ratio_epoch']} epoch(s) vs `none` (ratio 1 throughout)",
            f"both runs start from the same {manifest['init']}",
            f"hardware: {manifest['hardware']}"
            + (f"; the whole ablation (data, 2 trainings, 2 tests) took {manifest['wall_minutes']:.1f} min"
               if "wall_minutes" in manifest else "")]


def report(manifest, out, examples=3):
    """Table and figure from a manifest; prints the table."""
    logs, rows, dirs = {}, [], {}
    for schedule, info in manifest["runs"].items():
        logs[schedule] = read_train_log(os.path.join(info["run"], "train_log.csv"))
        rows.append(summarize(schedule, logs[schedule], read_summary(os.path.join(info["test"], "summary.json"))))
        dirs[schedule] = info["test"]
    os.makedirs(out, exist_ok=True)
    ratio = write_table(rows, scale_lines(manifest), os.path.join(out, "e2h_results.csv"), os.path.join(out, "e2h_results.md"))
    shown = load_examples(manifest["settings"]["dataset_path"], manifest["settings"]["seed"], dirs, examples)
    s = manifest["settings"]
    plot_results(logs, shown, os.path.join(out, "e2h_results.png"),
                 f"e2h ablation ({s['arch']}, {manifest['photos'][0]} training photos, {s['epoch_num']} epochs): "
                 f"held-out MAD e2h / no e2h = {ratio['mad']:.2f}")
    with open(os.path.join(out, "e2h_results.md")) as f:
        print("\n" + f.read())
    print(f"wrote {out}/e2h_results.csv, e2h_results.md, e2h_results.png")
    return rows, ratio


def main(argv=None):
    args = parse_args(argv)
    if args.report_only:
        with open(os.path.join(args.work, "ablation.json")) as f:
            manifest = json.load(f)
    else:
        manifest = run_ablation(args)
    return report(manifest, args.out, args.examples)


if __name__ == "__main__":
    main()
