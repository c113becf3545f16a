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
import copy
import os
import threading

import numpy as np

ONNX_SUFFIX = ".onnx"
# The largest network input side anywhere (export.py --size, an .onnx's input_size, apply.py
# --size): U2NET at 4096x4096 needs ~40 GB of activations, so a larger value is a typo or an
# attack (a foreign file's metadata), never a use.
MAX_SIZE = 4096
INPUT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
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


# onnxruntime session settings, each measured on U2NET at 320 (documents/deployment.md): the
# full graph level (NCHWc layout) is ~1.3x the extended one's speed for ~200 MB more (a reordered
# copy of the weights; peak 682 MB against 477 MB in process); memory patterns add ~35 MB for no
# speed; no arena, the parallel executor and I/O binding were slower on the CPU.
SESSION_DEFAULTS = {"graph_optimization_level": "all", "enable_mem_pattern": False,
                    "enable_cpu_mem_arena": True, "execution_mode": "sequential", "inter_op_threads": 1,
                    "spinning": True}
_LEVELS = ("disable", "basic", "extended", "layout", "all")


def session_options(ort, threads=None, **changes):
    """An ``ort.SessionOptions`` of ``SESSION_DEFAULTS`` with ``changes`` (same keys):
    graph_optimization_level in disable | basic | extended | layout | all, enable_mem_pattern,
    enable_cpu_mem_arena (bools), execution_mode sequential | parallel, inter_op_threads (int),
    spinning (bool: idle intra-op threads spin-wait for work; off, they yield the cores);
    ``threads``: intra-op threads (None: onnxruntime's default, one per core)."""
    unknown = set(changes) - set(SESSION_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown onnxruntime session setting(s) {sorted(unknown)}; known: {sorted(SESSION_DEFAULTS)}")
    settings = {**SESSION_DEFAULTS, **changes}
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no warnings about unused initialisers
    levels = ort.GraphOptimizationLevel
    options.graph_optimization_level = {
        "disable": levels.ORT_DISABLE_ALL, "basic": levels.ORT_ENABLE_BASIC, "extended": levels.ORT_ENABLE_EXTENDED,
        "layout": getattr(levels, "ORT_ENABLE_LAYOUT", levels.ORT_ENABLE_ALL), "all": levels.ORT_ENABLE_ALL,
    }[settings["graph_optimization_level"]]
    options.enable_mem_pattern = bool(settings["enable_mem_pattern"])
    options.enable_cpu_mem_arena = bool(settings["enable_cpu_mem_arena"])
    options.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if settings["execution_mode"] == "parallel"
                              else ort.ExecutionMode.ORT_SEQUENTIAL)
    options.inter_op_num_threads = int(settings["inter_op_threads"])
    if not settings["spinning"]:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    return options


