"""An exported ``.onnx`` U^2-Net run by onnxruntime, where the PyTorch model would run.

``load_any_model(path)`` is the one loader of apply.py, test_stage2.py and make_dataset.py: an
``.onnx`` file (from export.py, or any U^2-Net ONNX such as rembg's) gives an ``OnnxModel``,
anything else the PyTorch network (``model.load_model``). Both then go through the same
preprocessing and resize-back (``utils.inference.predict``); only the network call differs.

This module imports neither torch nor onnxruntime at import time: with an ``.onnx`` model,
apply.py runs with numpy, OpenCV, Pillow and onnxruntime only (``pip install onnxruntime``,
or ``onnxruntime-gpu`` for CUDA), and saves PyTorch's ~400 MB and ~2 s of start-up.

    model = load_any_model("u2net_mine.onnx", device="auto", threads=2)
    alpha = model(batch)       # float32 (B,3,h,w) ImageNet-normalised -> float32 (B,h,w) in [0,1]
"""
import os

import numpy as np

ONNX_SUFFIX = ".onnx"
# Keys export.py writes into the file's metadata_props (all values are strings).
METADATA_KEYS = ("arch", "input_size", "dynamic", "precision", "mean", "std", "outputs", "source", "producer")


class OnnxModelError(ValueError):
    """An .onnx file that cannot be used; the message names the file and the reason."""


def is_onnx_path(path):
    """True when ``path`` names an ONNX model (by its ``.onnx`` suffix)."""
    return os.fspath(path).lower().endswith(ONNX_SUFFIX)


def _providers(ort, device, path):
    """onnxruntime execution providers for ``device`` (auto | cpu | cuda | cuda:N, or a
    torch.device): CUDA where onnxruntime-gpu offers it (auto falls back to the CPU)."""
    name = str(device)
    if name == "cpu":
        return ["CPUExecutionProvider"]
    if name == "auto" or name.startswith("cuda"):
        if "CUDAExecutionProvider" in ort.get_available_providers():
            index = int(name.split(":")[1]) if ":" in name else 0
            return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        if name == "auto":
            return ["CPUExecutionProvider"]
        raise OnnxModelError(f"{path}: device {name!r} asked for, but this onnxruntime has no CUDA provider "
                             "(pip install onnxruntime-gpu), or use --device cpu")
    raise OnnxModelError(f"{path}: device {name!r} is not a device name (auto, cpu, cuda, cuda:N)")


