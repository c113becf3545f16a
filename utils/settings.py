"""Settings: one typed object per script, read from JSON and overridden from the command line.

Each script reads ``utils/load_settings/<script>_settings.json`` by default; ``--config FILE``
picks another file and ``--set KEY=VALUE`` (repeatable; dotted keys for nested items; VALUE
parsed as JSON, else taken as a plain string) overrides single items. Unknown keys, wrong types,
values outside their allowed set and missing paths are errors naming the key and where it came
from, raised before any work starts. Keys the file leaves out take the defaults below.
"""
import argparse
import dataclasses
import json
import math
import os
import typing
import warnings
from dataclasses import dataclass, field

from .constants import AMP_MODES, ARCHITECTURES, E2H_SCHEDULES, LOSSES, LR_SCHEDULES, PRECISIONS, REFINE_METHODS
from .runs import named_weights

SETTINGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "load_settings")


class SettingsError(ValueError):
    """A bad settings file or override; the message names the key and the file."""


@dataclass
class DataLoaderSettings:
    num_worker: int = 2             # DataLoader worker processes (per process under torchrun)
    pin_memory: bool = True         # page-locked batches, faster host-to-GPU copies
    persistent_workers: bool = True  # keep workers alive between epochs
    load_once: bool = True          # the seed's key: foregrounds are estimated once, cached on disk (false: ignored, warned)


@dataclass
class E2HSettings:
    schedule: str = "step"  # step: +0.1 every update_ratio_epoch epochs | linear | none (ratio 1)
    ramp_epochs: int = 100  # linear: epochs until the ratio reaches 1


@dataclass
class AugmentSettings:
    flip: bool = True           # random horizontal flip (the seed's)
    random_scale: bool = False  # extra: random rescale before the crop
    color_jitter: bool = False  # extra: colour jitter on the foreground


@dataclass
class TrainSettings:
    project_name: str = "u2net_matting"  # results go to <results_dir>/<project_name>_<timestamp>/
    model_name: str = "u2net"            # prefix of saved weight files
    arch: str = "u2net"                  # u2net | u2netp
    device: str = "auto"                 # auto | cpu | cuda | cuda:N
    seed: int = 0
    dataset_path: str = ""
    results_dir: str = ""
    model_path: str = ""                 # folder of the starting weights ("" = none)
    pth_name: str = ""                   # starting weight file inside model_path
    resume: str = ""                     # a run folder to continue
    batch_size: int = 8
    epoch_num: int = 100
    image_num: typing.Optional[int] = None      # cap on the number of training photos
    val_image_num: typing.Optional[int] = None  # cap on validation images per epoch
    image_size: int = 320                # short side after rescaling
    crop_size: int = 288                 # random square crop fed to the network
    lr: float = 1e-3
    lr_schedule: str = "constant"        # constant | seed (x0.975/epoch after 11*update_ratio_epoch) | cosine
    weight_decay: float = 0.0
    loss: str = "l1"                     # l1 (the seed's) | bce (the original U-2-Net's)
    unknown_loss_weight: float = 1.0     # weight of the fused output's L1 inside the trimap's unknown band
    amp: str = "auto"                    # auto (bf16 where native, CPU or CUDA; else fp16 on CUDA, off on CPU) | off | bf16 | fp16
    channels_last: bool = True
    compile: bool = False                # torch.compile the model
    grad_clip: float = 0.0               # max gradient norm; 0 = off
    save_every: int = 1                  # write model/<model_name>_epoch<N>.pth every N epochs
    dataloader: DataLoaderSettings = field(default_factory=DataLoaderSettings)
    augment: AugmentSettings = field(default_factory=AugmentSettings)


@dataclass
class Stage1Settings(TrainSettings):
    dataset_path: str = "data_examples/AISegment"
    results_dir: str = "results_stage1"


@dataclass
class Stage2Settings(TrainSettings):
    dataset_path: str = "data_examples/paixin_comp_mod"
    results_dir: str = "results_stage2"
    background_num: typing.Optional[int] = None  # cap on the number of hard backgrounds (None: all)
    easy_background_num: typing.Optional[int] = None  # the seed's key: cap on background_easy/ images (None: background_num)
    update_ratio_epoch: int = 10         # step schedule: epochs between ratio increases
    lr_schedule: str = "seed"
    e2h: E2HSettings = field(default_factory=E2HSettings)


@dataclass
class TestSettings:
    project_name: str = "u2net_matting"
    arch: str = ""                       # "" = read from the weights | u2net | u2netp
    device: str = "auto"
    seed: int = 0
    model_path: str = ""                 # "" = the newest stage-2 run's best weights
    pth_name: str = ""
    dataset_path: str = "data_examples/paixin_comp_mod"
    image_num: typing.Optional[int] = None
    heldout_ratio: float = 1.0           # e2h ratio of the held-out composites: 1 real photo backgrounds, 0 easy ones
    image_size: typing.Optional[int] = None  # network input; None: the training run's own, else 320
    batch_size: int = 4
    precision: str = "fp32"              # fp32 | bf16 | fp16
    refine: str = "none"                 # full-resolution alpha: none (resized) | guided | matting
    dataloader: DataLoaderSettings = field(default_factory=DataLoaderSettings)


