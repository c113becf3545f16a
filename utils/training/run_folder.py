"""The results folder of a training run, written by the main process only.

``<results_dir>/<project_name>_<timestamp>/``::

    settings.json                 the resolved settings
    train_log.csv                 one row per epoch (see COLUMNS)
    model/<model_name>_epoch<N>.pth, model/best.pth   plain state_dicts (best: lowest val MAD)
    checkpoint.pth                everything needed to resume exactly (written last each epoch)
    image/epoch<N>.png            validation grid: input | ground truth | prediction | cut-out
    curves.png                    losses and validation metrics over the epochs

Epochs are numbered from 0 everywhere (the CSV, the file names, the e2h schedule). At the end
of epoch N the files are written in the order above, ``checkpoint.pth`` last: a run killed
at any point resumes from the last complete epoch, and the rows of later epochs are dropped.
"""
import argparse
import json
import math
import os
import time

from utils.logger import CSVLog
from utils.plots import save_curves, save_preview_grid
from utils.runs import run_settings_path
from utils.settings import SettingsError, add_settings_arguments, build_settings, settings_to_dict
from .checkpoint import gather_rng_states, plain_state_dict, save_checkpoint, save_weights
from .engine import VAL_METRICS

COLUMNS = ("epoch", "lr", "mix_ratio", "train_loss", "train_fused", "train_sides", "train_unknown",
           "val_loss", "val_sad", "val_mse", "val_mad", "val_grad", "val_conn", "images_per_s", "seconds")
TIMING_COLUMNS = ("images_per_s", "seconds")


def load_train_settings(script, argv=None, description=None):
    """Settings of a training script from its JSON file, ``--config`` and ``--set`` items.

    With ``resume=RUN_DIR`` (``--set`` or the file) the base is the run's own settings.json
    instead, then this command's ``--set`` items: ``--set resume=RUN`` alone continues the run
    as it was set up (from any working folder), ``--set resume=RUN --set epoch_num=200``
    extends it. Bad settings end the program with a message naming the key and the file.
    """
    parser = add_settings_arguments(argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    resume = [item.split("=", 1)[1] for item in args.overrides if item.startswith("resume=")]
    try:
        if not resume:
            settings = build_settings(script, args.config, args.overrides)
            resume = [settings.resume]
        if resume[-1]:
            saved = run_settings_path(resume[-1])
            if not os.path.isfile(saved):
                raise SettingsError(f"resume={resume[-1]}: no settings.json there; not a run folder")
            if args.config:
                print(f"resume: --config {args.config} is ignored; the run's {saved} is used, then --set items")
            settings = build_settings(script, saved, [*args.overrides, f"resume={resume[-1]}"])
    except SettingsError as err:
        parser.error(str(err))
    return settings


def create_run_dir(results_dir, project_name):
    """Make a new ``<results_dir>/<project_name>_<YYYYmmdd_HHMMSS>[_k]/`` and return its path."""
    stamp = time.strftime("%Y%m%d_%H%M%S")
    for k in range(1000):
        run_dir = os.path.join(results_dir, f"{project_name}_{stamp}" + (f"_{k}" if k else ""))
        try:
            os.makedirs(run_dir)
            break
        except FileExistsError:
            continue
    return run_dir


class RunFolder:
    """Writes a run's results; on ranks other than 0 every method does nothing but take part
    in the collective RNG gathering of ``end_epoch``."""

    def __init__(self, settings, dist, start_epoch=0):
        self.settings, self.dist = settings, dist
        self.path = None
        if not dist.is_main:
            return
        self.path = settings.resume or create_run_dir(settings.results_dir, settings.project_name)
        for sub in ("model", "image"):
            os.makedirs(os.path.join(self.path, sub), exist_ok=True)
        with open(run_settings_path(self.path), "w") as f:
            json.dump(settings_to_dict(settings), f, indent=2)
        self.log = CSVLog(os.path.join(self.path, "train_log.csv"), start_epoch=start_epoch)

    def file(self, *parts):
        return os.path.join(self.path, *parts)

    def end_epoch(self, epoch, state, lr, train, val, previews, e2h=None):
        """Save the epoch: weights, best, grid, CSV row, curves, then checkpoint.pth (collective).

        ``lr``: the lr the epoch trained with; ``train``/``val``: the dicts of
        ``train_one_epoch``/``evaluate``; ``e2h``: plain dict describing the e2h state.
        Updates ``state.best_mad``; returns True when this epoch is the best so far.
        """
        mad = val["mad"]
        is_best = math.isnan(mad) or mad < state.best_mad  # no validation images: best = latest
        if is_best:
            state.best_mad = mad
        rng = gather_rng_states()
        if not self.dist.is_main:
            return is_best
        s = self.settings
        last = epoch == s.epoch_num - 1
        if (epoch + 1) % s.save_every == 0 or last:
            save_weights(state.net, self.file("model", f"{s.model_name}_epoch{epoch}.pth"))
        if is_best:
            save_weights(state.net, self.file("model", "best.pth"))
        save_preview_grid(previews, self.file("image", f"epoch{epoch}.png"))
        row = {"epoch": epoch, "lr": lr, "mix_ratio": train["mix_ratio"], "train_loss": train["loss"],
               "train_fused": train["fused"], "train_sides": train["sides"], "train_unknown": train["unknown"],
               **{f"val_{k}": val[k] for k in VAL_METRICS},
               "images_per_s": train["images_per_s"], "seconds": train["seconds"] + val["seconds"]}
        self.log.append({k: row[k] for k in COLUMNS})
        print(f"epoch {epoch}: loss {row['train_loss']:.4f} (fused {row['train_fused']:.4f}), "
              f"mix_ratio {row['mix_ratio']:.3f}, lr {lr:.3g} | val SAD {val['sad']:.3f} MSE {val['mse']:.5f} "
              f"MAD {mad:.5f} Grad {val['grad']:.3f} Conn {val['conn']:.3f}{' (best)' if is_best else ''} | "
              f"{row['images_per_s']:.1f} img/s, {row['seconds']:.1f} s")
        save_curves(self.log.read(), self.file("curves.png"))
        save_checkpoint(self.path, {
            "model": plain_state_dict(state.net), "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(), "scaler": state.scaler.state_dict(),
            "epoch": epoch, "best_mad": state.best_mad, "rng": rng, "e2h": e2h or {},
            "settings": settings_to_dict(s), "arch": s.arch, "world_size": self.dist.world_size,
        })
        return is_best