class OnnxModel:
    """A U^2-Net ONNX graph in an onnxruntime session.

    Parameters
    ----------
    path: the ``.onnx`` file; its first input is the ImageNet-normalised RGB batch (N,3,H,W)
        and its first output the fused alpha after the sigmoid, (N,1,H,W).
    device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` (or a torch.device); CUDA needs
        onnxruntime-gpu.
    threads: intra-op threads on the CPU (None: onnxruntime's default, the core count).
    session: onnxruntime SessionOptions to change from ``SESSION_DEFAULTS`` (see
        ``session_options``); io_binding: run through an IOBinding (measured no faster on the
        CPU: documents/deployment.md).
    static_shapes: up to this many input shapes (B,H,W) get a session of their own with the
        shape fixed (onnxruntime's free-dimension overrides: the graph's ~450 shape operations
        are folded away; ~1.25x faster for U2NETP at 320 on two cores, documents/serving.md),
        opened on first use; other shapes run on the dynamic session. 0 (the default, apply.py's):
        the dynamic session only. A fixed-shape session's alphas differ from the dynamic one's
        by ~3e-8 (other kernels), so apply.py's bytes need 0. ``static_view(n)`` gives a second
        handle on the same dynamic session with its own fixed-shape sessions.

    Attributes: ``arch``, ``input_size`` (the export size, or None), ``fixed_size`` ((H, W) of
    a static graph, else None), ``precision``, ``device`` ("cpu" or "cuda:N", what runs).
    Raises OnnxModelError naming the file for a missing, corrupt or foreign file.
    """

    def __init__(self, path, device="cpu", threads=None, session: dict | None = None, io_binding: bool = False,
                 static_shapes: int = 0):
        self.path = os.fspath(path)
        self.io_binding = io_binding
        if static_shapes < 0:
            raise ValueError(f"static_shapes must be >= 0, got {static_shapes}")
        self.static_shapes = static_shapes
        self._static: dict = {}  # (B,H,W) -> its fixed-shape session, None where the graph cannot fix it
        self._static_lock = threading.Lock()
        self._open_args = (threads, dict(session or {}))
        try:  # here, not at import: only an .onnx model needs it
            import onnxruntime as ort
            from onnxruntime.capi import onnxruntime_pybind11_state as state
        except ImportError as err:
            raise OnnxModelError(f"{self.path}: running an .onnx model needs onnxruntime "
                                 "(pip install onnxruntime, or onnxruntime-gpu for CUDA)") from err
        if not os.path.isfile(self.path):
            raise OnnxModelError(f"{self.path}: no such ONNX file")
        options = session_options(ort, threads, **(session or {}))
        errors = (state.Fail, state.InvalidProtobuf, state.InvalidGraph, state.InvalidArgument,
                  state.NoSuchFile, state.NotImplemented, state.RuntimeException)
        self._providers = _providers(ort, device, self.path)
        try:
            self.session = ort.InferenceSession(self.path, options, providers=self._providers)
        except errors as err:
            reason = str(err).split("failed:")[-1].strip() or type(err).__name__
            raise OnnxModelError(f"{self.path}: not a usable ONNX model ({reason})") from err
        self._check_signature()
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata = dict(meta)
        self.arch = meta.get("arch")
        self.precision = meta.get("precision", "fp32")
        self.input_size = self._input_size(self.path, meta)
        cuda = self.session.get_provider_options().get("CUDAExecutionProvider")  # None: it fell back to the CPU
        self.device = f"cuda:{cuda.get('device_id', 0)}" if cuda is not None else "cpu"

    def _check_signature(self):
        """A U^2-Net graph: one float (N,3,H,W) input, a first output of one channel
        (N,1,H,W); static sides and the metadata's input_size within MAX_SIZE."""
        inputs, out = self.session.get_inputs(), self.session.get_outputs()[0]
        if len(inputs) != 1:
            raise OnnxModelError(f"{self.path}: takes {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                                 "a U^2-Net takes one, the (N,3,H,W) photo batch")
        inp = inputs[0]
        if len(inp.shape) != 4 or (isinstance(inp.shape[1], int) and inp.shape[1] != 3):
            raise OnnxModelError(f"{self.path}: input {inp.name!r} has shape {inp.shape}; a U^2-Net takes (N,3,H,W)")
        if inp.type not in INPUT_TYPES:
            raise OnnxModelError(f"{self.path}: input {inp.name!r} is {inp.type}; a U^2-Net takes float32 "
                                 "(N,3,H,W) ImageNet-normalised RGB")
        if len(out.shape) != 4 or (isinstance(out.shape[1], int) and out.shape[1] != 1):
            raise OnnxModelError(f"{self.path}: first output {out.name!r} has shape {out.shape}; "
                                 "a U^2-Net's fused alpha is (N,1,H,W)")
        if out.type not in INPUT_TYPES:
            raise OnnxModelError(f"{self.path}: first output {out.name!r} is {out.type}, not a float alpha")
        self.input_name, self.output_name = inp.name, out.name
        self.input_dtype = INPUT_TYPES[inp.type]
        height, width = inp.shape[2:]
        self.fixed_size = (height, width) if isinstance(height, int) and isinstance(width, int) else None
        if self.fixed_size and not all(0 < side <= MAX_SIZE for side in self.fixed_size):
            raise OnnxModelError(f"{self.path}: fixed input size {height}x{width} is outside 1..{MAX_SIZE}")

    @staticmethod
    def _input_size(path, meta):
        """The metadata's input_size as an int in 1..MAX_SIZE, None when absent."""
        value = meta.get("input_size")
        if value is None:
            return None
        if not value.strip().isdigit() or not 0 < int(value) <= MAX_SIZE:
            raise OnnxModelError(f"{path}: metadata input_size={value!r} is not a size in 1..{MAX_SIZE}")
        return int(value)

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

    def static_view(self, static_shapes: int, threads: int | None = None, **session) -> "OnnxModel":
        """This model with ``static_shapes`` fixed-shape sessions of its own (see the class
        docstring), sharing this one's dynamic session (no second copy of the weights for it);
        ``threads``, ``session``: its fixed-shape sessions' intra-op threads and settings
        (``session_options``' keys; None, none: this model's)."""
        if static_shapes < 0:
            raise ValueError(f"static_shapes must be >= 0, got {static_shapes}")
        view = copy.copy(self)
        view.static_shapes, view._static, view._static_lock = static_shapes, {}, threading.Lock()
        unknown = set(session) - set(SESSION_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown onnxruntime session setting(s) {sorted(unknown)}")
        view._open_args = (self._open_args[0] if threads is None else threads, {**self._open_args[1], **session})
        return view

    @property
    def fixed_shapes(self) -> list[tuple[int, int, int]]:
        """The (B,H,W) input shapes that have a fixed-shape session now."""
        return sorted(shape for shape, session in self._static.items() if session is not None)

    def session_for(self, shape: tuple[int, int, int]):
        """The session to run a (B,H,W) batch on: its fixed-shape one (opened on first use while
        fewer than ``static_shapes`` are open), else the dynamic one."""
        if not self.static_shapes or self.fixed_size:
            return self.session
        found = self._static.get(shape, False)
        if found is not False:
            return found or self.session
        with self._static_lock:  # one opening per shape, however many threads ask at once
            if shape not in self._static:
                if len(self._static) >= self.static_shapes:
                    return self.session
                self._static[shape] = self._open_fixed(shape)
        return self._static[shape] or self.session

    def _open_fixed(self, shape):
        """A session with the input's named dimensions fixed to ``shape``; None when a dimension
        has no name to override (a foreign graph's), or onnxruntime refuses."""
        import onnxruntime as ort

        names = self.session.get_inputs()[0].shape
        sizes = dict(zip((0, 2, 3), shape))
        if any(not isinstance(names[axis], (str, int)) for axis in sizes):
            return None
        threads, changes = self._open_args
        options = session_options(ort, threads, **changes)
        for axis, size in sizes.items():
            if isinstance(names[axis], str):
                options.add_free_dimension_override_by_name(names[axis], int(size))
        try:
            return ort.InferenceSession(self.path, options, providers=self._providers)
        except Exception:  # noqa: BLE001 - the dynamic session still runs this shape
            return None

    def __call__(self, batch):
        """batch: float32 (B,3,h,w) ImageNet-normalised -> fused alpha, float32 (B,h,w) in [0,1]."""
        batch = np.ascontiguousarray(batch, dtype=self.input_dtype)
        self.check_size(*batch.shape[2:])
        session = self.session_for((batch.shape[0], *batch.shape[2:]))
        if self.io_binding:
            binding = session.io_binding()
            binding.bind_cpu_input(self.input_name, batch)
            binding.bind_output(self.output_name)
            session.run_with_iobinding(binding)
            alpha = binding.copy_outputs_to_cpu()[0]
        else:
            alpha = session.run([self.output_name], {self.input_name: batch})[0]
        if alpha.ndim != 4 or alpha.shape[1] != 1:  # a dynamic channel axis is known only now
            raise OnnxModelError(f"{self.path}: first output has shape {alpha.shape}; a U^2-Net's fused alpha is "
                                 "(N,1,H,W)")
        return np.asarray(alpha[:, 0], dtype=np.float32)

    def __repr__(self):
        return f"OnnxModel({self.path!r}, arch={self.arch}, device={self.device})"


def load_any_model(path, device="cpu", arch=None, threads=None, session=None, static_shapes=0):
    """An ``OnnxModel`` for an ``.onnx`` file, else the PyTorch network of the weights in ``path``
    (``model.load_model``: plain state_dicts, training checkpoints, ``module.`` prefixes).

    ``arch``, when given, must agree with the file. ``threads`` sets onnxruntime's intra-op
    threads (for a PyTorch model the caller sets ``torch.set_num_threads``); ``static_shapes``
    is OnnxModel's (ignored for PyTorch weights). Raises
    OnnxModelError / CheckpointError (both ValueErrors) naming the file.
    """
    if is_onnx_path(path):
        net = OnnxModel(path, device=device, threads=threads, session=session, static_shapes=static_shapes)
        if arch and net.arch and arch != net.arch:
            raise OnnxModelError(f"{path}: holds a {net.arch} graph, but arch={arch!r} was asked for")
        return net
    from model import load_model  # imports torch: only for PyTorch weights

    return load_model(path, arch=arch, device=device)

