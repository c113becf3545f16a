"""Export trained U^2-Net weights for deployment: ONNX (onnxruntime, rembg) or TorchScript.

    python export.py --model results_stage2/<run>/model/best.pth --output u2net_mine.onnx
    python export.py --model best.pth --output u2net_mine.pt --format torchscript
    python export.py --model best.pth --output u2net_mine_fp16.onnx --precision fp16
    python apply.py --model u2net_mine.onnx --input photos/ --output out      # onnxruntime, no PyTorch
    mkdir -p ~/.rembg && cp u2net_mine.onnx ~/.rembg/ && rembg i -m u2net_custom -x '{"model_path": "~/.rembg/u2net_mine.onnx"}' in.jpg out.png

Without ``--model``: the best weights of the newest stage-2 run, else of stage 1. rembg (2.0.86)
takes custom models only from inside its home folder (``~/.rembg`` or ``$REMBG_HOME``).

The graph takes ``input``, float32 (N,3,H,W): RGB scaled to [0,1], then ImageNet mean/std
(``utils.constants``); its first output, ``alpha``, is the fused map after the sigmoid, float32
(N,1,H,W) in [0,1]; ``--all-outputs`` adds the six side maps ``d1`` .. ``d6``. N, H and W are
dynamic unless ``--static`` (then 1x3xSIZExSIZE only, for runtimes that want fixed shapes).
``--precision fp16`` stores and computes in fp16 inside the graph; input and output stay float32.
Metadata (ONNX ``metadata_props``, TorchScript extra file ``metadata.json``): arch, input_size,
dynamic, precision, mean, std, outputs, source.

Parity, always: the written file is run (onnxruntime / ``torch.jit.load``) at the export size
and at a second size with batch 2, against the PyTorch model in fp32; the largest absolute
difference is printed, and above ``--tolerance`` (1e-4 for fp32, 1e-2 for fp16) the export
fails and leaves no file (it is written to a temporary name and renamed only once it passed).
"""
import argparse
import copy
import json
import os
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn as nn

from model import CheckpointError, load_model
from utils.constants import IMAGENET_MEAN, IMAGENET_STD
from utils.inference.onnx_model import OnnxModel, OnnxModelError
from utils.runs import TRAINED, choose_weights, network_size

FORMATS = ("onnx", "torchscript")
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}
MIN_SIZE = 64  # traced below this, an inner level of a U-block is 1 px and the graph loses an upsample
SIDE_NAMES = ("d1", "d2", "d3", "d4", "d5", "d6")


class ExportError(ValueError):
    """An export that failed its parity check or cannot be made; the message says why."""


