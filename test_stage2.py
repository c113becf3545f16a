"""Evaluate a matting model, or saved alpha mattes, with the standard matting errors.

Three ways, each at the ground truth's full resolution, deterministic:

    # 1. the held-out split ("val") of dataset_path, each photo composited on backgrounds fixed per
    #    file at e2h ratio heldout_ratio (1, the default: a real photo; 0: an easy background);
    #    weights from model_path/pth_name, else results_stage2/<newest>/model/best.pth
    python test_stage2.py
    python test_stage2.py --set model_path=results_stage2/u2net_stage2_20260101_120000 --set pth_name=best.pth
    python test_stage2.py --set model_path=. --set pth_name=u2net_mine.onnx   # export.py's file, onnxruntime

    # 2. a benchmark folder (P3M-500, PPM-100, AIM-500, ...): photos and alphas paired by file stem
    python test_stage2.py --images P3M-500-P/blurred_image --alphas P3M-500-P/mask --trimaps P3M-500-P/trimap

    # 3. alpha PNGs of any method, no model: the same scores on the same footing
    python test_stage2.py --predictions other_method/alpha --alphas P3M-500-P/mask

    # 4. videos: alpha videos or frame folders against <clip>/pha/*.png, with dtSSD and MESSDdt too
    python test_stage2.py --video --predictions out/alpha --alphas videomatte_test/

Options: --output DIR (default: a new test_<timestamp>/ in the weights' run folder, else under
results_test/), --save-predictions (8-bit <stem>.png in <output>/predictions/), --grid-rows K,
--max-pixels N (folder files with more pixels fail before any work; default 100 MP, see
data_loader/image_io.py), --config FILE, --set KEY=VALUE
(utils/load_settings/test_stage2_settings.json). The network input
is image_size, by default the training run's own (its settings.json), else 320.

Writes metrics.csv (name, sad, mse, mad, grad, conn, sad_unknown, mse_unknown, mad_unknown,
sad_fg, sad_bg), summary.json (means, count, weights, settings) and grid.png (the worst and the
best images by SAD: photo | ground truth | prediction | error). Errors as in utils/metrics.py:
SAD, Grad, Conn / 1000; MSE, MAD unscaled; region columns inside a trimap's unknown band
(--trimaps, else derived from the ground truth) and over its foreground and background. Model
predictions are rounded to 8 bits before scoring, so scoring their saved PNGs gives the same numbers.
"""
import argparse
import os
import sys

import cv2
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from data_loader import DatasetError, ForegroundDataset, ImageReadError
from data_loader.image_io import MAX_PIXELS
from model import CheckpointError
from utils.device import resolve_device
from utils.inference.evaluate import (EvaluationError, Extremes, PairDataset, derive_trimap, describe_unmatched,
                                      evaluate_sample, match_by_stem, mean_metrics, new_output_dir,
                                      panels, quantize, save_ranked_grid, to_uint8, worker_message, write_json,
                                      write_metrics_csv)
