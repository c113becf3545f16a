"""Export trained U^2-Net weights for deployment: ONNX (onnxruntime, rembg) or TorchScript.

    python export.py --model results_stage2/<run>/model/best.pth --output u2net_mine.onnx
    python export.py --model best.pth --output u2net_mine.pt --format torchscript
    python export.py --model best.pth --output u2net_mine_fp16.onnx --precision fp16
    python export.py --model best.pth --output u2net_mine_int8.onnx --precision int8 --calibrate photos/
    python apply.py --model u2net_mine.onnx --input photos/ --output out      # onnxruntime, no PyTorch
    mkdir -p ~/.rembg && cp u2net_mine.onnx ~/.rembg/ && rembg i -m u2net_custom -x '{"model_path": "~/.rembg/u2net_mine.onnx"}' in.jpg out.png

Without ``--model``: the best weights of the newest stage-2 run, else of stage 1. rembg (2.0.86)
takes custom models only from inside its home folder (``~/.rembg`` or ``$REMBG_HOME``).

The graph takes ``input``, float32 (N,3,H,W): RGB scaled to [0,1], then ImageNet mean/std
(``utils.constants``); its first output, ``alpha``, is the fused map after the sigmoid, float32
(N,1,H,W) in [0,1]; ``--all-outputs`` adds the six side maps ``d1`` .. ``d6``. N, H and W are
dynamic unless ``--static`` (then 1x3xSIZExSIZE only, for runtimes that want fixed shapes).
``--precision fp16`` stores and computes in fp16 inside the graph; input and output stay float32.
``--precision int8`` (ONNX only) quantises the checked fp32 graph statically (QDQ: per-channel
int8 weights, uint8 activations calibrated on ``--calibrate-count`` photos of ``--calibrate``,
preprocessed as inference does; the sigmoid and the first and last convolutions stay float) and
checks its alphas against the fp32 graph's on other photos of the folder: mean and largest
|difference| within ``--mean-tolerance`` (1/255) and ``--tolerance`` (8/255), else no file.
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
from utils.inference.onnx_model import MAX_SIZE, OnnxModel, OnnxModelError
from utils.runs import find_weights, network_size
from utils.settings import positive_int

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": (".onnx",), "torchscript": (".pt", ".ts", ".torchscript")}
# fp32/fp16: largest |exported - PyTorch| on the raw fused alpha. int8: largest |alpha int8 -
# alpha fp32| on held-out photos (the mean has INT8_MEAN_TOLERANCE).
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "int8": 8 / 255}
INT8_MEAN_TOLERANCE = 1 / 255
MIN_SIZE = 64  # traced below this, an inner level of a U-block is 1 px and the graph loses an upsample
# torch's TorchScript-based exporter writes opsets 7..20; U^2-Net's bilinear upsampling
# (Resize with half-pixel coordinates) needs 11, per-channel int8 (QuantizeLinear's axis) 13.
MIN_OPSET, MAX_OPSET, MIN_INT8_OPSET = 11, 20, 13
CALIBRATION_COUNT = 32
HELD_OUT_COUNT = 16
EXAMPLE_PHOTOS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data_examples", "AISegment", "clip_img")
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
    p.add_argument("--size", type=positive_int, default=None,
                   help="export and parity size, written into the metadata as the size apply.py runs the "
                        "file at (default: the image_size of the weights' training run, else 320)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    p.add_argument("--precision", choices=tuple(TOLERANCE), default="fp32",
                   help="fp32, fp16 (inside the graph), or int8 (ONNX only: static QDQ quantisation)")
    p.add_argument("--calibrate", metavar="DIR", default=EXAMPLE_PHOTOS,
                   help="int8: photos (searched recursively) to calibrate on and check against; default: the "
                        "bundled data_examples portraits. Use photos like the ones you will matte")
    p.add_argument("--calibrate-count", type=positive_int, default=CALIBRATION_COUNT,
                   help=f"int8: photos to calibrate on (default {CALIBRATION_COUNT}); up to {HELD_OUT_COUNT} "
                        "others check the alphas")
    p.add_argument("--mean-tolerance", type=float, default=INT8_MEAN_TOLERANCE,
                   help="int8: largest allowed mean |alpha int8 - alpha fp32| (default 1/255)")
    p.add_argument("--all-outputs", action="store_true", help="also the side maps d1..d6")
    p.add_argument("--static", action="store_true", help="fixed 1x3xSIZExSIZE input")
    p.add_argument("--tolerance", type=float, help="largest allowed |exported - PyTorch| (default: 1e-4 fp32, "
                   "1e-2 fp16; int8: largest |alpha int8 - alpha fp32|, 8/255)")
    args = p.parse_args(argv)
    suffix = os.path.splitext(args.output)[1].lower()
    if args.format is None:
        args.format = "torchscript" if suffix in SUFFIXES["torchscript"] else "onnx"
    if suffix not in SUFFIXES[args.format]:  # apply.py picks the runtime by the suffix
        p.error(f"--output {args.output}: a {args.format} file must end in {' or '.join(SUFFIXES[args.format])}")
    if args.size is not None and not MIN_SIZE <= args.size <= MAX_SIZE:
        p.error(f"--size must be in {MIN_SIZE}..{MAX_SIZE}, got {args.size}")
    if not MIN_OPSET <= args.opset <= MAX_OPSET:
        p.error(f"--opset must be in {MIN_OPSET}..{MAX_OPSET} (what torch's exporter writes and U^2-Net needs), "
                f"got {args.opset}")
    if args.precision == "int8":
        if args.format != "onnx":
            p.error("--precision int8 is for ONNX files (onnxruntime's quantisation)")
        if args.opset < MIN_INT8_OPSET:
            p.error(f"--precision int8 needs --opset >= {MIN_INT8_OPSET} (per-channel QuantizeLinear)")
        if not os.path.isdir(args.calibrate):
            p.error(f"--calibrate {args.calibrate}: not a folder of photos")
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


def calibration_split(folder, count, held_out=HELD_OUT_COUNT):
    """(calibration paths, held-out paths) from the photos under ``folder`` (recursive, sorted):
    ``held_out`` photos spread evenly over the list check the file, ``count`` of the others
    calibrate it; with fewer photos a quarter (at least one) is held out."""
    from data_loader.image_io import is_image_file

    paths = sorted(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names
                   if is_image_file(name))
    if len(paths) < 2:
        raise ExportError(f"--calibrate {folder}: {len(paths)} photo(s) found; int8 needs at least 2 "
                          "(to calibrate on, and others to check the alphas on)")
    spare = len(paths) - count
    n_held = min(held_out, spare) if spare >= 1 else max(1, len(paths) // 4)
    picked = set(np.linspace(0, len(paths) - 1, n_held).round().astype(int).tolist())
    held = [p for i, p in enumerate(paths) if i in picked]
    calibration = [p for i, p in enumerate(paths) if i not in picked][:count]
    return calibration, held


def network_inputs(paths, size):
    """float32 (1,3,size,size) inputs, as inference makes them (``preprocess``, square), for
    the photos among ``paths`` that can be read; an unreadable one is skipped with a warning."""
    from data_loader.image_io import ImageReadError, read_rgb
    from utils.inference.preprocess import preprocess

    inputs = []
    for path in paths:
        try:
            inputs.append(preprocess(read_rgb(path), size, "square")[None])
        except (ImageReadError, ValueError) as err:
            print(f"export.py: warning: skipping {path}: {err}", file=sys.stderr)
    return inputs


def float_nodes(path, keep_float):
    """Names of the nodes of the fp32 graph at ``path`` to leave in float: any of "sigmoid"
    (every Sigmoid, the alpha outputs), "first_conv" (the Conv reading the photo) and
    "last_conv" (the Conv fusing the side maps into the alpha)."""
    import onnx

    graph = onnx.load(path).graph
    producer = {out: node for node in graph.node for out in node.output}
    names = []
    if "sigmoid" in keep_float:
        names += [n.name for n in graph.node if n.op_type == "Sigmoid"]
    if "first_conv" in keep_float:
        names += [n.name for n in graph.node if n.op_type == "Conv"][:1]  # nodes are in topological order
    if "last_conv" in keep_float:
        node = producer.get(graph.output[0].name)
        while node is not None and node.op_type != "Conv":  # alpha <- (Cast) <- Sigmoid <- Conv
            node = producer.get(node.input[0])
        names += [node.name] if node is not None else []
    return names


def quantize_int8(fp32_path, int8_path, calibration, keep_float):
    """Static QDQ quantisation of the graph at ``fp32_path`` into ``int8_path``: per-channel
    int8 weights, uint8 activations with min/max ranges from the ``calibration`` inputs
    (float32 (1,3,h,w) arrays), the ``keep_float`` nodes (see ``float_nodes``) left in float."""
    import logging

    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        """The calibration inputs, a range of them at a time (onnxruntime's strided min/max)."""

        def __init__(self):
            self.set_range(0, len(calibration))

        def __len__(self):
            return len(calibration)

        def set_range(self, start_index, end_index):
            self.items = iter(calibration[start_index:end_index])

        def get_next(self):
            x = next(self.items, None)
            return None if x is None else {"input": x}

    # Ranges folded in every `stride` photos (it must divide the count): U2NET at 320 has ~0.5 GB
    # of activations a photo, which onnxruntime otherwise keeps for every photo until the end.
    # (Its CalibMaxIntermediateOutputs drops them without folding them in, in 1.32.)
    stride = next(d for d in (4, 3, 2, 1) if len(calibration) % d == 0)

    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process; we run ORT's optimiser anyway
    try:
        quantize_static(fp32_path, int8_path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=float_nodes(fp32_path, keep_float),
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"CalibStridedMinMax": stride})
    finally:
        logging.getLogger().setLevel(level)


