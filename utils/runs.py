"""Where a script finds its weights and a training run's settings: one rule for every script.

A training run is a folder ``<results_dir>/<project_name>_<timestamp>/`` holding
``settings.json`` and ``model/best.pth`` (see ``utils/training/run_folder.py``). Which weights a
script uses, in order (``find_weights(purpose, ...)``, the one rule every script calls):

1. a file named explicitly (``apply.py --model FILE``);
2. ``model_path``/``pth_name`` from the settings, where ``model_path`` may be the folder of the
   file or, as in the seed, a run folder whose ``model/`` holds ``pth_name``;
3. the most recently written ``<stage>/*/model/best.pth`` of the first results folder of the
   purpose's list (``NEWEST_OF``: stage 2, else stage 1, for every script that uses trained
   weights; stage 1 for stage 2's start; none for stage 1's), looked for under each of ``roots``
   (the working folder, then the repository; training: the working folder);
4. none (the caller says what to do: train from scratch, or an error that says how to get weights).
"""
import glob
import json
import os

SETTINGS_FILE = "settings.json"
TRAINED = ("results_stage2", "results_stage1")  # where trained weights are looked for, newest stage first
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEWEST_OF = {  # purpose -> the results folders whose newest best.pth it falls back to, in order
    "apply": TRAINED, "make_dataset": TRAINED, "export": TRAINED, "test": TRAINED, "serve": TRAINED,
    "video": TRAINED,
    "train_stage1": (),                   # the seed's random initialisation
    "train_stage2": ("results_stage1",),  # stage 2 fine-tunes stage 1's best weights
}


def named_weights(model_path, pth_name):
    """The file ``model_path/pth_name`` or ``model_path/model/pth_name``; None when ``pth_name``
    is empty or neither exists."""
    if not pth_name:
        return None
    for candidate in (os.path.join(model_path, pth_name), os.path.join(model_path, "model", pth_name)):
        if os.path.isfile(candidate):
            return candidate
    return None


def newest_best_weights(results_dir):
    """``<results_dir>/*/model/best.pth`` most recently written, or None."""
    found = glob.glob(os.path.join(results_dir, "*", "model", "best.pth"))
    return max(found, key=os.path.getmtime) if found else None


def find_newest_weights(roots=(".",), stages=TRAINED):
    """The newest ``<root>/<stage>/<run>/model/best.pth`` over ``roots`` for the first stage in
    ``stages`` that has any, as found under the first root holding it; None when there is none."""
    for stage in stages:
        found = [newest_best_weights(os.path.join(root, stage)) for root in roots]
        found = [p for p in found if p is not None]
        if found:
            return max(found, key=os.path.getmtime)
    return None


def find_weights(purpose, explicit=None, settings=None, roots=None):
    """The weight file of ``purpose`` (a key of ``NEWEST_OF``: the script's name), by the rule
    in the module docstring; None when there is none.

    ``explicit``: a path given on the command line (returned as it is); ``settings``: an object
    with ``model_path`` and ``pth_name`` (a script's settings), or None; ``roots``: folders the
    results folders are looked for in (default: the working folder, then the repository; for
    training only the working folder, where its ``results_dir`` is).

    >>> find_weights("train_stage1") is None  # no named weights: stage 1 starts from scratch
    True
    """
    if purpose not in NEWEST_OF:
        raise ValueError(f"find_weights: unknown purpose {purpose!r}; one of {sorted(NEWEST_OF)}")
    if explicit:
        return explicit
    named = named_weights(getattr(settings, "model_path", ""), getattr(settings, "pth_name", ""))
    if named or not NEWEST_OF[purpose]:
        return named
    if not roots:  # training writes its results_dir relative to the working folder: it looks there only
        roots = [os.getcwd()] if purpose.startswith("train_") else list(dict.fromkeys([os.getcwd(), REPO]))
    return find_newest_weights(roots, NEWEST_OF[purpose])


def choose_weights(explicit=None, model_path="", pth_name="", newest_of=(), roots=(".",)):
    """Deprecated: the older form of ``find_weights``, kept while callers move to it."""
    if explicit:
        return explicit
    named = named_weights(model_path, pth_name)
    if named or not newest_of:
        return named
    return find_newest_weights(roots, newest_of)


def run_folder_of(weights):
    """The training run folder holding ``weights`` (``<run>/model/<file>`` with
    ``<run>/settings.json``), or None."""
    if weights is None:
        return None
    model_dir = os.path.dirname(os.path.abspath(weights))
    run = os.path.dirname(model_dir)
    if os.path.basename(model_dir) == "model" and os.path.isfile(os.path.join(run, SETTINGS_FILE)):
        return run
    return None


def run_settings_path(run_dir):
    """``<run_dir>/settings.json`` (whether or not it exists)."""
    return os.path.join(run_dir, SETTINGS_FILE)


def read_run_settings(run_dir):
    """The dict a run saved in its ``settings.json``; None when there is none or it is unreadable."""
    try:
        with open(run_settings_path(run_dir)) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def settings_near(weights):
    """``(settings dict, path)`` of the ``settings.json`` beside ``weights`` or one folder up
    (``<run>/model/best.pth``); ``(None, None)`` when there is none."""
    folder = os.path.dirname(os.path.abspath(weights))
    for run in (folder, os.path.dirname(folder)):
        saved = read_run_settings(run)
        if saved is not None:
            return saved, run_settings_path(run)
    return None, None


def network_size(weights, explicit=None, export_size=None, default=320):
    """``(size, where it came from)`` of the network input for ``weights``: ``explicit`` when
    given; else the ``image_size`` of the run the weights come from (its settings.json beside
    them or one folder up), so a model runs at the size it was trained and validated at; else
    ``export_size`` (an .onnx file's, from its metadata); else ``default`` (the original
    U-2-Net's 320)."""
    if explicit:
        return explicit, "the size asked for"
    if weights:
        saved, path = settings_near(weights)
        size = (saved or {}).get("image_size")
        if isinstance(size, int) and size > 0:
            return size, path
    if export_size:
        return export_size, f"the export size in {os.path.basename(weights)}"
    return default, "the default"


def heldout_options(weights, seed=0):
    """Keyword arguments of ``data_loader.ForegroundDataset`` that make held-out composites
    equal to the validation of the run that trained ``weights``: its ``seed``, which fixes each
    photo's background and crop, and its ``background_num``/``easy_background_num``, which fix
    the backgrounds drawn from. From the run's settings.json beside the weights or one folder
    up; without one, ``seed`` and every background.

    >>> heldout_options(None, seed=4)
    {'seed': 4, 'background_num': None, 'easy_background_num': None}
    """
    saved = (settings_near(weights)[0] if weights else None) or {}

    def number(key, default):
        value = saved.get(key, default)
        return value if value is None or (isinstance(value, int) and not isinstance(value, bool)) else default

    return {"seed": number("seed", seed), "background_num": number("background_num", None),
            "easy_background_num": number("easy_background_num", None)}
