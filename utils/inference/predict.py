"""The PyTorch network made ready for inference (``prepare_model``), the precision policy
(``check_precision``) and one batch through it (``run_network``). Callers reach it through the
inference core (``utils.inference.core.Matter``), which holds a prepared copy.

Resize policy (``resize="square"``, the default): every photo is resized to ``size x size``
(aspect ratio not kept), as the original U-2-Net test script does (its released weights were
trained on such squashed 320x320 images). A fixed input shape batches photos of any sizes
together and costs the same for every photo (U2NET: 117 GFLOP at 320). ``resize="short_side"``
instead scales the short side to ``size`` and keeps the aspect ratio, which is the scale this
project's training transforms show the network (short side 320, then a 288 crop); it costs
``long/short`` times more (1.33x for a 3:4 photo) and only photos of the same shape batch
together. Shrinking uses area interpolation, enlarging bilinear (utils/inference/preprocess.py).
The network's fused output is returned as it is: never min-max normalised.

Speed: ``prepare_model`` folds each BatchNorm into its convolution and, on CPUs, runs each
convolution + ReLU as one fused oneDNN call on channels-last activations (about 7 % faster and
one activation tensor smaller than the plain model; outputs equal the plain model's to ~1e-7).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from model.blocks import REBNCONV
from utils.constants import PRECISIONS
from utils.device import cpu_bf16_native, cuda_bf16_native

from .onnx_model import OnnxModel
from .preprocess import alpha_to_size, network_input_size, preprocess  # noqa: F401  (re-exported)

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class FusedConvReLU(nn.Module):
    """REBNCONV for inference: conv with the BatchNorm folded in, then ReLU; one oneDNN call
    (``mkldnn::_convolution_pointwise``) on CPUs where it exists. Changes ``block``'s conv
    weight in place (the block is for replacing)."""

    def __init__(self, block, fused_op):
        super().__init__()
        conv, bn = block.conv_s1, block.bn_s1
        # BatchNorm folded into the conv's own weight, in place (``block`` is being replaced), then
        # laid out channels-last like the activations, or each fused call copies it (~4 % slower).
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        weight = conv.weight.detach().mul_(scale.reshape(-1, 1, 1, 1))
        self.weight = nn.Parameter(weight.contiguous(memory_format=torch.channels_last), requires_grad=False)
        self.bias = nn.Parameter(((conv.bias - bn.running_mean) * scale + bn.bias).detach(), requires_grad=False)
        self.padding, self.dilation = list(conv.padding), list(conv.dilation)
        self.fused_op = fused_op

    def forward(self, x):
        if self.fused_op and x.device.type == "cpu":
            return torch.ops.mkldnn._convolution_pointwise(
                x, self.weight, self.bias, self.padding, [1, 1], self.dilation, 1, "relu", [], "")
        return F.relu(F.conv2d(x, self.weight, self.bias, 1, self.padding, self.dilation), inplace=True)


def _fused_op_available():
    try:
        x = torch.zeros(1, 1, 4, 4)
        torch.ops.mkldnn._convolution_pointwise(x, torch.zeros(1, 1, 3, 3), None, [1, 1], [1, 1], [1, 1], 1,
                                                "relu", [], "")
        return True
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


@torch.no_grad()
def prepare_model(model, device="cpu", precision="fp32"):
    """Ready ``model`` (U2NET/U2NETP) for inference, in place, and return it.

    eval mode, no gradients; every conv-BatchNorm-ReLU block folded into one ``FusedConvReLU``
    (BatchNorm running statistics used); channels-last; moved to ``device``; weights cast to
    bf16/fp16 for those precisions. Afterwards the model is for inference only (its
    state_dict has no BatchNorm entries). Other modules are kept as they are.
    """
    device = torch.device(device)
    fused_op = (device.type == "cpu" and _fused_op_available()
                and (precision == "fp32" or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())))  # oneDNN's own bf16 check
    names = [name for name, module in model.named_modules() if isinstance(module, REBNCONV)]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, FusedConvReLU(getattr(parent, child), fused_op))
    for module in model.modules():  # also when re-preparing a prepared model for another precision
        if isinstance(module, FusedConvReLU):
            module.fused_op = fused_op
    model.eval().requires_grad_(False)
    dtype = _DTYPES[precision] or torch.float32
    model.to(device=device, dtype=dtype, memory_format=torch.channels_last)
    model._prepared_for = (str(device), precision)
    return model


def check_precision(device, precision):
    """Raise ValueError for a precision the device cannot run; returns a warning string or None."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if device.type == "cpu":
        if precision == "fp16":
            raise ValueError("fp16 needs a CUDA device; on a CPU use --precision bf16 (or fp32)")
        if precision == "bf16" and not cpu_bf16_native():
            return ("this CPU has no native bf16 (avx512_bf16 or amx): bf16 would be emulated, "
                    "some 15x slower than fp32")
    elif device.type == "cuda" and precision == "bf16" and not cuda_bf16_native(device):
        raise ValueError(f"{device} has no native bf16 (it needs compute capability 8.0, Ampere, or newer; "
                         f"older GPUs only emulate it, slowly): use --precision fp16 or fp32")
    return None


@torch.inference_mode()
def run_network(model, batch):
    """batch: float32 (B,3,h,w) tensor on the device of ``model`` (made by ``prepare_model``)
    -> fused alpha, float32 (B,h,w) in [0,1] on the CPU. The input is cast to the model's
    precision; the final sigmoid is taken in float32. ``model`` may be an ``OnnxModel`` (an
    exported graph in onnxruntime, on the device it was loaded for): same input, same output."""
    if isinstance(model, OnnxModel):
        return torch.from_numpy(model(batch.cpu().numpy()))
    dtype = next(model.parameters()).dtype
    batch = batch.to(dtype=dtype, memory_format=torch.channels_last)
    return torch.sigmoid(model.forward_logits(batch)[0].float())[:, 0].cpu()
