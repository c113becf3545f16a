"""One inference function for apply.py, test_stage2.py and validation, so all three agree.

Resize policy: every image is resized to ``size x size`` (aspect ratio not kept), as the
original U-2-Net test script does; fixed-size inputs batch images of any sizes together, and the
fused alpha is resized back to each image's own resolution.
"""
import numpy as np
import cv2
import torch

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def preprocess(image, size):
    """uint8 RGB (H,W,3) -> float32 (3,size,size), /255 then ImageNet-normalised."""
    resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if min(image.shape[:2]) > size else cv2.INTER_LINEAR)
    x = (resized.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return x.transpose(2, 0, 1)


@torch.inference_mode()
def predict_alphas(model, images, size=320, device="cpu", precision="fp32", batch_size=4):
    """Alpha mattes for ``images`` (list of uint8 RGB (H,W,3)) -> list of float32 (H,W) in [0,1].

    The fused output of the network, resized to each image's resolution; never min-max
    normalised.
    """
    device = torch.device(device)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    alphas = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        x = torch.from_numpy(np.stack([preprocess(im, size) for im in chunk])).to(device)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            fused = model(x)[0]
        fused = fused.float().clamp_(0, 1).cpu().numpy()[:, 0]
        for alpha, image in zip(fused, chunk):
            h, w = image.shape[:2]
            alphas.append(cv2.resize(alpha, (w, h), interpolation=cv2.INTER_LINEAR))
    return alphas
