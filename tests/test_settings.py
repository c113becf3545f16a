"""Settings: JSON file, --config, --set overrides and the errors that name key and file."""
import json

import pytest
import torch

from utils.device import resolve_device
from utils.settings import SettingsError, build_settings, default_config_path, load_settings, settings_to_dict


@pytest.fixture
def config(tmp_path):
    """A minimal stage-2 settings file whose dataset_path exists."""
    data = tmp_path / "data"
    data.mkdir()
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"dataset_path": str(data), "batch_size": 3, "e2h": {"schedule": "linear"}}))
    return path


def test_file_values_and_defaults(config):
    s = build_settings("train_stage2", config)
    assert s.batch_size == 3 and s.e2h.schedule == "linear"
    assert s.e2h.ramp_epochs == 100 and s.crop_size == 288 and s.lr == 1e-3  # defaults
    assert s.dataloader.num_worker == 2


def test_overrides_are_json_with_string_fallback(config):
    s = build_settings("train_stage2", config, ["batch_size=16", "e2h.schedule=none", "lr=5e-4",
                                                "project_name=123", "image_num=null", "dataloader.pin_memory=false"])
    assert s.batch_size == 16 and s.e2h.schedule == "none" and s.lr == 5e-4
    assert s.project_name == "123"  # a text key keeps the text
    assert s.image_num is None and s.dataloader.pin_memory is False


def test_int_accepted_for_float(config):
    assert build_settings("train_stage2", config, ["lr=1"]).lr == 1.0


@pytest.mark.parametrize("override, words", [
    ("bogus=1", ["unknown key 'bogus'", "--set bogus=1"]),
    ("e2h.bogus=1", ["unknown key 'e2h.bogus'"]),
    ("batch_size=four", ["batch_size must be int", "'four'"]),
    ("channels_last=1", ["channels_last must be bool"]),
    ("e2h.schedule=cubic", ["e2h.schedule must be one of", "'cubic'"]),
    ("batch_size=0", ["batch_size must be positive"]),
    ("crop_size=400", ["crop_size 400 is larger than image_size 320"]),
    ("dataset_path=/no/such/folder", ["dataset_path", "/no/such/folder", "not a folder"]),
    ("pth_name=missing.pth", ["missing.pth", "not a file"]),
    ("resume=/no/such/run", ["resume", "not a run folder"]),
    ("batch_size", ["expected KEY=VALUE"]),
    ("dataloader.num_worker=-1", ["--set dataloader.num_worker=-1: dataloader.num_worker must be 0 or more"]),
    ("seed=-1", ["--set seed=-1: seed must be in [0, 2**32), got -1"]),
    (f"seed={2 ** 70}", [f"seed must be in [0, 2**32), got {2 ** 70}"]),
    ("lr=NaN", ["--set lr=NaN: lr must be a finite number, got nan"]),
    ("lr=Infinity", ["lr must be a finite number, got inf"]),
    ("dataset_path=", ["--set dataset_path=: dataset_path is empty"]),
    ("image_num=0", ["--set image_num=0: image_num must be at least 1 or None (all the split's photos), got 0"]),
    ("background_num=0", ["background_num must be at least 1 or None (all backgrounds)"]),
    ("val_image_num=0", ["val_image_num must be at least 1", "validation chooses model/best.pth"]),
])
def test_bad_overrides_name_the_key(config, override, words):
    with pytest.raises(SettingsError) as err:
        build_settings("train_stage2", config, [override])
    for word in words:
        assert word in str(err.value)


def test_errors_in_the_file_name_the_file(tmp_path, config):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"dataset_path": str(tmp_path), "epochs": 3}))
    with pytest.raises(SettingsError, match=r"bad\.json: unknown key 'epochs'"):
        build_settings("train_stage2", bad)
    bad.write_text("{not json")
    with pytest.raises(SettingsError, match=r"bad\.json: not valid JSON"):
        build_settings("train_stage2", bad)
    with pytest.raises(SettingsError, match=r"nope\.json: settings file not found"):
        build_settings("train_stage2", tmp_path / "nope.json")
    bad.write_text(json.dumps({"dataset_path": str(tmp_path), "e2h": 3}))
    with pytest.raises(SettingsError, match=r"bad\.json: e2h must be a JSON object"):
        build_settings("train_stage2", bad)


def test_stage1_has_no_e2h_keys(tmp_path):
    path = tmp_path / "s1.json"
    path.write_text(json.dumps({"dataset_path": str(tmp_path), "e2h": {"schedule": "step"}}))
    with pytest.raises(SettingsError, match="unknown key 'e2h'"):
        build_settings("train_stage1", path)


def test_shipped_settings_files_parse(tmp_path):
    """Every shipped JSON file uses only known keys of the right types (paths aside)."""
    for script in ("train_stage1", "train_stage2", "test_stage2"):
        path = default_config_path(script)
        data = json.load(open(path))
        data["dataset_path"] = str(tmp_path)
        copy = tmp_path / f"{script}.json"
        copy.write_text(json.dumps(data))
        settings = build_settings(script, copy)
        assert settings_to_dict(settings)["dataset_path"] == str(tmp_path)