SCHEMAS = {"train_stage1": Stage1Settings, "train_stage2": Stage2Settings, "test_stage2": TestSettings}

CHOICES = {  # the allowed values, declared once in utils/constants.py
    "arch": ARCHITECTURES, "lr_schedule": LR_SCHEDULES, "loss": LOSSES, "amp": AMP_MODES,
    "e2h.schedule": E2H_SCHEDULES, "precision": PRECISIONS, "refine": REFINE_METHODS,
}
POSITIVE = {"batch_size", "epoch_num", "image_size", "crop_size", "update_ratio_epoch",
            "e2h.ramp_epochs", "save_every", "lr"}
AT_LEAST_ONE = {  # None means "all"; 0 would mean an empty set, which no run can use
    "image_num": "None (all the split's photos)", "val_image_num": "None (the whole validation split)",
    "background_num": "None (all backgrounds)", "easy_background_num": "None (as background_num)"}
NOT_NEGATIVE = {"dataloader.num_worker", "weight_decay", "grad_clip", "unknown_loss_weight"}
SEED_RANGE = 2 ** 32  # numpy's seeds are 32-bit (utils.distributed.seed_everything adds the rank)
# The seed's key names are kept. easy_background_num is a setting like background_num;
# dataloader.load_once is accepted, and false noted: what it asked for is not done, and why.
IGNORED_SEED_VALUES = {
    ("dataloader.load_once", False): "ignored: the seed estimated each foreground again on every draw "
    "without it; here every foreground is estimated once and cached on disk "
    "(data_loader/foreground_cache.py), which gives each draw the same foreground, faster; "
    "true (the seed's estimate-once, held in RAM) is what the cache does, on disk",
}


def _check_type(value, hint, key, source):
    """Return ``value`` as type ``hint`` or raise SettingsError naming key and source."""
    if typing.get_origin(hint) is typing.Union:  # Optional[int]
        if value is None:
            return None
        hint = next(t for t in typing.get_args(hint) if t is not type(None))
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[hint]
    if not ok:
        raise SettingsError(f"{source}: {key} must be {hint.__name__}, got {value!r} ({type(value).__name__})")
    return float(value) if hint is float else value


def _merge(obj, updates, source, prefix=""):
    """Write ``updates`` (a dict) into dataclass ``obj``; every key must exist in its schema."""
    if not isinstance(updates, dict):
        raise SettingsError(f"{source}: {prefix.rstrip('.') or 'the file'} must be a JSON object")
    hints = typing.get_type_hints(type(obj))
    for key, value in updates.items():
        full = prefix + key
        if key not in hints:
            known = ", ".join(sorted(hints))
            raise SettingsError(f"{source}: unknown key {full!r} (known keys: {known})")
        if dataclasses.is_dataclass(hints[key]):
            _merge(getattr(obj, key), value, source, full + ".")
        else:
            setattr(obj, key, _check_type(value, hints[key], full, source))


def _field_type(settings, key):
    """Type hint of dotted ``key`` in the settings' schema, or None if there is no such key."""
    obj = settings
    *parents, last = key.split(".")
    for part in parents:
        obj = getattr(obj, part, None)
        if not dataclasses.is_dataclass(obj):
            return None
    return typing.get_type_hints(type(obj)).get(last)


def _parse_override(item, settings):
    """'a.b=VALUE' -> {'a': {'b': value}}: VALUE as JSON, else (or for a text key) the plain string."""
    if "=" not in item:
        raise SettingsError(f"--set {item}: expected KEY=VALUE")
    key, raw = item.split("=", 1)
    try:
        value = raw if _field_type(settings, key) is str else json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    for part in reversed(key.split(".")):
        value = {part: value}
    return key, value