class AlphaHead(nn.Module):
    """The network as deployed: float32 input -> fused alpha after the sigmoid (and the side
    maps with ``all_outputs``), computed in ``dtype`` inside, returned in float32."""

    def __init__(self, net, dtype=torch.float32, all_outputs=False):
        super().__init__()
        self.net, self.dtype, self.all_outputs = net, dtype, all_outputs

    def forward(self, x):
        maps = self.net.forward_logits(x.to(self.dtype))
        maps = maps if self.all_outputs else maps[:1]
        return tuple(torch.sigmoid(m).float() for m in maps)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", metavar="FILE", help="weights (default: newest results_stage2/1 best.pth)")
    p.add_argument("--output", required=True, metavar="FILE", help="the file to write (.onnx, .pt)")
    p.add_argument("--format", choices=FORMATS, help="default: torchscript for .pt/.ts, else onnx")
    p.add_argument("--size", type=int, default=None,
                   help="export and parity size, written into the metadata as the size apply.py runs the "
                        "file at (default: the image_size of the weights' training run, else 320)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    p.add_argument("--precision", choices=tuple(TOLERANCE), default="fp32")
    p.add_argument("--all-outputs", action="store_true", help="also the side maps d1..d6")
    p.add_argument("--static", action="store_true", help="fixed 1x3xSIZExSIZE input")
    p.add_argument("--tolerance", type=float, help="largest allowed |exported - PyTorch| (default: 1e-4 fp32)")
    args = p.parse_args(argv)
    if args.format is None:
        args.format = "torchscript" if args.output.lower().endswith((".pt", ".ts", ".torchscript")) else "onnx"
    return args


def metadata(arch, size, precision, static, all_outputs, source):
    """The file's metadata, every value a string (ONNX metadata_props hold strings)."""
    return {"arch": arch, "input_size": str(size), "dynamic": str(not static).lower(), "precision": precision,
            "mean": json.dumps([round(float(v), 6) for v in IMAGENET_MEAN]),
            "std": json.dumps([round(float(v), 6) for v in IMAGENET_STD]),
            "outputs": json.dumps(["alpha", *SIDE_NAMES] if all_outputs else ["alpha"]),
            "source": os.path.basename(source), "producer": "u2net_e2h export.py"}


def write_onnx(head, path, size, opset, static, meta):
    """Trace ``head`` at 1x3xSIZExSIZE into ``path`` and add ``meta`` to its metadata_props."""
    import onnx

    outputs = json.loads(meta["outputs"])
    axes = None if static else {name: {0: "batch", 2: "height", 3: "width"} for name in ["input", *outputs]}
    # The TorchScript-based exporter (dynamo=False), not torch 2.14's default torch.export one: it
    # needs no onnxscript and exports U2NETP at 64 px in 3.4 s against 23 s; both graphs, with
    # dynamic N,H,W, matched PyTorch to 6e-8 at 64x64, 96x80 and 57x71 (U2NET: 15 s, 6e-8 too).
    # RSU's test 'upsample only when the sizes differ' is traced as a constant (TracerWarning);
    # traced at >= MIN_SIZE no inner level is 1 px, so every upsample is in the graph, and an
    # upsample to the same size is exact: the graph holds at every size.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(head, (torch.zeros(1, 3, size, size),), path, dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=outputs, dynamic_axes=axes, do_constant_folding=True)
    graph = onnx.load(path)
    for key, value in meta.items():
        graph.metadata_props.add(key=key, value=value)
    graph.doc_string = "U^2-Net human matting: ImageNet-normalised RGB (N,3,H,W) -> alpha (N,1,H,W) in [0,1]"
    onnx.save(graph, path)


def write_torchscript(head, path, size, meta):
    with warnings.catch_warnings():  # TracerWarning as above; torch.jit's FutureWarning
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(head, torch.zeros(1, 3, size, size), check_trace=False)
        torch.jit.save(traced, path, _extra_files={"metadata.json": json.dumps(meta)})


def run_exported(path, fmt, x):
    """The exported file's first output for the float32 array ``x`` (B,3,H,W)."""
    if fmt == "onnx":
        net = OnnxModel(path, device="cpu")
        return net.session.run([net.output_name], {net.input_name: x})[0]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still works in 2.14
        return torch.jit.load(path, map_location="cpu")(torch.from_numpy(x))[0].numpy()


def parity(path, fmt, reference, shapes):
    """Largest |exported - PyTorch| of the fused alpha over inputs of ``shapes``, with the
    shape each difference was found at; inputs are random photos, ImageNet-normalised."""
    rng, diffs = np.random.default_rng(0), []
    for shape in shapes:
        x = ((rng.random(shape, dtype=np.float32) - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None])
        with torch.no_grad():
            expected = reference(torch.from_numpy(x))[0].numpy()
        got = run_exported(path, fmt, x)
        diffs.append((float(np.abs(got.astype(np.float32) - expected).max()), shape))
    return diffs


def export(net, output, fmt="onnx", size=320, opset=17, precision="fp32", all_outputs=False, static=False,
           tolerance=None, source="weights"):
    """Write ``net`` (U2NET/U2NETP, eval mode) to ``output`` and check it; returns the parity
    differences [(max |diff|, shape), ...]. Raises ExportError (and leaves no file) when they
    exceed ``tolerance``."""
    if size < MIN_SIZE:
        raise ExportError(f"--size must be >= {MIN_SIZE}, got {size}")
    tolerance = TOLERANCE[precision] if tolerance is None else tolerance
    arch = type(net).__name__.lower()
    meta = metadata(arch, size, precision, static, all_outputs, source)
    dtype = torch.float16 if precision == "fp16" else torch.float32
    reference = AlphaHead(net).eval()
    deployed = AlphaHead(net if dtype == torch.float32 else copy.deepcopy(net).to(dtype), dtype, all_outputs).eval()
    folder, base = os.path.split(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{base}.{os.getpid()}.tmp")
    shapes = [(1, 3, size, size)] + ([] if static else [(2, 3, size * 3 // 4 + 1, size + 17)])
    try:
        if fmt == "onnx":
            write_onnx(deployed, tmp, size, opset, static, meta)
        else:
            write_torchscript(deployed, tmp, size, meta)
        diffs = parity(tmp, fmt, reference, shapes)
        for diff, shape in diffs:
            print(f"parity {'x'.join(map(str, shape))}: max |{fmt} - pytorch| = {diff:.3g}")
        worst = max(d for d, _ in diffs)
        if not worst <= tolerance:  # also catches NaN
            raise ExportError(f"parity check failed: the exported {fmt} differs from PyTorch by {worst:.3g} "
                              f"(> {tolerance:g}); no file written")
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return diffs


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    weights = choose_weights(args.model, newest_of=TRAINED)
    try:
        if weights is None:
            raise ExportError("no weights: pass --model FILE, or train one (python train_stage2.py)")
        net = load_model(weights)
        size, _ = network_size(weights, args.size)  # the size the weights were trained at, else 320
        size = size if args.size else max(size, MIN_SIZE)
        diffs = export(net, args.output, args.format, size, args.opset, args.precision, args.all_outputs,
                       args.static, args.tolerance, source=weights)
    except (ExportError, CheckpointError, OnnxModelError) as err:
        print(f"export.py: error: {err}", file=sys.stderr)
        return 1
    megabytes = os.path.getsize(args.output) / 2**20
    print(f"wrote {args.output} ({megabytes:.1f} MB, {args.format}, {type(net).__name__}, {args.precision}, "
          f"{'static' if args.static else 'dynamic'} shape) from {weights} in {time.perf_counter() - start:.1f} s; "
          f"parity {max(d for d, _ in diffs):.2g}")
    if args.format == "onnx":
        name = os.path.basename(args.output)
        print(f"use it with: python apply.py --model {args.output} --input PHOTOS --output OUT\n"
              f"         or: mkdir -p ~/.rembg && cp {args.output} ~/.rembg/ && rembg i -m u2net_custom "
              f"-x '{{\"model_path\": \"~/.rembg/{name}\"}}' in.jpg out.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
