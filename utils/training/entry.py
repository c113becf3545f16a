"""The one training entry both stages run: ``train(script, build_datasets, argv, description)``.

In order: settings (the JSON file, ``--config``, ``--set``; a resumed run's own settings.json);
the cheap checks (``preflight``: the device, ``amp`` on it, the results folder, a resumed run's
checkpoint, the starting weights against ``arch``), all before any dataset is indexed or any
foreground estimated; the process group and seeds; the network and its starting weights; the
datasets (a resumed run's training set compared with the one its checkpoint records);
optimiser, lr schedule, AMP and the checkpoint's state; then the loop: train, validate, step the
lr, commit the epoch (rank 0 writes). A bad setting, weight file, checkpoint or dataset ends the
program with exit status 2 and one line naming the key or the file; a NaN loss with status 1.
"""
import argparse
import json
import os
import sys
import tempfile
import warnings

from data_loader import DatasetError
from data_loader.indexing import training_set_changes, training_set_record
from model import CheckpointError, build_model
from utils.device import amp_dtype, resolve_device
from utils.distributed import cleanup, init_distributed_mode, seed_everything
from utils.runs import NEWEST_OF, find_weights, run_settings_path
from utils.settings import SettingsError, add_settings_arguments, build_settings, setting_source, settings_to_dict
from .checkpoint import has_checkpoint, load_checkpoint, load_starting_weights
from .engine import NonFiniteLossError, build_train_loader, resume_training, setup_training, train_one_epoch, validate
from .losses import MattingLoss
from .lr import extend_schedule
from .run_folder import RunFolder, recorded_start


class TrainingSetChanged(ValueError):
    """A resumed run whose training files are not those its checkpoint was trained on."""


def train(script, build_datasets, argv=None, description=None):
    """Run the training script ``script`` (``train_stage1`` | ``train_stage2``); returns the run folder.

    ``build_datasets(settings)`` -> ``(train_set, val_set, e2h_state)``: the datasets (with
    ``pairs``, ``set_epoch`` and ``load_full``) and None or ``e2h_state(epoch)`` -> the plain
    dict the checkpoint records for the epoch.
    """
    settings = load_train_settings(script, argv, description)
    run = None
    try:
        checkpoint = preflight(settings)
        dist = init_distributed_mode(settings.device)
        seed_everything(settings.seed, dist.rank)
        if dist.is_main:
            print(json.dumps(settings_to_dict(settings), indent=2))
        net = build_model(settings.arch)
        start = load_start(net, script, settings, checkpoint, dist.is_main)

        # data: every rank indexes the files itself; stage 2 shares the foreground estimation
        train_set, val_set, e2h_state = build_datasets(settings)
        record = training_set_record(train_set.pairs)
        if checkpoint is not None:
            check_training_set(checkpoint, record, settings.resume, dist.is_main)
        loader = build_train_loader(train_set, settings, dist)

        # optimiser, schedule, AMP; then the checkpoint's state when resuming
        state = setup_training(net, settings, dist)
        if checkpoint is not None:
            resume_training(state, checkpoint, settings.resume)
            note = extend_schedule(state.scheduler, settings.epoch_num)
            if note and dist.is_main:
                print(f"resume: {note}")
        criterion = MattingLoss(settings.loss, settings.unknown_loss_weight)
        run = RunFolder(settings, dist, start, checkpoint, training_set=record)
        if dist.is_main:
            print(f"{settings.arch}: {len(train_set)} training / {len(val_set)} validation images; "
                  f"epochs {state.start_epoch}..{settings.epoch_num - 1} -> {run.path}")

        # loop: train, validate, step the lr, save (rank 0)
        for epoch in range(state.start_epoch, settings.epoch_num):
            train_set.set_epoch(epoch)
            loader.sampler.set_epoch(epoch)
            lr = state.lr
            stats = train_one_epoch(state, criterion, loader, epoch, settings.epoch_num)
            val, previews = validate(state.net, val_set, settings.image_size, dist,
                                     settings.batch_size, settings.val_image_num)
            state.scheduler.step()
            run.end_epoch(epoch, state, lr, stats, val, previews, e2h_state(epoch) if e2h_state else None)
    except (SettingsError, CheckpointError, DatasetError, TrainingSetChanged) as err:
        exit_with_error(script, err)
    except NonFiniteLossError as err:
        raise SystemExit(f"{script}: {err}") from err
    finally:
        cleanup()
    return run.path