def test_load_settings_cli_exits_with_message(config, capsys):
    settings, args = load_settings("train_stage2", ["--config", str(config), "--set", "seed=7"])
    assert settings.seed == 7
    with pytest.raises(SystemExit) as exit_info:
        load_settings("train_stage2", ["--config", str(config), "--set", "seed=x"])
    assert exit_info.value.code == 2
    assert "seed must be int" in capsys.readouterr().err


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    auto = resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="not a device name"):
        resolve_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda:0")
        with pytest.warns(UserWarning, match="training on the CPU"):
            resolve_device("auto", training=True)


def test_named_weights_in_model_path_or_its_model_folder(config, tmp_path):
    from utils.runs import named_weights

    def weights_file(s):
        return named_weights(s.model_path, s.pth_name)
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "best.pth").write_bytes(b"x")
    s = build_settings("train_stage2", config, [f"model_path={run}", "pth_name=best.pth"])
    assert weights_file(s) == str(run / "model" / "best.pth")
    (run / "best.pth").write_bytes(b"x")
    assert weights_file(s) == str(run / "best.pth")
    assert weights_file(build_settings("train_stage2", config)) is None


def test_the_seeds_key_names_are_accepted_with_a_note(config, recwarn):
    """easy_background_num and dataloader.load_once (the seed's keys) are settings; load_once
    false, which asked to estimate on every draw, is ignored with a warning that says why."""
    settings = build_settings("train_stage2", config, ["easy_background_num=3", "dataloader.load_once=true"])
    assert settings.easy_background_num == 3 and settings.background_num is None and not recwarn.list
    with pytest.warns(UserWarning, match=r"--set dataloader.load_once=false: dataloader.load_once=false "
                                         r"\(the seed's key\): ignored: .* cached on disk"):
        assert build_settings("train_stage2", config, ["dataloader.load_once=false"]).dataloader.load_once is False
    with pytest.raises(SettingsError, match="unknown key 'easy_background_num'"):
        build_settings("train_stage1", overrides=["easy_background_num=3"])


def test_a_settings_file_that_is_a_folder_or_binary_is_named(tmp_path):
    with pytest.raises(SettingsError, match=f"{tmp_path}: is a folder, not a settings file"):
        build_settings("train_stage2", tmp_path)
    binary = tmp_path / "weights.pth"
    binary.write_bytes(b"PK\x03\x04\xff\xfe" + bytes(range(256)))
    with pytest.raises(SettingsError, match=r"weights\.pth: not a text file"):
        build_settings("train_stage2", binary)


def test_find_weights_one_rule_for_every_purpose(tmp_path, monkeypatch):
    """Explicit file; else model_path/pth_name; else the newest best.pth of stage 2, then stage 1
    (every script that uses trained weights, test_stage2 included); stage 2 starts from stage 1's;
    stage 1 from none."""
    import os
    import time
    from types import SimpleNamespace

    from utils.runs import find_weights
    monkeypatch.chdir(tmp_path)

    def best(stage, run):
        os.makedirs(f"{stage}/{run}/model", exist_ok=True)
        open(f"{stage}/{run}/model/best.pth", "wb").close()
        return os.path.realpath(f"{stage}/{run}/model/best.pth")

    here = [str(tmp_path)]
    assert all(find_weights(p, roots=here) is None for p in ("apply", "test", "train_stage1", "train_stage2"))
    one = best("results_stage1", "a")
    assert find_weights("test", roots=here) == one  # no stage-2 run: stage 1's, as apply.py
    assert find_weights("train_stage2") == one and find_weights("train_stage1") is None
    time.sleep(0.01)
    two = best("results_stage2", "b")
    assert find_weights("apply", roots=here) == find_weights("test", roots=here) == two
    assert find_weights("train_stage2") == one
    named = SimpleNamespace(model_path=os.path.join("results_stage1", "a"), pth_name="best.pth")
    assert os.path.realpath(find_weights("test", settings=named)) == one
    assert find_weights("export", explicit="x.onnx", settings=named) == "x.onnx"
    with pytest.raises(ValueError, match="unknown purpose 'trian_stage2'"):
        find_weights("trian_stage2")


def test_heldout_composites_take_the_runs_seed_and_background_caps(tmp_path, make_paixin):
    """test_stage2's held-out composites are the run's validation composites: the same seed
    (each photo's background and crop) and background caps as the run that made the weights."""
    import os

    import numpy as np

    from data_loader import ForegroundDataset
    from utils.runs import heldout_options
    root = make_paixin(per_category=4, val=2, backgrounds=4, bg_val=3)
    run = tmp_path / "results_stage2" / "run"
    os.makedirs(run / "model")
    (run / "settings.json").write_text(json.dumps({"seed": 7, "background_num": 1, "easy_background_num": None}))
    weights = str(run / "model" / "best.pth")
    options = heldout_options(weights)
    assert options == {"seed": 7, "background_num": 1, "easy_background_num": None}
    kwargs = dict(image_size=32, crop_size=24, cache_dir=str(tmp_path / "cache"), progress=False, augment=False)
    validation = ForegroundDataset(root, "val", seed=7, background_num=1, **kwargs)
    held_out = ForegroundDataset(root, "val", **options, **kwargs)
    default = ForegroundDataset(root, "val", seed=0, **kwargs)
    for i in range(len(validation)):
        np.testing.assert_array_equal(held_out.load_full(i)[0], validation.load_full(i)[0])
    assert any((default.load_full(i)[0] != validation.load_full(i)[0]).any() for i in range(len(validation)))
    assert heldout_options(str(tmp_path / "loose.pth"), seed=2)["seed"] == 2