from utils.inference.onnx_model import OnnxModelError, load_any_model
from utils.inference.core import MatteOptions, Matter, refine_options
from utils.inference.video import score_video_folders
from utils.metrics import METRIC_NAMES, REGION_METRIC_NAMES
from utils.runs import find_weights as find_trained_weights, heldout_options, network_size
from utils.settings import load_settings, settings_to_dict


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--images", help="folder of photos to predict (pairs with --alphas by file stem)")
    parser.add_argument("--predictions", help="folder of alpha mattes to score as they are (no model)")
    parser.add_argument("--alphas", help="folder of ground-truth alpha mattes")
    parser.add_argument("--trimaps", help="folder of trimaps (0/128/255) for the region errors")
    parser.add_argument("--video", action="store_true",
                        help="score alpha videos or frame folders (--predictions: <clip>.mp4 or <clip>/*.png) against "
                             "ground-truth frames (--alphas: <clip>/pha/*.png) with MAD, MSE, Grad, Conn, dtSSD, MESSDdt")
    parser.add_argument("--output", help="output folder (default: a new test_<timestamp>/ folder)")
    parser.add_argument("--save-predictions", action="store_true", help="save predicted alphas as 8-bit PNGs")
    parser.add_argument("--grid-rows", type=int, default=4, help="worst and best images shown in grid.png (0: no grid)")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                        help="folder files with more pixels fail, checked from their headers before any work "
                             "(default: %(default)s)")
    argv = list(sys.argv[1:] if argv is None else argv)
    folder_mode = any(a.split("=")[0] in ("--images", "--predictions") for a in argv)
    # dataset_path is not used with folders: do not require the default one to exist
    settings, args = load_settings("test_stage2", (["--set", "dataset_path="] if folder_mode else []) + argv, parser)
    if args.images and args.predictions:
        parser.error("give --images (predict with the model) or --predictions (score files), not both")
    if (args.images or args.predictions) and not args.alphas:
        parser.error("--images and --predictions need --alphas (the ground truth)")
    if args.alphas and not (args.images or args.predictions):
        parser.error("--alphas needs --images or --predictions")
    if args.trimaps and not args.alphas:
        parser.error("--trimaps goes with --alphas (the held-out split derives its trimaps)")
    if args.max_pixels < 1:
        parser.error(f"--max-pixels must be >= 1, got {args.max_pixels}")
    if args.video and not (args.predictions and args.alphas) or args.video and args.trimaps:
        parser.error("--video scores --predictions (alpha videos or frame folders) against --alphas (<clip>/pha/); "
                     "no --images, no --trimaps")
    return settings, args


class HeldOut(Dataset):
    """The first ``n`` images of a dataset's ``load_full``, as evaluation samples."""

    def __init__(self, dataset, n=None, ratio=1.0):
        self.dataset, self.n, self.ratio = dataset, min(len(dataset), n or len(dataset)), ratio

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        image, alpha, name = self.dataset.load_full(index, self.ratio)
        key = "/".join(p for p in os.path.splitext(name)[0].split("/") if p != "raw_image")
        return {"name": key, "image": image, "alpha": alpha, "pred": None, "trimap": None, "files": {}}


def build_data(settings, args, weights):
    """-> (dataset of samples, short description, {role: unmatched names}). The held-out
    composites are the validation composites of the run that trained ``weights`` (its seed and
    background caps, utils.runs.heldout_options)."""
    if not args.alphas:
        ds = ForegroundDataset(settings.dataset_path, split="val", **heldout_options(weights, settings.seed))
        return (HeldOut(ds, settings.image_num, settings.heldout_ratio),
                f"val split of {settings.dataset_path} (r = {settings.heldout_ratio:g})", {})
    folders = {"alphas": args.alphas, "images": args.images, "predictions": args.predictions, "trimaps": args.trimaps}
    items, unmatched = match_by_stem({role: path for role, path in folders.items() if path})
    if unmatched:
        print(f"{sum(map(len, unmatched.values()))} file(s) without a match in the other folder(s):\n"
              + describe_unmatched(unmatched))
    items = items[:settings.image_num] if settings.image_num else items
    return PairDataset(items, args.max_pixels), f"{args.images or args.predictions} against {args.alphas}", unmatched


def find_weights(settings):
    path = find_trained_weights("test", settings=settings)  # stage 2, else stage 1, as apply.py
    if path is None:
        raise SystemExit("no weights: set model_path/pth_name (--set model_path=DIR --set pth_name=FILE) "
                         "or train stage 2 first (python train_stage2.py writes results_stage2/<run>/model/best.pth)")
    return path


