"""Stage 1: train U^2-Net for human matting on the AISegment portraits (photo + alpha matte).

Run from the repository root:

    python train_stage1.py                                   # data_examples/, U2NETP, minutes on a CPU
    python train_stage1.py --set dataset_path=/data/AISegment --set arch=u2net --set model_name=u2net \
        --set image_size=320 --set crop_size=288 --set batch_size=8 --set epoch_num=30
    torchrun --nproc_per_node=4 train_stage1.py --set ...    # DDP, 4 GPUs (batch_size is per process)
    python train_stage1.py --set resume=results_stage1/<run> # continue a run from its checkpoint.pth

Settings: utils/load_settings/train_stage1_settings.json, then ``--config FILE`` and
``--set KEY=VALUE``. ``model_path``/``pth_name`` name optional starting weights (e.g. the
original U-2-Net release). Results: ``<results_dir>/<project_name>_<timestamp>/`` with
settings.json, train_log.csv, model/<model_name>_epoch<N>.pth, model/best.pth (lowest
validation MAD), checkpoint.pth, image/epoch<N>.png and curves.png (see utils/training/run_folder.py).
"""
import json

from data_loader import AISegmentDataset
from model import build_model
from utils.distributed import cleanup, init_distributed_mode, is_main_process, seed_everything
from utils.training.engine import (NonFiniteLossError, augment_from_settings, build_train_loader, evaluate,
                          resume_training, setup_training, train_one_epoch)
from utils.training.losses import MattingLoss
from utils.training.run_folder import RunFolder, load_start, load_train_settings
from utils.runs import choose_weights
from utils.settings import settings_to_dict

SCRIPT = "train_stage1"


def build_datasets(settings):
    """AISegment train split (random crops and flips) and val split (full-resolution samples)."""
    common = dict(image_size=settings.image_size, crop_size=settings.crop_size, seed=settings.seed)
    train = AISegmentDataset(settings.dataset_path, "train", image_num=settings.image_num,
                             augment=augment_from_settings(settings.augment), **common)
    val = AISegmentDataset(settings.dataset_path, "val", augment=False, **common)
    return train, val


def choose_starting_weights(settings):
    """model_path/pth_name when named, else none (the seed's random initialisation)."""
    return choose_weights(model_path=settings.model_path, pth_name=settings.pth_name)


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
        # data: every rank indexes the files itself (read only; no rank waits in a collective meanwhile)
        train_set, val_set = build_datasets(settings)
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
            run.end_epoch(epoch, state, lr, train, val, previews)
    except NonFiniteLossError as err:
        raise SystemExit(f"{SCRIPT}: {err}") from err
    finally:
        cleanup()
    return run.path


if __name__ == "__main__":
    main()
