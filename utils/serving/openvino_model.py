"""rembg's route on OpenVINO's CPU plugin: the same .onnx, compiled at fp32 for one input shape.

``openvino_view(model, size, streams)`` gives a handle on an ``OnnxModel`` whose (1,3,size,size)
calls run on OpenVINO (``pip install openvino``) instead of onnxruntime, ``streams`` calls at
once on one thread each; any other shape runs on the model's own dynamic onnxruntime session.
The server uses it, with ``--openvino``, for the network calls of ``POST /api/remove`` while
other requests are in the server (the narrow calls: documents/serving.md, "Batching and
threads"); a photo alone stays on onnxruntime on all the cores, where OpenVINO's one stream of
two threads measured slower.

Why: on this project's 2-core Sapphire Rapids, U2NETP at 320, OpenVINO 2026.4 at fp32 (the
inference precision set to f32: on an AMX CPU its default would be bf16) gave 1.17x
onnxruntime 1.32's images per second with two single-threaded calls at once (2.71 against 2.31,
medians of three interleaved runs); its alphas are within 6e-8 of onnxruntime's (other
kernels; the fixed-shape onnxruntime sessions differ by 3e-8), so rembg's masks match to 1/255
at a rare pixel, as with those. ``POST /api/matte`` never runs here: apply.py's bytes need
onnxruntime's dynamic graph.

    view = openvino_view(OnnxModel("u2netp.onnx"), 320, streams=2)
    alpha = view(batch)        # float32 (1,3,320,320) ImageNet-normalised -> float32 (1,320,320) in [0,1]
"""
import importlib.util
import threading

import numpy as np

from utils.inference.onnx_model import OnnxModel, OnnxModelError

NOT_INSTALLED = "--openvino needs OpenVINO's runtime: pip install openvino"


def openvino_available() -> bool:
    """True when OpenVINO's Python package is installed (found, not imported: ~0.3 s)."""
    return importlib.util.find_spec("openvino") is not None


class OpenVinoView(OnnxModel):
    """An ``OnnxModel`` (its attributes, checks and dynamic session shared) whose calls of one
    shape, ``shape`` (1,3,size,size), run on an OpenVINO compiled model; built by
    ``openvino_view``. Each calling thread has its own infer request, so ``streams`` threads
    run at once."""

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
        return f"OpenVinoView({self.path!r}, arch={self.arch}, shape={self.shape})"


def openvino_view(model: OnnxModel, size: int, streams: int) -> OpenVinoView:
    """``model`` with its (1,3,size,size) calls on OpenVINO's CPU plugin at fp32, ``streams``
    calls at once on one thread each (``streams`` >= 1). Raises ValueError when OpenVINO is not
    installed or cannot compile the graph (naming the file)."""
    if streams < 1:
        raise ValueError(f"streams must be >= 1, got {streams}")
    try:
        import openvino as ov
    except ImportError as err:
        raise ValueError(NOT_INSTALLED) from err
    view = model.static_view(0)  # the dynamic session, metadata and checks: shared, not copied
    view.__class__ = OpenVinoView
    view._local = threading.local()
    view.shape = (1, 3, int(size), int(size))
    core = ov.Core()
    try:
        graph = core.read_model(model.path)
        graph.reshape({graph.inputs[0]: list(view.shape)})
        view.compiled = core.compile_model(graph, "CPU", {
            "INFERENCE_PRECISION_HINT": "f32",  # fp32 as the file says; AMX CPUs would get bf16 by default
            "PERFORMANCE_HINT": "THROUGHPUT" if streams > 1 else "LATENCY",
            "NUM_STREAMS": str(streams), "INFERENCE_NUM_THREADS": str(streams)})
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{model.path}: OpenVINO cannot run this graph ({reason}); leave out --openvino") from err
    return view
