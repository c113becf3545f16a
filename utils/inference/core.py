"""The one path from an image to its full-resolution alpha, for every caller.

apply.py, make_dataset.py, test_stage2.py, training's validation, video and serve.py all build a
``Matter`` once (the weights + one ``MatteOptions``) and ask it for alphas:

    matter = Matter.load("best.pth", MatteOptions(size=320, refine=RefineOptions("guided")))
    alphas = matter.predict([read_rgb("a.jpg"), read_rgb("b.jpg")])       # float32 (H,W) in [0,1]
    for done in matter.stream(files, load=lambda f: read_rgb(f.path)):   # decoding, network and
        if done.error is None:                                           # refinement overlapped
            save(done.item, done.image, done.alpha)

The steps, each usable on its own: ``coarse`` (photos -> the network's alphas at its input size,
one network call per run of equal input shapes) and ``full`` (a coarse alpha -> the photo's
resolution, by ``options.refine``). A ``Matter`` holds its own prepared copy of the network
(``utils.inference.predict.prepare_model``: BatchNorm folded, fused conv+ReLU, channels-last), so
the caller's model is never changed and nothing is cached behind the caller's back: validation
builds a new ``Matter`` from the weights of the epoch it scores.

One precision policy: bf16 where the device only emulates it is refused (``check_precision``),
for apply.py and validation alike. Outputs are checked once per batch: a network that gives NaN
or infinite values raises ``ModelOutputError`` (a fault of the model, not of a photo).
"""
from __future__ import annotations

import copy
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Generic, Iterable, Iterator, TypeVar

import numpy as np

from utils.constants import PRECISIONS, REFINE_METHODS, RESIZE_POLICIES

from .onnx_model import MAX_SIZE, OnnxModel, load_any_model  # MAX_SIZE: the network input side's bound
from .preprocess import alpha_to_size, preprocess

if TYPE_CHECKING:  # refine.py imports numba (~0.8 s): only when a method other than none is used
    from .refine import RefineOptions

T = TypeVar("T")
_OWN = object()    # Matter.full's default: the options' own refinement
MIN_SIZE = 32      # below this the network's six downsamplings leave nothing


class ModelOutputError(ValueError):
    """The network's output is unusable (NaN or infinite): a fault of the weights or the graph."""


@dataclass(frozen=True)
class MatteOptions:
    """How a ``Matter`` turns photos into alphas; checked when made (ValueError naming the field).

    size: network input side (``square``) or short side (``short_side``), MIN_SIZE..MAX_SIZE.
    resize: one of ``RESIZE_POLICIES`` (see utils/inference/predict.py's docstring).
    device: where the network runs ("cpu", "cuda:0"); an .onnx model runs where it was loaded.
    precision: one of ``PRECISIONS``; bf16 where the device only emulates it is refused.
    batch_size: images per network call. workers: decoding threads of ``Matter.stream``.
    refine: a ``RefineOptions``; None is method ``none`` (the network's alpha resized).
    """
    size: int = 320
    resize: str = "square"
    device: str = "cpu"
    precision: str = "fp32"
    batch_size: int = 1
    workers: int = 2
    refine: "RefineOptions | None" = None

    def __post_init__(self):
        if not isinstance(self.size, int) or not MIN_SIZE <= self.size <= MAX_SIZE:
            raise ValueError(f"size must be an integer in [{MIN_SIZE}, {MAX_SIZE}], got {self.size!r}")
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"resize must be one of {RESIZE_POLICIES}, got {self.resize!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("batch_size", "workers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        object.__setattr__(self, "device", str(self.device))

    @property
    def refine_method(self) -> str:
        return "none" if self.refine is None else self.refine.method


@dataclass
class Matted(Generic[T]):
    """One result of ``Matter.stream``: the item, its photo (uint8 RGB (H,W,3)) and alpha
    (float32 (H,W) in [0,1]); or, for an item that failed, ``error`` (one line) and Nones."""
    item: T
    image: np.ndarray | None
    alpha: np.ndarray | None
    error: str | None = None


