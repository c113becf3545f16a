"""utils/inference/predict.py (through the core's predict_alphas): against the plain network,
preparation, policies, precisions."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model import build_model
from utils.constants import IMAGENET_MEAN, IMAGENET_STD
from utils.device import cpu_bf16_native
from utils.inference.core import predict_alphas
from utils.inference.predict import (FusedConvReLU, alpha_to_size, check_precision,
                                     network_input_size, prepare_model, preprocess, run_network)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: OpenMP barriers would dominate on a busy machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = build_model("u2netp").eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding them is really tested
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model


def image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def reference_alpha(model, img, size):
    """The plain model's fused output (sigmoid map), from a straightforward preprocessing."""
    small = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
    small = F.interpolate(small, size=(size, size), mode="area" if min(img.shape[:2]) > size else "bilinear")
    x = (small - torch.from_numpy(IMAGENET_MEAN)[:, None, None]) / torch.from_numpy(IMAGENET_STD)[:, None, None]
    with torch.no_grad():
        fused = model(x)[0][0, 0].numpy()
    return alpha_to_size(fused, *img.shape[:2])


def test_predict_alphas_is_the_plain_networks_fused_output_at_full_resolution(net):
    images = [image(96, 64), image(40, 50, 1), image(15, 20, 2)]
    alphas = predict_alphas(net, images, size=64, batch_size=4)
    for img, alpha in zip(images, alphas):
        assert alpha.dtype == np.float32 and alpha.shape == img.shape[:2]
        assert 0.0 <= alpha.min() and alpha.max() <= 1.0
        ref = reference_alpha(net, img, 64)
        assert np.abs(alpha - ref).max() < 0.02  # same network, same policy (resampling differs a little)
    # never min-max normalised: the fused output's own range is kept
    assert alphas[0].max() - alphas[0].min() < 0.99


def test_prepared_network_equals_the_plain_one_and_leaves_it_unchanged(net):
    keys = list(net.state_dict())
    x = torch.from_numpy(preprocess(image(64, 64), 64))[None]
    with torch.no_grad():
        plain = net(x)[0][:, 0]
    fast = prepare_model(copy.deepcopy(net))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert sum(isinstance(m, FusedConvReLU) for m in fast.modules()) > 0
    torch.testing.assert_close(run_network(fast, x), plain, atol=1e-5, rtol=0)
    predict_alphas(net, [image(30, 30)], size=64)
    assert list(net.state_dict()) == keys and not hasattr(net, "_prepared_for")


def test_batches_and_repeated_calls_agree(net):
    images = [image(50, 40, i) for i in range(3)]
    together = predict_alphas(net, images, size=64, batch_size=3)
    alone = [predict_alphas(net, [img], size=64, batch_size=1)[0] for img in images]
    for a, b in zip(together, alone):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # bit-identical at the same batch size (oneDNN may block a batch of 3 differently: ~1e-7)
    np.testing.assert_array_equal(predict_alphas(net, images[:1], size=64)[0], alone[0])


def test_changed_weights_are_seen(net):
    model = copy.deepcopy(net)
    img = image(40, 40)
    before = predict_alphas(model, [img], size=64)[0]
    with torch.no_grad():
        model.outconv.bias += 2.0  # in place, as an optimizer step
    after = predict_alphas(model, [img], size=64)[0]
    assert after.mean() > before.mean() + 0.1
    np.testing.assert_allclose(after, reference_alpha(model, img, 64), atol=0.02)


def test_resize_policies():
    assert network_input_size(1440, 1080, 320, "square") == (320, 320)
    assert network_input_size(1440, 1080, 320, "short_side") == (427, 320)
    assert network_input_size(15, 20, 320, "short_side") == (320, 427)
    assert preprocess(image(1440, 1080), 320, "short_side").shape == (3, 427, 320)
    with pytest.raises(ValueError, match="resize"):
        network_input_size(10, 10, 320, "crop")


def test_short_side_policy_batches_only_equal_shapes(net):
    images = [image(48, 32), image(48, 32, 1), image(32, 48, 2)]
    alphas = predict_alphas(net, images, size=32, resize="short_side", batch_size=4)
    assert [a.shape for a in alphas] == [(48, 32), (48, 32), (32, 48)]


def test_precisions(net):
    with pytest.raises(ValueError, match="fp16"):
        check_precision("cpu", "fp16")
    with pytest.raises(ValueError, match="precision"):
        check_precision("cpu", "int8")
    img = image(32, 32)
    fp32 = predict_alphas(net, [img], size=32)[0]
    if not cpu_bf16_native():  # one policy everywhere: emulated bf16 (~15x slower) is refused
        with pytest.raises(ValueError, match="native bf16"):
            predict_alphas(net, [img], size=32, precision="bf16")
        return
    bf16 = predict_alphas(net, [img], size=32, precision="bf16")[0]
    assert np.abs(bf16 - fp32).mean() < 1.0 / 255


def test_bad_image_arrays_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        preprocess(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        preprocess(np.zeros((10, 10), np.uint8))
