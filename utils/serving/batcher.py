"""Concurrent requests, one network call: the server's batching and its bounded thread pool.

``Batcher.coarse(image)`` queues a photo for the network and returns a future of its coarse
alpha. One thread takes the queue: the first photo waiting, then whatever else arrives within
``max_wait_ms`` up to ``max_batch`` photos, and runs them in one ``Matter.coarse`` call (a GPU
is fed batches; on a CPU a batch costs about what its photos cost one by one, so the wait is
kept short). ``Batcher.run(fn, ...)`` runs the rest of a request's work (decoding, refinement,
cut-outs, encoding) in a pool of ``workers`` threads, so a burst of requests never runs more
CPU-heavy steps at once than the pool has threads.

    batcher = Batcher(matter, max_batch=4, max_wait_ms=5, workers=2)
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
    """What the network thread has done: ``batches`` calls of ``images`` photos in all, the
    ``largest`` batch, and ``sizes`` (batch size -> how many batches had it)."""
    batches: int = 0
    images: int = 0
    largest: int = 0

    def __post_init__(self):
        self.sizes: dict[int, int] = {}

    def add(self, size: int) -> None:
        self.batches += 1
        self.images += size
        self.largest = max(self.largest, size)
        self.sizes[size] = self.sizes.get(size, 0) + 1

    def as_dict(self) -> dict:
        return {"batches": self.batches, "images": self.images, "largest": self.largest,
                "sizes": {str(k): v for k, v in sorted(self.sizes.items())}}


class Batcher:
    """The network thread and the worker pool of one server process (see the module docstring).

    matter: a ``utils.inference.core.Matter`` whose ``options.batch_size`` is at least
    ``max_batch``. max_batch: photos per network call, >= 1. max_wait_ms: how long the first
    photo of a batch waits for others, >= 0. workers: threads of the pool, >= 1.
    """

    def __init__(self, matter: Matter, max_batch: int = 4, max_wait_ms: float = 5.0, workers: int = 2):
        if max_batch < 1 or max_wait_ms < 0 or workers < 1:
            raise ValueError(f"need max_batch >= 1, max_wait_ms >= 0, workers >= 1; got {max_batch}, "
                             f"{max_wait_ms}, {workers}")
        if matter.options.batch_size < max_batch:
            raise ValueError(f"the Matter's batch_size {matter.options.batch_size} is below max_batch {max_batch}")
        self.matter, self.max_batch, self.max_wait = matter, max_batch, max_wait_ms / 1000.0
        self.stats = BatchStats()
        self._queue: queue.Queue = queue.Queue()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="serve")
        self._thread = threading.Thread(target=self._loop, name="network", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        """Photos queued for the network now."""
        return self._queue.qsize()

    # ------------------------------------------------------------ for the routes
    def coarse_future(self, image: np.ndarray) -> Future:
        """A future of ``image``'s coarse alpha (float32 (h,w) in [0,1]); cancelled before its
        batch runs, it is left out of the batch."""
        future: Future = Future()
        self._queue.put((image, future))
        return future

    async def coarse(self, image: np.ndarray) -> np.ndarray:
        """``image`` (uint8 RGB (H,W,3)) -> its coarse alpha, batched with concurrent requests."""
        return await asyncio.wrap_future(self.coarse_future(image))

    async def run(self, fn, *args):
        """``fn(*args)`` in the worker pool."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        """Finish what is queued, then stop the thread and the pool."""
        self._queue.put(_STOP)
        self._thread.join()
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
            batch = [(image, future) for image, future in batch if future.set_running_or_notify_cancel()]
            if not batch:
                continue
            # photos of one shape next to each other: Matter.coarse makes one call per run of equal shapes
            options = self.matter.options
            batch.sort(key=lambda entry: network_input_size(*entry[0].shape[:2], options.size, options.resize))
            try:
                alphas = self.matter.coarse([image for image, _ in batch])
            except BaseException as err:  # noqa: BLE001 - the network failed: every photo of the batch is told
                for _, future in batch:
                    future.set_exception(err)
                continue
            self.stats.add(len(batch))
            for (_, future), alpha in zip(batch, alphas):
                future.set_result(alpha)