def _validate(settings, sources):
    """Allowed values, ranges and existing paths; errors name the key and its source."""
    flat = _flatten(dataclasses.asdict(settings))
    for key, value in flat.items():
        src = sources.get(key, "defaults")
        if key in CHOICES and value not in CHOICES[key] and not (key == "arch" and value == ""):
            raise SettingsError(f"{src}: {key} must be one of {sorted(CHOICES[key])}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise SettingsError(f"{src}: {key} must be a finite number, got {value!r}")
        if key in POSITIVE and value is not None and value <= 0:
            raise SettingsError(f"{src}: {key} must be positive, got {value!r}")
        if key in NOT_NEGATIVE and value < 0:
            raise SettingsError(f"{src}: {key} must be 0 or more, got {value!r}")
        if key in AT_LEAST_ONE and value is not None and value < 1:
            raise SettingsError(f"{src}: {key} must be at least 1 or {AT_LEAST_ONE[key]}, got {value!r}"
                                + (": validation chooses model/best.pth" if key == "val_image_num" else ""))
    if not 0 <= flat.get("seed", 0) < SEED_RANGE:
        raise SettingsError(f"{sources.get('seed', 'defaults')}: seed must be in [0, 2**32), got {flat['seed']!r}")
    if isinstance(settings, TrainSettings) and not flat["dataset_path"]:
        raise SettingsError(f"{sources.get('dataset_path', 'defaults')}: dataset_path is empty; "
                            f"name the dataset folder")
    if not 0.0 <= flat.get("heldout_ratio", 1.0) <= 1.0:
        raise SettingsError(f"{sources.get('heldout_ratio', 'defaults')}: heldout_ratio must be in [0, 1], "
                            f"got {flat['heldout_ratio']!r}")
    if flat.get("crop_size", 0) > (flat.get("image_size") or 1 << 30):
        raise SettingsError(f"{sources.get('crop_size', 'defaults')}: crop_size {flat['crop_size']} "
                            f"is larger than image_size {flat['image_size']}")
    if flat.get("dataset_path") and not os.path.isdir(flat["dataset_path"]):
        raise SettingsError(f"{sources.get('dataset_path', 'defaults')}: dataset_path "
                            f"{flat['dataset_path']!r} is not a folder")
    if flat.get("pth_name") and named_weights(flat.get("model_path", ""), flat["pth_name"]) is None:
        weights = os.path.join(flat.get("model_path", ""), flat["pth_name"])
        raise SettingsError(f"{sources.get('pth_name', 'defaults')}: model_path/pth_name "
                            f"{weights!r} is not a file (nor is model_path/model/pth_name)")
    if flat.get("resume") and not os.path.isdir(flat["resume"]):
        raise SettingsError(f"{sources.get('resume', 'defaults')}: resume {flat['resume']!r} is not a run folder")



def _flatten(d, prefix=""):
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, prefix + key + "."))
        else:
            out[prefix + key] = value
    return out


def default_config_path(script):
    return os.path.join(SETTINGS_DIR, f"{script}_settings.json")


def add_settings_arguments(parser):
    """Add ``--config`` and ``--set`` to an argparse parser."""
    parser.add_argument("--config", default=None, help="settings JSON file (default: utils/load_settings/<script>_settings.json)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting; dotted keys for nested items; VALUE parsed as JSON (repeatable)")
    return parser


def build_settings(script, config=None, overrides=()):
    """Resolve the settings of ``script`` from its JSON file and ``KEY=VALUE`` overrides."""
    if script not in SCHEMAS:
        raise SettingsError(f"no settings schema for script {script!r}")
    settings = SCHEMAS[script]()
    config = config or default_config_path(script)
    data = _read_json(config)
    _merge(settings, data, config)
    sources = {key: config for key in _flatten(data)}
    for item in overrides:
        key, nested = _parse_override(item, settings)
        _merge(settings, nested, f"--set {item}")
        sources[key] = f"--set {item}"
    _validate(settings, sources)
    settings._sources = sources  # not a field: asdict, equality and settings.json leave it out
    flat = _flatten(dataclasses.asdict(settings))
    for (key, value), note in IGNORED_SEED_VALUES.items():
        if key in flat and flat[key] is value:
            warnings.warn(f"{sources.get(key, 'defaults')}: {key}={json.dumps(value)} (the seed's key): {note}",
                          stacklevel=3)
    return settings


def _read_json(config):
    """The JSON object in file ``config``; SettingsError naming the file for a missing, unreadable,
    binary or non-JSON file, or a folder."""
    try:
        with open(config, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as err:
        raise SettingsError(f"{config}: settings file not found") from err
    except IsADirectoryError as err:
        raise SettingsError(f"{config}: is a folder, not a settings file") from err
    except OSError as err:
        raise SettingsError(f"{config}: cannot read the settings file ({err.strerror or err})") from err
    except UnicodeDecodeError as err:
        raise SettingsError(f"{config}: not a text file (not valid UTF-8 at byte {err.start}); "
                            f"a settings file is JSON") from err
    except json.JSONDecodeError as err:
        raise SettingsError(f"{config}: not valid JSON: {err}") from err


def setting_source(settings, key):
    """Where ``key`` of settings from ``build_settings`` came from: the file, ``--set KEY=VALUE``
    or ``defaults``; for messages that must name it."""
    return getattr(settings, "_sources", {}).get(key, "defaults")


def load_settings(script, argv=None, parser=None):
    """Parse ``argv`` (``--config``, ``--set`` and any arguments of ``parser``); return ``(settings, args)``.

    Bad settings end the program through ``parser.error`` with the message naming key and file.
    """
    parser = add_settings_arguments(parser or argparse.ArgumentParser())
    args = parser.parse_args(argv)
    try:
        return build_settings(script, args.config, args.overrides), args
    except SettingsError as err:
        parser.error(str(err))


def settings_to_dict(settings):
    """Plain nested dict of the settings (JSON-serialisable)."""
    return dataclasses.asdict(settings)


def positive_int(text):
    """argparse type: an integer >= 1 (0 is an error, not 'the default')."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value