class OnnxModel:
    """A U^2-Net ONNX graph in an onnxruntime session.

    Parameters
    ----------
    path: the ``.onnx`` file; its first input is the ImageNet-normalised RGB batch (N,3,H,W)
        and its first output the fused alpha after the sigmoid, (N,1,H,W).
    device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` (or a torch.device); CUDA needs
        onnxruntime-gpu.
    threads: intra-op threads on the CPU (None: onnxruntime's default, the core count).

    Attributes: ``arch``, ``input_size`` (the export size, or None), ``fixed_size`` ((H, W) of
    a static graph, else None), ``precision``, ``device`` ("cpu" or "cuda:N", what runs).
    Raises OnnxModelError naming the file for a missing, corrupt or foreign file.
    """

    def __init__(self, path, device="cpu", threads=None):
        self.path = os.fspath(path)
        try:  # here, not at import: only an .onnx model needs it
            import onnxruntime as ort
            from onnxruntime.capi import onnxruntime_pybind11_state as state
        except ImportError as err:
            raise OnnxModelError(f"{self.path}: running an .onnx model needs onnxruntime "
                                 "(pip install onnxruntime, or onnxruntime-gpu for CUDA)") from err
        if not os.path.isfile(self.path):
            raise OnnxModelError(f"{self.path}: no such ONNX file")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: no warnings about unused initialisers
        # Memory over the last ~10 % of speed (U2NET at 320, apply.py on 6 photos, 2 threads): the
        # full level's NCHWc layout keeps a second, reordered copy of every weight (peak 1.0 GB,
        # 6.1-6.7 CPU s); without it and without memory patterns: peak 0.66 GB, 7.0 CPU s.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.enable_mem_pattern = False
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        errors = (state.Fail, state.InvalidProtobuf, state.InvalidGraph, state.InvalidArgument,
                  state.NoSuchFile, state.NotImplemented, state.RuntimeException)
        try:
            self.session = ort.InferenceSession(self.path, options, providers=_providers(ort, device, self.path))
        except errors as err:
            reason = str(err).split("failed:")[-1].strip() or type(err).__name__
            raise OnnxModelError(f"{self.path}: not a usable ONNX model ({reason})") from err
        self._check_signature()
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata = dict(meta)
        self.arch = meta.get("arch")
        self.precision = meta.get("precision", "fp32")
        self.input_size = int(meta["input_size"]) if meta.get("input_size", "").isdigit() else None
        cuda = self.session.get_provider_options().get("CUDAExecutionProvider")  # None: it fell back to the CPU
        self.device = f"cuda:{cuda.get('device_id', 0)}" if cuda is not None else "cpu"

    def _check_signature(self):
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        if len(inp.shape) != 4 or (isinstance(inp.shape[1], int) and inp.shape[1] != 3):
            raise OnnxModelError(f"{self.path}: input {inp.name!r} has shape {inp.shape}; a U^2-Net takes (N,3,H,W)")
        if len(out.shape) != 4:
            raise OnnxModelError(f"{self.path}: first output {out.name!r} has shape {out.shape}; "
                                 "a U^2-Net's fused alpha is (N,1,H,W)")
        self.input_name, self.output_name = inp.name, out.name
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        height, width = inp.shape[2:]
        self.fixed_size = (height, width) if isinstance(height, int) and isinstance(width, int) else None

    def check_size(self, height, width):
        """Raise ValueError when a static graph cannot take a (height, width) input."""
        if self.fixed_size and (height, width) != tuple(self.fixed_size):
            raise ValueError(f"{self.path} takes only {self.fixed_size[0]}x{self.fixed_size[1]} inputs "
                             f"(exported with --static), not {height}x{width}: use --size {self.fixed_size[0]}")

    def check_precision(self, precision):
        """Raise ValueError unless ``precision`` is fp32 (the default: as exported) or the
        file's own: the graph's precision was fixed by export.py."""
        if precision not in ("fp32", self.precision):
            raise ValueError(f"--precision {precision}: {self.path} runs at the precision it was exported with "
                             f"({self.precision}); for fp16 export with python export.py --precision fp16")

    def __call__(self, batch):
        """batch: float32 (B,3,h,w) ImageNet-normalised -> fused alpha, float32 (B,h,w) in [0,1]."""
        batch = np.ascontiguousarray(batch, dtype=self.input_dtype)
        self.check_size(*batch.shape[2:])
        alpha = self.session.run([self.output_name], {self.input_name: batch})[0]
        return np.asarray(alpha[:, 0], dtype=np.float32)

    def __repr__(self):
        return f"OnnxModel({self.path!r}, arch={self.arch}, device={self.device})"


def load_any_model(path, device="cpu", arch=None, threads=None):
    """An ``OnnxModel`` for an ``.onnx`` file, else the PyTorch network of the weights in ``path``
    (``model.load_model``: plain state_dicts, training checkpoints, ``module.`` prefixes).

    ``arch``, when given, must agree with the file. ``threads`` sets onnxruntime's intra-op
    threads (for a PyTorch model the caller sets ``torch.set_num_threads``). Raises
    OnnxModelError / CheckpointError (both ValueErrors) naming the file.
    """
    if is_onnx_path(path):
        net = OnnxModel(path, device=device, threads=threads)
        if arch and net.arch and arch != net.arch:
            raise OnnxModelError(f"{path}: holds a {net.arch} graph, but arch={arch!r} was asked for")
        return net
    from model import load_model  # imports torch: only for PyTorch weights

    return load_model(path, arch=arch, device=device)

