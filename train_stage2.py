"""Stage 2: fine-tune U^2-Net on foregrounds composited easy-to-hard (e2h) onto backgrounds.

Each training sample is ``alpha * fg + (1 - alpha) * (r * hard + (1 - r) * easy)`` with the e2h
ratio r of the epoch (``e2h.schedule``: step, +0.1 every ``update_ratio_epoch`` epochs, as the
seed; linear; none = always 1). Run from the repository root:

    python train_stage2.py                                   # data_examples/, U2NETP, minutes on a CPU
    python train_stage2.py --set dataset_path=/data/paixin_comp_mod --set arch=u2net --set model_name=u2net \
        --set image_size=320 --set crop_size=288 --set batch_size=8 --set epoch_num=150 --set update_ratio_epoch=10
    torchrun --nproc_per_node=4 train_stage2.py --set ...    # DDP, 4 GPUs (batch_size is per process)
    python train_stage2.py --set resume=results_stage2/<run> # continue a run from its checkpoint.pth

Settings: utils/load_settings/train_stage2_settings.json, then ``--config FILE`` and
``--set KEY=VALUE``. Starting weights: ``model_path``/``pth_name`` when named (model_path may be
a run folder), else the newest ``results_stage1/*/model/best.pth``, else from scratch (warned).
Their architecture must be ``arch``. Results: ``<results_dir>/<project_name>_<timestamp>/`` with
settings.json, train_log.csv, model/<model_name>_epoch<N>.pth, model/best.pth (lowest
validation MAD), checkpoint.pth, image/epoch<N>.png and curves.png (see utils/training/run_folder.py).
"""
import json
import warnings

from data_loader import E2HSchedule, ForegroundDataset
from model import build_model
from utils.distributed import cleanup, init_distributed_mode, is_main_process, seed_everything
from utils.training.engine import (NonFiniteLossError, augment_from_settings, build_train_loader, evaluate,
                          resume_training, setup_training, train_one_epoch)
from utils.training.losses import MattingLoss
from utils.training.run_folder import RunFolder, load_start, load_train_settings
from utils.runs import choose_weights
from utils.settings import Stage1Settings, settings_to_dict

SCRIPT = "train_stage2"


def build_datasets(settings):
    """Foreground train split (e2h composites, random crops and flips) and val split (full
    resolution, r = 1 on a background fixed per file)."""
    schedule = E2HSchedule(settings.e2h.schedule, settings.update_ratio_epoch, settings.e2h.ramp_epochs)
    common = dict(background_num=settings.background_num, schedule=schedule, image_size=settings.image_size,
                  crop_size=settings.crop_size, seed=settings.seed)
    train = ForegroundDataset(settings.dataset_path, "train", image_num=settings.image_num,
                              augment=augment_from_settings(settings.augment), **common)
    val = ForegroundDataset(settings.dataset_path, "val", augment=False, **common)
    return train, val, schedule


def choose_starting_weights(settings):
    """model_path/pth_name, else the newest stage-1 run's best.pth, else none (warned)."""
    path = choose_weights(model_path=settings.model_path, pth_name=settings.pth_name,
                          newest_of=(Stage1Settings.results_dir,))
    if path is None and is_main_process():
        warnings.warn("no starting weights (no model_path/pth_name and no results_stage1/*/model/best.pth): "
                      "stage 2 trains from scratch", stacklevel=2)
    return path


def starting_weights(net, settings):
    """Load the run's starting weights into ``net`` and return their path (None: none loaded).
    Resuming, the checkpoint's weights are used instead, or, for a run stopped before its first
    checkpoint, the file it started from (see ``load_start``)."""
    return load_start(net, settings, lambda: choose_starting_weights(settings), is_main_process())


def main(argv=None):
    # settings: the JSON file, --config, --set; when resuming, the run's own settings.json
    settings = load_train_settings(SCRIPT, argv, description=__doc__)
    dist = init_distributed_mode(settings.device)
    seed_everything(settings.seed, dist.rank)
    if dist.is_main:
        print(json.dumps(settings_to_dict(settings), indent=2))
    try:
        # data: under torchrun every rank estimates its part of the foreground cache, then waits
        train_set, val_set, schedule = build_datasets(settings)
        loader = build_train_loader(train_set, settings, dist)

        # model, optimiser, schedule, AMP; then the checkpoint when resuming (None: from epoch 0)
        net = build_model(settings.arch)
        start = starting_weights(net, settings)
        state = setup_training(net, settings, dist)
        checkpoint = resume_training(state, settings.resume) if settings.resume else None
        criterion = MattingLoss(settings.loss, settings.unknown_loss_weight)
        run = RunFolder(settings, dist, start, checkpoint)
        if dist.is_main:
            print(f"{settings.arch}: {len(train_set)} training / {len(val_set)} validation images; "
                  f"epochs {state.start_epoch}..{settings.epoch_num - 1} -> {run.path}")

        # loop: train, validate, step the lr, save (rank 0)
        for epoch in range(state.start_epoch, settings.epoch_num):
            train_set.set_epoch(epoch)
            loader.sampler.set_epoch(epoch)
            lr = state.lr
            train = train_one_epoch(state, criterion, loader, epoch, settings.epoch_num)
            val, previews = evaluate(state.net, val_set, settings.image_size, dist,
                                     settings.batch_size, settings.val_image_num)
            state.scheduler.step()
            e2h = {"schedule": schedule.kind, "update_ratio_epoch": schedule.update_ratio_epoch,
                   "ramp_epochs": schedule.ramp_epochs, "ratio": schedule.ratio(epoch),
                   "next_ratio": schedule.ratio(epoch + 1)}
            run.end_epoch(epoch, state, lr, train, val, previews, e2h)
    except NonFiniteLossError as err:
        raise SystemExit(f"{SCRIPT}: {err}") from err
    finally:
        cleanup()
    return run.path


if __name__ == "__main__":
    main()
