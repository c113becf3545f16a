"""Loading weights from any file people have: plain state_dicts (ours, the original U-2-Net's,
old and new torch formats), DataParallel / torch.compile prefixes, training checkpoints; and a
short, clear CheckpointError naming the file for everything else. All loads are weights_only."""
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # reference_u2net.py lives beside this file
import reference_u2net as reference  # noqa: E402
import model.weights  # noqa: E402
from model import (U2NET, U2NETP, CheckpointError, detect_arch, load_model, load_state_dict_any,  # noqa: E402
                   load_weights, strip_prefixes)

SHORT = 500  # an error about keys summarises them; it never lists hundreds of keys


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: small convolutions, one thread


def random_network(net, seed):
    """Fixed-seed weights with random BatchNorm statistics (so BN is not identity); eval mode."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
    return net.eval()


def outputs(net, x):
    with torch.no_grad():
        return net(x)


def assert_same_outputs(a, b):
    assert len(a) == len(b) == 7
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=0)


def save_bytes(path, data):
    path.write_bytes(data)
    return path


def assert_error_names_file(info, path, *words):
    """The CheckpointError (a ValueError) names the file in its first line, and the words given."""
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert str(path) in message.splitlines()[0], message
    for word in words:
        assert word in message, message
    return message


def load_expecting_checkpoint_error(path, **kwargs):
    """load_model(path) must raise CheckpointError; any other exception is a loader bug."""
    try:
        load_model(path, **kwargs)
    except CheckpointError as err:
        return err
    except Exception as err:  # noqa: BLE001 -- the point is to report what leaked
        pytest.fail(f"BUG in model/weights.py: load_model({path.name!r}) let torch.load's "
                    f"{type(err).__name__}({err}) escape instead of raising CheckpointError naming the file")
    pytest.fail(f"load_model({path.name!r}) loaded a file it should refuse")


@pytest.fixture(scope="module")
def net():
    return random_network(U2NETP(), seed=0)


@pytest.fixture(scope="module")
def x():
    torch.manual_seed(1)
    return torch.randn(1, 3, 45, 67)


@pytest.fixture(scope="module")
def expected(net, x):
    return outputs(net, x)


@pytest.fixture(scope="module")
def weights(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


@pytest.fixture
def weights_file(tmp_path, weights):
    path = tmp_path / "u2netp_weights.pth"
    torch.save(weights, path)
    return path


@pytest.fixture(scope="module")
def u2net_file(tmp_path_factory):
    """One full U2NET weight file (176 MB), as the original u2net.pth release, with its net."""
    big = random_network(U2NET(), seed=2)
    path = tmp_path_factory.mktemp("u2net") / "u2net.pth"
    torch.save(big.state_dict(), path)
    return path, big


# --- files that load -----------------------------------------------------------------------

@pytest.mark.parametrize("as_path", [True, False])
def test_state_dict_round_trip(weights_file, x, expected, as_path):
    loaded = load_model(weights_file if as_path else str(weights_file))
    assert type(loaded) is U2NETP
    assert not loaded.training
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    assert_same_outputs(outputs(loaded, x), expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_load_as_float32(tmp_path, weights, x, expected, dtype):
    """load_model builds the network on the meta device and takes the file's tensors as they
    are: nothing may stay on meta, weights saved in 16 bits come back as float32, and the model
    can still be trained (parameters require grad)."""
    path = tmp_path / "half.pth"
    torch.save({k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}, path)
    loaded = load_model(path)
    tensors = list(loaded.parameters()) + list(loaded.buffers())
    assert not any(t.is_meta for t in tensors)
    assert {t.dtype for t in tensors if t.is_floating_point()} == {torch.float32}
    assert all(p.requires_grad for p in loaded.parameters())
    tolerance = 0.05 if dtype == torch.bfloat16 else 0.01  # the weights were rounded to 16 bits
    for got, want in zip(outputs(loaded, x), expected):
        torch.testing.assert_close(got, want, atol=tolerance, rtol=0)


def test_load_state_dict_any_returns_weights_and_arch(weights_file, weights):
    state_dict, arch = load_state_dict_any(weights_file)
    assert arch == "u2netp"
    assert list(state_dict) == list(weights)
    for key in weights:
        assert torch.equal(state_dict[key], weights[key]), key


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "_orig_mod.module.", "module._orig_mod."])
def test_prefixed_keys(tmp_path, weights, x, expected, prefix):
    path = tmp_path / "prefixed.pth"
    torch.save({prefix + k: v for k, v in weights.items()}, path)
    state_dict, arch = load_state_dict_any(path)
    assert arch == "u2netp" and set(state_dict) == set(weights)
    assert_same_outputs(outputs(load_model(path), x), expected)


def test_dataparallel_state_dict(tmp_path, net, x, expected):
    path = tmp_path / "dp.pth"
    torch.save(nn.DataParallel(net).state_dict(), path)  # keys "module.stage1...."
    assert_same_outputs(outputs(load_model(path), x), expected)


def test_strip_prefixes_leaves_plain_keys_alone():
    value = torch.zeros(1)
    assert list(strip_prefixes({"stage1.a": value, "module._orig_mod.side1.weight": value,
                                "_orig_mod._orig_mod.outconv.bias": value})) == [
        "stage1.a", "side1.weight", "outconv.bias"]


@pytest.mark.parametrize("prefix", ["", "module."])
def test_training_checkpoint(tmp_path, weights, x, expected, prefix):
    trained = U2NETP()
    optimizer = torch.optim.Adam(trained.parameters(), lr=1e-3)
    for p in trained.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()  # the optimizer state holds tensors, ints and floats, as a real one does
    checkpoint = {"model": {prefix + k: v for k, v in weights.items()}, "optimizer": optimizer.state_dict(),
                  "epoch": 3, "settings": {"arch": "u2netp", "batch_size": 4, "e2h": {"schedule": "step"}},
                  "rng": {"torch": torch.get_rng_state()}}
    path = tmp_path / "checkpoint.pth"
    torch.save(checkpoint, path)
    assert_same_outputs(outputs(load_model(path), x), expected)


def test_original_release_from_reference_code_legacy_format(tmp_path, x):
    """A file saved by the original code's network, in the pre-1.6 torch format of its releases."""
    theirs = random_network(reference.U2NETP(), seed=4)
    path = tmp_path / "u2netp_original.pth"
    torch.save(theirs.state_dict(), path, _use_new_zipfile_serialization=False)
    assert_same_outputs(outputs(load_model(path), x), outputs(theirs, x))


