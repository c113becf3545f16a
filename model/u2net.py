"""U^2-Net (``U2NET``, 44.0 M parameters) and its small variant (``U2NETP``, 1.13 M).

Same modules, names and parameter shapes as the original U-2-Net code (Qin et al. 2020):
six encoder stages, five decoder stages, six 3x3 side outputs ``side1`` .. ``side6`` and a 1x1
fusion ``outconv``. ``forward`` returns the seven sigmoid maps, fused first, as the original;
``forward_logits`` returns them before the sigmoid, for losses that must be safe under autocast.
"""
import torch
import torch.nn as nn

from utils.constants import ARCHITECTURES

from .blocks import RSU, RSU4F, upsample_like

# Per stage: (block height, in, mid, out); height 0 means RSU-4F.
U2NET_STAGES = {
    "stage1": (7, None, 32, 64), "stage2": (6, 64, 32, 128), "stage3": (5, 128, 64, 256),
    "stage4": (4, 256, 128, 512), "stage5": (0, 512, 256, 512), "stage6": (0, 512, 256, 512),
    "stage5d": (0, 1024, 256, 512), "stage4d": (4, 1024, 128, 256), "stage3d": (5, 512, 64, 128),
    "stage2d": (6, 256, 32, 64), "stage1d": (7, 128, 16, 64),
}
U2NETP_STAGES = {
    "stage1": (7, None, 16, 64), "stage2": (6, 64, 16, 64), "stage3": (5, 64, 16, 64),
    "stage4": (4, 64, 16, 64), "stage5": (0, 64, 16, 64), "stage6": (0, 64, 16, 64),
    "stage5d": (0, 128, 16, 64), "stage4d": (4, 128, 16, 64), "stage3d": (5, 128, 16, 64),
    "stage2d": (6, 128, 16, 64), "stage1d": (7, 128, 16, 64),
}


class _U2NetBase(nn.Module):
    """Shared wiring of U2NET and U2NETP; subclasses give the stage table."""

    stages = {}

    def __init__(self, in_ch=3, out_ch=1):
        super().__init__()
        for name, (height, cin, mid, cout) in self.stages.items():
            cin = in_ch if cin is None else cin
            block = RSU4F(cin, mid, cout) if height == 0 else RSU(height, cin, mid, cout)
            setattr(self, name, block)
            if name[-1] != "d" and name != "stage6":
                # pool12 after stage1, ..., pool56 after stage5, as the original names them.
                level = int(name[-1])
                setattr(self, f"pool{level}{level + 1}", nn.MaxPool2d(2, stride=2, ceil_mode=True))
        side_channels = [self.stages[s][3] for s in ("stage1d", "stage2d", "stage3d", "stage4d", "stage5d", "stage6")]
        for i, ch in enumerate(side_channels, start=1):
            setattr(self, f"side{i}", nn.Conv2d(ch, out_ch, 3, padding=1))
        self.outconv = nn.Conv2d(6 * out_ch, out_ch, 1)

    def forward_logits(self, x):
        """x: float (B,in_ch,H,W) -> tuple of 7 logit maps (B,out_ch,H,W): fused d0, then d1..d6."""
        # Each encoder output is dropped once its decoder stage has used it and each side output
        # is taken as soon as its stage is decoded: same result, less memory in inference
        # (U2NET at 320: 126 MB of live activations at the peak instead of 194 MB).
        encoded = []
        hx = x
        for level in range(1, 6):
            hx = getattr(self, f"stage{level}")(hx)
            encoded.append(hx)
            hx = getattr(self, f"pool{level}{level + 1}")(hx)
        hx = self.stage6(hx)
        sides = [self.side6(hx)]  # deepest first: d6, d5, ..., d1
        for level in range(5, 0, -1):
            skip = encoded.pop()
            hx = torch.cat((upsample_like(hx, skip), skip), 1)
            del skip
            hx = getattr(self, f"stage{level}d")(hx)
            sides.append(getattr(self, f"side{level}")(hx))
        d1 = sides.pop()
        sides = [d1] + [upsample_like(side, d1) for side in reversed(sides)]
        d0 = self.outconv(torch.cat(sides, 1))
        return (d0, *sides)

    def forward(self, x):
        """x: float (B,in_ch,H,W), ImageNet-normalised -> 7 maps in [0,1] (B,out_ch,H,W), fused first."""
        return tuple(torch.sigmoid(d) for d in self.forward_logits(x))


class U2NET(_U2NetBase):
    """Full U^2-Net, 44.0 M parameters (176.3 MB of fp32 weights)."""

    stages = U2NET_STAGES


class U2NETP(_U2NetBase):
    """Small U^2-Net, 1.13 M parameters (4.7 MB)."""

    stages = U2NETP_STAGES


NETWORKS = dict(zip(ARCHITECTURES, (U2NET, U2NETP)))  # names declared in utils/constants.py


def build_model(arch="u2net", in_ch=3, out_ch=1):
    """Build an untrained network by name: ``"u2net"`` or ``"u2netp"``."""
    if arch not in NETWORKS:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {list(ARCHITECTURES)}")
    return NETWORKS[arch](in_ch, out_ch)
