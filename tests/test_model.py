"""U2NET / U2NETP: shapes, value ranges, parameter counts, and weight-for-weight equality with
the original U-2-Net architecture (restated literally in tests/reference_u2net.py)."""
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # reference_u2net.py lives beside this file
import reference_u2net as reference  # noqa: E402
from model import U2NET, U2NETP, build_model  # noqa: E402

REFERENCE = {"u2net": reference.U2NET, "u2netp": reference.U2NETP}
OURS = {"u2net": U2NET, "u2netp": U2NETP}
HEADS = ("side1", "side2", "side3", "side4", "side5", "side6", "outconv")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: small convolutions, one thread


def randomise(model, seed):
    """Fixed-seed random weights and BatchNorm statistics that are far from identity.

    gamma/beta are drawn at random, the running statistics are measured on a random batch (so
    activations keep a useful scale through all the depth) and then perturbed at random.
    Returns the model in eval mode.
    """
    torch.manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
        for bn in norms:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.2)
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average: one batch sets the statistics
        model.train()
        model(torch.randn(2, model.stage1.rebnconvin.conv_s1.in_channels, 64, 64))
        for bn in norms:
            bn.momentum = 0.1
            bn.running_mean.add_(0.1 * torch.randn_like(bn.running_mean))
            bn.running_var.mul_(torch.empty_like(bn.running_var).uniform_(0.7, 1.4))
    return model.eval()


def run_with_heads(model, x):
    """Forward in no_grad; returns (7 outputs, raw outputs of side1..side6 and outconv)."""
    raw = {}
    hooks = [getattr(model, name).register_forward_hook(
        lambda module, inputs, output, name=name: raw.__setitem__(name, output.clone())) for name in HEADS]
    try:
        with torch.no_grad():
            outputs = model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return outputs, raw


def assert_same_function(a, b, x):
    """a and b (eval mode) give the same 7 maps and the same pre-sigmoid head outputs on x."""
    out_a, raw_a = run_with_heads(a, x)
    out_b, raw_b = run_with_heads(b, x)
    assert len(out_a) == len(out_b) == 7
    for i, (pa, pb) in enumerate(zip(out_a, out_b)):
        torch.testing.assert_close(pa, pb, atol=1e-5, rtol=0, msg=lambda m: f"output d{i}: {m}")
    for name in HEADS:
        torch.testing.assert_close(raw_a[name], raw_b[name], atol=1e-5, rtol=1e-5,
                                   msg=lambda m: f"logits of {name}: {m}")
    # The comparison means something only if the maps are not flat.
    assert out_a[0].std() > 1e-3, "fused output is nearly constant; randomise() lost the signal"


# --- shapes and ranges ---------------------------------------------------------------------

@pytest.mark.parametrize("batch,height,width", [(1, 320, 320), (1, 333, 250), (2, 33, 17)])
def test_u2netp_output_shapes_and_range(batch, height, width):
    torch.manual_seed(0)
    model = U2NETP().eval()
    with torch.no_grad():
        outputs = model(torch.randn(batch, 3, height, width))
    assert isinstance(outputs, tuple) and len(outputs) == 7
    for d in outputs:
        assert d.shape == (batch, 1, height, width)
        assert d.dtype == torch.float32
        assert torch.isfinite(d).all()
        assert d.min() >= 0 and d.max() <= 1


def test_u2net_output_shapes_and_range_odd_size():
    torch.manual_seed(0)
    model = U2NET().eval()
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 75, 61))
    assert len(outputs) == 7
    for d in outputs:
        assert d.shape == (1, 1, 75, 61)
        assert d.min() >= 0 and d.max() <= 1


@pytest.mark.parametrize("arch,count", [("u2net", 44_009_869), ("u2netp", 1_131_181)])
def test_parameter_count(arch, count):
    model = build_model(arch)
    assert sum(p.numel() for p in model.parameters()) == count
    assert sum(p.numel() for p in REFERENCE[arch]().parameters()) == count


# --- same network as the original ----------------------------------------------------------

