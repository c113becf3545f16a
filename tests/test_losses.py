"""Losses against hand computations; safe under autocast; lr schedules."""
import math

import pytest
import torch

from utils.training.losses import MattingLoss, matting_loss
from utils.training.lr import lr_factor


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def _case():
    """Two 1x2 images; output i has the constant logit i / 4 (d0 = 0, d1 = 0.25, ...)."""
    alpha = torch.tensor([[[[0.0, 1.0]]], [[[0.5, 0.25]]]])             # (2,1,1,2)
    unknown = torch.tensor([[[[0.0, 1.0]]], [[[1.0, 0.0]]]])
    logits = [torch.full((2, 1, 1, 2), i / 4) for i in range(7)]
    return logits, alpha, unknown


def test_l1_by_hand():
    logits, alpha, unknown = _case()
    terms = matting_loss(logits, alpha, unknown, "l1", unknown_loss_weight=2.0)
    a = [0.0, 1.0, 0.5, 0.25]
    per_output = [sum(abs(_sigmoid(i / 4) - g) for g in a) / 4 for i in range(7)]
    # unknown band: pixel (0, 1) with alpha 1 and pixel (1, 0) with alpha 0.5; fused p = 0.5
    unknown_l1 = (abs(0.5 - 1.0) + abs(0.5 - 0.5)) / 2
    assert terms["fused"].item() == pytest.approx(per_output[0], abs=1e-6)
    assert terms["sides"].item() == pytest.approx(sum(per_output[1:]), abs=1e-6)
    assert terms["unknown"].item() == pytest.approx(unknown_l1, abs=1e-6)
    assert terms["total"].item() == pytest.approx(sum(per_output) + 2.0 * unknown_l1, abs=1e-6)


def test_bce_by_hand():
    logits, alpha, unknown = _case()
    terms = matting_loss(logits, alpha, unknown, "bce", unknown_loss_weight=0.0)
    a = [0.0, 1.0, 0.5, 0.25]

    def bce(p, g):
        return -(g * math.log(p) + (1 - g) * math.log(1 - p))

    per_output = [sum(bce(_sigmoid(i / 4), g) for g in a) / 4 for i in range(7)]
    assert terms["fused"].item() == pytest.approx(per_output[0], abs=1e-6)
    assert terms["sides"].item() == pytest.approx(sum(per_output[1:]), abs=1e-5)
    assert terms["total"].item() == pytest.approx(sum(per_output), abs=1e-5)
    # the original U-2-Net loss: BCELoss on the sigmoid maps, summed over the 7 outputs
    original = sum(torch.nn.functional.binary_cross_entropy(torch.sigmoid(d), alpha) for d in logits)
    assert terms["total"].item() == pytest.approx(original.item(), abs=1e-5)


def test_empty_unknown_band_is_zero():
    logits, alpha, _ = _case()
    terms = matting_loss(logits, alpha, torch.zeros_like(alpha))
    assert terms["unknown"].item() == 0.0
    assert terms["total"].item() == pytest.approx((terms["fused"] + terms["sides"]).item())


def test_safe_under_autocast_and_gradients_flow():
    torch.manual_seed(0)
    logits = [(torch.randn(2, 1, 8, 8) * 30).requires_grad_() for _ in range(7)]  # saturated logits
    alpha = torch.rand(2, 1, 8, 8)
    unknown = (alpha > 0.5).float()
    for kind in ("l1", "bce"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            terms = MattingLoss(kind)([d.to(torch.bfloat16) for d in logits], alpha, unknown)
        assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in terms.values())
        terms["total"].backward()
        assert all(torch.isfinite(d.grad).all() for d in logits)


def test_bad_inputs_are_named():
    logits, alpha, unknown = _case()
    with pytest.raises(ValueError, match="7 outputs"):
        matting_loss(logits[:6], alpha, unknown)
    with pytest.raises(ValueError, match="shapes differ"):
        matting_loss(logits, alpha[:, :, :, :1], unknown)
    with pytest.raises(ValueError, match="loss kind"):
        MattingLoss("l2")


def test_lr_schedules():
    assert [lr_factor(e, "constant") for e in (0, 50)] == [1.0, 1.0]
    # seed: the base lr while epoch <= 11 * update_ratio_epoch (the seed's test), then x0.975 per epoch
    assert [lr_factor(e, "seed", update_ratio_epoch=2) for e in range(23)] == [1.0] * 23
    assert lr_factor(23, "seed", update_ratio_epoch=2) == pytest.approx(0.975)
    assert lr_factor(26, "seed", update_ratio_epoch=2) == pytest.approx(0.975 ** 4)
    assert lr_factor(0, "cosine", epoch_num=4) == 1.0
    assert lr_factor(2, "cosine", epoch_num=4) == pytest.approx(0.5)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step()` before")
def test_extending_a_cosine_run_goes_on_from_its_last_lr():
    """A cosine run of 4 epochs stopped after 3, resumed with epoch_num=12: the lr goes on down
    from the last epoch's (0.5), never up (recomputing the curve for 12 epochs gave 0.85 at
    epoch 3), and nears 0 at the new end; the checkpointed state restores the curve."""
    from types import SimpleNamespace

    from utils.training.lr import build_scheduler, extend_schedule
    net = torch.nn.Linear(1, 1)
    optimizer = torch.optim.Adam(net.parameters(), lr=1.0)
    scheduler = build_scheduler(optimizer, SimpleNamespace(lr_schedule="cosine", epoch_num=4))
    lrs = []
    for _ in range(3):
        lrs.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    saved = (optimizer.state_dict(), scheduler.state_dict())
    optimizer = torch.optim.Adam(net.parameters(), lr=1.0)
    scheduler = build_scheduler(optimizer, SimpleNamespace(lr_schedule="cosine", epoch_num=12))
    optimizer.load_state_dict(saved[0])
    scheduler.load_state_dict(saved[1])
    assert "extended from epoch_num 4 to 12" in extend_schedule(scheduler, 12)
    for _ in range(3, 12):
        lrs.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    assert lrs[:3] == pytest.approx([1.0, 0.5 + 0.5 ** 1.5, 0.5])
    assert all(b < a for a, b in zip(lrs[2:], lrs[3:])), lrs  # down all the way, no jump
    assert lrs[3] == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi / 10)))
    assert 0 < lrs[-1] < 0.02
    # the state_dict holds the extended curve: a second resume at the same epoch_num keeps it
    again = build_scheduler(torch.optim.Adam(net.parameters(), lr=1.0), SimpleNamespace(lr_schedule="cosine", epoch_num=12))
    again.load_state_dict(scheduler.state_dict())
    assert extend_schedule(again, 12) is None and again.lr_lambdas[0](5) == pytest.approx(lrs[5])