def test_u2net_detected_from_weights(u2net_file):
    path, big = u2net_file
    state_dict, arch = load_state_dict_any(path)
    assert arch == "u2net"
    loaded = load_model(path)
    assert type(loaded) is U2NET
    torch.manual_seed(5)
    small = torch.randn(1, 3, 40, 36)
    assert_same_outputs(outputs(loaded, small), outputs(big, small))


def test_arch_given_and_matching(weights_file):
    assert type(load_model(weights_file, arch="u2netp")) is U2NETP


def test_detect_arch():
    assert detect_arch(U2NET().state_dict()) == "u2net"
    assert detect_arch(U2NETP().state_dict()) == "u2netp"
    assert detect_arch({}) is None
    assert detect_arch({"stage1.rebnconv1.conv_s1.weight": torch.zeros(8, 64, 3, 3)}) is None


def test_loader_uses_weights_only(monkeypatch, weights_file):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(model.weights.torch, "load", spy)
    load_model(weights_file)
    assert calls and all(call.get("weights_only") is True for call in calls)


# --- files that must be refused ------------------------------------------------------------

def test_arch_mismatch_u2netp_weights(weights_file):
    with pytest.raises(CheckpointError) as info:
        load_model(weights_file, arch="u2net")
    assert_error_names_file(info, weights_file, "u2netp", "u2net")


def test_arch_mismatch_u2net_weights(u2net_file):
    path, _ = u2net_file
    with pytest.raises(CheckpointError) as info:
        load_model(path, arch="u2netp")
    assert_error_names_file(info, path, "u2netp", "u2net")