@pytest.mark.parametrize("arch,in_ch,out_ch", [("u2net", 3, 1), ("u2netp", 3, 1), ("u2netp", 4, 2)])
def test_state_dict_keys_and_shapes_match_reference(arch, in_ch, out_ch):
    ours = build_model(arch, in_ch=in_ch, out_ch=out_ch).state_dict()
    theirs = REFERENCE[arch](in_ch, out_ch).state_dict()
    assert set(ours) == set(theirs), (sorted(set(ours) - set(theirs))[:5], sorted(set(theirs) - set(ours))[:5])
    assert list(ours) == list(theirs), "same keys, but in another order than the original"
    wrong = {k: (tuple(ours[k].shape), tuple(theirs[k].shape)) for k in ours if ours[k].shape != theirs[k].shape}
    assert not wrong, f"{len(wrong)} keys of another shape, e.g. {list(wrong.items())[:3]}"


@pytest.mark.parametrize("arch,size", [("u2netp", (67, 45)), ("u2netp", (320, 320)), ("u2net", (96, 80))])
def test_ours_loads_into_reference_with_same_outputs(arch, size):
    ours = randomise(build_model(arch), seed=1)
    theirs = REFERENCE[arch]()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    theirs.eval()
    torch.manual_seed(2)
    assert_same_function(ours, theirs, torch.randn(1, 3, *size))


@pytest.mark.parametrize("arch,size", [("u2netp", (45, 67)), ("u2net", (80, 96))])
def test_reference_loads_into_ours_with_same_outputs(arch, size):
    theirs = randomise(REFERENCE[arch](), seed=3)
    ours = build_model(arch)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    ours.eval()
    torch.manual_seed(4)
    assert_same_function(theirs, ours, torch.randn(2, 3, *size))


# --- logits, gradients, memory format ------------------------------------------------------

def test_forward_logits_are_the_logits_of_forward():
    torch.manual_seed(5)
    model = U2NETP().eval()  # fresh weights: moderate logits, so logit(sigmoid) is well defined
    x = torch.randn(1, 3, 67, 45)
    with torch.no_grad():
        probs = model(x)
        logits = model.forward_logits(x)
    assert isinstance(logits, tuple) and len(logits) == 7
    for p, z in zip(probs, logits):
        assert z.shape == p.shape
        torch.testing.assert_close(torch.sigmoid(z), p, atol=0, rtol=0)
        inside = (p > 1e-4) & (p < 1 - 1e-4)
        assert inside.float().mean() > 0.5
        torch.testing.assert_close(torch.logit(p)[inside], z[inside], atol=1e-3, rtol=1e-3)


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(6)
    model = U2NETP().train()
    x = torch.randn(2, 3, 40, 36)
    target = torch.rand(2, 1, 40, 36)
    loss = sum(F.binary_cross_entropy_with_logits(d, target) for d in model.forward_logits(x))
    loss.backward()
    dead = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"{len(dead)} parameters get no gradient, e.g. {dead[:5]}"


def test_channels_last_gives_the_same_outputs():
    model = randomise(U2NETP(), seed=7)
    x = torch.randn(1, 3, 67, 45)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        got = model(x.contiguous(memory_format=torch.channels_last))
    for e, g in zip(expected, got):
        # Other convolution kernels sum in another order: ~1e-4 after a hundred layers.
        torch.testing.assert_close(g, e, atol=2e-4, rtol=0)


# --- building by name ----------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["u2net", "u2netp"])
def test_build_model_by_name(arch):
    model = build_model(arch)
    assert type(model) is OURS[arch]
    assert model.training  # untrained, as nn.Module builds it
    small = build_model(arch, in_ch=4, out_ch=2)
    assert small.stage1.rebnconvin.conv_s1.in_channels == 4
    assert small.outconv.out_channels == 2


def test_build_model_default_is_u2net():
    assert type(build_model()) is U2NET


@pytest.mark.parametrize("name", ["u2net_lite", "U2NET", "", "resnet18"])
def test_build_model_unknown_name(name):
    with pytest.raises(ValueError) as info:
        build_model(name)
    message = str(info.value)
    assert repr(name) in message
    assert "u2net" in message and "u2netp" in message  # says what is accepted
