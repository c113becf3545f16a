"""rembg's route on OpenVINO's CPU plugin: the same .onnx, compiled for one input shape at fp32 or bf16.

``openvino_view(model, size, streams, precision)`` gives a handle on an ``OnnxModel`` whose
(1,3,size,size) calls run on OpenVINO (``pip install openvino``) instead of onnxruntime,
``streams`` calls at once on one thread each; any other shape runs on the model's own dynamic
onnxruntime session. The server uses it, with ``--openvino``, for the network calls of
``POST /api/remove``: at fp32 while other requests are in the server (the narrow calls:
documents/serving.md, "Batching and threads"; a photo alone stays on onnxruntime on all the
cores, where OpenVINO's one stream of two threads measured slower), at bf16 (``--precision
bf16``) for every call of that route, so that a mask does not depend on the server's load.

Why: on this project's 2-core Sapphire Rapids, U2NETP at 320, two single-threaded calls at once,
medians of three runs: OpenVINO 2026.4 at fp32 (the inference precision set to f32: on an AMX CPU
its default would be bf16) gave 1.17-1.52x onnxruntime 1.32's images per second, its alphas
within 6e-8 of onnxruntime's (other kernels; the fixed-shape onnxruntime sessions differ by
3e-8); at bf16 on AMX, 6.0x (15.1 against 2.5 images/s), the alphas of the trained network
within the bf16 difference documents/serving.md gives. bf16 is refused on a CPU without native
bf16 (OpenVINO's optimisation capabilities), as the project refuses emulated bf16 everywhere.
``POST /api/matte`` never runs here: apply.py's bytes need onnxruntime's dynamic graph at fp32.

    view = openvino_view(OnnxModel("u2netp.onnx"), 320, streams=2, precision="bf16")
    alpha = view(batch)        # float32 (1,3,320,320) ImageNet-normalised -> float32 (1,320,320) in [0,1]
"""
import importlib.util
import threading

import numpy as np

from utils.inference.onnx_model import OnnxModel, OnnxModelError

NOT_INSTALLED = "--openvino needs OpenVINO's runtime: pip install openvino"
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}  # the project's precision -> OpenVINO's inference precision


def openvino_available() -> bool:
    """True when OpenVINO's Python package is installed (found, not imported: ~0.3 s)."""
    return importlib.util.find_spec("openvino") is not None


class OpenVinoView(OnnxModel):
    """An ``OnnxModel`` (its attributes, checks and dynamic session shared) whose calls of one
    shape, ``shape`` (1,3,size,size), run on an OpenVINO compiled model; built by
    ``openvino_view``. Each calling thread has its own infer request, so ``streams`` threads
    run at once. Its ``precision`` is the compiled model's (``check_precision`` accepts it)."""

    compiled = None
    shape: tuple = ()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """batch: float32 (B,3,h,w) ImageNet-normalised -> fused alpha, float32 (B,h,w) in [0,1]."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.shape != self.shape:
            return OnnxModel.__call__(self, batch)  # the dynamic onnxruntime session (static_shapes is 0)
        request = getattr(self._local, "request", None)
        if request is None:  # one per thread: an infer request runs one call at a time
            request = self._local.request = self.compiled.create_infer_request()
        alpha = request.infer({0: batch})[self.compiled.outputs[0]]
        if alpha.ndim != 4 or alpha.shape[1] != 1:
            raise OnnxModelError(f"{self.path}: OpenVINO's first output has shape {alpha.shape}; a U^2-Net's fused "
                                 "alpha is (N,1,H,W)")
        return np.array(alpha[:, 0], dtype=np.float32)  # a copy: the request reuses its output buffer

    def __repr__(self):
        return f"OpenVinoView({self.path!r}, arch={self.arch}, shape={self.shape}, precision={self.precision})"


def check_openvino_precision(precision: str) -> None:
    """Raise ValueError unless ``precision`` is one OpenVINO runs here (fp32 or bf16)."""
    if precision not in PRECISION_HINTS:
        raise ValueError(f"--openvino runs at {' or '.join(PRECISION_HINTS)}, not --precision {precision}")


def native_bf16(core) -> bool:
    """True when OpenVINO's CPU plugin runs bf16 natively here (AVX512-BF16 or AMX)."""
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def openvino_view(model: OnnxModel, size: int, streams: int, precision: str = "fp32") -> OpenVinoView:
    """``model`` with its (1,3,size,size) calls on OpenVINO's CPU plugin at ``precision`` (fp32 or
    bf16), ``streams`` calls at once on one thread each (``streams`` >= 1). Raises ValueError when
    OpenVINO is not installed, bf16 is not native on this CPU, or the graph does not compile
    (naming the file)."""
    if streams < 1:
        raise ValueError(f"streams must be >= 1, got {streams}")
    check_openvino_precision(precision)
    try:
        import openvino as ov
    except ImportError as err:
        raise ValueError(NOT_INSTALLED) from err
    core = ov.Core()
    if precision == "bf16" and not native_bf16(core):
        raise ValueError("--openvino --precision bf16: this CPU has no native bf16 (AVX512-BF16 or AMX); "
                         "OpenVINO would emulate it, slower than fp32: use --precision fp32")
    view = model.static_view(0)  # the dynamic session, metadata and checks: shared, not copied
    view.__class__ = OpenVinoView
    view._local = threading.local()
    view.shape = (1, 3, int(size), int(size))
    view.precision = precision
    try:
        graph = core.read_model(model.path)
        graph.reshape({graph.inputs[0]: list(view.shape)})
        view.compiled = core.compile_model(graph, "CPU", {
            "INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision],  # f32 set: AMX CPUs would get bf16 by default
            "PERFORMANCE_HINT": "THROUGHPUT" if streams > 1 else "LATENCY",
            "NUM_STREAMS": str(streams), "INFERENCE_NUM_THREADS": str(streams)})
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{model.path}: OpenVINO cannot run this graph ({reason}); leave out --openvino") from err
    # one call on this thread first: OpenVINO's pybind11 sets up its numpy bindings on the first infer, and
    # two threads doing that at once deadlocked (seen in a server's warm-up, 2026-12-03)
    view.compiled.create_infer_request().infer({0: np.zeros(view.shape, np.float32)})
    return view
