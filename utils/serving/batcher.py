"""Concurrent requests, one network call: the server's batching and its bounded thread pool.

``Batcher.coarse(image)`` queues a photo for the network and returns a future of its coarse
alpha. ``networks`` threads take the queue, each the first photo waiting, then whatever else
arrives within ``max_wait_ms`` up to ``max_batch`` photos, and run them in one
``Matter.coarse`` call (a GPU is fed batches by one thread; on a CPU a batch costs about what
its photos cost one by one, and two single-threaded onnxruntime calls at once do more than one
call on two threads: documents/serving.md). ``fast``, when given, is a second ``Matter`` on the
same weights for requests that do not need apply.py's exact bytes (``coarse(image,
exact=False)``: rembg's route), e.g. one whose .onnx sessions have fixed input shapes; and
``narrow`` a third, for those same requests when other network calls run or wait (fewer CPU
threads per call: one photo alone gets all the cores, several share them call by call).
``Batcher.run(fn, ...)`` runs the rest of a request's work (decoding, refinement, cut-outs,
encoding) in a pool of ``workers`` threads, so a burst of requests never runs more CPU-heavy
steps at once than the pool has threads.

    batcher = Batcher(matter, max_batch=4, max_wait_ms=5, workers=2, networks=1)
    image = await batcher.run(decode_upload, data, limit)
    coarse = await batcher.coarse(image)          # float32 (h,w) in [0,1], the network's size
    alpha = await batcher.run(matter.full, image, coarse)
    batcher.close()
"""
import asyncio
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from utils.inference.core import Matter
from utils.inference.preprocess import network_input_size

_STOP = object()


@dataclass
class BatchStats:
    """What the network threads have done: ``batches`` calls of ``images`` photos in all, the
    ``largest`` batch, ``sizes`` (batch size -> how many batches had it) and the most calls that
    ran at once (``most_at_once``)."""
    batches: int = 0
    images: int = 0
    largest: int = 0
    most_at_once: int = 0

    def __post_init__(self):
        self.sizes: dict[int, int] = {}

    def add(self, size: int) -> None:
        self.batches += 1
        self.images += size
        self.largest = max(self.largest, size)
        self.sizes[size] = self.sizes.get(size, 0) + 1

    def as_dict(self) -> dict:
        return {"batches": self.batches, "images": self.images, "largest": self.largest,
                "most_at_once": self.most_at_once, "sizes": {str(k): v for k, v in sorted(self.sizes.items())}}


class Batcher:
    """The network thread and the worker pool of one server process (see the module docstring).

    matter: a ``utils.inference.core.Matter`` whose ``options.batch_size`` is at least
    ``max_batch``. max_batch: photos per network call, >= 1. max_wait_ms: how long the first
    photo of a batch waits for others, >= 0. workers: threads of the pool, >= 1. networks:
    network calls at once (threads taking the queue), >= 1. fast: a ``Matter`` of the same
    options for ``coarse(..., exact=False)`` (None: ``matter`` for every photo). narrow: the
    Matter of those photos while other calls run or wait, or ``crowded()`` (the server's count
    of requests in it, say) is true (None: ``fast``).
    """

    def __init__(self, matter: Matter, max_batch: int = 4, max_wait_ms: float = 5.0, workers: int = 2,
                 networks: int = 1, fast: Matter | None = None, narrow: Matter | None = None,
                 crowded=None):
        if max_batch < 1 or max_wait_ms < 0 or workers < 1 or networks < 1:
            raise ValueError(f"need max_batch >= 1, max_wait_ms >= 0, workers >= 1, networks >= 1; got {max_batch}, "
                             f"{max_wait_ms}, {workers}, {networks}")
        if matter.options.batch_size < max_batch:
            raise ValueError(f"the Matter's batch_size {matter.options.batch_size} is below max_batch {max_batch}")
        self.matter, self.fast = matter, fast or matter
        self.narrow, self._crowded = narrow or self.fast, crowded or (lambda: False)
        self._running = 0  # network calls running now
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000.0
        self.stats = BatchStats()
        self._stats_lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="serve")
        self._threads = [threading.Thread(target=self._loop, name=f"network-{i}", daemon=True) for i in range(networks)]
        for thread in self._threads:
            thread.start()

    @property
    def networks(self) -> int:
        """Network calls that may run at once."""
        return len(self._threads)

    @property
    def waiting(self) -> int:
        """Photos queued for the network now."""
        return self._queue.qsize()

    # ------------------------------------------------------------ for the routes
    def coarse_future(self, image: np.ndarray, exact: bool = True) -> Future:
        """A future of ``image``'s coarse alpha (float32 (h,w) in [0,1]); cancelled before its
        batch runs, it is left out of the batch. ``exact`` False: by ``fast``."""
        future: Future = Future()
        self._queue.put((image, future, exact))
        return future

    async def coarse(self, image: np.ndarray, exact: bool = True) -> np.ndarray:
        """``image`` (uint8 RGB (H,W,3)) -> its coarse alpha, batched with concurrent requests;
        ``exact`` False: by the ``fast`` Matter (apply.py's bytes not promised)."""
        return await asyncio.wrap_future(self.coarse_future(image, exact))

    async def run(self, fn, *args):
        """``fn(*args)`` in the worker pool."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        """Finish what is queued, then stop the threads and the pool."""
        for _ in self._threads:  # each network thread takes one and stops
            self._queue.put(_STOP)
        for thread in self._threads:
            thread.join()
        self._pool.shutdown(wait=True)

    # ------------------------------------------------------------ the network thread
    def _take_batch(self) -> tuple[list, bool]:
        """(the next batch of (image, future), whether to stop after it)."""
        first = self._queue.get()
        if first is _STOP:
            return [], True
        batch, deadline = [first], time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            left = deadline - time.monotonic()
            try:
                entry = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if entry is _STOP:
                return batch, True
            batch.append(entry)
        return batch, False

    def _loop(self) -> None:
        stop = False
        while not stop:
            batch, stop = self._take_batch()
            batch = [entry for entry in batch if entry[1].set_running_or_notify_cancel()]
            if not batch:
                continue
            with self._stats_lock:
                # others running or waiting: the few-threaded Matter; a photo alone: all the cores
                busy = self._running > 0 or not self._queue.empty() or self._crowded()
                self._running += 1
                self.stats.most_at_once = max(self.stats.most_at_once, self._running)
            try:
                exact = [(image, future) for image, future, is_exact in batch if is_exact]
                others = [(image, future) for image, future, is_exact in batch if not is_exact]
                for matter, group in ((self.matter, exact), (self.narrow if busy else self.fast, others)):
                    if group:
                        self._run(matter, group)
            finally:
                with self._stats_lock:
                    self._running -= 1

    def _run(self, matter: Matter, batch: list) -> None:
        # photos of one shape next to each other: Matter.coarse makes one call per run of equal shapes
        options = matter.options
        batch.sort(key=lambda entry: network_input_size(*entry[0].shape[:2], options.size, options.resize))
        try:
            alphas = matter.coarse([image for image, _ in batch])
        except BaseException as err:  # noqa: BLE001 - the network failed: every photo of the batch is told
            for _, future in batch:
                future.set_exception(err)
            return
        with self._stats_lock:
            self.stats.add(len(batch))
        for (_, future), alpha in zip(batch, alphas):
            future.set_result(alpha)