def alpha_differences(fp32_path, int8_path, inputs):
    """(mean, largest) |alpha int8 - alpha fp32| over every pixel of ``inputs``."""
    fp32, int8 = OnnxModel(fp32_path, device="cpu"), OnnxModel(int8_path, device="cpu")
    diffs = [np.abs(int8(x) - fp32(x)) for x in inputs]
    return float(np.mean([d.mean() for d in diffs])), float(max(d.max() for d in diffs))


def set_metadata(path, meta):
    """Replace the metadata_props of the ONNX file at ``path`` with ``meta``."""
    import onnx

    graph = onnx.load(path)
    del graph.metadata_props[:]
    for key, value in meta.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, path)


def export(net, output, fmt="onnx", size=320, opset=17, precision="fp32", all_outputs=False, static=False,
           tolerance=None, source="weights", calibrate=EXAMPLE_PHOTOS, calibrate_count=CALIBRATION_COUNT,
           mean_tolerance=INT8_MEAN_TOLERANCE, keep_float=("sigmoid", "first_conv", "last_conv")):
    """Write ``net`` (U2NET/U2NETP, eval mode) to ``output`` and check it; returns the parity
    differences [(max |diff|, shape or what), ...]. Raises ExportError (and leaves no file)
    when they exceed ``tolerance``.

    int8 (ONNX only): the fp32 graph is written and checked first, then quantised with photos
    of the folder ``calibrate`` (``calibrate_count`` of them) and checked on others of it: the
    mean and largest |alpha int8 - alpha fp32| must be <= ``mean_tolerance`` and ``tolerance``.
    """
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ExportError(f"--size must be in {MIN_SIZE}..{MAX_SIZE}, got {size}")
    if precision == "int8" and fmt != "onnx":
        raise ExportError("--precision int8 is for ONNX files (onnxruntime's quantisation)")
    tolerance = TOLERANCE[precision] if tolerance is None else tolerance
    arch = type(net).__name__.lower()
    meta = metadata(arch, size, precision, static, all_outputs, source)
    dtype = torch.float16 if precision == "fp16" else torch.float32
    reference = AlphaHead(net).eval()
    deployed = AlphaHead(net if dtype == torch.float32 else copy.deepcopy(net).to(dtype), dtype, all_outputs).eval()
    folder, base = os.path.split(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{base}.{os.getpid()}.tmp")
    tmp_int8 = os.path.join(folder, f".{base}.{os.getpid()}.int8.tmp")
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
        float_tolerance = TOLERANCE["fp32"] if precision == "int8" else tolerance
        if not worst <= float_tolerance:  # also catches NaN
            raise ExportError(f"parity check failed: the exported {fmt} differs from PyTorch by {worst:.3g} "
                              f"(> {float_tolerance:g}); no file written")
        if precision == "int8":
            diffs += check_int8(tmp, tmp_int8, size, meta, calibrate, calibrate_count, tolerance, mean_tolerance,
                                keep_float)
            os.replace(tmp_int8, output)
        else:
            os.replace(tmp, output)
    finally:
        for path in (tmp, tmp_int8):
            if os.path.exists(path):
                os.remove(path)
    return diffs


def check_int8(fp32_path, int8_path, size, meta, calibrate, count, tolerance, mean_tolerance, keep_float):
    """Quantise ``fp32_path`` into ``int8_path`` and check the alphas on held-out photos;
    returns [(largest, "int8 alpha"), (mean, "int8 mean alpha")]; raises ExportError."""
    calibration, held = calibration_split(calibrate, count)
    calibration, held = network_inputs(calibration, size), network_inputs(held, size)
    if not calibration or not held:
        raise ExportError(f"--calibrate {calibrate}: too few readable photos to calibrate on and check; "
                          "no file written")
    quantize_int8(fp32_path, int8_path, calibration, keep_float)
    mean, largest = alpha_differences(fp32_path, int8_path, held)
    print(f"parity int8 on {len(held)} held-out photos (calibrated on {len(calibration)}): "
          f"|alpha int8 - alpha fp32| mean = {mean * 255:.3g}/255, max = {largest * 255:.3g}/255")
    if not (mean <= mean_tolerance and largest <= tolerance):
        raise ExportError(f"parity check failed: int8 alphas differ from fp32 by {mean * 255:.3g}/255 on average "
                          f"(tolerance {mean_tolerance * 255:.3g}/255) and {largest * 255:.3g}/255 at most "
                          f"(tolerance {tolerance * 255:.3g}/255); no file written. Calibrate on photos like the "
                          "ones you will matte (--calibrate DIR), or keep fp32")
    set_metadata(int8_path, {**meta, "calibration": f"{len(calibration)} photos of {os.path.basename(calibrate)}",
                             "int8_alpha_mean_diff": f"{mean:.6f}", "int8_alpha_max_diff": f"{largest:.6f}",
                             "float_nodes": ",".join(keep_float)})
    return [(largest, "int8 alpha"), (mean, "int8 mean alpha")]


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    weights = find_weights("export", args.model)
    try:
        if weights is None:
            raise ExportError("no weights: pass --model FILE, or train one (python train_stage2.py)")
        net = load_model(weights)
        size, _ = network_size(weights, args.size)  # the size the weights were trained at, else 320
        size = size if args.size is not None else min(max(size, MIN_SIZE), MAX_SIZE)
        diffs = export(net, args.output, args.format, size, args.opset, args.precision, args.all_outputs,
                       args.static, args.tolerance, source=weights, calibrate=args.calibrate,
                       calibrate_count=args.calibrate_count, mean_tolerance=args.mean_tolerance)
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