def error_reason(err: BaseException) -> str:
    """One line for a failed item: the message of a ValueError/OSError (they say what is wrong),
    else the exception's type too (an unexpected failure is still that item's alone)."""
    message = str(err).strip().splitlines()[-1] if str(err).strip() else ""
    if isinstance(err, (ValueError, OSError)) and message:
        return message
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


class Matter:
    """Weights + ``MatteOptions`` -> full-resolution alphas (see the module docstring).

    model: a U2NET/U2NETP ``nn.Module`` (a prepared copy is made; the model is not changed) or
    an ``OnnxModel``. Raises ValueError for options the model or device cannot run.
    Attributes: ``options``, ``arch``, ``device`` (where the network runs), ``runtime``
    (``pytorch`` or ``onnxruntime``).
    """

    def __init__(self, model, options: MatteOptions, *, copy_model: bool = True):
        self.options = options
        if isinstance(model, OnnxModel):
            model.check_precision(options.precision)
            if model.fixed_size and options.resize != "square":
                raise ValueError(f"{model.path} takes only fixed-size inputs (exported with --static): "
                                 "use --resize square")
            model.check_size(options.size, options.size)
            self.arch, self.device, self.runtime, self._run = model.arch, model.device, "onnxruntime", model
            return
        import torch  # here: an .onnx model runs without PyTorch installed

        from model import unwrap

        from .predict import check_precision, prepare_model, run_network

        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module or an OnnxModel, got {type(model).__name__}")
        device = torch.device(options.device)
        warning = check_precision(device, options.precision)
        if warning:  # emulated bf16 runs ~15x slower than fp32: refuse rather than crawl
            raise ValueError(f"--precision {options.precision}: {warning}; use fp32")
        model = unwrap(model)
        self.arch, self.device, self.runtime = type(model).__name__.lower(), str(device), "pytorch"
        net = prepare_model(copy.deepcopy(model) if copy_model else model, device, options.precision)
        self._run = lambda batch: run_network(net, torch.from_numpy(batch).to(device)).numpy()

    @classmethod
    def load(cls, path: str, options: MatteOptions, threads: int | None = None) -> "Matter":
        """A ``Matter`` for the weights in ``path`` (.pth of any kind ``model.load_model`` takes,
        or an .onnx from export.py). ``threads``: onnxruntime's intra-op threads (PyTorch's are
        the caller's ``torch.set_num_threads``). Raises CheckpointError / OnnxModelError naming
        the file."""
        model = load_any_model(path, device=options.device, threads=threads)
        return cls(model, options, copy_model=False)  # the loaded model is ours to prepare

    # ------------------------------------------------------------ the steps
    def network(self, inputs: np.ndarray) -> np.ndarray:
        """float32 (B,3,h,w) network inputs (``preprocess``) -> alphas float32 (B,h,w) in [0,1].
        Raises ModelOutputError for NaN or infinite outputs."""
        alphas = self._run(inputs)
        if not np.isfinite(alphas).all():
            bad = int(np.count_nonzero(~np.isfinite(alphas)))
            raise ModelOutputError(f"the model's output has {bad} NaN or infinite values of {alphas.size}: "
                                   "the weights (or the .onnx graph) are broken, or overflow at this precision")
        return alphas

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """uint8 RGB (H,W,3) -> float32 (3,h,w) network input."""
        return preprocess(image, self.options.size, self.options.resize)

    def coarse(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """uint8 RGB (H,W,3) images -> the network's alphas, float32 (h,w) in [0,1] at its input
        size: one network call per run of consecutive equal input shapes, ``batch_size`` at most."""
        inputs = [self.prepare(image) for image in images]
        out, start = [], 0
        while start < len(inputs):
            stop = start + 1
            while (stop < len(inputs) and stop - start < self.options.batch_size
                   and inputs[stop].shape == inputs[start].shape):
                stop += 1
            out.extend(self.network(np.stack(inputs[start:stop])))
            start = stop
        return out

    def full(self, image: np.ndarray, coarse: np.ndarray, refine: "RefineOptions | None" = _OWN) -> np.ndarray:
        """A coarse alpha -> float32 (H,W) in [0,1] at ``image``'s resolution, by ``refine`` (a
        ``RefineOptions``, or None for none), by default ``options.refine`` (none: resized,
        bilinear, area when shrinking). Never min-max normalised. serve.py passes a request's own."""
        if refine is _OWN:
            refine = self.options.refine
        if refine is None or refine.method == "none":
            return alpha_to_size(coarse, *image.shape[:2])
        return refine.apply(image, coarse)

    def predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """``full(image, coarse)`` for each image: float32 (H,W) in [0,1] at each one's size."""
        return [self.full(image, small) for image, small in zip(images, self.coarse(images))]

    # ------------------------------------------------------------ the pipeline
    def stream(self, items: Iterable[T], load: Callable[[T], np.ndarray],
               adjust: Callable[[T, np.ndarray, np.ndarray], np.ndarray] | None = None) -> Iterator[Matted[T]]:
        """Alphas of ``items`` in input order, decoding, the network and refinement overlapped.

        load: item -> uint8 RGB (H,W,3), run in ``workers`` threads; anything it raises fails
        that item alone (``Matted.error``). adjust: ``(item, image, coarse) -> coarse``, called
        in input order in one thread between the network and refinement (video's temporal
        smoothing keeps its state in itself). Refinement runs in a thread of its own; the
        caller's thread, consuming the results, is free to write them. At most about
        ``2 * batch_size + workers`` photos are held at once. ModelOutputError (and any error
        of the network itself) ends the stream, raised here.
        """
        return _Stream(self, items, load, adjust).results()


def load_model_file(path: str, device: str = "auto", threads: int | None = None):
    """(model, the device it runs on) for the weights in ``path``: an ``OnnxModel`` for an
    .onnx file (onnxruntime; torch is never imported), else the PyTorch network on
    ``utils.device.resolve_device(device)``. ``threads``: the network's CPU threads
    (onnxruntime's intra-op, or ``torch.set_num_threads``). Raises ValueError naming the file."""
    if path.lower().endswith(".onnx"):
        model = load_any_model(path, device=device, threads=threads)
        return model, model.device
    import torch

    from utils.device import resolve_device

    resolved = resolve_device(device)
    if threads is not None:
        torch.set_num_threads(threads)
    return load_any_model(path, device=resolved), str(resolved)


def default_batch_size(device: str) -> int:
    """Images per network call when not asked: 8 on CUDA; 1 on a CPU, where a batch costs
    about what its photos cost one by one and holds more memory."""
    return 8 if str(device).startswith("cuda") else 1


def predict_alphas(model, images: list[np.ndarray], size: int = 320, device: str = "cpu", precision: str = "fp32",
                   batch_size: int = 4, resize: str = "square", refine: "str | RefineOptions | None" = None
                   ) -> list[np.ndarray]:
    """``Matter(model, MatteOptions(...)).predict(images)``: the one-call form, for scoring a
    model once (test_stage2.py's folders, benchmarks). ``refine`` may be a method name."""
    if isinstance(refine, str):
        refine = refine_options(refine)
    options = MatteOptions(size=size, resize=resize, device=str(device), precision=precision,
                           batch_size=batch_size, refine=refine)
    return Matter(model, options).predict(images)


def refine_options(method: str) -> "RefineOptions | None":
    """``RefineOptions(method)`` with its defaults; None for ``none`` (numba stays unimported)."""
    if method not in REFINE_METHODS:
        raise ValueError(f"refine must be one of {REFINE_METHODS}, got {method!r}")
    if method == "none":
        return None
    from .refine import RefineOptions

    return RefineOptions(method)


_DONE = object()


class _Stream(Generic[T]):
    """One ``Matter.stream`` call: a thread runs decoding (a pool) and the network; refinement
    runs in a one-thread pool; ``results`` hands the finished items out in order."""

    def __init__(self, matter: Matter, items: Iterable[T], load, adjust):
        self.matter, self.items, self.load, self.adjust = matter, iter(items), load, adjust
        self.options = matter.options
        self.ahead = threading.BoundedSemaphore(2 * self.options.batch_size + 1)  # finished, not yet taken
        self.queue: deque = deque()
        self.ready = threading.Condition()
        self.stop = threading.Event()

    def _decode(self, item: T):
        image = self.load(item)
        return image, self.matter.prepare(image)

    def _refine(self, item: T, image: np.ndarray, small: np.ndarray) -> Matted[T]:
        try:
            return Matted(item, image, self.matter.full(image, small))
        except Exception as err:  # noqa: BLE001 - one photo's failure, whatever it is, is that photo's alone
            return Matted(item, None, None, error_reason(err))

    def _put(self, entry) -> None:
        while not self.ahead.acquire(timeout=0.1):  # the consumer is behind: wait, unless told to stop
            if self.stop.is_set():
                raise _Stopped
        with self.ready:
            self.queue.append(entry)
            self.ready.notify()

    def _run_batch(self, batch, refiner) -> None:
        alphas = self.matter.network(np.stack([x for _, _, x in batch]))
        for (item, image, _), small in zip(batch, alphas):
            if self.adjust is not None:
                small = self.adjust(item, image, small)
            self._put(refiner.submit(self._refine, item, image, small))

    def _produce(self) -> None:
        workers, batch_size = self.options.workers, self.options.batch_size
        pending: deque = deque()
        try:
            with ThreadPoolExecutor(workers, thread_name_prefix="decode") as reader, \
                    ThreadPoolExecutor(1, thread_name_prefix="refine") as refiner:
                try:
                    batch = []
                    while not self.stop.is_set():
                        while len(pending) < batch_size + workers and (item := next(self.items, _DONE)) is not _DONE:
                            pending.append((item, reader.submit(self._decode, item)))
                        if not pending:
                            break
                        item, future = pending.popleft()
                        try:
                            image, x = future.result()
                        except Exception as err:  # noqa: BLE001 - unreadable, too large, anything: this item's
                            if batch:  # keep the order: what came before goes first
                                self._run_batch(batch, refiner)
                                batch = []
                            self._put(Matted(item, None, None, error_reason(err)))
                            continue
                        if batch and batch[0][2].shape != x.shape:
                            self._run_batch(batch, refiner)
                            batch = []
                        batch.append((item, image, x))
                        if len(batch) == batch_size:
                            self._run_batch(batch, refiner)
                            batch = []
                    if batch and not self.stop.is_set():
                        self._run_batch(batch, refiner)
                finally:
                    for _, future in pending:
                        future.cancel()
            self._put(_DONE)
        except _Stopped:
            pass
        except BaseException as err:  # the network failed (ModelOutputError, CUDA OOM...): the stream ends
            self.stop.set()
            with self.ready:
                self.queue.append(err)
                self.ready.notify()

    def results(self) -> Iterator[Matted[T]]:
        producer = threading.Thread(target=self._produce, name="matter", daemon=True)
        producer.start()
        try:
            while True:
                with self.ready:
                    while not self.queue:
                        self.ready.wait()
                    entry = self.queue.popleft()
                if isinstance(entry, BaseException):
                    raise entry
                self.ahead.release()
                if entry is _DONE:
                    return
                yield entry.result() if isinstance(entry, Future) else entry
        finally:
            self.stop.set()
            producer.join()


class _Stopped(Exception):
    """The consumer left (closed the generator): the producer ends quietly."""