def main(argv=None):
    settings, args = parse_args(argv)
    if args.video:  # per clip and overall, utils/inference/video.py (documents/video.md)
        output = args.output or new_output_dir(None, create=False)
        summary = score_video_folders(args.predictions, args.alphas, output)
        print(f"{summary['clips']} clips, {summary['frames']} frames; means over clips: "
              + ", ".join(f"{k} {v:.5g}" for k, v in summary["means"].items()) + f"\nwrote {output}/metrics.csv, summary.json")
        return output
    torch.manual_seed(settings.seed)
    device = resolve_device(settings.device)

    # ---- data ----------------------------------------------------------------------------------
    weights = None if args.predictions else find_weights(settings)
    data, description, unmatched = build_data(settings, args, weights)
    loader = DataLoader(data, batch_size=settings.batch_size, collate_fn=list,
                        num_workers=settings.dataloader.num_worker, pin_memory=False)

    # ---- model -----------------------------------------------------------------------------------
    model = size = None
    if not args.predictions:
        model = load_any_model(weights, arch=settings.arch or None, device=device)  # .pth, or .onnx (onnxruntime)
        # image_size, else the training run's own (so the scores match its validation), else 320
        size, size_source = network_size(weights, settings.image_size, getattr(model, "input_size", None))
        matter = Matter(model, MatteOptions(size=size, device=str(device), precision=settings.precision,
                                            batch_size=settings.batch_size, refine=refine_options(settings.refine)),
                        copy_model=False)  # the same core as apply.py: the same alphas
    output = args.output or new_output_dir(weights, create=False)  # made once there are scores
    print(f"evaluating {len(data)} images: {description}\nweights: {weights or 'none (scoring --predictions)'}"
          + (f"\nnetwork input: {size}x{size} (from {size_source}), refine: {settings.refine}" if size else "") + f"\noutput: {output}")

    # ---- loop ------------------------------------------------------------------------------------
    rows, extremes = [], Extremes(args.grid_rows)
    for batch in tqdm(loader, desc="test", unit="batch"):
        if model is None:
            preds = [sample["pred"] for sample in batch]
        else:
            images = [sample["image"] for sample in batch]
            preds = [quantize(p) for p in matter.predict(images)]
        for sample, pred in zip(batch, preds):
            name, alpha = sample["name"], sample["alpha"]
            trimap = sample["trimap"] if sample["trimap"] is not None else derive_trimap(alpha)
            row = evaluate_sample(name, pred, alpha, trimap)
            rows.append(row)
            extremes.add(row["sad"], name, panels(sample["image"], alpha, pred))
            if args.save_predictions:
                path = os.path.join(output, "predictions", name + ".png")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                if not cv2.imwrite(path, to_uint8(pred)):
                    raise OSError(f"could not write {path}")

    # ---- save ------------------------------------------------------------------------------------
    means = mean_metrics(rows)
    os.makedirs(output, exist_ok=True)
    write_metrics_csv(os.path.join(output, "metrics.csv"), rows)
    write_json(os.path.join(output, "summary.json"), {
        "count": len(rows), "means": means, "data": description, "model_file": weights, "image_size": size,
        "skipped_unmatched": {"count": sum(map(len, unmatched.values())), **unmatched},
        "trimaps": args.trimaps or "derived from the ground truth (data_loader.trimap.unknown_band, k = 9)",
        "scaling": "sad, grad, conn and sad_* are / 1000; mse, mad unscaled",
        "settings": settings_to_dict(settings)})
    worst, best = extremes.worst_and_best()
    if worst:
        save_ranked_grid(os.path.join(output, "grid.png"),
                  [(f"worst {i + 1}: {name}  SAD {sad:.3f}", p) for i, (sad, name, p) in enumerate(worst)]
                  + [(f"best {i + 1}: {name}  SAD {sad:.3f}", p) for i, (sad, name, p) in enumerate(best)],
                  legend=("" if args.predictions else "photo | ") + "truth | prediction | |error|")
    print(f"{len(rows)} images; means:")
    for key in METRIC_NAMES + REGION_METRIC_NAMES:
        print(f"  {key:12s} {means[key]:.6g}")
    print(f"wrote {output}/metrics.csv, summary.json, grid.png")
    return output


if __name__ == "__main__":
    try:
        main()
    except (EvaluationError, ImageReadError, DatasetError, CheckpointError, OnnxModelError) as err:
        raise SystemExit("error: " + worker_message(err))  # one line, also from a DataLoader worker
