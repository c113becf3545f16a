"""Building blocks of U^2-Net: REBNCONV and the residual U-blocks RSU-L and RSU-4F.

Module and parameter names follow the original U-2-Net code exactly (``rebnconvin``,
``rebnconv1`` ... ``rebnconv1d``, ``conv_s1``/``bn_s1``), so state_dicts move between the two
unchanged. Upsampling is bilinear with ``align_corners=False`` and pooling uses
``ceil_mode=True``, as in the original, so outputs match at any input size.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def upsample_like(src, target):
    """Bilinearly resize ``src`` (B,C,h,w) to the spatial size of ``target`` (B,*,H,W)."""
    return F.interpolate(src, size=target.shape[2:], mode="bilinear", align_corners=False)


class REBNCONV(nn.Module):
    """3x3 convolution (dilated by ``dirate``) -> BatchNorm -> ReLU; keeps the spatial size."""

    def __init__(self, in_ch=3, out_ch=3, dirate=1):
        super().__init__()
        self.conv_s1 = nn.Conv2d(in_ch, out_ch, 3, padding=dirate, dilation=dirate)
        self.bn_s1 = nn.BatchNorm2d(out_ch)
        self.relu_s1 = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu_s1(self.bn_s1(self.conv_s1(x)))


class RSU(nn.Module):
    """Residual U-block of height ``height`` (RSU-7, -6, -5, -4 of the paper).

    Encoder: ``rebnconv1`` .. ``rebnconv{height-1}`` with a 2x max-pool (``pool1`` ..
    ``pool{height-2}``) between them, then the dilated bottom ``rebnconv{height}``; decoder:
    ``rebnconv{height-1}d`` .. ``rebnconv1d``, each fed the upsampled deeper output concatenated
    with the encoder output of the same level. Output = decoder output + ``rebnconvin(x)``.
    """

    def __init__(self, height, in_ch=3, mid_ch=12, out_ch=3):
        super().__init__()
        self.height = height
        self.rebnconvin = REBNCONV(in_ch, out_ch, dirate=1)
        # setattr keeps the original's flat attribute names (rebnconv3, pool3, rebnconv3d, ...).
        for level in range(1, height):
            setattr(self, f"rebnconv{level}", REBNCONV(out_ch if level == 1 else mid_ch, mid_ch))
            if level < height - 1:
                setattr(self, f"pool{level}", nn.MaxPool2d(2, stride=2, ceil_mode=True))
        setattr(self, f"rebnconv{height}", REBNCONV(mid_ch, mid_ch, dirate=2))
        for level in range(height - 1, 0, -1):
            setattr(self, f"rebnconv{level}d", REBNCONV(mid_ch * 2, out_ch if level == 1 else mid_ch))

    def forward(self, x):
        hxin = self.rebnconvin(x)
        encoded = []
        hx = hxin
        for level in range(1, self.height):
            hx = getattr(self, f"rebnconv{level}")(hx)
            encoded.append(hx)
            if level < self.height - 1:
                hx = getattr(self, f"pool{level}")(hx)
        hx = getattr(self, f"rebnconv{self.height}")(hx)
        for level in range(self.height - 1, 0, -1):
            skip = encoded.pop()  # dropped once used: less memory, same result
            if hx.shape[2:] != skip.shape[2:]:
                hx = upsample_like(hx, skip)
            hx = torch.cat((hx, skip), 1)
            del skip
            hx = getattr(self, f"rebnconv{level}d")(hx)
        return hx + hxin


class RSU4F(nn.Module):
    """RSU-4F: a U-block without pooling; dilations 1, 2, 4, 8 keep the resolution."""

    def __init__(self, in_ch=3, mid_ch=12, out_ch=3):
        super().__init__()
        self.rebnconvin = REBNCONV(in_ch, out_ch, dirate=1)
        self.rebnconv1 = REBNCONV(out_ch, mid_ch, dirate=1)
        self.rebnconv2 = REBNCONV(mid_ch, mid_ch, dirate=2)
        self.rebnconv3 = REBNCONV(mid_ch, mid_ch, dirate=4)
        self.rebnconv4 = REBNCONV(mid_ch, mid_ch, dirate=8)
        self.rebnconv3d = REBNCONV(mid_ch * 2, mid_ch, dirate=4)
        self.rebnconv2d = REBNCONV(mid_ch * 2, mid_ch, dirate=2)
        self.rebnconv1d = REBNCONV(mid_ch * 2, out_ch, dirate=1)

    def forward(self, x):
        hxin = self.rebnconvin(x)
        hx1 = self.rebnconv1(hxin)
        hx2 = self.rebnconv2(hx1)
        hx3 = self.rebnconv3(hx2)
        hx4 = self.rebnconv4(hx3)
        hx3d = self.rebnconv3d(torch.cat((hx4, hx3), 1))
        hx2d = self.rebnconv2d(torch.cat((hx3d, hx2), 1))
        hx1d = self.rebnconv1d(torch.cat((hx2d, hx1), 1))
        return hx1d + hxin
