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
Their architecture must be ``arch``. Every setting, the device, ``amp`` on it, the results
folder and the starting weights are checked before any foreground is estimated; an error exits
with status 2 and one line naming the key or the file. A resumed run refuses a training set
that changed since its checkpoint. Results: ``<results_dir>/<project_name>_<timestamp>/`` with
settings.json, train_log.csv, model/<model_name>_epoch<N>.pth, model/best.pth (lowest
validation MAD), checkpoint.pth, image/epoch<N>.png and curves.png (see utils/training/run_folder.py).
"""
from data_loader import E2HSchedule, ForegroundDataset
from utils.training.engine import augment_from_settings
from utils.training.entry import train

SCRIPT = "train_stage2"


def build_datasets(settings):
    """Foreground train split (e2h composites, random crops and flips), val split (full
    resolution, r = 1 on a background fixed per file) and ``e2h_state(epoch)``, the e2h
    schedule's state that each epoch's checkpoint records."""
    schedule = E2HSchedule(settings.e2h.schedule, settings.update_ratio_epoch, settings.e2h.ramp_epochs)
    common = dict(background_num=settings.background_num, easy_background_num=settings.easy_background_num,
                  schedule=schedule, image_size=settings.image_size, crop_size=settings.crop_size,
                  seed=settings.seed)
    train_set = ForegroundDataset(settings.dataset_path, "train", image_num=settings.image_num,
                                  augment=augment_from_settings(settings.augment), **common)
    val_set = ForegroundDataset(settings.dataset_path, "val", augment=False, **common)

    def e2h_state(epoch):
        return {"schedule": schedule.kind, "update_ratio_epoch": schedule.update_ratio_epoch,
                "ramp_epochs": schedule.ramp_epochs, "ratio": schedule.ratio(epoch),
                "next_ratio": schedule.ratio(epoch + 1)}

    return train_set, val_set, e2h_state


def main(argv=None):
    """Settings, the cheap checks, data, model, loop, save: ``utils.training.entry.train``."""
    return train(SCRIPT, build_datasets, argv, description=__doc__)


if __name__ == "__main__":
    main()