def test_unknown_arch(weights_file):
    with pytest.raises(CheckpointError) as info:
        load_model(weights_file, arch="resnet50")
    assert_error_names_file(info, weights_file, "resnet50")


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_file(tmp_path, weights, legacy):
    buffer = io.BytesIO()
    torch.save(weights, buffer, _use_new_zipfile_serialization=not legacy)
    data = buffer.getvalue()
    path = save_bytes(tmp_path / "truncated.pth", data[: len(data) // 2])
    err = load_expecting_checkpoint_error(path)
    assert str(path) in str(err).splitlines()[0]


def test_zero_byte_file(tmp_path):
    path = save_bytes(tmp_path / "empty.pth", b"")
    err = load_expecting_checkpoint_error(path)
    assert str(path) in str(err).splitlines()[0]


def _png_bytes():
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("name,data", [
    ("notes.txt", b"hello world\n"),        # torch.load raises KeyError on this one
    ("dots.txt", b"...\n"),                 # ... and IndexError on this one
    ("settings.json", b'{"arch": "u2netp"}\n'),
    ("photo.png", _png_bytes()),
    ("zip.pth", b"PK\x03\x04 not really a zip"),
])
def test_non_torch_file(tmp_path, name, data):
    path = save_bytes(tmp_path / name, data)
    err = load_expecting_checkpoint_error(path)
    assert str(path) in str(err).splitlines()[0]


def test_missing_file(tmp_path):
    path = tmp_path / "no_such_weights.pth"
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    assert_error_names_file(info, path)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(CheckpointError) as info:
        load_model(tmp_path)
    assert_error_names_file(info, tmp_path)


_MARKER = []


def _side_effect(text):
    _MARKER.append(text)
    return text


class _Booby:
    def __reduce__(self):
        return (_side_effect, ("unpickling ran code",))


def test_pickled_code_is_not_run(tmp_path):
    path = tmp_path / "booby.pth"
    torch.save({"model": _Booby()}, path)
    err = load_expecting_checkpoint_error(path)
    assert str(path) in str(err).splitlines()[0]
    assert not _MARKER, "the loader unpickled arbitrary code: weights_only is not in force"


def test_state_dict_of_another_network(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = assert_error_names_file(info, path, "U2NET")
    assert len(message) < SHORT, message


@pytest.mark.parametrize("content", [torch.zeros(3), {"epoch": 3, "note": "no weights"}, [1, 2, 3]])
def test_file_without_a_state_dict(tmp_path, content):
    path = tmp_path / "other.pth"
    torch.save(content, path)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    assert len(assert_error_names_file(info, path)) < SHORT


def test_one_key_missing(tmp_path, weights):
    key = "stage3d.rebnconv2.bn_s1.running_var"
    path = tmp_path / "missing.pth"
    torch.save({k: v for k, v in weights.items() if k != key}, path)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = assert_error_names_file(info, path, "missing", "1", key)
    assert len(message) < SHORT, message


def test_one_key_extra(tmp_path, weights):
    path = tmp_path / "extra.pth"
    torch.save({**weights, "stage7.rebnconvin.conv_s1.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = assert_error_names_file(info, path, "unexpected", "1", "stage7.rebnconvin.conv_s1.weight")
    assert len(message) < SHORT, message


def test_many_keys_missing_are_summarised(tmp_path, weights):
    dropped = [k for k in weights if k.startswith(("stage5d.", "stage4d."))]
    assert len(dropped) > 50
    path = tmp_path / "many_missing.pth"
    torch.save({k: v for k, v in weights.items() if k not in dropped}, path)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = assert_error_names_file(info, path, "missing", str(len(dropped)))
    assert len(message) < SHORT, message


def test_load_weights_summarises_keys_of_another_shape(u2net_file):
    path, big = u2net_file
    u2net_weights = big.state_dict()
    small = U2NETP()
    expected_shapes = small.state_dict()
    assert set(u2net_weights) == set(expected_shapes)  # same names, other widths
    differing = [k for k in expected_shapes if expected_shapes[k].shape != u2net_weights[k].shape]
    with pytest.raises(CheckpointError) as info:
        load_weights(small, u2net_weights, source=str(path))
    message = assert_error_names_file(info, path, "another shape", str(len(differing)))
    assert "missing" not in message and "unexpected" not in message
    assert len(message) < SHORT, message


def test_load_weights_one_tensor_of_another_shape(weights):
    broken = dict(weights)
    broken["side3.weight"] = torch.zeros(1, 32, 3, 3)
    with pytest.raises(CheckpointError) as info:
        load_weights(U2NETP(), broken, source="broken.pth")
    message = str(info.value)
    assert message.startswith("broken.pth") and "side3.weight" in message and "1" in message
    assert len(message) < SHORT


def test_load_weights_loads_strictly_and_returns_the_model(weights, x, expected):
    fresh = U2NETP()
    assert load_weights(fresh, weights) is fresh
    assert_same_outputs(outputs(fresh.eval(), x), expected)


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)
