"""Training losses for the seven outputs of U^2-Net; each returns named terms plus ``total``.

Both losses take the network's *logits* (``model.forward_logits``) and compute in float32, so
they are safe under autocast (bf16/fp16): the sigmoid and the reductions never run in half
precision, and BCE uses ``binary_cross_entropy_with_logits``.

Terms (every one is logged; ``total`` is what is back-propagated):
- ``fused``: the loss of the fused output d0 against the alpha;
- ``sides``: the sum of the same loss over the six side outputs d1..d6;
- ``unknown``: the L1 of the fused output inside the trimap's unknown band, normalised by the
  band's area (sum |p - g| * u / sum u over the batch; 0 when the batch has no unknown pixel);
- ``total = fused + sides + unknown_loss_weight * unknown``.
"""
import torch
import torch.nn.functional as F

from utils.constants import LOSSES


def _unknown_l1(fused_prob, alpha, unknown):
    """Mean |p - g| over the pixels where ``unknown`` is 1 (0 if there are none)."""
    area = unknown.sum()
    return ((fused_prob - alpha).abs() * unknown).sum() / area.clamp_min(1.0)


def matting_loss(logits, alpha, unknown, kind="l1", unknown_loss_weight=1.0):
    """Loss of the seven outputs of U^2-Net against the ground-truth alpha.

    Parameters
    ----------
    logits : sequence of 7 tensors (B,1,H,W), any float dtype
        ``model.forward_logits(x)``: the fused output d0 first, then d1..d6.
    alpha : float32 (B,1,H,W) in [0,1]
        Ground-truth alpha matte.
    unknown : float32 (B,1,H,W) in {0,1}
        1 inside the trimap's unknown band.
    kind : "l1" | "bce"
        ``l1``: the seed's, mean |sigmoid(d_i) - alpha| for each output, summed.
        ``bce``: the original U-2-Net's, mean binary cross-entropy for each output, summed.
    unknown_loss_weight : float
        Weight of the ``unknown`` term (also added with ``bce``; set 0 for the original loss).

    Returns
    -------
    dict of float32 scalar tensors: ``fused``, ``sides``, ``unknown``, ``total``.

    Example
    -------
    >>> d = [torch.zeros(1, 1, 2, 2)] * 7                  # sigmoid(0) = 0.5 everywhere
    >>> a = torch.tensor([[[[0., 1.], [1., 1.]]]]); u = torch.tensor([[[[1., 0.], [0., 0.]]]])
    >>> {k: round(v.item(), 3) for k, v in matting_loss(d, a, u).items()}
    {'fused': 0.5, 'sides': 3.0, 'unknown': 0.5, 'total': 4.0}
    """
    if kind not in LOSSES:
        raise ValueError(f"loss kind must be one of {LOSSES}, got {kind!r}")
    if len(logits) != 7:
        raise ValueError(f"expected the 7 outputs of U^2-Net, got {len(logits)}")
    if logits[0].shape != alpha.shape or unknown.shape != alpha.shape:
        raise ValueError(f"shapes differ: output {tuple(logits[0].shape)}, alpha {tuple(alpha.shape)}, "
                         f"unknown {tuple(unknown.shape)}")
    alpha, unknown = alpha.float(), unknown.float()
    per_output = []
    for d in logits:
        d = d.float()
        if kind == "l1":
            per_output.append((torch.sigmoid(d) - alpha).abs().mean())
        else:
            per_output.append(F.binary_cross_entropy_with_logits(d, alpha))
    fused, sides = per_output[0], torch.stack(per_output[1:]).sum()
    unknown_term = _unknown_l1(torch.sigmoid(logits[0].float()), alpha, unknown)
    total = fused + sides + unknown_loss_weight * unknown_term
    return {"fused": fused, "sides": sides, "unknown": unknown_term, "total": total}


class MattingLoss(torch.nn.Module):
    """``matting_loss`` with its settings bound: ``criterion(logits, alpha, unknown) -> dict``."""

    def __init__(self, kind="l1", unknown_loss_weight=1.0):
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"loss kind must be one of {LOSSES}, got {kind!r}")
        self.kind, self.unknown_loss_weight = kind, float(unknown_loss_weight)

    def forward(self, logits, alpha, unknown):
        return matting_loss(logits, alpha, unknown, self.kind, self.unknown_loss_weight)

    def extra_repr(self):
        return f"kind={self.kind!r}, unknown_loss_weight={self.unknown_loss_weight}"