def exit_with_error(script, err):
    """One line on stderr, ``<script>: error: <message>``, and exit status 2 (as argparse's)."""
    message = " ".join(str(err).split())
    print(f"{script}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


# ---- settings ---------------------------------------------------------------------------------

def load_train_settings(script, argv=None, description=None):
    """Settings of a training script from its JSON file, ``--config`` and ``--set`` items.

    With ``resume=RUN_DIR`` (``--set`` or the file) the base is the run's own settings.json
    instead, then this command's ``--set`` items: ``--set resume=RUN`` alone continues the run
    as it was set up (from any working folder), ``--set resume=RUN --set epoch_num=200``
    extends it. ``--set resume=`` (empty) is a new run. Bad settings end the program
    (``exit_with_error``) with one line naming the key and the file.
    """
    parser = add_settings_arguments(argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    resume = [item.split("=", 1)[1] for item in args.overrides if item.startswith("resume=")]
    try:
        if resume and resume[-1]:
            run_dir = resume[-1]
        else:
            settings = build_settings(script, args.config, args.overrides)
            run_dir = settings.resume
        if run_dir:
            saved = run_settings_path(run_dir)
            if not os.path.isfile(saved):
                raise SettingsError(f"resume={run_dir}: no settings.json there; not a run folder")
            if args.config:
                print(f"resume: --config {args.config} is ignored; the run's {saved} is used, then --set items")
            settings = build_settings(script, saved, [*args.overrides, f"resume={run_dir}"])
    except SettingsError as err:
        exit_with_error(script, err)
    return settings


# ---- the cheap checks -------------------------------------------------------------------------

def preflight(settings):
    """Everything that can be checked without the data, before any of it is read: the device
    exists, ``amp`` suits it, the results folder (a resumed run's folder) is writable, a resumed
    run's ``checkpoint.pth`` is readable and of ``arch``. Returns that checkpoint's dict (None:
    a new run, or a run stopped before its first checkpoint). Raises SettingsError or
    CheckpointError naming the key or the file."""
    try:
        device = resolve_device(settings.device, training=False)
    except ValueError as err:
        raise SettingsError(f"{setting_source(settings, 'device')}: device: {err}") from err
    try:
        amp_dtype(device, settings.amp)
    except ValueError as err:
        raise SettingsError(f"{setting_source(settings, 'amp')}: {err}") from err
    if int(os.environ.get("RANK", 0)) == 0:  # only rank 0 writes results
        key = "resume" if settings.resume else "results_dir"
        check_writable(settings.resume or settings.results_dir, key, setting_source(settings, key))
    if not (settings.resume and has_checkpoint(settings.resume)):
        return None
    checkpoint = load_checkpoint(settings.resume)
    if checkpoint.get("arch", settings.arch) != settings.arch:
        raise CheckpointError(f"{settings.resume}/checkpoint.pth: holds {checkpoint['arch']} weights, but "
                              f"{setting_source(settings, 'arch')} says arch={settings.arch!r}; a run keeps its arch")
    return checkpoint


def check_writable(folder, key, source):
    """Create ``folder`` if needed and write a temporary file in it; SettingsError if either fails."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise SettingsError(f"{source}: {key} {folder!r} is not a writable folder "
                            f"({err.strerror or err})") from err


def load_start(net, script, settings, checkpoint, is_main=True):
    """Load the weights this run starts from into ``net``; returns their path (None: none).

    A resumed run with a checkpoint: none (the checkpoint holds the weights). One stopped
    before its first checkpoint: the file its ``start.json`` names, unchanged
    (``run_folder.recorded_start``). A new run: ``find_weights(script, settings=settings)``.
    Weights of another architecture than ``arch`` are a CheckpointError saying what to set.
    """
    if checkpoint is not None:
        return None
    path = recorded_start(settings.resume) if settings.resume else False
    if path is False:
        if settings.resume:
            warnings.warn(f"resume: {settings.resume} has no start.json (a run of an older version); its "
                          f"starting weights are chosen again by the settings' rule", stacklevel=2)
        path = find_weights(script, settings=settings)
    if path:
        load_starting_weights(net, path, settings.arch)
        if is_main and not settings.resume:
            print(f"starting from {path}")
    elif NEWEST_OF[script] and is_main and not settings.resume:
        warnings.warn(f"no starting weights (no model_path/pth_name and no "
                      f"{' or '.join(d + '/*/model/best.pth' for d in NEWEST_OF[script])}): "
                      f"{script} trains from scratch", stacklevel=2)
    return path


def check_training_set(checkpoint, record, run_dir, is_main=True):
    """Refuse to resume on other training files than the checkpoint's (TrainingSetChanged):
    a photo removed or added (``image_num`` then takes another), or a file of another size.
    Files with new modification times only (a copied dataset) are resumed with a warning."""
    old = checkpoint.get("training_set")
    if not old:
        if is_main:
            warnings.warn(f"resume: {run_dir}/checkpoint.pth (an older version) records no training set: "
                          f"whether its files changed cannot be checked", stacklevel=2)
        return
    changed, touched = training_set_changes(old, record)
    if changed:
        raise TrainingSetChanged(
            f"resume={run_dir}: the training set changed since its checkpoint ({old['count']} files then, "
            f"{record['count']} now): {changed}. Resuming would train on another set: restore the files, or "
            f"start a new run from its weights (--set model_path={run_dir}/model --set pth_name=best.pth)")
    if touched and is_main:
        warnings.warn(f"resume: {touched} training file(s) have new modification times since the checkpoint "
                      f"(same names and sizes): resuming on them", stacklevel=2)
