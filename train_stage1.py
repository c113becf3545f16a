"""Stage 1: train U^2-Net for human matting on the AISegment portraits (photo + alpha matte).

Run from the repository root:

    python train_stage1.py                                   # data_examples/, U2NETP, minutes on a CPU
    python train_stage1.py --set dataset_path=/data/AISegment --set arch=u2net --set model_name=u2net \
        --set image_size=320 --set crop_size=288 --set batch_size=8 --set epoch_num=30
    torchrun --nproc_per_node=4 train_stage1.py --set ...    # DDP, 4 GPUs (batch_size is per process)
    python train_stage1.py --set resume=results_stage1/<run> # continue a run from its checkpoint.pth

Settings: utils/load_settings/train_stage1_settings.json, then ``--config FILE`` and
``--set KEY=VALUE``. ``model_path``/``pth_name`` name optional starting weights (e.g. the
original U-2-Net release); none: the seed's random initialisation. Every setting, the device,
``amp`` on it, the results folder and the starting weights against ``arch`` are checked before
any data is read; an error exits with status 2 and one line naming the key or the file. Results: ``<results_dir>/<project_name>_<timestamp>/`` with
settings.json, train_log.csv, model/<model_name>_epoch<N>.pth, model/best.pth (lowest
validation MAD), checkpoint.pth, image/epoch<N>.png and curves.png (see utils/training/run_folder.py).
"""
from data_loader import AISegmentDataset
from utils.training.engine import augment_from_settings
from utils.training.entry import train

SCRIPT = "train_stage1"


def build_datasets(settings):
    """AISegment train split (random crops and flips) and val split (full-resolution samples);
    no e2h state (stage 1 has no e2h)."""
    common = dict(image_size=settings.image_size, crop_size=settings.crop_size, seed=settings.seed)
    train_set = AISegmentDataset(settings.dataset_path, "train", image_num=settings.image_num,
                                 augment=augment_from_settings(settings.augment), **common)
    val_set = AISegmentDataset(settings.dataset_path, "val", augment=False, **common)
    return train_set, val_set, None


def main(argv=None):
    """Settings, the cheap checks, data, model, loop, save: ``utils.training.entry.train``."""
    return train(SCRIPT, build_datasets, argv, description=__doc__)


if __name__ == "__main__":
    main()
